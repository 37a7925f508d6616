"""Many seeds in one compiled program: `jax.vmap` over the seed axis of the training step.

Each seed draws its own split, initialisation, batch order and dropout masks; the
images stay one shared device array. The statistics compare stages seed by seed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from flax import nnx

from mnist_jax import sharding
from mnist_jax.data import MNIST
from mnist_jax.evaluate import make_evaluate, predict
from mnist_jax.files import atomic_write, write_json
from mnist_jax.train import TrainConfig, device_description, epoch_keys, epoch_order, make_train_epoch, prepare


@dataclasses.dataclass
class SeedsResult:
    config: TrainConfig
    seeds: list[int]
    history: list[list[dict]]  # per seed, per epoch
    test_accuracies: np.ndarray  # (seeds,)
    test_predictions: np.ndarray  # (seeds, 10000) predicted classes
    final_params: dict  # pure dict, leading seed axis
    compile_seconds: float
    train_seconds: float


def train_seeds(
    config: TrainConfig,
    data: MNIST,
    seeds: list[int],
    mesh: jax.sharding.Mesh | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> SeedsResult:
    """Train `config` once per seed, all seeds at once. Several devices split the
    seeds (see `sharding`); `mesh` picks them (default: as many as divide the seeds).
    `on_epoch` is told each epoch's number once that epoch has run."""
    stage = config.spec
    setup = prepare(config, data, seeds)
    graphdef, epochs_keys, states, train_idx, val_idx = setup.graphdef, setup.epochs_key, setup.state, setup.train_idx, setup.val_idx
    images, labels, test_images, test_labels = setup.data
    mesh = mesh or sharding.make_mesh("seed", len(seeds))
    if mesh.size > 1:
        epochs_keys, states, train_idx, val_idx = sharding.place((epochs_keys, states, train_idx, val_idx), mesh, "seed")
        images, labels, test_images, test_labels = sharding.place((images, labels, test_images, test_labels), mesh)
    train_epoch = make_train_epoch(graphdef, stage.loss, setup.tx, config.batch_size)
    evaluate = make_evaluate(graphdef, stage.loss)

    # The images are arguments, not closed over: a closed-over array is compiled into
    # the program as a constant.
    @functools.partial(jax.vmap, in_axes=(0, 0, 0, 0, 0, None, None))
    def epoch(state, train_idx, val_idx, epochs_key, number, images, labels):
        shuffle_key, dropout_key = epoch_keys(epochs_key, number)
        state, (loss, acc) = train_epoch(state, images, labels, epoch_order(train_idx, shuffle_key), dropout_key)
        val_loss, val_acc = evaluate(state.params, state.batch_stats, images[val_idx], labels[val_idx])
        return state, jnp.stack([loss, acc, val_loss, val_acc])

    @jax.jit
    def test(states, images, labels):
        predicted = jax.vmap(lambda s: predict(graphdef, s.params, s.batch_stats, images).argmax(-1))(states)
        return (predicted == labels).mean(-1), predicted

    numbers = lambda e: jnp.full(len(seeds), e)  # noqa: E731  (the epoch number, per seed)
    start = time.perf_counter()
    epoch = jax.jit(epoch).lower(states, train_idx, val_idx, epochs_keys, numbers(1), images, labels).compile()
    compile_seconds = time.perf_counter() - start

    start = time.perf_counter()
    rows = []
    for e in range(1, config.epochs + 1):
        states, metrics = epoch(states, train_idx, val_idx, epochs_keys, numbers(e), images, labels)
        rows.append(metrics)
        if on_epoch:
            metrics.block_until_ready()
            on_epoch(e)
    accuracies, predictions = test(states, test_images, test_labels)
    accuracies = np.asarray(accuracies)
    train_seconds = time.perf_counter() - start

    metrics = np.asarray(jnp.stack(rows, 1))  # (seeds, epochs, 4)
    names = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    history = [
        [{"epoch": e + 1, **{n: float(v) for n, v in zip(names, metrics[s, e])}} for e in range(config.epochs)]
        for s in range(len(seeds))
    ]
    return SeedsResult(
        config,
        list(seeds),
        history,
        accuracies,
        np.asarray(predictions),
        jax.tree.map(np.asarray, nnx.to_pure_dict(states.params)),
        compile_seconds,
        train_seconds,
    )


def mean_ci95(values) -> tuple[float, float, tuple[float, float]]:
    """Mean, sample standard deviation and 95% t-interval of the mean."""
    values = np.asarray(values, np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, 0.0, (mean, mean)
    std = float(values.std(ddof=1))
    half = float(scipy.stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))
    return mean, std, (mean - half, mean + half)


def stage_summary(result: SeedsResult) -> dict:
    mean, std, ci = mean_ci95(result.test_accuracies)
    return {
        "seeds": result.seeds,
        "test_accuracies": result.test_accuracies.tolist(),
        "history": result.history,
        "mean": mean,
        "std": std,
        "ci95": list(ci),
        "documented_accuracy": result.config.spec.documented_accuracy,
        "compile_seconds": result.compile_seconds,
        "train_seconds": result.train_seconds,
    }


def step_differences(stages: dict[str, dict], pairs: list[tuple[str, str]] | None = None) -> list[dict]:
    """Accuracy of `to` minus `from` for each pair (default: consecutive stages), paired
    by seed (a seed gives both stages the same split and batch order)."""
    names = list(stages)
    steps = []
    for before, after in pairs or list(zip(names, names[1:])):
        diff = np.subtract(stages[after]["test_accuracies"], stages[before]["test_accuracies"])
        mean, _, (lo, hi) = mean_ci95(diff)
        steps.append({"from": before, "to": after, "difference": mean, "ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0)})
    return steps


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    matrix = np.zeros((10, 10), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def save_study(results: dict[str, SeedsResult], data: MNIST, out: Path, command: str, seconds: float) -> dict:
    """Write `results.json` and `study_arrays.npz` (what the figures need) to `out`."""
    stages = {name: stage_summary(r) for name, r in results.items()}
    report = {
        "stages": stages,
        "steps": step_differences(stages),
        "versus_mlp": step_differences(stages, [("mlp", s) for s in ("mlp_dropout", "mlp_bn") if {"mlp", s} <= stages.keys()]),
        "command": command,
        "device": device_description(),
        "jax_version": jax.__version__,
        "seconds": seconds,
    }
    arrays = {}  # seed index 0 of each stage
    for name, r in results.items():
        arrays[f"{name}_predictions"] = r.test_predictions[0]
        arrays[f"{name}_confusion"] = confusion_matrix(data.test_labels, r.test_predictions[0])
        if not r.config.spec.is_mlp:
            arrays[f"{name}_weights"] = r.final_params["linear"]["kernel"][0]
    linear = [n for n, r in results.items() if not r.config.spec.is_mlp]
    mlps = [n for n, r in results.items() if r.config.spec.is_mlp]
    if linear and mlps:
        best_linear = max(linear, key=lambda n: stages[n]["mean"])
        mlp = "mlp" if "mlp" in mlps else mlps[0]
        wrong = results[best_linear].test_predictions[0] != data.test_labels
        right = results[mlp].test_predictions[0] == data.test_labels
        picked = np.flatnonzero(wrong & right)[:24]
        arrays |= {
            "misclassified_stages": np.array([best_linear, mlp]),
            "misclassified_images": data.test_images[picked],
            "misclassified_labels": data.test_labels[picked],
            "misclassified_linear_predictions": results[best_linear].test_predictions[0][picked],
        }
    write_json(out / "results.json", report)
    with atomic_write(out / "study_arrays.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return report
