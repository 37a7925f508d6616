"""The training step is a pure function; an epoch is one scan over every training example."""

import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_jax.data import load_mnist
from mnist_jax.evaluate import make_evaluate
from mnist_jax.study import train_seeds
from mnist_jax.sweep import run_grid
from mnist_jax.stages import MAX_SEED
from mnist_jax.train import (
    Point,
    Replay,
    TrainConfig,
    graph,
    init_state,
    make_optimizer,
    make_train_epoch,
    make_train_step,
    prepare,
    run_keys,
    shuffle,
    split_indices,
    train,
)


@pytest.fixture(scope="module")
def device_data(tiny):
    images = jnp.asarray(tiny.train_images.reshape(len(tiny.train_images), -1))
    return images, jnp.asarray(tiny.train_labels, jnp.int32)


def make_setup(stage="mlp_bn", seed=0):
    config = TrainConfig(stage, seed=seed)
    tx = make_optimizer(config)
    graphdef, state = graph(config), init_state(config, run_keys(seed)[1], tx)
    return config, tx, graphdef, state


def test_split_is_54000_train_6000_validation_disjoint_and_seeded():
    split = jax.jit(split_indices, static_argnums=1)
    train_idx, val_idx = split(jax.random.key(0), 60_000)
    assert train_idx.shape == (54_000,) and val_idx.shape == (6_000,)
    assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(60_000))
    again, _ = split(jax.random.key(0), 60_000)
    other, _ = split(jax.random.key(1), 60_000)
    assert np.array_equal(train_idx, again) and not np.array_equal(train_idx, other)


def chi_squared(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_shuffle_draws_each_of_the_24_orders_of_4_items_equally_often():
    orders = np.asarray(jax.jit(jax.vmap(lambda key: shuffle(key, jnp.arange(4))))(jax.random.split(jax.random.key(0), 24_000)))
    _, counts = np.unique(orders @ [64, 16, 4, 1], return_counts=True)
    assert len(counts) == 24 and chi_squared(counts) < 49.7  # chi-squared, 23 degrees of freedom, p = 0.001


def test_shuffle_of_3000_items_in_two_rounds_puts_the_first_item_anywhere():
    # 3,000 positions take 12 bits of each uint32 key: two rounds of 20 random bits
    orders = np.asarray(jax.jit(jax.vmap(lambda key: shuffle(key, jnp.arange(3_000))))(jax.random.split(jax.random.key(1), 1_000)))
    assert np.array_equal(np.sort(orders, axis=1), np.broadcast_to(np.arange(3_000), orders.shape))
    first_item_positions = np.argmax(orders == 0, axis=1)
    counts = np.bincount(first_item_positions // 300, minlength=10)  # 100 expected in each tenth
    assert chi_squared(counts) < 27.9  # 9 degrees of freedom, p = 0.001


def test_one_train_step_lowers_the_loss_and_is_pure(device_data):
    config, tx, graphdef, state = make_setup()
    images, labels = device_data[0][:128], device_data[1][:128]
    step = jax.jit(make_train_step(graphdef, config.spec.loss, tx))
    key = jax.random.key(0)
    new_state, (loss, _) = step(state, images, labels, key)
    again, (loss_again, _) = step(state, images, labels, key)  # same input, same output
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, new_state, again)))
    assert float(loss) == float(loss_again)
    _, (next_loss, _) = step(new_state, images, labels, key)
    assert float(next_loss) < float(loss)


@pytest.fixture(scope="module")
def frozen_epoch(device_data):
    """One epoch of `mlp` under Adam with learning rate 0 (the model stays as it starts),
    in batches of 384: 1,000 training images = 2 x 384 + 232."""
    config, _, graphdef, state = make_setup("mlp")
    tx = optax.adam(0.0)
    state = state._replace(opt_state=tx.init(state.params))
    images, labels = device_data
    train_idx, _ = split_indices(jax.random.key(0), len(labels))
    epoch = jax.jit(make_train_epoch(graphdef, config.spec.loss, tx, batch_size=384))
    end, (loss, accuracy) = epoch(state, images, labels, train_idx, jax.random.key(1))
    return SimpleNamespace(config=config, graphdef=graphdef, start=state, end=end, loss=loss, accuracy=accuracy,
                           images=images[train_idx], labels=labels[train_idx])


def test_an_epoch_takes_one_adam_step_per_batch_with_a_short_last_batch(frozen_epoch):
    adam = frozen_epoch.end.opt_state[0]
    assert isinstance(adam, optax.ScaleByAdamState)
    assert int(adam.count) == 3


def test_epoch_counts_each_training_example_exactly_once(frozen_epoch):
    """The model is fixed, so the epoch's accuracy must equal the accuracy over the
    training indices: every example counted once, no other."""
    e = frozen_epoch
    full_loss, full_acc = make_evaluate(e.graphdef, e.config.spec.loss)(e.start.params, e.start.batch_stats, e.images, e.labels)
    assert float(e.accuracy) == pytest.approx(float(full_acc), abs=1e-7)
    assert float(e.loss) == pytest.approx(float(full_loss), rel=1e-5)


@pytest.mark.parametrize(
    "field, value, accepted",
    [("stage", "nope", "one of linear_mse, linear_ce, mlp, mlp_dropout, mlp_bn, deep_linear, random_features, random_features_1024, "
     "random_features_4096"), ("epochs", 0, "a positive int"),
     ("epochs", True, "a positive int"), ("batch_size", 0, "a positive int"), ("batch_size", 12.0, "a positive int"),
     ("lr", float("nan"), "a positive number a float32 holds"), ("lr", -1e-3, "a positive number a float32 holds"),
     ("lr", 1e308, "a positive number a float32 holds"), ("lr", 1e-50, "a positive number a float32 holds"),  # (float32: inf, 0)
     ("seed", 2**31, "an int from 0 to 2147483647"), ("seed", -1, "an int from 0 to 2147483647"),
     ("hidden", 0, "a positive int for an MLP stage, else None"), ("dropout", 1.0, r"a rate in \[0, 1\) for an MLP stage, else None \(as a float32: under 1\)"),
     ("dropout", 0.99999999, r"a rate in \[0, 1\) for an MLP stage, else None \(as a float32: under 1\)")],
)
def test_a_config_no_run_can_have_is_refused_naming_the_field_and_what_it_accepts(field, value, accepted):
    with pytest.raises(ValueError, match=f"TrainConfig {field}: expected {accepted}, got {re.escape(repr(value))}"):
        TrainConfig(**{"stage": "mlp", field: value})


def test_the_largest_seed_starts_a_run_and_a_grid(tiny):
    """(Seeds from 2**31 up, accepted then, ended in a traceback: a seed goes into the programs as an int32.)"""
    config = TrainConfig("linear_ce", seed=MAX_SEED)
    alone, grid = prepare(config, tiny), prepare(config, tiny, [Point(MAX_SEED - 1, 1e-3, 0.0), Point(MAX_SEED, 1e-3, 0.0)])
    np.testing.assert_array_equal(grid.train_idx[1], alone.train_idx)


def test_a_config_accepts_numpy_integers_and_the_stages_own_defaults():
    config = TrainConfig("mlp_dropout", epochs=np.int64(3), seed=np.uint32(2**31 - 1), hidden=None, dropout=0.0)
    assert (config.epochs, config.dropout_rate, config.describe()) == (3, 0.0, "mlp_dropout (hidden 256, batch 128)")


def test_the_api_refuses_what_the_scripts_refuse_and_takes_numpy_numbers(tiny):
    config = TrainConfig("linear_ce", epochs=np.int64(1), lr=np.float32(1e-3))
    assert type(config.epochs) is int and type(config.lr) is float
    for bad in (dict(hidden=16), dict(dropout=0.3)):
        with pytest.raises(ValueError, match="for an MLP stage, else None"):
            TrainConfig("linear_ce", **bad)
    with pytest.raises(ValueError, match="batch_size: expected at most the 1000 training images"):
        train(TrainConfig("linear_ce", batch_size=1001), tiny)
    few = tiny._replace(train_images=tiny.train_images[:5000], train_labels=tiny.train_labels[:5000])  # (a grid trained on 4,000)
    with pytest.raises(ValueError, match=r"expected at most the 0 training images \(5000 less 6000 for validation\), got 128"):
        train_seeds(TrainConfig("linear_ce"), few, [0])
    with pytest.raises(ValueError, match="train: expected an MNIST"):
        train(TrainConfig("linear_ce"), None)
    with pytest.raises(ValueError, match="unknown source"):
        load_mnist("nope")
    with pytest.raises(ValueError, match="distinct seeds"):
        train_seeds(TrainConfig("linear_ce"), tiny, [0, 0])
    with pytest.raises(ValueError, match="run_grid stages"):
        run_grid(["nope"], tiny)


@pytest.mark.parametrize("change, said", [
    (lambda d: d._replace(train_labels=d.train_labels[:-100]), "train_labels: expected a NumPy array of 7000 integer labels, one per image, got uint8 (6900,)"),
    (lambda d: d._replace(train_labels=d.train_labels.astype(np.int64) - 1), "train_labels: expected classes 0-9, got -1 to 8"),
    (lambda d: d._replace(test_labels=d.test_labels + 1), "test_labels: expected classes 0-9, got 1 to 10"),
    (lambda d: d._replace(test_images=d.test_images[:0], test_labels=d.test_labels[:0]), "test_images: expected a NumPy array of uint8 images, (N, 28, 28) with N > 0, got uint8 (0, 28, 28)"),
    (lambda d: d._replace(train_images=d.train_images.tolist()), "train_images: expected a NumPy array of uint8 images, (N, 28, 28) with N > 0, got list"),
    (lambda d: d._replace(train_images=d.train_images / 255), "train_images: expected a NumPy array of uint8 images, (N, 28, 28) with N > 0, got float64 (7000, 28, 28)"),
], ids=["fewer labels", "label -1", "label 10", "no test images", "a list", "floats"])
def test_data_training_cannot_read_as_mnist_is_refused_before_any_work_naming_the_field(tiny, change, said):
    """(The API trained on 100 labels fewer than images and on labels of -1 without a word, and called a label of 10 a
    non-finite loss: a hostile user's cases. load_mnist checks its files; this checks what a user builds.)"""
    bad = change(tiny)
    with pytest.raises(ValueError) as refused:
        train(TrainConfig("linear_ce", epochs=1), bad)
    assert str(refused.value) == f"train: {said}"
    with pytest.raises(ValueError) as refused:
        train_seeds(TrainConfig("linear_ce", epochs=1), bad, [0, 1])
    assert str(refused.value) == f"train_grid: {said}"


def test_a_replay_starts_from_values_given_as_dicts_or_flax_state_and_refuses_any_other_arrays_naming_them(tiny):
    from collections import OrderedDict

    from flax import nnx

    config, tx, _, _ = make_setup("mlp_bn")
    start = prepare(config, tiny)
    drawn = start.state
    other = init_state(config, run_keys(7)[1], tx)  # another seed's values, as a PyTorch run's would be
    given = (nnx.State(other.params), OrderedDict(other.batch_stats))
    replayed = Replay(initial=given).apply(start, tx).state
    assert jax.tree.structure(replayed.params) == jax.tree.structure(drawn.params)  # plain dicts again
    for ours, theirs in zip(jax.tree.leaves((replayed.params, replayed.batch_stats)), jax.tree.leaves((other.params, other.batch_stats))):
        np.testing.assert_array_equal(ours, theirs)
    assert jax.tree.structure(replayed.opt_state) == jax.tree.structure(drawn.opt_state)

    without_output = {k: v for k, v in other.params.items() if k != "output"}
    transposed = {**other.params, "hidden": {**other.params["hidden"], "kernel": other.params["hidden"]["kernel"].T}}
    integers = {**other.params, "output": {**other.params["output"], "bias": np.zeros(10, np.int32)}}
    refused = [
        ((other.params,), r"expected \(params, batch_stats\)"),
        ((other.params, other.batch_stats, other.batch_stats), r"expected \(params, batch_stats\)"),
        ((without_output, other.batch_stats), r"Replay initial params: expected arrays at \['batchnorm'\]\['bias'\], .*\['output'\]\['kernel'\], got .*\['hidden'\]\['kernel'\]$"),
        ((transposed, other.batch_stats), r"Replay initial params\['hidden'\]\['kernel'\]: expected floats of shape \[256, 784\], got float32\[784, 256\]"),
        ((integers, other.batch_stats), r"\['output'\]\['bias'\]: expected floats of shape \[10\], got int32\[10\]"),
        ((other.params, None), r"Replay initial batch_stats: expected arrays at \['batchnorm'\]\['mean'\], \['batchnorm'\]\['var'\], got none$"),
        ((other.params, {"batchnorm": {"mean": "zeros", "var": None}}), r"\['var'\], got \['batchnorm'\]\['mean'\]$"),  # None: none there
        ((other.params, {"batchnorm": {"mean": "zeros", "var": object()}}), r"\['mean'\]: expected floats of shape \[256\], got an object of type str$"),
        ((x for x in (other.params, other.batch_stats)), r"expected \(params, batch_stats\)"),
    ]
    for initial, message in refused:
        with pytest.raises(ValueError, match=message):
            Replay(initial=initial).apply(start, tx)
    with pytest.raises(ValueError, match=r"expected \(params, batch_stats\)"):
        Replay(initial=dict(other.params)).apply(start, tx)  # two layers: a dict of length two is no pair
    halves = jax.tree.map(lambda x: np.asarray(x, np.float16), (other.params, other.batch_stats))
    state = Replay(initial=halves).apply(start, tx).state
    assert {x.dtype for x in jax.tree.leaves((state.params, state.batch_stats))} == {np.dtype(np.float32)}  # the drawn ones
