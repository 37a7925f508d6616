"""User mistakes end in one clear line and exit status 2, never a traceback."""

import argparse
import atexit
import errno
import gzip
import io
import json
import importlib.util
import signal
import os
import shutil
import stat
import struct
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT, assert_one_line_error, assert_tensorboard_log, load_script, run_script, run_script_in_process
from mnist_jax import cli, memory
from mnist_jax.stages import TrainConfig

SCRIPTS = ["train.py", "study.py", "sweep.py", "make_assets.py", "linearity.py", "compare.py", "benchmark.py"]
# What checking a training script's arguments sets in this process (`cli.setup_jax`), put back after each test.

def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_every_default(script):
    parser = load_script(script).build_parser()
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in text, action.option_strings


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_speaks_of_unfinished_work_only_where_the_script_keeps_some(script):
    """(make_assets.py, compare.py, linearity.py and benchmark.py told --overwrite of work they never keep.)"""
    text = " ".join(load_script(script).build_parser().format_help().split())
    assert "--resume" in text or "unfinished work" not in text, text


@pytest.mark.parametrize("script, args", [("train.py", ["--stage", "mlp"]), ("study.py", []), ("sweep.py", [])])
def test_tensorboard_without_tensorboardx_is_refused_before_any_work(refused, monkeypatch, script, args):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed: importing it fails
    line = refused(script, *args, "--tensorboard", "logs")
    assert line.endswith("--tensorboard needs tensorboardX, which is not installed: pip install tensorboardX")


def test_tensorboard_logs_each_epoch_and_the_hyperparameters_of_a_run(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 2 / e, "train_accuracy": 0.5 + e / 10, "val_accuracy": 0.4 + e / 10}
               for e in (1, 2)]
    cli.write_tensorboard(tmp_path, "mlp-seed3", TrainConfig("mlp", epochs=2, lr=3e-3, seed=3), history, 0.75)
    assert_tensorboard_log(tmp_path / "mlp-seed3", history, 0.75,
                           {"stage": "mlp", "epochs": 2, "batch_size": 128, "lr": 3e-3, "seed": 3, "hidden": 256, "dropout": 0})


def test_a_tensorboard_log_written_again_holds_the_new_history_once_and_nothing_else_is_left(tmp_path):
    """A run resumed, or replaced by --overwrite, logs its whole history again: it replaces the run's log."""
    (tmp_path / "mine.txt").write_text("notes")
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 2 / e, "train_accuracy": 0.5, "val_accuracy": 0.4}
               for e in (1, 2, 3)]
    hparams = {"stage": "mlp", "epochs": 3, "batch_size": 128, "lr": 1e-3, "seed": 3, "hidden": 256, "dropout": 0}
    for epochs, accuracy in ((1, 0.5), (3, 0.75)):
        cli.write_tensorboard(tmp_path, "mlp-seed3", TrainConfig("mlp", epochs=3, seed=3), history[:epochs], accuracy)
        if epochs == 1:  # as if written a while ago (a file's name holds the second it was made)
            (events,) = (tmp_path / "mlp-seed3").iterdir()
            events.rename(events.with_name(f"{cli.EVENTS}1000000000.host{cli.OURS}"))
    assert_tensorboard_log(tmp_path / "mlp-seed3", history, 0.75, hparams)  # one event file, of the second run alone
    assert listing(tmp_path) == ["mine.txt", "mlp-seed3"]


def test_a_full_disk_under_tensorboard_is_one_line_and_leaves_the_previous_log_as_it_was(tmp_path, monkeypatch, capsys):
    """tensorboardX's own writer, its file filling the disk after 100 bytes: one line, exit status 5, no event file
    half-written, the run's previous log kept whole; no thread or exit handler of tensorboardX left to fail again."""
    from tensorboardX import record_writer

    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 2.0, "train_accuracy": 0.5, "val_accuracy": 0.4}]
    config = TrainConfig("mlp", epochs=1, seed=3)
    cli.write_tensorboard(tmp_path, "mlp-seed3", config, history, 0.5)
    before = {path: path.read_bytes() for path in (tmp_path / "mlp-seed3").iterdir()}

    class NearlyFull(io.RawIOBase):
        def __init__(self, path):
            self.file, self.room = open(path, "wb"), 100

        def writable(self):
            return True

        def write(self, data):
            if len(data) > self.room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= len(data)
            return self.file.write(data)

        def close(self):
            self.file.close()
            super().close()

    monkeypatch.setattr(record_writer, "open_file", lambda path: io.BufferedWriter(NearlyFull(path)))
    threads, exit_handlers = threading.active_count(), atexit._ncallbacks()
    with pytest.raises(SystemExit) as stopped:
        cli.run(lambda: cli.write_tensorboard(tmp_path, "mlp-seed3", config, history * 2, 0.75))
    assert stopped.value.code == 5
    assert capsys.readouterr().err.splitlines() == [
        f"could not write {tmp_path / 'mlp-seed3'}: No space left on device; no file was left half-written; run the same command again"]
    assert listing(tmp_path) == ["mlp-seed3"]
    assert {path: path.read_bytes() for path in (tmp_path / "mlp-seed3").iterdir()} == before
    assert (threading.active_count(), atexit._ncallbacks()) == (threads, exit_handlers)


@pytest.mark.parametrize("script, args, log", [
    ("train.py", ["--stage", "mlp", "--out", "tr2"], "mlp-seed42"),
    ("train.py", ["--stage", "all", "--lr", "0.01", "--out", "all"], "mlp_bn-lr0.01-seed42"),
    ("study.py", ["--seeds", "3", "--stages", "mlp"], "mlp-seed2"),
    ("study.py", ["--seeds", "3", "--stages", "mlp", "--lr", "0.003"], "mlp-lr0.003-seed2"),  # named by its settings
    ("sweep.py", ["--stages", "mlp_dropout", "--dropout", "0.2,0.5", "--hidden", "64,128"],
     "mlp_dropout-hidden128-seed9"),
])
def test_a_users_file_where_a_tensorboard_log_goes_is_refused_before_any_work(refused, tmp_path, script, args, log):
    """A file, an empty folder (no log is ever empty), a folder holding more than event files, another's log (PyTorch's)."""
    (tmp_path / "tbF").mkdir()
    for make in (lambda path: path.write_text("mine"), lambda path: path.mkdir(),
                 lambda path: (path.mkdir(), (path / f"{cli.EVENTS}1.h{cli.OURS}").write_text("?"), (path / "notes.txt").write_text("mine")),
                 lambda path: (path.mkdir(), (path / f"{cli.EVENTS}1700000000.laptop.12345.0").write_text("my PyTorch run"))):
        make(tmp_path / "tbF" / log)
        mine = {path: path.is_file() and path.read_bytes() for path in tmp_path.rglob("*")}
        line = refused(script, *args, "--tensorboard", "tbF")
        assert line.endswith(f"--tensorboard: tbF/{log} is there and is not a TensorBoard log this project wrote (a folder of "
                             "its event files only), so it will not be replaced: move it or choose another --tensorboard")
        assert {path: path.is_file() and path.read_bytes() for path in tmp_path.rglob("*")} == mine
        shutil.rmtree(tmp_path / "tbF" / log) if (tmp_path / "tbF" / log).is_dir() else (tmp_path / "tbF" / log).unlink()


@pytest.mark.parametrize("script, args, board", [
    ("train.py", ["--stage", "mlp", "--out", "same1"], "same1"),
    ("train.py", ["--stage", "mlp"], "runs"),  # its log, runs/mlp-seed42, would be its run folder
    ("train.py", ["--stage", "all", "--out", "all"], "all/board"),
    ("study.py", [], "runs/study/board"),
    ("sweep.py", ["--out", "grid"], "grid"),
])
def test_a_tensorboard_folder_overlapping_the_run_folder_is_refused_before_any_work(refused, tmp_path, script, args, board):
    line = refused(script, *args, "--tensorboard", board)
    assert "would be written inside the run's folder" in line and line.endswith("choose a --tensorboard apart from --out")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("args", [["--out", "same", "--compile-cache", "same"], ["--out", "run", "--compile-cache", "run/cache"]])
def test_a_compilation_cache_in_the_run_folder_is_refused_before_any_work(refused, tmp_path, args):
    """(Else --overwrite would refuse the folder, or replace the cache with it.)"""
    line = refused("train.py", "--stage", "linear_ce", *args)
    assert line.endswith(f"lies in the run's folder {args[1]}; choose a compilation cache apart from --out")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("flags, why", [
    ("--xla_no_such_flag=1", "Unknown flag in XLA_FLAGS: --xla_no_such_flag=1"),
    ("--xla_cpu_use_xnnpack=maybe", "Couldn't interpret value maybe for flag xla_cpu_use_xnnpack."),
    ("xnnpack", 'Could not open file "xnnpack" to read flags'),
    ("--xla_force_host_platform_device_count=0", "Could not determine process_index"),  # (a Python error, not XLA's line)
])
def test_xla_flags_xla_refuses_are_refused_in_one_line_before_any_work(refused, tmp_path, monkeypatch, flags, why):
    """(Else XLA ends the process once --out is claimed, printing its whole list of flags.) A jaxlib.py in the
    working folder does not stand in for JAX's in the check."""
    (tmp_path / "jaxlib.py").write_text("")
    monkeypatch.setenv("XLA_FLAGS", flags)
    line = refused("train.py", "--stage", "linear_ce", "--out", "run")
    assert f"XLA_FLAGS={flags!r}: XLA refuses it (" in line and why in line and line.endswith("; fix or unset it")
    assert listing(tmp_path) == ["jaxlib.py"]


@pytest.mark.parametrize("env, why", [
    ({"JAX_COMPILATION_CACHE_DIR": "a_file"}, "$JAX_COMPILATION_CACHE_DIR: cannot write to a_file"),
    ({"JAX_COMPILATION_CACHE_DIR": "gs://bucket/cache"}, "$JAX_COMPILATION_CACHE_DIR: gs:/bucket/cache is not a local folder"),
    ({"XDG_CACHE_HOME": "{tmp}/run/.cache"}, "the compilation cache: {tmp}/run/.cache/mnist_jax/jax lies in the run's folder run;"),
])
def test_a_compilation_cache_from_the_environment_is_checked_as_one_named_on_the_command_line(
        refused, tmp_path, monkeypatch, env, why):
    (tmp_path / "a_file").write_text("keep me")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)  # (the suite's)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))  # (the user cache folder: XDG_CACHE_HOME if absolute)
    assert why.format(tmp=tmp_path) in refused("train.py", "--stage", "linear_ce", "--out", "run")
    assert listing(tmp_path) == ["a_file"]


def test_a_compilation_cache_that_is_a_link_to_nothing_is_refused_before_any_work(refused, tmp_path, monkeypatch):
    """(JAX cannot make its folder there: every start compiled again, without a word.)"""
    (tmp_path / "cache").symlink_to(tmp_path / "gone")
    why = f"cannot write to cache (a link to {tmp_path / 'gone'}, which does not exist)"
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)  # (the suite's)
    assert refused("train.py", "--stage", "linear_ce", "--out", "run", "--compile-cache", "cache").endswith(f"--compile-cache: {why}")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "cache")
    assert refused("train.py", "--stage", "linear_ce", "--out", "run").endswith(f"$JAX_COMPILATION_CACHE_DIR: {why}")
    assert listing(tmp_path) == ["cache"] and not (tmp_path / "gone").exists()


@pytest.mark.parametrize("source", ["download", "tfds"])
def test_a_data_folder_the_source_would_not_read_is_refused(refused, tmp_path, source):
    """(It was ignored without a word.)"""
    line = refused("train.py", "--stage", "linear_ce", "--source", source, "--data-dir", tmp_path, "--out", "run")
    assert line.endswith(f"--data-dir is read by --source idx and auto; --source {source} would ignore it")


def test_a_compilation_cache_variable_naming_a_path_too_long_for_the_system_is_a_usage_error(refused, monkeypatch):
    """(Through the variable it was taken for a failed write: status 5, "run the same command again".)"""
    too_long = "c" * 300  # (as --compile-cache, its argument's type refuses it)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", too_long)
    assert refused("train.py", "--stage", "linear_ce", "--out", "run").endswith(
        f"$JAX_COMPILATION_CACHE_DIR: {too_long}: File name too long")


@pytest.mark.parametrize("how", ["every user may write it", "another user owns it", "every user may write an entry",
                                 "an entry links to a file every user may write"])
def test_a_compilation_cache_others_can_write_is_refused_before_any_work(refused, tmp_path, monkeypatch, how):
    """Its files are machine code the run executes (the project's through pickle): whoever can write them runs code
    in the run (a hostile user's case, through a 0777 --compile-cache)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    if how == "every user may write it":
        cache.chmod(0o777)
        why = "can be written by every user (drwxrwxrwx)"
    elif how == "every user may write an entry":  # (planted while the folder was open to all, say)
        (cache / "mnist_jax-0123").write_bytes(b"")
        (cache / "mnist_jax-0123").chmod(0o666)
        why = "holds mnist_jax-0123, which every user can write"
    elif how == "an entry links to a file every user may write":  # (the link is the user's; what it leads to is not)
        (tmp_path / "planted").write_bytes(b"")
        (tmp_path / "planted").chmod(0o666)
        (cache / "mnist_jax-0123").symlink_to(tmp_path / "planted")
        why = "holds mnist_jax-0123, a link to a path which every user can write"
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        os.chown(cache, 65534, -1)
        why = "belongs to another user (uid 65534)"
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)  # (the suite's)
    line = refused("train.py", "--stage", "linear_ce", "--out", "run", "--compile-cache", "cache")
    assert line.endswith(f"--compile-cache: cache {why}, and the programs kept there run in this process: "
                         "use a folder only you can write, or --no-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "mnist_jax").mkdir(parents=True)
    cache.rename(tmp_path / "xdg" / "mnist_jax" / "jax")  # the default cache
    line = refused("train.py", "--stage", "linear_ce", "--out", "run")
    assert f"the compilation cache: {tmp_path}/xdg/mnist_jax/jax {why}" in line and line.endswith(
        "use a folder only you can write (--compile-cache), or --no-cache")
    assert listing(tmp_path) == (["planted", "xdg"] if how.startswith("an entry links") else ["xdg"])


def test_a_compilation_cache_in_the_default_run_folder_is_refused(refused, tmp_path):
    line = refused("train.py", "--stage", "linear_ce", "--compile-cache", "runs/linear_ce-seed42/cache")
    assert line.endswith("lies in the run's folder runs/linear_ce-seed42; choose a compilation cache apart from --out")
    assert listing(tmp_path) == []


def test_an_out_through_a_link_and_dot_dot_is_written_where_the_system_finds_it(tmp_path):
    """`link/../name` is `name` beside the link's target, as for every program; Python's tempfile took it for `name`
    beside the link and every script failed to save there after its work, exit 5 (a hostile user's case)."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "s").symlink_to(tmp_path / "real" / "sub")
    proc = run_script_in_process("make_assets.py", "--linearity", ROOT / "assets" / "linearity.json", "--out", "s/../r", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (tmp_path / "real" / "r").iterdir()] == ["width_sweep.png"] and not (tmp_path / "r").exists()


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o644, 0o755)],
                         ids=["umask 022", "umask 077", "umask 002"])
def test_results_and_logs_are_readable_by_others_unless_the_umask_withholds_it(tmp_path, umask, file_mode, folder_mode):
    """Files are written 0644 at most, as much as the umask allows: a umask of 077 keeps them the owner's (they were
    0644 whatever the umask), and no umask makes them writable by others."""
    mask = os.umask(umask)
    try:
        proc = run_script_in_process("make_assets.py", "--linearity", ROOT / "assets" / "linearity.json", "--out", "figures", cwd=tmp_path)
        cli.write_tensorboard(tmp_path / "board", "mlp-seed3", TrainConfig("mlp", epochs=1, seed=3), [], 0.5)
    finally:
        os.umask(mask)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((tmp_path / "figures" / "width_sweep.png").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "board" / "mlp-seed3").stat().st_mode) == folder_mode


def test_the_results_each_script_writes_are_told_from_a_users_file_whatever_options_wrote_them(tmp_path):
    """(compare.py's results without --replay-original were taken for a user's file, which its --overwrite then refused
    to replace: found by the fresh clone's test.)"""
    from mnist_jax.files import RESULT_KEYS, is_result

    for name in RESULT_KEYS:
        committed = next(ROOT.glob(f"assets/**/{name}"), None) or next(ROOT.glob(f"assets/{Path(name).stem}_cpu_*.json"))
        assert is_result(committed), committed
    without_replay = json.loads((ROOT / "assets" / "compare.json").read_text())
    del without_replay["replay"]
    (tmp_path / "compare.json").write_text(json.dumps(without_replay))
    assert is_result(tmp_path / "compare.json")
    (tmp_path / "compare.json").write_text(json.dumps({"stages": [], "mine": True}))
    assert not is_result(tmp_path / "compare.json")


def test_an_output_folder_is_a_path_that_is_not_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    for text in ("", str(tmp_path / "notes.txt")):  # ("" would be the working folder)
        with pytest.raises(argparse.ArgumentTypeError, match=r"expected a folder to write into \(a path, not a file\), got"):
            cli.output_folder(text)
    assert cli.output_folder(str(tmp_path / "new")) == tmp_path / "new"


@pytest.mark.parametrize(
    "convert, text",
    [(cli.positive_int, "0"), (cli.positive_int, "2.5"), (cli.positive_int, "2147483648"), (cli.positive_float, "inf"),
     (cli.positive_float, "-1"), (cli.dropout_rate, "1"), (cli.dropout_rate, "nan"), (cli.seed, "-1"),
     (cli.seed, "4294967296")],
)
def test_argument_types_reject_values_outside_their_range(convert, text):
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        convert(text)


def test_a_parser_error_is_one_line_with_status_2(capsys):
    parser = cli.ArgumentParser(prog="train.py")
    parser.add_argument("--epochs", type=cli.positive_int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--epochs", "-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["train.py: error: argument --epochs: expected an integer from 1 to 2147483647, got '-1'"]


def test_results_in_the_out_folder_are_refused_without_overwrite_and_a_users_file_even_with_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["scripts/study.py"])
    parser = cli.ArgumentParser(prog="study.py", out=str(tmp_path), results=("results.json", "study_arrays.npz"), trains=False)
    (tmp_path / "results.json").write_text('{"stages": {}, "steps": [], "command": "python scripts/study.py"}')
    parser.parse(["--overwrite"])
    with pytest.raises(SystemExit):
        parser.parse([])
    err = capsys.readouterr().err
    assert err.startswith("study.py: error: --out: ") and "already holds results.json; pass --overwrite" in err
    (tmp_path / "study_arrays.npz").write_text("my notes")  # a user's file under a result's name
    for given in ([], ["--overwrite"]):  # (without, the refusal advised an --overwrite that was then refused: a hostile user's case)
        with pytest.raises(SystemExit):
            parser.parse(given)
        assert capsys.readouterr().err.endswith(f"study_arrays.npz in {tmp_path} is not study.py's results and will not be "
                                                "replaced: move it or choose another --out\n"), given
    assert (tmp_path / "study_arrays.npz").read_text() == "my notes"


def test_progress_off_a_terminal_is_one_plain_line_per_step(capsys):
    progress = cli.Progress(2, "mlp, 3 seeds", "epoch")
    progress.step()
    progress.step("done")
    progress.close()
    assert capsys.readouterr().out.splitlines() == ["mlp, 3 seeds: epoch 1/2", "mlp, 3 seeds: epoch 2/2, done"]


def test_progress_of_models_in_chunks_counts_passes_and_says_which_chunk_and_epoch(capsys):
    """Two chunks of models, one epoch each: two passes, not 'epoch 1/2 ... epoch 2/2' of a one-epoch run."""
    progress = cli.Progress(1, "mlp_dropout, 4 models", "epoch")
    for done in (1, 2):
        progress.epochs(1)(done, 2)
    one_chunk = cli.Progress(2, "mlp, 2 models", "epoch")
    for done in (1, 2):
        one_chunk.epochs(2)(done, 2)
    assert capsys.readouterr().out.splitlines() == [
        "mlp_dropout, 4 models: pass 1/2, epoch 1/1 of chunk 1/2", "mlp_dropout, 4 models: pass 2/2, epoch 1/1 of chunk 2/2",
        "mlp, 2 models: epoch 1/2", "mlp, 2 models: epoch 2/2"]


@pytest.mark.parametrize("script", ["train.py", "study.py", "sweep.py", "compare.py", "linearity.py", "benchmark.py"])
def test_every_script_that_loads_mnist_says_where_it_came_from_in_the_same_line(script, monkeypatch, capsys):
    """Each loads it through `cli.load_data`, the one place that prints the line (study.py, sweep.py, linearity.py
    and benchmark.py printed none)."""
    source = (ROOT / "scripts" / script).read_text()
    assert "cli.load_data(args)" in source and "load_mnist(" not in source
    from mnist_jax import data

    monkeypatch.setattr(data, "load_mnist", lambda source, data_dir: data.MNIST(*[None] * 4, source=f"{source} {data_dir}"))
    assert cli.load_data(argparse.Namespace(source="idx", data_dir="mnist")).source == "idx mnist"
    assert capsys.readouterr().out == "data: idx mnist\n"


def offline_env(tmp_path) -> dict:
    """No data dir, an empty TFDS folder and an unreachable mirror."""
    return {
        "MNIST_JAX_DATA_DIR": "",
        "TFDS_DATA_DIR": str(tmp_path / "tfds"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "MNIST_JAX_MIRROR": "http://127.0.0.1:9/",
    }


@pytest.mark.slow
def test_without_any_data_source_the_message_names_the_three_ways(tmp_path):
    proc = run_script("train.py", "--stage", "mlp", env=offline_env(tmp_path), cwd=tmp_path)
    assert_one_line_error(proc, "no MNIST found", "TFDS", "download", "--data-dir", "internet")
    assert not (tmp_path / "runs").exists()


TRAIN_REFUSALS = [
    (["--stage", "mlp_huge"], ["--stage", "expected a stage (linear_mse, linear_ce, mlp, mlp_dropout, mlp_bn, deep_linear, random_features, "
                               "random_features_1024, random_features_4096), got 'mlp_huge'"]),
    (["--stage", "mlp", "--epochs", "0"], ["--epochs", "integer from 1 to 2147483647"]),
    (["--stage", "mlp", "--lr", "nan"], ["--lr", "a positive number a float32 holds"]),
    (["--stage", "mlp", "--dropout", "1"], ["--dropout", "[0, 1)"]),
    (["--stage", "linear_ce", "--hidden", "64"], ["--hidden", "MLP stages only"]),
    (["--stage", "all", "--dropout", "0.2"], ["--dropout applies to the MLP stages only, not linear_mse, linear_ce"]),
    (["--stage", "mlp", "--data-dir", "/no/such/dir"], ["--data-dir", "/no/such/dir", "expected the folder holding"]),
    (["--stage", "mlp", "--batch-size", "54001"], ["--batch-size", "54000"]),
    (["--stage", "mlp", "--hidden", "-3"], ["--hidden", "integer from 1 to"]),
    (["--stage", "mlp", "--dropout", "-0.1"], ["--dropout", "[0, 1)"]),
    (["--stage", "mlp", "--lr", "0"], ["--lr", "a positive number a float32 holds"]),
]


@pytest.mark.parametrize("args, fragments", TRAIN_REFUSALS)
def test_bad_training_arguments_are_refused_in_one_line_before_any_work(refused, tmp_path, args, fragments):
    line = refused("train.py", *args)
    assert all(fragment in line for fragment in fragments), line
    assert listing(tmp_path) == []  # no runs/ folder


@pytest.mark.slow
def test_a_refused_argument_ends_the_process_in_one_line_with_status_2(tmp_path):
    """What the parser tests above ask in-process holds for a real run: one line, no
    traceback, status 2, nothing on stdout, nothing made."""
    proc = run_script("train.py", "--stage", "mlp", "--epochs", "0", cwd=tmp_path)
    assert_one_line_error(proc, "train.py: error: argument --epochs: expected an integer from 1 to 2147483647, got '0'")
    assert proc.stdout == "" and listing(tmp_path) == []


def test_an_output_closed_early_ends_with_status_141_and_says_on_stderr_how_to_continue():
    """`study.py ... | head -1` ended in silence, its unfinished work kept and nothing said of --resume (a hostile user's case)."""
    code = ("from mnist_jax import cli; cli.run(lambda: [cli.on_stop(lambda: 'keeps epoch 1; continue with: train.py --resume'), "
            "*(print('x' * 1000, flush=True) for _ in range(10000))])")
    proc = subprocess.run(["bash", "-c", f"{shlex.join([sys.executable, '-c', code])} | head -c 10 > /dev/null; exit ${{PIPESTATUS[0]}}"],
                          capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (141, "stopped: its output was closed; keeps epoch 1; continue with: train.py --resume\n")


def test_an_output_closed_once_the_work_is_done_says_every_result_is_written():
    """(Output to a pipe is written at the end: a reader gone by then was told to continue work that was done.)"""
    code = ("from mnist_jax import cli; cli.run(lambda: [cli.on_stop(lambda: 'keeps epoch 1; continue with: train.py --resume'), "
            "print('the table')])")
    read, write = os.pipe()
    os.close(read)  # the reader, gone
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # (output to a pipe held until the end)
    proc = subprocess.run([sys.executable, "-c", code], stdout=write, stderr=subprocess.PIPE, text=True, env=env)
    os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "stopped: its output was closed; it came after the work was done; every result is written\n")


def test_a_console_that_cannot_show_a_character_of_the_output_shows_its_escape():
    """The tables' ± and —, on a console of another encoding (PYTHONIOENCODING=ascii, latin-1, cp1252), ended a finished
    study in a traceback, exit 1 (a hostile user's case)."""
    code = "from mnist_jax import cli; cli.run(lambda: print('97.45 \u00b1 0.10 | \u2014'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "97.45 \\xb1 0.10 | \\u2014\n", "")


@pytest.mark.parametrize("script", ["train.py", "compare.py", "study.py", "sweep.py", "make_assets.py", "linearity.py"])
def test_every_script_refuses_an_out_that_is_a_file(refused, tmp_path, script):
    afile = tmp_path / "a_file"
    afile.write_text("keep me")
    args = ["--stage", "mlp"] if script == "train.py" else []
    line = refused(script, *args, "--out", afile)
    assert "--out" in line and "not a file" in line, line
    assert afile.read_text() == "keep me" and listing(tmp_path) == ["a_file"]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--stages", "mlp,deep_net"], ["--stages", "deep_net"]),
        (["--seeds", "0"], ["--seeds", "integer from 1 to"]),
        (["--torch-loop", "fast"], ["--torch-loop", "choose from"]),
    ],
)
def test_bad_compare_arguments(refused, tmp_path, args, fragments):
    line = refused("compare.py", *args, "--out", tmp_path / "out")
    assert all(fragment in line for fragment in fragments), line
    assert listing(tmp_path) == []


def corrupt(data_dir, tmp_path, name: str, content: bytes | None):
    """A copy of the MNIST folder with one file replaced (or removed when None)."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for gz in data_dir.glob("*.gz"):
        (folder / gz.name).write_bytes(gz.read_bytes())
    (folder / name).unlink()
    if content is not None:
        (folder / name).write_bytes(content)
    return folder


def real(data_dir, name: str) -> bytes:
    return gzip.decompress((data_dir / name).read_bytes())


@pytest.mark.parametrize(
    "name, make, complaint",
    [
        ("train-labels-idx1-ubyte.gz", lambda d: None, "missing train-labels-idx1-ubyte"),
        ("t10k-images-idx3-ubyte.gz", lambda d: (d / "t10k-images-idx3-ubyte.gz").read_bytes()[:5000], "cannot read"),
        ("t10k-labels-idx1-ubyte.gz", lambda d: real(d, "t10k-labels-idx1-ubyte.gz"), "cannot read"),  # not gzip
        ("t10k-labels-idx1-ubyte.gz", lambda d: gzip.compress(b"\x00\x00\x08\x03" + real(d, "t10k-labels-idx1-ubyte.gz")[4:], compresslevel=1), "wrong magic"),
        ("t10k-images-idx3-ubyte.gz", lambda d: gzip.compress(struct.pack(">4I", 0x803, 10, 32, 32) + bytes(10 * 32 * 32), compresslevel=1), "expected 28x28"),
        ("t10k-images-idx3-ubyte.gz", lambda d: gzip.compress(real(d, "t10k-images-idx3-ubyte.gz")[:-784], compresslevel=1), "header promises"),
        ("t10k-labels-idx1-ubyte.gz", lambda d: gzip.compress(real(d, "t10k-labels-idx1-ubyte.gz")[:-1] + b"\x0a", compresslevel=1), "differs from the published digest"),
    ],
)
def test_bad_data_gives_one_line_naming_the_file_and_status_2(tmp_path, data_dir, name, make, complaint):
    folder = corrupt(data_dir, tmp_path, name, make(data_dir))
    proc = run_script_in_process("train.py", "--stage", "mlp", "--data-dir", folder, cwd=tmp_path)
    assert_one_line_error(proc, "data error", name.removesuffix(".gz"), complaint)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("limit", ["inf", "nan", "-1", "1e400", "0.5", "2X", " 2G", "1_000M", "\u0662G", "+2G"])
def test_a_memory_limit_that_is_no_size_is_refused_in_one_line_before_any_work(monkeypatch, capsys, limit):
    monkeypatch.setenv(memory.LIMIT_ENV, limit)
    with pytest.raises(SystemExit) as exit_info:
        cli.ArgumentParser(prog="study.py").parse([])
    assert exit_info.value.code == 2
    assert capsys.readouterr() == ("", f"study.py: error: MNIST_JAX_MEMORY_LIMIT={limit!r}: expected a positive size such as 2G or 512M\n")


GPU_PLUGIN = any(importlib.util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin"))


@pytest.mark.slow
@pytest.mark.parametrize("platforms, why", [
    ("nonsense", "Unable to initialize backend 'nonsense'"),
    pytest.param("cuda", "", marks=pytest.mark.skipif(GPU_PLUGIN, reason="JAX may start cuda here")),
])
def test_a_platform_jax_cannot_start_is_refused_in_one_line_before_any_work(tmp_path, platforms, why):
    proc = run_script("train.py", "--stage", "mlp", "--out", tmp_path / "run", env={"JAX_PLATFORMS": platforms})
    assert_one_line_error(proc, f"JAX_PLATFORMS={platforms}: JAX cannot start it ({why}", "unset it to let JAX choose")
    assert proc.stdout == "" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, value", [("JAX_TRANSFER_GUARD", "disallow"),
                                         ("JAX_TRANSFER_GUARD_HOST_TO_DEVICE", "disallow_explicit")])
def test_a_transfer_guard_that_stops_the_data_reaching_the_device_is_refused_before_any_work(refused, monkeypatch, name, value):
    """(JAX raised it from the first transfer, in a traceback.) With `log` the scripts run, and JAX logs the transfers."""
    monkeypatch.setenv(name, value)
    line = refused("train.py", "--stage", "linear_ce", "--out", "run")
    assert line.endswith(f"{name}={value}: the scripts move the data, and each run's seed and settings, to the device and "
                         "read each epoch's figures back; unset it or set it to log")


@pytest.mark.parametrize("setting, value, fragment", [
    ("jax_numpy_dtype_promotion", "strict",  # (a TypePromotionError's traceback at the first program)
     "JAX_NUMPY_DTYPE_PROMOTION=strict: the project's programs use JAX's standard type promotion; unset it"),
    ("jax_default_prng_impl", "rbg", "JAX_DEFAULT_PRNG_IMPL=rbg: other random bits than JAX's default draw"),
    ("jax_threefry_partitionable", False,  # (a run resumed under it ended elsewhere than the run, without a word)
     "JAX_THREEFRY_PARTITIONABLE=False: other random bits than JAX's default draw another split, initialisation and order "
     "for each seed, and no run could resume another; unset it"),
    ("jax_random_seed_offset", 1, "JAX_RANDOM_SEED_OFFSET=1: other random bits"),  # (seed 0 trained as seed 1)
])
def test_a_jax_setting_that_changes_the_programs_or_the_draws_is_refused_before_any_work(refused, setting, value, fragment):
    """As its JAX_* variable sets it (JAX reads them at import, so here set in this process's JAX)."""
    import jax

    before = getattr(jax.config, setting)
    jax.config.update(setting, value)
    try:
        assert fragment in refused("train.py", "--stage", "linear_ce", "--out", "run")
    finally:
        jax.config.update(setting, before)


@pytest.mark.slow
@pytest.mark.parametrize("env, fragment", [
    ({"JAX_ENABLE_X64": "maybe"}, "JAX refuses a setting of the environment (invalid truth value 'maybe' for environment 'JAX_ENABLE_X64')"),
    ({"JAX_NUM_CPU_DEVICES": "0"}, "JAX cannot start its devices ("),
    ({"JAX_DISABLE_JIT": "1"}, "JAX_DISABLE_JIT: the scripts run compiled programs only; unset it"),
    # (float64 runs are not the study's: they were reported "damaged" when resumed without it, and it without them)
    ({"JAX_ENABLE_X64": "1"}, "JAX_ENABLE_X64: the study trains in float32, as PyTorch does; unset it"),
    ({"XLA_FLAGS": "--xla_cpu_parallel_codegen_split_count=0"},  # (a value XLA checks only as it compiles)
     "XLA_FLAGS='--xla_cpu_parallel_codegen_split_count=0': XLA started with them, then failed (INTERNAL: "),
])
def test_a_jax_or_xla_setting_the_run_cannot_use_is_refused_in_one_line_with_nothing_written(tmp_path, env, fragment):
    """(JAX raises at its import, as it starts its devices or, with such a flag, as it compiles: a traceback, once.)
    All but the last are refused before any work."""
    proc = run_script("train.py", "--stage", "linear_ce", "--out", tmp_path / "run", env=env)
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "run").exists() and (proc.stdout == "" or "XLA_FLAGS" in env)


def test_a_stage_named_twice_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="in 'mlp,mlp': mlp repeats a value given before"):
        cli.stages("mlp,mlp")


@pytest.mark.parametrize("script, args", [
    ("train.py", ["--stage", "linear_ce", "--stage", "mlp_bn"]), ("train.py", ["--stage", "mlp", "--epochs", "1", "--epochs=2"]),
    ("train.py", ["--stage", "mlp", "--ep", "1", "--epochs", "1"]),
    ("train.py", ["--stage", "mlp", "--overwrite", "--overwrite"]),
    ("study.py", ["--stages", "linear_ce", "--stages", "mlp"]), ("sweep.py", ["--lr", "1e-3", "--lr=1e-2"]),
    ("make_assets.py", ["--out", "a", "--out", "b"]),
])
def test_an_option_given_twice_is_refused_in_one_line(refused, script, args):
    name = next(a for a in args[2:] if a.startswith("--")).split("=")[0]
    option = next(o for o in load_script(script).build_parser()._option_string_actions if o.startswith(name))
    assert refused(script, *args).endswith(f"argument {option}: given twice; give it once")


def test_a_stop_swallowed_where_exceptions_are_ignored_is_acted_on_at_the_next_step(monkeypatch):
    """A signal's `Stopped` raised inside a callback whose exceptions Python ignores (XLA's
    garbage-collection callback) stops the work at the next step all the same."""
    monkeypatch.setattr(cli, "_pending", [])
    try:
        cli._stop(signal.SIGTERM, None)
    except cli.Stopped:
        pass  # as the callback's caller does
    with pytest.raises(cli.Stopped):
        cli.Progress(2, "mlp, 2 seeds", "epoch").step()


def test_a_cluster_is_detected_by_its_own_variables_and_one_task_is_no_cluster():
    from mnist_jax.distributed import cluster_detected

    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    assert cluster_detected(slurm | {"SLURM_NTASKS": "2"})
    assert not cluster_detected(slurm | {"SLURM_NTASKS": "1"}) and not cluster_detected(slurm | {"SLURM_NTASKS": "x"})
    assert cluster_detected({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5"})
    assert cluster_detected({"TPU_WORKER_HOSTNAMES": "t0,t1"}) and not cluster_detected({"TPU_WORKER_HOSTNAMES": "t0"})
    assert not cluster_detected({})


def test_a_refused_argument_costs_no_jax_import():
    """Every script but the benchmark checks its arguments before JAX is imported: refusals
    asked one after another in a fresh interpreter never load it."""
    code = """import sys, importlib.util
sys.path.insert(0, "scripts")
for name in ("train", "study", "sweep", "compare", "linearity", "make_assets"):
    sys.argv = [f"scripts/{name}.py", "--epochs", "0"]
    spec = importlib.util.spec_from_file_location(name, f"scripts/{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try:
        script.parse_args() if name == "train" else script.build_parser().parse()
    except SystemExit as e:
        print(name, e.code, "jax" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.split("\n")[:-1] == [f"{name} 2 False" for name in ("train", "study", "sweep", "compare", "linearity", "make_assets")], proc.stderr


@pytest.mark.parametrize("args, env", [
    (["--out", "/proc/mnist_jax_out"], {}), (["--out", ""], {}), (["--timeout", "-5"], {}),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], {}), ([], {"MNIST_JAX_MEMORY_LIMIT": "banana"}),
], ids=["unwritable out", "empty out", "timeout", "process id", "memory limit"])
def test_refusals_after_the_arguments_parse_cost_no_jax_import_either(args, env):
    """What is checked beyond the argument's type (an --out that cannot be written, the
    several-process options together, the variables read) is refused before JAX is imported too."""
    code = ("import sys; sys.path.insert(0, 'scripts'); import study\ntry:\n    study.build_parser().parse(sys.argv[1:])\n"
            "except SystemExit as e:\n    print(e.code, 'jax' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env})
    assert proc.stdout == "2 False\n" and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_several_process_options_abbreviated_still_run_under_the_supervisor():
    """argparse takes `--coord` for `--coordinator`: such a command is one process of several too."""
    from mnist_jax.distributed import requested

    assert requested(["--coord", "127.0.0.1:1234", "--num-proc", "2", "--process=1"])
    assert not requested(["--stages", "mlp", "--seeds", "10", "--out", "x", "--no-cache"])


def test_study_and_sweep_refuse_a_width_or_dropout_rate_for_a_linear_stage_as_train_does(refused):
    line = refused("study.py", "--stages", "linear_ce,mlp", "--hidden", "8")
    assert line.endswith("--hidden applies to the MLP stages only, not linear_ce")
    assert "--dropout applies to the MLP stages only, not linear_mse" in refused("study.py", "--stages", "linear_mse", "--dropout", "0.2")
    line = refused("sweep.py", "--stages", "linear_mse,mlp", "--hidden", "32,64")  # (found by the hostile pass: a traceback)
    assert line.endswith("--hidden applies to the MLP stages only, not linear_mse")


@pytest.mark.parametrize("stages", ["mlp", "linear_ce,mlp_bn"])
def test_sweep_refuses_dropout_rates_when_no_stage_has_dropout(refused, stages):
    """Its rates are those of the stages with dropout: given for none, they were dropped without a word
    (a hostile user's case; train.py's --dropout adds dropout to the MLP it trains)."""
    assert refused("sweep.py", "--stages", stages, "--dropout", "0.3").endswith(
        f"--dropout sets the rates of the stages with dropout, and none of {stages.replace(',', ', ')} has dropout: add mlp_dropout to --stages")


def test_sweep_refuses_to_add_to_a_sweep_and_replace_it_at_once(refused, tmp_path):
    """(Both were taken, and it added: a hostile user's case.)"""
    line = refused("sweep.py", "--stages", "mlp", "--add", "--overwrite")
    assert line.endswith("--add keeps the sweep.json in --out and adds to it, --overwrite replaces it: give one of them")
    assert list(tmp_path.iterdir()) == []


def test_benchmark_names_its_folder_with_out_as_every_script_does(refused):
    assert "unrecognized arguments: --json" in refused("benchmark.py", "--json", "b.json")
    assert "--out" in load_script("benchmark.py").build_parser().format_help()


@pytest.mark.parametrize("argv0, typed", [("/venv/bin/mnist-jax", "mnist-jax"),
                                          ("/src/mnist_jax/__main__.py", "python -m mnist_jax")])
def test_the_console_command_and_python_m_run_the_scripts_and_say_how_they_were_run(argv0, typed, monkeypatch, tmp_path, capsys):
    """`mnist-jax make-assets ...` (or make_assets) is scripts/make_assets.py: its parser, its refusals, naming
    the other commands as this one was typed; results record the command so, and --resume repeats it so."""
    from mnist_jax.__main__ import main

    monkeypatch.setattr(sys, "argv", [argv0])
    monkeypatch.setattr(cli, "invocation", None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["make-assets", "--results", "none.json"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == f"{typed} make-assets: error: argument --results: study_arrays.npz not found; run {typed} study first\n"
    assert cli.command() == f"{typed} make-assets --results none.json"
    assert cli.resume_command() == f"{typed} make-assets --results none.json --resume"
    monkeypatch.setattr(sys, "argv", [argv0])  # as typed again (main set the script's own)
    with pytest.raises(SystemExit) as stop:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "--stage STAGE" in out and out.startswith(f"usage: {typed} train [-h]")
    monkeypatch.setattr(sys, "argv", [argv0])
    with pytest.raises(SystemExit) as stop:
        main(["train", "--epochs", "0"])
    assert stop.value.code == 2 and capsys.readouterr().err.startswith(f"{typed} train: error: argument --epochs: expected")


def test_a_script_run_from_scripts_records_itself_so(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["scripts/study.py", "--seeds", "2"])
    assert cli.command() == "python scripts/study.py --seeds 2"
    monkeypatch.setattr(sys, "argv", ["scripts/compare.py", "--out", "sp ace/bé nch"])  # (recorded unquoted: a hostile user's case)
    assert cli.command() == "python scripts/compare.py --out 'sp ace/bé nch'"
    monkeypatch.setattr(sys, "argv", ["scripts/study.py", "--seeds", "2"])
    assert cli.resume_command() == "python scripts/study.py --seeds 2 --resume"
    for given in ("--r", "--res", "--resume", "--ov", "--overwrite"):  # --resume once, whatever abbreviation was typed
        monkeypatch.setattr(sys, "argv", ["scripts/train.py", "--stage", "mlp", given, "--out", "o"])
        assert cli.resume_command() == "python scripts/train.py --stage mlp --out o --resume", given


def test_a_newline_in_a_folder_name_leaves_a_refusal_on_one_line_and_the_command_to_continue_gives_it_back(monkeypatch, refused):
    """A stop's command to continue quotes such an argument as bash's $'...' of its bytes, which bash reads back as typed
    in any locale, a name that is not UTF-8 too; a refusal shows the character as its escape, and then a typed backslash
    as two, so that the two read apart."""
    not_utf8 = os.fsdecode(b"caf\xe9")  # (a file name of bytes Python keeps as they are)
    typed = ["--stage", "mlp", "--out", f"my runs/a\nb-{not_utf8}", "--tensorboard", "it's\\\x1b[31m\u2028\u00a0\tlog"]
    monkeypatch.setattr(sys, "argv", ["scripts/train.py", *typed])
    command = cli.resume_command()
    assert command.isprintable()
    for locale in ("C", "C.UTF-8"):
        words = subprocess.run(["bash", "-c", f"printf '%s\\0' {command}"], capture_output=True, check=True,
                               env={**os.environ, "LC_ALL": locale}).stdout.split(b"\0")[:-1]
        assert list(map(os.fsdecode, words)) == ["python", "scripts/train.py", *typed, "--resume"], locale
    line = refused("train.py", "--stage", "mlp", "--out", "runs/a\nb", "--resume")
    assert "runs/a\\nb" in line
    typed_escape = refused("train.py", "--stage", "mlp", "--out", "runs/a\\nb\t", "--resume")
    assert "runs/a\\\\nb\\t" in typed_escape


def test_a_run_in_the_working_folder_given_as_dot_is_refused_with_a_free_folder_named(refused, tmp_path):
    """(`--out .` over a finished run ended in a traceback: '.' has no name to number.)"""
    import jax

    from mnist_jax.checkpoint import save_run
    from mnist_jax.train import RunResult, init_state, make_optimizer

    config = TrainConfig("linear_ce", epochs=1)
    state = init_state(config, jax.random.key(0), make_optimizer(config))
    history = [{"epoch": 1, "train_loss": 2.3, "train_accuracy": 0.1, "val_loss": 2.3, "val_accuracy": 0.1}]
    save_run(RunResult(config, "cpu", state, state, 1, history), tmp_path, {"stage": "linear_ce", "framework": "jax", "history": history})
    for dot in (".", "./"):
        line = refused("train.py", "--stage", "linear_ce", "--epochs", "1", "--out", dot)
        assert line.endswith(f"or choose another --out (say --out {tmp_path}-2)"), line


@pytest.mark.parametrize("script, option, where", [
    ("train.py", "--compile-cache", "run/jax"), ("train.py", "--tensorboard", "run/logs"), ("train.py", "--out", "run/sub"),
    ("study.py", "--out", "run"), ("sweep.py", "--out", "run/sweep"), ("train.py", "--out", "run/link/inner"),
])
def test_nothing_is_written_into_the_folder_of_another_run(refused, tmp_path, script, option, where):
    """(A cache, logs or results written there made that run's folder one --resume and --overwrite refused.)"""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "link").symlink_to(tmp_path / "elsewhere")  # followed to where it leads: not in the run
    (tmp_path / "elsewhere" / "metrics.json").write_text('{"stage": "mlp", "framework": "jax", "history": []}')
    (tmp_path / "run" / "metrics.json").write_text('{"stage": "mlp", "framework": "jax", "history": []}')  # as train.py writes
    args = ["--stage", "linear_ce"] if script == "train.py" else ["--stages", "linear_ce"]
    line = refused(script, *args, *([] if option == "--out" else ["--out", "other"]), option, where)
    run = tmp_path / ("elsewhere" if "link" in where else "run")
    is_or_in = "is" if where == "run" else "lies in"
    assert line.endswith(f"{option}: {where} {is_or_in} {run}, the folder of a train.py run, which holds that run alone; "
                         f"choose another {option}"), line
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["link", "metrics.json"]


@pytest.mark.parametrize("script, name, said", [
    ("train.py", "checkpoint.npz", "holds checkpoint.npz (not a file: a pipe, a socket or a device), which train.py did not write"),
    ("train.py", ".mnist_jax.lock", "holds a .mnist_jax.lock that is not this project's lock"),
    ("study.py", ".mnist_jax.lock", "holds a .mnist_jax.lock that is not this project's lock"),
], ids=["train.py checkpoint", "train.py lock", "study.py lock"])
def test_a_pipe_named_as_a_file_the_project_reads_is_refused_without_waiting_on_it(refused, tmp_path, script, name, said):
    """(Reading a named pipe waits for a writer: train.py waited forever on one in --out, with or without --resume or
    --overwrite: a hostile user's case.) SIGALRM ends the wait, should there be one."""
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "run" / name)

    def waited(*_):
        raise TimeoutError(f"waited on the pipe {name}")

    previous = signal.signal(signal.SIGALRM, waited)
    signal.alarm(30)
    try:
        for extra in ([], ["--resume"], ["--overwrite"]):
            args = ["--stage", "linear_ce"] if script == "train.py" else ["--stages", "linear_ce"]
            assert said in refused(script, *args, "--out", "run", *extra)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert [p.name for p in (tmp_path / "run").iterdir()] == [name]


@pytest.mark.parametrize("option, where", [("--out", "loop"), ("--tensorboard", "loop/logs"), ("--compile-cache", "loop/jax")])
def test_a_folder_behind_a_link_to_itself_is_refused_in_one_line(refused, tmp_path, option, where):
    """(`Path.resolve` raises on such a loop, and its traceback was the script's last word.)"""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    line = refused("train.py", "--stage", "linear_ce", option, where)
    assert line.endswith(f"cannot write to {where} ({'' if option == '--out' else 'loop is '}a link to {tmp_path / 'loop'}, "
                         "which the system cannot follow (a loop, or too many links))"), line


@pytest.mark.parametrize("option", ["--data-dir", "--out", "--tensorboard", "--compile-cache"])
def test_a_folder_name_too_long_for_the_system_is_refused_as_an_argument(refused, option):
    """(It was told as a save that failed, status 5: the system refuses to look such a name up.)"""
    too_long = "x" * 300
    line = refused("train.py", "--stage", "linear_ce", option, too_long)
    assert line.endswith(f"{too_long}: File name too long"), line


@pytest.mark.parametrize("argv, status, said", [
    ([], 2, "usage: mnist-jax {train,study,sweep,compare,linearity,make_assets,benchmark} [options]"),
    (["--help"], 0, "usage: mnist-jax {train,study,sweep,compare,linearity,make_assets,benchmark} [options]"),
    (["fit", "--stage", "mlp"], 2, "mnist-jax: error: unknown command 'fit'; choose from train, study, sweep"),
])
def test_the_console_command_lists_its_commands_and_refuses_another_in_one_line(argv, status, said, monkeypatch, capsys):
    from mnist_jax.__main__ import main

    monkeypatch.setattr(sys, "argv", ["mnist-jax"])
    with pytest.raises(SystemExit) as stop:
        main(argv)
    out, err = capsys.readouterr()
    assert stop.value.code == status and len((out + err).splitlines()) == 1 and said in out + err


@pytest.mark.parametrize("module, command", [("comparison", "compare"), ("plots", "make_assets"), ("linearity", "linearity"),
                                             ("sweep", "sweep"), ("results", "study"), ("files", "COMMAND")])
def test_a_library_module_names_the_command_that_uses_it(module, command, monkeypatch, capsys):
    import mnist_jax

    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", f"mnist_jax.{module}"])
    with pytest.raises(SystemExit) as stop:
        mnist_jax._refuse_a_library_module_run()
    said = capsys.readouterr().err
    assert stop.value.code == 2 and f"run: python -m mnist_jax {command} ... (or mnist-jax {command} ...)" in said


@pytest.mark.slow
def test_a_library_module_run_by_mistake_says_in_one_line_what_to_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mnist_jax.train", "--stage", "mlp_bn"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert_one_line_error(proc, "mnist_jax.train is a library module, not a command; run: python -m mnist_jax train ...")
    assert listing(tmp_path) == []


def test_a_damaged_progress_file_is_named_as_unreadable_and_kept(refused, tmp_path):
    """(It cannot be told from another's file of its name, so neither --resume nor --overwrite replaces it.)"""
    (tmp_path / "run" / "progress").mkdir(parents=True)
    (tmp_path / "run" / "progress" / "work.json").write_text('{"x":')
    for flag in ("--resume", "--overwrite"):
        line = refused("study.py", "--stages", "linear_ce", "--out", "run", flag)
        assert line.endswith("holds progress/work.json, which study.py did not write (or cannot read, and so does not replace); "
                             "choose another --out")
    assert (tmp_path / "run" / "progress" / "work.json").read_text() == '{"x":'
