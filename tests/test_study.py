"""Many seeds train in one program, each exactly as it trains alone."""

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import ROOT, assert_one_line_error, enable_x64, load_script, npz_with_header, run_script_in_process
from mnist_jax import data
from mnist_jax.files import LOCK
from mnist_jax import memory, plots, sharding
from mnist_jax.errors import ResultFileError
from mnist_jax.progress import GridProgress
from mnist_jax.results import comparisons, load_study, load_sweep, save_study, summary
from mnist_jax.study import _parts, compile_chunk, fitting_chunk, kept_results, train_seeds
from mnist_jax.train import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_seeds(tiny):
    """`linear_ce`, seeds 3 and 7 together, 2 epochs on synthetic digits, in float64."""
    with enable_x64(True):
        return train_seeds(TrainConfig("linear_ce", epochs=2), tiny, [3, 7])


@pytest.mark.parametrize("stage", ["linear_ce", pytest.param("mlp_dropout", marks=pytest.mark.slow)])
def test_a_seed_of_a_study_trains_exactly_like_the_same_seed_alone(tiny, tiny_seeds, stage):
    """In float64, where agreement shows the same computation whichever way the backend
    trains the seeds of a program (`lax.map` here; under `jax.vmap`, in float32, batched
    and single matmuls round differently and Adam amplifies it)."""
    with enable_x64(True):
        together = tiny_seeds if stage == "linear_ce" else train_seeds(TrainConfig(stage, epochs=2), tiny, [3, 7])
        alone = train(dataclasses.replace(together.config, seed=7), tiny)
    assert together.test_accuracies[1] == pytest.approx(alone.test_accuracy, abs=1e-12)
    for row_v, row_a in zip(together.history[1], alone.history, strict=True):
        assert row_v["val_accuracy"] == pytest.approx(row_a["val_accuracy"], abs=1e-12)
        assert row_v["train_loss"] == pytest.approx(row_a["train_loss"], rel=1e-10)
    params = jax.tree.map(lambda a: a[1], together.final_params)
    assert jax.tree.leaves(params)[0].dtype == np.float64
    for v, a in zip(jax.tree.leaves(params), jax.tree.leaves(alone.final.params), strict=True):
        np.testing.assert_allclose(v, a, rtol=1e-10, atol=1e-12)
    kernels = jax.tree.leaves(together.final_params)[-1]
    assert not np.allclose(kernels[0], kernels[1])  # two seeds, two models


@pytest.mark.parametrize("saved_at_once, resumed_at_once", [(4, 2), (2, 4)], ids=["fewer at once", "more at once"])
def test_a_grid_resumed_with_another_number_of_models_at_once_goes_on_from_the_epochs_saved(
        tiny, tmp_path, saved_at_once, resumed_at_once):
    """As when memory differs on resuming: chunks saved 4 at once are read as two of 2 (resumed with less memory, a study
    trained its seeds again from epoch 1 without a word, its saved epochs unread: a hostile user's case), and chunks of 2
    stay as saved when 4 fit. Each model walked through alone (lax.map), so it ends exactly as trained through."""
    config, seeds = TrainConfig("linear_ce", epochs=2), [0, 1, 2, 3]
    stopped = GridProgress(tmp_path, {"script": "test"})
    stopped.start()
    train_seeds(dataclasses.replace(config, epochs=1), tiny, seeds, models_at_once=saved_at_once, vmapped=False, progress=stopped)
    resumed = train_seeds(config, tiny, seeds, models_at_once=resumed_at_once, vmapped=False, progress=GridProgress(tmp_path, {"script": "test"}))
    whole = train_seeds(config, tiny, seeds, vmapped=False)
    assert list(resumed.epoch_seconds) == [2]  # epoch 1 read, not trained
    assert resumed.history == whole.history
    np.testing.assert_array_equal(resumed.test_accuracies, whole.test_accuracies)
    for a, b in zip(jax.tree.leaves(resumed.final_params), jax.tree.leaves(whole.final_params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_chunk_saved_with_the_most_epochs_of_a_model_decides_the_part_it_resumes_in():
    """Parts of (first, size, (first, size) of the chunk read); saved chunks as (first, size, epochs saved)."""
    assert _parts(5, 2, []) == [(0, 2, (0, 2)), (2, 2, (2, 2)), (4, 1, (4, 1))]  # nothing saved: as many as fit, the rest
    assert _parts(4, 2, [(0, 4, 3)]) == [(0, 2, (0, 4)), (2, 2, (0, 4))]  # fewer fit now: read in parts
    assert _parts(4, 4, [(0, 2, 3), (2, 2, 1)]) == [(0, 2, (0, 2)), (2, 2, (2, 2))]  # more fit now: as saved
    assert _parts(4, 4, [(0, 4, 13), (0, 2, 20)]) == [(0, 2, (0, 2)), (2, 2, (0, 4))]  # resumed in parts, stopped again
    assert _parts(4, 4, [(0, 4, 20), (0, 2, 13)]) == [(0, 4, (0, 4))]  # (whichever file is newer, as a copy leaves them)
    assert _parts(6, 4, [(2, 2, 1)]) == [(0, 2, (0, 2)), (2, 2, (2, 2)), (4, 2, (4, 2))]  # fresh parts end where a saved one starts
    assert _parts(8, 8, [(2, 4, 3)], granule=4) == [(0, 8, (0, 8))]  # one that would leave a device without models: unread


@pytest.mark.slow
def test_seeds_that_do_not_fit_at_once_train_in_chunks_with_the_same_results(tiny, monkeypatch):
    """Memory capped between what 2 and 3 seeds at once need, per XLA: four seeds train
    as two chunks of two, equal to the four trained together (in float64, as above:
    in float32 a batch of 2 seeds rounds differently from a batch of 4)."""
    config = TrainConfig("linear_ce", epochs=2)
    with enable_x64(True):
        together = train_seeds(config, tiny, [0, 1, 2, 3])
        two, three = (compile_chunk(config, tiny, n).bytes for n in (2, 3))
        kept = kept_results(config, tiny, 4)  # (every model's results, kept on the host beside the chunks)
        monkeypatch.setenv(memory.LIMIT_ENV, str((two + three) // 2 + kept[1]))
        assert fitting_chunk(config, tiny, 4, kept=kept).size == 2
        epochs_seen = []
        chunked = train_seeds(config, tiny, [0, 1, 2, 3], on_epoch=lambda done, total: epochs_seen.append((done, total)))
    assert epochs_seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert chunked.seeds == [0, 1, 2, 3]
    assert list(chunked.epoch_seconds) == [1, 2] and 0 < sum(chunked.epoch_seconds.values()) <= chunked.train_seconds  # both chunks'
    for rows_c, rows_t in zip(chunked.history, together.history, strict=True):
        for row_c, row_t in zip(rows_c, rows_t, strict=True):
            assert row_c == pytest.approx(row_t, rel=1e-12)
    np.testing.assert_array_equal(chunked.test_predictions, together.test_predictions)
    for a, b in zip(jax.tree.leaves(chunked.final_params), jax.tree.leaves(together.final_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    monkeypatch.setenv(memory.LIMIT_ENV, str(compile_chunk(config, tiny, 1).bytes // 2))
    with pytest.raises(memory.DoesNotFit, match="1 model, beside the results of all 2, need about"):
        train_seeds(config, tiny, [0, 1])


@pytest.mark.slow
def test_under_several_processes_chunks_that_fit_are_multiples_of_every_device(tiny, monkeypatch):
    """Each process must hold models of every chunk (`sharding.chunk_granule`: here 2, as 2 processes of one device each
    would make it): a memory cap that fits 5 models but not 6, or 3 but not 4, yields chunks of 4, or 2; one under 2 refuses."""
    config = TrainConfig("linear_ce", epochs=1)
    monkeypatch.setattr(sharding, "chunk_granule", lambda: 2)
    need = {n: compile_chunk(config, tiny, n).bytes for n in (2, 3, 4, 5, 6)}
    for cap, size in ((need[5] + need[6]) // 2, 4), ((need[3] + need[4]) // 2, 2):
        monkeypatch.setenv(memory.LIMIT_ENV, str(cap))
        assert fitting_chunk(config, tiny, 6).size == size
    monkeypatch.setenv(memory.LIMIT_ENV, str(need[2] // 2))
    with pytest.raises(memory.DoesNotFit, match="2 models, need about"):
        fitting_chunk(config, tiny, 6)


def test_ci95_and_paired_step_differences():
    mean, std, (lo, hi) = summary([1.0, 2.0, 3.0, 4.0, 5.0]).values()
    assert (mean, std) == (3.0, pytest.approx(1.5811, abs=1e-4))
    assert (lo, hi) == (pytest.approx(3 - 2.7764 * 1.5811 / 5**0.5, abs=1e-3), pytest.approx(3 + 2.7764 * 1.5811 / 5**0.5, abs=1e-3))
    stages = {"a": {"seeds": [0, 1, 2], "test_accuracies": [0.90, 0.91, 0.92]},
              "b": {"seeds": [0, 1, 2], "test_accuracies": [0.95, 0.955, 0.97]},
              "c": {"seeds": [0, 1, 2], "test_accuracies": [0.96, 0.95, 0.97]}}
    steps = comparisons(stages)["steps"]
    assert [(s["from"], s["to"]) for s in steps] == [("a", "b"), ("b", "c")]
    assert steps[0]["difference"] == pytest.approx((0.05 + 0.045 + 0.05) / 3) and steps[0]["significant"]
    assert not steps[1]["significant"]  # +0.01, -0.005, 0.0: the interval holds zero
    stages["c"]["seeds"] = [0, 1, 3]
    with pytest.raises(ValueError, match=r"stages ran different seeds \(\[0, 1, 2\], \[0, 1, 3\]\): a difference pairs the same seeds"):
        comparisons(stages)


def first_seed(result, stage: str | None = None, loss: float = 0.0, labels: np.ndarray | None = None):
    """The first seed of a trained grid alone; as `stage` (its figures are what is
    compared here), `loss` taken from its test accuracy by making so many of its right
    answers on the test images (`labels`) wrong."""
    config = TrainConfig(stage, epochs=result.config.epochs) if stage else result.config
    predictions = result.test_predictions[:1].copy()
    if loss:
        wrong = np.flatnonzero(predictions[0] == labels)[:round(loss * len(labels))]
        predictions[0, wrong] = (labels[wrong] + 1) % 10
    return dataclasses.replace(result, config=config, points=result.points[:1], history=result.history[:1],
                               test_accuracies=result.test_accuracies[:1] - loss, test_predictions=predictions,
                               final_params=jax.tree.map(lambda a: a[:1], result.final_params))


def test_a_study_of_one_seed_has_no_interval_and_calls_no_step_significant(tiny, tiny_seeds, tmp_path, capsys):
    """One seed has no spread: no interval, n/a where the table prints one, and a
    difference of 5 points that is not called significant (was a zero-width interval, "yes")."""
    assert summary([0.97]) == {"mean": 0.97, "std": None, "ci95": None}
    results = {"linear_ce": first_seed(tiny_seeds, loss=0.05, labels=tiny.test_labels), "mlp": first_seed(tiny_seeds, "mlp")}
    report = save_study(results, tiny, tmp_path, "python scripts/study.py --seeds 1", 1.0)
    assert report["stages"]["mlp"]["std"] is None and report["stages"]["mlp"]["ci95"] is None
    images = report["steps"][0].pop("images_and_seeds")
    assert report["steps"] == [{"from": "linear_ce", "to": "mlp", "difference": pytest.approx(0.05), "ci95": None, "significant": None}]
    # one seed still has test images to resample: 50 of 1,000 answers better, none worse
    assert images["difference"] == pytest.approx(0.05) and 0 < images["ci95"][0] < 0.05 < images["ci95"][1] and images["significant"]
    report["steps"][0]["images_and_seeds"] = images
    assert load_study(tmp_path / "results.json")[0] == report == load_study(str(tmp_path / "results.json"))[0]  # valid as written
    load_script("study.py").print_report(report)
    out = capsys.readouterr().out.splitlines()
    assert next(line for line in out if line.startswith("| `mlp` |")).endswith("| 100.00 ± n/a | [n/a] | 100.00, 100.00, 100.00 |")
    row = next(line for line in out if line.startswith("| `mlp` − `linear_ce` |"))
    assert row.startswith("| `mlp` − `linear_ce` | +5.00 | [n/a] | [+") and row.endswith("| n/a; yes |")
    plots.comparison_chart(report, tmp_path / "chart.png")  # the mean alone, no bar


def test_figures_of_one_seed_say_seed(tiny, tiny_seeds, tmp_path, monkeypatch):
    from test_sweep import figure_titles

    report = save_study({"mlp": first_seed(tiny_seeds, "mlp")}, tiny, tmp_path, "python scripts/study.py --seeds 1", 1.0)
    titles = figure_titles(monkeypatch)
    plots.comparison_chart(report, tmp_path / "chart.png")
    plots.training_curves(report, tmp_path / "curves.png")
    assert "test accuracy over 1 seed" in titles and any(t.startswith("training curves: mean over 1 seed,") for t in titles)


def test_a_study_compares_only_the_stages_it_ran_and_names_them_so(tiny, tiny_seeds, tmp_path, capsys):
    """`--stages linear_ce,mlp`: the step from linear_ce to mlp, and no comparison with
    `mlp` of a variant not run (was the same step again, printed as "mlp vs mlp")."""
    results = {"linear_ce": tiny_seeds, "mlp": dataclasses.replace(
        tiny_seeds, config=TrainConfig("mlp", epochs=2), test_accuracies=tiny_seeds.test_accuracies + 0.05)}
    report = save_study(results, tiny, tmp_path, "python scripts/study.py --stages linear_ce,mlp", 1.0)
    assert [(s["from"], s["to"]) for s in report["steps"]] == [("linear_ce", "mlp")] and report["versus_mlp"] == []
    load_script("study.py").print_report(report)
    assert " vs " not in capsys.readouterr().out


@pytest.mark.slow  # (two programs compiled: some 8 s)
def test_study_py_trains_with_train_pys_model_options(tiny, tmp_path, monkeypatch):
    """--hidden, --dropout, --lr and --batch-size apply to the stages of the study: a seed of it trains as train() alone."""
    monkeypatch.setattr(data, "load_mnist", lambda *_: tiny)  # the synthetic digits, as the script imports it
    options = ["--hidden", "8", "--dropout", "0.2", "--lr", "3e-3", "--batch-size", "64"]
    proc = run_script_in_process("study.py", "--stages", "mlp_bn", "--seeds", "1", "--epochs", "1", *options, "--out", tmp_path)
    assert proc.returncode == 0 and "\n1 seed, 1 epoch, " in proc.stdout, proc.stderr
    results, _ = load_study(tmp_path / "results.json")
    assert proc.stdout.startswith("data: synthetic\n") and results["data"] == "synthetic"  # where MNIST came from
    alone = train(TrainConfig("mlp_bn", 1, 64, 3e-3, seed=0, hidden=8, dropout=0.2), tiny)
    assert results["stages"]["mlp_bn"]["test_accuracies"] == [pytest.approx(alone.test_accuracy, abs=1e-6)]
    assert results["stages"]["mlp_bn"]["settings"] == {"lr": 3e-3, "batch_size": 64, "hidden": 8, "dropout": 0.2}
    # (the table compares with the original's accuracies, and the figures were captioned as of its settings: a hostile user's case)
    assert "\ntrained with lr 0.003, batch 64, hidden 8, dropout 0.2: the documented accuracies are of the original's settings\n" in proc.stdout
    assert ", 1 epoch, seed 0, lr 0.003, batch 64, hidden 8, dropout 0.2, " in plots.study_caption(results)
    committed, _ = load_study(ROOT / "assets" / "results.json")  # (saved before settings were kept: the original's)
    assert plots.study_caption(committed) == f"10 seeds, 5 epochs, seeds 0-9, {committed['device']}"


@pytest.mark.slow
def test_make_assets_without_results_says_so(tmp_path):
    proc = run_script_in_process("make_assets.py", "--results", tmp_path / "results.json")
    assert proc.returncode == 2 and "run python scripts/study.py first" in proc.stderr


def committed_study_with(tmp_path, damage=None, name="results.json"):
    """A copy of the committed results.json and study_arrays.npz, `damage` done to one."""
    for file in ("results.json", "study_arrays.npz"):
        shutil.copy(ROOT / "assets" / file, tmp_path / file)
    if damage:
        damage(tmp_path / name)
    return tmp_path / "results.json"


def without_key(path, key: str) -> None:
    with np.load(path) as saved:
        arrays = {k: v for k, v in saved.items() if k != key}
    np.savez(path, **arrays)


def with_array(path, key: str, change) -> None:
    with np.load(path) as saved:
        arrays = dict(saved)
    arrays[key] = change(arrays[key])
    np.savez(path, **arrays)


def edited(path, edit) -> None:
    report = json.loads(path.read_text())
    edit(report)
    path.write_text(json.dumps(report))


STUDY_DAMAGE = {
    "results.json truncated": ("results.json", lambda p: p.write_bytes(p.read_bytes()[:5000]), "JSONDecodeError"),
    "results.json of something else": ("results.json", lambda p: p.write_text("{}"), "KeyError: 'device'"),
    "a seed without its history": ("results.json", lambda p: edited(p, lambda r: r["stages"]["mlp"]["history"].pop()),
                                   "mlp: seeds, test_accuracies and history differ in length"),
    "study_arrays.npz truncated": ("study_arrays.npz", lambda p: p.write_bytes(p.read_bytes()[:20000]), "BadZipFile"),
    "study_arrays.npz without a confusion matrix": ("study_arrays.npz", lambda p: without_key(p, "mlp_confusion"), "no item named 'mlp_confusion.npy'"),
    "a NaN accuracy": ("results.json", lambda p: edited(p, lambda r: r["stages"]["mlp"]["test_accuracies"].__setitem__(3, float("nan"))),
                       r"stages.mlp.test_accuracies\[3\] is nan, not a finite number"),
    "a NaN loss": ("results.json", lambda p: edited(p, lambda r: r["stages"]["mlp_bn"]["history"][2][4].update(val_loss=float("inf"))),
                   r"stages.mlp_bn.history\[2\]\[4\].val_loss is inf, not a finite number"),
    "a mean outside its interval": ("results.json", lambda p: edited(p, lambda r: r["stages"]["mlp_bn"].update(mean=0.99)),
                                    "mlp_bn: not the summary of its test accuracies: mean 0.99,"),
    "a stage missing a seed": ("results.json", lambda p: edited(p, lambda r: [r["stages"]["mlp"][k].pop() for k in ("seeds", "test_accuracies", "history")]),
                               r"mlp: seeds \[0, 1, 2, 3, 4, 5, 6, 7, 8\], where each stage has the same distinct seeds \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]"),
    "a comparison mislabelled": ("results.json", lambda p: edited(p, lambda r: r["versus_mlp"][0].update({"from": "linear_ce"})),
                                 r"versus_mlp is not the paired differences of \[\('mlp', 'mlp_dropout'\), \('mlp', 'mlp_bn'\), \('mlp', 'deep_linear'\), "),
    "an accuracy over 1": ("results.json", lambda p: edited(p, lambda r: r["stages"]["mlp"]["test_accuracies"].__setitem__(0, 97.5)),
                           r"stages.mlp.test_accuracies\[0\] is 97.5, an accuracy outside \[0, 1\]"),
    "epochs out of order": ("results.json", lambda p: edited(p, lambda r: r["stages"]["mlp"]["history"][0][2].update(epoch=7)),
                            r"mlp, seed 0: epochs numbered \[1, 2, 7, 4, 5\], where 1 to 5 are expected"),
    # (a hostile user's edits: the first two were accepted, the last two blamed another seed or stage)
    "a negative loss": ("results.json", lambda p: edited(p, lambda r: r["stages"]["mlp"]["history"][1][0].update(train_loss=-0.2)),
                        r"stages.mlp.history\[1\]\[0\].train_loss is -0.2, a loss below 0"),
    "pixels up to 510": ("study_arrays.npz", lambda p: with_array(p, "misclassified_images", lambda a: a.astype(float) * 2),
                         r"misclassified_images holds pixels from 0.0 to 510.0, not uint8 values or floats in \[0, 1\]"),
    "a seed of the first stage one epoch short": ("results.json", lambda p: edited(p, lambda r: r["stages"]["linear_mse"]["history"][0].pop()),
                                                  r"linear_mse, seed 0: epochs numbered \[1, 2, 3, 4\], where 1 to 5 are expected"),
    "no history at all": ("results.json", lambda p: edited(p, lambda r: [stage.update(history=[]) for stage in r["stages"].values()]),
                          "linear_mse: seeds, test_accuracies and history differ in length"),
    "a seed of the first stage renumbered": ("results.json", lambda p: edited(p, lambda r: r["stages"]["linear_mse"]["seeds"].__setitem__(0, -1)),
                                             r"linear_mse: seeds \[-1, 1, 2, 3, 4, 5, 6, 7, 8, 9\], where each stage has the same distinct seeds \[0, 1,"),
    "a confusion matrix of NaN": ("study_arrays.npz", lambda p: with_array(p, "mlp_confusion", lambda a: np.full((10, 10), np.nan)),
                                  r"mlp_confusion is float64\[10, 10\], expected \[10, 10\] of kind iu"),
    "a negative count": ("study_arrays.npz", lambda p: with_array(p, "mlp_confusion", lambda a: a - 1000 * np.eye(10, dtype=a.dtype)),
                         "mlp_confusion is not counts of test images"),
    "a label out of range": ("study_arrays.npz", lambda p: with_array(p, "misclassified_labels", lambda a: a + 20),
                             "misclassified_labels holds classes outside 0-9"),
    "settings that are not a run's": ("results.json", lambda p: edited(p, lambda r: r["stages"]["mlp"].update(settings={"hidden": "8"})),
                                       r"mlp: settings \{'hidden': '8'\}, not the lr, batch_size, hidden and dropout of its runs"),
    "a negative learning rate": ("results.json", lambda p: edited(p, lambda r: r["stages"]["mlp"].update(
        settings={"lr": -1, "batch_size": 128, "hidden": 256, "dropout": 0.0})), r"mlp: settings \{'lr': -1, "),
    "a width for a linear stage": ("results.json", lambda p: edited(p, lambda r: r["stages"]["linear_ce"].update(
        settings={"lr": 0.001, "batch_size": 128, "hidden": 8, "dropout": 0.0})), r"linear_ce: settings \{'lr': 0.001, "),
    "a confusion matrix claiming a terabyte": ("study_arrays.npz", lambda p: npz_with_header(p, "mlp_confusion", (2**19, 2**18), "<i8"),
                                               r"mlp_confusion is int64\[524288, 262144\], expected \[10, 10\] of kind iu"),
}


def test_a_study_loads_from_its_folder_and_a_device_or_pipe_is_refused_before_it_is_read(tmp_path):
    """(A study's folder was called damaged; /dev/zero was read until memory ran out, a pipe waited forever: a hostile
    user's cases.)"""
    results = committed_study_with(tmp_path)
    (report, arrays), (named, named_arrays) = load_study(tmp_path), load_study(results)
    assert report == named and arrays.keys() == named_arrays.keys()
    assert load_sweep(ROOT / "assets") == load_sweep(ROOT / "assets" / "sweep.json")
    os.mkfifo(tmp_path / "pipe")
    for path in ("/dev/zero", tmp_path / "pipe"):
        for load, script in ((load_study, "study.py"), (load_sweep, "sweep.py")):
            with pytest.raises(ResultFileError, match=f"^{path} is damaged or not written by scripts/{script} \\(ValueError: not a file "):
                load(path)


@pytest.mark.parametrize("damage", STUDY_DAMAGE)
def test_damaged_study_results_are_refused_naming_the_file_and_the_fault(tmp_path, damage):
    name, make, fault = STUDY_DAMAGE[damage]
    results = committed_study_with(tmp_path, make, name)
    with pytest.raises(ResultFileError, match=f"{tmp_path / name} is damaged or not written by scripts/study.py .*{fault}"):
        load_study(results)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["results.json truncated", "study_arrays.npz truncated", "a mean outside its interval"])
def test_make_assets_refuses_damaged_results_in_one_line_and_draws_nothing(tmp_path, damage):
    name, make, fault = STUDY_DAMAGE[damage]
    results = committed_study_with(tmp_path, make, name)
    proc = run_script_in_process("make_assets.py", "--results", results, "--out", tmp_path / "figures")
    assert_one_line_error(proc, "--results", f"{tmp_path / name} is damaged", fault)
    assert not (tmp_path / "figures").exists()


def test_a_study_saves_its_results_and_the_arrays_its_figures_need(tiny, tiny_seeds, tmp_path):
    report = save_study({"linear_ce": tiny_seeds}, tiny, tmp_path, "python scripts/study.py", 1.0)
    assert json.loads((tmp_path / "results.json").read_text()) == report
    assert load_study(tmp_path / "results.json")[0] == report  # and what load_study checks holds
    assert report["data"] == tiny.source
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


def test_a_figure_that_fails_leaves_none_of_the_figures_drawn_before_it(tmp_path, monkeypatch):
    """make_assets.py draws every figure beside its place and moves them there only when
    all are drawn: here the second fails, and the first is not left behind."""
    make_assets = load_script("make_assets.py")
    monkeypatch.setattr(plots, "training_curves", lambda results, path: Path(path).write_text("drawn"))
    monkeypatch.setattr(plots, "comparison_chart", lambda results, path: 1 / 0)
    monkeypatch.setattr(sys, "argv", ["make_assets.py", "--results", str(ROOT / "assets" / "results.json"), "--out", str(tmp_path / "figures")])
    with pytest.raises(ZeroDivisionError):
        make_assets.main()
    assert [p.name for p in (tmp_path / "figures").iterdir()] == [LOCK]  # the lock this process holds, nothing else


def test_a_results_file_nested_too_deep_to_parse_is_refused_as_damaged(tmp_path):
    """A few kilobytes of `[` make Python's JSON reader recurse past its limit: that is damage too."""
    from mnist_jax.errors import ResultFileError
    from mnist_jax.results import load_study, load_sweep

    for name, load in (("results.json", load_study), ("sweep.json", load_sweep)):
        (tmp_path / name).write_text('{"stages": ' + "[" * 100_000)
        with pytest.raises(ResultFileError, match="damaged"):
            load(tmp_path / name)


@pytest.fixture
def saved_with_images(tiny, tiny_seeds, tmp_path):
    """A study of two stages saved with each seed's per-image correctness: `mlp` and, as
    `mlp_bn`, the same seeds with every tenth of their right answers made wrong."""
    labels = tiny.test_labels
    predictions = np.array(tiny_seeds.test_predictions)
    for row in predictions:
        right = np.flatnonzero(row == labels)[::10]
        row[right] = (labels[right] + 1) % 10
    mlp, worse = (dataclasses.replace(tiny_seeds, config=TrainConfig(stage, epochs=2), test_predictions=found,
                                      test_accuracies=(found == labels).mean(axis=1))
                  for stage, found in (("mlp", tiny_seeds.test_predictions), ("mlp_bn", predictions)))
    report = save_study({"mlp": mlp, "mlp_bn": worse}, tiny, tmp_path, "python scripts/study.py", 1.0)
    return tmp_path / "results.json", report


def test_a_study_keeps_each_seeds_per_image_correctness_and_its_interval_over_seeds_and_images(saved_with_images, tiny, capsys):
    path, report = saved_with_images
    loaded, arrays = load_study(path)
    assert loaded == report
    assert arrays["mlp_correct"].shape == (2, len(tiny.test_labels)) and arrays["mlp_correct"].dtype == bool
    [step] = report["steps"]
    assert report["versus_mlp"] == [step]
    images = step["images_and_seeds"]
    assert images["difference"] == pytest.approx(step["difference"], abs=1e-12) and images["ci95"][1] < 0  # only worse answers
    stage = report["stages"]["mlp_bn"]
    assert stage["min"] == min(stage["test_accuracies"]) and stage["max"] == max(stage["test_accuracies"])
    load_script("study.py").print_report(report)
    out = capsys.readouterr().out
    assert "over seeds and test images (paired bootstrap, 2000 resamples, seed 28):" in out
    [row] = [line for line in out.splitlines() if line.startswith("| `mlp_bn` − `mlp` |")]  # a step that is also versus mlp, once
    assert row.startswith(f"| `mlp_bn` − `mlp` | {100 * step['difference']:+.2f} | [") and row.endswith("| yes; yes |")
    assert f" | {100 * stage['min']:.2f}, {100 * stage['median']:.2f}, {100 * stage['max']:.2f} |" in out
    assert "(with 2 seeds the resampling of seeds has no small-sample widening, so the second interval can be narrower" in out


def flipped(a):
    a = a.copy()
    a[0, 0] = ~a[0, 0]
    return a


def test_the_steps_follow_the_original_order_however_the_stages_were_given():
    """`--stages mlp_bn,mlp` printed mlp − mlp_bn and mlp_bn − mlp, the same comparison twice with opposite signs."""
    stage = {"seeds": [0, 1, 2]}
    found = comparisons({"mlp_bn": stage | {"test_accuracies": [0.98, 0.97, 0.99]}, "mlp": stage | {"test_accuracies": [0.97, 0.97, 0.97]},
                         "linear_ce": stage | {"test_accuracies": [0.92, 0.92, 0.93]}})
    assert [(d["from"], d["to"]) for d in found["steps"]] == [("linear_ce", "mlp"), ("mlp", "mlp_bn")]
    assert [(d["from"], d["to"]) for d in found["versus_mlp"]] == [("mlp", "mlp_bn")]
    assert found["steps"][1]["difference"] == pytest.approx(0.01)


def off_diagonal(a):
    a = a.copy()
    a[0, 0], a[0, 1] = a[0, 0] - 1, a[0, 1] + 1  # one image of digit 0 now called a 1
    return a


def one_prediction_changed(a):
    a = a.copy()
    a[0] = (a[0] + 1) % 10
    return a


IMAGE_DAMAGE = {  # the file damaged, how, the file the refusal names (results.json where the two disagree), the fault
    "an image's answer changed": ("study_arrays.npz", lambda p: with_array(p, "mlp_correct", flipped), "results.json",
                                  r"mlp: per-image correctness of accuracies"),
    "an interval moved": ("results.json", lambda p: edited(p, lambda r: r["steps"][0]["images_and_seeds"]["ci95"].__setitem__(0, -0.5)),
                          "results.json", "steps: intervals over seeds and images that are not the ones its per-image correctness gives"),
    "one stage's correctness gone": ("study_arrays.npz", lambda p: without_key(p, "mlp_correct"), "study_arrays.npz",
                                     "per-image correctness of mlp_bn, not of every stage"),
    "every stage's correctness gone": ("study_arrays.npz", lambda p: [without_key(p, f"{s}_correct") for s in ("mlp", "mlp_bn")],
                                       "results.json", "intervals over seeds and images without the per-image correctness they are computed from"),
    "correctness claiming a terabyte": ("study_arrays.npz", lambda p: npz_with_header(p, "mlp_correct", (2, 2**40), "|b1"),
                                        "study_arrays.npz", r"mlp_correct is bool\[2, 1099511627776\], expected \[2, -1\] of kind b"),
    "correctness of other images": ("study_arrays.npz", lambda p: with_array(p, "mlp_correct", lambda a: a[:, 1:]), "study_arrays.npz",
                                    "per-image correctness of mlp of another number of test images than the confusion matrices' 1000"),
    "a confusion moved off the diagonal": ("study_arrays.npz", lambda p: with_array(p, "mlp_confusion", off_diagonal),
                                           "results.json", "mlp: a confusion matrix that is not the first seed's predictions and"),
    "a prediction changed": ("study_arrays.npz", lambda p: with_array(p, "mlp_predictions", one_prediction_changed),
                                         "results.json", "mlp: a confusion matrix that is not the first seed's predictions and"),
    "a confusion of other digits": ("study_arrays.npz", lambda p: with_array(p, "mlp_confusion", lambda a: np.roll(a, 1, axis=0)),
                                    "study_arrays.npz", r"confusion matrices of different test images: their rows \(the true digits\)"),
    "a median not its seeds'": ("results.json", lambda p: edited(p, lambda r: r["stages"]["mlp"].update(median=0.5)),
                                "results.json", r"mlp: min, median and max \[.*\], not its test accuracies'"),
}


@pytest.mark.parametrize("damage", IMAGE_DAMAGE)
def test_per_image_correctness_and_its_intervals_are_refused_where_they_disagree(saved_with_images, damage):
    path, _ = saved_with_images
    name, make, named, fault = IMAGE_DAMAGE[damage]
    make(path.with_name(name))
    with pytest.raises(ResultFileError, match=f"{path.with_name(named)} is damaged or not written by scripts/study.py .*{fault}"):
        load_study(path)
