"""Compiled programs kept between processes (`mnist_jax.executables`): a warm start neither traces nor compiles,
and ends exactly where a cold one does; what cannot be kept whole is not kept; a damaged entry is replaced."""

import contextlib
import dataclasses
import importlib.metadata
import os
import pickle
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import serialize_executable

from conftest import ROOT, synthetic_mnist
from mnist_jax import executables
from mnist_jax.study import train_seeds
from mnist_jax.train import TrainConfig, train


@contextlib.contextmanager
def cache_in(path):
    """The compilation cache on, in `path` (JAX's own persistent cache stays the session's), then as it was."""
    saved = {name: getattr(jax.config, name) for name in ("jax_compilation_cache_dir", "jax_enable_compilation_cache")}
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_enable_compilation_cache", True)
    try:
        yield path
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)


def new_start() -> None:
    """As a new process starts: no program compiled or loaded yet (the process keeps each it had)."""
    executables._in_memory.clear()


@pytest.fixture
def folder(tmp_path):
    """A cache folder of this test's own, used as by a new process."""
    new_start()
    with cache_in(tmp_path):
        yield tmp_path


@pytest.fixture
def jax_caches_all():
    """JAX's persistent cache keeping every program, however quick to compile (the scripts' setting)."""
    saved = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved)


def kept(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(executables.PREFIX))


_watched: list[str] | None = None  # the events of the work being watched, None between


def _record(event, duration, **_):
    if _watched is not None:
        _watched.append(event)


jax.monitoring.register_event_duration_secs_listener(_record)  # once: jax 0.7.1 has no way to unregister it


def traced_or_compiled(work) -> list[str]:
    """The JAX tracing and XLA compiling that `work()` does."""
    global _watched
    _watched = []
    try:
        work()
    finally:
        events, _watched = _watched, None
    return [e for e in events if e in ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")]


def test_a_run_whose_programs_come_from_the_cache_traces_nothing_and_ends_exactly_where_a_compiled_one_does(folder):
    # shapes no other test uses: JAX's own cache (the session's) cannot serve any of the run's programs (not kept then)
    tiny = synthetic_mnist(num_train=6_789, num_test=321)
    config = TrainConfig("mlp_dropout", epochs=2, batch_size=256)
    cold = train(config, tiny)
    assert len(kept(folder)) == 7  # initial, examples_at, epoch_keys, shuffle, train_epoch, evaluate for validation and test
    assert traced_or_compiled(lambda: train(config, tiny)) == []  # again in this process: nothing compiled again
    new_start()
    runs = []
    assert traced_or_compiled(lambda: runs.append(train(config, tiny))) == []
    (warm,) = runs
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in warm.history] == \
           [{k: v for k, v in row.items() if k != "seconds"} for row in cold.history]
    assert (warm.test_loss, warm.test_accuracy) == (cold.test_loss, cold.test_accuracy)
    for a, b in zip(jax.tree.leaves(warm.final), jax.tree.leaves(cold.final)):
        np.testing.assert_array_equal(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a,
                                      jax.random.key_data(b) if jnp.issubdtype(b.dtype, jax.dtypes.prng_key) else b)
    assert len(kept(folder)) == 7
    other = dataclasses.replace(config, epochs=1, seed=5)  # neither is in a program: the same seven serve it
    new_start()
    assert traced_or_compiled(lambda: train(other, tiny)) == [] and len(kept(folder)) == 7
    assert len(traced_or_compiled(lambda: train(other, synthetic_mnist(num_train=6_790, num_test=321)))) > 0  # other shapes: programs of their own


def test_a_warm_start_of_train_py_loads_every_program_and_imports_no_flax(tmp_path, data_args):
    """Flax is imported where a program is built: a start whose programs the cache holds needs none (0.3 s of it)."""
    flax_at_exit = ("import atexit, runpy, sys; atexit.register(lambda: print('flax' in sys.modules, flush=True)); "
                    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")  # train.py runs the atexit hooks
    train_py = [sys.executable, "-c", flax_at_exit, ROOT / "scripts" / "train.py", "--stage", "mlp_bn", "--epochs", "1",
                *data_args, "--compile-cache", tmp_path / "cache"]
    cold, warm = (subprocess.run([*map(str, train_py), "--out", str(tmp_path / run)], capture_output=True, text=True)
                  for run in ("cold", "warm"))
    assert cold.returncode == warm.returncode == 0, cold.stderr + warm.stderr
    assert cold.stdout.split()[-1] == "True" and warm.stdout.split()[-1] == "False"
    test_line = [next(line for line in run.stdout.splitlines() if line.startswith("[Test]")) for run in (cold, warm)]
    assert test_line[0] == test_line[1]


def test_the_key_holds_flax_s_version_read_without_importing_it_or_from_flax_where_it_has_no_metadata(monkeypatch):
    import flax

    assert executables._flax_version() == flax.__version__

    def no_metadata(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", no_metadata)  # as for a source folder on the path
    assert executables._flax_version() == flax.__version__


def test_runs_of_one_configuration_in_one_process_compile_its_programs_once_even_without_a_cache_folder(tiny):
    """As in a notebook, where JAX's cache folder is off: a second run, of another seed, traces and compiles nothing."""
    new_start()
    saved = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        config = TrainConfig("mlp_bn", epochs=1)
        assert len(traced_or_compiled(lambda: train(config, tiny))) > 0
        assert traced_or_compiled(lambda: train(dataclasses.replace(config, seed=1), tiny)) == []
    finally:
        jax.config.update("jax_enable_compilation_cache", saved)


def test_a_grid_compiles_its_programs_once_per_process_and_a_new_process_loads_them_to_the_same_results(folder):
    tiny = synthetic_mnist(num_train=6_791, num_test=323)  # shapes of its own: JAX's own cache cannot serve them
    config, seeds = TrainConfig("mlp_dropout", epochs=1, hidden=16), [3, 4]
    compiled = "/jax/core/compile/backend_compile_duration"
    grids = []
    assert compiled in traced_or_compiled(lambda: grids.append(train_seeds(config, tiny, seeds)))
    programs = kept(folder)
    assert len(programs) == 3  # the models' starts, the grid's epoch and its test
    assert compiled not in traced_or_compiled(lambda: grids.append(train_seeds(config, tiny, seeds)))
    new_start()
    assert compiled not in traced_or_compiled(lambda: grids.append(train_seeds(config, tiny, seeds)))
    assert kept(folder) == programs
    first, *again = grids
    for grid in again:
        assert grid.history == first.history
        np.testing.assert_array_equal(grid.test_predictions, first.test_predictions)
        for a, b in zip(jax.tree.leaves(grid.final_params), jax.tree.leaves(first.final_params), strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_program_compiled_under_a_mesh_context_is_not_served_outside_it():
    """`jax.set_mesh` decides a program (its outputs' shardings) but is not among JAX's settings."""
    new_start()
    mesh = jax.make_mesh((1,), ("batch",), axis_types=(jax.sharding.AxisType.Explicit,))
    build = lambda: jax.jit(lambda s: jnp.zeros(4) + s)  # noqa: E731
    with (jax.set_mesh if hasattr(jax, "set_mesh") else jax.sharding.use_mesh)(mesh):  # (jax 0.7.1: use_mesh)
        inside = executables.compiled("zeros", build, 1.0)(1.0)
    outside = executables.compiled("zeros", build, 1.0)(1.0)
    assert isinstance(inside.sharding, jax.NamedSharding) and isinstance(outside.sharding, jax.sharding.SingleDeviceSharding)


def test_each_shape_and_configuration_has_its_own_program(folder):
    double = executables.compiled("double", lambda: jax.jit(lambda x: 2 * x), jnp.ones(3))
    triple = executables.compiled("triple", lambda: jax.jit(lambda x: 3 * x), jnp.ones(3))
    longer = executables.compiled("double", lambda: jax.jit(lambda x: 2 * x), jnp.ones(4))
    assert len(kept(folder)) == 3
    assert (double(jnp.ones(3)).tolist(), triple(jnp.ones(3)).tolist(), longer(jnp.ones(4)).tolist()) == ([2.0] * 3, [3.0] * 3, [2.0] * 4)


def test_xla_cannot_keep_a_program_jax_cache_served_so_a_fresh_one_is_compiled_and_kept(folder, jax_caches_all):
    """Should XLA ever serialize a loaded executable whole, the first claim fails, and `_compile_afresh` can go."""
    def build():
        return jax.jit(lambda key, x: x @ x.T + jax.random.bits(key, (5,), jnp.uint32).astype(jnp.float32))

    args = (jax.random.key(7), jnp.arange(10.0).reshape(5, 2))
    expected = build().lower(*args).compile()(*args)  # the first compile: JAX's cache keeps it
    served = build().lower(*args).compile()  # the second: JAX's cache serves it
    reloaded = serialize_executable.deserialize_and_load(*serialize_executable.serialize(served))
    with pytest.raises(Exception, match="not found"):
        reloaded(*args)

    program = executables.compiled("served", build, *args)
    np.testing.assert_array_equal(program(*args), expected)
    assert len(kept(folder)) == 1
    new_start()
    assert traced_or_compiled(lambda: np.testing.assert_array_equal(executables.compiled("served", build, *args)(*args), expected)) == []


def test_a_program_jax_loaded_earlier_in_the_process_is_compiled_afresh_to_be_kept(folder, jax_caches_all):
    """JAX's in-memory cache hands back an executable its persistent cache loaded, with no event of that cache (a
    notebook that called `epoch_keys` itself, say): only a program XLA compiled just now is kept (found by review)."""
    def build():  # each a function of its own, of one program
        return jax.jit(lambda key, x: x @ x.T + jax.random.bits(key, (3,), jnp.uint32).astype(jnp.float32))

    args = (jax.random.key(9), jnp.arange(6.0).reshape(3, 2))
    expected = build()(*args)  # compiled: JAX's cache keeps it
    eager = build()
    eager(*args)  # loaded from JAX's cache, and kept in memory by JAX
    other_work = jax.jit(lambda x: jnp.sin(x) * 3)  # compiled as it is built: not the program's compile
    program = executables.compiled("eager first", lambda: (other_work(jnp.ones(7)), eager)[1], *args)
    np.testing.assert_array_equal(program(*args), expected)
    assert len(kept(folder)) == 1
    new_start()
    assert traced_or_compiled(lambda: np.testing.assert_array_equal(executables.compiled("eager first", None, *args)(*args), expected)) == []


def test_programs_of_one_device_and_of_several_load_onto_the_devices_they_were_compiled_for(tmp_path):
    code = """
import jax, jax.numpy as jnp, numpy as np
from mnist_jax import executables
jax.config.update("jax_compilation_cache_dir", %r)
mesh = jax.sharding.Mesh(np.array(jax.devices()[::-1]), ("batch",))
split = jax.device_put(jnp.arange(8.0), jax.NamedSharding(mesh, jax.P("batch")))
for _ in range(2):  # compiled and kept, then loaded
    one = executables.compiled("double", lambda: jax.jit(lambda x: 2 * x), jnp.arange(8.0))
    both = executables.compiled("double", lambda: jax.jit(lambda x: 2 * x), split)
    print(one(jnp.arange(8.0)).tolist() == both(split).tolist() == list(range(0, 16, 2)), len(both(split).sharding.device_set))
""" % str(tmp_path)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.stdout.split() == ["True", "2"] * 2, proc.stderr
    assert len(kept(tmp_path)) == 2


def test_an_entry_under_another_programs_name_is_not_used(folder):
    double = executables.compiled("double", lambda: jax.jit(lambda x: 2 * x), jnp.ones(3))
    triple = executables.compiled("triple", lambda: jax.jit(lambda x: 3 * x), jnp.ones(3))
    (first, second) = kept(folder)
    (folder / first).write_bytes((folder / second).read_bytes())  # the same signature, another program
    new_start()
    assert executables.compiled("double", lambda: jax.jit(lambda x: 2 * x), jnp.ones(3))(jnp.ones(3)).tolist() == \
           double(jnp.ones(3)).tolist()
    assert executables.compiled("triple", lambda: jax.jit(lambda x: 3 * x), jnp.ones(3))(jnp.ones(3)).tolist() == \
           triple(jnp.ones(3)).tolist()


def test_entries_no_start_has_loaded_for_30_days_go_when_another_is_kept(folder):
    executables.compiled("a", lambda: jax.jit(lambda x: x + 1), jnp.ones(2))
    (a,) = kept(folder)
    executables.compiled("b", lambda: jax.jit(lambda x: x + 2), jnp.ones(2))
    (b,), month = set(kept(folder)) - {a}, 31 * 86400
    for name in (a, b):
        os.utime(folder / name, (time.time() - month,) * 2)
    for theirs in ("jit_theirs-cache", "mnist_jax-notes.txt"):  # JAX's entry, a user's file: not this cache's names
        (folder / theirs).write_text("not ours")
        os.utime(folder / theirs, (time.time() - month,) * 2)
    new_start()
    executables.compiled("a", lambda: jax.jit(lambda x: x + 1), jnp.ones(2))  # loaded: used again
    executables.compiled("c", lambda: jax.jit(lambda x: x + 3), jnp.ones(2))  # kept: the unused are pruned
    assert a in kept(folder) and b not in kept(folder) and len(kept(folder)) == 3  # a, c, and the user's file
    assert (folder / "jit_theirs-cache").exists() and (folder / "mnist_jax-notes.txt").exists()


def test_a_damaged_entry_is_compiled_again_and_replaced(folder):
    def build():
        return jax.jit(lambda x: jnp.cumsum(x))

    executables.compiled("cumsum", build, jnp.ones(6))
    (name,) = kept(folder)
    whole = (folder / name).read_bytes()
    for damaged in (whole[: len(whole) // 2], whole[:32] + b"x" + whole[33:], b"", whole[:32] + pickle.dumps((b"not XLA's", None, None))):
        (folder / name).write_bytes(damaged)
        new_start()
        assert executables.compiled("cumsum", build, jnp.ones(6))(jnp.ones(6)).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        assert (folder / name).read_bytes() != damaged and kept(folder) == [name]


def test_a_folder_that_cannot_be_written_or_searched_costs_only_the_time_it_would_save(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    too_long = tmp_path.joinpath(*["x" * 250] * 17)  # a path the OS refuses to look in (ENAMETOOLONG), as an unsearchable folder
    for cache in (tmp_path / "file" / "cache", too_long):
        new_start()
        with cache_in(cache):
            program = executables.compiled("sum", lambda: jax.jit(jnp.sum), jnp.ones(3))
        assert float(program(jnp.ones(3))) == 3.0 and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_file_of_xla_flags_decides_the_programs_by_what_it_says(tmp_path, monkeypatch):
    """XLA reads an XLA_FLAGS value that does not start with -- as the name of a file of flags."""
    flags = tmp_path / "xla.flags"
    monkeypatch.setenv("XLA_FLAGS", str(flags))
    said = []
    for text in ("--xla_cpu_enable_fast_math=false", "--xla_cpu_enable_fast_math=true"):
        flags.write_text(text)
        said.append(executables._machine_and_code.__wrapped__())
    assert said[0] != said[1]
