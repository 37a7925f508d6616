"""Training: one pure step, scanned over a device-resident epoch, driven by `train`.

State is a pytree (`TrainState`); `nnx.split` turns the Flax model into a graph
definition plus arrays so that everything inside `jax.jit` is plain JAX.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mnist_jax.data import MNIST, NUM_VALIDATION
from mnist_jax.evaluate import make_evaluate, to_inputs
from mnist_jax.stages import STAGES, LossFn, Stage


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    stage: str
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 42
    hidden: int | None = None  # None: the stage's own (256 for the MLPs)
    dropout: float | None = None  # None: the stage's own

    @property
    def spec(self) -> Stage:
        return STAGES[self.stage]


class TrainState(NamedTuple):
    """Plain arrays only (`nnx.as_pure`): `nnx.merge` rebuilds fresh Variables each step."""

    params: nnx.State
    batch_stats: nnx.State  # BatchNorm running statistics; empty for other models
    opt_state: optax.OptState


class RunKeys(NamedTuple):
    split: jax.Array  # train/validation split
    init: jax.Array  # model initialisation
    epochs: jax.Array  # folded with the epoch number: shuffling and dropout


def run_keys(seed: int | jax.Array) -> RunKeys:
    return RunKeys(*jax.random.split(jax.random.key(seed), 3))


def split_indices(key: jax.Array, num_train: int) -> tuple[jax.Array, jax.Array]:
    """A seeded permutation of the training images: (train indices, validation indices)."""
    perm = jax.random.permutation(key, num_train)
    return perm[: num_train - NUM_VALIDATION], perm[num_train - NUM_VALIDATION :]


def make_optimizer(lr: float) -> optax.GradientTransformation:
    """`torch.optim.Adam(lr=lr)`: betas (0.9, 0.999), eps 1e-8 added outside the sqrt."""
    return optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)


def init_state(
    config: TrainConfig, key: jax.Array, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, TrainState]:
    model = config.spec.build(nnx.Rngs(key), config.hidden, config.dropout)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, batch_stats = nnx.as_pure(params), nnx.as_pure(batch_stats)
    return graphdef, TrainState(params, batch_stats, tx.init(params))


def make_train_step(
    graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, tuple]]:
    """A pure function (state, images, labels, dropout key) -> (state, (loss, n correct))."""

    def train_step(state: TrainState, images, labels, dropout_key):
        def objective(params):
            model = nnx.merge(graphdef, params, state.batch_stats)
            logits = model(to_inputs(images), train=True, dropout_key=dropout_key)
            return loss_fn(logits, labels), (logits, nnx.as_pure(nnx.state(model, nnx.BatchStat)))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = jnp.sum(logits.argmax(-1) == labels)
        return TrainState(params, batch_stats, opt_state), (loss, correct)

    return train_step


def make_train_epoch(
    graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation, batch_size: int
) -> Callable:
    """A pure function (state, images, labels, train indices, epoch key) -> (state, (loss, acc)).

    The epoch's order is drawn on device, the shuffled copy is cut into full
    batches that `lax.scan` walks through, and the remainder is one short batch,
    so every example is seen once, as with a PyTorch DataLoader.
    """
    train_step = make_train_step(graphdef, loss_fn, tx)

    def train_epoch(state: TrainState, images, labels, train_idx, key):
        shuffle_key, dropout_key = jax.random.split(key)
        order = train_idx[jax.random.permutation(shuffle_key, train_idx.shape[0])]
        x, y = images[order], labels[order]
        n = x.shape[0]
        n_full, rest = divmod(n, batch_size)
        cut = n_full * batch_size

        def body(state, batch):
            i, xb, yb = batch
            return train_step(state, xb, yb, jax.random.fold_in(dropout_key, i))

        batches = (
            jnp.arange(n_full),
            x[:cut].reshape(n_full, batch_size, *x.shape[1:]),
            y[:cut].reshape(n_full, batch_size),
        )
        state, (losses, correct) = jax.lax.scan(body, state, batches)
        loss_sum, correct_sum = losses.sum() * batch_size, correct.sum()
        if rest:
            state, (loss, c) = train_step(state, x[cut:], y[cut:], jax.random.fold_in(dropout_key, n_full))
            loss_sum, correct_sum = loss_sum + loss * rest, correct_sum + c
        return state, (loss_sum / n, correct_sum / n)

    return train_epoch


@dataclasses.dataclass
class RunResult:
    config: TrainConfig
    device: str
    graphdef: nnx.GraphDef
    final: TrainState
    best: TrainState  # highest validation accuracy
    best_epoch: int
    history: list[dict]
    test_loss: float
    test_accuracy: float
    compile_seconds: float


def device_description() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{d.device_kind} x{jax.device_count()}"


def train(
    config: TrainConfig, data: MNIST, on_epoch: Callable[[dict], None] | None = None
) -> RunResult:
    """Train one stage from one seed; `on_epoch` sees each epoch's metrics as they come."""
    stage = config.spec
    tx = make_optimizer(config.lr)
    keys = run_keys(config.seed)
    graphdef, state = init_state(config, keys.init, tx)

    images = jnp.asarray(data.train_images.reshape(len(data.train_images), -1))
    labels = jnp.asarray(data.train_labels, jnp.int32)
    train_idx, val_idx = split_indices(keys.split, len(images))
    val_images, val_labels = images[val_idx], labels[val_idx]
    test_images = jnp.asarray(data.test_images.reshape(len(data.test_images), -1))
    test_labels = jnp.asarray(data.test_labels, jnp.int32)

    start = time.perf_counter()
    epoch_fn = (
        jax.jit(make_train_epoch(graphdef, stage.loss, tx, config.batch_size))
        .lower(state, images, labels, train_idx, keys.epochs)
        .compile()
    )
    evaluate = jax.jit(make_evaluate(graphdef, stage.loss))
    jax.block_until_ready(evaluate(state.params, state.batch_stats, val_images, val_labels))
    compile_seconds = time.perf_counter() - start

    history, best, best_epoch = [], state, 0
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        state, (train_loss, train_acc) = epoch_fn(
            state, images, labels, train_idx, jax.random.fold_in(keys.epochs, epoch)
        )
        val_loss, val_acc = evaluate(state.params, state.batch_stats, val_images, val_labels)
        row = {
            "epoch": epoch,
            "train_loss": float(train_loss),
            "train_accuracy": float(train_acc),
            "val_loss": float(val_loss),
            "val_accuracy": float(val_acc),
        }
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if best_epoch == 0 or row["val_accuracy"] > history[best_epoch - 1]["val_accuracy"]:
            best, best_epoch = state, epoch

    test_loss, test_acc = evaluate(state.params, state.batch_stats, test_images, test_labels)
    return RunResult(
        config=config,
        device=device_description(),
        graphdef=graphdef,
        final=state,
        best=best,
        best_epoch=best_epoch,
        history=history,
        test_loss=float(test_loss),
        test_accuracy=float(test_acc),
        compile_seconds=compile_seconds,
    )


def summary(result: RunResult) -> dict:
    """The run as `metrics.json` records it (accuracies as fractions)."""
    c = result.config
    return {
        "stage": c.stage,
        "framework": "jax",
        "device": result.device,
        "seed": c.seed,
        "epochs": c.epochs,
        "batch_size": c.batch_size,
        "lr": c.lr,
        "hidden": c.hidden,
        "dropout": c.dropout,
        "test_accuracy": result.test_accuracy,
        "test_loss": result.test_loss,
        "documented_accuracy": c.spec.documented_accuracy,
        "best_epoch": result.best_epoch,
        "compile_seconds": result.compile_seconds,
        "history": result.history,
    }

