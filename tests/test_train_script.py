"""`scripts/train.py` reproduces every stage of the original study at seed 42."""

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_script, run_script, run_script_in_process
from mnist_jax import data
from mnist_jax.checkpoint import load_model
from mnist_jax.stages import STAGES
from mnist_jax.train import run_keys, split_indices

EPOCH_LINE = re.compile(
    r"^\[Epoch 0[1-5]\] train_loss=\d+\.\d{4} train_acc=\d+\.\d\d% \| "
    r"val_loss=\d+\.\d{4} val_acc=\d+\.\d\d% \| \d+\.\d\ds$"
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_args):
    """All five stages with the defaults, in one `train.py --stage all` process."""
    cwd = tmp_path_factory.mktemp("work")
    proc = run_script("train.py", "--stage", "all", *data_args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, {stage: cwd / "runs" / f"{stage}-seed42" for stage in STAGES}


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_lands_within_half_a_point_of_the_documented_accuracy(runs, stage):
    metrics = json.loads((runs[1][stage] / "metrics.json").read_text())
    assert metrics["stage"] == stage and metrics["seed"] == 42 and metrics["epochs"] == 5
    assert abs(metrics["test_accuracy"] - STAGES[stage].documented_accuracy) <= 0.005


def test_output_has_one_line_per_epoch_and_the_test_result(runs):
    stdout, run_dirs = runs
    lines = stdout.splitlines()
    epochs = [line for line in lines if line.startswith("[Epoch")]
    assert len(epochs) == 5 * len(STAGES) and all(EPOCH_LINE.match(line) for line in epochs)
    metrics = json.loads((run_dirs["mlp_bn"] / "metrics.json").read_text())
    test_line = f"[Test] loss={metrics['test_loss']:.4f} acc={metrics['test_accuracy']:.2%}"
    assert test_line in lines


def test_metrics_json_records_the_run(runs):
    metrics = json.loads((runs[1]["mlp_dropout"] / "metrics.json").read_text())
    assert {"stage", "framework", "device", "seed", "epochs", "batch_size", "lr", "test_accuracy",
            "test_loss", "documented_accuracy", "history"} <= metrics.keys()
    assert metrics["framework"] == "jax" and metrics["batch_size"] == 128 and metrics["lr"] == 1e-3
    assert metrics["documented_accuracy"] == 0.9728
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3, 4, 5]
    for row in metrics["history"]:
        assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"} <= row.keys()
        assert 0.5 < row["val_accuracy"] < 1


def accuracy(model, images, labels) -> float:
    logits = model(jnp.asarray(images.reshape(len(images), -1), jnp.float32) / 255)
    return float(jnp.mean(logits.argmax(-1) == labels))


def test_checkpoint_restores_the_final_and_best_models(runs, mnist):
    run_dir = runs[1]["mlp_bn"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    final, config = load_model(run_dir, "final")
    assert config.stage == "mlp_bn" and config.seed == 42
    assert accuracy(final, mnist.test_images, mnist.test_labels) == metrics["test_accuracy"]

    best, _ = load_model(run_dir, "best")
    _, val_idx = split_indices(run_keys(42)[0], 60_000)
    val_idx = np.asarray(val_idx)
    best_row = max(metrics["history"], key=lambda row: row["val_accuracy"])
    val_acc = accuracy(best, mnist.train_images[val_idx], mnist.train_labels[val_idx])
    assert val_acc == pytest.approx(best_row["val_accuracy"], abs=1e-6)


def test_no_cache_leaves_no_compilation_cache(tmp_path, data_args):
    cache = tmp_path / "cache"
    proc = run_script(
        "train.py", "--stage", "linear_ce", "--epochs", "1", *data_args, "--out", tmp_path / "run",
        "--compile-cache", cache, "--no-cache",
    )
    assert proc.returncode == 0, proc.stderr
    assert not cache.exists()  # tests/test_benchmark.py shows the cache filling without --no-cache


def run_dir(*argv: str):
    """The default folder of `train.py *argv`'s first stage, as its parsing names it (nothing claimed)."""
    train = load_script("train.py")
    args = train.build_parser().parse_args(list(argv))
    args.given = {k: getattr(args, k) for k in ("batch_size", "lr", "seed", "hidden", "dropout") if getattr(args, k) is not None}
    args.lr, args.batch_size, args.seed = args.lr or 1e-3, args.batch_size or 128, args.seed if args.seed is not None else 42
    return train.run_dir(args, "mlp_dropout" if args.stage == "all" else args.stage)


def test_a_run_folder_is_named_by_every_setting_that_differs_from_the_stages_own():
    assert str(run_dir("--stage", "mlp", "--hidden", "512")) == "runs/mlp-hidden512-seed42"
    assert str(run_dir("--stage", "mlp_dropout", "--dropout", "0.2", "--lr", "3e-3", "--batch-size", "64", "--seed", "1")) == \
        "runs/mlp_dropout-dropout0.2-lr0.003-batch64-seed1"
    assert str(run_dir("--stage", "all", "--lr", "1e-4")) == "runs/mlp_dropout-lr0.0001-seed42"
    # the stage's own values, given or not, and --epochs (which --resume extends) leave the name as it was
    assert str(run_dir("--stage", "mlp_dropout", "--hidden", "256", "--dropout", "0.5", "--lr", "1e-3", "--epochs", "9")) == \
        "runs/mlp_dropout-seed42"


@pytest.mark.slow  # (three programs compiled: some 5 s, kept out of the quick tier)
def test_two_runs_differing_in_hidden_keep_separate_folders_and_a_taken_folder_is_refused_with_true_advice(
        tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "load_mnist", lambda *_: tiny)  # the synthetic digits, as the script imports it

    def train(*args):
        return run_script_in_process("train.py", "--stage", "mlp", "--epochs", "1", *args, cwd=tmp_path)

    for hidden in (8, 16):
        proc = train("--hidden", str(hidden))
        assert proc.returncode == 0, proc.stderr
        assert f"stage mlp: 784 -> {hidden} -> ReLU -> 10\n" in proc.stdout  # the width trained, not the stage's 256
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["mlp-hidden16-seed42", "mlp-hidden8-seed42"]
    again = train("--hidden", "8").stderr
    assert "runs/mlp-hidden8-seed42 already holds this run, finished after 1 epoch; a larger --epochs with --resume" in again
    assert again.rstrip().endswith("or choose another --out (say --out runs/mlp-hidden8-seed42-2)")
    other = train("--hidden", "16", "--out", "runs/mlp-hidden8-seed42").stderr
    assert "holds a run that --resume cannot continue as asked, --overwrite" in other and "pass --resume" not in other
    assert train("--hidden", "8", "--epochs", "2").stderr.count("after epoch 1; pass --resume to continue it") == 1
