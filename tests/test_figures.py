"""Every figure drawn from the committed results keeps every plotted value inside its axes.

`outside(fig)` names each piece of plotted data beyond its Axes' x or y limits: every Line2D's
points (an `axhline`/`axvline` in its data coordinate only), every collection (an errorbar's
bars, a scatter's points, a `fill_between` band), every patch (bars, boxes) and every image's
extent; an inset is checked as an Axes of its own, a log axis in log space. Each figure
function returns its open Figure when given no path, so the check runs in-process on the
very figure `make_assets.py` would save.
"""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import ROOT  # noqa: E402
from mnist_jax import plots  # noqa: E402
from mnist_jax.results import load_study, load_sweep  # noqa: E402
from mnist_jax.sweep import answers  # noqa: E402


def _within(values, limits, log: bool) -> bool:
    values = np.asarray(values, dtype=float).ravel()
    values = values[np.isfinite(values)]
    lo, hi = sorted(limits)
    if log:
        if (values <= 0).any():
            return False
        values, lo, hi = np.log10(values), np.log10(lo), np.log10(hi)
    slack = 1e-9 * (hi - lo)
    return bool(((values >= lo - slack) & (values <= hi + slack)).all())


def _all_axes(fig):
    pending = list(fig.axes)
    while pending:
        ax = pending.pop()
        pending += [child for child in ax.child_axes if child not in fig.axes]
        yield ax


def outside(fig) -> list[str]:
    """Each piece of `fig`'s plotted data that lies outside its Axes' limits, named."""
    found = []
    for ax in _all_axes(fig):
        if hasattr(ax, "_colorbar"):
            continue  # a colour bar's own gradient, not data
        xlim, ylim = ax.get_xlim(), ax.get_ylim()
        xlog, ylog = ax.get_xscale() == "log", ax.get_yscale() == "log"
        name = ax.get_title() or ax.get_label() or "an axes"

        def check(what, xs=None, ys=None):
            if xs is not None and not _within(xs, xlim, xlog):
                found.append(f"{name}: {what} has x outside {xlim}")
            if ys is not None and not _within(ys, ylim, ylog):
                found.append(f"{name}: {what} has y outside {ylim}")

        for line in ax.get_lines():
            transform, (xs, ys) = line.get_transform(), line.get_data()
            if transform == ax.get_yaxis_transform():  # axhline: x in axes coordinates
                check(f"line {line.get_label()!r}", ys=ys)
            elif transform == ax.get_xaxis_transform():  # axvline
                check(f"line {line.get_label()!r}", xs=xs)
            else:
                check(f"line {line.get_label()!r}", xs, ys)
        for collection in ax.collections:
            what = f"{type(collection).__name__} {collection.get_label()!r}"
            offsets = np.asarray(collection.get_offsets())
            if len(offsets) and collection.get_offset_transform() == ax.transData:  # scatter points
                check(what, offsets[:, 0], offsets[:, 1])
            elif collection.get_transform() == ax.transData:  # errorbar bars, bands
                vertices = [p.vertices for p in collection.get_paths() if len(p.vertices)]
                if vertices:
                    points = np.concatenate(vertices)
                    check(what, points[:, 0], points[:, 1])
        for patch in ax.patches:
            points = patch.get_path().transformed(patch.get_patch_transform()).vertices
            if patch.get_transform() == patch.get_patch_transform() + ax.transData:
                check(f"patch {type(patch).__name__}", points[:, 0], points[:, 1])
        for image in ax.get_images():
            left, right, bottom, top = image.get_extent()
            check("image", [left, right], [bottom, top])
    return found


def test_outside_finds_data_cut_off_by_a_limit_on_linear_and_log_axes():
    fig, (a, b, c) = plt.subplots(1, 3)
    a.plot([1, 2, 3], [1, 2, 3])
    a.set_ylim(1.5, 3)
    b.bar([0, 1], [0.1, 10])
    b.set(yscale="log", ylim=(0.5, 20))
    c.imshow(np.zeros((4, 4)))
    c.errorbar([1], [1], yerr=[5])
    c.scatter([100], [1])
    c.axhline(50)
    c.set(xlim=(-0.5, 3.5), ylim=(3.5, -0.5))  # the image's own limits: the rest beyond them
    problems = outside(fig)
    plt.close(fig)
    assert any("line" in p and "y outside" in p for p in problems)
    assert any("patch" in p for p in problems)  # the log axis cuts off the bar from 0.1 (and from 0)
    assert any("LineCollection" in p for p in problems) and any("PathCollection" in p for p in problems)
    assert any("line '_child" in p for p in problems)  # the axhline at 50 above the image's rows


def test_outside_passes_data_inside_and_reference_lines():
    fig, ax = plt.subplots()
    ax.plot([1, 10, 100], [1, 2, 3], marker="o")
    ax.fill_between([1, 100], [0.5, 0.5], [3.5, 3.5])
    ax.axhline(2)
    ax.set(xscale="log")
    assert outside(fig) == []
    plt.close(fig)


@pytest.fixture(scope="module")
def committed():
    """Every committed result a figure is drawn from, read once."""
    results, arrays = load_study(ROOT / "assets" / "results.json")
    sweep = load_sweep(ROOT / "assets" / "sweep.json")
    return {"results": results, "arrays": arrays, "found": answers(sweep), "device": sweep["grids"][0]["device"],
            "compare": json.loads((ROOT / "assets" / "compare.json").read_text()),
            "benchmark": json.loads((ROOT / "assets" / "benchmark_cpu_amd-epyc-f26m2-avx512.json").read_text()),
            "linearity": json.loads((ROOT / "assets" / "linearity.json").read_text())}


PAIR = lambda c: [str(s) for s in c["arrays"]["misclassified_stages"]]  # noqa: E731
FIGURES = {
    "training_curves": lambda c: plots.training_curves(c["results"], None),
    "comparison_chart": lambda c: plots.comparison_chart(c["results"], None),
    "evolution_diagram": lambda c: plots.evolution_diagram(None),
    "weight_templates": lambda c: plots.weight_templates(c["arrays"], None, "seed 0"),
    "confusion_matrices": lambda c: plots.confusion_matrices(c["arrays"], None, PAIR(c), "seed 0"),
    "misclassified": lambda c: plots.misclassified(c["arrays"], None),
    "sweep_dropout": lambda c: plots.sweep_dropout(c["found"]["dropout"], c["device"], None),
    "sweep_learning_rates": lambda c: plots.sweep_learning_rates(c["found"], c["device"], None),
    "framework_comparison": lambda c: plots.framework_comparison(c["compare"], None, c["benchmark"]),
    "framework_comparison_without_benchmark": lambda c: plots.framework_comparison(c["compare"], None),
    "width_sweep": lambda c: plots.width_sweep(c["linearity"], None),
}


@pytest.mark.parametrize("name", FIGURES)
def test_every_plotted_value_of_each_committed_figure_lies_inside_its_axes(committed, name):
    fig = FIGURES[name](committed)
    try:
        assert outside(fig) == []
        assert any(ax.lines or ax.collections or ax.patches or ax.images for ax in fig.axes)
    finally:
        plt.close(fig)


def test_every_figure_names_its_seeds_epochs_and_device(committed):
    """The words a reader needs to judge a figure are on it: its title or its axes' titles."""
    for name in ("training_curves", "comparison_chart", "sweep_dropout", "framework_comparison", "width_sweep"):
        fig = FIGURES[name](committed)
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
        text = " ".join([fig.get_suptitle(), *(ax.get_title() for ax in fig.axes), *(t.get_text() for g in legends for t in g.texts)])
        plt.close(fig)
        assert "seed" in text and "epoch" in text and "cpu" in text, (name, text)


def test_make_assets_draws_the_comparison_and_width_figures_from_their_committed_json(tmp_path):
    from conftest import run_script_in_process

    proc = run_script_in_process("make_assets.py", "--compare", ROOT / "assets", "--benchmark", ROOT / "assets" / "benchmark_cpu_amd-epyc-f26m2-avx512.json",
                                 "--linearity", ROOT / "assets", "--out", tmp_path / "figures")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == ["framework_comparison.png", "width_sweep.png"]


def test_make_assets_refuses_a_benchmark_without_its_comparison_and_damaged_json(tmp_path, refused):
    assert "--benchmark: only with --compare" in refused("make_assets.py", "--benchmark", ROOT / "assets" / "benchmark_cpu_amd-epyc-f26m2-avx512.json",
                                                          "--linearity", ROOT / "assets", "--out", tmp_path / "a")
    (tmp_path / "linearity.json").write_text('{"width_sweep": []}')
    assert "damaged" in refused("make_assets.py", "--linearity", tmp_path / "linearity.json", "--out", tmp_path / "b")


@pytest.mark.parametrize("option, name", [("--results", "results.json"), ("--sweep", "sweep.json"), ("--linearity", "linearity.json")])
def test_make_assets_refuses_an_empty_name_for_its_results_as_an_argument(refused, option, name):
    """(`--results ""` ended in a traceback: a hostile user's case.)"""
    assert refused("make_assets.py", option, "").endswith(f"argument {option}: expected {name} or its folder, got ''")


def test_make_assets_refuses_a_benchmark_that_did_not_time_every_stage_compared(tmp_path, refused):
    """(The time axis had no point to scale to: a traceback, exit 1.) The committed benchmark of the three MLPs alone
    beside the committed comparison of the five stages; a benchmark whose stages are no records."""
    compare = ["--compare", ROOT / "assets" / "compare.json", "--out", tmp_path / "figures"]
    line = refused("make_assets.py", *compare, "--benchmark", ROOT / "assets" / "zen2_repeat" / "benchmark.json")
    assert line.endswith("benchmark.json times no loop on every stage of " + str(ROOT / "assets" / "compare.json")
                         + " (linear_mse, linear_ce, mlp, mlp_dropout, mlp_bn): give a benchmark of those stages")
    (tmp_path / "benchmark.json").write_text(json.dumps({"stages": [1], "seeds": 1, "epochs": 1, "rounds": 1, "device": "cpu"}))
    assert refused("make_assets.py", *compare, "--benchmark", tmp_path / "benchmark.json").endswith(
        "benchmark.json is damaged: no stages of timed loops")
    compared = json.loads((ROOT / "assets" / "compare.json").read_text())
    for row in compared["stages"]:
        del row["stage"]
    (tmp_path / "compare.json").write_text(json.dumps(compared))  # (was blamed on the benchmark beside it)
    assert refused("make_assets.py", "--compare", tmp_path / "compare.json", "--out", tmp_path / "figures",
                   "--benchmark", ROOT / "assets" / "benchmark_cpu_amd-epyc-f26m2-avx512.json").endswith(
        "compare.json is damaged: its stages are not records of named stages")
    assert not (tmp_path / "figures").exists()


def test_make_assets_names_a_link_on_the_way_to_its_results_that_leads_nowhere_or_to_itself(tmp_path, refused):
    """(Both were told as results not found, with the advice to run the script that writes them.)"""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "gone.json").symlink_to(tmp_path / "nowhere.json")
    assert refused("make_assets.py", "--results", tmp_path / "loop" / "results.json").endswith(
        f"study_arrays.npz cannot be read: {tmp_path / 'loop'} is a link to {tmp_path / 'loop'}, which the system cannot "
        "follow (a loop, or too many links)")
    assert refused("make_assets.py", "--sweep", tmp_path / "gone.json").endswith(
        f"gone.json cannot be read: a link to {tmp_path / 'nowhere.json'}, which does not exist")
