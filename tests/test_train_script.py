"""`scripts/train.py` reproduces every stage of the original study at seed 42."""

import json
import re
import shlex
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import ROOT, assert_tensorboard_log, load_script, run_script, run_script_in_process
from mnist_jax import data
from mnist_jax.checkpoint import load_classifier, load_model, to_nnx
from mnist_jax.stages import ORIGINAL, STAGES
from mnist_jax.torch_reference import to_torch
from mnist_jax.train import run_keys, split_indices

EPOCH_LINE = re.compile(
    r"^\[Epoch 0[1-5]\] train_loss=\d+\.\d{4} train_acc=\d+\.\d\d% \| "
    r"val_loss=\d+\.\d{4} val_acc=\d+\.\d\d% \| \d+\.\d\ds$"
)


# The original's five stages and the controls, but for random_features' wider copies (1024 and 4096 units, half the
# time of a `--stage all` here): the same model at another width, whose programs tests/test_export.py compiles
TRAINED = (*ORIGINAL, "deep_linear", "random_features")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_args):
    """The stages of TRAINED with the defaults, in one `train.py --stage` process, logged to TensorBoard in `board`."""
    cwd = tmp_path_factory.mktemp("work")
    proc = run_script("train.py", "--stage", ",".join(TRAINED), *data_args, "--tensorboard", "board", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, {stage: cwd / "runs" / f"{stage}-seed42" for stage in TRAINED}


@pytest.mark.parametrize("stage", ORIGINAL)  # (the controls have none)
def test_stage_lands_within_half_a_point_of_the_documented_accuracy(runs, stage):
    metrics = json.loads((runs[1][stage] / "metrics.json").read_text())
    assert metrics["stage"] == stage and metrics["seed"] == 42 and metrics["epochs"] == 5
    assert abs(metrics["test_accuracy"] - STAGES[stage].documented_accuracy) <= 0.005


def test_output_has_one_line_per_epoch_and_the_test_result(runs):
    stdout, run_dirs = runs
    lines = stdout.splitlines()
    epochs = [line for line in lines if line.startswith("[Epoch")]
    assert len(epochs) == 5 * len(TRAINED) and all(EPOCH_LINE.match(line) for line in epochs)
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


def test_tensorboard_holds_each_epoch_and_the_hyperparameters_of_each_run(runs):
    for stage, run_dir in runs[1].items():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        hparams = {"stage": stage, "epochs": 5, "batch_size": 128, "lr": 1e-3, "seed": 42, "hidden": STAGES[stage].hidden,
                   "dropout": STAGES[stage].dropout}
        board = run_dir.parent.parent / "board" / run_dir.name
        assert_tensorboard_log(board, metrics["history"], metrics["test_accuracy"], hparams)


def test_a_runs_tensorboard_log_holds_its_history_once_after_overwrite_and_resume_and_is_named_by_its_settings(tmp_path,
                                                                                                           data_args):
    """A run, the same run --overwrite, then --resume to 2 epochs: one log of its two epochs. A run of another --lr whose
    --out ends in the same name logs apart (the log is named as the default run folder, not by --out)."""
    board = tmp_path / "board"
    for out, *more in (("xa/r", "--epochs", "1"), ("xa/r", "--epochs", "1", "--overwrite"), ("xa/r", "--epochs", "2", "--resume"),
                       ("xb/r", "--epochs", "1", "--lr", "0.01")):
        proc = run_script_in_process("train.py", "--stage", "linear_ce", *data_args, "--tensorboard", board, "--out",
                                     tmp_path / out, *more)
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in board.iterdir()) == ["linear_ce-lr0.01-seed42", "linear_ce-seed42"]
    for out, log, lr in (("xa/r", "linear_ce-seed42", 1e-3), ("xb/r", "linear_ce-lr0.01-seed42", 0.01)):
        metrics = json.loads((tmp_path / out / "metrics.json").read_text())
        hparams = {"stage": "linear_ce", "epochs": len(metrics["history"]), "batch_size": 128, "lr": lr, "seed": 42,
                   "hidden": None, "dropout": 0}
        assert_tensorboard_log(board / log, metrics["history"], metrics["test_accuracy"], hparams)  # one event file


def test_a_trained_model_classifies_raw_images_as_evaluation_scored_it(runs, mnist):
    """`load_classifier` takes MNIST's uint8 (N, 28, 28) images, (N, 784) floats in [0, 1] or one image, and
    refuses pixels scaled otherwise; its accuracy on the test set is the run's own."""
    run_dir = runs[1]["mlp_bn"]
    classify = load_classifier(run_dir)
    classes, probabilities = classify(mnist.test_images)
    test_accuracy = json.loads((run_dir / "metrics.json").read_text())["test_accuracy"]  # a float32
    assert np.mean(classes == mnist.test_labels) == pytest.approx(test_accuracy, abs=1e-7)  # one image is 1e-4
    np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
    np.testing.assert_array_equal(classify(mnist.test_images[:5].reshape(5, 784) / 255)[0], classes[:5])
    assert classify(mnist.test_images[0])[0] == classes[0]
    with pytest.raises(ValueError, match=r"uint8 or floats in \[0, 1\]; got float64\[5, 28, 28\] from 0.0 to 255.0"):
        classify(mnist.test_images[:5].astype(float))


@pytest.mark.parametrize("stage", ["linear_mse", "mlp_dropout", "mlp_bn", "deep_linear", "random_features"])
def test_a_run_exports_to_pytorch_and_to_nnx_linear_with_the_same_logits(runs, mnist, stage):
    model, _ = load_model(runs[1][stage], "best")
    x = mnist.test_images[:1000].reshape(1000, 784).astype(np.float32) / 255
    logits = np.asarray(model(jnp.asarray(x)))
    with torch.no_grad():
        torch_logits = to_torch(runs[1][stage], "best")(torch.from_numpy(x.reshape(1000, 1, 28, 28))).numpy()
    nnx_model = to_nnx(runs[1][stage], "best")
    assert {type(layer).__name__ for layer in nnx_model.layers} & {"Linear", "Einsum"} == {"Linear"}
    for exported in (torch_logits, np.asarray(nnx_model(jnp.asarray(x)))):
        np.testing.assert_allclose(exported, logits, rtol=1e-5, atol=1e-5)


def test_no_cache_leaves_no_compilation_cache_and_a_run_whose_shell_closed_its_output_succeeds(tmp_path, data_args):
    cache = tmp_path / "cache"
    args = ["--stage", "linear_ce", "--epochs", "1", *data_args, "--out", tmp_path / "run", "--compile-cache", cache, "--no-cache"]
    command = shlex.join([sys.executable, str(ROOT / "scripts" / "train.py"), *map(str, args)])
    proc = subprocess.run(["bash", "-c", f"{command} >&- 2>&-"])  # stdout and stderr closed
    assert proc.returncode == 0
    assert len(json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]) == 1
    assert not cache.exists()  # tests/test_benchmark.py shows the cache filling without --no-cache


def run_dir(*argv: str):
    """The default folder of `train.py *argv`'s first stage, as its parsing names it (nothing claimed)."""
    train = load_script("train.py")
    args = train.build_parser().parse_args(list(argv))
    args.given = {k: getattr(args, k) for k in ("batch_size", "lr", "seed", "hidden", "dropout") if getattr(args, k) is not None}
    args.lr, args.batch_size, args.seed = args.lr or 1e-3, args.batch_size or 128, args.seed if args.seed is not None else 42
    args.stages = args.stage
    return train.run_dir(args, "mlp_dropout" if len(args.stages) > 1 else args.stages[0])


def test_a_run_folder_is_named_by_every_setting_that_differs_from_the_stages_own():
    assert str(run_dir("--stage", "mlp", "--hidden", "512")) == "runs/mlp-hidden512-seed42"
    assert str(run_dir("--stage", "mlp_dropout", "--dropout", "0.2", "--lr", "3e-3", "--batch-size", "64", "--seed", "1")) == \
        "runs/mlp_dropout-dropout0.2-lr0.003-batch64-seed1"
    assert str(run_dir("--stage", "all", "--lr", "1e-4")) == "runs/mlp_dropout-lr0.0001-seed42"
    assert str(run_dir("--stage", "mlp_dropout,mlp_bn", "--out", "mine")) == "mine/mlp_dropout-seed42"  # a folder each
    assert str(run_dir("--stage", "mlp_dropout", "--out", "mine")) == "mine"
    # the stage's own values, given or not, and --epochs (which --resume extends) leave the name as it was
    assert str(run_dir("--stage", "mlp_dropout", "--hidden", "256", "--dropout", "0.5", "--lr", "1e-3", "--epochs", "9")) == \
        "runs/mlp_dropout-seed42"


@pytest.mark.slow  # (three programs compiled: some 5 s, kept out of the quick tier)
def test_two_runs_differing_in_hidden_keep_separate_folders_and_a_taken_folder_is_refused_with_true_advice(
        tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "load_mnist", lambda *_: tiny)  # the synthetic digits, as the script imports it

    def train(*args, epochs: int = 1):
        return run_script_in_process("train.py", "--stage", "mlp", "--epochs", str(epochs), *args, cwd=tmp_path)

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
    assert train("--hidden", "8", epochs=2).stderr.count("after epoch 1; pass --resume to continue it") == 1
