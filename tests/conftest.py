"""Shared fixtures. Two tiers: `pytest -m "not slow"` runs on synthetic arrays in 1.5-3
minutes on 2 cores; the full suite adds every test on the real MNIST and every script run."""

import contextlib
import importlib
import importlib.util
import io
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from mnist_jax import cli
from mnist_jax.data import DATA_DIR_ENV, MNIST, DataError, default_cache_dir, load_idx_dir, load_mnist

ROOT = Path(__file__).resolve().parents[1]

# PyTorch's OpenMP threads spin while they wait (OpenMP's default), taking the cores from
# XLA's threads in the same process and from the other processes of a test: on 2 cores a
# PyTorch epoch ran several times slower beside JAX. Waiting asleep changes no result.
# Set before torch is first imported, for this process and the scripts it runs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Tests send Ctrl-C (SIGINT) to scripts as a terminal would. A shell starts background jobs
# with SIGINT ignored, and an ignored signal stays ignored in every child: undo that here.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:  # likewise `nohup pytest`
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
REAL_DATA = {"mnist", "data_dir", "data_args"}

# `jax.enable_x64`, or on an older jax `jax.experimental.enable_x64`: the tests run on every supported jax.
enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else importlib.import_module("jax.experimental").enable_x64


def pytest_collection_modifyitems(items):
    """Every test on the real MNIST belongs to the slow tier."""
    for item in items:
        if REAL_DATA & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent XLA cache for the session, shared with the scripts the tests run:
    the same programs are compiled once, not once per process."""
    cache = str(tmp_path_factory.mktemp("jax_cache"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


@pytest.fixture(scope="session")
def real_mnist() -> tuple[MNIST, Path | None]:
    """MNIST found as `train.py` finds it: the IDX files of $MNIST_JAX_DATA_DIR when it is
    set, else an earlier download's, else TFDS's prepared copy, else the verified download into the user cache. With
    the folder of IDX files it came from (None for TFDS)."""
    folder = os.environ.get(DATA_DIR_ENV)
    try:
        if folder:
            return load_idx_dir(folder), Path(folder)
        data = load_mnist("auto")
    except DataError as e:
        pytest.exit(f"the tests on real data need MNIST: {e}", returncode=2)
    return data, None if data.source == "TFDS" else default_cache_dir()


@pytest.fixture(scope="session")
def mnist(real_mnist) -> MNIST:
    return real_mnist[0]


@pytest.fixture(scope="session")
def data_dir(real_mnist) -> Path:
    """A folder holding the four verified IDX files."""
    if real_mnist[1] is None:
        pytest.skip(f"needs the IDX files; MNIST came from TFDS (set {DATA_DIR_ENV} to a folder of them)")
    return real_mnist[1]


@pytest.fixture(scope="session")
def data_args(real_mnist) -> list[str]:
    """The arguments that make a script read the same MNIST as these tests."""
    return ["--source", "tfds"] if real_mnist[1] is None else ["--data-dir", str(real_mnist[1])]


def synthetic_mnist(num_train: int = 7_000, num_test: int = 1_000, seed: int = 0) -> MNIST:
    """MNIST-shaped uint8 digits a model can learn: each class a fixed random template plus
    noise. 7,000 training images leave 1,000 to train on beside the 6,000 validation ones."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (10, 28, 28))

    def digits(n):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.clip(templates[labels] + rng.integers(-100, 101, (n, 28, 28)), 0, 255).astype(np.uint8)
        return images, labels

    return MNIST(*digits(num_train), *digits(num_test), source="synthetic")


@pytest.fixture(scope="session")
def tiny() -> MNIST:
    return synthetic_mnist()


def load_script(name: str):
    """scripts/<name> as a module (its `main` not run), importing its neighbours as it would."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.append(str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), ROOT / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args, env: dict | None = None, cwd: Path | None = None):
    """Run scripts/<name> as a user would, in a fresh process."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=600,
    )


CACHE_SETTINGS = ("jax_enable_compilation_cache", "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


def run_script_in_process(name: str, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run scripts/<name>'s `main` on `args` in this process, as far as it goes before it
    exits: the same exit status and stderr as `run_script` where the claim is not about a
    process of its own, without starting Python and importing JAX again. What the run sets
    in this process (the compilation cache, the lock on --out, signal handlers) is undone after."""
    module = load_script(name)
    saved = {setting: getattr(jax.config, setting) for setting in CACHE_SETTINGS}
    argv, here, hook = sys.argv, os.getcwd(), sys.unraisablehook
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    stdout, stderr = io.StringIO(), io.StringIO()
    sys.argv = [name, *map(str, args)]
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            cli.run(module.main, end_process=False)  # as the script's last line does, in this process: each failure to one line and its status
        status = 0
    except SystemExit as e:
        status = e.code
    finally:
        from mnist_jax.files import release_locks

        release_locks()  # as the script's exit does (in `cwd`: a relative --out is relative to it)
        sys.argv, sys.unraisablehook = argv, hook
        os.chdir(here)
        for s, handler in handlers.items():
            signal.signal(s, handler)
        for setting, value in saved.items():
            jax.config.update(setting, value)
    return subprocess.CompletedProcess([name, *map(str, args)], status, stdout.getvalue(), stderr.getvalue())


@contextlib.contextmanager
def memory_cgroup(limit: int, name: str = ""):
    """A child of this process's memory cgroup (v2, or v1's memory controller) limited to `limit` bytes, as a container's
    or a cluster job's: yields its `cgroup.procs` file. Skips where this machine lets no such cgroup be made."""
    with open("/proc/self/cgroup") as f:
        entries = [line.rstrip("\n").split(":", 2) for line in f]
    v1, v2 = ([path for _, controllers, path in entries if test(controllers)] for test in (lambda c: "memory" in c.split(","), lambda c: c == ""))
    if not v1 + v2:
        pytest.skip("this process is in no cgroup")
    root, limit_file = (Path("/sys/fs/cgroup/memory", v1[0].lstrip("/")), "memory.limit_in_bytes") if v1 else (
        Path("/sys/fs/cgroup", v2[0].lstrip("/")), "memory.max")
    folder = root / f"mnist_jax_test_{os.getpid()}{name}"
    try:
        folder.mkdir()
        (folder / limit_file).write_text(str(limit))
    except OSError as e:
        if folder.is_dir():
            folder.rmdir()
        pytest.skip(f"no memory cgroup can be made here: {e}")
    try:
        yield folder / "cgroup.procs"
    finally:
        folder.rmdir()


def in_cgroup(procs: Path, argv: list[str]) -> list[str]:
    """`argv` (a Python command line) run in the cgroup of `procs` (`memory_cgroup`), joined by a small launcher that
    then execs it."""
    join = f"import os, sys; open({str(procs)!r}, 'w').write(str(os.getpid())); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    return [sys.executable, "-c", join, *argv[1:]]



def assert_one_line_error(proc, *fragments, status: int = 2):
    """The script ended with `status` and one line on stderr holding every fragment."""
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def npz_with_header(path, name: str, shape: tuple, dtype: str) -> None:
    """The .npz archive at `path` with array `name` replaced by a header declaring `shape`
    and `dtype` and no data after it: a few bytes claiming gigabytes."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    members[f"{name}.npy"] = header.getvalue()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)


@pytest.fixture
def refused(tmp_path):
    """`refused(script, *args)`: the one line on stderr with which `script` refuses `args`
    before any work, asked in this process (`run_script_in_process`, in `tmp_path`); fails
    unless it exits with status 2, prints nothing on stdout and names the script.
    (That a real process does the same, traceback-free, is
    test_a_refused_argument_ends_the_process_in_one_line_with_status_2.)"""

    def refuse(script: str, *args) -> str:
        proc = run_script_in_process(script, *args, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), proc.stderr
        return lines[0]

    return refuse


@pytest.fixture(autouse=True)
def signal_handlers():
    """A test that runs `cli.run` in this process leaves the handlers as they were."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def assert_tensorboard_log(folder: Path, history: list[dict], test_accuracy: float, hparams: dict) -> None:
    """`folder` holds one TensorBoard event file, of each epoch's train and validation loss and accuracy in `history`,
    the test accuracy after the last, and `hparams` (those not None), read back with tensorboardX's protos."""
    scalars, logged = tensorboard_log(folder)
    epochs = {tag: {row["epoch"]: np.float32(row[key]) for row in history} for key, tag in cli.TENSORBOARD_TAGS.items()}
    assert scalars == epochs | {"hparam/test_accuracy": {len(history): np.float32(test_accuracy)}}  # float32, as logged
    assert logged == {name: value for name, value in hparams.items() if value is not None}


def tensorboard_log(folder: Path) -> tuple[dict[str, dict[int, float]], dict[str, object]]:
    """The one TensorBoard event file in `folder`: (its scalars by tag and step, its hyperparameters)."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    (path,) = folder.glob("events.out.tfevents.*")
    raw, scalars, hparams = path.read_bytes(), {}, {}
    while raw:  # TFRecords: length (8 bytes), its CRC (4), the event, its CRC (4)
        length = int.from_bytes(raw[:8], "little")
        event, raw = Event.FromString(raw[12 : 12 + length]), raw[16 + length :]
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "hparams":
                start = HParamsPluginData.FromString(value.metadata.plugin_data.content).session_start_info
                hparams |= {name: getattr(v, v.WhichOneof("kind")) for name, v in start.hparams.items()}
            else:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars, hparams
