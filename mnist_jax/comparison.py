"""JAX against the PyTorch reference: same data, same splits, several seeds. Training PyTorch needs `torch`
(the optional extra), imported when a PyTorch run starts."""

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
    times = [row["seconds"] for history in histories for row in history[1:]]
    return statistics.median(times or [history[0]["seconds"] for history in histories])


def compare_stage(stage: str, data: MNIST, seeds: list[int], loops: list[str], epochs: int = 5,
                  progress: Callable[[str], None] = lambda _: None) -> dict:
    """Train `stage` for each seed in JAX and in each PyTorch loop style, on the JAX split;
    `progress` is told of each run once it is done. Per framework: accuracies (std None for
    one seed), steady epoch time, compile time (JAX's first run's, whose programs the later seeds reuse; for
    `torch.compile`, the first epoch's excess)."""

    def run(framework: str, seed: int):
        if framework == "jax":
            return train(TrainConfig(stage, epochs=epochs, seed=seed), data)
        from mnist_jax import torch_reference

        split = jax_split(seed, len(data.train_labels))
        return torch_reference.train(stage, data, split, epochs=epochs, seed=seed, loop=framework.removeprefix("torch/"))

    result = {"stage": stage, "documented_accuracy": STAGES[stage].documented_accuracy}
    for framework in ["jax", *(f"torch/{loop}" for loop in loops)]:
        runs = []
        for seed in seeds:
            runs.append(run(framework, seed))
            progress(f"{stage} {framework} seed {seed}")
        histories = [r.history for r in runs]
        compile_seconds = None
        if framework == "jax":
            compile_seconds = runs[0].compile_seconds  # (the later seeds' runs reuse its programs)
        elif framework == "torch/compile":
            compile_seconds = float(np.mean([h[0]["seconds"] - steady_seconds_per_epoch([h]) for h in histories]))
        accuracy = summary([r.test_accuracy for r in runs])
        result[framework.replace("/", "_")] = {
            "accuracies": [r.test_accuracy for r in runs], "mean_accuracy": accuracy["mean"], "std_accuracy": accuracy["std"],
            "seconds_per_epoch": steady_seconds_per_epoch(histories), "compile_seconds": compile_seconds,
        }
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
    return {"stage": stage, "documented_accuracy": STAGES[stage].documented_accuracy,
            "torch_replay_accuracy": torch_run.test_accuracy, "jax_replay_accuracy": jax_run.test_accuracy}
