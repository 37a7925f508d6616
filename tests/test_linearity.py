"""The linear ceilings: the exact least-squares map and softmax regression run to convergence."""

import pytest
from flax import nnx

from mnist_jax import linearity
from mnist_jax.models import count_params
from mnist_jax.stages import STAGES
from mnist_jax.study import train_seeds
from mnist_jax.train import TrainConfig


def test_the_least_squares_linear_map_fits_learnable_digits(tiny):
    lstsq = linearity.linear_lstsq(tiny)
    assert lstsq["train_accuracy"] > 0.9 and lstsq["test_accuracy"] > 0.9


@pytest.mark.slow
def test_softmax_regression_run_by_lbfgs_fits_at_least_as_well_as_least_squares(tiny):
    lstsq = linearity.linear_lstsq(tiny)
    converged = linearity.linear_ce_converged(tiny, max_steps=30)
    assert converged["steps"] <= 30 and converged["train_accuracy"] >= lstsq["train_accuracy"]
    assert converged["grad_norm"] < 1


@pytest.mark.slow
def test_a_width_of_the_sweep_is_the_mlp_stage_at_that_width(tiny):
    (row,) = linearity.width_sweep(tiny, [256], [0, 1], epochs=1)  # the program of test_study's mlp: cached
    alone = train_seeds(TrainConfig("mlp", epochs=1), tiny, [0, 1])
    assert row["hidden"] == 256 and row["parameters"] == count_params(STAGES["mlp"].build(nnx.Rngs(0))) == 203_530
    assert row["test_accuracies"] == alone.test_accuracies.tolist()
    assert row["ci95"][0] <= row["mean"] <= row["ci95"][1]
