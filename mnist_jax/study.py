"""Many models in one compiled program: the training step mapped over a leading axis of models
(`lax.map` on the CPU, `jax.vmap` elsewhere). Each model draws its own split, initialisation,
batch order and dropout masks from its seed; the images stay one shared device array.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from mnist_jax import distributed, executables, memory, sharding
from mnist_jax.data import MNIST, checked
from mnist_jax.evaluate import make_evaluate, predict
from mnist_jax.models import dropout_bits
from mnist_jax.progress import GridProgress
from mnist_jax.stages import count
from mnist_jax.errors import NonFiniteLoss
from mnist_jax.train import (GRID_HISTORY_KEYS, Point, TrainConfig, built_from, device_data, epoch_keys, graph, init_state, initial,
                             make_optimizer, make_train_epoch, point, prepare, shuffle)


@dataclasses.dataclass
class GridResult:
    """Models of one stage trained together, one per `Point`; the config gives what they share."""

    config: TrainConfig
    points: list[Point]
    history: list[list[dict]]  # per point, per epoch
    test_accuracies: np.ndarray  # (points,), the final models'
    test_predictions: np.ndarray  # (points, 10000) predicted classes
    final_params: dict  # pure dict, leading axis of points
    compile_seconds: float
    train_seconds: float
    models_at_once: int = 0  # the chunk size: as many as fitted in memory, or as asked
    epoch_seconds: dict[int, float] = dataclasses.field(default_factory=dict)  # each epoch this process ran: its chunks' seconds

    @property
    def seeds(self) -> list[int]:
        return [p.seed for p in self.points]


def side_by_side() -> bool:
    """Whether a program's models train side by side (`jax.vmap`), or one after another (`lax.map`)
    on the CPU, where XLA's batched matmuls are slower than one model's (docs/performance.md)."""
    return jax.default_backend() != "cpu"


def over_models(f: Callable, vmapped: bool) -> Callable:
    """`f` of one model's arguments, over a leading axis of models."""
    return jax.vmap(f) if vmapped else lambda xs: jax.lax.map(f, xs)


def _grid_programs(config: TrainConfig, graphdef: nnx.GraphDef, tx, mesh: jax.sharding.Mesh,
                   vmapped: bool) -> tuple[Callable, Callable]:
    """The epoch of every model of a chunk (train; evaluate on validation and test) and the final test
    predictions: two programs, split over the mesh's devices (`shard_map`: no communication)."""
    train_epoch = make_train_epoch(graphdef, config.spec.loss, tx, config.batch_size)
    evaluate = make_evaluate(graphdef, config.spec.loss)
    per_model, shared = PartitionSpec("seed"), PartitionSpec()

    # The images are arguments: a closed-over array would be compiled into the program as a constant.
    def epoch(models, number, images, labels, test_images, test_labels):
        def one(model):
            state, train_idx, val_idx, epochs_key = model
            shuffle_key, dropout_key = epoch_keys(epochs_key, number)
            state, (loss, acc) = train_epoch(state, images, labels, shuffle(shuffle_key, train_idx), dropout_key)
            val_loss, val_acc = evaluate(state.params, state.batch_stats, images[val_idx], labels[val_idx])
            test_acc = evaluate(state.params, state.batch_stats, test_images, test_labels)[1]
            return state, jnp.stack([loss, acc, val_loss, val_acc, test_acc])

        return over_models(one, vmapped)(models)

    def test(states, images, labels):
        predicted = over_models(lambda s: predict(graphdef, s.params, s.batch_stats, images).argmax(-1), vmapped)(states)
        return (predicted == labels).mean(-1), predicted

    epoch = jax.shard_map(epoch, mesh=mesh, in_specs=(per_model, *[shared] * 5), out_specs=per_model)
    test = jax.shard_map(test, mesh=mesh, in_specs=(per_model, shared, shared), out_specs=per_model)
    return jax.jit(epoch), jax.jit(test)


class Chunk(NamedTuple):
    """The compiled programs for `size` models at once."""

    size: int
    mesh: jax.sharding.Mesh
    epoch: jax.stages.Compiled
    test: jax.stages.Compiled
    bytes: int  # the models' states, the data, and what the larger program allocates, per XLA


def compile_chunk(config: TrainConfig, data: MNIST, size: int, mesh: jax.sharding.Mesh | None = None,
                  vmapped: bool | None = None) -> Chunk:
    """The programs for `size` models, compiled from shapes alone (nothing is allocated), once per process and kept
    between processes as a run's are (`executables`). `vmapped`: the models side by side (default: `side_by_side()`)."""
    mesh = mesh if mesh is not None and size % mesh.size == 0 else sharding.make_mesh("seed", size)
    vmapped = side_by_side() if vmapped is None else vmapped
    tx = make_optimizer(config)
    points = jax.tree.map(lambda x: jax.ShapeDtypeStruct((size,), jnp.asarray(x).dtype), point(config))
    init = jax.vmap(lambda p: initial(config, tx, len(data.train_images), p))
    epochs_keys, states, train_idx, val_idx = jax.eval_shape(init, points)
    per_model = sharding.abstract((states, train_idx, val_idx, epochs_keys), mesh, "seed")
    shared = sharding.abstract(jax.eval_shape(lambda: device_data(data)), mesh)  # images, labels, test's
    built_for = f"of {built_from(config)}, {'vmapped' if vmapped else 'lax.map'}, on {mesh.devices.tolist()}"

    @functools.cache
    def programs() -> tuple[Callable, Callable]:  # (built only for a program not yet compiled or kept, once)
        return _grid_programs(config, graph(config), tx, mesh, vmapped)

    epoch = executables.compiled(f"grid epoch {built_for}", lambda: programs()[0], per_model, jax.ShapeDtypeStruct((), jnp.int32), *shared)
    test = executables.compiled(f"grid test {built_for}", lambda: programs()[1], per_model[0], *shared[2:])
    resident = memory.tree_bytes((per_model, shared))
    return Chunk(size, mesh, epoch, test, resident + max(memory.program_bytes(epoch), memory.program_bytes(test)))


def kept_results(config: TrainConfig, data: MNIST, n: int) -> tuple[int, int]:
    """(n, bytes) of what a grid of `n` models keeps on the host until it ends, on a CPU (where the host's memory is the
    device's; else none): each model's final parameters, test predictions and metrics, joined in order in one copy more."""
    if jax.default_backend() != "cpu":
        return 0, 0
    params = jax.eval_shape(lambda: init_state(config, jax.random.key(0), make_optimizer(config)).params)
    per_model = memory.tree_bytes(params) + 4 * (len(data.test_labels) + 1 + config.epochs * len(GRID_HISTORY_KEYS))
    return n, 2 * n * per_model


def fitting_chunk(config: TrainConfig, data: MNIST, n: int, mesh: jax.sharding.Mesh | None = None,
                  vmapped: bool | None = None, kept: tuple[int, int] = (0, 0)) -> Chunk:
    """The programs for as many of `n` models at once as fit in memory, in multiples of `sharding.chunk_granule()`
    (`n` is one), beside `kept` (models, bytes): the results the work keeps on the host until it ends. What they hold
    grows linearly with the models: XLA's figures for `n` models and for the fewest give the slope."""
    whole = compile_chunk(config, data, n, mesh, vmapped)
    available = memory.available_bytes() - kept[1]
    if whole.bytes <= available:
        return whole
    granule = sharding.chunk_granule()
    fewest = whole if n == granule else compile_chunk(config, data, granule, mesh, vmapped)
    beside = f" beside the results of all {kept[0]}," if kept[1] else ""
    memory.check(f"the programs training {config.describe()}, {count(granule, 'model')},{beside}", fewest.bytes + kept[1])
    per_model = (whole.bytes - fewest.bytes) / (n - granule)
    size = min(n - granule, granule + int((available - fewest.bytes) // per_model)) // granule * granule
    while size > granule:
        chunk = compile_chunk(config, data, size, mesh, vmapped)
        if chunk.bytes <= available:
            return chunk
        size = size * 9 // 10 // granule * granule
    return fewest


def _parts(count: int, size: int, saved: list[tuple[int, int, int]], granule: int = 1) -> list[tuple[int, int, tuple[int, int]]]:
    """`count` models in consecutive parts of at most `size`, each as (its first, its size, (first, size) of the chunk
    saved that holds its progress). From each model on, the chunk saved that holds it with the most epochs decides: one
    that starts there and fits stays as it was saved (more fit at once now, or as many); a larger one is read in parts
    of `size` (less memory, say, on resuming); with none, a part of `size` up to the next chunk saved. `saved`: (first,
    size, epochs saved) of each, those on a multiple of `granule` alone (what a chunk must be, `sharding.chunk_granule`)."""
    saved = [(start, n, epochs) for start, n, epochs in saved if start % granule == 0 and n % granule == 0]
    parts, first = [], 0
    while first < count:
        holding = [(epochs, n, start) for start, n, epochs in saved if start <= first < start + n <= count]
        if holding:
            _, n, start = max(holding)
            parts.append((first, n if start == first and n <= size else min(size, start + n - first), (start, n)))
        else:
            n = min([size, count - first] + [start - first for start, _, _ in saved if start > first])
            parts.append((first, n, (first, n)))
        first += parts[-1][1]
    return parts


def _train_chunk(config: TrainConfig, data: MNIST, points: list[Point], chunk: Chunk, on_epoch: Callable[[], None],
                 progress: GridProgress | None, key: str, source: tuple[str, int]) -> tuple[tuple, float, dict[int, float]]:
    """Train one chunk from and to its progress under `key` (read from `source`: a chunk's key and the offset of these
    models in it), stopping after a save if every process agreed
    to (a SIGTERM). Returns ((metrics (models, epochs, 5), test accuracies, test predictions, final
    params), training seconds, each epoch's seconds (its training, validation and test passes))."""
    begin = prepare(config, data, points)
    states, rows = begin.state, []  # rows: per epoch, (models, 5) on the host
    if progress and (saved := progress.load(source[0], jax.device_get(begin.state), source[1])):
        states, rows = saved[0], list(saved[1])
        for _ in rows:
            on_epoch()
    models = sharding.place((states, begin.train_idx, begin.val_idx, begin.epochs_key), chunk.mesh, "seed")
    images, labels, test_images, test_labels = sharding.place(device_data(data), chunk.mesh)

    start, epoch_seconds = time.perf_counter(), {}
    for e in range(len(rows) + 1, config.epochs + 1):
        epoch_start = time.perf_counter()
        states, metrics = chunk.epoch(models, jnp.int32(e), images, labels, test_images, test_labels)
        models = (states, *models[1:])
        rows.append(np.asarray(sharding.gather(metrics)))
        epoch_seconds[e] = time.perf_counter() - epoch_start
        losses = rows[-1][:, [0, 2]]  # train and validation loss
        if not np.isfinite(losses).all():
            point = points[int(np.flatnonzero(~np.isfinite(losses).all(1))[0])]
            kept = f"; {progress.folder} keeps epoch {e - 1}" if progress and e > 1 else ""
            raise NonFiniteLoss(e, f" ({config.stage}, seed {point.seed}, lr {point.lr:g}, dropout {point.dropout:g}){kept}")
        if progress:
            progress.save(key, sharding.gather(states), np.stack(rows))
        distributed.stop_if_agreed()
        on_epoch()
    accuracies, predictions = sharding.gather(chunk.test(models[0], test_images, test_labels))
    train_seconds = time.perf_counter() - start
    final_params = sharding.gather(models[0].params)
    return (np.stack(rows).transpose(1, 0, 2), np.asarray(accuracies), np.asarray(predictions), final_params), train_seconds, epoch_seconds


def train_grid(config: TrainConfig, data: MNIST, points: list[Point], mesh: jax.sharding.Mesh | None = None,
               on_epoch: Callable[[int, int], None] | None = None, models_at_once: int | None = None,
               vmapped: bool | None = None, progress: GridProgress | None = None) -> GridResult:
    """Train one model of `config`'s stage per point, as many at once as fit in memory (at most
    `models_at_once`), the rest in further chunks, with the same results. Points whose dropout rates
    need different random bits per unit (`models.dropout_bits`) train in programs of their own, so each
    draws what it would alone. `mesh`: the devices that split a chunk's models (default: as many as
    divide it). `on_epoch(done, total)` counts the epochs of all chunks. `vmapped`: see `compile_chunk`.
    With `progress`, each chunk is saved after every epoch and continues from what was saved."""
    checked(data, "train_grid", config.batch_size)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(points):
        groups.setdefault(dropout_bits(p.dropout), []).append(i)
    plans, start = [], time.perf_counter()  # (config, the points' indices, compiled chunk, its key, (key, offset) saved)
    kept = kept_results(config, data, len(points))
    for bits, members in groups.items():
        group = dataclasses.replace(config, dropout=max(points[i].dropout for i in members))
        chunk = fitting_chunk(group, data, min(len(members), models_at_once or len(members)), mesh, vmapped, kept)
        prefix = f"{config.stage}-hidden{config.hidden or config.spec.hidden or 0}-bits{bits}"
        position = {point: i for i, point in enumerate(members)}
        saved = [(position[first], n, epochs) for first, n, epochs in (progress.saved_under(prefix) if progress else [])
                 if first in position]
        chunks = {chunk.size: chunk}
        for first, size, (saved_first, saved_size) in _parts(len(members), chunk.size, saved, sharding.chunk_granule()):
            if size not in chunks:
                chunks[size] = compile_chunk(group, data, size, mesh, vmapped)
            key, saved_key = (f"{prefix}-from{members[i]}-{n}" for i, n in ((first, size), (saved_first, saved_size)))
            plans.append((group, members[first : first + size], chunks[size], key, (saved_key, first - saved_first)))
    compile_seconds = time.perf_counter() - start
    done, total = itertools.count(1), len(plans) * config.epochs

    def count() -> None:
        if on_epoch:
            on_epoch(next(done), total)

    results = []
    for group, part, chunk, key, saved in plans:
        results.append(_train_chunk(group, data, [points[i] for i in part], chunk, count, progress, key, saved))
    def in_order(*parts: np.ndarray) -> np.ndarray:  # the chunks' results, each at its points' places (one copy more)
        joined = np.empty((len(points), *parts[0].shape[1:]), parts[0].dtype)
        for (_, part, *_), rows in zip(plans, parts):
            joined[part] = rows
        return joined

    metrics, accuracies, predictions, final_params = jax.tree.map(in_order, *(result for result, *_ in results))
    epoch_seconds = collections.Counter()  # each epoch's seconds, summed over the chunks
    for *_, seconds in results:
        epoch_seconds.update(seconds)
    history = [[{"epoch": e + 1, **{n: float(v) for n, v in zip(GRID_HISTORY_KEYS[1:], row)}} for e, row in enumerate(model)]
               for model in metrics]
    return GridResult(config, list(points), history, accuracies, predictions, final_params, compile_seconds,
                      sum(seconds for _, seconds, _ in results), max(chunk.size for _, _, chunk, *_ in plans), dict(sorted(epoch_seconds.items())))


def train_seeds(config: TrainConfig, data: MNIST, seeds: list[int], **kwargs) -> GridResult:
    """`config` once per seed: the grid of one learning rate and one dropout rate."""
    if not isinstance(seeds, (list, tuple)) or not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"train_seeds seeds: expected a list of distinct seeds, got {seeds!r}")
    return train_grid(config, data, [point(dataclasses.replace(config, seed=s)) for s in seeds], **kwargs)  # TrainConfig checks s
