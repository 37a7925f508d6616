"""The benchmark's measurements (`scripts/measure.py`): the FLOPs XLA runs, cold and warm
starts, and JAX alone where torch cannot be imported. (`scripts/benchmark.py` with PyTorch:
tests/test_fresh_clone.py.)"""

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT, load_script
from mnist_jax.stages import STAGES
from mnist_jax.train import TrainConfig, init_state, make_optimizer, make_train_step

benchmark = load_script("measure.py")


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_flop_count_is_xlas_own_count_less_the_elementwise_work(stage):
    config = TrainConfig(stage)
    tx = make_optimizer(config.lr)
    graphdef, state = init_state(config, jax.random.key(0), tx)
    step = jax.jit(make_train_step(graphdef, config.spec.loss, tx))
    images, labels = jnp.zeros((128, 784), jnp.uint8), jnp.zeros(128, jnp.int32)
    cost = step.lower(state, images, labels, jax.random.key(1)).compile().cost_analysis()
    xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ours = 128 * benchmark.flops_per_example(config)[1]
    # counting the pixels' gradient too (the usual 3 x forward) would overshoot XLA by 40%
    assert ours <= xla_flops <= 1.10 * ours


def test_end_to_end_times_a_cold_then_a_warm_train_py_that_reads_the_cache_the_cold_one_wrote(data_args):
    e2e = benchmark.end_to_end(["--stage", "linear_ce", "--epochs", "1", *data_args])
    assert e2e["cold_seconds"] > 0 and e2e["warm_seconds"] > 0
    assert e2e["warm_over_cold"] == pytest.approx(e2e["warm_seconds"] / e2e["cold_seconds"])
    # every program of the run, however quick to compile (JAX's default caches only those over 1 s)
    programs = set(e2e["rounds"][0]["cached_programs"])
    assert {"jit_init", "jit_subset", "jit_epoch_keys", "jit_epoch_order", "jit_train_epoch", "jit_evaluate"} <= programs
    # the warm run still traces and lowers every program (the cache key is the lowered
    # program), and fetches instead of compiling
    cold, warm = e2e["cold_jax_seconds"], e2e["warm_jax_seconds"]
    assert warm["trace"] > 0 and warm["lower"] > 0
    assert 0 < warm["compile"] < cold["compile"] / 2


def test_covered_seconds_counts_nested_and_overlapping_spans_once():
    assert benchmark.covered_seconds([(0, 3), (1, 2), (2.5, 4), (6, 7)]) == 5
    spans = [("/jax/core/compile/jaxpr_trace_duration", 0, 3), ("/jax/core/compile/jaxpr_trace_duration", 1, 2), ("other", 0, 9)]
    assert benchmark.jax_phase_seconds(spans) == {"trace": 3, "lower": 0, "compile": 0}


def test_benchmark_py_measures_jax_alone_where_torch_cannot_be_imported(tmp_path, data_args):
    out = tmp_path / "bench.json"
    # as `python SCRIPT` where torch is not installed: importing it raises ModuleNotFoundError
    # (and, as there, no `torch` in sys.modules: SciPy looks for one)
    no_torch = textwrap.dedent("""
        import importlib.abc, os, runpy, sys
        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "torch":
                    raise ModuleNotFoundError(f"No module named {name!r}")
        sys.meta_path.insert(0, NoTorch())
        sys.argv = sys.argv[1:]
        sys.path.insert(0, os.path.dirname(sys.argv[0]))
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    args = [str(ROOT / "scripts" / "benchmark.py"), "--stages", "linear_ce", "--epochs", "2", "--no-end-to-end", "--studies", "2",
            *data_args, "--json", str(out)]
    proc = subprocess.run([sys.executable, "-c", no_torch, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PyTorch not measured: torch cannot be imported" in proc.stdout
    report = json.loads(out.read_text())
    assert report["torch_version"] is None and report["torch_loops"] == []
    (row,) = report["stages"]
    assert row["jax_epoch_seconds"] > 0 and not any(key.startswith(("torch_", "speedup_vs_torch")) for key in row)
    assert row["speedup_vs_nnx_jit"] == pytest.approx(row["nnx_jit_epoch_seconds"] / row["jax_epoch_seconds"])
    mapped, vmapped = report["studies"]  # two seeds walked through by lax.map, then side by side; against the single run
    assert (mapped["width"], vmapped["width"]) == (1, 2) and mapped["backend_default"] and not vmapped["backend_default"]
    for study in (mapped, vmapped):
        assert study["seeds"] == 2 and study["per_model_over_single"] == pytest.approx(study["epoch_seconds"] / 2 / row["jax_epoch_seconds"])
