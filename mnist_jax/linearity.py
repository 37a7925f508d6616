"""The limits of linearity: the best any linear classifier can do, and MLP width. `linear_lstsq` is the exact
least-squares linear map (the optimum of a linear model under squared error, in closed form); `linear_ce_converged`
is multinomial logistic regression run to convergence with full-batch L-BFGS (the ceiling of a linear softmax
classifier trained by SGD-like methods for 5 epochs)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mnist_jax.data import MNIST
from mnist_jax.evaluate import to_inputs
from mnist_jax.models import count_params, cross_entropy
from mnist_jax.train import run_keys, split_indices


def _with_bias(images: jax.Array) -> jax.Array:
    """uint8 images -> their pixels in [0, 1] and a constant 1 (the bias's input)."""
    x = to_inputs(images)
    return jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], 1)


def _train_test(data: MNIST, seed: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The training images of `seed`'s split and the test images, with a bias input, and their labels."""
    train_idx, _ = jax.jit(split_indices, static_argnums=1)(run_keys(seed)[0], len(data.train_labels))
    images = jnp.asarray(data.train_images.reshape(len(data.train_labels), -1))[train_idx]
    labels = jnp.asarray(data.train_labels, jnp.int32)[train_idx]
    return _with_bias(images), labels, _with_bias(jnp.asarray(data.test_images)), jnp.asarray(data.test_labels)


def _accuracies(weights: jax.Array, x: jax.Array, y: jax.Array, test_x: jax.Array, test_y: jax.Array) -> dict:
    return {"train_accuracy": float(jnp.mean((x @ weights).argmax(-1) == y)),
            "test_accuracy": float(jnp.mean((test_x @ weights).argmax(-1) == test_y))}


def linear_lstsq(data: MNIST, seed: int = 0, ridge: float = 1e-3) -> dict:
    """Ridge least squares from pixels (and a bias) to one-hot targets, in closed form."""
    start = time.perf_counter()
    split = _train_test(data, seed)
    x, y = split[:2]
    gram = x.T @ x + ridge * len(x) * jnp.eye(x.shape[1])
    weights = jnp.linalg.solve(gram, x.T @ jax.nn.one_hot(y, 10))
    return {**_accuracies(weights, *split), "ridge": ridge, "seconds": time.perf_counter() - start}


def linear_ce_converged(data: MNIST, seed: int = 0, max_steps: int = 2000, tol: float = 1e-4) -> dict:
    """Softmax regression trained to convergence: full-batch L-BFGS (optax) from zero."""
    start = time.perf_counter()
    split = _train_test(data, seed)
    solver = optax.lbfgs()

    @jax.jit
    def run(weights, x, y):  # x, y as arguments: closed over, they would be compiled in as constants
        def loss(weights):
            return cross_entropy(x @ weights, y)

        value_and_grad = optax.value_and_grad_from_state(loss)

        def step(carry):
            weights, state, _ = carry
            value, grad = value_and_grad(weights, state=state)
            updates, state = solver.update(grad, state, weights, value=value, grad=grad, value_fn=loss)
            return optax.apply_updates(weights, updates), state, optax.tree.norm(grad)

        def going(carry):
            _, state, grad_norm = carry
            return (optax.tree.get(state, "count") < max_steps) & (grad_norm > tol)

        init = (weights, solver.init(weights), jnp.inf)
        weights, state, grad_norm = jax.lax.while_loop(going, step, init)
        return weights, optax.tree.get(state, "count"), grad_norm

    x, y = split[:2]
    weights, steps, grad_norm = run(jnp.zeros((x.shape[1], 10)), x, y)
    return {**_accuracies(weights, *split), "train_loss": float(cross_entropy(x @ weights, y)), "steps": int(steps),
            "grad_norm": float(grad_norm), "seconds": time.perf_counter() - start}


def check_widths_fit(data: MNIST, widths: list[int], seeds: int, epochs: int = 5) -> None:
    """Refuse a width whose programs do not fit in memory even one model at a time (`memory.check`), before any fit."""
    from mnist_jax.study import fitting_chunk, kept_results
    from mnist_jax.train import TrainConfig

    for width in widths:  # (the configuration `study.train_grid` compiles, once per process: `width_sweep` finds it)
        config = TrainConfig("mlp", epochs=epochs, hidden=width, dropout=0.0)
        fitting_chunk(config, data, seeds, kept=kept_results(config, data, seeds))


def width_sweep(data: MNIST, widths: list[int], seeds: list[int], epochs: int = 5) -> list[dict]:
    """The `mlp` stage at each hidden width, all seeds at once per width."""
    from mnist_jax.results import summary
    from mnist_jax.study import train_seeds
    from mnist_jax.train import TrainConfig

    rows = []
    for width in widths:
        config = TrainConfig("mlp", epochs=epochs, hidden=width)
        result = train_seeds(config, data, seeds)
        parameters = count_params(nnx.eval_shape(lambda: config.spec.build(nnx.Rngs(0), width)))
        rows.append({"hidden": width, "parameters": parameters, "test_accuracies": result.test_accuracies.tolist(),
                     **summary(result.test_accuracies)})
    return rows

