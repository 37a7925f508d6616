"""Faults lose nothing: divergence stops cleanly, runs killed at any moment resume
exactly, damaged checkpoints are refused, reruns are identical."""

import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import ROOT, assert_one_line_error, npz_with_header, run_script, run_script_in_process
from mnist_jax.checkpoint import (
    CheckpointError, has_checkpoint, load_classifier, load_model, load_run, save_run, saved_epochs, to_nnx,
)
from mnist_jax.files import LOCK, FolderBusy, folder_locked, lock_folder, release_locks
from mnist_jax.torch_reference import to_torch
from mnist_jax.train import NonFiniteLoss, RunResult, TrainConfig, init_state, make_optimizer, run_record, train


def metrics(run_dir) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def without_timings(m: dict) -> dict:
    m = {k: v for k, v in m.items() if k != "compile_seconds"}
    m["history"] = [{k: v for k, v in row.items() if k != "seconds"} for row in m["history"]]
    return m


def params_equal(a, b) -> bool:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return all(np.array_equal(x, y) for x, y in leaves)


@pytest.fixture(scope="module")
def mlp_bn_runs(tmp_path_factory, data_args):
    """mlp_bn for 3 epochs twice, and once stopped after epoch 1 then resumed."""
    root = tmp_path_factory.mktemp("mlp_bn")
    common = ["--stage", "mlp_bn", *data_args]
    runs = [start(*common, "--epochs", "3", "--out", root / "first"), start(*common, "--epochs", "3", "--out", root / "second"),
            start(*common, "--epochs", "1", "--out", root / "resumed")]  # at once: one's single-threaded work overlaps another's
    for run in runs:
        succeeded(run)
    assert len(metrics(root / "resumed")["history"]) == 1
    resumed = run_script("train.py", *common, "--epochs", "3", "--resume", "--out", root / "resumed")
    assert resumed.returncode == 0, resumed.stderr
    return root, resumed.stdout


def test_resuming_after_epoch_1_ends_exactly_like_an_uninterrupted_run(mlp_bn_runs):
    root, stdout = mlp_bn_runs
    assert "resuming" in stdout and stdout.count("[Epoch") == 2
    assert without_timings(metrics(root / "resumed")) == without_timings(metrics(root / "first"))
    whole, resumed = load_run(root / "first"), load_run(root / "resumed")
    assert params_equal(whole.final.params, resumed.final.params)
    assert params_equal(whole.final.batch_stats, resumed.final.batch_stats)
    assert params_equal(whole.best.params, resumed.best.params)


@pytest.mark.parametrize("stage", ["mlp_bn", "mlp_dropout"])
def test_the_same_command_twice_gives_identical_metrics(stage, mlp_bn_runs, data_args, tmp_path):
    if stage == "mlp_bn":
        first, second = mlp_bn_runs[0] / "first", mlp_bn_runs[0] / "second"
    else:
        first, second = tmp_path / "first", tmp_path / "second"
        runs = [start("--stage", stage, "--epochs", "1", "--out", out, *data_args) for out in (first, second)]  # at once
        for run in runs:
            succeeded(run)
    assert without_timings(metrics(first)) == without_timings(metrics(second))


def test_a_run_diverging_in_epoch_1_exits_3_and_writes_nothing(tmp_path, data_args):
    out = tmp_path / "run"
    proc = run_script_in_process("train.py", "--stage", "mlp", "--lr", "1e30", "--out", out, *data_args)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "training stopped: non-finite loss in epoch 1; nothing was saved"
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_a_run_diverging_later_keeps_the_last_good_epoch(tmp_path, tiny):
    """Two good epochs saved, then the weights go bad: epoch 3 raises before anything
    is saved, and the run folder still holds epoch 2's finite checkpoint and metrics."""
    out = tmp_path / "run"
    save = lambda run: save_run(run, out, run_record(run))  # noqa: E731  (what train.py does)
    train(TrainConfig("linear_ce", epochs=2), tiny, on_epoch=save)
    saved_metrics = (out / "metrics.json").read_bytes()
    run = load_run(out)
    run.final = run.final._replace(params=jax.tree.map(lambda w: w.at[0].set(jnp.inf), run.final.params))
    run.config = TrainConfig("linear_ce", epochs=3)
    with pytest.raises(NonFiniteLoss, match="epoch 3"):
        train(run.config, tiny, on_epoch=save, resume=run)
    assert (out / "metrics.json").read_bytes() == saved_metrics
    kept = load_run(out)
    assert len(kept.history) == 2
    assert all(bool(jnp.isfinite(w).all()) for w in jax.tree.leaves(kept.final.params))


def test_a_checkpoint_restores_every_array_of_the_run(tmp_path):
    config = TrainConfig("mlp_bn")
    state = init_state(config, jax.random.key(0), make_optimizer(config))
    best = state._replace(params=jax.tree.map(lambda w: w + 1, state.params))
    history = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "val_loss": 0.4, "val_accuracy": 0.9, "seconds": 1.0}]
    save_run(RunResult(config, "cpu", state, best, 1, history), tmp_path, {"stage": "mlp_bn"})
    restored = load_run(tmp_path)
    assert (restored.config, restored.best_epoch, restored.history) == (config, 1, history)
    for saved, loaded in ((state, restored.final), (best, restored.best)):
        assert params_equal(saved.params, loaded.params) and params_equal(saved.batch_stats, loaded.batch_stats)
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(restored.final.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"stage": "mlp_bn"}


def test_an_existing_run_is_not_overwritten_without_asking(mlp_bn_runs, data_args, tmp_path):
    out = mlp_bn_runs[0] / "first"
    before = (out / "metrics.json").read_bytes()
    proc = run_script("train.py", "--stage", "mlp_bn", "--out", out, *data_args)
    assert proc.returncode == 2 and "--resume" in proc.stderr and "--overwrite" in proc.stderr
    assert (out / "metrics.json").read_bytes() == before
    fresh = tmp_path / "fresh"
    proc = run_script_in_process("train.py", "--stage", "linear_ce", "--resume", "--out", fresh, *data_args)  # train.py's parsing
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr


def test_overwrite_replaces_the_run(tmp_path, data_args):
    out = tmp_path / "run"
    args = ["--stage", "linear_ce", "--epochs", "1", "--out", out, *data_args]
    assert run_script_in_process("train.py", *args).returncode == 0
    assert run_script_in_process("train.py", *args[:3], "2", *args[4:], "--overwrite").returncode == 0
    assert len(metrics(out)["history"]) == 2 and has_checkpoint(out)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def succeeded(proc: subprocess.Popen) -> None:
    stderr = proc.communicate(timeout=600)[1]
    assert proc.returncode == 0, stderr


def read_until(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the run ended before printing {prefix!r}: {proc.stderr.read()}")


def kill(proc: subprocess.Popen) -> str:
    """SIGKILL: no handler runs, no file is closed or cleaned up. What it printed after."""
    proc.send_signal(signal.SIGKILL)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL
    return rest


def test_a_run_killed_at_any_moment_resumes_to_the_uninterrupted_end(mlp_bn_runs, data_args, tmp_path):
    """Killed while compiling, inside epoch 2 and while writing a checkpoint, each time
    run again: the end equals the uninterrupted 3-epoch run, array for array."""
    out = tmp_path / "killed"
    args = ["--stage", "mlp_bn", "--epochs", "3", "--out", out, "--no-cache", *data_args]

    run = start(*args)
    read_until(run, "stage mlp_bn")
    time.sleep(0.5)  # compiling (2-3 s without the cache)
    assert "[Epoch" not in kill(run) and not has_checkpoint(out)

    run = start(*args)  # the folder holds no run, only the dead run's lock: a fresh start
    read_until(run, "[Epoch 01]")
    while not saved_epochs(out):  # epoch 1 is being saved, then epoch 2 runs (a fraction of a second)
        time.sleep(0.001)
    kill(run)
    assert saved_epochs(out) in (1, 2)

    run = start(*args, "--resume")
    while run.poll() is None and not list(out.glob(".partial-checkpoint*")):
        time.sleep(0.0005)
    assert run.poll() is None, "the run ended before it was seen writing a checkpoint"
    kill(run)
    assert list(out.glob(".partial-checkpoint*")) and saved_epochs(out) in (1, 2)

    resumed = run_script_in_process("train.py", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "metrics.json"]  # the partial file deleted
    assert without_timings(metrics(out)) == without_timings(metrics(mlp_bn_runs[0] / "first"))
    whole, ended = load_run(mlp_bn_runs[0] / "first"), load_run(out)
    for a, b in ((whole.final, ended.final), (whole.best, ended.best)):
        assert params_equal(a.params, b.params) and params_equal(a.batch_stats, b.batch_stats)
    for a, b in zip(jax.tree.leaves(whole.final.opt_state), jax.tree.leaves(ended.final.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)


def rewrite_array(path, name: str, change) -> None:
    with np.load(path) as saved:
        arrays = dict(saved)
    arrays[name] = change(arrays[name])
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def rewrite_meta(path, change) -> None:
    with np.load(path) as saved:
        arrays = dict(saved)
    meta = json.loads(str(arrays.pop("meta")))
    change(meta)
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


DAMAGE = {
    "truncated": (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), [], "is damaged or not a checkpoint"),
    "not a checkpoint": (lambda path: path.write_text("hello"), [], "is damaged or not a checkpoint"),
    "another stage": (lambda path: None, ["--stage", "mlp"], "is mlp_bn (hidden 256, batch 128), not what was asked: --stage mlp (saved: mlp_bn)"),
    "another hidden size": (lambda path: None, ["--stage", "mlp_bn", "--hidden", "128"], "not what was asked: --hidden 128 (saved: 256)"),
    "an older format": (lambda path: rewrite_meta(path, lambda meta: meta.pop("format")), [], "is in checkpoint format none; this version reads format 2"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_refuses_a_checkpoint_it_cannot_continue(mlp_bn_runs, data_args, tmp_path, damage):
    """The first through a process of its own, as a user meets it; the others through
    train.py's main in this process (the refusal comes from its parsing, before any work)."""
    make, args, complaint = DAMAGE[damage]
    out = tmp_path / "run"
    shutil.copytree(mlp_bn_runs[0] / "first", out)
    make(out / "checkpoint.npz")
    before = (out / "checkpoint.npz").read_bytes()
    args = args or ["--stage", "mlp_bn"]
    run = run_script if damage == next(iter(DAMAGE)) else run_script_in_process
    proc = run("train.py", *args, "--epochs", "4", "--resume", "--out", out, *data_args)
    ours = damage != "not a checkpoint"  # (--overwrite refuses a file train.py did not write, so --resume does not advise it)
    advice = "pass --overwrite to start again" if ours else "move it or choose another --out"
    assert_one_line_error(proc, "--resume:", complaint, advice)
    assert (out / "checkpoint.npz").read_bytes() == before and proc.stdout == ""


def test_a_checkpoint_whose_arrays_are_not_of_its_config_is_refused(tmp_path):
    config = TrainConfig("mlp", hidden=64)
    state = init_state(config, jax.random.key(0), make_optimizer(config))
    save_run(RunResult(config, "cpu", state, state, 0, []), tmp_path, {})
    rewrite_meta(tmp_path / "checkpoint.npz", lambda meta: meta["config"].update(hidden=32))
    with pytest.raises(CheckpointError, match=r"does not hold the arrays of its own config \(mlp \(hidden 32, .*hidden/bias is float32\[64\], expected float32\[32\]"):
        load_run(tmp_path)


def test_a_checkpoint_holding_a_negative_batchnorm_variance_is_refused(tmp_path):
    config = TrainConfig("mlp_bn")
    state = init_state(config, jax.random.key(0), make_optimizer(config))
    save_run(RunResult(config, "cpu", state, state, 0, []), tmp_path, {})
    rewrite_array(tmp_path / "checkpoint.npz", "best/batch_stats/batchnorm/var", lambda var: -var)
    with pytest.raises(CheckpointError, match="is damaged: best/batch_stats/batchnorm/var holds a negative variance$"):
        load_run(tmp_path)


@pytest.fixture
def saved_run(tmp_path):
    """A `linear_ce` run of two epochs, saved as train.py saves it."""
    config = TrainConfig("linear_ce", epochs=2)
    state = init_state(config, jax.random.key(0), make_optimizer(config))
    history = [{"epoch": e, "train_loss": 0.3, "train_accuracy": 0.9, "val_loss": 0.3, "val_accuracy": 0.9, "seconds": 0.1} for e in (1, 2)]
    save_run(RunResult(config, "cpu", state, state, 2, history), tmp_path, {})
    return tmp_path


def a_run(history: list[dict] = ()) -> RunResult:
    config = TrainConfig("linear_ce", epochs=1)
    state = init_state(config, jax.random.key(0), make_optimizer(config))
    return RunResult(config, "cpu", state, state, len(history), list(history))


ROW = {"epoch": 1, "train_loss": 0.3, "train_accuracy": 0.9, "val_loss": 0.3, "val_accuracy": 0.9, "seconds": 0.1}


@pytest.mark.parametrize("run, folder, metrics, error, message", [
    (a_run, "run", {"seconds": float("nan")}, ValueError, "save_run metrics: Out of range float values are not JSON compliant"),
    (a_run, "run", {"note": object()}, ValueError, "save_run metrics: Object of type object is not JSON serializable"),
    (lambda: a_run([ROW | {"val_loss": float("nan")}]), "run", {}, ValueError,
     "save_run run: history of epoch 1: val_loss is nan, not a finite number"),
    (lambda: dataclasses.replace(a_run([ROW]), final=None), "run", {}, AttributeError, "'NoneType' object has no attribute 'params'"),
    (a_run, "run", None, TypeError, "save_run: expected a RunResult, the folder of the run (a str or a path) and a dict of "
                                    "metrics, got RunResult, PosixPath and NoneType"),
    (lambda: None, "run", {}, TypeError, "save_run: expected a RunResult, the folder of the run (a str or a path) and a "
                                         "dict of metrics, got NoneType, PosixPath and dict"),
    (a_run, None, {}, TypeError, "save_run: expected a RunResult, the folder of the run (a str or a path) and a dict of "
                                 "metrics, got RunResult, NoneType and dict"),
    (a_run, "", {}, ValueError, "save_run run_dir: an empty name (give '.' for the working folder)"),  # (it wrote here)
])
def test_save_run_refuses_what_it_cannot_save_and_leaves_no_folder(tmp_path, run, folder, metrics, error, message):
    """(Each left an empty run folder, a `metrics.json` of `null`, or one holding NaN, which is no JSON.)"""
    with pytest.raises(error, match=f"^{re.escape(message)}"):  # (some Python versions add the value, ": nan")
        save_run(run(), folder and tmp_path / folder, metrics)
    assert list(tmp_path.iterdir()) == []


def test_save_run_refuses_the_folder_of_a_live_run_and_saves_there_once_it_ended(tmp_path):
    """(It wrote into the folder of a train.py at work, which replaced that save at its next epoch: a hostile user's
    case.) The run's own process, holding the folder's lock, saves there as train.py does every epoch."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; from mnist_jax.files import "
                               "lock_folder; lock_folder(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()",
                               tmp_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    run = a_run([ROW])
    with pytest.raises(FolderBusy, match=f"^{re.escape(str(tmp_path))} is being written by another run \\(process {holder.pid}\\)$"):
        save_run(run, tmp_path, run_record(run))
    assert [p.name for p in tmp_path.iterdir()] == [LOCK]
    holder.communicate("")  # ends: its lock goes with it
    lock_folder(tmp_path)
    try:
        save_run(run, tmp_path, run_record(run))
    finally:
        release_locks()
    save_run(run, tmp_path, run_record(run))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "metrics.json"] and load_run(tmp_path).history == [ROW]


def test_a_save_into_a_folder_its_own_process_is_saving_to_is_refused_and_told_why(tmp_path):
    """(From two threads the second was told of "another run (process <its own id>)": a hostile user's case.)"""
    run = a_run([ROW])
    started, finish = threading.Event(), threading.Event()

    def first_save():
        with folder_locked(tmp_path):  # as save_run holds it while it writes
            started.set()
            finish.wait(30)

    first = threading.Thread(target=first_save)
    first.start()
    started.wait(30)
    try:
        with pytest.raises(FolderBusy, match=f"^{re.escape(str(tmp_path))} is being written by this process, in another of its calls$"):
            save_run(run, tmp_path, run_record(run))
    finally:
        finish.set()
        first.join()
    save_run(run, tmp_path, run_record(run))
    assert load_run(tmp_path).history == [ROW]


def test_save_run_saves_a_run_again_with_metrics_of_its_own(tmp_path):
    """A notebook's loop saving after every epoch with metrics of its own: the metrics.json beside the run's
    checkpoint is the run's to replace."""
    for epochs in (1, 2):
        save_run(a_run([ROW | {"epoch": e} for e in range(1, epochs + 1)]), tmp_path, {"note": "mine", "epochs": epochs})
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 2 and len(load_run(tmp_path).history) == 2


@pytest.mark.parametrize("name", ["metrics.json", "checkpoint.npz"])
def test_save_run_never_replaces_a_file_of_a_name_it_writes_that_is_not_a_runs(tmp_path, name):
    """(A user's notes named metrics.json were replaced by the run's metrics, where train.py --out refuses the folder.)"""
    (tmp_path / name).write_text("my own notes")
    run = a_run()
    with pytest.raises(FileExistsError, match=f"^save_run: {re.escape(str(tmp_path / name))} is not a run's {name}, and will not be replaced$"):
        save_run(run, tmp_path, run_record(run))
    assert [p.name for p in tmp_path.iterdir()] == [name] and (tmp_path / name).read_text() == "my own notes"


HAND_EDITED = {
    "batch_size 0": (lambda p: rewrite_meta(p, lambda m: m["config"].update(batch_size=0)),
                     "TrainConfig batch_size: expected a positive int, got 0"),
    "an unknown stage": (lambda p: rewrite_meta(p, lambda m: m["config"].update(stage="nope")), "TrainConfig stage: expected one of"),
    "best_epoch beyond the history": (lambda p: rewrite_meta(p, lambda m: m.update(best_epoch=3)),
                                      "best_epoch 3 is not one of the 2 epochs of its history"),
    "a history row of NaN": (lambda p: rewrite_meta(p, lambda m: m["history"][1].update(val_loss=float("nan"))),
                             "history of epoch 2: val_loss is nan, not a finite number"),
    "a history without epoch 1": (lambda p: rewrite_meta(p, lambda m: m["history"].pop(0)), "history row 1 is of epoch 2"),
    # (a hostile user's edits, each accepted before: a run resumed from them trained on, or reported the impossible)
    "an accuracy of 7": (lambda p: rewrite_meta(p, lambda m: m["history"][0].update(val_accuracy=7.0)),
                         "history of epoch 1: val_accuracy is 7.0, not a fraction from 0 to 1"),
    "a negative loss": (lambda p: rewrite_meta(p, lambda m: m["history"][1].update(train_loss=-0.5)),
                        "history of epoch 2: train_loss is -0.5, not 0 or more"),
    "a weight of NaN": (lambda p: rewrite_array(p, "final/params/linear/kernel", lambda a: a * np.nan),
                        "final/params/linear/kernel holds values that are not finite"),
    "a learning rate its optimizer was not given": (lambda p: rewrite_meta(p, lambda m: m["config"].update(lr=0.01)),
                                                    "its optimizer's learning_rate is 0.001, where its config trains with 0.01"),
    "Adam's b1 of 2": (lambda p: rewrite_array(p, "opt_state/1", lambda a: np.full_like(a, 2)), "its optimizer's b1 is 2, where its config"),
    "a negative second moment": (lambda p: rewrite_array(p, "opt_state/10", lambda a: -abs(a) - 1),
                                 "its optimizer state holds a negative step count or second moment"),
    "a negative step count": (lambda p: rewrite_array(p, "opt_state/0", lambda a: np.full_like(a, -5)),
                              "its optimizer state holds a negative step count or second moment"),
    "an epoch of negative seconds": (lambda p: rewrite_meta(p, lambda m: m["history"][0].update(seconds=-3.0)),
                                     "history of epoch 1: seconds is -3.0, not 0 or more"),
    "a float16 array": (lambda p: rewrite_array(p, "best/params/linear/bias", lambda a: a.astype(np.float16)),
                        r"does not hold the arrays of its own config .*best/params/linear/bias is float16\[10\], expected float32\[10\]"),
    "an array claiming a terabyte": (lambda p: npz_with_header(p, "final/params/linear/kernel", (2**38,), "<f4"),
                                     r"it does not hold the arrays .*final/params/linear/kernel is float32\[274877906944\]"),
    "metadata claiming 1.6 GB": (lambda p: npz_with_header(p, "meta", (), "<U400000000"),
                                 r"meta is <U400000000\[\], expected text of at most 67,108,864 bytes"),
}


@pytest.mark.parametrize("edit", HAND_EDITED)
def test_a_hand_edited_or_damaged_checkpoint_is_refused_as_damaged_before_its_data_is_read(saved_run, edit):
    """Each a `CheckpointError` (train.py --resume: one line, exit 2), never a run that
    fails later, nor an allocation of what a header claims (which ended in exit 4)."""
    make, fault = HAND_EDITED[edit]
    make(saved_run / "checkpoint.npz")
    with pytest.raises(CheckpointError, match=f"is damaged.*{fault}"):
        load_run(saved_run)


def test_a_checkpoint_read_with_the_other_float_width_says_which_setting_saved_it(saved_run):
    jax.config.update("jax_enable_x64", True)
    try:
        with pytest.raises(CheckpointError, match=r"holds float32 arrays, saved with jax_enable_x64 off: read it with the same setting$"):
            load_run(saved_run)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_a_checkpoint_file_given_for_its_run_folder_is_refused_saying_so(saved_run):
    with pytest.raises(CheckpointError, match="checkpoint.npz is a file: give the folder of the run that holds checkpoint.npz$"):
        load_classifier(saved_run / "checkpoint.npz")


def test_the_model_of_a_stopped_run_loads_with_a_warning_that_it_is_unfinished(saved_run):
    """A run saved after epoch 1 of the 2 it trains (stopped): its models load, and say they are of epoch 1 of 2."""
    rewrite_meta(saved_run / "checkpoint.npz", lambda m: m.update(history=m["history"][:1], best_epoch=1))
    with pytest.warns(UserWarning, match=r"ended after epoch 1 of 2 \(stopped, or its loss stopped being finite\): its best "
                                         "model is of those epochs$"):
        classes, _ = load_classifier(saved_run, "best")(np.zeros((2, 28, 28), np.uint8))
    assert classes.shape == (2,)


def test_load_model_refuses_a_model_it_does_not_have(saved_run):
    assert isinstance(load_model(saved_run, "best")[0], nnx.Module)
    with pytest.raises(ValueError, match="load_model which: expected 'final' or 'best', got 'bset'"):
        load_model(saved_run, "bset")


@pytest.mark.parametrize("function", [load_classifier, load_model, to_nnx, to_torch])
def test_a_run_folder_of_another_type_is_refused_naming_the_function_called(function):
    """(Python's own TypeError named no call: 'expected str, bytes or os.PathLike object, not NoneType'.)"""
    for folder in (None, b"runs/mlp-seed42"):
        with pytest.raises(TypeError, match=f"^{function.__name__}: expected the folder of a run \\(a str or a path\\), got "
                                            f"{type(folder).__name__}$"):
            function(folder)


@pytest.mark.parametrize("function", [load_classifier, to_nnx, to_torch])
def test_a_model_a_run_does_not_have_is_refused_naming_the_function_called(saved_run, function):
    with pytest.raises(ValueError, match=f"^{function.__name__} which: expected 'final' or 'best', got 'fina'$"):
        function(saved_run, "fina")


def test_load_classifier_takes_tfds_and_torchvision_shapes_any_float_and_an_empty_batch(saved_run):
    classify, images = load_classifier(saved_run), np.arange(3 * 784).reshape(3, 28, 28) % 256
    classes, probabilities = classify(images.astype(np.uint8))
    floats = images / 255
    for same in (images[..., None], images[:, None], floats.astype(jnp.bfloat16), torch.tensor(floats).requires_grad_()):
        np.testing.assert_array_equal(classify(same)[0], classes)
    np.testing.assert_allclose(classify(floats[:, None])[1], probabilities, rtol=1e-5)
    # (a hostile user's: each raised JAX's TypeError or was refused as no array of numbers)
    for same in (images.astype(">u2"), images.astype(">i8"), floats.astype(">f8"), floats.astype(np.longdouble),
                 torch.tensor(floats, dtype=torch.bfloat16), floats.astype(ml_dtypes.float8_e4m3fn)):
        np.testing.assert_array_equal(classify(same)[0], classes)
    with pytest.raises(ValueError, match=r"got bfloat16\[1, 28, 28\] from 3.0 to 3.0$"):  # (as given, not as converted)
        classify(torch.full((1, 28, 28), 3.0, dtype=torch.bfloat16))
    for none in (np.zeros((0, 28, 28), np.uint8), []):  # ([] was refused as float64[0])
        empty = classify(none)
        assert empty[0].shape == (0,) and empty[1].shape == (0, 10)
    model, _ = load_model(saved_run)  # a module takes floats: raw images, the classifier's, are refused, not misread
    with pytest.raises(TypeError, match=r"^LinearClassifier: expected \(N, 784\) floats in \[0, 1\], got uint8: raw images go "):
        model(images.reshape(3, 784).astype(np.uint8))


@pytest.mark.parametrize("images, got", [
    ("abc", r"<U3\[\] \(a str\)"), ([[1, 2], [3]], "a list that is no array of numbers"),
    (np.ones((2, 28, 28), bool), r"bool\[2, 28, 28\]"), (np.ones((2, 3, 28, 28)), r"float64\[2, 3, 28, 28\]"),
    (np.full((2, 784), 2.0, jnp.bfloat16), r"bfloat16\[2, 784\] from 2.0 to 2.0"),
    (np.full((1, 784), np.nan), r"float64\[1, 784\] from nan to nan"),
    (np.full((1, 784), 256), r"int64\[1, 784\] from 256 to 256"),
])
def test_load_classifier_refuses_anything_else_with_one_value_error_saying_what_it_got(saved_run, images, got):
    with pytest.raises(ValueError, match=r"^load_classifier: expected MNIST images, .*; got " + got + "$"):
        load_classifier(saved_run)(images)
