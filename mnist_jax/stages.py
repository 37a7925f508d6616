"""The five stages of the study: which model, which loss, and what the original reported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mnist_jax.models import NUM_CLASSES, MLP, LinearClassifier

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def softmax_mse(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean squared error between softmax(logits) and one-hot labels, over batch x 10."""
    return jnp.mean((jax.nn.softmax(logits) - jax.nn.one_hot(labels, NUM_CLASSES)) ** 2)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    loss: LossFn
    documented_accuracy: float  # test accuracy reported by the original study, seed 42
    hidden: int | None = None  # None: the linear model
    dropout: float = 0.0
    batchnorm: bool = False

    @property
    def is_mlp(self) -> bool:
        return self.hidden is not None

    def build(
        self, rngs: nnx.Rngs, hidden: int | None = None, dropout: float | None = None
    ) -> nnx.Module:
        """The stage's model; `hidden` and `dropout` override the MLP's defaults."""
        if not self.is_mlp:
            return LinearClassifier(rngs=rngs)
        return MLP(
            hidden or self.hidden,
            self.dropout if dropout is None else dropout,
            self.batchnorm,
            rngs=rngs,
        )


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("linear_mse", "784 -> 10, MSE on softmax", softmax_mse, 0.9257),
        Stage("linear_ce", "784 -> 10, cross-entropy", cross_entropy, 0.9215),
        Stage("mlp", "784 -> 256 -> ReLU -> 10", cross_entropy, 0.9745, hidden=256),
        Stage(
            "mlp_dropout",
            "784 -> 256 -> ReLU -> Dropout(0.5) -> 10",
            cross_entropy,
            0.9728,
            hidden=256,
            dropout=0.5,
        ),
        Stage(
            "mlp_bn",
            "784 -> 256 -> BatchNorm -> ReLU -> 10",
            cross_entropy,
            0.9766,
            hidden=256,
            batchnorm=True,
        ),
    )
}
