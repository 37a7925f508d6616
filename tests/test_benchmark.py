"""The benchmark's measurements (`scripts/benchmark.py`): the FLOPs it counts against XLA's
own count, its report of JAX alone, and the cold and warm starts of `train.py`.
(With PyTorch, as a user runs it: tests/test_fresh_clone.py.)"""

import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import load_script
from mnist_jax import data, study
from mnist_jax.stages import STAGES
from mnist_jax.train import TrainConfig, graph, init_state, make_optimizer, make_train_step

benchmark = load_script("benchmark.py")


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_flop_count_is_xlas_own_count_less_the_elementwise_work(stage):
    config = TrainConfig(stage)
    tx = make_optimizer(config)
    graphdef, state = graph(config), init_state(config, jax.random.key(0), tx)
    step = jax.jit(make_train_step(graphdef, config.spec.loss, tx))
    images, labels = jnp.zeros((128, 784), jnp.uint8), jnp.zeros(128, jnp.int32)
    cost = step.lower(state, images, labels, jax.random.key(1)).compile().cost_analysis()
    xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ours = 128 * benchmark.flops_per_example(config)[1]
    # counting the pixels' gradient too (the usual 3 x forward) would overshoot XLA by 40%
    assert ours <= xla_flops <= 1.10 * ours


@pytest.mark.slow  # a script's run (in-process, on synthetic digits)
def test_benchmark_py_reports_jax_alone_in_its_out_folder_and_keeps_a_report_there(tiny, tmp_path, monkeypatch, capsys):
    ceiling = benchmark.matmul_ceiling
    monkeypatch.setattr(data, "load_mnist", lambda *_: tiny)  # the synthetic digits, as cli.load_data reads them
    monkeypatch.setattr(benchmark, "matmul_ceiling", lambda: ceiling(256, 2))
    timed, time_jax, train_seeds = [], benchmark.time_jax, study.train_seeds  # which runs the benchmark times, in order
    monkeypatch.setattr(benchmark, "time_jax", lambda *args: timed.append("alone") or time_jax(*args))
    monkeypatch.setattr(study, "train_seeds", lambda *args, **kwargs: timed.append("grid") or train_seeds(*args, **kwargs))

    def run(out):
        args = ["--stages", "linear_ce", "--epochs", "2", "--no-torch", "--no-end-to-end", "--studies", "2", "--out", str(out)]
        monkeypatch.setattr(sys, "argv", ["benchmark.py", *args])
        benchmark.main()
        return json.loads((out / "benchmark.json").read_text())

    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "benchmark.json").write_text('{"command": "python scripts/benchmark.py", "device": "cpu", "torch_loops": []}')
    with pytest.raises(SystemExit):
        run(tmp_path / "kept")
    assert "already holds benchmark.json; pass --overwrite" in capsys.readouterr().err
    report = run(tmp_path / "run")
    out = capsys.readouterr().out
    assert report["torch_version"] is None and report["torch_loops"] == [] and "--no-torch" in out and "| torch not run" in out
    assert report["xla_flags"] == os.environ.get("XLA_FLAGS", "")  # the XLA options the figures were taken with
    (row,) = report["stages"]
    assert row["speedup_vs_nnx_jit"] == pytest.approx(row["nnx_jit_epoch_seconds"] / row["jax_epoch_seconds"])
    assert row["jax_samples_per_second"] == pytest.approx(1_000 / row["jax_epoch_seconds"])  # 7,000 less 6,000 validation
    assert row["efficiency"] > 0 and row["jax_compile_seconds"] > 0 and not any(key.startswith("torch_") for key in row)
    assert row["jax_compile_seconds"] == row["rounds"]["jax_compile_seconds"][0]  # the one compile; later rounds reuse it
    mapped, vmapped = report["studies"]  # two seeds walked through by lax.map, then side by side
    assert (mapped["width"], vmapped["width"]) == (1, 2) and mapped["backend_default"] and not vmapped["backend_default"]
    for grid in (mapped, vmapped):  # against a run alone doing the same work (its epoch and a test pass), timed beside the grid
        before, after = grid["single_beside_seconds"]
        assert 0 < before and 0 < after and grid["single_same_work_seconds"] == pytest.approx((before + after) / 2)
        assert grid["per_model_over_single"] == pytest.approx(grid["epoch_seconds"] / 2 / grid["single_same_work_seconds"])
    assert timed[-6:] == ["alone", "grid", "alone"] * 2 and "timed just before and just after the grid" in out


def test_end_to_end_times_a_cold_then_a_warm_train_py_that_compiles_nothing_new(data_args):
    e2e = benchmark.end_to_end(["--stage", "linear_ce", "--epochs", "1", *data_args], rounds=1)
    assert e2e["warm_over_cold"] == pytest.approx(e2e["warm_seconds"] / e2e["cold_seconds"])
    for run in ("cold", "warm"):
        assert 0 < e2e[f"{run}_epochs_seconds"] < e2e[f"{run}_seconds"]
        assert e2e[f"{run}_beyond_epochs_seconds"] == pytest.approx(e2e[f"{run}_seconds"] - e2e[f"{run}_epochs_seconds"])
    # every program of the run, kept whole (initial, examples_at, epoch_keys, shuffle, train_epoch, evaluate twice) ...
    assert e2e["cold_cached"].count("mnist_jax") == 7
    # ... and the warm run found each in the cache: it added none
    assert e2e["warm_cached"] == e2e["cold_cached"]
    # the imports are timed apart, each in a fresh process (timings are the benchmark's to report, not a test's to compare)
    for part in ("import", "packages"):
        assert len(e2e[f"{part}_rounds"]) == 1 and e2e[f"{part}_seconds"] == e2e[f"{part}_rounds"][0] > 0


def test_the_profile_parts_a_traced_step_into_matmuls_optimizer_inputs_other_ops_and_time_between_them(tiny):
    """Every op of the compiled epoch falls in one part; the matmuls are XLA's dots or the library fusions holding one."""
    try:
        profile = benchmark.profile_pass(TrainConfig("mlp", epochs=1), tiny, repeats=1)
    except benchmark.NoOpEvents as e:  # the oldest supported JAX records no event per op; the newest must
        assert tuple(map(int, jax.__version__.split(".")[:2])) < (0, 10), e
        pytest.skip(str(e))
    per_step = [profile[f"{part} ms"] for part in benchmark.PARTS]
    assert all(ms >= 0 for ms in per_step) and profile["matmuls ms"] > 0 and profile["optimizer ms"] > 0
    assert sum(per_step) >= 0.999999 * profile["traced_step_ms"]  # the parts and the idle time fill the traced pass (ops may overlap)
    assert 10 < profile["ops_per_step"] < 200 and profile["step_ms"] > 0
    assert benchmark.covered_seconds([(0, 10), (5, 20), (30, 40)]) == pytest.approx(30e-9)


def test_a_cpu_without_a_readable_description_is_named_by_its_architecture(monkeypatch):
    monkeypatch.setattr(benchmark.Path, "read_text", lambda self: (_ for _ in ()).throw(PermissionError(13, "denied")))
    cpu = benchmark.cpu_info()
    assert cpu["kind"] == cpu["model"] == benchmark.platform.machine() and cpu["instruction_sets"] == []


def test_the_cpu_is_named_with_its_instruction_sets_and_a_kind_for_its_figures():
    cpu = benchmark.cpu_info()
    assert cpu["model"] and set(cpu["instruction_sets"]) <= set(benchmark.INSTRUCTION_SETS)
    assert re.fullmatch(r"[a-z0-9_]+(-[a-z0-9_]+)*", cpu["kind"])
    if "avx512f" in cpu["instruction_sets"]:
        assert cpu["kind"].endswith("-avx512")
    if cpu["family"] is not None:  # one name covers several generations
        assert f"-f{cpu['family']}m{cpu['model_number']}-" in cpu["kind"]


def test_a_kind_tells_apart_generations_that_share_a_name():
    zen4, zen5 = ({"model": "AMD EPYC", "family": family, "model_number": model, "instruction_sets": ["avx2", "avx512f"]}
                  for family, model in (("25", "17"), ("26", "2")))
    xeon = {"model": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "family": "6", "model_number": "143",
            "instruction_sets": ["sse4_2", "avx", "avx2"]}
    assert [benchmark.cpu_kind(cpu) for cpu in (zen4, zen5, xeon)] == [
        "amd-epyc-f25m17-avx512", "amd-epyc-f26m2-avx512", "intel-xeon-f6m143-avx2"]


def test_one_epoch_is_refused_as_it_leaves_no_steady_epoch_to_time(refused):
    assert "argument --epochs: expected an integer from 2 to" in refused("benchmark.py", "--epochs", "1", "--no-torch")


def test_standard_parts_of_one_round_print_their_medians_without_quartiles(capsys):
    rounds = {"ours": [0.5], "standard": [1.0], "pass": [2.0]}
    row = {"piece": "piece", "stage": "mlp", "ours_seconds": 0.5, "standard_seconds": 1.0, "ratio": 0.5, "saving_of_pass": 0.25,
           "rounds": rounds}
    benchmark.print_standard_parts([row])
    out = capsys.readouterr().out
    assert "medians of 1 paired round; quartiles need --rounds 2 or more" in out and "| 0.50 | +25.0% |" in out
    benchmark.print_standard_parts([row | {"rounds": {k: v * 3 for k, v in rounds.items()}}])
    assert "medians of 3 paired rounds):" in capsys.readouterr().out


def test_a_jax_that_records_no_op_events_leaves_the_profile_out_and_every_other_figure_in(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "load_mnist", lambda *_: tiny)
    monkeypatch.setattr(benchmark, "matmul_ceiling", lambda: 1e11)

    def no_op_events(*_args, **_kwargs):
        raise benchmark.NoOpEvents(f"jax {jax.__version__} records no trace event of cpu named after a matmul of the program")

    monkeypatch.setattr(benchmark, "profile_pass", no_op_events)
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--stages", "linear_ce", "--epochs", "2", "--no-torch", "--no-end-to-end",
                                      "--profile", "--out", str(tmp_path)])
    benchmark.main()
    out = capsys.readouterr().out
    assert "where a training step goes: not measured (jax " in out
    (device,) = [line for line in out.splitlines() if line.startswith("device: ")]  # the CPU, named before any figure
    assert f"(kind {benchmark.cpu_info()['kind']})" in device
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["stages"][0]["stage"] == "linear_ce" and "profiles" not in report


def test_a_failed_end_to_end_run_ends_the_benchmark_in_one_line_keeping_every_other_figure(tiny, tmp_path, monkeypatch, capsys):
    """The cold and warm train.py runs come last: when one fails (killed, disk full), what was measured is written."""
    monkeypatch.setattr(data, "load_mnist", lambda *_: tiny)

    def killed(*_args, **_kwargs):
        raise benchmark.subprocess.CalledProcessError(-15, ["train.py"], stderr=b"")

    monkeypatch.setattr(benchmark.subprocess, "run", killed)
    monkeypatch.setattr(benchmark, "matmul_ceiling", lambda: 1e11)
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--stages", "linear_ce", "--epochs", "2", "--no-torch", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        benchmark.main()
    assert stop.value.code == 143
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "end-to-end train.py run ended with status 143" in err
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["stages"][0]["stage"] == "linear_ce" and "end_to_end" not in report
