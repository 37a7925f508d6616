"""Loss and accuracy of a model state on a labelled set, in eval mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from flax import nnx


def to_inputs(images: jax.Array) -> jax.Array:
    """uint8 images (N, 28, 28) or (N, 784) -> floats (N, 784) in [0, 1], float32 (float64 under
    `jax.enable_x64`). Floating-point images are taken as already scaled."""
    x = images.reshape(images.shape[0], -1)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float)) / 255.0


def predict(graphdef: nnx.GraphDef, params: dict, batch_stats: dict, images: jax.Array) -> jax.Array:
    """Eval-mode logits for uint8 images (Flax imported as a program is built: `train`'s docstring says why)."""
    from flax import nnx

    return nnx.merge(graphdef, params, batch_stats)(to_inputs(images))  # eval mode: every model's default


def make_evaluate(graphdef: nnx.GraphDef, loss_fn: Callable) -> Callable:
    """A pure function (params, batch_stats, images, labels) -> (mean loss, accuracy)."""

    def evaluate(params, batch_stats, images, labels):
        logits = predict(graphdef, params, batch_stats, images)
        return loss_fn(logits, labels), jnp.mean(logits.argmax(-1) == labels)

    return evaluate
