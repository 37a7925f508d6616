"""Many seeds in one compiled program: `jax.vmap` over the seed axis of the training step.

Each seed draws its own split, initialisation, batch order and dropout masks; the
images stay one shared device array. The statistics compare stages seed by seed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from flax import nnx

from mnist_jax import memory, sharding
from mnist_jax.data import MNIST
from mnist_jax.models import NUM_CLASSES
from mnist_jax.stages import STAGES
from mnist_jax.evaluate import make_evaluate, predict
from mnist_jax.files import UNREADABLE, atomic_write, write_json
from mnist_jax.train import (
    TrainConfig,
    device_data,
    device_description,
    epoch_keys,
    epoch_order,
    make_init,
    make_optimizer,
    make_train_epoch,
    prepare,
)


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
    seeds_at_once: int = 0  # the chunk size: as many as fitted in memory, or as asked


def _seed_programs(config: TrainConfig, graphdef: nnx.GraphDef, tx) -> tuple[Callable, Callable]:
    """The vmapped epoch (train, then evaluate on each seed's validation split) and the
    vmapped test, each one program for all the seeds of a chunk."""
    train_epoch = make_train_epoch(graphdef, config.spec.loss, tx, config.batch_size)
    evaluate = make_evaluate(graphdef, config.spec.loss)

    # The images are arguments, not closed over: a closed-over array is compiled into
    # the program as a constant.
    @functools.partial(jax.vmap, in_axes=(0, 0, 0, 0, 0, None, None))
    def epoch(state, train_idx, val_idx, epochs_key, number, images, labels):
        shuffle_key, dropout_key = epoch_keys(epochs_key, number)
        state, (loss, acc) = train_epoch(state, images, labels, epoch_order(train_idx, shuffle_key), dropout_key)
        val_loss, val_acc = evaluate(state.params, state.batch_stats, images[val_idx], labels[val_idx])
        return state, jnp.stack([loss, acc, val_loss, val_acc])

    def test(states, images, labels):
        predicted = jax.vmap(lambda s: predict(graphdef, s.params, s.batch_stats, images).argmax(-1))(states)
        return (predicted == labels).mean(-1), predicted

    return jax.jit(epoch), jax.jit(test)


class Chunk(NamedTuple):
    """The compiled programs for `size` seeds at once."""

    size: int
    mesh: jax.sharding.Mesh
    epoch: jax.stages.Compiled
    test: jax.stages.Compiled
    bytes: int  # the seeds' states, the data, and what the larger program allocates, per XLA


def compile_chunk(config: TrainConfig, data: MNIST, size: int, mesh: jax.sharding.Mesh | None = None) -> Chunk:
    """Compile the programs for `size` seeds from shapes alone: nothing is allocated."""
    mesh = mesh if mesh is not None and size % mesh.size == 0 else sharding.make_mesh("seed", size)
    tx = make_optimizer(config.lr)
    graphdef, init = make_init(config, tx, len(data.train_images))
    epoch, test = _seed_programs(config, graphdef, tx)
    seeds = jax.eval_shape(lambda: jnp.full(size, 1))  # (the epoch numbers have the same shape)
    per_seed, shared = jax.eval_shape(jax.vmap(init), seeds), jax.eval_shape(lambda: device_data(data))
    if mesh.size > 1:
        per_seed, shared = sharding.abstract(per_seed, mesh, "seed"), sharding.abstract(shared, mesh)
    epochs_keys, states, train_idx, val_idx = per_seed
    images, labels, test_images, test_labels = shared
    epoch = epoch.lower(states, train_idx, val_idx, epochs_keys, seeds, images, labels).compile()
    test = test.lower(states, test_images, test_labels).compile()
    resident = memory.tree_bytes((per_seed, shared))
    return Chunk(size, mesh, epoch, test, resident + max(memory.program_bytes(epoch), memory.program_bytes(test)))


def fitting_chunk(config: TrainConfig, data: MNIST, n: int, mesh: jax.sharding.Mesh | None = None) -> Chunk:
    """The programs for as many of `n` seeds at once as fit in memory. What they hold
    grows linearly with the seeds: XLA's figures for `n` seeds and for 1 give the slope."""
    whole = compile_chunk(config, data, n, mesh)
    available = memory.available_bytes()
    if whole.bytes <= available:
        return whole
    one = whole if n == 1 else compile_chunk(config, data, 1, mesh)
    memory.check(f"the programs training {config.describe()}, one seed,", one.bytes)
    per_seed = (whole.bytes - one.bytes) / (n - 1)
    size = min(n - 1, 1 + int((available - one.bytes) // per_seed))
    while size > 1:
        chunk = compile_chunk(config, data, size, mesh)
        if chunk.bytes <= available:
            return chunk
        size = size * 9 // 10
    return one


def _train_chunk(config: TrainConfig, data: MNIST, seeds: list[int], chunk: Chunk, on_epoch: Callable[[], None]) -> SeedsResult:
    setup = prepare(config, data, seeds)
    epochs_keys, states, train_idx, val_idx = setup.epochs_key, setup.state, setup.train_idx, setup.val_idx
    images, labels, test_images, test_labels = setup.data
    if chunk.mesh.size > 1:
        epochs_keys, states, train_idx, val_idx = sharding.place((epochs_keys, states, train_idx, val_idx), chunk.mesh, "seed")
        images, labels, test_images, test_labels = sharding.place(setup.data, chunk.mesh)

    start = time.perf_counter()
    rows = []
    for e in range(1, config.epochs + 1):
        states, metrics = chunk.epoch(states, train_idx, val_idx, epochs_keys, jnp.full(len(seeds), e), images, labels)
        rows.append(metrics)
        metrics.block_until_ready()
        on_epoch()
    accuracies, predictions = chunk.test(states, test_images, test_labels)
    accuracies = np.asarray(accuracies)
    train_seconds = time.perf_counter() - start

    metrics = np.asarray(jnp.stack(rows, 1))  # (seeds, epochs, 4)
    names = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    history = [
        [{"epoch": e + 1, **{n: float(v) for n, v in zip(names, metrics[s, e])}} for e in range(config.epochs)]
        for s in range(len(seeds))
    ]
    final_params = jax.tree.map(np.asarray, nnx.to_pure_dict(states.params))
    return SeedsResult(config, list(seeds), history, accuracies, np.asarray(predictions), final_params, 0.0, train_seconds)


def train_seeds(
    config: TrainConfig,
    data: MNIST,
    seeds: list[int],
    mesh: jax.sharding.Mesh | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
    seeds_at_once: int | None = None,
) -> SeedsResult:
    """Train `config` once per seed, as many seeds at once as fit in memory (and at most
    `seeds_at_once`), the rest in further chunks of that size, with the same results.
    Several devices split a chunk's seeds (see `sharding`); `mesh` picks them (default:
    as many as divide the chunk). `on_epoch(done, total)` counts the epochs of all chunks."""
    start = time.perf_counter()
    chunk = fitting_chunk(config, data, min(len(seeds), seeds_at_once or len(seeds)), mesh)
    compiled = {chunk.size: chunk}
    compile_seconds = time.perf_counter() - start
    parts = [seeds[i : i + chunk.size] for i in range(0, len(seeds), chunk.size)]
    done, total = 0, len(parts) * config.epochs

    def count() -> None:
        nonlocal done
        done += 1
        if on_epoch:
            on_epoch(done, total)

    results = []
    for part in parts:
        if len(part) not in compiled:
            start = time.perf_counter()
            compiled[len(part)] = compile_chunk(config, data, len(part), mesh)
            compile_seconds += time.perf_counter() - start
        results.append(_train_chunk(config, data, part, compiled[len(part)], count))
    concatenate = lambda *parts: np.concatenate(parts)  # noqa: E731
    return SeedsResult(
        config,
        list(seeds),
        [row for r in results for row in r.history],
        concatenate(*(r.test_accuracies for r in results)),
        concatenate(*(r.test_predictions for r in results)),
        jax.tree.map(concatenate, *(r.final_params for r in results)),
        compile_seconds,
        sum(r.train_seconds for r in results),
        chunk.size,
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
        "seeds_at_once": result.seeds_at_once,
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


class StudyFileError(ValueError):
    """`results.json` or `study_arrays.npz` is not what `save_study` writes."""


HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")


def _check_report(report: dict) -> None:
    """Raise unless `report` holds what the figures read."""
    if not isinstance(report["device"], str) or not report["stages"]:
        raise ValueError("no device or no stages")
    for name, stage in report["stages"].items():
        STAGES[name]  # noqa: B018  (a known stage)
        histories = stage["history"]
        if not len(stage["seeds"]) == len(stage["test_accuracies"]) == len(histories) > 0 or len(stage["ci95"]) != 2:
            raise ValueError(f"{name}: seeds, test_accuracies and history differ in length")
        if not histories[0] or any(len(seed) != len(histories[0]) for seed in histories):
            raise ValueError(f"{name}: seeds with different numbers of epochs")
        numbers = [stage["mean"], stage["std"], stage["documented_accuracy"], *stage["ci95"], *stage["test_accuracies"]]
        numbers += [row[key] for seed in histories for row in seed for key in HISTORY_KEYS]
        if not all(isinstance(x, (int, float)) for x in numbers):
            raise ValueError(f"{name}: a figure that is not a number")


def _check_arrays(arrays: dict, stages: list[str]) -> None:
    """Raise unless `arrays` holds what the figures of `stages` read, in their shapes."""
    shapes = {f"{name}_confusion": (10, 10) for name in stages}
    shapes |= {f"{name}_weights": (NUM_CLASSES, 784) for name in stages if not STAGES[name].is_mlp}
    if "misclassified_stages" in arrays:
        n = len(arrays["misclassified_images"])
        shapes |= {"misclassified_stages": (2,), "misclassified_images": (n, 28, 28),
                   "misclassified_labels": (n,), "misclassified_linear_predictions": (n,)}
        if not set(map(str, arrays["misclassified_stages"])) <= set(stages):
            raise ValueError("misclassified_stages names stages not in results.json")
    for key, shape in shapes.items():
        if key not in arrays:
            raise ValueError(f"no {key}")
        if arrays[key].shape != shape:
            raise ValueError(f"{key} has shape {arrays[key].shape}, expected {shape}")


def load_study(results: Path) -> tuple[dict, dict]:
    """`results.json` and the `study_arrays.npz` beside it, as `save_study` wrote them;
    `StudyFileError` names the file and what is wrong with it."""
    path = results
    try:
        report = json.loads(results.read_text())
        _check_report(report)
        path = results.with_name("study_arrays.npz")
        with np.load(path) as saved:
            arrays = dict(saved)
        _check_arrays(arrays, list(report["stages"]))
    except UNREADABLE as e:
        raise StudyFileError(f"{path} is damaged or not written by scripts/study.py ({type(e).__name__}: {e})") from None
    return report, arrays
