"""Hyperparameter grids (`run_grid`: every stage, learning rate, dropout rate, width and seed, in one
`study.train_grid` program per stage and width) and the three questions the original study left open (`answers`).
With a constant learning rate the model after epoch k is a k-epoch run, so one long sweep answers every shorter
length too. Settings (learning rate, epoch) are chosen on validation accuracy only; test accuracy is never chosen on."""

from __future__ import annotations

import itertools
from typing import Callable

import jax
import numpy as np

from mnist_jax.data import MNIST
from mnist_jax.progress import GridProgress
from mnist_jax.results import best_val_epoch, paired_difference, summary
from mnist_jax.stages import STAGES, count, setting
from mnist_jax.study import train_grid
from mnist_jax.train import Point, TrainConfig, device_description


def grid_points(stage: str, lrs: list[float] | None, dropouts: list[float] | None, seeds: int,
                first_seed: int = 0) -> list[Point]:
    """Every (learning rate, dropout rate) of the grid by every seed first_seed..first_seed+seeds-1.
    Unlisted options take the stage's own values; dropout rates apply only to stages with dropout."""
    config = TrainConfig(stage)
    lrs = lrs or [config.lr]
    dropouts = dropouts if dropouts and config.spec.dropout > 0 else [config.dropout_rate]
    return [Point(seed, lr, rate) for lr, rate, seed in itertools.product(lrs, dropouts, range(first_seed, first_seed + seeds))]


MODEL_KEYS = ("stage", "lr", "dropout", "hidden", "seed")  # what names a model in its row of `sweep.json`


def grid_model(stage: str, point: Point, hidden: int | None) -> dict:
    """The `MODEL_KEYS` of a grid's model at `point` (`hidden` None: the stage's own width)."""
    spec = STAGES[stage]
    return dict(zip(MODEL_KEYS, (stage, float(point.lr), float(point.dropout), (hidden if spec.is_mlp else None) or spec.hidden,
                                 int(point.seed))))


def run_grid(stages: list[str], data: MNIST, *, lrs: list[float] | None = None, dropouts: list[float] | None = None,
             hiddens: list[int | None] = (None,), seeds: int = 10, first_seed: int = 0, epochs: int = 5, batch_size: int = 128,
             models_at_once: int | None = None, on_stage: Callable[[str, int], Callable[[int, int], None]] | None = None,
             progress: GridProgress | None = None) -> dict:
    """Train the grid, stage by stage and width by width (one `train_grid` each).
    `on_stage(name, models)` returns the `on_epoch` of that part. The grid's record: its
    rows (one per model: its stage, lr, dropout, hidden width and seed, final test accuracy,
    best validation epoch and history) and its seconds (`results.save_grid` adds the command)."""
    for name, values in (("stages", stages), ("lrs", lrs), ("dropouts", dropouts), ("hiddens", hiddens)):
        if values is not None and (not isinstance(values, (list, tuple)) or not values or len(set(values)) != len(values)):
            raise ValueError(f"run_grid {name}: expected a list of distinct values, got {values!r}")
    if not all(isinstance(s, str) and s in STAGES for s in stages):
        raise ValueError(f"run_grid stages: expected names from {', '.join(STAGES)}, got {stages!r}")
    if not (type(seeds) is int and seeds > 0 and (models_at_once is None or type(models_at_once) is int and models_at_once > 0)):
        raise ValueError(f"run_grid seeds and models_at_once: expected positive ints, got {seeds!r} and {models_at_once!r}")
    if not (type(first_seed) is int and first_seed >= 0):
        raise ValueError(f"run_grid first_seed: expected an int from 0, got {first_seed!r}")
    for lr, rate, hidden in itertools.product(lrs or [1e-3], dropouts or [None], hiddens):  # each as TrainConfig checks it
        TrainConfig("mlp_dropout", epochs=epochs, batch_size=batch_size, lr=lr, seed=first_seed + seeds - 1, hidden=hidden,
                    dropout=rate)
    rows, compile_seconds, train_seconds, chunks = [], 0.0, 0.0, {}
    for stage, hidden in itertools.product(stages, hiddens):
        spec = STAGES[stage]
        if hidden is not None and not spec.is_mlp and hidden != hiddens[0]:
            continue  # a linear model has no width: train it once
        config = TrainConfig(stage, epochs=epochs, batch_size=batch_size, hidden=hidden if spec.is_mlp else None)
        points = grid_points(stage, lrs, dropouts, seeds, first_seed)
        name = stage if not spec.is_mlp else f"{stage} (hidden {config.hidden or spec.hidden})"
        result = train_grid(config, data, points, on_epoch=on_stage(name, len(points)) if on_stage else None,
                            models_at_once=models_at_once, progress=progress)
        rows += [grid_model(stage, point, hidden) | {"test_accuracy": float(accuracy), "best_val_epoch": best_val_epoch(history),
                                                     "history": history}
                 for point, history, accuracy in zip(result.points, result.history, result.test_accuracies, strict=True)]
        compile_seconds += result.compile_seconds
        train_seconds += result.train_seconds
        chunks[name] = result.models_at_once
    return {"device": device_description(), "data": data.origin, "jax_version": jax.__version__, "epochs": epochs,
            "batch_size": batch_size, "compile_seconds": compile_seconds, "train_seconds": train_seconds,
            "models_at_once": chunks, "rows": rows}


def curves(rows: list[dict], stages: tuple[str, ...], field: str = "lr") -> dict[str, dict[float, dict[str, np.ndarray]]]:
    """For each of `stages`, each value of `field` among its rows (a setting; the rows of one grid at one width, as
    `results.load_sweep` checks them): the (seeds, epochs) validation and test accuracies of its seeds, "val" and
    "test". Every setting must hold the same seeds: one missing is a ValueError naming it, never a smaller pairing."""
    seeds = sorted({r["seed"] for r in rows if r["stage"] in stages})
    found = {stage: {} for stage in stages}
    for stage in stages:
        for value in sorted({r[field] for r in rows if r["stage"] == stage}):
            by_seed = {r["seed"]: r["history"] for r in rows if r["stage"] == stage and r[field] == value}
            if missing := [s for s in seeds if s not in by_seed]:
                raise ValueError(f"{stage} at {field} {value:g} has no seed {', '.join(map(str, missing))}, "
                                 "which a setting it is compared with has")
            found[stage][value] = {key: np.array([[epoch[f"{key}_accuracy"] for epoch in by_seed[s]] for s in seeds])
                                   for key in ("val", "test")}
        if not found[stage]:
            raise ValueError(f"no {stage} rows to compare")
    return found


def _per_epoch(curve: dict[str, np.ndarray], best_val_epoch: int | None = None) -> dict:
    """Test accuracy after every epoch (mean and interval) and the epoch whose mean validation
    accuracy is highest (or `best_val_epoch`, chosen on other seeds), with the test accuracy there."""
    best = best_val_epoch - 1 if best_val_epoch else int(curve["val"].mean(0).argmax())
    return {"test": [summary(accuracies) for accuracies in curve["test"].T], "best_val_epoch": best + 1,
            "test_at_best_val_epoch": summary(curve["test"][:, best])}


def dropout_over_epochs(rows: list[dict], lr: float = 1e-3, chosen: dict | None = None) -> dict:
    """Question 1: `mlp_dropout` at each of its rates against `mlp` after every epoch, at
    learning rate `lr`, and each after its own best validation epoch (or, with `chosen`, this
    question's answer on other seeds, at its rates and the epochs it chose)."""
    found = curves([r for r in rows if r["lr"] == lr], ("mlp", "mlp_dropout"), "dropout")
    (plain,) = found["mlp"].values()  # mlp has no dropout rate to vary
    rates = {setting(rate): curve for rate, curve in found["mlp_dropout"].items() if not chosen or setting(rate) in chosen["rates"]}
    if chosen and (missing := chosen["rates"].keys() - rates.keys()):
        raise ValueError(f"mlp_dropout was not trained at the chosen dropout {', '.join(sorted(missing))}")
    if chosen and (last := max(a["best_val_epoch"] for a in (chosen["mlp"], *chosen["rates"].values()))) > plain["test"].shape[1]:
        raise ValueError(f"trained for {count(plain['test'].shape[1], 'epoch')}, not to the chosen epoch {last}")
    answer = {"lr": lr, "seeds": len(plain["test"]), "epochs": plain["test"].shape[1],
              "mlp": _per_epoch(plain, chosen and chosen["mlp"]["best_val_epoch"]), "rates": {}}
    plain_best = plain["test"][:, answer["mlp"]["best_val_epoch"] - 1]
    for rate, dropped in rates.items():
        differences = [paired_difference(a, b) for a, b in zip(plain["test"].T, dropped["test"].T)]
        better = [d["significant"] and d["difference"] > 0 for d in differences]
        per_epoch = _per_epoch(dropped, chosen and chosen["rates"][rate]["best_val_epoch"])
        answer["rates"][rate] = per_epoch | {
            "difference": differences,
            "first_better_epoch": next((e + 1 for e in range(len(better)) if better[e]), None),
            "better_from_epoch": next((e + 1 for e in range(len(better)) if all(better[e:])), None),  # and to the last
            "difference_at_best_val_epochs": paired_difference(plain_best, dropped["test"][:, per_epoch["best_val_epoch"] - 1]),
        }
    return answer


def best_lr(by_lr: dict[float, dict[str, np.ndarray]], epoch: int | None = None, chosen: dict | None = None) -> dict:
    """The learning rate (of one stage's `curves`) whose mean validation accuracy after
    `epoch` is highest, or without `epoch` the (rate, epoch) of highest, or the rate and epoch
    `chosen` on other seeds; with each rate's validation and test accuracy after that epoch."""
    if chosen:
        lr, epoch = chosen["lr"], chosen["epoch"]
        if lr not in by_lr or epoch > next(iter(by_lr.values()))["val"].shape[1]:
            raise ValueError(f"not trained at the chosen lr {setting(lr)} for {count(epoch, 'epoch')}")
    else:
        means = {lr: curve["val"].mean(0) for lr, curve in by_lr.items()}
        lr = max(means, key=lambda lr: means[lr][epoch - 1] if epoch else means[lr].max())
        epoch = epoch or int(means[lr].argmax()) + 1
    scores = {setting(lr): {key: summary(curve[key][:, epoch - 1]) for key in ("val", "test")} for lr, curve in by_lr.items()}
    return {"lr": lr, "epoch": epoch, "by_lr": scores}


def compare_at_best_lr(rows: list[dict], before: str, after: str, epoch: int | None = None, reference_lr: float = 1e-3,
                       chosen: dict | None = None) -> dict:
    """Questions 2 and 3: each stage at its own best learning rate after `epoch` (without
    `epoch`, at its best rate and epoch), chosen on validation (or as `chosen`, this
    comparison's choice on other seeds), `after` minus `before` on test, paired by seed;
    and the same at `reference_lr` after those epochs (None where a stage was not trained at it)."""
    found = curves(rows, (before, after))
    choice = {s: best_lr(found[s], epoch, chosen and chosen[s]) for s in (before, after)}

    def difference(lr_before: float, lr_after: float) -> dict:
        return paired_difference(found[before][lr_before]["test"][:, choice[before]["epoch"] - 1],
                                 found[after][lr_after]["test"][:, choice[after]["epoch"] - 1])

    at_reference = difference(reference_lr, reference_lr) if all(reference_lr in found[s] for s in choice) else None
    return {"epoch": epoch, "seeds": len(found[before][choice[before]["lr"]]["test"]), "choice": choice,
            "at_best_lr": difference(choice[before]["lr"], choice[after]["lr"]), "at_reference_lr": at_reference}


CONTROL_EPOCHS = 5  # the study's length


def controls(sweep: dict, chosen: dict | None = None) -> dict | None:
    """Question 4: `linear_ce`, `mlp` and each control at its own width and its own best learning rate after
    5 epochs, chosen on validation (or as `chosen`, this question's answer on other seeds), each from the last
    grid that trained it at several rates (at the chosen one), and each control's test difference from
    `linear_ce` and from `mlp`, paired by seed (over the seeds those grids share). None unless the
    sweep trained `linear_ce`, `mlp` and a control on common seeds."""
    stages = [stage for stage in ("linear_ce", "mlp", *(name for name, spec in STAGES.items() if spec.is_control))
              if not chosen or stage in chosen["choice"]]
    found = {}
    for stage in stages:
        def usable(grid: int) -> bool:
            lrs = {r["lr"] for r in sweep["rows"] if r["grid"] == grid and r["stage"] == stage}
            wanted = chosen["choice"][stage]["lr"] in lrs if chosen else len(lrs) > 1
            return wanted and sweep["grids"][grid]["epochs"] >= CONTROL_EPOCHS
        grids = [g for g in range(len(sweep["grids"])) if usable(g)]
        if grids:
            rows = [r for r in sweep["rows"] if r["grid"] == grids[-1] and r["stage"] == stage and r["hidden"] == STAGES[stage].hidden]
            found[stage] = rows
    seeds = set.intersection(*({r["seed"] for r in rows} for rows in found.values())) if found else set()
    if not {"linear_ce", "mlp"} <= found.keys() or len(found) == 2 or not seeds:
        return None
    curve = {stage: curves([r for r in rows if r["seed"] in seeds], (stage,))[stage] for stage, rows in found.items()}
    choice = {stage: best_lr(by_lr, CONTROL_EPOCHS, chosen and chosen["choice"][stage]) for stage, by_lr in curve.items()}
    test = {stage: curve[stage][c["lr"]]["test"][:, CONTROL_EPOCHS - 1] for stage, c in choice.items()}
    return {"epoch": CONTROL_EPOCHS, "seeds": len(seeds), "choice": choice,
            "versus": {stage: {base: paired_difference(test[base], test[stage]) for base in ("linear_ce", "mlp")}
                       for stage in choice if STAGES[stage].is_control}}


def answers(sweep: dict, chosen_on: dict | None = None) -> dict:
    """The four questions, each from the last grid that trained both its stages (a
    question reads one grid: the same seeds and epochs), at one width of the MLPs: their
    own (256) if the grid trained it, else its widest; the controls as `controls` finds them.
    The linear losses are compared after 5 epochs and after the grid's, and each at its best
    (rate, epoch). With `chosen_on`, another sweep: the questions it answers, at the rates and
    epochs its validation chose, answered on `sweep`'s seeds (a re-test on fresh seeds)."""
    chosen = answers(chosen_on) if chosen_on is not None else None
    trained = {(r["grid"], r["stage"]) for r in sweep["rows"]}

    def grid_of(*stages: str) -> tuple[list[dict], int, int | None] | None:
        grids = [g for g in range(len(sweep["grids"])) if all((g, s) in trained for s in stages)]
        if not grids:
            return None
        rows = [r for r in sweep["rows"] if r["grid"] == grids[-1] and r["stage"] in stages]
        widths = sorted({r["hidden"] for r in rows if r["hidden"] is not None})
        width = STAGES["mlp"].hidden if STAGES["mlp"].hidden in widths else widths[-1] if widths else None
        return [r for r in rows if r["hidden"] == width], sweep["grids"][grids[-1]]["epochs"], width

    def dropout() -> dict | None:
        if not (grid := grid_of("mlp", "mlp_dropout")):
            return None
        lrs = sorted({r["lr"] for r in grid[0]})
        lr = (chosen["dropout"]["lr"] if chosen else lrs[0] if len(lrs) == 1 else 1e-3 if 1e-3 in lrs
              else best_lr(curves(grid[0], ("mlp",))["mlp"], grid[1])["lr"])
        return dropout_over_epochs(grid[0], lr, chosen and chosen["dropout"]) | {"hidden": grid[2]}

    def batchnorm() -> dict | None:
        if not (grid := grid_of("mlp", "mlp_bn")):
            return None
        epoch, choice = (chosen["batchnorm"]["epoch"], chosen["batchnorm"]["choice"]) if chosen else (grid[1], None)
        return compare_at_best_lr(grid[0], "mlp", "mlp_bn", epoch, chosen=choice) | {"hidden": grid[2]}

    def linear() -> dict | None:
        if not (grid := grid_of("linear_mse", "linear_ce")):
            return None
        was = chosen and chosen["linear"]
        best = compare_at_best_lr(grid[0], "linear_mse", "linear_ce", chosen=was and was["best_lr_and_epoch"])
        epochs = was["at_epochs"] if was else {str(e): None for e in sorted({min(5, grid[1]), grid[1]})}
        return {"at_epochs": {e: compare_at_best_lr(grid[0], "linear_mse", "linear_ce", int(e), chosen=c and c["choice"])
                              for e, c in epochs.items()},
                "best_lr_and_epoch": best["choice"], "at_best_lr_and_epoch": best["at_best_lr"]}

    found = {}
    for question, answer in (("dropout", dropout), ("batchnorm", batchnorm), ("linear", linear),
                             ("controls", lambda: controls(sweep, chosen and chosen["controls"]))):
        if chosen is not None and question not in chosen:
            continue
        try:
            if (found_one := answer()) is not None:
                found[question] = found_one
            elif chosen is not None:
                raise ValueError("no grid of its stages")
        except ValueError as e:  # a re-test whose grid lacks a chosen setting: say which
            if chosen is None:
                raise
            found.setdefault("not_retested", {})[question] = str(e)
    return found
