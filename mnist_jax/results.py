"""What a set of runs amounts to, and the files that record it: `summary` of a set of
runs, `paired_difference` of two sets seed by seed (a seed gives both the same split and
batch order), `images_and_seeds`: the same differences with the test images resampled too
(a paired bootstrap over seeds and images); `results.json` and `study_arrays.npz` (`save_study`, `load_study`),
`sweep.json` (`save_grid`, `load_sweep`). A file is refused with one `ResultFileError`
unless what can be computed again from it (a summary, a paired difference, a best epoch) is."""

from __future__ import annotations

import functools
import math
import os
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
import scipy.stats

from mnist_jax.data import MNIST, NUM_CLASSES
from mnist_jax.errors import ResultFileError
from mnist_jax.files import UNREADABLE, atomic_write, finite_number, npz_member, read_json, write_json, write_npz
from mnist_jax.stages import STAGES, TrainConfig, run_settings, settings_config
from mnist_jax.study import GridResult
from mnist_jax.train import GRID_HISTORY_KEYS, device_description

MAX_JSON_BYTES = 2**28  # results.json of ten seeds and five epochs is 78 KB; sweep.json of 200 models of 40 epochs, 1.5 MB
MISCLASSIFIED = 24  # test digits kept that the best linear stage gets wrong and an MLP right
MAX_TEST_IMAGES = 2**20  # the most test images a `<stage>_correct` array of study_arrays.npz may declare
RESAMPLES = 2000  # resamples of the bootstrap over seeds and images
RESAMPLE_SEED = 28  # its NumPy generator's seed: the same files give the same interval
RESAMPLE_CHUNK = 250  # resamples of images drawn per call of the generator (part of the stream: keep it)


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


def seed_range(values: Sequence[float]) -> dict:
    """Every seed at a glance: the lowest, the median and the highest value."""
    values = np.asarray(values, np.float64)
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def _counts(draws: np.ndarray, k: int) -> np.ndarray:
    """How often each of 0..k-1 occurs in each row of `draws` (rows, draws): (rows, k), one bincount."""
    rows = len(draws)
    return np.bincount((np.arange(rows)[:, None] * k + draws).ravel(), minlength=rows * k).reshape(rows, k)


def images_and_seeds(correct: dict[str, np.ndarray], pairs: Sequence[tuple[str, str]],
                     resamples: int = RESAMPLES, rng_seed: int = RESAMPLE_SEED) -> list[dict]:
    """For each (a, b) of `pairs`, b - a with a 95% interval that resamples the test images
    as well as the seeds: a paired bootstrap. `correct[stage]` is (seeds, images), whether
    each seed's final model classifies each test image correctly; every stage the same seeds
    and images in the same order. Each resample draws seeds with replacement and,
    independently, images with replacement, the same draws for every stage (the pairing);
    its statistic is the mean over the drawn seeds of b's accuracy minus a's on the drawn
    images. The interval is the 2.5th and 97.5th percentile of `resamples` statistics, from
    `np.random.default_rng(rng_seed)`. Sums are of whole numbers (exact in float32 up to
    2**24 images), so the interval does not depend on the BLAS."""
    if not pairs:
        return []
    stages = list(dict.fromkeys(stage for pair in pairs for stage in pair))
    shapes = {np.shape(correct[stage]) for stage in stages}
    if len(shapes) != 1 or len(shape := next(iter(shapes))) != 2 or not all(shape):
        raise ValueError(f"per-image correctness of shapes {sorted(shapes)}, where (seeds, test images) of every stage alike is expected")
    seeds, images = shape
    rng = np.random.default_rng(rng_seed)
    seed_counts = _counts(rng.integers(0, seeds, (resamples, seeds)), seeds).astype(np.float64)
    by_seed = {stage: np.empty((resamples, seeds)) for stage in stages}  # correct answers of each seed on each resample's images
    columns = {stage: np.asarray(correct[stage], np.float32).T for stage in stages}  # (images, seeds)
    for start in range(0, resamples, RESAMPLE_CHUNK):
        size = min(RESAMPLE_CHUNK, resamples - start)
        image_counts = _counts(rng.integers(0, images, (size, images)), images).astype(np.float32)
        for stage in stages:
            by_seed[stage][start:start + size] = image_counts @ columns[stage]
    found = []
    for a, b in pairs:
        statistic = (seed_counts * (by_seed[b] - by_seed[a])).sum(axis=1) / (seeds * images)
        lo, hi = (float(q) for q in np.percentile(statistic, [2.5, 97.5]))
        difference = float(np.mean(correct[b], dtype=np.float64) - np.mean(correct[a], dtype=np.float64))
        found.append({"difference": difference, "ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0),
                      "resamples": resamples, "rng_seed": rng_seed})
    return found


def with_images(differences: dict[str, list[dict]], correct: dict[str, np.ndarray] | None) -> dict[str, list[dict]]:
    """`comparisons`' differences, each with its `images_and_seeds` interval (None without
    per-image correctness, as in a study saved before it was kept). One bootstrap for all."""
    pairs = [(d["from"], d["to"]) for found in differences.values() for d in found]
    intervals = iter(images_and_seeds(correct, pairs) if correct is not None else [None] * len(pairs))
    return {key: [d | {"images_and_seeds": next(intervals)} for d in found] for key, found in differences.items()}


def best_val_epoch(history: list[dict]) -> int:
    """The epoch of highest validation accuracy (the first of equals)."""
    return max(history, key=lambda row: row["val_accuracy"])["epoch"]


def comparisons(stages: dict[str, dict]) -> dict[str, list[dict]]:
    """Test accuracy of `to` minus `from`, paired by seed, for each stage and the next
    of the original's ("steps") and for the plain MLP and each of its variants and controls that ran ("versus_mlp").
    Stages compared must have run the same seeds."""
    order = list(STAGES)  # the steps follow the registry, however the stages were given
    names = sorted((name for name in stages if name not in STAGES or not STAGES[name].is_control),
                   key=lambda name: order.index(name) if name in STAGES else len(order))  # the original's steps
    variants = [name for name in STAGES if name not in ("linear_mse", "linear_ce", "mlp")]  # its variants and the controls
    pairs = {"steps": list(zip(names, names[1:])),
             "versus_mlp": [("mlp", s) for s in variants if {"mlp", s} <= set(stages)]}
    if len(ran := {str(stage["seeds"]) for stage in stages.values()}) > 1:
        raise ValueError(f"stages ran different seeds ({', '.join(sorted(ran))}): a difference pairs the same seeds")
    return {key: [{"from": before, "to": after,
                   **paired_difference(stages[before]["test_accuracies"], stages[after]["test_accuracies"])}
                  for before, after in found] for key, found in pairs.items()}


def _study_arrays(results: dict[str, GridResult], data: MNIST, stages: dict[str, dict],
                  correct: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the figures draw, of each stage's first seed: its predictions, confusion matrix,
    a linear stage's weights, and test digits the best linear stage gets wrong and an MLP right;
    and what the intervals over seeds and images are computed from, of every seed: whether
    it classifies each test image correctly (`<stage>_correct`, bool, seeds × test images)."""
    arrays = {}
    for name, r in results.items():
        arrays[f"{name}_predictions"] = r.test_predictions[0]
        arrays[f"{name}_correct"] = correct[name]
        confusion = np.bincount(data.test_labels * NUM_CLASSES + r.test_predictions[0], minlength=NUM_CLASSES**2)
        arrays[f"{name}_confusion"] = confusion.reshape(NUM_CLASSES, NUM_CLASSES)  # by true, then predicted class
        if not r.config.spec.is_mlp:
            arrays[f"{name}_weights"] = r.final_params["linear"]["kernel"][0]
    linear, mlps = [n for n in results if not STAGES[n].is_mlp], [n for n in results if STAGES[n].is_mlp]
    if linear and mlps:
        best_linear = max(linear, key=lambda n: stages[n]["mean"])
        mlp = "mlp" if "mlp" in mlps else mlps[0]
        wrong = results[best_linear].test_predictions[0] != data.test_labels
        right = results[mlp].test_predictions[0] == data.test_labels
        picked = np.flatnonzero(wrong & right)[:MISCLASSIFIED]
        arrays |= {"misclassified_stages": np.array([best_linear, mlp]), "misclassified_images": data.test_images[picked],
                   "misclassified_labels": data.test_labels[picked],
                   "misclassified_linear_predictions": results[best_linear].test_predictions[0][picked]}
    return arrays


def save_study(results: dict[str, GridResult], data: MNIST, out: Path, command: str, seconds: float, write: bool = True) -> dict:
    """Write `results.json` (each stage's summary and every seed's min, median and max; each
    comparison's interval over seeds and over seeds and images) and `study_arrays.npz` (what
    the figures need, each seed's per-image correctness) to `out`, unless not `write` (a
    process of several, not the first)."""
    stages = {name: {"seeds": r.seeds, "test_accuracies": r.test_accuracies.tolist(), "history": r.history,
                     **summary(r.test_accuracies), **seed_range(r.test_accuracies), "documented_accuracy": r.config.spec.documented_accuracy,
                     "compile_seconds": r.compile_seconds, "train_seconds": r.train_seconds, "seeds_at_once": r.models_at_once,
                     "settings": run_settings(r.config)}
              for name, r in results.items()}
    correct = {name: np.asarray(r.test_predictions == data.test_labels, bool) for name, r in results.items()}  # (seeds, images)
    report = {"stages": stages, **with_images(comparisons(stages), correct), "command": command, "device": device_description(),
              "data": data.origin, "jax_version": jax.__version__, "seconds": seconds}
    if write:
        write_json(out / "results.json", report)
        with atomic_write(out / "study_arrays.npz") as tmp:
            write_npz(tmp, _study_arrays(results, data, stages, correct), compress=True)
    return report


def save_grid(grid: dict, path: Path, command: str, seconds: float, add: bool, run_id: str, write: bool = True) -> dict:
    """Write `grid` (`sweep.run_grid`'s record) as `sweep.json`: `grids`, one per command, and `rows`, every model,
    each naming its grid by index. With `add`, appended to the file at `path` unless that holds `run_id`'s grid
    already (a resumed run stopped after writing). Written only with `write` (false in a process of several but the first)."""
    sweep = load_sweep(path) if add and write else {"grids": [], "rows": []}
    if any(g.get("run_id") == run_id for g in sweep["grids"]):
        return sweep
    sweep["rows"] += [row | {"grid": len(sweep["grids"])} for row in grid["rows"]]
    record = {k: v for k, v in grid.items() if k != "rows"}
    sweep["grids"].append(record | {"command": command, "seconds": seconds, "run_id": run_id})
    if write:
        write_json(path, sweep)
    return sweep


def _read(path: Path, script: str, read: Callable[[Path], Any]) -> Any:
    """`read(path)`, what goes wrong a ResultFileError naming `path` and the fault."""
    try:
        return read(path)
    except UNREADABLE as e:
        raise ResultFileError(f"{path} is damaged or not written by {script} ({type(e).__name__}: {e})") from None


def _check_figures(value, where: str = "", key: str = "") -> None:
    """Every number of a record read back finite; every loss, accuracy, epoch, lr and dropout
    (a field so named, or an item of one) a number (not a bool), each accuracy in [0, 1] (a documented one may be
    None: a control's), each loss at least 0; a fault named by its place, as `rows[0].history[1].val_loss`."""
    if isinstance(value, dict):
        for name, item in value.items():
            _check_figures(item, f"{where}.{name}" if where else name, name)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_figures(item, f"{where}[{i}]", key)
    elif key == "documented_accuracy" and value is None:  # a control: the original had no such stage
        return
    elif isinstance(value, float) or key in ("lr", "dropout") or any(part in key for part in ("loss", "accurac", "epoch")):
        if not finite_number(value):
            raise ValueError(f"{where} is {value!r}, not a finite number")
        if "accurac" in key and not 0 <= value <= 1:
            raise ValueError(f"{where} is {value!r}, an accuracy outside [0, 1]")
        if "loss" in key and value < 0:
            raise ValueError(f"{where} is {value!r}, a loss below 0")


def _agrees(stored, computed) -> bool:
    """Whether `stored` (read back) is `computed` again, its numbers to rounding."""
    if isinstance(computed, dict):
        same_keys = isinstance(stored, dict) and stored.keys() == computed.keys()
        return same_keys and all(_agrees(stored[key], computed[key]) for key in computed)
    if isinstance(computed, list):
        return isinstance(stored, list) and len(stored) == len(computed) and all(map(_agrees, stored, computed))
    if isinstance(computed, float):
        return finite_number(stored) and math.isclose(stored, computed, rel_tol=1e-9, abs_tol=1e-12)
    return type(stored) is type(computed) and stored == computed


def _check_history(where: str, history: list[dict], epochs: int) -> None:
    """A model's `epochs` epochs (one at least), numbered from 1, each with every figure of an epoch."""
    numbers = [row["epoch"] for row in history]
    if not epochs or numbers != list(range(1, epochs + 1)):
        raise ValueError(f"{where}: epochs numbered {numbers}, where 1 to {epochs} are expected")
    if missing := {key for row in history for key in GRID_HISTORY_KEYS if key not in row}:
        raise ValueError(f"{where}: epochs without {', '.join(sorted(missing))}")


def _read_study(path: Path) -> dict:
    """`results.json`, refused unless it is what `save_study` writes: every figure a finite
    number, every stage of the same distinct seeds and epochs, and each summary and paired
    difference the one its test accuracies give."""
    report = read_json(path, MAX_JSON_BYTES)
    if not isinstance(report["device"], str) or not report["stages"]:
        raise ValueError("no device or no stages")
    _check_figures(report)
    stages = report["stages"]
    # what most stages and seeds have, which a fault is told from
    [(seeds_of_most, _)] = Counter(tuple(stage["seeds"]) for stage in stages.values()).most_common(1)
    [(epochs_of_most, _)] = Counter(len(history) for stage in stages.values() for history in stage["history"]).most_common(1) or [(0, 0)]
    for name, stage in stages.items():
        if stage["documented_accuracy"] != STAGES[name].documented_accuracy:  # (a known stage, its figure or None)
            raise ValueError(f"{name}: documented accuracy {stage['documented_accuracy']}, not the original's "
                             f"{STAGES[name].documented_accuracy}")
        given = stage.get("settings", run_settings(TrainConfig(name)))  # (a study saved before they were kept: the original's)
        if not _are_settings(name, given):
            raise ValueError(f"{name}: settings {given!r}, not the lr, batch_size, hidden and dropout of its runs")
        seeds = stage["seeds"]
        if tuple(seeds) != seeds_of_most or not all(type(s) is int for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"{name}: seeds {seeds}, where each stage has the same distinct seeds {list(seeds_of_most)}")
        if not len(seeds) == len(stage["test_accuracies"]) == len(stage["history"]) > 0:
            raise ValueError(f"{name}: seeds, test_accuracies and history differ in length")
        for seed, history in zip(seeds, stage["history"]):
            _check_history(f"{name}, seed {seed}", history, epochs_of_most)
        if not _agrees({key: stage[key] for key in ("mean", "std", "ci95")}, summary(stage["test_accuracies"])):
            raise ValueError(f"{name}: not the summary of its test accuracies: mean {stage['mean']}, std {stage['std']}, "
                             f"ci95 {stage['ci95']}")
        spread = seed_range(stage["test_accuracies"])
        if any(key in stage for key in spread) and not _agrees({key: stage.get(key) for key in spread}, spread):
            raise ValueError(f"{name}: min, median and max {[stage.get(key) for key in spread]}, not its test accuracies'")
        stage |= spread  # (a study saved before they were kept)
    for key, differences in comparisons(stages).items():
        stored = [{k: v for k, v in d.items() if k != "images_and_seeds"} if isinstance(d, dict) else d for d in report[key]]
        if not _agrees(stored, differences):
            raise ValueError(f"{key} is not the paired differences of {[(d['from'], d['to']) for d in differences]}")
        for d in report[key]:
            d.setdefault("images_and_seeds", None)  # (a study saved before per-image correctness was kept)
    return report


def _check_header(name: str, shape: tuple, kind: str, found: tuple, dtype: np.dtype) -> None:
    """ValueError unless array `name` is declared of `shape` (None: a length up to MISCLASSIFIED;
    -1: one up to MAX_TEST_IMAGES) and of a dtype of `kind` (numpy's dtype.kind)."""
    most = {None: MISCLASSIFIED, -1: MAX_TEST_IMAGES}
    fits = len(found) == len(shape) and all(f == s or s in most and f <= most[s] for f, s in zip(found, shape))
    if not fits or dtype.kind not in kind or dtype.itemsize > 64:
        raise ValueError(f"{name} is {dtype}{list(found)}, expected {list(shape)} of kind {kind} "
                         f"(None: up to {MISCLASSIFIED}, -1: up to {MAX_TEST_IMAGES})")


def _read_arrays(path: Path, report: dict) -> dict[str, np.ndarray]:
    """What the figures of `report`'s stages read from `study_arrays.npz`, and each seed's
    per-image correctness where kept (`<stage>_correct`, every stage or none), each array read
    only once its header is checked, then its numbers: finite, counts of test images, classes."""
    stages = list(report["stages"])
    specs = {f"{name}_confusion": ((NUM_CLASSES, NUM_CLASSES), "iu") for name in stages}
    specs |= {f"{name}_predictions": ((-1,), "iu") for name in stages}
    specs |= {f"{name}_weights": ((NUM_CLASSES, 784), "f") for name in stages if not STAGES[name].is_mlp}
    with zipfile.ZipFile(path) as archive:
        if kept := [name for name in stages if f"{name}_correct.npy" in archive.namelist()]:
            if kept != stages:
                raise ValueError(f"per-image correctness of {', '.join(kept)}, not of every stage")
            specs |= {f"{name}_correct": ((len(report["stages"][name]["seeds"]), -1), "b") for name in stages}
        if "misclassified_stages.npy" in archive.namelist():
            specs |= {"misclassified_stages": ((2,), "U"), "misclassified_images": ((None, 28, 28), "iuf"),
                      "misclassified_labels": ((None,), "iu"), "misclassified_linear_predictions": ((None,), "iu")}
        arrays = {name: npz_member(archive, name, functools.partial(_check_header, name, *spec)) for name, spec in specs.items()}
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"{name} holds numbers that are not finite")
        if name == "misclassified_images" and array.size and not 0 <= array.min() <= array.max() <= (1 if array.dtype.kind == "f" else 255):
            raise ValueError(f"{name} holds pixels from {array.min()} to {array.max()}, not uint8 values or floats in [0, 1]")
        if name.endswith("_confusion") and array.min() < 0:
            raise ValueError(f"{name} is not counts of test images")
        if name.endswith(("_labels", "_predictions")) and len(array) and not 0 <= array.min() <= array.max() < NUM_CLASSES:
            raise ValueError(f"{name} holds classes outside 0-{NUM_CLASSES - 1}")
    if len({tuple(arrays[f"{name}_confusion"].sum(axis=1).tolist()) for name in stages}) != 1:
        raise ValueError("confusion matrices of different test images: their rows (the true digits) sum differently")
    n = int(arrays[f"{next(iter(stages))}_confusion"].sum())
    if wrong := [name for name in stages if len(arrays[f"{name}_predictions"]) != n]:
        raise ValueError(f"predictions of {', '.join(wrong)} of another number of test images than the confusion matrices' {n}")
    if wrong := [name for name in kept if arrays[f"{name}_correct"].shape[1] != n]:
        raise ValueError(f"per-image correctness of {', '.join(wrong)} of another number of test images than the confusion matrices' {n}")
    if "misclassified_stages" in arrays:
        if len({len(arrays[k]) for k in specs if k.startswith("misclassified_") and k != "misclassified_stages"}) != 1:
            raise ValueError("misclassified_images, _labels and _linear_predictions differ in length")
        if not set(map(str, arrays["misclassified_stages"])) <= set(stages):
            raise ValueError("misclassified_stages names stages not in results.json")
    return arrays


def load_study(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """`results.json` (or the folder holding it) and the `study_arrays.npz` beside it, as `save_study` wrote them."""
    path = _file_in(path, "results.json")
    report = _read(path, "scripts/study.py", _read_study)
    arrays = _read(path.with_name("study_arrays.npz"), "scripts/study.py", lambda p: _read_arrays(p, report))
    _read(path, "scripts/study.py", lambda p: _check_images(report, arrays))
    return report, arrays


def _are_settings(stage: str, given) -> bool:
    """Whether `given` is what `run_settings` gives of a configuration of `stage` that `TrainConfig` accepts."""
    try:
        return run_settings(settings_config(stage, given)) == given
    except (TypeError, ValueError, KeyError):
        return False


def _check_images(report: dict, arrays: dict[str, np.ndarray]) -> None:
    """Each seed's per-image correctness, where kept, gives its test accuracy, and the
    intervals over seeds and images are the ones it gives; none is claimed without it."""
    stages = report["stages"]
    if not all(f"{name}_correct" in arrays for name in stages):
        if any(d["images_and_seeds"] is not None for key in ("steps", "versus_mlp") for d in report[key]):
            raise ValueError("intervals over seeds and images without the per-image correctness they are computed from")
        return
    correct = {name: arrays[f"{name}_correct"] for name in stages}
    for name, stage in stages.items():
        found = correct[name].mean(axis=1, dtype=np.float64)
        if not np.allclose(found, stage["test_accuracies"], rtol=0, atol=1e-6):
            raise ValueError(f"{name}: per-image correctness of accuracies {found.tolist()}, not its test accuracies")
        confusion, predictions = arrays[f"{name}_confusion"], arrays[f"{name}_predictions"]  # all of the first seed
        if not (np.array_equal(confusion.sum(axis=0), np.bincount(predictions, minlength=NUM_CLASSES))
                and np.array_equal(np.diag(confusion), np.bincount(predictions[correct[name][0]], minlength=NUM_CLASSES))):
            raise ValueError(f"{name}: a confusion matrix that is not the first seed's predictions and correct test images")
    for key, differences in with_images(comparisons(stages), correct).items():
        if not _agrees(report[key], differences):
            raise ValueError(f"{key}: intervals over seeds and images that are not the ones its per-image correctness gives")


def _read_sweep(path: Path) -> dict:
    """`sweep.json`, refused unless it is what `save_grid` writes: every figure a finite
    number, each row's history its grid's epochs with its test accuracy and best validation
    epoch, each setting of a grid with each of the grid's seeds once (a question pairs them)."""
    sweep = read_json(path, MAX_JSON_BYTES)
    grids = sweep["grids"]
    if not grids or not sweep["rows"] or not all(
            isinstance(g["command"], str) and isinstance(g["device"], str) and type(g["epochs"]) is int for g in grids):
        raise ValueError("no grids, no rows, or a grid without its command, device or epochs")
    _check_figures(sweep)
    seeds: dict[tuple, list[int]] = {}  # (grid, stage, lr, dropout, hidden) -> its seeds
    for i, row in enumerate(sweep["rows"]):
        STAGES[row["stage"]]  # noqa: B018  (a known stage)
        where = f"rows[{i}] ({row['stage']} seed {row['seed']})"
        if type(row["grid"]) is not int or not 0 <= row["grid"] < len(grids):
            raise ValueError(f"{where}: grid {row['grid']!r}, not one in the file")
        _check_history(where, row["history"], grids[row["grid"]]["epochs"])
        if row["test_accuracy"] != row["history"][-1]["test_accuracy"] or row["best_val_epoch"] != best_val_epoch(row["history"]):
            raise ValueError(f"{where}: a test accuracy or best validation epoch that is not its history's")
        if (type(row["seed"]) is not int or not row["lr"] > 0 or not 0 <= row["dropout"] < 1
                or not (row["hidden"] is None or type(row["hidden"]) is int and row["hidden"] > 0)):
            raise ValueError(f"{where}: a seed, lr, dropout or hidden width that no grid has")
        seeds.setdefault((row["grid"], row["stage"], row["lr"], row["dropout"], row["hidden"]), []).append(row["seed"])
    for (grid, stage, lr, dropout, hidden), found in seeds.items():
        every = sorted({s for key, other in seeds.items() if key[0] == grid for s in other})
        if sorted(found) != every:
            raise ValueError(f"grid {grid}, {stage} at lr {lr:g}, dropout {dropout:g}, hidden {hidden}: seeds {sorted(found)}, "
                             f"where each setting of the grid has each of {every} once")
    return sweep


def load_sweep(path: str | os.PathLike) -> dict:
    """`sweep.json` (or the folder holding it) as `save_grid` wrote it."""
    return _read(_file_in(path, "sweep.json"), "scripts/sweep.py", _read_sweep)


def _file_in(path: str | os.PathLike, name: str) -> Path:
    """`path`, or the file `name` in it where it is a folder."""
    return Path(path) / name if Path(path).is_dir() else Path(path)
