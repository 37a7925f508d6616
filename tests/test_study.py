"""Many seeds train at once under vmap, exactly as one seed trains alone."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import ROOT, run_script
from mnist_jax import plots
from mnist_jax.study import mean_ci95, save_study, step_differences, train_seeds
from mnist_jax.train import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_seeds(tiny):
    """`linear_ce`, seeds 3 and 7 together, 2 epochs on synthetic digits, in float64."""
    with jax.enable_x64(True):
        return train_seeds(TrainConfig("linear_ce", epochs=2), tiny, [3, 7])


@pytest.mark.parametrize("stage", ["linear_ce", pytest.param("mlp_dropout", marks=pytest.mark.slow)])
def test_a_vmapped_seed_trains_exactly_like_the_same_seed_alone(tiny, tiny_seeds, stage):
    """In float64, where agreement shows the same computation: in float32, batched and
    single matmuls round differently and Adam amplifies it (one epoch of seed 7 on the
    full training set ended 2 of 10,000 test images apart)."""
    with jax.enable_x64(True):
        together = tiny_seeds if stage == "linear_ce" else train_seeds(TrainConfig(stage, epochs=2), tiny, [3, 7])
        alone = train(dataclasses.replace(together.config, seed=7), tiny)
    assert together.test_accuracies[1] == pytest.approx(alone.test_accuracy, abs=1e-12)
    for row_v, row_a in zip(together.history[1], alone.history, strict=True):
        assert row_v["val_accuracy"] == pytest.approx(row_a["val_accuracy"], abs=1e-12)
        assert row_v["train_loss"] == pytest.approx(row_a["train_loss"], rel=1e-10)
    params = jax.tree.map(lambda a: a[1], together.final_params)
    assert jax.tree.leaves(params)[0].dtype == np.float64
    for v, a in zip(jax.tree.leaves(params), jax.tree.leaves(nnx.to_pure_dict(alone.final.params)), strict=True):
        np.testing.assert_allclose(v, a, rtol=1e-10, atol=1e-12)
    kernels = jax.tree.leaves(together.final_params)[-1]
    assert not np.allclose(kernels[0], kernels[1])  # two seeds, two models


def test_ci95_and_paired_step_differences():
    mean, std, (lo, hi) = mean_ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (mean, std) == (3.0, pytest.approx(1.5811, abs=1e-4))
    assert (lo, hi) == (pytest.approx(3 - 2.7764 * 1.5811 / 5**0.5, abs=1e-3), pytest.approx(3 + 2.7764 * 1.5811 / 5**0.5, abs=1e-3))
    stages = {"a": {"test_accuracies": [0.90, 0.91, 0.92]}, "b": {"test_accuracies": [0.95, 0.955, 0.97]},
              "c": {"test_accuracies": [0.96, 0.95, 0.97]}}
    steps = step_differences(stages)
    assert [(s["from"], s["to"]) for s in steps] == [("a", "b"), ("b", "c")]
    assert steps[0]["difference"] == pytest.approx((0.05 + 0.045 + 0.05) / 3) and steps[0]["significant"]
    assert not steps[1]["significant"]  # +0.01, -0.005, 0.0: the interval holds zero


@pytest.mark.slow
def test_make_assets_without_results_says_so(tmp_path):
    proc = run_script("make_assets.py", "--results", tmp_path / "results.json")
    assert proc.returncode == 2 and "run scripts/study.py first" in proc.stderr


def test_a_study_saves_its_results_and_the_arrays_its_figures_need(tiny, tiny_seeds, tmp_path):
    report = save_study({"linear_ce": tiny_seeds}, tiny, tmp_path, "python scripts/study.py", 1.0)
    assert json.loads((tmp_path / "results.json").read_text()) == report
    assert report["stages"]["linear_ce"]["test_accuracies"] == tiny_seeds.test_accuracies.tolist()
    arrays = dict(np.load(tmp_path / "study_arrays.npz"))
    assert arrays["linear_ce_confusion"].sum() == len(tiny.test_labels)
    assert arrays["linear_ce_weights"].shape == (10, 784)


FIGURES = {
    "comparison_chart.png": lambda report, arrays, path: plots.comparison_chart(report, path),
    "weight_templates.png": lambda report, arrays, path: plots.weight_templates(arrays, path),
    "evolution_diagram.png": lambda report, arrays, path: plots.evolution_diagram(path),
    "training_curves.png": lambda report, arrays, path: plots.training_curves(report, path),
    "confusion_matrices.png": lambda report, arrays, path: plots.confusion_matrices(
        arrays, path, [str(s) for s in arrays["misclassified_stages"]]
    ),
    "misclassified.png": lambda report, arrays, path: plots.misclassified(arrays, path),
}
SLOWER = ("training_curves.png", "confusion_matrices.png", "misclassified.png")  # about a second each


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOWER else n for n in FIGURES])
def test_every_figure_draws_from_the_committed_study(name, tmp_path):
    report = json.loads((ROOT / "assets" / "results.json").read_text())
    arrays = dict(np.load(ROOT / "assets" / "study_arrays.npz"))
    FIGURES[name](report, arrays, tmp_path / name)
    assert (tmp_path / name).stat().st_size > 5_000
