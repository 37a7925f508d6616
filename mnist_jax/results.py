"""What a set of runs amounts to, and the files that record it: `summary` of a set of
runs (a stage's seeds, a sweep setting's, a framework's), `paired_difference` of two sets
seed by seed (a seed gives both the same split and batch order); `results.json` and
`study_arrays.npz` (`save_study`, `load_study`), `sweep.json` (`save_grid`, `load_sweep`).
A file that is not what was written is refused with one `ResultFileError`."""

from __future__ import annotations

import contextlib
import math
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import jax
import numpy as np
import scipy.stats

from mnist_jax.data import MNIST
from mnist_jax.errors import ResultFileError
from mnist_jax.files import UNREADABLE, atomic_write, check_finite, check_fractions, npz_member, read_json, write_json
from mnist_jax.models import NUM_CLASSES
from mnist_jax.stages import STAGES
from mnist_jax.study import GridResult
from mnist_jax.train import GRID_HISTORY_KEYS, device_description

MAX_JSON_BYTES = 2**28  # results.json of ten seeds and five epochs is 78 KB; sweep.json of 200 models of 40 epochs, 1.5 MB
MISCLASSIFIED = 24  # test digits kept that the best linear stage gets wrong and an MLP right


def summary(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation and 95% t-interval of the mean; std and ci95 None
    under two values (one value has no spread). ValueError on none, or on a non-finite one."""
    values = np.asarray(values, np.float64)
    if not values.size or not np.isfinite(values).all():
        raise ValueError(f"expected finite values, got {values.tolist()}")
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "std": None, "ci95": None}
    std = float(values.std(ddof=1))
    half = float(scipy.stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """b - a, seed by seed: the mean difference, its 95% interval (None under two seeds)
    and whether the interval excludes zero (None without one)."""
    found = summary(np.subtract(b, a))
    ci = found["ci95"]
    return {"difference": found["mean"], "ci95": ci, "significant": bool(ci[0] > 0 or ci[1] < 0) if ci else None}


def best_val_epoch(history: list[dict]) -> int:
    """The epoch of highest validation accuracy (the first of equals)."""
    return max(history, key=lambda row: row["val_accuracy"])["epoch"]


# The study: results.json and study_arrays.npz.


def compared_stages(names: list[str]) -> dict[str, list[tuple[str, str]]]:
    """The pairs of stages a study compares: each stage with the next ("steps"), and the
    plain MLP with each of its variants that ran ("versus_mlp")."""
    return {"steps": list(zip(names, names[1:])),
            "versus_mlp": [("mlp", s) for s in ("mlp_dropout", "mlp_bn") if {"mlp", s} <= set(names)]}


def step_differences(stages: dict[str, dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """Test accuracy of `to` minus `from` for each pair, paired by seed: both stages must
    have run the same seeds."""
    steps = []
    for before, after in pairs:
        if stages[before]["seeds"] != stages[after]["seeds"]:
            raise ValueError(f"{before} and {after} ran different seeds ({stages[before]['seeds']}, {stages[after]['seeds']}): "
                             "a difference pairs the same seeds")
        steps.append({"from": before, "to": after,
                      **paired_difference(stages[before]["test_accuracies"], stages[after]["test_accuracies"])})
    return steps


def _stage(result: GridResult) -> dict:
    return {
        "seeds": result.seeds,
        "test_accuracies": result.test_accuracies.tolist(),
        "history": result.history,
        **summary(result.test_accuracies),
        "documented_accuracy": result.config.spec.documented_accuracy,
        "compile_seconds": result.compile_seconds,
        "train_seconds": result.train_seconds,
        "seeds_at_once": result.models_at_once,
    }


def _study_arrays(results: dict[str, GridResult], data: MNIST, stages: dict[str, dict]) -> dict[str, np.ndarray]:
    """What the figures draw, of each stage's first seed: its predictions and confusion
    matrix, a linear stage's weights, and test digits the best linear stage gets wrong
    and the plain MLP right."""
    arrays = {}
    for name, r in results.items():
        arrays[f"{name}_predictions"] = r.test_predictions[0]
        confusion = np.bincount(data.test_labels * NUM_CLASSES + r.test_predictions[0], minlength=NUM_CLASSES**2)
        arrays[f"{name}_confusion"] = confusion.reshape(NUM_CLASSES, NUM_CLASSES)  # by true, then predicted class
        if not r.config.spec.is_mlp:
            arrays[f"{name}_weights"] = r.final_params["linear"]["kernel"][0]
    linear = [n for n, r in results.items() if not r.config.spec.is_mlp]
    mlps = [n for n, r in results.items() if r.config.spec.is_mlp]
    if linear and mlps:
        best_linear = max(linear, key=lambda n: stages[n]["mean"])
        mlp = "mlp" if "mlp" in mlps else mlps[0]
        wrong = results[best_linear].test_predictions[0] != data.test_labels
        right = results[mlp].test_predictions[0] == data.test_labels
        picked = np.flatnonzero(wrong & right)[:MISCLASSIFIED]
        arrays |= {
            "misclassified_stages": np.array([best_linear, mlp]),
            "misclassified_images": data.test_images[picked],
            "misclassified_labels": data.test_labels[picked],
            "misclassified_linear_predictions": results[best_linear].test_predictions[0][picked],
        }
    return arrays


def save_study(results: dict[str, GridResult], data: MNIST, out: Path, command: str, seconds: float, write: bool = True) -> dict:
    """Write `results.json` and `study_arrays.npz` (what the figures need) to `out`, unless
    not `write` (a process of several, not the first)."""
    stages = {name: _stage(r) for name, r in results.items()}
    comparisons = {key: step_differences(stages, pairs) for key, pairs in compared_stages(list(stages)).items()}
    report = {"stages": stages, **comparisons, "command": command, "device": device_description(),
              "jax_version": jax.__version__, "seconds": seconds}
    if write:
        write_json(out / "results.json", report)
        with atomic_write(out / "study_arrays.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **_study_arrays(results, data, stages))
    return report


# The sweep: sweep.json.


def save_grid(grid: dict, path: Path, command: str, seconds: float, add: bool, run_id: str, write: bool = True) -> dict:
    """Write `grid` (`sweep.run_grid`'s record) as `sweep.json` (with `add`, as a further
    grid of the one at `path`, unless that already holds the grid of `run_id`: a resumed
    run stopped after writing), unless not `write` (a process of several, not the first).
    The file: `grids`, one record per command (device, JAX version, seconds, run id), and
    `rows`, every model of every grid, each naming its grid by index."""
    sweep = load_sweep(path) if add and write else {"grids": [], "rows": []}
    if any(g.get("run_id") == run_id for g in sweep["grids"]):
        return sweep
    index = len(sweep["grids"])
    record = {k: v for k, v in grid.items() if k != "rows"} | {"command": command, "seconds": seconds, "run_id": run_id}
    sweep["grids"].append(record)
    sweep["rows"] += [row | {"grid": index} for row in grid["rows"]]
    if write:
        write_json(path, sweep)
    return sweep


# Reading them back: every fault one ResultFileError.


@contextlib.contextmanager
def _written_by(path: Path, script: str) -> Iterator[None]:
    """Turn what goes wrong reading `path` into a ResultFileError naming it and the fault."""
    try:
        yield
    except UNREADABLE as e:
        raise ResultFileError(f"{path} is damaged or not written by {script} ({type(e).__name__}: {e})") from None


def _check_history(where: str, history: list[dict]) -> None:
    """A grid model's epochs, numbered from 1: every figure finite, every accuracy in [0, 1]."""
    for epoch, row in enumerate(history, 1):
        check_finite(f"{where}, epoch {epoch}", **{key: row[key] for key in GRID_HISTORY_KEYS})
        check_fractions(f"{where}, epoch {epoch}", *(row[key] for key in GRID_HISTORY_KEYS if key.endswith("accuracy")))
        if row["epoch"] != epoch:
            raise ValueError(f"{where}, epoch {epoch}: numbered {row['epoch']}")


def _check_interval(where: str, mean: float, ci95: list | None, n: int) -> None:
    """A 95% interval of `n` values holds its mean; under two values there is none."""
    if n < 2:
        if ci95 is not None:
            raise ValueError(f"{where}: a 95% interval {ci95} of one seed")
        return
    lo, hi = ci95
    check_finite(where, ci95_low=lo, ci95_high=hi)
    if not lo <= mean <= hi:
        raise ValueError(f"{where}: mean {mean} outside its 95% interval [{lo}, {hi}]")


def _check_study(report: dict) -> None:
    """Raise unless `report` is what `save_study` writes: every figure a finite number,
    each mean within its interval, every stage of the same seeds and epochs, and the
    comparisons of the stages it holds."""
    if not isinstance(report["device"], str) or not report["stages"]:
        raise ValueError("no device or no stages")
    stages = report["stages"]
    first = next(iter(stages.values()))
    for name, stage in stages.items():
        STAGES[name]  # noqa: B018  (a known stage)
        seeds, histories = stage["seeds"], stage["history"]
        if seeds != first["seeds"] or not all(type(s) is int for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"{name}: seeds {seeds}, where each stage has the same distinct seeds {first['seeds']}")
        if not len(seeds) == len(stage["test_accuracies"]) == len(histories) > 0:
            raise ValueError(f"{name}: seeds, test_accuracies and history differ in length")
        if not histories[0] or any(len(history) != len(first["history"][0]) for history in histories):
            raise ValueError(f"{name}: seeds with different numbers of epochs")
        check_finite(name, mean=stage["mean"], documented_accuracy=stage["documented_accuracy"],
                     **{f"test_accuracies[{i}]": x for i, x in enumerate(stage["test_accuracies"])})
        check_fractions(name, *stage["test_accuracies"], stage["mean"], stage["documented_accuracy"])
        for seed, history in zip(seeds, histories):
            _check_history(f"{name}, seed {seed}", history)
        if len(seeds) > 1:
            check_finite(name, std=stage["std"])
        _check_interval(name, stage["mean"], stage["ci95"], len(seeds))
    for key, expected in compared_stages(list(stages)).items():
        if [(step["from"], step["to"]) for step in report[key]] != expected:
            raise ValueError(f"{key} compares {[(step['from'], step['to']) for step in report[key]]}, not {expected}")
        for step in report[key]:
            where = f"{key} {step['to']} - {step['from']}"
            check_finite(where, difference=step["difference"])
            _check_interval(where, step["difference"], step["ci95"], len(first["seeds"]))


def _read_arrays(path: Path, stages: list[str]) -> dict[str, np.ndarray]:
    """What the figures of `stages` read from `study_arrays.npz`, each array read only
    once its header declares its shape (None: a length up to MISCLASSIFIED) and numbers."""
    shapes = {f"{name}_confusion": (NUM_CLASSES, NUM_CLASSES) for name in stages}
    shapes |= {f"{name}_weights": (NUM_CLASSES, 784) for name in stages if not STAGES[name].is_mlp}
    with zipfile.ZipFile(path) as archive:
        if "misclassified_stages.npy" in archive.namelist():
            shapes |= {"misclassified_stages": (2,), "misclassified_images": (None, 28, 28),
                       "misclassified_labels": (None,), "misclassified_linear_predictions": (None,)}

        def read(name: str, shape: tuple) -> np.ndarray:
            def check(found: tuple, dtype: np.dtype) -> None:
                fits = len(found) == len(shape) and all(f == s or s is None and f <= MISCLASSIFIED for f, s in zip(found, shape))
                if not fits or dtype.kind not in "iufU" or dtype.itemsize > 64:
                    raise ValueError(f"{name} is {dtype}{list(found)}, expected {list(shape)} (None: up to {MISCLASSIFIED})")

            return npz_member(archive, name, check)

        arrays = {name: read(name, shape) for name, shape in shapes.items()}
    if not all(np.isfinite(arrays[f"{name}_weights"]).all() for name in stages if not STAGES[name].is_mlp):
        raise ValueError("weights that are not finite numbers")
    totals = set()
    for name in stages:  # counts of the test images, by true and predicted class
        confusion = arrays[f"{name}_confusion"]
        if confusion.dtype.kind not in "iu" or confusion.min() < 0:
            raise ValueError(f"{name}_confusion is not counts of test images")
        totals.add(int(confusion.sum()))
    if len(totals) != 1:
        raise ValueError(f"confusion matrices of different numbers of test images: {sorted(totals)}")
    for key in ("misclassified_labels", "misclassified_linear_predictions"):
        if key in arrays and (arrays[key].dtype.kind not in "iu" or len(arrays[key]) and not 0 <= arrays[key].min() <= arrays[key].max() < NUM_CLASSES):
            raise ValueError(f"{key} holds classes outside 0-{NUM_CLASSES - 1}")
    if "misclassified_stages" in arrays:
        if len({len(arrays[k]) for k in shapes if k.startswith("misclassified_") and k != "misclassified_stages"}) != 1:
            raise ValueError("misclassified_images, _labels and _linear_predictions differ in length")
        if not set(map(str, arrays["misclassified_stages"])) <= set(stages):
            raise ValueError("misclassified_stages names stages not in results.json")
    return arrays


def load_study(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """`results.json` and the `study_arrays.npz` beside it, as `save_study` wrote them."""
    with _written_by(path, "scripts/study.py"):
        report = read_json(path, MAX_JSON_BYTES)
        _check_study(report)
    arrays = path.with_name("study_arrays.npz")
    with _written_by(arrays, "scripts/study.py"):
        return report, _read_arrays(arrays, list(report["stages"]))


def _check_sweep(sweep: dict) -> None:
    """Raise unless `sweep` is what `save_grid` writes: every figure a finite number, each
    row's history its grid's epochs, each setting of a grid with each seed once and the
    same seeds as the grid's other settings (a question pairs them)."""
    if not sweep["grids"] or not sweep["rows"]:
        raise ValueError("no grids or no rows")
    for grid in sweep["grids"]:
        if not isinstance(grid["command"], str) or not isinstance(grid["device"], str) or type(grid["epochs"]) is not int:
            raise ValueError("a grid without its command, device or epochs")
    seeds: dict[tuple, list[int]] = {}  # (grid, stage, lr, dropout, hidden) -> its seeds
    for row in sweep["rows"]:
        STAGES[row["stage"]]  # noqa: B018  (a known stage)
        if type(row["grid"]) is not int or not 0 <= row["grid"] < len(sweep["grids"]) or len(row["history"]) != sweep["grids"][row["grid"]]["epochs"]:
            raise ValueError(f"a {row['stage']} row whose history is not its grid's epochs")
        where = f"grid {row['grid']}, {row['stage']} seed {row['seed']}"
        check_finite(where, lr=row["lr"], dropout=row["dropout"], test_accuracy=row["test_accuracy"], best_val_epoch=row["best_val_epoch"])
        _check_history(where, row["history"])
        check_fractions(where, row["test_accuracy"])
        if row["test_accuracy"] != row["history"][-1]["test_accuracy"] or row["best_val_epoch"] != best_val_epoch(row["history"]):
            raise ValueError(f"{where}: a test accuracy or best validation epoch that is not its history's")
        if (type(row["seed"]) is not int or row["lr"] <= 0 or not 0 <= row["dropout"] < 1
                or not (row["hidden"] is None or type(row["hidden"]) is int and row["hidden"] > 0)):
            raise ValueError(f"{where}: a seed, lr, dropout or hidden width that no grid has")
        setting_seeds = seeds.setdefault((row["grid"], row["stage"], row["lr"], row["dropout"], row["hidden"]), [])
        if row["seed"] in setting_seeds:
            raise ValueError(f"{where}: twice at lr {row['lr']:g}, dropout {row['dropout']:g}, hidden {row['hidden']}")
        setting_seeds.append(row["seed"])
    for (grid, stage, lr, dropout, hidden), found in seeds.items():
        every = {s for key, other in seeds.items() if key[0] == grid for s in other}
        if missing := sorted(every - set(found)):
            raise ValueError(f"grid {grid}, {stage} at lr {lr:g}, dropout {dropout:g}, hidden {hidden}: no seed "
                             f"{', '.join(map(str, missing))}, which the grid's other settings have")


def load_sweep(path: Path) -> dict:
    """`sweep.json` as `save_grid` wrote it."""
    with _written_by(path, "scripts/sweep.py"):
        sweep = read_json(path, MAX_JSON_BYTES)
        _check_sweep(sweep)
    return sweep
