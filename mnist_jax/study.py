"""Many models in one compiled program: the training step mapped over a leading axis of
models, `lax.map` one after another on the CPU and `jax.vmap` side by side elsewhere.

Each model draws its own split, initialisation, batch order and dropout masks from its
seed; the images stay one shared device array. The statistics compare stages seed by seed.
"""

from __future__ import annotations

import dataclasses
import math
import time
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from flax import nnx
from jax.sharding import PartitionSpec

from mnist_jax import distributed, memory, sharding
from mnist_jax.data import MNIST
from mnist_jax.models import NUM_CLASSES
from mnist_jax.stages import STAGES
from mnist_jax.evaluate import make_evaluate, predict
from mnist_jax.files import UNREADABLE, atomic_write, check_finite, check_fractions, npz_member, read_json, write_json
from mnist_jax.models import dropout_bits
from mnist_jax.progress import GridProgress
from mnist_jax.errors import NonFiniteLoss
from mnist_jax.train import (
    Point, TrainConfig, device_data, device_description, epoch_keys, epoch_order, graph, initial, make_optimizer,
    make_train_epoch, point, prepare,
)


@dataclasses.dataclass
class GridResult:
    """Models of one stage trained together: one per `Point` (seed, learning rate,
    dropout rate); the config gives what they share (stage, hidden width, epochs, batch)."""

    config: TrainConfig
    points: list[Point]
    history: list[list[dict]]  # per point, per epoch
    test_accuracies: np.ndarray  # (points,), the final models'
    test_predictions: np.ndarray  # (points, 10000) predicted classes
    final_params: dict  # pure dict, leading axis of points
    compile_seconds: float
    train_seconds: float
    models_at_once: int = 0  # the chunk size: as many as fitted in memory, or as asked

    @property
    def seeds(self) -> list[int]:
        return [p.seed for p in self.points]


def side_by_side(platform: str | None = None) -> bool:
    """Whether one step of the program trains its models side by side (`jax.vmap`) or one
    after another (`lax.map`): on the CPU one after another, as XLA:CPU's batched matmuls
    are slower than one model's (docs/performance.md)."""
    return (platform or jax.default_backend()) != "cpu"


def over_models(f: Callable, vmapped: bool) -> Callable:
    """`f` of one model's arguments, over a leading axis of models."""
    return jax.vmap(f) if vmapped else lambda xs: jax.lax.map(f, xs)


def _grid_programs(config: TrainConfig, graphdef: nnx.GraphDef, tx, mesh: jax.sharding.Mesh, vmapped: bool) -> tuple[Callable, Callable]:
    """The epoch of every model (train; evaluate on its validation split and on the test
    set) and the final test predictions, each one program for all the models of a
    chunk, split over the mesh's devices (`shard_map`: no communication)."""
    train_epoch = make_train_epoch(graphdef, config.spec.loss, tx, config.batch_size)
    evaluate = make_evaluate(graphdef, config.spec.loss)
    per_model, shared = PartitionSpec("seed"), PartitionSpec()

    # The images are arguments, not closed over: a closed-over array is compiled into
    # the program as a constant.
    def epoch(models, number, images, labels, test_images, test_labels):
        def one(model):
            state, train_idx, val_idx, epochs_key = model
            shuffle_key, dropout_key = epoch_keys(epochs_key, number)
            state, (loss, acc) = train_epoch(state, images, labels, epoch_order(train_idx, shuffle_key), dropout_key)
            val_loss, val_acc = evaluate(state.params, state.batch_stats, images[val_idx], labels[val_idx])
            test_acc = evaluate(state.params, state.batch_stats, test_images, test_labels)[1]
            return state, jnp.stack([loss, acc, val_loss, val_acc, test_acc])

        return over_models(one, vmapped)(models)

    def test(states, images, labels):
        predicted = over_models(lambda s: predict(graphdef, s.params, s.batch_stats, images).argmax(-1), vmapped)(states)
        return (predicted == labels).mean(-1), predicted

    in_specs = (per_model, shared, shared, shared, shared, shared)
    epoch = jax.shard_map(epoch, mesh=mesh, in_specs=in_specs, out_specs=per_model)
    test = jax.shard_map(test, mesh=mesh, in_specs=(per_model, shared, shared), out_specs=per_model)
    return jax.jit(epoch), jax.jit(test)


class Chunk(NamedTuple):
    """The compiled programs for `size` models at once."""

    size: int
    mesh: jax.sharding.Mesh
    epoch: jax.stages.Compiled
    test: jax.stages.Compiled
    bytes: int  # the models' states, the data, and what the larger program allocates, per XLA


def compile_chunk(
    config: TrainConfig, data: MNIST, size: int, mesh: jax.sharding.Mesh | None = None, vmapped: bool | None = None
) -> Chunk:
    """Compile the programs for `size` models from shapes alone: nothing is allocated.
    `vmapped`: the models side by side (default: `side_by_side()`)."""
    mesh = mesh if mesh is not None and size % mesh.size == 0 else sharding.make_mesh("seed", size)
    tx = make_optimizer(config.lr)
    epoch, test = _grid_programs(config, graph(config), tx, mesh, side_by_side() if vmapped is None else vmapped)
    points = jax.tree.map(lambda x: jax.ShapeDtypeStruct((size,), jnp.asarray(x).dtype), point(config))
    epochs_keys, states, train_idx, val_idx = jax.eval_shape(jax.vmap(lambda p: initial(config, tx, len(data.train_images), p)), points)
    per_model = sharding.abstract((states, train_idx, val_idx, epochs_keys), mesh, "seed")
    shared = sharding.abstract(jax.eval_shape(lambda: device_data(data)), mesh)
    number = jax.ShapeDtypeStruct((), jnp.int32)
    images, labels, test_images, test_labels = shared
    epoch = epoch.lower(per_model, number, images, labels, test_images, test_labels).compile()
    test = test.lower(per_model[0], test_images, test_labels).compile()
    resident = memory.tree_bytes((per_model, shared))
    return Chunk(size, mesh, epoch, test, resident + max(memory.program_bytes(epoch), memory.program_bytes(test)))


def fitting_chunk(config: TrainConfig, data: MNIST, n: int, mesh: jax.sharding.Mesh | None = None, vmapped: bool | None = None) -> Chunk:
    """The programs for as many of `n` models at once as fit in memory. What they hold
    grows linearly with the models: XLA's figures for `n` models and for 1 give the slope."""
    whole = compile_chunk(config, data, n, mesh, vmapped)
    available = memory.available_bytes()
    if whole.bytes <= available:
        return whole
    one = whole if n == 1 else compile_chunk(config, data, 1, mesh, vmapped)
    memory.check(f"the programs training {config.describe()}, one model,", one.bytes)
    per_model = (whole.bytes - one.bytes) / (n - 1)
    size = min(n - 1, 1 + int((available - one.bytes) // per_model))
    while size > 1:
        chunk = compile_chunk(config, data, size, mesh, vmapped)
        if chunk.bytes <= available:
            return chunk
        size = size * 9 // 10
    return one


HISTORY_NAMES = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_accuracy")


def _train_chunk(
    config: TrainConfig, data: MNIST, points: list[Point], chunk: Chunk, on_epoch: Callable[[], None],
    progress: GridProgress | None, key: str,
) -> GridResult:
    """Train one chunk, saving its progress under `key` after every epoch (and starting
    from what was saved); stop after the save if every process agreed to (a SIGTERM)."""
    begin = prepare(config, data, points)
    states, first, saved_rows = begin.state, 1, np.zeros((0, len(points), len(HISTORY_NAMES)), np.float32)
    if progress and (saved := progress.load(key, jax.device_get(begin.state))):
        states, first, saved_rows = saved.states, saved.epochs + 1, saved.rows
        for _ in range(saved.epochs):
            on_epoch()
    models = sharding.place((states, begin.train_idx, begin.val_idx, begin.epochs_key), chunk.mesh, "seed")
    images, labels, test_images, test_labels = sharding.place(device_data(data), chunk.mesh)

    start = time.perf_counter()
    rows = list(saved_rows)  # per epoch, (models, 5) on the host
    for e in range(first, config.epochs + 1):
        states, metrics = chunk.epoch(models, jnp.int32(e), images, labels, test_images, test_labels)
        models = (states, *models[1:])
        rows.append(np.asarray(sharding.gather(metrics)))
        losses = rows[-1][:, [0, 2]]  # train and validation loss
        if not np.isfinite(losses).all():
            point = points[int(np.flatnonzero(~np.isfinite(losses).all(1))[0])]
            kept = f"; {progress.folder} keeps epoch {e - 1}" if progress and e > 1 else ""
            raise NonFiniteLoss(e, f" ({config.stage}, seed {point.seed}, lr {point.lr:g}, dropout {point.dropout:g}){kept}")
        if progress:
            progress.save(key, e, sharding.gather(states), np.stack(rows))
        distributed.stop_if_agreed()
        on_epoch()
    accuracies, predictions = sharding.gather(chunk.test(models[0], test_images, test_labels))
    train_seconds = time.perf_counter() - start

    metrics = np.stack(rows).transpose(1, 0, 2)  # (models, epochs, 5)
    history = [
        [{"epoch": e + 1, **{n: float(v) for n, v in zip(HISTORY_NAMES, metrics[m, e])}} for e in range(config.epochs)]
        for m in range(len(points))
    ]
    final_params = sharding.gather(nnx.to_pure_dict(models[0].params))
    return GridResult(config, list(points), history, np.asarray(accuracies), np.asarray(predictions), final_params, 0.0, train_seconds)


def _concatenate(config: TrainConfig, results: list[GridResult], order: list[int], models_at_once: int, compile_seconds: float) -> GridResult:
    """The results of several chunks as one, its points in `order` (their indices in the
    chunks' concatenation)."""
    pick = lambda *parts: np.concatenate(parts)[order]  # noqa: E731
    every = [(p, h) for r in results for p, h in zip(r.points, r.history)]
    return GridResult(
        config,
        [every[i][0] for i in order],
        [every[i][1] for i in order],
        pick(*(r.test_accuracies for r in results)),
        pick(*(r.test_predictions for r in results)),
        jax.tree.map(pick, *(r.final_params for r in results)),
        compile_seconds,
        sum(r.train_seconds for r in results),
        models_at_once,
    )


def train_grid(
    config: TrainConfig,
    data: MNIST,
    points: list[Point],
    mesh: jax.sharding.Mesh | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
    models_at_once: int | None = None,
    vmapped: bool | None = None,
    progress: GridProgress | None = None,
) -> GridResult:
    """Train one model of `config`'s stage per point, as many at once as fit in memory
    (and at most `models_at_once`), the rest in further chunks of that size, with the
    same results. Points whose dropout rates need different random bits per unit
    (`models.dropout_bits`) train in programs of their own, so that every model draws
    what it would draw alone. Several devices split a chunk's models (see `sharding`);
    `mesh` picks them (default: as many as divide the chunk). `on_epoch(done, total)`
    counts the epochs of all chunks. `vmapped`: see `compile_chunk`. With `progress`, each
    chunk is saved after every epoch and continues from what was saved."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(points):
        groups.setdefault(dropout_bits(p.dropout), []).append(i)
    plans = []
    start = time.perf_counter()
    for members in groups.values():
        group = dataclasses.replace(config, dropout=max(points[i].dropout for i in members))
        chunk = fitting_chunk(group, data, min(len(members), models_at_once or len(members)), mesh, vmapped)
        parts = [members[i : i + chunk.size] for i in range(0, len(members), chunk.size)]
        plans.append((group, {chunk.size: chunk}, parts))
    compile_seconds = time.perf_counter() - start
    done, total = 0, sum(len(parts) for *_, parts in plans) * config.epochs

    def count() -> None:
        nonlocal done
        done += 1
        if on_epoch:
            on_epoch(done, total)

    results, trained = [], []
    for bits, (group, compiled, parts) in zip(groups, plans):
        for part in parts:
            if len(part) not in compiled:
                start = time.perf_counter()
                compiled[len(part)] = compile_chunk(group, data, len(part), mesh, vmapped)
                compile_seconds += time.perf_counter() - start
            key = f"{config.stage}-hidden{config.hidden or config.spec.hidden or 0}-bits{bits}-from{part[0]}-{len(part)}"
            results.append(_train_chunk(group, data, [points[i] for i in part], compiled[len(part)], count, progress, key))
            trained += part
    order = np.argsort(trained).tolist()
    return _concatenate(config, results, order, max(chunk.size for _, compiled, _ in plans for chunk in compiled.values()), compile_seconds)


def train_seeds(config: TrainConfig, data: MNIST, seeds: list[int], **kwargs) -> GridResult:
    """`config` once per seed: the grid of one learning rate and one dropout rate."""
    if not isinstance(seeds, (list, tuple)) or not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"train_seeds seeds: expected a list of distinct seeds, got {seeds!r}")
    for seed in seeds:  # each as TrainConfig checks it
        dataclasses.replace(config, seed=seed)
    return train_grid(config, data, [point(config)._replace(seed=s) for s in seeds], **kwargs)


def mean_ci95(values) -> tuple[float, float | None, tuple[float, float] | None]:
    """Mean, sample standard deviation and 95% t-interval of the mean; the last two None
    under two values (one value has no spread). ValueError on none, or on a non-finite one."""
    values = np.asarray(values, np.float64)
    if not values.size or not np.isfinite(values).all():
        raise ValueError(f"expected finite values, got {values.tolist()}")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    std = float(values.std(ddof=1))
    half = float(scipy.stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))
    return mean, std, (mean - half, mean + half)


def paired_difference(differences) -> dict:
    """Differences paired by seed: their mean, 95% interval (None under two pairs) and
    whether the interval excludes zero (never without one)."""
    mean, _, ci = mean_ci95(differences)
    return {"difference": mean, "ci95": list(ci) if ci else None, "significant": bool(ci[0] > 0 or ci[1] < 0) if ci else None}


def stage_summary(result: GridResult) -> dict:
    mean, std, ci = mean_ci95(result.test_accuracies)
    return {
        "seeds": result.seeds,
        "test_accuracies": result.test_accuracies.tolist(),
        "history": result.history,
        "mean": mean,
        "std": std,
        "ci95": list(ci) if ci else None,
        "documented_accuracy": result.config.spec.documented_accuracy,
        "compile_seconds": result.compile_seconds,
        "train_seconds": result.train_seconds,
        "seeds_at_once": result.models_at_once,
    }


def step_differences(stages: dict[str, dict], pairs: list[tuple[str, str]] | None = None) -> list[dict]:
    """Accuracy of `to` minus `from` for each pair (default: consecutive stages), paired
    by seed (a seed gives both stages the same split and batch order): both stages must
    have run the same seeds."""
    names = list(stages)
    steps = []
    for before, after in zip(names, names[1:]) if pairs is None else pairs:
        if stages[before]["seeds"] != stages[after]["seeds"]:
            raise ValueError(f"{before} and {after} ran different seeds ({stages[before]['seeds']}, {stages[after]['seeds']}): "
                             "a difference pairs the same seeds")
        diff = np.subtract(stages[after]["test_accuracies"], stages[before]["test_accuracies"])
        steps.append({"from": before, "to": after, **paired_difference(diff)})
    return steps


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    matrix = np.zeros((10, 10), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


MISCLASSIFIED = 24  # test digits kept that the best linear stage gets wrong and an MLP right


def save_study(results: dict[str, GridResult], data: MNIST, out: Path, command: str, seconds: float, write: bool = True) -> dict:
    """Write `results.json` and `study_arrays.npz` (what the figures need) to `out`, unless
    not `write` (a process of several, not the first)."""
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
        picked = np.flatnonzero(wrong & right)[:MISCLASSIFIED]
        arrays |= {
            "misclassified_stages": np.array([best_linear, mlp]),
            "misclassified_images": data.test_images[picked],
            "misclassified_labels": data.test_labels[picked],
            "misclassified_linear_predictions": results[best_linear].test_predictions[0][picked],
        }
    if not write:
        return report
    write_json(out / "results.json", report)
    with atomic_write(out / "study_arrays.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return report


class StudyFileError(ValueError):
    """`results.json` or `study_arrays.npz` is not what `save_study` writes."""


HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
MAX_RESULTS_BYTES = 2**28  # results.json of ten seeds and five epochs is 78 KB


def _check_interval(where: str, mean: float, ci95: list | None, n: int) -> None:
    """A 95% interval of `n` values holds its mean; under two values there is none."""
    if n < 2:
        if ci95 is not None:
            raise ValueError(f"{where}: a 95% interval {ci95} of one seed")
        return
    lo, hi = ci95
    check_finite(where, ci95_low=lo, ci95_high=hi)
    if not lo <= mean <= hi:
        raise ValueError(f"{where}: mean {mean} outside its 95% interval [{lo}, {hi}]")


def _check_report(report: dict) -> None:
    """Raise unless `report` is what `save_study` writes: every figure a finite number,
    each mean within its interval, every stage of the same seeds and epochs, and the
    steps between the stages it holds."""
    if not isinstance(report["device"], str) or not report["stages"]:
        raise ValueError("no device or no stages")
    stages = report["stages"]
    first = next(iter(stages.values()))
    for name, stage in stages.items():
        STAGES[name]  # noqa: B018  (a known stage)
        seeds, histories = stage["seeds"], stage["history"]
        if seeds != first["seeds"] or not all(type(s) is int for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"{name}: seeds {seeds}, where each stage has the same distinct seeds {first['seeds']}")
        if not len(seeds) == len(stage["test_accuracies"]) == len(histories) > 0:
            raise ValueError(f"{name}: seeds, test_accuracies and history differ in length")
        if not histories[0] or any(len(history) != len(first["history"][0]) for history in histories):
            raise ValueError(f"{name}: seeds with different numbers of epochs")
        check_finite(name, mean=stage["mean"], documented_accuracy=stage["documented_accuracy"],
                      **{f"test_accuracies[{i}]": x for i, x in enumerate(stage["test_accuracies"])})
        check_fractions(name, *stage["test_accuracies"], stage["mean"], stage["documented_accuracy"])
        for seed, history in zip(seeds, histories):
            for epoch, row in enumerate(history, 1):
                where = f"{name}, seed {seed}, epoch {epoch}"
                check_finite(where, **{key: row[key] for key in HISTORY_KEYS})
                check_fractions(where, row["train_accuracy"], row["val_accuracy"])
                if row["epoch"] != epoch:
                    raise ValueError(f"{where}: numbered {row['epoch']}")
        if len(seeds) > 1:
            check_finite(name, std=stage["std"])
        _check_interval(name, stage["mean"], stage["ci95"], len(seeds))
    names = list(stages)
    pairs = {"steps": list(zip(names, names[1:])), "versus_mlp": [("mlp", s) for s in ("mlp_dropout", "mlp_bn") if {"mlp", s} <= stages.keys()]}
    for key, expected in pairs.items():
        if [(step["from"], step["to"]) for step in report[key]] != expected:
            raise ValueError(f"{key} compares {[(step['from'], step['to']) for step in report[key]]}, not {expected}")
        for step in report[key]:
            where = f"{key} {step['to']} - {step['from']}"
            check_finite(where, difference=step["difference"])
            _check_interval(where, step["difference"], step["ci95"], len(first["seeds"]))


def _read_arrays(path: Path, stages: list[str]) -> dict:
    """What the figures of `stages` read from `study_arrays.npz`, each array read only
    once its header declares its shape (None: a length up to MISCLASSIFIED) and numbers."""
    shapes = {f"{name}_confusion": (10, 10) for name in stages}
    shapes |= {f"{name}_weights": (NUM_CLASSES, 784) for name in stages if not STAGES[name].is_mlp}
    with zipfile.ZipFile(path) as archive:
        if "misclassified_stages.npy" in archive.namelist():
            shapes |= {"misclassified_stages": (2,), "misclassified_images": (None, 28, 28),
                       "misclassified_labels": (None,), "misclassified_linear_predictions": (None,)}

        def read(name: str, shape: tuple) -> np.ndarray:
            def check(found: tuple, dtype: np.dtype) -> None:
                fits = len(found) == len(shape) and all(f == s or s is None and f <= MISCLASSIFIED for f, s in zip(found, shape))
                if not fits or dtype.kind not in "iufU" or dtype.itemsize > 64:
                    raise ValueError(f"{name} is {dtype}{list(found)}, expected {list(shape)} (None: up to {MISCLASSIFIED})")

            return npz_member(archive, name, check)

        arrays = {name: read(name, shape) for name, shape in shapes.items()}
    if not all(np.isfinite(arrays[f"{name}_weights"]).all() for name in stages if not STAGES[name].is_mlp):
        raise ValueError("weights that are not finite numbers")
    totals = set()
    for name in stages:  # counts of the test images, by true and predicted class
        confusion = arrays[f"{name}_confusion"]
        if confusion.dtype.kind not in "iu" or confusion.min() < 0:
            raise ValueError(f"{name}_confusion is not counts of test images")
        totals.add(int(confusion.sum()))
    if len(totals) != 1:
        raise ValueError(f"confusion matrices of different numbers of test images: {sorted(totals)}")
    for key in ("misclassified_labels", "misclassified_linear_predictions"):
        if key in arrays and (arrays[key].dtype.kind not in "iu" or len(arrays[key]) and not 0 <= arrays[key].min() <= arrays[key].max() < NUM_CLASSES):
            raise ValueError(f"{key} holds classes outside 0-{NUM_CLASSES - 1}")
    if "misclassified_stages" in arrays:
        if len({len(arrays[k]) for k in shapes if k.startswith("misclassified_") and k != "misclassified_stages"}) != 1:
            raise ValueError("misclassified_images, _labels and _linear_predictions differ in length")
        if not set(map(str, arrays["misclassified_stages"])) <= set(stages):
            raise ValueError("misclassified_stages names stages not in results.json")
    return arrays


def load_study(results: Path) -> tuple[dict, dict]:
    """`results.json` and the `study_arrays.npz` beside it, as `save_study` wrote them;
    `StudyFileError` names the file and what is wrong with it."""
    path = results
    try:
        report = read_json(results, MAX_RESULTS_BYTES)
        _check_report(report)
        path = results.with_name("study_arrays.npz")
        arrays = _read_arrays(path, list(report["stages"]))
    except UNREADABLE as e:
        raise StudyFileError(f"{path} is damaged or not written by scripts/study.py ({type(e).__name__}: {e})") from None
    return report, arrays
