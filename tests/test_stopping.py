"""Nothing a user owns is ever deleted and stopped work is never lost: --overwrite
replaces only a run, and only once the new one has saved an epoch; SIGINT, SIGTERM and
SIGHUP end every script in one line, at any moment, with what was kept and how to go
on; a study or sweep stopped at any moment resumes to the uninterrupted results."""

import errno
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import pytest

from conftest import ROOT, assert_one_line_error, assert_tensorboard_log, load_script, run_script, run_script_in_process
from mnist_jax import cli, data
from mnist_jax.checkpoint import load_run, save_run
from mnist_jax.files import LOCK, release_locks
from mnist_jax.progress import GridProgress, option_difference
from mnist_jax.stages import STAGES
from mnist_jax.train import RunResult, TrainConfig, init_state, make_optimizer


def start(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / script), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def handles(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler of its own for `signum` (its `SigCgt` mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return bool(int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16) >> (signum - 1) & 1)


def read_until(proc: subprocess.Popen, text: str) -> None:
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"the script ended before printing {text!r}: {proc.stderr.read()}")


def stop(proc: subprocess.Popen, signum: int) -> str:
    """Send `signum`; the last line the script wrote on stderr."""
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr
    return stderr.strip().splitlines()[-1] if stderr.strip() else ""


def a_users_folder(folder):
    """A folder holding what a user keeps, and what it holds, byte for byte."""
    (folder / "thesis").mkdir(parents=True)
    (folder / "thesis" / "chapter1.tex").write_text("\\chapter{MNIST}")
    (folder / "notes.txt").write_text("keep me")
    (folder / ".git").mkdir()
    return snapshot(folder)


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def parse_train(monkeypatch, *argv):
    """train.py's own parsing of `argv`, in this process."""
    monkeypatch.setattr(sys, "argv", ["train.py", *map(str, argv), "--no-cache"])
    try:
        return load_script("train.py").parse_args()
    finally:
        release_locks()  # as the script's exit does


def saved_run(folder, config: TrainConfig) -> None:
    """A run of `config` saved after one (untrained) epoch, as train.py saves it."""
    state = init_state(config, jax.random.key(0), make_optimizer(config))
    history = [{"epoch": 1, "train_loss": 2.3, "train_accuracy": 0.1, "val_loss": 2.3, "val_accuracy": 0.1}]
    save_run(RunResult(config, "cpu", state, state, 1, history), folder,
             {"stage": config.stage, "framework": "jax", "history": history})


# --overwrite


@pytest.mark.parametrize("out", ["a folder of the user's", "the same folder through a link"])
def test_overwrite_refuses_a_folder_holding_what_train_py_did_not_write(tmp_path, monkeypatch, capsys, out):
    before = a_users_folder(tmp_path / "mine")
    target = tmp_path / "mine"
    if out == "the same folder through a link":
        (tmp_path / "link").symlink_to(target)
        target = tmp_path / "link"
    with pytest.raises(SystemExit) as stopped:
        parse_train(monkeypatch, "--stage", "linear_ce", "--out", target, "--overwrite")
    assert stopped.value.code == 2
    assert ".git/, notes.txt, thesis/, which train.py did not write" in capsys.readouterr().err
    assert snapshot(tmp_path / "mine") == before


def test_overwrite_refuses_a_link_or_a_users_file_under_a_run_files_name(tmp_path, monkeypatch, capsys):
    (tmp_path / "elsewhere.txt").write_text("keep me")
    run = tmp_path / "run"
    saved_run(run, TrainConfig("linear_ce"))
    (run / "metrics.json").unlink()
    (run / "metrics.json").symlink_to(tmp_path / "elsewhere.txt")
    with pytest.raises(SystemExit):
        parse_train(monkeypatch, "--stage", "linear_ce", "--out", run, "--overwrite")
    assert "metrics.json (a link)" in capsys.readouterr().err
    (run / "metrics.json").unlink()
    (run / "metrics.json").write_text('{"my": "numbers"}')
    with pytest.raises(SystemExit):
        parse_train(monkeypatch, "--stage", "linear_ce", "--out", run, "--overwrite")
    assert "holds metrics.json, which train.py did not write" in capsys.readouterr().err
    assert (tmp_path / "elsewhere.txt").read_text() == "keep me" and (run / "metrics.json").read_text() == '{"my": "numbers"}'


@pytest.mark.parametrize("damage", ["cut short", "not an archive of ours"])
def test_resume_and_overwrite_agree_on_a_damaged_checkpoint(tmp_path, monkeypatch, capsys, damage):
    """A checkpoint.npz cut short still begins as train.py writes one (its first entry, meta.npy): --resume
    advises --overwrite, which replaces it. A file of that name that does not is a user's: both refuse it."""
    saved_run(tmp_path, TrainConfig("mlp"))
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(path.read_bytes()[:2000] if damage == "cut short" else b"PK\x03\x04 my own archive")
    with pytest.raises(SystemExit):
        parse_train(monkeypatch, "--stage", "mlp", "--out", tmp_path, "--resume")
    resume = capsys.readouterr().err
    if damage == "cut short":
        assert resume.endswith("pass --overwrite to start again\n")
        assert parse_train(monkeypatch, "--stage", "mlp", "--out", tmp_path, "--overwrite").overwrite
    else:
        assert resume.endswith("train.py did not write it: move it or choose another --out\n")
        with pytest.raises(SystemExit):
            parse_train(monkeypatch, "--stage", "mlp", "--out", tmp_path, "--overwrite")
        assert "holds checkpoint.npz, which train.py did not write" in capsys.readouterr().err


def test_a_users_files_named_like_the_projects_own_are_left_alone(tmp_path, monkeypatch, capsys):
    """A `.partial-` file, a hard link named as the lock, links in place of a stage's
    folder or of the progress folder: refused, nothing written through them."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / ".partial-notes.txt").write_text("draft")
    with pytest.raises(SystemExit):
        parse_train(monkeypatch, "--stage", "linear_ce", "--out", tmp_path / "mine")
    assert "holds .partial-notes.txt" in capsys.readouterr().err and (tmp_path / "mine" / ".partial-notes.txt").read_text() == "draft"
    (tmp_path / "diary.txt").write_text("dear diary")
    os.link(tmp_path / "diary.txt", tmp_path / "mine" / LOCK)
    with pytest.raises(SystemExit):
        parse_train(monkeypatch, "--stage", "linear_ce", "--out", tmp_path / "mine")
    assert f"holds a {LOCK} that is not this project's lock" in capsys.readouterr().err
    assert (tmp_path / "diary.txt").read_text() == "dear diary"
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "linear_mse-seed42").symlink_to(tmp_path / "mine")
    with pytest.raises(SystemExit):
        parse_train(monkeypatch, "--stage", "all", "--out", tmp_path / "runs")
    assert "linear_mse-seed42 is a link" in capsys.readouterr().err
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "progress").symlink_to(tmp_path / "mine")
    parser = cli.ArgumentParser(prog="study.py", out=str(tmp_path / "study"), results=("results.json",), resume=True, trains=False)
    with pytest.raises(SystemExit):
        parser.parse(["--overwrite"])
    assert "holds progress (a link or a file)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == [LOCK, ".partial-notes.txt"]


def test_benchmark_overwrites_only_a_benchmarks_json(tmp_path, monkeypatch, capsys):
    (tmp_path / "benchmark.json").write_text('{"stages": {}, "steps": [], "command": "python scripts/study.py"}')
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--out", str(tmp_path), "--overwrite"])
    with pytest.raises(SystemExit):
        load_script("benchmark.py").main()
    err = capsys.readouterr().err
    assert "benchmark.json in" in err and "will not be replaced" in err
    assert "study.py" in (tmp_path / "benchmark.json").read_text()


def test_make_assets_stopped_as_a_figure_is_written_leaves_no_file(tmp_path):
    """A stop signal that comes while a figure is saved waits for the file to be whole, then ends the script: here
    it comes then, every time (the figure's drawing sends it). The figures are drawn beside their places and moved
    there at the end, and that one was left behind, under a name of its own (a hostile user's case)."""
    code = ("import os, runpy, signal, sys; from mnist_jax import plots; draw = plots.width_sweep; "
            "plots.width_sweep = lambda *a: (draw(*a), os.kill(os.getpid(), signal.SIGTERM)); "
            f"sys.argv = ['make_assets.py', *sys.argv[1:]]; sys.path.insert(0, {str(ROOT / 'scripts')!r}); "
            f"runpy.run_path({str(ROOT / 'scripts' / 'make_assets.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, "--linearity", ROOT / "assets" / "linearity.json", "--out", tmp_path / "out"],
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "stopped by SIGTERM: no file was left half-written", status=128 + signal.SIGTERM)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_make_assets_overwrites_a_figure_it_drew_and_never_a_users_matplotlib_png_of_the_same_name(tmp_path):
    """(Any PNG Matplotlib wrote passed for the project's figure: a user's chart was replaced.)"""
    import matplotlib.pyplot as plt

    args = ["--linearity", ROOT / "assets" / "linearity.json", "--out", tmp_path, "--overwrite"]
    assert run_script_in_process("make_assets.py", *args).returncode == 0  # draws width_sweep.png, then replaces it
    assert run_script_in_process("make_assets.py", *args).returncode == 0
    fig = plt.figure()
    fig.savefig(tmp_path / "width_sweep.png")
    plt.close(fig)
    users = (tmp_path / "width_sweep.png").read_bytes()
    assert_one_line_error(run_script_in_process("make_assets.py", *args), "width_sweep.png in", "will not be replaced",
                          "(a figure is replaced only if it carries the mark of the figures this project draws, which those "
                          "drawn by its earlier versions lack)")
    assert (tmp_path / "width_sweep.png").read_bytes() == users


def test_overwrite_in_a_clone_refuses_the_clone_in_one_line(tmp_path):
    """`--out .` in a clone of this project: everything stays, the message says why."""
    before = a_users_folder(tmp_path)
    proc = run_script_in_process("train.py", "--stage", "linear_ce", "--out", ".", "--overwrite", cwd=tmp_path)  # its parsing
    assert_one_line_error(proc, "--out: . holds .git/, notes.txt, thesis/, which train.py did not write", "choose another --out")
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, data_args):
    out = tmp_path_factory.mktemp("linear_ce") / "run"
    proc = run_script("train.py", "--stage", "linear_ce", "--epochs", "1", "--out", out, *data_args)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("failure, args, env, status", [
    ("diverges in epoch 1", ["--stage", "mlp", "--lr", "1e30"], {}, 3),
    ("does not fit", ["--stage", "linear_ce"], {"MNIST_JAX_MEMORY_LIMIT": "1M"}, 4),
])
def test_a_replacement_that_fails_before_its_first_epoch_keeps_the_run_it_replaces(one_epoch_run, tmp_path, data_args, failure, args, env, status):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.npz", "metrics.json"):
        (out / name).write_bytes((one_epoch_run / name).read_bytes())
    before = snapshot(out)
    proc = run_script("train.py", *args, "--epochs", "2", "--out", out, "--overwrite", *data_args, env=env)
    assert proc.returncode == status and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(out) == before


# Signals


def test_a_signal_while_importing_ends_in_one_line(tmp_path):
    proc = start("study.py", "--out", tmp_path / "run")
    while not handles(proc.pid, signal.SIGTERM):  # the first thing the script does, before its imports
        time.sleep(0.001)
    assert stop(proc, signal.SIGTERM) == "stopped by SIGTERM: nothing was started" and proc.returncode == 143


@pytest.mark.slow
def test_a_signal_at_any_moment_of_the_start_ends_in_one_line(tmp_path, data_args):
    """Sent while the script imports and sets JAX up (an exception raised inside JAX's import
    can abort the process with C++ output), then while it claims --out and loads MNIST."""
    for i, delay in enumerate((0.1, 0.2, 0.3, 0.45, 0.6, 0.8)):
        signum = (signal.SIGINT, signal.SIGTERM)[i % 2]
        proc = start("study.py", "--stages", "linear_ce", "--seeds", "2", "--epochs", "1", "--out", tmp_path / f"run{i}", *data_args)
        time.sleep(delay)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signum, (delay, stderr)
        assert len(stderr.splitlines()) == 1 and stderr.startswith(f"stopped by {signal.Signals(signum).name}: "), (delay, stderr)


def test_a_study_refused_for_its_data_leaves_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_script_in_process("study.py", "--data-dir", tmp_path / "empty", "--out", tmp_path / "study")  # before any training
    assert_one_line_error(proc, "data error")
    assert not (tmp_path / "study").exists()


# train.py, sent `signum` by a thread of its own once the first program starts compiling: whatever the load on
# the machine, the signal comes while XLA compiles and long before an epoch could be saved.
SIGNAL_IN_COMPILE = """import os, runpy, signal, sys, threading, jax.stages
signum, compiling, compile = int(sys.argv.pop(1)), threading.Event(), jax.stages.Lowered.compile
jax.stages.Lowered.compile = lambda *args, **kwargs: (compiling.set(), compile(*args, **kwargs))[1]
threading.Thread(target=lambda: (compiling.wait(), os.kill(os.getpid(), signum)), daemon=True).start()
sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_compiling_ends_in_one_line_with_its_status(tmp_path, data_args, signum):
    """Sent while XLA compiles (no cache): no crash at exit, the lock released, the
    folders the run made removed, as nothing was saved."""
    out = tmp_path / "new" / "run"
    proc = subprocess.run([sys.executable, "-c", SIGNAL_IN_COMPILE, str(int(signum)), str(ROOT / "scripts" / "train.py"),
                           "--stage", "mlp_bn", "--no-cache", "--out", str(out), *data_args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signum, proc.stderr
    assert proc.stderr == (f"stopped by {signal.Signals(signum).name}: no epoch of mlp_bn was saved; "
                           "run the same command again to start afresh\n")
    assert not (tmp_path / "new").exists()


def test_a_run_of_several_stages_stopped_in_its_third_resumes_there(tmp_path, data_args):
    """SIGTERM inside `mlp`: the message names what was kept and the command to go on;
    that command skips the finished stages and continues `mlp` where it stopped."""
    out = tmp_path / "my runs" / "several"  # the command to continue is quoted for the shell
    args = ["--stage", "linear_mse,linear_ce,mlp,mlp_bn", "--epochs", "2", "--out", out, *data_args]
    proc = start("train.py", *args)
    read_until(proc, "stage mlp:")
    read_until(proc, "[Epoch 01]")
    while not (out / "mlp-seed42" / "metrics.json").exists():  # epoch 1 saved, epoch 2 under way
        time.sleep(0.001)
    line = stop(proc, signal.SIGTERM)
    assert proc.returncode == 143
    assert line.startswith("stopped by SIGTERM: the stages before it are finished (linear_mse, linear_ce); ")
    finished = {name: (out / f"{name}-seed42" / "metrics.json").read_bytes() for name in ("linear_mse", "linear_ce")}
    kept = len(load_run(out / "mlp-seed42").history)

    python, *command = shlex.split(line.split("continue with: ")[1])  # pasted as it stands
    assert python == "python" and command == [str(ROOT / "scripts" / "train.py"), *map(str, args), "--resume"]
    resumed = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("skipped") == 2 and f"resuming {out / 'mlp-seed42'} after epoch {kept}" in resumed.stdout
    assert {name: (out / f"{name}-seed42" / "metrics.json").read_bytes() for name in finished} == finished
    for stage in ("mlp", "mlp_bn"):
        assert len(json.loads((out / f"{stage}-seed42" / "metrics.json").read_text())["history"]) == 2
    assert "| `mlp_bn` |" in resumed.stdout and "mlp_dropout" not in resumed.stdout
    assert not list(out.rglob(LOCK))


def test_run_folders_are_named_by_settings_that_read_back_as_themselves(tmp_path, monkeypatch):
    """Learning rates that differ past six digits train into folders of their own; a setting `:g` writes
    exactly keeps its name (runs/linear_ce-lr0.0003-seed42 of earlier versions is found again)."""
    monkeypatch.chdir(tmp_path)
    run_dir = load_script("train.py").run_dir
    names = [run_dir(parse_train(monkeypatch, "--stage", "mlp", *argv), "mlp").name for argv in (
        ["--lr", "0.0012345671"], ["--lr", "0.0012345672"], ["--lr", "3e-4", "--hidden", "1234567"], ["--lr", "1e-3"])]
    assert names == ["mlp-lr0.0012345671-seed42", "mlp-lr0.0012345672-seed42", "mlp-hidden1234567-lr0.0003-seed42", "mlp-seed42"]


def test_resume_compares_every_option_given_even_at_its_default_value(tmp_path, monkeypatch, capsys):
    saved_run(tmp_path, TrainConfig("mlp", lr=3e-3))
    with pytest.raises(SystemExit):
        parse_train(monkeypatch, "--stage", "mlp", "--lr", "1e-3", "--resume", "--out", tmp_path)
    assert "not what was asked: --lr 0.001 (saved: 0.003)" in capsys.readouterr().err
    assert parse_train(monkeypatch, "--stage", "mlp", "--lr", "3e-3", "--resume", "--out", tmp_path).resumed["mlp"]


def test_a_replacement_stopped_before_its_first_epoch_says_the_run_it_replaces_is_kept(tmp_path, monkeypatch):
    """The epoch saved in --out is the replaced run's until the new one saves its own: a stop before then
    says that run is kept as it was (not 'keeps the checkpoint of epoch 1; continue with ... --resume')."""
    saved_run(tmp_path, TrainConfig("mlp"))
    train = load_script("train.py")
    argv = ["--stage", "mlp", "--epochs", "3", "--lr", "0.01", "--out", str(tmp_path), "--overwrite", "--no-cache"]
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    try:
        note = train.stop_note(train.parse_args(), "mlp")
    finally:
        release_locks()
    assert note == f"the run being replaced in {tmp_path} is kept as it was; run the same command again to start afresh"


# Several stages in one command (each case found by a hostile pass)


def test_a_replacement_of_several_stages_stopped_before_one_is_replaced_says_to_run_the_command_again(tmp_path, monkeypatch):
    """--resume would continue that stage's old run (or refuse its epochs): the same command replaces every stage."""
    for stage in ("linear_ce", "deep_linear"):
        saved_run(tmp_path / f"{stage}-seed42", TrainConfig(stage, epochs=2))
    train = load_script("train.py")
    argv = ["--stage", "linear_ce,deep_linear", "--epochs", "1", "--out", str(tmp_path), "--overwrite", "--no-cache"]
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    try:
        args = train.parse_args()
    finally:
        release_locks()
    assert train.stop_note(args, "linear_ce") == (  # before linear_ce saved an epoch, and once it has
        f"the run being replaced in {tmp_path / 'linear_ce-seed42'} is kept as it was; run the same command again to start afresh")
    args.written.add("linear_ce")
    assert train.stop_note(args, "linear_ce") == (
        f"{tmp_path / 'linear_ce-seed42'} keeps the checkpoint of epoch 1; run the same command again to replace every stage afresh")
    assert train.stop_note(args, "deep_linear") == (
        f"the stages before it are finished (linear_ce); the run being replaced in {tmp_path / 'deep_linear-seed42'} "
        "is kept as it was; run the same command again to replace every stage afresh")
    args.written.add("deep_linear")  # every stage replaced: --resume continues
    assert train.stop_note(args, "deep_linear").endswith("continue with: python train.py --stage linear_ce,deep_linear "
                                                         f"--epochs 1 --out {tmp_path} --no-cache --resume")


def test_a_stop_line_naming_a_folder_with_a_newline_gives_a_command_that_continues_in_that_folder(tmp_path, monkeypatch):
    """The folder is shown as a refusal shows it (each unprintable character as its escape); the command to continue, as
    pasted into bash, gives the folder back (its $'...' escapes are not escaped again by the line they end)."""
    out = tmp_path / "my\nruns\u00a0a"
    saved_run(out, TrainConfig("linear_ce", epochs=1))
    train = load_script("train.py")
    monkeypatch.setattr(sys, "argv", ["train.py", "--stage", "linear_ce", "--epochs", "2", "--out", str(out), "--resume"])
    try:
        args = train.parse_args()
    finally:
        release_locks()
    line = cli.one_line(f"stopped by SIGINT: {train.stop_note(args, 'linear_ce')}")  # as `cli` prints it
    assert line.isprintable() and line.startswith(f"stopped by SIGINT: {tmp_path}/my\\nruns\\xa0a keeps the checkpoint of epoch 1")
    words = subprocess.run(["bash", "-c", f"printf '%s\\0' {line.split('continue with: ')[1]}"], capture_output=True,
                           check=True).stdout.split(b"\0")[:-1]
    assert list(map(os.fsdecode, words)) == ["python", "train.py", "--stage", "linear_ce", "--epochs", "2", "--out", str(out),
                                             "--resume"]


def test_a_stop_line_of_a_study_in_a_folder_with_a_newline_gives_a_command_that_continues_in_that_folder(tmp_path, monkeypatch):
    out = tmp_path / "my\nstudy"
    monkeypatch.setattr(sys, "argv", ["study.py", "--stages", "linear_ce", "--out", str(out), "--no-cache"])
    try:
        progress = load_script("study.py").build_parser().parse().progress
        progress.save("linear_ce-hidden0-bits32-from0-10", {"kernel": np.zeros(1)}, np.zeros((1, 10, 6)))  # an epoch saved
        line = cli.one_line(f"stopped by SIGTERM: {cli._stop_note()}")  # as `cli` prints it
    finally:
        release_locks()
    assert line.isprintable() and line.startswith(f"stopped by SIGTERM: {tmp_path}/my\\nstudy/progress keeps every epoch saved")
    words = subprocess.run(["bash", "-c", f"printf '%s\\0' {line.split('continue with: ')[1]}"], capture_output=True,
                           check=True).stdout.split(b"\0")[:-1]
    assert list(map(os.fsdecode, words)) == ["python", "study.py", "--stages", "linear_ce", "--out", str(out), "--no-cache",
                                             "--resume"]


def test_several_stages_are_refused_for_the_folders_as_they_are(tmp_path, monkeypatch, capsys):
    def refused(*argv) -> str:
        with pytest.raises(SystemExit):
            parse_train(monkeypatch, *argv)
        return capsys.readouterr().err.strip().splitlines()[-1]

    two = ["--stage", "linear_ce,linear_mse", "--epochs", "1"]
    saved_run(tmp_path / "a" / "linear_ce-seed42", TrainConfig("linear_ce", epochs=1))
    (tmp_path / "a" / "linear_mse-seed42").mkdir()
    (tmp_path / "a" / "linear_mse-seed42" / "metrics.json").write_text("my notes")  # where the second stage's run goes
    assert f"{tmp_path / 'a' / 'linear_mse-seed42'} holds metrics.json, which train.py did not write" in \
        refused(*two, "--out", tmp_path / "a", "--resume")  # (--resume wrote over it)
    saved_run(tmp_path / "one", TrainConfig("linear_ce", epochs=1))
    assert refused(*two, "--out", tmp_path / "one").endswith(
        "holds the run of one stage; with several stages --out holds a folder for each: choose another --out")
    assert refused("--stage", "deep_linear", "--out", tmp_path / "a").endswith(
        "holds run folders (linear_ce-seed42/), as the --out of several stages does; with one stage --out is the run's own "
        f"folder: choose another --out (say --out {tmp_path / 'a' / 'deep_linear-seed42'})")  # (was: 'which train.py did not write')
    (tmp_path / "one" / "metrics.json").write_text("my notes")  # over a run's own file: --resume would write over it
    assert f"{tmp_path / 'one'} holds metrics.json, which train.py did not write" in \
        refused("--stage", "linear_ce", "--epochs", "1", "--out", tmp_path / "one", "--resume")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")  # no --out: runs/<name> each
    assert refused(*two, "--resume").endswith("--resume: no checkpoint in runs for any of its stages to continue")  # (was: None)
    saved_run(tmp_path / "empty" / "runs" / "linear_ce-seed42", TrainConfig("linear_ce", epochs=1))
    assert refused(*two).endswith("or choose another --out (say --out runs/linear_ce-linear_mse)")  # (was: runs/all)
    assert refused("--stage", "all,mlp").endswith("in 'all,mlp': all names every stage, so it stands alone")


def log_written_after(run: str, before: Callable[[Path], object]) -> Callable:
    """`cli.write_tensorboard` that first does `before(folder / run)` when it writes `run`'s log (a full disk, a folder put there)."""
    write_log = cli.write_tensorboard

    def write(folder, name, *args):
        if name == run:
            before(folder / name)
        write_log(folder, name, *args)
    return write


@pytest.mark.slow  # (three runs: some 5 s)
def test_a_finished_stage_skipped_by_resume_writes_its_log_and_a_failure_in_a_later_one_names_the_finished(tiny, tmp_path, monkeypatch):
    """A stop can come between a run's last file and its TensorBoard log: --resume skips the run and writes the log."""
    monkeypatch.setattr(data, "load_mnist", lambda *_: tiny)  # the synthetic digits, as the script imports it
    args = ["--stage", "linear_ce,linear_mse", "--epochs", "1", "--out", tmp_path / "runs"]
    assert run_script_in_process("train.py", *args).returncode == 0
    resumed = run_script_in_process("train.py", *args, "--resume", "--tensorboard", tmp_path / "board")
    assert resumed.returncode == 0 and resumed.stdout.count("), skipped\n") == 2, resumed.stderr
    for stage in ("linear_ce", "linear_mse"):
        metrics = json.loads((tmp_path / "runs" / f"{stage}-seed42" / "metrics.json").read_text())
        hparams = {"stage": stage, "epochs": 1, "batch_size": 128, "lr": 1e-3, "seed": 42, "hidden": None, "dropout": 0}
        assert_tensorboard_log(tmp_path / "board" / f"{stage}-seed42", metrics["history"], metrics["test_accuracy"], hparams)
    def full_disk(log: Path):
        raise OSError(errno.ENOSPC, "No space left on device")

    board = ["--out", tmp_path / "logged", "--tensorboard", tmp_path / "board2"]
    with monkeypatch.context() as patched:
        patched.setattr(cli, "write_tensorboard", log_written_after("linear_mse-seed42", full_disk))  # the disk fills
        assert_one_line_error(run_script_in_process("train.py", *args[:4], *board), "could not write the TensorBoard log "
                              "linear_mse-seed42: No space left on device; the runs of linear_ce, linear_mse are finished and "
                              "saved; the same command with --resume writes the log", status=5)
    assert run_script_in_process("train.py", *args[:4], *board, "--resume").returncode == 0
    assert sorted(p.name for p in (tmp_path / "board2").iterdir()) == ["linear_ce-seed42", "linear_mse-seed42"]
    diverged = run_script_in_process("train.py", "--stage", "linear_ce,deep_linear", "--epochs", "1", "--lr", "1e30",
                                     "--out", tmp_path / "diverged")
    assert_one_line_error(diverged, "training stopped: non-finite loss in epoch 1; the stages before it are finished "
                          "(linear_ce); nothing of deep_linear was saved", status=3)  # (was: 'nothing was saved')


@pytest.mark.slow  # (a script's run, in-process on synthetic digits)
def test_a_log_a_study_cannot_write_after_training_says_its_results_are_saved(tiny, tmp_path, monkeypatch):
    """A folder put at a log's place while the study trained: the results are written first, then one line, status 5
    (it was status 2, as if refused before any work, and no results.json)."""
    monkeypatch.setattr(data, "load_mnist", lambda *_: tiny)
    monkeypatch.setattr(cli, "write_tensorboard", log_written_after("linear_ce-seed1", lambda log: log.mkdir(parents=True)))
    out, board = tmp_path / "study", tmp_path / "board"
    proc = run_script_in_process("study.py", "--stages", "linear_ce", "--seeds", "2", "--epochs", "1", "--out", out, "--tensorboard", board)
    assert_one_line_error(proc, f"could not write the TensorBoard log linear_ce-seed1: --tensorboard: {board / 'linear_ce-seed1'} "
                          "is there and is not a TensorBoard log this project wrote", f"the results are saved in {out / 'results.json'}",
                          status=5)
    assert (out / "results.json").is_file() and sorted(p.name for p in board.iterdir()) == ["linear_ce-seed0", "linear_ce-seed1"]
    assert not list((board / "linear_ce-seed1").iterdir())


# Long work resumes


def results_without_timings(folder) -> tuple[dict, dict]:
    report = json.loads((folder / "results.json").read_text())
    for stage in report["stages"].values():
        del stage["compile_seconds"], stage["train_seconds"]
    del report["seconds"]
    with np.load(folder / "study_arrays.npz") as saved:
        return report, dict(saved)


STUDY = ["--stages", "linear_ce,mlp", "--seeds", "2", "--epochs", "4"]


@pytest.fixture(scope="module")
def whole_study(tmp_path_factory, data_args):
    out = tmp_path_factory.mktemp("study") / "whole"
    whole = run_script_in_process("study.py", *STUDY, *data_args, "--out", out)
    assert whole.returncode == 0, whole.stderr
    return out


@pytest.mark.parametrize("stopped_by", [signal.SIGKILL, signal.SIGTERM])
def test_a_study_stopped_at_a_random_moment_resumes_to_the_uninterrupted_results(whole_study, tmp_path, data_args, stopped_by):
    """Stopped inside its second stage, at a moment drawn at random (printed on failure),
    and resumed: results.json and every array the figures read equal an uninterrupted run."""
    args = [*STUDY, *data_args]
    delay = random.uniform(0, 0.8)
    out = tmp_path / "stopped"
    proc = start("study.py", *args, "--out", out)
    read_until(proc, "mlp, 2 seeds: epoch 1/")
    time.sleep(delay)
    line = stop(proc, stopped_by)
    if proc.returncode == 0:
        pytest.fail(f"the study ended within {delay:.2f} s of its second stage's first epoch: stop it sooner")
    if stopped_by == signal.SIGTERM:
        command = shlex.join(["python", str(ROOT / "scripts" / "study.py"), *map(str, args), "--out", str(out), "--resume"])
        assert proc.returncode == 143 and line.endswith(f"keeps every epoch saved; continue with: {command}"), line
    assert_one_line_error(run_script_in_process("study.py", *args, "--out", out), "holds unfinished work; pass --resume")  # its parsing
    if stopped_by == signal.SIGKILL:  # a replacement that fails before its first epoch keeps the work it would replace
        saved = snapshot(out)
        replacement = run_script("study.py", *args, "--out", out, "--overwrite", env={"MNIST_JAX_MEMORY_LIMIT": "1M"})
        assert_one_line_error(replacement, "does not fit", status=4)
        assert snapshot(out) == saved
    resumed = run_script_in_process("study.py", *args, "--out", out, "--resume")
    assert resumed.returncode == 0, f"stopped {delay:.2f} s in: {resumed.stderr}"
    (report, arrays), (whole_report, whole_arrays) = results_without_timings(out), results_without_timings(whole_study)
    assert report["stages"] == whole_report["stages"] and report["steps"] == whole_report["steps"], f"stopped {delay:.2f} s in"
    assert arrays.keys() == whole_arrays.keys() and all(np.array_equal(arrays[k], whole_arrays[k]) for k in arrays)
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "study_arrays.npz"]  # the progress is gone


def test_a_sweep_stopped_by_sigterm_resumes_to_the_uninterrupted_grid_and_only_the_same_grid(tmp_path, data_args):
    grid = ["--stages", "linear_ce,mlp_dropout", "--dropout", "0.2,0.5", "--seeds", "2", *data_args]
    args = [*grid, "--epochs", "2"]
    out = tmp_path / "stopped"
    proc = start("sweep.py", *args, "--out", out)
    read_until(proc, "mlp_dropout (hidden 256), 4 models: pass 1/")  # (in two chunks: a pass is a chunk's epoch)
    time.sleep(random.uniform(0, 0.5))
    stop(proc, signal.SIGTERM)
    assert proc.returncode == 143
    other = run_script_in_process("sweep.py", *grid, "--epochs", "3", "--out", out, "--resume")  # its parsing refuses it
    assert_one_line_error(other, "--resume: the work saved in", "--epochs 3 (saved: 2)", "pass --overwrite to start again")
    resumed = run_script_in_process("sweep.py", *args, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    whole = run_script_in_process("sweep.py", *args, "--out", tmp_path / "whole")  # uninterrupted (the programs the resume compiled)
    assert whole.returncode == 0, whole.stderr
    rows = [json.loads((folder / "sweep.json").read_text())["rows"] for folder in (out, tmp_path / "whole")]
    assert rows[0] == rows[1] and len(rows[0]) == 6


def grid_parser(tmp_path) -> cli.ArgumentParser:
    """A study's parser in miniature: --out, --overwrite, --resume and one option that decides the results."""
    parser = cli.ArgumentParser(prog="study.py", out=str(tmp_path), results=("results.json",), resume=True, trains=False)
    parser.add_argument("--lr", type=float)
    return parser


def parse_grid(tmp_path, *argv):
    try:
        return grid_parser(tmp_path).parse(list(argv))
    finally:
        release_locks()  # as the script's exit does


CHUNK, STATES = "mlp-hidden256-bits1-from0-3", {"kernel": np.ones((3, 784, 10), np.float32)}


def test_a_flag_that_differs_on_resume_is_told_as_given_or_not():
    """(A sweep started with --add and resumed without it was told '--add False (saved: True)'.)"""
    assert option_difference("add", False, True) == "--add not given (saved: given)"
    assert option_difference("lr", None, 0.05) == "--lr not given (saved: 0.05)"


def test_overwrite_never_reads_the_progress_of_the_work_it_replaces(tmp_path, capsys):
    """A study of lr 0.05 stopped after a chunk was saved, then --overwrite with the default lr:
    it starts again (the chunk of lr 0.05 is not loaded); --resume of other settings is refused."""
    parse_grid(tmp_path, "--lr", "0.05").progress.save(CHUNK, STATES, np.zeros((1, 3, 5), np.float32))
    assert parse_grid(tmp_path, "--overwrite").progress.load(CHUNK, STATES) is None
    assert parse_grid(tmp_path, "--lr", "0.05", "--resume").progress.load(CHUNK, STATES) is not None
    with pytest.raises(SystemExit) as stopped:
        parse_grid(tmp_path, "--resume")
    assert stopped.value.code == 2 and "--lr not given (saved: 0.05)" in capsys.readouterr().err


def test_a_finished_grid_clears_the_progress_of_every_stage_a_control_named_with_digits_too(tmp_path):
    """The progress of `random_features_1024` outlived its study, and the next script took it for a user's files."""
    progress = parse_grid(tmp_path).progress
    for stage in STAGES:
        progress.save(f"{stage}-hidden{STAGES[stage].hidden or 0}-bits1-from0-3", STATES, np.zeros((1, 3, 5), np.float32))
    assert GridProgress(tmp_path, {"script": Path(sys.argv[0]).name}).foreign() == []
    progress.clear()
    assert not (tmp_path / "progress").exists()


@pytest.mark.parametrize("users, found", [(False, None), (True, None), (False, ".partial-work.k9x2m0qa.json")],
                         ids=["made by the grid", "a user's, empty", "made by a run killed writing its first file"])
def test_a_grid_finished_after_a_resume_removes_its_progress_folder_only_if_it_made_it(tmp_path, users, found):
    """A `progress/` the user made (empty) before the grid saved its work in it is left, empty, as it was found;
    one the grid made goes with its files, however many processes the work took (a stopped run, then --resume),
    and so does one holding only the `work.json` a run killed (kill -9) was writing."""
    if users or found:
        (tmp_path / "progress").mkdir()
    if found:
        (tmp_path / "progress" / found).write_text('{"scri')
    parse_grid(tmp_path).progress.save(CHUNK, STATES, np.zeros((1, 3, 5), np.float32))  # a run stopped after a save
    resumed = parse_grid(tmp_path, "--resume").progress
    resumed.save(CHUNK, STATES, np.zeros((2, 3, 5), np.float32))
    assert "keeps every epoch saved; continue with: " in cli._stop_note()  # what a stop, or a closed output, says
    resumed.clear()  # finished
    assert cli._stop_note() == "it came after the work was done; every result is written"
    if users:
        assert list((tmp_path / "progress").iterdir()) == []
    else:
        assert not (tmp_path / "progress").exists()


def test_damaged_progress_is_refused_on_resume_before_any_work_and_replaced_with_overwrite(tmp_path, capsys):
    """A progress file cut short is still the study's (its name says so): --resume names the damage in
    one line with status 2 as it parses (before any training), --overwrite starts again without reading it."""
    parse_grid(tmp_path).progress.save(CHUNK, STATES, np.zeros((1, 3, 5), np.float32))
    path = tmp_path / "progress" / f"{CHUNK}.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert GridProgress(tmp_path, {"script": Path(sys.argv[0]).name}).foreign() == []
    with pytest.raises(SystemExit) as stopped:
        parse_grid(tmp_path, "--resume")
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and f"--resume: {path} is damaged" in err and "pass --overwrite to start again" in err
    assert parse_grid(tmp_path, "--overwrite").progress.load(CHUNK, STATES) is None


def test_a_sweep_never_replaces_the_unfinished_work_of_a_study_in_its_folder(refused, tmp_path):
    """(sweep.py --overwrite took a stopped study's progress/ for its own and deleted it.) Nor the other way round."""
    for script, other in (("study.py", "sweep.py"), ("sweep.py", "study.py")):
        progress = GridProgress(tmp_path / script, {"script": script})
        progress.start()
        progress.save(CHUNK, STATES, np.zeros((1, 3, 5), np.float32))
        saved = snapshot(tmp_path / script)
        for flag in ("--overwrite", "--resume"):
            line = refused(other, "--stages", "mlp", "--out", tmp_path / script, flag)
            assert line.endswith(f"holds progress/{CHUNK}.npz, progress/work.json, which {other} did not write (or cannot "
                                 "read, and so does not replace); choose another --out"), line
        assert snapshot(tmp_path / script) == saved


def test_progress_holding_a_users_file_is_refused(tmp_path, capsys):
    parser = cli.ArgumentParser(prog="study.py", out=str(tmp_path), results=("results.json",), resume=True, trains=False)
    (tmp_path / "progress").mkdir()
    (tmp_path / "progress" / "plan.md").write_text("mine")
    with pytest.raises(SystemExit):
        parser.parse(["--overwrite"])
    assert "holds progress/plan.md, which" in capsys.readouterr().err
    assert (tmp_path / "progress" / "plan.md").read_text() == "mine"
