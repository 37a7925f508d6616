"""Training: one pure step, scanned over a device-resident epoch, driven by `train`.

State is a pytree of plain arrays in dicts (`TrainState`). A seed's `Start` is one pure function of
its `Point` (`initial`), which `prepare` runs for one model or vmaps over many. Flax is imported
where a program is built, not above: a start whose programs `executables` loads needs none (0.3 s).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnist_jax import executables, memory, sharding
from mnist_jax.data import MNIST, NUM_VALIDATION, checked
from mnist_jax.errors import NonFiniteLoss
from mnist_jax.evaluate import make_evaluate, to_inputs
from mnist_jax.stages import TrainConfig

if TYPE_CHECKING:
    from flax import nnx


class Point(NamedTuple):
    """What may differ between the models of one program (scalars, or arrays with a leading axis of models)."""

    seed: int | jax.Array
    lr: float | jax.Array
    dropout: float | jax.Array


def point(config: TrainConfig) -> Point:
    return Point(config.seed, config.lr, config.dropout_rate)


class TrainState(NamedTuple):
    """Plain arrays in nested dicts (`nnx.to_pure_dict`'s), no Flax objects: `nnx.merge` rebuilds the model each step."""

    params: dict
    batch_stats: dict  # BatchNorm running statistics; empty for other models
    opt_state: optax.OptState  # holds the learning rate (`optax.inject_hyperparams`)
    dropout_rate: jax.Array  # a scalar, read by the model's Dropout if it has one


def run_keys(seed: int | jax.Array) -> jax.Array:
    """A seed's three keys: its split, its initialisation, its epochs (shuffling and dropout)."""
    return jax.random.split(jax.random.key(seed), 3)


@jax.jit
def shuffle(key: jax.Array, x: jax.Array) -> jax.Array:
    """`x` in a random order, drawn as `jax.random.permutation` draws one (stable sorts by fresh
    random keys until 3 log2(n) random bits make ties unlikely), but sorting one uint32 array of
    random high bits over each element's position, not (key, value) pairs (docs/performance.md)."""
    n = x.shape[0]
    position_bits = max(1, (n - 1).bit_length())
    positions = jnp.arange(n, dtype=jnp.uint32)
    order = positions
    for round_key in jax.random.split(key, math.ceil(3 * math.log2(n) / (32 - position_bits))):
        random_high_bits = jax.random.bits(round_key, (n,), jnp.uint32) >> position_bits << position_bits
        order = order[jnp.sort(random_high_bits | positions) & (2**position_bits - 1)]
    return x[order]


def split_indices(key: jax.Array, num_train: int) -> tuple[jax.Array, jax.Array]:
    """A seeded permutation of the training images: (train indices, validation indices)."""
    perm = shuffle(key, jnp.arange(num_train))
    return perm[: num_train - NUM_VALIDATION], perm[num_train - NUM_VALIDATION :]


def make_optimizer(config: TrainConfig, mask_frozen: bool = True) -> optax.GradientTransformation:
    """`torch.optim.Adam(lr=config.lr)` over the parameters the model trains: a frozen hidden layer (random
    features) is masked out, as `requires_grad_(False)` leaves it out of PyTorch's Adam (its zero gradients
    pass through: it stays as drawn, and no moments are kept or updated for it). The learning rate lives in the
    optimizer state, so models trained together may each have their own (`init_state` sets it).
    `mask_frozen=False`: Adam over every parameter, as versions before the mask kept it (`checkpoint.load_run` reads theirs)."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"make_optimizer: expected a TrainConfig (its lr and stage), got {type(config).__name__}")

    def masked_adam(learning_rate: float, b1: float, b2: float, eps: float, eps_root: float = 0.0) -> optax.GradientTransformation:
        return optax.masked(optax.adam(learning_rate, b1, b2, eps, eps_root), trained)  # optax.adam's hyperparameters

    adam = masked_adam if config.spec.frozen_hidden and mask_frozen else optax.adam
    return optax.inject_hyperparams(adam)(learning_rate=config.lr, b1=0.9, b2=0.999, eps=1e-8)


def trained(params: dict) -> dict:
    """True for each parameter the optimizer updates: all but a frozen hidden layer's (`make_optimizer`)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[0], "key", None) != "hidden", params)


def init_state(config: TrainConfig, key: jax.Array, tx: optax.GradientTransformation,
               lr: float | jax.Array | None = None, dropout_rate: float | jax.Array | None = None) -> TrainState:
    """The initial state from `key`, with `lr` and `dropout_rate` (default: the config's)."""
    from flax import nnx

    model = config.spec.build(nnx.Rngs(key), config.hidden, config.dropout)
    params, batch_stats = (nnx.to_pure_dict(nnx.state(model, kind)) for kind in (nnx.Param, nnx.BatchStat))
    opt_state = tx.init(params)
    dtype = jnp.result_type(float)
    opt_state.hyperparams["learning_rate"] = jnp.asarray(config.lr if lr is None else lr, dtype)
    rate = jnp.asarray(config.dropout_rate if dropout_rate is None else dropout_rate, dtype)
    return TrainState(params, batch_stats, opt_state, rate)


def graph(config: TrainConfig) -> nnx.GraphDef:
    """The model's graph definition, from shapes alone."""
    from flax import nnx

    return nnx.graphdef(nnx.eval_shape(lambda: config.spec.build(nnx.Rngs(0), config.hidden, config.dropout)))


class Start(NamedTuple):
    """Where a seed's run starts (each field with a leading axis of models, for many)."""

    epochs_key: jax.Array
    state: TrainState
    train_idx: jax.Array
    val_idx: jax.Array


def initial(config: TrainConfig, tx: optax.GradientTransformation, num_images: int, at: Point) -> Start:
    """The `Start` of the model at `at`: pure, to jit or vmap as one program."""
    split_key, init_key, epochs_key = run_keys(at.seed)
    return Start(epochs_key, init_state(config, init_key, tx, at.lr, at.dropout), *split_indices(split_key, num_images))


def make_train_step(graphdef: nnx.GraphDef, loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
    """A pure function (state, images, labels, dropout key) -> (state, (loss, n correct))."""
    from flax import nnx

    from mnist_jax.models import MLP

    def train_step(state: TrainState, images, labels, dropout_key):
        def objective(params):
            model = nnx.merge(graphdef, params, state.batch_stats)
            train_mode = {"train": True, "dropout_key": dropout_key, "dropout_rate": state.dropout_rate}
            with jax.named_scope("inputs"):  # the scopes name the parts of a step in the benchmark's profile
                x = to_inputs(images)
            logits = model(x, **(train_mode if isinstance(model, MLP) else {}))
            return loss_fn(logits, labels), (logits, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        with jax.named_scope("optimizer"):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            state = TrainState(optax.apply_updates(state.params, updates), batch_stats, opt_state, state.dropout_rate)
        return state, (loss, jnp.sum(logits.argmax(-1) == labels))

    return train_step


@jax.jit
def epoch_keys(epochs_key: jax.Array, epoch: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """(shuffle key, dropout key) of an epoch: a function of the seed and the epoch alone."""
    return tuple(jax.random.split(jax.random.fold_in(epochs_key, epoch)))


def device_data(data: MNIST) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(train images, train labels, test images, test labels) on the device, images flattened uint8, labels
    int32; made on the host, as a device-side conversion is one more program to trace on every start."""
    train_images, test_images = (images.reshape(len(images), -1) for images in (data.train_images, data.test_images))
    return jax.device_put((train_images, data.train_labels.astype(np.int32), test_images, data.test_labels.astype(np.int32)))


@jax.jit
def examples_at(images: jax.Array, labels: jax.Array, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The examples at `idx`: one program compiled once per process, where eager indexing runs several."""
    return images[idx], labels[idx]


def built_from(config: TrainConfig) -> str:
    """What of `config` a run's programs close over (not its epochs or seed), to name them (`executables.compiled`)."""
    return repr({k: v for k, v in dataclasses.asdict(config).items() if k not in ("epochs", "seed")})


def prepare(config: TrainConfig, data: MNIST, points: Sequence[Point] | None = None) -> Start:
    """The `Start` of `config`'s run, or of every point's (a leading axis of models) with `points`.
    Raises `memory.DoesNotFit` before allocating what would not fit."""
    init = jax.tree_util.Partial(initial, config, make_optimizer(config), len(data.train_images))
    if points is None:
        at, jitted = point(config), jax.jit(init)
    else:
        dtype = jnp.result_type(float)
        seeds, lrs, rates = zip(*points)
        at, jitted = Point(jnp.asarray(seeds, jnp.int32), jnp.asarray(lrs, dtype), jnp.asarray(rates, dtype)), jax.jit(jax.vmap(init))
    program = executables.compiled(f"initial of {built_from(config)}, {len(data.train_images)} images, "
                                   f"{'one' if points is None else 'vmapped'}", lambda: jitted, at)
    runs = 1 if points is None else len(points)
    what = f"{config.describe()}, {runs} seed{'s' * (runs != 1)}: its parameters, optimizer state and data"
    memory.check(what, memory.tree_bytes(program.out_info) + sum(a.nbytes for a in data[:4]))
    return program(at)


class Replay(NamedTuple):
    """What another run (say a PyTorch one) drew, to train from exactly: its (train, validation) indices,
    initial (params, batch_stats) as pure dicts, epochs' orders. A field left None is drawn from the seed."""

    split: tuple[np.ndarray, np.ndarray] | None = None
    initial: tuple[dict, dict] | None = None
    orders: Sequence[np.ndarray] | None = None

    def apply(self, start: Start, tx: optax.GradientTransformation) -> Start:
        """`start` with what was replayed in place of what the seed drew."""
        state = start.state
        if self.initial is not None:
            if isinstance(self.initial, Mapping) or not isinstance(self.initial, Sequence) or len(self.initial) != 2:
                raise ValueError("Replay initial: expected (params, batch_stats), two nested dicts of arrays")
            params, batch_stats = (replayed(drawn, given, part) for drawn, given, part in
                                   zip((state.params, state.batch_stats), self.initial, ("params", "batch_stats")))
            state = state._replace(params=params, batch_stats=batch_stats, opt_state=tx.init(params))
        split = start[2:] if self.split is None else tuple(map(jnp.asarray, self.split))
        return Start(start.epochs_key, state, *split)


def replayed(drawn: dict, given: Mapping, part: str) -> dict:
    """`given` (nested mappings of arrays: dicts, `nnx.State`, a PyTorch run's converted) in place of `drawn`: floats at
    the same names, of the same shapes, as the drawn ones' dtype; else `ValueError`."""
    def as_dicts(tree):
        return {k: as_dicts(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree

    expected, got = ({jax.tree_util.keystr(path): x for path, x in jax.tree_util.tree_leaves_with_path(tree)}
                     for tree in (drawn, as_dicts(given)))
    if got.keys() != expected.keys():
        raise ValueError(f"Replay initial {part}: expected arrays at {', '.join(expected) or 'none'}, got {', '.join(got) or 'none'}")
    arrays = []
    for name in expected:  # (in the drawn tree's order)
        x = got[name]
        wanted = f"Replay initial {part}{name}: expected floats of shape {list(expected[name].shape)}, got"
        try:
            x = jnp.asarray(x)
        except (TypeError, ValueError):
            raise ValueError(f"{wanted} an object of type {type(x).__name__}") from None
        if x.shape != expected[name].shape or not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{wanted} {x.dtype}{list(x.shape)}")
        arrays.append(x.astype(expected[name].dtype))
    return jax.tree.unflatten(jax.tree.structure(drawn), arrays)


def make_train_epoch(graphdef: nnx.GraphDef, loss_fn: Callable, tx: optax.GradientTransformation, batch_size: int,
                     mesh: jax.sharding.Mesh | None = None) -> Callable:
    """A pure function (state, images, labels, order, dropout key) -> (state, (loss, acc)): `lax.scan`
    over the full batches of `order`, then the remainder as one short batch, as a PyTorch DataLoader
    does. With a `mesh` of several devices, each batch is split over its `batch` axis."""
    split_batch = mesh is not None and mesh.size > 1
    train_step = make_train_step(graphdef, loss_fn, tx)

    def train_epoch(state: TrainState, images, labels, order, dropout_key):
        def step(state, i, idx):
            with jax.named_scope("inputs"):
                x, y = images[idx], labels[idx]
            if split_batch:
                x, y = jax.lax.with_sharding_constraint((x, y), jax.NamedSharding(mesh, jax.P("batch")))
            return train_step(state, x, y, jax.random.fold_in(dropout_key, i))

        n = order.shape[0]
        n_full, rest = divmod(n, batch_size)
        batches = order[: n_full * batch_size].reshape(n_full, batch_size)
        state, (losses, correct) = jax.lax.scan(lambda s, batch: step(s, *batch), state, (jnp.arange(n_full), batches))
        loss_sum, correct_sum = losses.sum() * batch_size, correct.sum()
        if rest:
            state, (loss, c) = step(state, n_full, order[n_full * batch_size :])
            loss_sum, correct_sum = loss_sum + loss * rest, correct_sum + c
        return state, (loss_sum / n, correct_sum / n)

    return train_epoch


HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")  # an epoch's row; a run's adds "seconds"
GRID_HISTORY_KEYS = (*HISTORY_KEYS, "test_accuracy")  # an epoch's row of a model trained in a grid (`study.train_grid`)


@dataclasses.dataclass
class RunResult:
    """A run so far: enough to report it, save it and continue it."""

    config: TrainConfig
    device: str
    final: TrainState
    best: TrainState  # highest validation accuracy
    best_epoch: int
    history: list[dict]
    compile_seconds: float = 0.0
    test_loss: float | None = None  # set once training ends
    test_accuracy: float | None = None


def device_description() -> str:
    """What the run ran on, e.g. 'cpu (2 cores)' or '1 x NVIDIA H100 80GB HBM3'."""
    cpu, count = jax.devices()[0].platform == "cpu", jax.device_count()
    kind = f"cpu ({os.cpu_count()} cores)" if cpu else jax.devices()[0].device_kind
    devices = kind if cpu and count == 1 else f"{count} x {kind}"
    return devices if jax.process_count() == 1 else f"{devices}, {jax.process_count()} processes"


def train(config: TrainConfig, data: MNIST, on_epoch: Callable[[RunResult], None] | None = None, *,
          resume: RunResult | None = None, replay: Replay = Replay(), mesh: jax.sharding.Mesh | None = None) -> RunResult:
    """Train one stage from one seed up to `config.epochs`; `on_epoch` sees the run after each epoch.

    `resume` continues a run (`checkpoint.load_run`; not changed): each epoch's randomness depends on the seed and epoch alone,
    so it ends where an uninterrupted run does. `replay` trains from another run's draws. `mesh`: the
    devices that split each batch (default: as many as divide the batch sizes).
    Raises `NonFiniteLoss` if the loss stops being finite.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"train: expected a TrainConfig, got {type(config).__name__}")
    checked(data, "train", config.batch_size)
    tx = make_optimizer(config)
    begin = replay.apply(prepare(config, data), tx)
    mesh = mesh or sharding.make_mesh("batch", config.batch_size, len(begin.train_idx) % config.batch_size or config.batch_size)
    built_for = f"of {built_from(config)} on {mesh.devices.tolist()}"  # all that the programs close over
    images, labels, test_images, test_labels = device_data(data)
    val_at = (images, labels, begin.val_idx)
    val_images, val_labels = executables.compiled("examples_at", lambda: examples_at, *val_at)(*val_at)
    run = dataclasses.replace(resume, history=list(resume.history)) if resume else RunResult(
        config, device_description(), begin.state, begin.state, 0, [])
    if mesh.size > 1:  # every device holds the data and the model; the batches are split
        run.final, images, labels, val_images, val_labels, test_images, test_labels = sharding.place(
            (run.final, images, labels, val_images, val_labels, test_images, test_labels), mesh)

    start = time.perf_counter()
    draw_keys = executables.compiled("epoch_keys", lambda: epoch_keys, begin.epochs_key, 1)
    draw_order = executables.compiled("shuffle", lambda: shuffle, draw_keys(begin.epochs_key, 1)[0], begin.train_idx)
    train_epoch = executables.compiled(f"train_epoch {built_for}", lambda: jax.jit(make_train_epoch(
        graph(config), config.spec.loss, tx, config.batch_size, mesh)), run.final, images, labels, begin.train_idx, begin.epochs_key)
    evaluate_val, evaluate_test = (executables.compiled(f"evaluate {built_for}", lambda: jax.jit(make_evaluate(
        graph(config), config.spec.loss)), run.final.params, run.final.batch_stats, x, y)
        for x, y in ((val_images, val_labels), (test_images, test_labels)))
    run.compile_seconds = time.perf_counter() - start
    resident = memory.tree_bytes((run.final, images, labels, val_images, val_labels, test_images, test_labels))
    needed = resident + max(memory.program_bytes(p) for p in (train_epoch, evaluate_val, evaluate_test))
    memory.check(f"the programs training {config.describe()}", needed, held=resident)  # (the state and data are allocated)

    for epoch in range(len(run.history) + 1, config.epochs + 1):
        start = time.perf_counter()
        shuffle_key, dropout_key = draw_keys(begin.epochs_key, epoch)
        order = draw_order(shuffle_key, begin.train_idx) if replay.orders is None else jnp.asarray(replay.orders[epoch - 1])
        state, (train_loss, train_acc) = train_epoch(run.final, images, labels, order, dropout_key)
        val_loss, val_acc = evaluate_val(state.params, state.batch_stats, val_images, val_labels)
        row = {"epoch": epoch, **{k: float(v) for k, v in zip(HISTORY_KEYS[1:], (train_loss, train_acc, val_loss, val_acc))}}
        row["seconds"] = time.perf_counter() - start
        if not (math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])):
            raise NonFiniteLoss(epoch)
        run.final = state
        run.history.append(row)
        if run.best_epoch == 0 or row["val_accuracy"] > run.history[run.best_epoch - 1]["val_accuracy"]:
            run.best, run.best_epoch = state, epoch
        if on_epoch:
            on_epoch(run)

    test_loss, test_acc = evaluate_test(run.final.params, run.final.batch_stats, test_images, test_labels)
    run.test_loss, run.test_accuracy = float(test_loss), float(test_acc)
    return run


def run_record(result: RunResult) -> dict:
    """The run as `metrics.json` records it (accuracies as fractions)."""
    c = result.config
    return {"stage": c.stage, "framework": "jax", "device": result.device,
            **{key: getattr(c, key) for key in ("seed", "epochs", "batch_size", "lr", "hidden", "dropout")},
            "test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
            "documented_accuracy": c.spec.documented_accuracy, "best_epoch": result.best_epoch,
            "compile_seconds": result.compile_seconds, "history": result.history}
