"""JAX against the PyTorch reference: same data, same splits, several seeds.

Training PyTorch needs `torch` (the optional extra), imported when a PyTorch run starts.
"""

from __future__ import annotations

import statistics
from typing import Callable

import numpy as np

from mnist_jax.data import MNIST
from mnist_jax.results import summary
from mnist_jax.stages import STAGES
from mnist_jax.train import Replay, TrainConfig, run_keys, split_indices, train


def jax_split(seed: int, num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """The (train, validation) indices a JAX run of `seed` uses, as NumPy arrays, so
    that PyTorch trains on the same split."""
    return tuple(np.asarray(i) for i in split_indices(run_keys(seed)[0], num_images))


def steady_seconds_per_epoch(histories: list[list[dict]]) -> float:
    """Median epoch time, leaving out each run's first epoch (warm-up)."""
    times = [row["seconds"] for history in histories for row in history[1:]] or [
        history[0]["seconds"] for history in histories
    ]
    return statistics.median(times)


def summarise(accuracies: list[float], histories: list[list[dict]], compile_seconds: float | None) -> dict:
    """One framework's runs of a stage: accuracies (mean; std None for one seed), steady epoch time."""
    accuracy = summary(accuracies)
    return {"accuracies": accuracies, "mean_accuracy": accuracy["mean"], "std_accuracy": accuracy["std"],
            "seconds_per_epoch": steady_seconds_per_epoch(histories), "compile_seconds": compile_seconds}


def compare_stage(
    stage: str,
    data: MNIST,
    seeds: list[int],
    loops: list[str],
    epochs: int = 5,
    progress: Callable[[str], None] = lambda _: None,
) -> dict:
    """Train `stage` for each seed in JAX and in each PyTorch loop style, on the JAX split;
    `progress` is told of each run once it is done."""
    from mnist_jax import torch_reference

    jax_runs = []
    for seed in seeds:
        jax_runs.append(train(TrainConfig(stage, epochs=epochs, seed=seed), data))
        progress(f"{stage} jax seed {seed}")
    result = {
        "stage": stage,
        "documented_accuracy": STAGES[stage].documented_accuracy,
        "jax": summarise(
            [r.test_accuracy for r in jax_runs],
            [r.history for r in jax_runs],
            float(np.mean([r.compile_seconds for r in jax_runs])),
        ),
    }
    for loop in loops:
        torch_runs = []
        for seed in seeds:
            split = jax_split(seed, len(data.train_labels))
            torch_runs.append(torch_reference.train(stage, data, split, epochs=epochs, seed=seed, loop=loop))
            progress(f"{stage} torch/{loop} seed {seed}")
        histories = [r.history for r in torch_runs]
        warm_up = [h[0]["seconds"] - steady_seconds_per_epoch([h]) for h in histories] if loop == "compile" else None
        result[f"torch_{loop}"] = summarise([r.test_accuracy for r in torch_runs], histories, warm_up and float(np.mean(warm_up)))
    return result


def replay_original(stage: str, data: MNIST, epochs: int = 5, seed: int = 42) -> dict:
    """The original's own run at `seed`: PyTorch as its code does it, and JAX from the
    same split, initial weights and batch order. Stages without dropout only."""
    from mnist_jax import torch_reference

    if STAGES[stage].dropout:
        raise ValueError(f"{stage}: dropout masks come from torch's RNG; cannot replay")
    torch_run = torch_reference.train(stage, data, epochs=epochs, seed=seed, loop="original")
    split, initial, orders = torch_reference.original_draws(stage, len(data.train_labels), epochs, seed=seed)
    jax_run = train(TrainConfig(stage, epochs=epochs, seed=seed), data, replay=Replay(split, initial, orders))
    return {
        "stage": stage,
        "documented_accuracy": STAGES[stage].documented_accuracy,
        "torch_replay_accuracy": torch_run.test_accuracy,
        "jax_replay_accuracy": jax_run.test_accuracy,
    }
