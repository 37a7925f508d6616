"""JAX and the PyTorch reference train on the same data; the original's own run replays in both.
(`scripts/compare.py` itself: tests/test_fresh_clone.py.)"""

import logging

import pytest

from mnist_jax.comparison import compare_stage, replay_original, steady_seconds_per_epoch
from mnist_jax.torch_reference import original_draws


def test_original_draws_follow_torch_random_split_and_dataloader():
    (train_idx, val_idx), initial, orders = original_draws("linear_ce", epochs=2)
    assert len(train_idx) == 54_000 and len(val_idx) == 6_000
    assert sorted(orders[0]) == sorted(train_idx) and list(orders[0]) != list(orders[1])
    assert initial[0]["linear"]["kernel"].shape == (10, 784)


def test_jax_replay_of_the_original_run_matches_the_pytorch_replay(mnist):
    """Same split, initial weights and batch order as the original's seed 42."""
    r = replay_original("linear_ce", mnist)
    assert abs(r["jax_replay_accuracy"] - r["torch_replay_accuracy"]) <= 0.0002  # 2 of 10,000 images


@pytest.mark.slow
def test_compare_stage_trains_both_frameworks_on_the_same_split(tiny, caplog):
    done = []
    result = compare_stage("linear_ce", tiny, [0], ["tensor", "compile"], epochs=2, progress=done.append)
    assert done == ["linear_ce jax seed 0", "linear_ce torch/tensor seed 0", "linear_ce torch/compile seed 0"]
    for framework in ("jax", "torch_tensor", "torch_compile"):
        assert len(result[framework]["accuracies"]) == 1
        assert 0.5 < result[framework]["mean_accuracy"] <= 1  # learnable synthetic digits
    # torch.compile trains the same model as the eager loop, and its compiling is timed apart
    assert result["torch_compile"]["accuracies"] == pytest.approx(result["torch_tensor"]["accuracies"], abs=0.002)
    assert result["torch_compile"]["compile_seconds"] > 0 and result["torch_tensor"]["compile_seconds"] is None
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("torch") and r.levelno >= logging.WARNING]  # (dynamo's note on Adam.step's profiler marker)


def test_steady_epoch_time_is_the_median_epoch_leaving_out_each_runs_first():
    runs = [[{"seconds": 9.0}, {"seconds": 1.0}, {"seconds": 3.0}], [{"seconds": 8.0}, {"seconds": 2.0}]]
    assert steady_seconds_per_epoch(runs) == 2.0
    assert steady_seconds_per_epoch([[{"seconds": 9.0}]]) == 9.0  # a one-epoch run has only its first
