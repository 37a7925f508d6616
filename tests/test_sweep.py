"""A hyperparameter grid trains every point and seed in one program per stage, each model
exactly as it trains alone; its questions choose settings on validation only."""

import dataclasses
import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, assert_one_line_error, enable_x64, load_script, run_script, run_script_in_process
from conftest import assert_tensorboard_log
from mnist_jax import data, memory, study
from mnist_jax import plots
from mnist_jax.errors import ResultFileError
from mnist_jax.results import load_sweep, summary
from mnist_jax.stages import STAGES
from mnist_jax.sweep import answers, best_lr, curves, grid_points
from mnist_jax.train import Point, TrainConfig, train


def test_a_grid_is_every_rate_by_every_seed_and_unlisted_options_are_the_stages_own():
    assert grid_points("mlp_dropout", [1e-3, 3e-3], [0.1, 0.5], 2) == [
        Point(0, 1e-3, 0.1), Point(1, 1e-3, 0.1), Point(0, 1e-3, 0.5), Point(1, 1e-3, 0.5),
        Point(0, 3e-3, 0.1), Point(1, 3e-3, 0.1), Point(0, 3e-3, 0.5), Point(1, 3e-3, 0.5),
    ]
    assert grid_points("mlp", None, [0.1, 0.5], 2) == [Point(0, 1e-3, 0.0), Point(1, 1e-3, 0.0)]  # no dropout to vary
    assert grid_points("mlp_dropout", [3e-3], None, 1) == [Point(0, 3e-3, 0.5)]
    assert grid_points("mlp", [3e-3], None, 2, first_seed=10) == [Point(10, 3e-3, 0.0), Point(11, 3e-3, 0.0)]  # fresh seeds


GRID_CONFIG = TrainConfig("mlp_dropout", epochs=2, hidden=16)
GRID_POINTS = [Point(0, 1e-3, 0.3), Point(1, 3e-3, 0.3), Point(1, 3e-3, 0.5), Point(0, 1e-2, 0.5)]


@pytest.fixture(scope="module")
def alone_points(tiny):
    """GRID_POINTS[1:3] trained alone, in float64: the same runs for either way of walking the grid."""
    with enable_x64(True):
        return [train(dataclasses.replace(GRID_CONFIG, seed=p.seed, lr=p.lr, dropout=p.dropout), tiny) for p in GRID_POINTS[1:3]]


@pytest.mark.slow
@pytest.mark.parametrize("vmapped", [False, True], ids=["lax.map (the CPU's way)", "vmap (the accelerators' way)"])
def test_every_grid_point_trains_exactly_like_its_configuration_alone(tiny, vmapped, alone_points):
    """Learning rates and dropout rates differ between the models of one program; each
    model is its configuration trained alone, in float64, where agreement shows the same
    computation. Rates 0.3 and 0.5 need different random bits per unit (32 and 1), so
    they train in programs of their own, as they would alone."""
    config, points, alone = GRID_CONFIG, GRID_POINTS, alone_points
    with enable_x64(True):
        grid = study.train_grid(config, tiny, points, vmapped=vmapped)
    assert grid.points == points
    for i, run in enumerate(alone, start=1):
        assert grid.test_accuracies[i] == pytest.approx(run.test_accuracy, abs=1e-12)
        for row_grid, row_alone in zip(grid.history[i], run.history, strict=True):
            for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
                assert row_grid[key] == pytest.approx(row_alone[key], rel=1e-10, abs=1e-12), key
        params = jax.tree.map(lambda a, i=i: a[i], grid.final_params)
        for g, a in zip(jax.tree.leaves(params), jax.tree.leaves(run.final.params), strict=True):
            np.testing.assert_allclose(g, a, rtol=1e-10, atol=1e-12)
    assert len(set(grid.test_accuracies.tolist())) > 1  # four settings, four models


@pytest.mark.slow
def test_a_thousand_seeds_train_in_chunks_that_fit(tiny, monkeypatch):
    """Memory capped to what about 300 models at once need, per XLA: 1,000 seeds train in
    chunks, the last one shorter, and seed 999 ends as it does alone."""
    config = TrainConfig("linear_ce", epochs=1)
    monkeypatch.setenv(memory.LIMIT_ENV, str(study.compile_chunk(config, tiny, 300).bytes + study.kept_results(config, tiny, 1000)[1]))
    result = study.train_seeds(config, tiny, list(range(1000)))
    assert 100 < result.models_at_once <= 300
    assert result.seeds == list(range(1000)) and result.test_accuracies.shape == (1000,)
    assert len({tuple(k.ravel()[:3]) for k in result.final_params["linear"]["kernel"]}) == 1000  # a model per seed
    alone = train(dataclasses.replace(config, seed=999), tiny)
    assert result.test_accuracies[999] == alone.test_accuracy  # lax.map on the CPU: the same float32 program
    assert result.history[999][0]["val_loss"] == alone.history[0]["val_loss"]


def fake_rows(stage, lr, val, test, seeds=4, grid=0, first_seed=0, epochs=2):
    """Rows with accuracies that rise by `val` and `test` per epoch over `epochs` epochs."""
    return [{"stage": stage, "lr": lr, "dropout": 0.0, "hidden": STAGES[stage].hidden, "seed": s, "grid": grid,
             "test_accuracy": epochs * test + s * 1e-4, "best_val_epoch": epochs,
             "history": [{"epoch": e, "train_loss": 1.0, "train_accuracy": 0.9, "val_loss": 1.0,
                          "val_accuracy": e * val + s * 1e-4, "test_accuracy": e * test + s * 1e-4} for e in range(1, epochs + 1)]}
            for s in range(first_seed, first_seed + seeds)]


def test_the_learning_rate_is_chosen_on_validation_and_never_on_test():
    """lr 1e-3 is better on validation, 3e-3 on test: 1e-3 is chosen, and the comparison
    reports the test accuracies there, paired by seed."""
    rows = fake_rows("mlp", 1e-3, val=0.45, test=0.40) + fake_rows("mlp", 3e-3, val=0.40, test=0.47)
    assert best_lr(curves(rows, ("mlp",))["mlp"], 2)["lr"] == 1e-3
    rows += fake_rows("mlp_bn", 1e-3, val=0.40, test=0.46) + fake_rows("mlp_bn", 3e-3, val=0.46, test=0.45)
    sweep = {"grids": [{"epochs": 2, "command": "", "device": ""}], "rows": rows}
    q = answers(sweep)["batchnorm"]
    assert (q["choice"]["mlp"]["lr"], q["choice"]["mlp_bn"]["lr"]) == (1e-3, 3e-3)
    assert q["at_best_lr"]["difference"] == pytest.approx(0.90 - 0.80)  # 2 x (0.45 - 0.40), seed by seed
    assert q["at_best_lr"]["ci95"][0] == pytest.approx(0.10) and q["at_best_lr"]["significant"]
    assert q["at_reference_lr"]["difference"] == pytest.approx(0.92 - 0.80)


def test_damaged_sweep_files_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "sweep.json"
    rows = fake_rows("mlp", 1e-3, 0.4, 0.4)
    path.write_text(json.dumps({"grids": [{"epochs": 2, "command": "c", "device": "cpu"}], "rows": rows}))
    assert len(load_sweep(path)["rows"]) == 4
    for damage, fault in [
        (lambda s: s["rows"][0]["history"].pop(), r"rows\[0\] \(mlp seed 0\): epochs numbered \[1\], where 1 to 2 are expected"),
        (lambda s: s["rows"][0]["history"][0].update(val_accuracy="high"), r"rows\[0\].history\[0\].val_accuracy is 'high', not a finite number"),
        (lambda s: s["rows"][1]["history"][1].update(val_loss=float("nan")), r"rows\[1\].history\[1\].val_loss is nan, not a finite number"),
        (lambda s: s["rows"][1]["history"][0].update(train_loss=-1.0), r"rows\[1\].history\[0\].train_loss is -1.0, a loss below 0"),
        (lambda s: s["rows"].append(s["rows"][0]),
         r"grid 0, mlp at lr 0.001, dropout 0, hidden 256: seeds \[0, 0, 1, 2, 3\], where each setting of the grid has each of \[0, 1, 2, 3\] once"),
        (lambda s: s["rows"].append(s["rows"][0] | {"lr": 3e-3, "seed": 9}),
         r"grid 0, mlp at lr 0.001, dropout 0, hidden 256: seeds \[0, 1, 2, 3\], where each setting of the grid has each of \[0, 1, 2, 3, 9\]"),
        (lambda s: s["rows"][0].update(stage="mlp_huge"), "KeyError"),
        (lambda s: s["rows"][0].update(test_accuracy=5.0), r"rows\[0\].test_accuracy is 5.0, an accuracy outside \[0, 1\]"),
        (lambda s: s["rows"][0]["history"][1].update(epoch=99), r"rows\[0\] \(mlp seed 0\): epochs numbered \[1, 99\], where 1 to 2 are expected"),
        (lambda s: s["rows"][0].update(best_val_epoch=1), "a test accuracy or best validation epoch that is not its history's"),
        (lambda s: s.pop("grids"), "KeyError"),
    ]:
        sweep = {"grids": [{"epochs": 2, "command": "c", "device": "cpu"}], "rows": json.loads(json.dumps(rows))}
        damage(sweep)
        path.write_text(json.dumps(sweep))
        with pytest.raises(ResultFileError, match=fault) as caught:
            load_sweep(path)
        assert str(path) in str(caught.value)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ResultFileError, match="JSONDecodeError"):
        load_sweep(path)


@pytest.mark.slow
def test_sweep_py_trains_a_grid_whose_point_equals_train_py_alone(tmp_path, data_args):
    """The scripts themselves, on MNIST: a grid over two learning rates and two dropout
    rates of `mlp_dropout`, and `train.py` at one of its points. On the CPU each model of
    the grid is walked through by `lax.map`, the program a run alone compiles, so the
    figures agree exactly, in float32."""
    commands = [
        ["sweep.py", "--stages", "mlp_dropout", "--lr", "1e-3,3e-3", "--dropout", "0.2,0.5", "--epochs", "2", "--seeds", "1",
         "--out", tmp_path / "sweep", "--tensorboard", tmp_path / "board", *data_args],
        ["train.py", "--stage", "mlp_dropout", "--lr", "3e-3", "--dropout", "0.2", "--seed", "0", "--epochs", "2",
         "--out", tmp_path / "alone", *data_args],
    ]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for script, *args in commands]  # both at once
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
    sweep = load_sweep(tmp_path / "sweep" / "sweep.json")
    assert len(sweep["rows"]) == 4 and sweep["grids"][0]["command"].startswith("python scripts/sweep.py --stages mlp_dropout")
    (row,) = [r for r in sweep["rows"] if (r["lr"], r["dropout"], r["seed"]) == (3e-3, 0.2, 0)]
    metrics = json.loads(next((tmp_path / "alone").glob("**/metrics.json")).read_text())
    assert row["test_accuracy"] == metrics["test_accuracy"]
    for grid_epoch, alone_epoch in zip(row["history"], metrics["history"], strict=True):
        assert {k: v for k, v in grid_epoch.items() if k != "test_accuracy"} == {
            k: v for k, v in alone_epoch.items() if k != "seconds"}
    assert row["history"][-1]["test_accuracy"] == row["test_accuracy"]
    assert row["best_val_epoch"] == metrics["best_epoch"]
    for r in sweep["rows"]:  # each model's TensorBoard log: its history and its grid point
        settings = [f"dropout{r['dropout']:g}"] * (r["dropout"] != 0.5) + [f"lr{r['lr']:g}"] * (r["lr"] != 1e-3)
        name = "-".join(["mlp_dropout", *settings, f"seed{r['seed']}"])  # named as train.py names the run alone
        hparams = {"stage": "mlp_dropout", "epochs": 2, "batch_size": 128, "lr": r["lr"], "seed": r["seed"], "hidden": 256,
                   "dropout": r["dropout"]}
        assert_tensorboard_log(tmp_path / "board" / name, r["history"], r["test_accuracy"], hparams)

    # refusals come from sweep.py's parsing, before any work: its main, in this process
    again = run_script_in_process("sweep.py", "--stages", "mlp", "--epochs", "1", "--seeds", "1", "--out", tmp_path / "sweep", *data_args)
    assert_one_line_error(again, "already holds sweep.json; pass --overwrite")
    added = run_script("sweep.py", "--stages", "mlp", "--epochs", "2", "--seeds", "2", "--out", tmp_path / "sweep", "--add", *data_args)
    assert added.returncode == 0, added.stderr
    sweep = load_sweep(tmp_path / "sweep" / "sweep.json")
    assert [g["epochs"] for g in sweep["grids"]] == [2, 2] and "--add" in sweep["grids"][1]["command"]
    assert [r["stage"] for r in sweep["rows"] if r["grid"] == 1] == ["mlp", "mlp"] and len(sweep["rows"]) == 6
    assert "Dropout against `mlp`" not in added.stdout  # a question reads one grid: these two hold one stage each
    assert_one_line_error(run_script_in_process("sweep.py", "--add", "--out", tmp_path / "none", *data_args), "not found; run without --add first")


@pytest.mark.parametrize("option, text, again", [("--lr", "1e-3,3e-3,0.001", "0.001"), ("--dropout", "0.5,0.5", "0.5"), ("--hidden", "256,128,256", "256")])
def test_a_grid_value_given_twice_is_refused_before_training(capsys, option, text, again):
    """Was: the whole grid trained and sweep.json written, then a traceback (two settings
    per seed), and the same on every later --add into that folder."""
    with pytest.raises(SystemExit) as exit_info:
        load_script("sweep.py").build_parser().parse_args([option, text])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(f"error: argument {option}: in {text!r}: {again} repeats a value given before; name each once")


def sweep_of(rows, epochs=2) -> dict:
    return {"grids": [{"epochs": epochs, "command": "c", "device": "cpu"}], "rows": rows}


def test_a_retest_on_fresh_seeds_keeps_the_rates_the_first_seeds_chose_and_reports_the_fresh_seeds_test():
    """Seeds 0-3 choose 1e-3 for `mlp` on validation; on seeds 4-7 3e-3 would win, yet the
    re-test reports 1e-3, at the fresh seeds' test accuracy, paired on the fresh seeds."""
    chosen_on = sweep_of(fake_rows("mlp", 1e-3, val=0.45, test=0.40) + fake_rows("mlp", 3e-3, val=0.40, test=0.40)
                         + fake_rows("mlp_bn", 1e-3, val=0.45, test=0.45) + fake_rows("mlp_bn", 3e-3, val=0.40, test=0.40))
    fresh = sweep_of([r for stage, test in (("mlp", 0.42), ("mlp_bn", 0.44)) for lr, val in ((1e-3, 0.40), (3e-3, 0.48))
                      for r in fake_rows(stage, lr, val=val, test=test, first_seed=4)])
    assert answers(fresh)["batchnorm"]["choice"]["mlp"]["lr"] == 3e-3  # what the fresh seeds alone would choose
    q = answers(fresh, chosen_on)["batchnorm"]
    assert (q["choice"]["mlp"]["lr"], q["choice"]["mlp_bn"]["lr"], q["seeds"]) == (1e-3, 1e-3, 4)
    assert q["at_best_lr"]["difference"] == pytest.approx(2 * (0.44 - 0.42))
    assert q["choice"]["mlp"]["by_lr"]["0.001"]["test"]["mean"] == pytest.approx(0.84 + 5.5e-4)  # seeds 4-7's test
    assert answers(chosen_on, chosen_on) == answers(chosen_on)  # re-tested on its own seeds, a sweep answers as it did


def test_a_retest_without_a_chosen_setting_says_which_and_answers_the_rest(capsys):
    chosen_on = sweep_of([r for stage in ("mlp", "mlp_bn", "linear_mse", "linear_ce") for lr, val in ((1e-3, 0.4), (3e-3, 0.45))
                          for r in fake_rows(stage, lr, val=val, test=0.4)])
    fresh = sweep_of([r for stage in ("mlp", "mlp_bn", "linear_mse", "linear_ce") for lr in ((1e-3, 3e-3) if "mlp" in stage else (1e-3,))
                      for r in fake_rows(stage, lr, val=0.4, test=0.4, first_seed=4)])
    found = answers(fresh, chosen_on)
    assert found["batchnorm"]["choice"]["mlp"]["lr"] == 3e-3
    assert found["not_retested"] == {"linear": "not trained at the chosen lr 0.003 for 2 epochs"}
    load_script("sweep.py").print_answers(found)
    assert "\nlinear: not re-tested here, not trained at the chosen lr 0.003 for 2 epochs\n" in capsys.readouterr().out


def test_a_retest_too_short_for_the_chosen_epoch_or_without_a_questions_stages_says_so():
    """A re-test of 1 epoch of a choice made after epoch 2 was an IndexError after the training; a question
    the new grid has no stages for vanished without a word."""
    chosen_on = sweep_of([r | {"dropout": 0.5} if r["stage"] == "mlp_dropout" else r
                          for stage in ("mlp", "mlp_dropout", "mlp_bn") for r in fake_rows(stage, 1e-3, val=0.4, test=0.4)])
    fresh = sweep_of([r | {"dropout": 0.5} if r["stage"] == "mlp_dropout" else r for stage in ("mlp", "mlp_dropout")
                      for r in fake_rows(stage, 1e-3, val=0.4, test=0.4, first_seed=4, epochs=1)], epochs=1)
    assert answers(fresh, chosen_on)["not_retested"] == {"dropout": "trained for 1 epoch, not to the chosen epoch 2",
                                                         "batchnorm": "no grid of its stages"}


def test_each_control_is_compared_at_its_own_best_rate_with_linear_ce_and_mlp_of_other_grids_seed_by_seed(capsys):
    """The controls' grid holds neither `mlp` nor `linear_ce`: they come from the grids that
    trained them at several rates, paired on the seeds all share, all after 5 epochs."""
    rows = (fake_rows("linear_ce", 1e-3, val=0.15, test=0.15, epochs=40, grid=0, seeds=6)
            + fake_rows("linear_ce", 3e-3, val=0.16, test=0.15, epochs=40, grid=0, seeds=6)
            + fake_rows("mlp", 1e-3, val=0.18, test=0.19, epochs=5, grid=1) + fake_rows("mlp", 3e-3, val=0.17, test=0.18, epochs=5, grid=1)
            + [r for stage in ("deep_linear", "random_features") for lr, val in ((1e-2, 0.17), (3e-2, 0.16))
               for r in fake_rows(stage, lr, val=val, test=0.17 if stage == "deep_linear" else 0.16, epochs=5, grid=2)])
    sweep = {"grids": [{"epochs": e, "command": "c", "device": "cpu"} for e in (40, 5, 5)], "rows": rows}
    q = answers(sweep)["controls"]
    assert {stage: c["lr"] for stage, c in q["choice"].items()} == {
        "linear_ce": 3e-3, "mlp": 1e-3, "deep_linear": 1e-2, "random_features": 1e-2}
    assert (q["epoch"], q["seeds"]) == (5, 4)  # linear_ce's seeds 4 and 5 have no partner
    assert q["versus"]["deep_linear"]["mlp"]["difference"] == pytest.approx(5 * (0.17 - 0.19))
    assert q["versus"]["random_features"]["linear_ce"]["difference"] == pytest.approx(5 * (0.16 - 0.15))
    assert "linear_ce" not in q["versus"] and "mlp" not in q["versus"]
    load_script("sweep.py").print_answers(answers(sweep))
    assert "| `random_features` | 0.01 | " in capsys.readouterr().out
    assert "controls" not in answers(sweep_of(fake_rows("mlp", 1e-3, val=0.4, test=0.4)))  # no control trained: no question


def test_a_retest_on_seeds_that_chose_is_refused_before_training(tmp_path):
    chosen_on = tmp_path / "sweep.json"
    chosen_on.write_text(json.dumps(sweep_of(fake_rows("mlp", 1e-3, val=0.4, test=0.4) + fake_rows("mlp_bn", 1e-3, val=0.4, test=0.4))))
    proc = run_script_in_process("sweep.py", "--stages", "mlp", "--seeds", "2", "--first-seed", "3", "--chosen-on", chosen_on,
                                 "--out", tmp_path / "fresh")
    assert_one_line_error(proc, f"--chosen-on: {chosen_on} chose on seeds 0 to 3, of which this grid has 3; "
                                "fresh seeds start past them, --first-seed 4")
    assert not (tmp_path / "fresh").exists()


def test_a_retest_refused_names_the_seeds_that_chose_as_they_are(tmp_path):
    """(Seeds 0, 1, 5 and 6 were told as 'seeds 0 to 6', as if --first-seed 3 were refused too.)"""
    rows = [row for stage in ("mlp", "mlp_bn") for first in (0, 5) for row in fake_rows(stage, 1e-3, 0.4, 0.4, seeds=2, first_seed=first)]
    (tmp_path / "sweep.json").write_text(json.dumps(sweep_of(rows)))
    proc = run_script_in_process("sweep.py", "--stages", "mlp", "--seeds", "2", "--first-seed", "5", "--chosen-on", tmp_path / "sweep.json",
                                 "--out", tmp_path / "fresh")
    assert_one_line_error(proc, "chose on seeds 0, 1, 5, 6, of which this grid has 5, 6; fresh seeds start past them, "
                                "--first-seed 7")


def test_a_retest_is_refused_when_the_sweep_it_adds_to_holds_the_seeds_that_chose(tmp_path):
    """With --add the answers read the grids already there: the choosing sweep copied and added to passed
    its own seeds off as a re-test."""
    (tmp_path / "copy").mkdir()
    for folder in ("copy", "."):
        (tmp_path / folder / "sweep.json").write_text(json.dumps(sweep_of(fake_rows("mlp", 1e-3, val=0.4, test=0.4)
                                                                          + fake_rows("mlp_bn", 1e-3, val=0.4, test=0.4))))
    proc = run_script_in_process("sweep.py", "--stages", "mlp", "--seeds", "2", "--first-seed", "4", "--add",
                                 "--chosen-on", tmp_path, "--out", tmp_path / "copy")
    assert_one_line_error(proc, "chose on seeds 0 to 3, which this grid or the sweep it adds to has")


def test_add_refuses_a_grid_whose_every_model_a_grid_of_the_sweep_holds_as_it_would_train_it(tmp_path, refused):
    """(The same command run again with --add trained the grid again and appended a copy of it.)"""
    saved = sweep_of(fake_rows("mlp", 1e-3, val=0.4, test=0.4))  # mlp at lr 1e-3, seeds 0-3, 2 epochs of batches of 128
    saved["grids"][0]["batch_size"] = 128
    (tmp_path / "sweep.json").write_text(json.dumps(saved))
    add = ["--stages", "mlp", "--add", "--out", tmp_path]
    for grid in (["--seeds", "4", "--epochs", "2"], ["--seeds", "2", "--first-seed", "2", "--epochs", "2"]):
        assert refused("sweep.py", *add, *grid).endswith(f"--add: grid 0 of {tmp_path / 'sweep.json'} (c) holds every model "
                                                         "of this grid, trained as this one would be: nothing to add")
    for grid in (["--seeds", "5", "--epochs", "2"], ["--seeds", "4", "--epochs", "3"], ["--seeds", "4", "--epochs", "2", "--lr", "3e-3"],
                 ["--seeds", "4", "--epochs", "2", "--batch-size", "64"]):  # a model more, or each trained otherwise
        assert "--chosen-on: " in refused("sweep.py", *add, *grid, "--chosen-on", tmp_path / "none.json")  # (its check comes after)


@pytest.mark.parametrize("contents, error", [
    (None, "not found"),
    (json.dumps(sweep_of(fake_rows("linear_ce", 1e-3, val=0.4, test=0.4))), "answers none of the questions, so it chose nothing"),
])
def test_a_retest_of_a_sweep_missing_or_without_answers_is_refused_in_one_line(tmp_path, contents, error):
    chosen_on = tmp_path / "sweep.json"
    if contents:
        chosen_on.write_text(contents)
    proc = run_script_in_process("sweep.py", "--stages", "mlp", "--seeds", "2", "--first-seed", "4", "--chosen-on", chosen_on,
                                 "--out", tmp_path / "fresh")
    assert_one_line_error(proc, f"--chosen-on: {chosen_on} {error}")


def test_a_retest_of_controls_the_choosing_sweep_did_not_train_asks_only_for_those_it_did():
    """A re-test looked up every control of the registry in the choice: a KeyError after the training."""
    def grid(first_seed):
        return sweep_of([r for stage in ("linear_ce", "mlp", "deep_linear") for lr, val in ((1e-3, 0.4), (3e-3, 0.45))
                         for r in fake_rows(stage, lr, val=val, test=0.4, first_seed=first_seed, epochs=5)], epochs=5)
    retest = answers(grid(4), grid(0))["controls"]
    assert list(retest["choice"]) == ["linear_ce", "mlp", "deep_linear"] and list(retest["versus"]) == ["deep_linear"]


def test_a_comparison_needs_the_same_seeds_in_both_settings():
    """A seed missing from one side is an error naming it, never a smaller pairing."""
    rows = fake_rows("mlp", 1e-3, val=0.40, test=0.40) + fake_rows("mlp_bn", 1e-3, val=0.45, test=0.45)
    del rows[7]  # mlp_bn, seed 3
    with pytest.raises(ValueError, match="mlp_bn at lr 0.001 has no seed 3, which a setting it is compared with has"):
        answers(sweep_of(rows))


def test_with_one_seed_no_interval_is_given_and_no_difference_called_significant(capsys):
    rows = fake_rows("mlp", 1e-3, val=0.40, test=0.40, seeds=1) + fake_rows("mlp_bn", 1e-3, val=0.45, test=0.45, seeds=1)
    found = answers(sweep_of(rows))
    assert found["batchnorm"]["at_best_lr"] == {"difference": pytest.approx(0.10), "ci95": None, "significant": None}
    load_script("sweep.py").print_answers(found)
    assert "| 2 | 0.001 | 0.001 | 80.00 [n/a] | 90.00 [n/a] | +10.00 [n/a] | +10.00 [n/a] |" in capsys.readouterr().out


def test_learning_rates_that_differ_past_six_digits_are_rows_of_their_own(capsys):
    """Every setting is written so that it reads back as itself (not `:g`'s six digits), in tables and answers."""
    lrs = (0.0012345671, 0.0012345672)
    rows = [r for lr in lrs for stage in ("mlp", "mlp_bn") for r in fake_rows(stage, lr, val=0.4 + lr, test=0.4)]
    found = answers(sweep_of(rows))
    assert list(found["batchnorm"]["choice"]["mlp"]["by_lr"]) == ["0.0012345671", "0.0012345672"]
    script = load_script("sweep.py")
    script.print_grid(rows, 2)
    script.print_answers(found)
    out = capsys.readouterr().out
    assert "| `mlp` | 256 | 0.0012345671 | 0 |" in out and "| `mlp` | 256 | 0.0012345672 | 0 |" in out
    assert "| 2 | 0.0012345672 | 0.0012345672 |" in out


def test_grids_without_lr_1e3_or_of_several_widths_have_their_questions_answered(capsys):
    """Grids sweep.py trains whole, whose answers were tracebacks after the work: without
    the reference rate 1e-3 (n/a there), and of two widths (answered at the MLPs' own, 256)."""
    rows = [r | {"dropout": 0.5} if r["stage"] == "mlp_dropout" else r for lr in (3e-4, 3e-3)
            for stage in ("mlp", "mlp_dropout", "mlp_bn") for r in fake_rows(stage, lr, val=0.4 + lr, test=0.4)]
    found = answers(sweep_of(rows))
    assert found["dropout"]["lr"] == 3e-3  # the best on validation, as the reference rate is not there
    assert found["batchnorm"]["at_reference_lr"] is None
    load_script("sweep.py").print_answers(found)
    assert capsys.readouterr().out.count("| n/a |") == 1
    wide = [r | {"hidden": 512} for r in fake_rows("mlp", 1e-3, val=0.5, test=0.5) + fake_rows("mlp_bn", 1e-3, val=0.5, test=0.5)]
    found = answers(sweep_of(fake_rows("mlp", 1e-3, val=0.4, test=0.4) + fake_rows("mlp_bn", 1e-3, val=0.45, test=0.45) + wide))
    assert (found["batchnorm"]["hidden"], found["batchnorm"]["at_best_lr"]["difference"]) == (256, pytest.approx(0.10))


def test_a_sweep_of_one_epoch_at_another_width_draws_its_dropout_figure(tmp_path):
    """Every plotted epoch lies inside the axes, the first one too."""
    rows = [r | {"hidden": 16, "history": r["history"][:1], "test_accuracy": r["history"][0]["test_accuracy"], "best_val_epoch": 1}
            for stage in ("mlp", "mlp_dropout") for r in fake_rows(stage, 1e-3, val=0.4, test=0.4)]
    sweep = {"grids": [{"epochs": 1, "command": "c", "device": "cpu"}], "rows": rows}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep))
    found = answers(load_sweep(path))
    plots.sweep_dropout(found["dropout"], "cpu", tmp_path / "sweep_dropout.png")
    assert (tmp_path / "sweep_dropout.png").stat().st_size > 5_000


def figure_titles(monkeypatch) -> list[str]:
    """The titles of the figures `plots` draws from here on: each figure's own, then each of its axes'."""
    titles = []

    def save_figure(fig, path, title=""):
        titles.extend([title, *(ax.get_title() for ax in fig.axes)])
        plots.plt.close(fig)

    monkeypatch.setattr(plots, "save_figure", save_figure)
    return titles


def test_one_seed_and_one_epoch_are_said_in_the_singular(tmp_path, monkeypatch, capsys):
    rows = [r | {"history": r["history"][:1], "test_accuracy": r["history"][0]["test_accuracy"], "best_val_epoch": 1}
            for stage in ("mlp", "mlp_dropout", "mlp_bn") for r in fake_rows(stage, 1e-3, val=0.4, test=0.4, seeds=1)]
    found = answers(sweep_of(rows, epochs=1))
    load_script("sweep.py").print_answers(found)
    assert "(1 seed; test accuracy after each epoch" in capsys.readouterr().out
    titles = figure_titles(monkeypatch)
    plots.sweep_dropout(found["dropout"], "cpu", tmp_path / "sweep_dropout.png")
    plots.sweep_learning_rates(found, "cpu", tmp_path / "sweep_learning_rates.png")
    assert "BatchNorm: after 1 epoch" in titles and not [t for t in titles if "1 seeds" in t or "1 epochs" in t], titles
    assert any("(1 seed)" in t for t in titles) and any("1 seed per rate" in t for t in titles)


@pytest.mark.slow  # (a grid compiled: some 3 s, kept out of the quick tier)
def test_sweep_py_ends_with_a_table_of_its_own_grid_validation_and_test_with_intervals(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "load_mnist", lambda *_: tiny)  # the synthetic digits, as the script imports it
    proc = run_script_in_process("sweep.py", "--stages", "linear_ce", "--lr", "1e-3,3e-3", "--seeds", "2", "--epochs", "1",
                                 "--models-at-once", "2", "--out", tmp_path / "sweep")
    assert proc.returncode == 0, proc.stderr
    sweep = load_sweep(tmp_path / "sweep" / "sweep.json")
    rows = sweep["rows"]
    assert proc.stdout.startswith("data: synthetic\n") and sweep["grids"][0]["data"] == "synthetic"
    assert "\n4 models, 1 epoch, " in proc.stdout  # (not "1 epochs")
    assert "linear_ce, 4 models: pass 2/2, epoch 1/1 of chunk 2/2\n" in proc.stdout  # (not "epoch 2/2" of one epoch)
    assert "\nlinear_ce: 2 models at once\n" in proc.stdout
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| stage | hidden | lr | dropout | seeds | val accuracy after epoch 1 | test accuracy |"

    def cell(values):
        found = summary(values)
        return f"{100 * found['mean']:.2f} [{100 * found['ci95'][0]:.2f}, {100 * found['ci95'][1]:.2f}]"

    for line, lr in zip(table[1:], (1e-3, 3e-3), strict=True):
        point = [r for r in rows if r["lr"] == lr]
        assert line == (f"| `linear_ce` | — | {lr:g} | 0 | 2 | {cell([r['history'][-1]['val_accuracy'] for r in point])} | "
                        f"{cell([r['test_accuracy'] for r in point])} |")


def test_make_assets_draws_a_sweep_without_a_study(tmp_path):
    (tmp_path / "sw1").mkdir()
    shutil.copy(ROOT / "assets" / "sweep.json", tmp_path / "sw1")
    proc = run_script_in_process("make_assets.py", "--sweep", "sw1", "--out", tmp_path / "figures",
                                 cwd=tmp_path)  # the folder of a sweep.json; no runs/study/results.json here
    assert proc.returncode == 0, proc.stderr
    drawn = sorted(p.name for p in (tmp_path / "figures").iterdir() if p.suffix == ".png")
    assert drawn == ["sweep_dropout.png", "sweep_learning_rates.png"]


def test_make_assets_refuses_a_sweep_it_draws_no_figure_of_and_says_why(refused, tmp_path):
    (tmp_path / "sw1").mkdir()
    (tmp_path / "sw1" / "sweep.json").write_text(json.dumps(sweep_of(fake_rows("mlp", 1e-3, val=0.4, test=0.4))))
    line = refused("make_assets.py", "--sweep", "sw1", "--out", "out_onerow")
    assert "argument --sweep: nothing to draw: sw1/sweep.json has no grid of both stages of a figure (mlp and mlp_dropout;" in line
    assert not (tmp_path / "out_onerow").exists() or not list((tmp_path / "out_onerow").iterdir())
