"""Hyperparameter grids: every (stage, learning rate, dropout rate, width, seed) trained
by `study.train_grid`, one program per stage and width (`results.save_grid` records them
in `sweep.json`); and the three questions the original study left open, answered from
them on validation-chosen settings.

A row is one model: its grid point, its seed, its final test accuracy, its best
validation epoch and its history (every epoch's losses and accuracies, test included).
With a constant learning rate the model after epoch k is a k-epoch run, so one long
sweep answers every shorter length too. Settings (learning rate, epoch) are chosen on
validation accuracy only; test accuracy is reported, never chosen on.
"""

from __future__ import annotations

import itertools
from typing import Callable

import jax
import numpy as np

from mnist_jax.data import MNIST
from mnist_jax.progress import GridProgress
from mnist_jax.results import best_val_epoch, paired_difference, summary
from mnist_jax.stages import STAGES
from mnist_jax.study import GridResult, train_grid
from mnist_jax.train import Point, TrainConfig, device_description


def grid_points(stage: str, lrs: list[float] | None, dropouts: list[float] | None, seeds: int) -> list[Point]:
    """Every (learning rate, dropout rate) of the grid by every seed 0..seeds-1. Unlisted
    options take the stage's own values; dropout rates apply only to stages with dropout."""
    config = TrainConfig(stage)
    lrs = lrs or [config.lr]
    dropouts = dropouts if dropouts and config.spec.dropout > 0 else [config.dropout_rate]
    return [Point(seed, lr, rate) for lr, rate, seed in itertools.product(lrs, dropouts, range(seeds))]


def rows_of(result: GridResult) -> list[dict]:
    """One row per model of a trained grid: its stage, lr, dropout, hidden width and seed,
    its final test accuracy, its best validation epoch and its history."""
    rows = []
    for point, history, accuracy in zip(result.points, result.history, result.test_accuracies, strict=True):
        rows.append({
            "stage": result.config.stage,
            "lr": float(point.lr),
            "dropout": float(point.dropout),
            "hidden": result.config.hidden or result.config.spec.hidden,
            "seed": int(point.seed),
            "test_accuracy": float(accuracy),
            "best_val_epoch": best_val_epoch(history),
            "history": history,
        })
    return rows


def run_grid(
    stages: list[str], data: MNIST, *, lrs: list[float] | None = None, dropouts: list[float] | None = None,
    hiddens: list[int | None] = (None,), seeds: int = 10, epochs: int = 5, batch_size: int = 128,
    models_at_once: int | None = None, on_stage: Callable[[str, int], Callable[[int, int], None]] | None = None,
    progress: GridProgress | None = None,
) -> dict:
    """Train the grid, stage by stage and width by width (one `train_grid` each).
    `on_stage(name, models)` returns the `on_epoch` of that part. The grid's record:
    its rows and its seconds (`results.save_grid` adds the command)."""
    for name, values in (("stages", stages), ("lrs", lrs), ("dropouts", dropouts), ("hiddens", hiddens)):
        if values is not None and (not isinstance(values, (list, tuple)) or not values or len(set(values)) != len(values)):
            raise ValueError(f"run_grid {name}: expected a list of distinct values, got {values!r}")
    if not all(isinstance(s, str) and s in STAGES for s in stages):
        raise ValueError(f"run_grid stages: expected names from {', '.join(STAGES)}, got {stages!r}")
    if not (type(seeds) is int and seeds > 0) or models_at_once is not None and not (type(models_at_once) is int and models_at_once > 0):
        raise ValueError(f"run_grid seeds and models_at_once: expected positive ints, got {seeds!r} and {models_at_once!r}")
    for lr, rate, hidden in itertools.product(lrs or [1e-3], dropouts or [None], hiddens):  # each as TrainConfig checks it
        TrainConfig("mlp_dropout", epochs=epochs, batch_size=batch_size, lr=lr, hidden=hidden, dropout=rate)
    rows, compile_seconds, train_seconds, chunks = [], 0.0, 0.0, {}
    for stage, hidden in itertools.product(stages, hiddens):
        spec = STAGES[stage]
        if hidden is not None and not spec.is_mlp and hidden != hiddens[0]:
            continue  # a linear model has no width: train it once
        config = TrainConfig(stage, epochs=epochs, batch_size=batch_size, hidden=hidden if spec.is_mlp else None)
        points = grid_points(stage, lrs, dropouts, seeds)
        name = stage if not spec.is_mlp else f"{stage} (hidden {config.hidden or spec.hidden})"
        on_epoch = on_stage(name, len(points)) if on_stage else None
        result = train_grid(config, data, points, on_epoch=on_epoch, models_at_once=models_at_once, progress=progress)
        rows += rows_of(result)
        compile_seconds += result.compile_seconds
        train_seconds += result.train_seconds
        chunks[name] = result.models_at_once
    return {"device": device_description(), "jax_version": jax.__version__, "epochs": epochs, "batch_size": batch_size,
            "compile_seconds": compile_seconds, "train_seconds": train_seconds, "models_at_once": chunks, "rows": rows}


# The three questions. A "setting" is (stage, lr, dropout, hidden, grid); its rows are
# its seeds, which pair across settings: a seed draws the same split and batch order.


def setting(rows: list[dict], stage: str, **fixed) -> dict[int, dict]:
    """The rows of one stage whose fields equal `fixed`, by seed."""
    chosen = [r for r in rows if r["stage"] == stage and all(r[k] == v for k, v in fixed.items())]
    by_seed = {r["seed"]: r for r in chosen}
    if not chosen:
        raise ValueError(f"no {stage} rows with {fixed}")
    if len(by_seed) != len(chosen):
        raise ValueError(f"{stage} {fixed}: more than one setting per seed; name the one to compare")
    return by_seed


def same_seeds(*settings: dict[int, dict]) -> list[int]:
    """The seeds of settings compared with one another, which must be the same: a seed
    missing from one is a ValueError naming it, never a smaller pairing."""
    seeds = sorted(set().union(*settings))
    for by_seed in settings:
        if missing := [s for s in seeds if s not in by_seed]:
            row = next(iter(by_seed.values()))
            raise ValueError(f"{row['stage']} at lr {row['lr']:g}, dropout {row['dropout']:g} has no seed "
                             f"{', '.join(map(str, missing))}, which a setting it is compared with has")
    return seeds


def curve(by_seed: dict[int, dict], key: str, seeds: list[int]) -> np.ndarray:
    """(seeds, epochs) of one history figure."""
    return np.array([[entry[key] for entry in by_seed[s]["history"]] for s in seeds])


def dropout_over_epochs(rows: list[dict], lr: float = 1e-3) -> dict:
    """Question 1: `mlp_dropout` at each of its rates against `mlp` after every epoch, at
    learning rate `lr`."""
    rows = [r for r in rows if r["lr"] == lr]
    base = setting(rows, "mlp")
    others = {rate: setting(rows, "mlp_dropout", dropout=rate) for rate in sorted({r["dropout"] for r in rows if r["stage"] == "mlp_dropout"})}
    seeds = same_seeds(base, *others.values())
    plain = curve(base, "test_accuracy", seeds)
    answer = {"lr": lr, "seeds": len(seeds), "epochs": plain.shape[1], "mlp": _per_epoch(base, seeds), "rates": {}}
    plain_best = answer["mlp"]["best_val_epoch"]
    for rate, other in others.items():
        dropped = curve(other, "test_accuracy", seeds)
        differences = [paired_difference(plain[:, e], dropped[:, e]) for e in range(plain.shape[1])]
        better = [d["significant"] and d["difference"] > 0 for d in differences]
        first = next((e + 1 for e in range(len(better)) if better[e]), None)
        since = next((e + 1 for e in range(len(better)) if all(better[e:])), None)  # and to the last epoch
        per_epoch = _per_epoch(other, seeds)
        at_best = paired_difference(plain[:, plain_best - 1], dropped[:, per_epoch["best_val_epoch"] - 1])  # each at its own
        answer["rates"][f"{rate:g}"] = {**per_epoch, "difference": differences, "first_better_epoch": first,
                                        "better_from_epoch": since, "difference_at_best_val_epochs": at_best}
    return answer


def _per_epoch(by_seed: dict[int, dict], seeds: list[int]) -> dict:
    """Test accuracy after every epoch (mean and interval) and the epoch whose mean
    validation accuracy is highest, with the test accuracy there."""
    test, val = curve(by_seed, "test_accuracy", seeds), curve(by_seed, "val_accuracy", seeds)
    best = int(val.mean(0).argmax())
    return {"test": [summary(test[:, e]) for e in range(test.shape[1])], "best_val_epoch": best + 1,
            "test_at_best_val_epoch": summary(test[:, best]),
            "best_val_epochs_of_seeds": [by_seed[s]["best_val_epoch"] for s in seeds]}


def by_lr(rows: list[dict], stage: str) -> dict[float, dict[int, dict]]:
    """Each learning rate's setting of `stage`."""
    return {lr: setting(rows, stage, lr=lr) for lr in sorted({r["lr"] for r in rows if r["stage"] == stage})}


def best_lr(rows: list[dict], stage: str, epoch: int) -> dict:
    """The learning rate whose mean validation accuracy after `epoch` is highest."""
    settings = by_lr(rows, stage)
    seeds = same_seeds(*settings.values())
    scores = {lr: {"val": summary(curve(by_seed, "val_accuracy", seeds)[:, epoch - 1]),
                   "test": summary(curve(by_seed, "test_accuracy", seeds)[:, epoch - 1])} for lr, by_seed in settings.items()}
    lr = max(scores, key=lambda lr: scores[lr]["val"]["mean"])
    return {"lr": lr, "by_lr": {f"{k:g}": v for k, v in scores.items()}}


def at_lr(rows: list[dict], stage: str, lr: float, epoch: int, seeds: list[int]) -> np.ndarray:
    return curve(setting(rows, stage, lr=lr), "test_accuracy", seeds)[:, epoch - 1]


def compare_at_best_lr(rows: list[dict], before: str, after: str, epoch: int, reference_lr: float = 1e-3) -> dict:
    """Questions 2 and 3: each stage at its own best learning rate after `epoch` (chosen on
    validation), `after` minus `before` on test, paired by seed; and the same at
    `reference_lr` (None where a stage was not trained at it)."""
    settings = {s: by_lr(rows, s) for s in (before, after)}
    seeds = same_seeds(*settings[before].values(), *settings[after].values())
    choice = {s: best_lr(rows, s, epoch) for s in (before, after)}
    best = paired_difference(*(at_lr(rows, s, choice[s]["lr"], epoch, seeds) for s in (before, after)))
    reference = paired_difference(*(at_lr(rows, s, reference_lr, epoch, seeds) for s in (before, after))) if all(
        reference_lr in settings[s] for s in (before, after)) else None
    return {"epoch": epoch, "seeds": len(seeds), "choice": choice, "at_best_lr": best, "reference_lr": reference_lr,
            "at_reference_lr": reference}


def best_lr_and_epoch(rows: list[dict], stage: str) -> dict:
    """The (learning rate, epoch) whose mean validation accuracy is highest."""
    settings = by_lr(rows, stage)
    seeds = same_seeds(*settings.values())
    means = {lr: curve(by_seed, "val_accuracy", seeds).mean(0) for lr, by_seed in settings.items()}
    lr = max(means, key=lambda lr: means[lr].max())
    return {"lr": lr, "epoch": int(means[lr].argmax()) + 1}


def linear_losses(rows: list[dict], epochs: list[int]) -> dict:
    """Question 3: softmax-MSE against cross-entropy for the linear model, at each stage's
    best learning rate after each of `epochs`, and each at its best (rate, epoch)."""
    at_epochs = {str(e): compare_at_best_lr(rows, "linear_mse", "linear_ce", e) for e in epochs}
    choice = {s: best_lr_and_epoch(rows, s) for s in ("linear_mse", "linear_ce")}
    seeds = same_seeds(*(setting(rows, s, lr=choice[s]["lr"]) for s in ("linear_mse", "linear_ce")))
    overall = paired_difference(*(at_lr(rows, s, choice[s]["lr"], choice[s]["epoch"], seeds) for s in ("linear_mse", "linear_ce")))
    return {"at_epochs": at_epochs, "best_lr_and_epoch": choice, "at_best_lr_and_epoch": overall}


def answers(sweep: dict) -> dict:
    """The three questions, each from the last grid that trained both its stages (a
    question reads one grid: the same seeds and epochs), at one width of the MLPs: their
    own (256) if the grid trained it, else its widest."""

    def grid_of(*stages: str) -> tuple[list[dict], int, int | None] | None:
        grids = [g for g in range(len(sweep["grids"])) if all(any(r["grid"] == g and r["stage"] == s for r in sweep["rows"]) for s in stages)]
        if not grids:
            return None
        rows = [r for r in sweep["rows"] if r["grid"] == grids[-1] and r["stage"] in stages]
        widths = sorted({r["hidden"] for r in rows if r["hidden"] is not None})
        width = STAGES["mlp"].hidden if STAGES["mlp"].hidden in widths else widths[-1] if widths else None
        return [r for r in rows if r["hidden"] == width], sweep["grids"][grids[-1]]["epochs"], width

    found = {}
    if grid := grid_of("mlp", "mlp_dropout"):
        lrs = sorted({r["lr"] for r in grid[0]})
        lr = lrs[0] if len(lrs) == 1 else 1e-3 if 1e-3 in lrs else best_lr(grid[0], "mlp", grid[1])["lr"]
        found["dropout"] = dropout_over_epochs(grid[0], lr) | {"hidden": grid[2]}
    if grid := grid_of("mlp", "mlp_bn"):
        found["batchnorm"] = compare_at_best_lr(grid[0], "mlp", "mlp_bn", grid[1]) | {"hidden": grid[2]}
    if grid := grid_of("linear_mse", "linear_ce"):
        found["linear"] = linear_losses(grid[0], sorted({min(5, grid[1]), grid[1]}))
    return found
