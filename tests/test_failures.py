"""Past the typos, what a user or the machine can do to a run ends in one line and its
exit status, and loses nothing: memory too small, values beyond what the code holds,
folders that cannot be written, a disk that fills up, two runs on one folder."""

import contextlib
import gc
import errno
import json
import os
import shlex
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, assert_one_line_error, in_cgroup, memory_cgroup, run_script, run_script_in_process
from mnist_jax import memory
from mnist_jax.checkpoint import save_run
from mnist_jax.files import write_npz
from mnist_jax.train import RunResult, TrainConfig, init_state, make_optimizer

# A test that runs a script is slow (those on the real MNIST are marked so by conftest); one that asks
# a script's parser in this process is quick.


def command(script: str, *args) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / script), *map(str, args)]


def run_limited(limit: str, size: int, argv: list[str]) -> subprocess.CompletedProcess:
    """Run `argv` (a Python command line) under the resource limit `limit` (RLIMIT_...), set
    by a small Python launcher that then execs it (no fork-time code in this process)."""
    launcher = (f"import os, resource, sys; resource.setrlimit(resource.{limit}, ({size}, resource.RLIM_INFINITY)); "
                "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    return subprocess.run([sys.executable, "-c", launcher, *argv[1:]], capture_output=True, text=True, timeout=300)


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# Values


@pytest.mark.parametrize(
    "script, args, fragment",
    [
        ("train.py", ["--stage", "mlp", "--seed", "2147483648"], "a seed from 0 to 2147483647"),  # (an int32: was a traceback)
        ("train.py", ["--stage", "mlp_dropout", "--dropout", "0.99999999"], "a rate in [0, 1) (as a float32: under 1)"),  # (1.0)
        ("compare.py", ["--torch-threads", "100000"], "an integer from 1 to"),  # (PyTorch crashed on so many)
        ("study.py", ["--seeds", "2147483648"], "an integer from 1 to 2147483647"),
        ("sweep.py", ["--lr", "1e-3,-1"], "in '1e-3,-1': expected a positive number a float32 holds"),
        ("train.py", ["--stage", "mlp", "--lr", "1e308"], "a positive number a float32 holds, got '1e308'"),
        ("sweep.py", ["--lr", "1e-50,1e-3"], "a positive number a float32 holds, got '1e-50'"),
        ("compare.py", ["--epochs", "99999999999999999999"], "an integer from 1 to 2147483647"),
        ("linearity.py", ["--widths", "8,4294967296"], "an integer from 1 to 2147483647"),
        ("benchmark.py", ["--rounds", "2147483648"], "an integer from 1 to 2147483647"),
    ],
)
def test_a_number_beyond_what_the_code_holds_is_refused_with_the_accepted_range(refused, tmp_path, script, args, fragment):
    assert fragment in refused(script, *args)
    assert listing(tmp_path) == []


# Folders that cannot be written


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody may write into, root included when it may mount: a read-only
    tmpfs; else one without write permission."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)]
    mounted = os.geteuid() == 0 and subprocess.run(mount, capture_output=True).returncode == 0
    if not mounted:
        folder.chmod(0o555)
        if os.access(folder, os.W_OK):
            pytest.skip("root without mount: no folder here is read-only to this process")
    yield folder
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o755)


def through_a_file(request, tmp_path):
    (tmp_path / "a_file").write_text("keep me")
    return tmp_path / "a_file" / "out"


UNWRITABLE = {
    "read-only": lambda request, tmp_path: request.getfixturevalue("read_only") / "out",
    "pseudo-filesystem": lambda request, tmp_path: "/proc/mnist_jax_out",
    "through a file": through_a_file,
    "a name too long": lambda request, tmp_path: tmp_path / "new" / ("x" * 300),  # (new/ is made, then not left)
}
TRAINING = {"train.py": ["--stage", "linear_ce"], "study.py": ["--stages", "linear_ce"], "compare.py": ["--stages", "linear_ce"]}


@pytest.mark.parametrize("kind", UNWRITABLE)
@pytest.mark.parametrize("script", TRAINING)
def test_an_out_folder_that_cannot_be_written_is_refused_before_any_work(request, refused, tmp_path, script, kind):
    out = UNWRITABLE[kind](request, tmp_path)
    made = listing(tmp_path)
    line = refused(script, *TRAINING[script], "--out", out)  # (nothing on stdout: nothing loaded, nothing trained)
    assert "--out: cannot write to" in line and str(out) in line, line
    assert listing(tmp_path) == made


@pytest.mark.slow
def test_a_run_whose_out_cannot_be_written_ends_in_one_line_before_loading_anything(tmp_path):
    """The process-level claim behind the parser test above: the script's `main` checks
    where it writes before it loads or trains anything."""
    proc = run_script("train.py", *TRAINING["train.py"], "--out", "/proc/mnist_jax_out", cwd=tmp_path)
    assert_one_line_error(proc, "train.py: error: --out: cannot write to /proc/mnist_jax_out")
    assert proc.stdout == "" and listing(tmp_path) == []


@pytest.mark.parametrize(
    "script, args",
    [
        ("make_assets.py", ["--results", ROOT / "assets" / "results.json", "--out", "/proc/mnist_jax_out"]),
        ("linearity.py", ["--out", "/proc/mnist_jax_out"]),
        ("benchmark.py", ["--out", "/proc/mnist_jax_out"]),
        ("train.py", ["--stage", "mlp", "--compile-cache", "/proc/mnist_jax_cache"]),
    ],
)
def test_every_other_output_that_cannot_be_written_is_refused(refused, tmp_path, script, args):
    line = refused(script, *args)
    assert "cannot write to" in line and "/proc/mnist_jax_" in line, line
    assert listing(tmp_path) == []


# Memory


def test_a_model_larger_than_memory_exits_4_before_training(tmp_path, data_args):
    proc = run_script("train.py", "--stage", "mlp", "--hidden", "20000000", "--out", tmp_path / "run", *data_args)
    assert_one_line_error(proc, "does not fit: mlp (hidden 20000000, batch 128)", "GB of memory", "available", status=4)
    assert "[Epoch" not in proc.stdout and listing(tmp_path) == []


def test_programs_larger_than_the_memory_left_exit_4_before_training(tmp_path, data_args):
    proc = run_script("train.py", "--stage", "mlp", "--out", tmp_path / "run", *data_args,
                      env={memory.LIMIT_ENV: "64M"})
    assert_one_line_error(proc, "does not fit: the programs training mlp", "64.0 MB available", status=4)
    assert "[Epoch" not in proc.stdout and listing(tmp_path) == []


def test_programs_that_fit_the_memory_left_only_by_xlas_figures_exit_4_before_training(tmp_path, data_args):
    """XLA's figures leave out what its CPU libraries allocate beside them (a peak 15-34% above them, measured): here
    6.43 GB by XLA's count under an address space that left 6.86 GB, which passed, then failed allocating in a
    traceback (and without the limit, the kernel's OOM killer ended such runs without a line)."""
    args = ["--stage", "mlp", "--hidden", "10000", "--batch-size", "54000", "--no-cache", "--out", tmp_path / "run", *data_args]
    proc = run_limited("RLIMIT_AS", 8_900_000 * 1024, [sys.executable, str(ROOT / "scripts" / "train.py"), *map(str, args)])
    assert_one_line_error(proc, "does not fit: the programs training mlp (hidden 10000, batch 54000) need about",
                          "available (two thirds of what its address-space limit leaves)", status=4)
    assert "[Epoch" not in proc.stdout and listing(tmp_path) == []


def test_linearity_py_refuses_a_width_that_does_not_fit_before_its_linear_fits(tmp_path, data_args):
    proc = run_script_in_process("linearity.py", "--widths", "20000000", "--seeds", "1", "--epochs", "1", "--max-steps", "5",
                                 "--out", tmp_path / "out", *data_args)
    assert_one_line_error(proc, "does not fit: the programs training mlp (hidden 20000000", status=4)
    assert "linear_lstsq" not in proc.stdout and listing(tmp_path) == []


@pytest.mark.parametrize("script, args, kept", [
    ("train.py", ["--stage", "linear_ce,random_features_4096"],
     "; with more memory free: the stages before it are finished (linear_ce); no epoch of random_features_4096 was saved; "
     "continue with: "),
    ("study.py", ["--stages", "linear_ce,random_features_4096", "--seeds", "2"],
     "; with more memory free: " + "{out}" + "/progress keeps every epoch saved; continue with: "),
])
def test_a_later_stage_that_does_not_fit_says_what_the_earlier_ones_saved(tmp_path, data_args, monkeypatch, script, args, kept):
    """(It said only "does not fit", as if nothing was written, and the same command then refused the folder.)"""
    monkeypatch.setenv(memory.LIMIT_ENV, "500M")  # linear_ce fits, the random features of 27,000 images at once do not
    proc = run_script_in_process(script, *args, "--batch-size", "27000", "--epochs", "1", "--out", tmp_path / "out", *data_args)
    assert_one_line_error(proc, "does not fit: the programs training random_features_4096", kept.format(out=tmp_path / "out"), "--resume",
                          status=4)


def test_programs_larger_than_a_memory_cgroups_limit_exit_4_before_training(tmp_path, data_args):
    """A container's or a cluster job's memory limit (a cgroup), far below the host's free memory: XLA's 6.43 GB here
    passed against the host's and the cgroup's OOM killer ended the run with SIGKILL, without a line."""
    args = ["--stage", "mlp", "--hidden", "10000", "--batch-size", "54000", "--no-cache", "--out", tmp_path / "run", *data_args]
    with memory_cgroup(2 * 2**30) as procs:
        proc = subprocess.run(in_cgroup(procs, [sys.executable, str(ROOT / "scripts" / "train.py"), *map(str, args)]),
                              capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "does not fit: the programs training mlp (hidden 10000, batch 54000) need about",
                          "available (two thirds of what its memory cgroup leaves)", status=4)
    assert "[Epoch" not in proc.stdout and listing(tmp_path) == []


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_memory_left_by_a_cgroup_is_the_least_over_its_ancestors_with_file_cache_counted_free(tmp_path, version):
    """Read as the kernel lays the files out (v2: memory.max, memory.current; v1: the memory controller's
    limit_in_bytes, usage_in_bytes), the job's cgroup unlimited below a limited parent. The file cache, active or not, is
    free (a job that read its data first was refused); a file that cannot be read as a number limits nothing."""
    names = {"v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_", "9223372036854771712"),
             "v2": ("memory.max", "memory.current", "", "max")}[version]
    limit_file, usage_file, prefix, unlimited = names
    mount = tmp_path / "sys"
    root = mount / "memory" if version == "v1" else mount
    line = "4:memory:/slurm/job_7\n" if version == "v1" else "0::/slurm/job_7\n"
    (tmp_path / "cgroup").write_text("2:cpu,cpuacct:/slurm/job_7\n" + line)
    job, parent = root / "slurm/job_7", root / "slurm"
    for folder, limit, usage in ((parent, str(8 * 2**30), 7 * 2**30), (job, unlimited, 3 * 2**30)):
        folder.mkdir(parents=True)
        (folder / limit_file).write_text(limit + "\n")
        (folder / usage_file).write_text(f"{usage}\n")
        (folder / "memory.stat").write_text(f"anon 1\n{prefix}inactive_file {2**28}\n{prefix}active_file {2**28}\n")
    room = lambda: min((r for r, _ in memory.cgroup_limits(str(tmp_path / "cgroup"), str(mount))), default=None)  # noqa: E731
    assert room() == 2**30 + 2**29
    (job / limit_file).write_text(str(2**30))  # the least: the job's own limit, less its usage but its file cache
    assert room() == 0
    (job / usage_file).write_text(str(2**29))
    assert room() == 2**30 - 2**29 + 2**29
    for damaged in ("", "abc", "\u00b2", "-1", "1.5e9"):
        (job / limit_file).write_text(damaged)
        assert room() == 2**30 + 2**29, damaged  # the parent's
    (job / "memory.stat").write_text(f"{prefix}inactive_file\n{prefix}active_file x\n")
    (parent / "memory.stat").write_text(f"{prefix}inactive_file {2**40}\n")
    assert room() == 8 * 2**30  # the file cache counted at most to the usage: the limit, not beyond
    (parent / limit_file).write_text(unlimited)
    assert room() is None
    assert memory.cgroup_limits(str(tmp_path / "absent"), str(mount)) == []


def test_a_system_without_proc_plans_for_the_hosts_memory(tmp_path):
    """(macOS has no /proc/meminfo: every run failed at its first memory check.)"""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    (room, bound, _), *others = memory.host_rooms(str(tmp_path / "no_meminfo"))
    assert (room, memory.HOST_BOUNDS[bound]) == (physical, "the host's memory")
    assert all(memory.HOST_BOUNDS[b] != "the host's free memory" for _, b, _ in others)  # (a cgroup's, a ulimit's, if any)


def test_what_a_run_already_holds_counts_once(monkeypatch):
    """The free memory no longer counts the arrays a run has allocated; a cap (`MNIST_JAX_MEMORY_LIMIT`) is the whole
    device's, held arrays included, and is named as the bound. (train.py counted its state and data twice, and refused a
    model that a job's memory limit held.)"""
    monkeypatch.delenv(memory.LIMIT_ENV, raising=False)
    monkeypatch.setattr(memory, "host_rooms", lambda: [(3 * 2**30, 0, "this host")])  # (a fixed host: the live one drifts)
    assert memory.available() == (2 * 2**30, " (two thirds of the host's free memory)")
    assert memory.available(held=2**30) == (3 * 2**30, " (two thirds of the host's free memory)")
    monkeypatch.setenv(memory.LIMIT_ENV, "64M")
    assert memory.available(held=2**30) == (2**26, f" ({memory.LIMIT_ENV}=64M)")


@pytest.mark.slow
def test_an_allocation_the_machine_refuses_exits_4():
    """Where no estimate warned (here an address-space limit of 4 GB), the allocation
    failure itself is caught."""
    code = "import jax.numpy as jnp; from mnist_jax import cli; cli.run(lambda: jnp.ones(2**31).block_until_ready())"
    proc = run_limited("RLIMIT_AS", 4 * 2**30, [sys.executable, "-c", code])
    assert_one_line_error(proc, "does not fit: out of memory", "RESOURCE_EXHAUSTED", status=4)


def test_a_study_of_more_seeds_than_fit_runs_them_in_chunks(tmp_path, data_args, mnist, monkeypatch):
    from mnist_jax.study import compile_chunk, kept_results
    from mnist_jax.train import TrainConfig

    config = TrainConfig("linear_ce", epochs=1)
    two, three = (compile_chunk(config, mnist, n).bytes for n in (2, 3))
    out = tmp_path / "study"
    monkeypatch.setenv(memory.LIMIT_ENV, str((two + three) // 2 + kept_results(config, mnist, 3)[1]))  # (beside the results kept)
    proc = run_script_in_process("study.py", "--stages", "linear_ce", "--seeds", "3", "--epochs", "1", "--out", out, *data_args)
    assert proc.returncode == 0, proc.stderr
    assert "linear_ce: 3 seeds in chunks of 2" in proc.stdout
    stage = json.loads((out / "results.json").read_text())["stages"]["linear_ce"]
    assert stage["seeds"] == [0, 1, 2] and stage["seeds_at_once"] == 2 and len(set(stage["test_accuracies"])) > 1


def test_a_study_whose_results_would_not_fit_beside_its_fewest_models_is_refused_before_training(tmp_path, data_args, mnist,
                                                                                                    monkeypatch):
    """Each model's results (its final parameters, predictions, metrics) stay on the host until the study ends: planned
    without them, a study of many seeds in a job's memory limit trained every chunk, then was killed by the OOM killer
    while it joined them, without a line."""
    from mnist_jax.study import compile_chunk, kept_results
    from mnist_jax.train import TrainConfig

    config = TrainConfig("linear_ce", epochs=1)
    monkeypatch.setenv(memory.LIMIT_ENV, str(compile_chunk(config, mnist, 1).bytes + kept_results(config, mnist, 1000)[1] // 2))
    proc = run_script_in_process("study.py", "--stages", "linear_ce", "--seeds", "1000", "--epochs", "1", "--out", tmp_path / "out",
                                 *data_args)
    assert_one_line_error(proc, "does not fit: the programs training linear_ce (batch 128), 1 model, beside the results "
                          "of all 1000, need about", status=4)
    assert "epoch 1/1" not in proc.stdout and listing(tmp_path) == []


# A disk that fills up


def test_a_save_that_fails_keeps_the_last_complete_checkpoint(tmp_path, data_args):
    out = tmp_path / "run"
    args = ["--stage", "linear_ce", "--out", out, "--no-cache", *data_args]
    assert run_script_in_process("train.py", *args, "--epochs", "1").returncode == 0
    saved = {name: (out / name).read_bytes() for name in ("checkpoint.npz", "metrics.json")}
    # writes past the limit fail with EFBIG (Python ignores SIGXFSZ)
    proc = run_limited("RLIMIT_FSIZE", len(saved["checkpoint.npz"]) // 2, command("train.py", *args, "--epochs", "2", "--resume"))
    assert_one_line_error(proc, f"could not save epoch 2 to {out}: File too large",
                          "keeps the checkpoint of epoch 1; --resume continues it", status=5)
    assert listing(out) == ["checkpoint.npz", "metrics.json"]  # no temporary file, no lock
    assert {name: (out / name).read_bytes() for name in saved} == saved
    resumed = run_script_in_process("train.py", *args, "--epochs", "2", "--resume")
    assert resumed.returncode == 0 and "resuming" in resumed.stdout


@contextlib.contextmanager
def tmpfs(folder, size: str):
    """`folder`, a tmpfs of `size` for the block (skips the test where none can be mounted)."""
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here; test_a_save_that_fails_keeps_the_last_complete_checkpoint covers a failed save")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 192 KiB tmpfs: room for one `linear_ce` checkpoint (about 130 KB), not for a second beside it."""
    with tmpfs(tmp_path / "disk", "192k") as folder:
        yield folder


def test_a_disk_that_fills_up_mid_run_keeps_the_last_complete_epoch(small_disk, data_args):
    out = small_disk / "run"
    proc = run_script("train.py", "--stage", "linear_ce", "--epochs", "3", "--out", out, "--no-cache", *data_args)
    assert_one_line_error(proc, f"could not save epoch 2 to {out}: No space left on device",
                          "keeps the checkpoint of epoch 1", status=5)
    assert listing(out) == ["checkpoint.npz", "metrics.json"]
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 1


def test_a_disk_with_room_for_the_checkpoint_alone_keeps_the_saved_pair_as_it_was(tmp_path):
    """(The new checkpoint was renamed in before metrics.json was written: a disk that filled up in between left the
    checkpoint of epoch 2 beside the metrics of epoch 1, or at epoch 1 a checkpoint that the message said was not saved.)
    Now both are written before either is renamed in: the small metrics.json fits, the checkpoint beside it no longer does."""
    config = TrainConfig("linear_ce", epochs=2)
    state = init_state(config, jax.random.key(0), make_optimizer(config))
    rows = [{"epoch": epoch, "train_loss": 2.3, "train_accuracy": 0.1, "val_loss": 2.3, "val_accuracy": 0.1} for epoch in (1, 2)]
    runs = [RunResult(config, "cpu", state, state, 1, rows[:epochs]) for epochs in (1, 2)]
    save_run(runs[1], tmp_path / "measured", {"history": rows})
    pages = -(-(tmp_path / "measured" / "checkpoint.npz").stat().st_size // 4096)  # what a checkpoint takes on the tmpfs
    with tmpfs(tmp_path / "disk", "512k") as disk:
        for out, saved in ((disk / "new", None), (disk / "saved", runs[0])):
            out.mkdir()  # (as the script claims it, before training)
            if saved:
                save_run(saved, out, {"history": saved.history})
            before = {name: (out / name).read_bytes() for name in ("checkpoint.npz", "metrics.json")} if saved else {}
            free = os.statvfs(disk)
            (disk / "filler").write_bytes(bytes(free.f_bavail * free.f_frsize - pages * 4096))  # room for one checkpoint
            with pytest.raises(OSError) as failed:
                save_run(runs[1], out, {"history": rows})
            assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(out / "checkpoint.npz")
            assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file either
            (disk / "filler").unlink()


def test_an_output_that_cannot_be_written_is_named_as_the_output(tmp_path, data_args):
    """(A full stdout was "could not write a file".)"""
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--stage", "linear_ce", "--out",
                               str(tmp_path / "run"), *map(str, data_args)], stdout=full, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 5 and proc.stderr.startswith("could not write its output (stdout): No space left on device; ")
    assert len(proc.stderr.splitlines()) == 1 and listing(tmp_path) == []


def test_an_archive_whose_write_fails_is_closed_at_once_and_one_written_reads_as_np_savezs(tmp_path, monkeypatch):
    """(np.savez of NumPy 1.26, the floor, left its archive open when a write failed: closed later by the garbage
    collector, it printed a traceback after a full disk's one line: found by .ci/lowest.)"""
    arrays = {"meta": np.array('{"a": 1}'), "kernel": np.arange(6.0).reshape(2, 3), "labels": np.arange(3, dtype=np.uint8)}
    for compress, standard in ((False, np.savez), (True, np.savez_compressed)):
        write_npz(tmp_path / "ours.npz", arrays, compress)
        standard(tmp_path / "numpys.npz", **arrays)
        with np.load(tmp_path / "ours.npz") as ours, np.load(tmp_path / "numpys.npz") as numpys:
            assert list(ours) == list(numpys) == list(arrays)
            for name in arrays:
                assert ours[name].dtype == numpys[name].dtype and np.array_equal(ours[name], numpys[name])
    unraisable, write_array = [], np.lib.format.write_array
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def full_at_the_second(member, array, **options):
        if array.dtype == np.uint8:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_array(member, array, **options)

    monkeypatch.setattr(np.lib.format, "write_array", full_at_the_second)
    with open(tmp_path / "failed.npz", "wb") as f, pytest.raises(OSError):
        write_npz(f, arrays)
    gc.collect()
    assert unraisable == []


@pytest.mark.parametrize("room, file, then", [
    (1000, "a chunk's progress", "{out}/progress keeps every epoch saved; continue with: python {command} --resume"),  # as a stop says
    (10, "work.json", "no epoch was saved; run the same command again to start afresh"),  # (it said the work was done)
], ids=["a chunk", "work.json"])
def test_a_study_whose_files_cannot_be_written_exits_5_and_leaves_nothing_half_written(tmp_path, data_args, room, file, then):
    out = tmp_path / "study"
    argv = command("study.py", "--stages", "linear_ce", "--seeds", "2", "--epochs", "1", "--out", out, "--no-cache", *data_args)
    proc = run_limited("RLIMIT_FSIZE", room, argv)
    assert_one_line_error(proc, "could not write", "progress", "File too large", status=5)
    assert (file == "work.json") == ("work.json: File too large" in proc.stderr), proc.stderr
    assert proc.stderr.rstrip().endswith("no file was left half-written; " + then.format(out=out, command=shlex.join(argv[1:]))), proc.stderr
    assert not list(out.rglob(".partial-*")) and not (out / "results.json").exists()


def test_figures_that_fill_the_disk_are_named_as_the_figure_meant_and_none_is_left(tmp_path):
    """(make_assets.py named the file it draws a figure to first, `.partial-<figure>`: a hostile user's case.)"""
    with tmpfs(tmp_path / "disk", "40k") as disk:
        proc = run_script_in_process("make_assets.py", "--results", ROOT / "assets", "--out", disk / "figures")
        assert_one_line_error(proc, f"could not write {disk / 'figures' / 'training_curves.png'}: No space left on device; "
                              "no file was left half-written", status=5)
        assert not list(disk.rglob("*.png"))


# Two runs, one folder


def test_a_second_run_on_a_folder_in_use_is_refused_even_with_overwrite(tmp_path, data_args):
    out = tmp_path / "run"
    first = subprocess.Popen(command("train.py", "--stage", "linear_ce", "--epochs", "1000", "--out", out, *data_args),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in first.stdout:
        if line.startswith("[Epoch 01]"):
            break
    second = run_script_in_process("train.py", "--stage", "linear_ce", "--epochs", "1", "--overwrite", "--out", out, *data_args)
    assert_one_line_error(second, f"--out: {out} is being written by another run (process {first.pid})")
    assert first.poll() is None  # untouched, still training
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)  # (reading what it printed meanwhile: a full pipe would block its exit)
    assert first.returncode == 130 and len(json.loads((out / "metrics.json").read_text())["history"]) >= 1
    third = run_script_in_process("train.py", "--stage", "linear_ce", "--epochs", "1", "--overwrite", "--out", out, *data_args)
    assert third.returncode == 0, third.stderr  # the lock went with the first run
    assert listing(out) == ["checkpoint.npz", "metrics.json"]
