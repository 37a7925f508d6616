"""The interval over seeds and test images (`results.images_and_seeds`, a paired bootstrap)
against known cases: synthetic per-image correctness, no training, no MNIST."""

import json
import time

import numpy as np
import pytest

from conftest import ROOT
from mnist_jax.results import RESAMPLE_SEED, RESAMPLES, images_and_seeds, load_study, paired_difference, seed_range

KINDS = np.array([0.10, 0.05, 0.85])  # images b gets right more often, a does, both alike


def draw(rng, seeds: int, images: int, sharp: bool):
    """Per-image correctness of two models, a and b, over `seeds` seeds, and the true mean
    difference b - a over images and seeds. Each image is of a kind: b better, a better or
    neither. `sharp`: each model gets an image right or wrong whatever its seed (what the
    images are decides the difference); else a coin per seed and image decides much of it
    (seed-to-seed flips). Each seed of b also shifts its accuracy a little (a seed effect)."""
    if sharp:
        a, b = np.array([0.02, 0.98, 0.99]), np.array([0.98, 0.02, 0.99])
    else:
        a, b = np.array([0.5, 0.9, 0.95]), np.array([0.9, 0.5, 0.95])
    kind = rng.choice(3, images, p=KINDS)
    shift = rng.normal(0, 0.01, (seeds, 1))
    return {"a": rng.random((seeds, images)) < a[kind], "b": rng.random((seeds, images)) < b[kind] + shift}, float(KINDS @ (b - a))


def coverage(sharp: bool, repeats: int = 200) -> float:
    rng = np.random.default_rng(7)
    hits = 0
    for repeat in range(repeats):
        correct, true = draw(rng, 10, 300, sharp)
        lo, hi = images_and_seeds(correct, [("a", "b")], resamples=300, rng_seed=repeat)[0]["ci95"]
        hits += lo <= true <= hi
    return hits / repeats


def test_identical_models_differ_by_exactly_zero_with_a_zero_width_interval():
    correct = np.random.default_rng(0).random((10, 1000)) < 0.97
    found = images_and_seeds({"a": correct, "b": correct.copy()}, [("a", "b")])
    assert found == [{"difference": 0.0, "ci95": [0.0, 0.0], "significant": False, "resamples": RESAMPLES, "rng_seed": RESAMPLE_SEED}]


def test_the_same_correctness_gives_the_same_interval_and_every_comparison_shares_the_draws():
    """Reproducible (a fixed generator seed), and paired: b - a is minus a - b exactly."""
    rng = np.random.default_rng(1)
    correct = {"a": rng.random((10, 2000)) < 0.92, "b": rng.random((10, 2000)) < 0.97}
    forth, back = images_and_seeds(correct, [("a", "b"), ("b", "a")])
    assert forth == images_and_seeds(correct, [("a", "b")])[0]
    assert forth["ci95"] == pytest.approx([-back["ci95"][1], -back["ci95"][0]], abs=1e-15) and forth["difference"] == -back["difference"]
    assert forth["difference"] == pytest.approx(paired_difference(correct["a"].mean(1), correct["b"].mean(1))["difference"], abs=1e-12)
    assert forth["ci95"][0] < forth["difference"] < forth["ci95"][1] and forth["significant"]


def test_where_the_images_decide_the_interval_covers_the_true_difference_95_times_in_100():
    assert 0.92 <= coverage(sharp=True) <= 0.98


def test_where_seed_to_seed_flips_decide_it_covers_it_at_least_95_times_in_100():
    """The bootstrap resamples a flip both with its image and with its seed: conservative
    (Owen 2007, the pigeonhole bootstrap), never narrower than it should be."""
    assert coverage(sharp=False) >= 0.95


def test_the_interval_over_seeds_and_images_is_wider_where_the_seeds_agree_closely():
    """Ten seeds of each model nearly alike (1 image in 1,000 flipped per seed): the seeds'
    interval is narrow, the test images' own uncertainty is not."""
    rng = np.random.default_rng(2)
    a, b = (rng.random(10_000) < p for p in (0.975, 0.978))
    flip = lambda model: model ^ (rng.random((10, 10_000)) < 0.001)  # noqa: E731
    correct = {"a": flip(a), "b": flip(b)}
    seeds = paired_difference(correct["a"].mean(1), correct["b"].mean(1))["ci95"]
    both = images_and_seeds(correct, [("a", "b")])[0]["ci95"]
    assert both[1] - both[0] > 3 * (seeds[1] - seeds[0])
    assert both[0] < seeds[0] and seeds[1] < both[1]


def test_ten_seeds_of_10000_images_take_seconds_not_minutes():
    rng = np.random.default_rng(3)
    correct = {name: rng.random((10, 10_000)) < 0.97 for name in "abcde"}
    start = time.perf_counter()
    images_and_seeds(correct, [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("a", "e"), ("c", "e")])
    assert time.perf_counter() - start < 10


def test_a_study_saved_before_per_image_correctness_was_kept_loads_with_the_interval_unavailable(tmp_path):
    """The committed study as it was saved before: no per-image correctness, no interval over images, no min/median/max."""
    older = json.loads((ROOT / "assets" / "results.json").read_text())
    for d in older["steps"] + older["versus_mlp"]:
        del d["images_and_seeds"]
    for stage in older["stages"].values():
        for key in ("min", "median", "max"):
            del stage[key]
    (tmp_path / "results.json").write_text(json.dumps(older))
    with np.load(ROOT / "assets" / "study_arrays.npz") as arrays:
        np.savez(tmp_path / "study_arrays.npz", **{k: v for k, v in arrays.items() if not k.endswith("_correct")})
    report, arrays = load_study(tmp_path / "results.json")
    assert not any(name.endswith("_correct") for name in arrays)
    assert all(d["images_and_seeds"] is None for key in ("steps", "versus_mlp") for d in report[key])
    for stage in report["stages"].values():
        assert {key: stage[key] for key in ("min", "median", "max")} == seed_range(stage["test_accuracies"])
        assert stage["min"] <= stage["median"] <= stage["max"]


def test_stages_of_different_seeds_or_images_are_refused():
    with pytest.raises(ValueError, match=r"shapes \[\(2, 5\), \(3, 5\)\], where \(seeds, test images\) of every stage alike"):
        images_and_seeds({"a": np.ones((2, 5), bool), "b": np.ones((3, 5), bool)}, [("a", "b")])
