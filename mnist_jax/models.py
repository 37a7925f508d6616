"""The two model families of the study, as Flax NNX modules with PyTorch's defaults."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mnist_jax.data import NUM_CLASSES, NUM_PIXELS


def softmax_mse(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean squared error between softmax(logits) and one-hot labels, over batch x 10."""
    return jnp.mean((jax.nn.softmax(logits) - jax.nn.one_hot(labels, NUM_CLASSES)) ** 2)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def torch_linear(fan_in: int, fan_out: int, rngs: nnx.Rngs) -> nnx.Einsum:
    """`nn.Linear(fan_in, fan_out)`: PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) init, kernel stored (out, in)
    as PyTorch's weight (a `state_dict` maps over without transposes), float32 (float64 under `jax.enable_x64`).
    Its matmuls are full float32 on every backend, as PyTorch's: no TF32 on a GPU, no bfloat16 on a TPU."""
    bound = 1.0 / math.sqrt(fan_in)
    init = functools.partial(jax.random.uniform, minval=-bound, maxval=bound)
    return nnx.Einsum(
        "bi,oi->bo", (fan_out, fan_in), (fan_out,), param_dtype=jnp.result_type(float), precision=jax.lax.Precision.HIGHEST,
        kernel_init=init, bias_init=init, rngs=rngs,
    )


class BatchNorm1d(nnx.Module):
    """`torch.nn.BatchNorm1d`: normalise with the biased batch variance, but keep running statistics
    with momentum 0.1 and the unbiased variance, as PyTorch does (`nnx.BatchNorm` keeps the biased one)."""

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5):
        self.scale = nnx.Param(jnp.ones(features))
        self.bias = nnx.Param(jnp.zeros(features))
        self.mean = nnx.BatchStat(jnp.zeros(features))
        self.var = nnx.BatchStat(jnp.ones(features))
        self.momentum, self.eps = momentum, eps

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if train:
            n, m = x.shape[0], self.momentum
            mean, var = x.mean(0), x.var(0)
            self.mean[...] = (1 - m) * self.mean[...] + m * mean
            self.var[...] = (1 - m) * self.var[...] + m * var * n / (n - 1)
        else:
            mean, var = self.mean[...], self.var[...]
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


def dropout_bits(rate: float) -> int:
    """The fewest random bits per unit that make `rate` exact (1 for 0.5, 2 for 0.25;
    else 32): a unit is kept when its bits, read as an integer, reach rate * 2**bits."""
    return next((b for b in (1, 2, 4, 8, 16) if (rate * 2**b).is_integer()), 32)


class Dropout(nnx.Module):
    """`torch.nn.Dropout(rate)` in training: zero each unit with probability `rate`, scale the rest by
    1 / (1 - rate). Each unit is decided by `bits` random bits, packed 32 // bits to a uint32 word, where
    `nnx.Dropout` draws a float32 uniform per unit (docs/performance.md). The rate is an argument, an array
    that may differ per model of a grid (any rate that `bits` makes exact); `bits` shapes the program."""

    def __init__(self, bits: int):
        self.bits = bits

    def __call__(self, x: jax.Array, key: jax.Array, rate: jax.Array) -> jax.Array:
        batch, units = x.shape
        per_word = 32 // self.bits
        words = jax.random.bits(key, (batch, -(-units // per_word)), jnp.uint32)
        shifts = jnp.arange(0, 32, self.bits, dtype=jnp.uint32)
        draws = ((words[..., None] >> shifts) & jnp.uint32(2**self.bits - 1)).reshape(batch, -1)[:, :units]
        threshold = jnp.round(rate * float(2**self.bits)).astype(jnp.uint32)  # exact: a float times a power of two
        return jnp.where(draws >= threshold, x / (1 - rate), 0)


def check_pixels(x: jax.Array, model: str) -> None:
    """(N, 784) floats, else an error naming `model` (integers would pass as pixels of up to 255, not 1)."""
    chex.assert_shape(x, (None, NUM_PIXELS))
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{model}: expected (N, 784) floats in [0, 1], got {x.dtype}: raw images go through "
                        "evaluate.to_inputs first (checkpoint.load_classifier takes them as they are)")


class LinearClassifier(nnx.Module):
    """784 -> 10: one affine map from pixels to class scores."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.linear = torch_linear(NUM_PIXELS, NUM_CLASSES, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_pixels(x, type(self).__name__)
        return self.linear(x)


ACTIVATIONS = {"relu": jax.nn.relu, "identity": lambda h: h}


class MLP(nnx.Module):
    """784 -> hidden -> [BatchNorm] -> ReLU (or identity) -> [Dropout] -> 10. With `frozen_hidden`, the hidden layer's
    output is under `stop_gradient`: its parameters get zero gradients, which the optimizer passes through without
    moments (`train.make_optimizer`), so they stay exactly as drawn; the checkpoint and converters keep the MLP's layout."""

    def __init__(self, hidden: int = 256, dropout: float = 0.0, batchnorm: bool = False, *, activation: str = "relu",
                 frozen_hidden: bool = False, rngs: nnx.Rngs):
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP activation: expected one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.hidden = torch_linear(NUM_PIXELS, hidden, rngs)
        self.activation, self.frozen_hidden = activation, frozen_hidden
        self.batchnorm = BatchNorm1d(hidden) if batchnorm else None
        self.dropout = Dropout(dropout_bits(dropout)) if dropout > 0 else None
        self.dropout_rate = dropout
        self.output = torch_linear(hidden, NUM_CLASSES, rngs)

    def __call__(self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None,
                 dropout_rate: jax.Array | None = None) -> jax.Array:
        """`dropout_rate` (default: the model's own) may be an array: one program, many rates (any its bits make exact)."""
        check_pixels(x, type(self).__name__)
        h = self.hidden(x)
        if self.frozen_hidden:
            h = jax.lax.stop_gradient(h)
        if self.batchnorm is not None:
            h = self.batchnorm(h, train=train)
        h = ACTIVATIONS[self.activation](h)
        if self.dropout is not None and train:
            if dropout_key is None:
                raise TypeError(f"{type(self).__name__}: train=True with dropout draws its masks from a dropout_key "
                                "(a jax.random key), and none was given")
            h = self.dropout(h, dropout_key, self.dropout_rate if dropout_rate is None else dropout_rate)
        return self.output(h)


def count_params(model: nnx.Module, trainable: bool = False) -> int:
    """Number of parameters (BatchNorm running statistics excluded); `trainable`: less a frozen hidden layer's."""
    frozen = trainable and isinstance(model, MLP) and model.frozen_hidden
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) - (count_params(model.hidden) if frozen else 0)
