"""A stranger's machine: a fresh clone with nothing beside it, an empty cache, and a local
HTTP server on 127.0.0.1 standing in for the internet's MNIST mirror. The scripts run
there as a user runs them, their outputs at their defaults."""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import ROOT, run_script_in_process
from mnist_jax.data import IDX_SHA256

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """The working tree as `git clone` would bring it (tracked and unignored files),
    committed in a fresh repository."""
    root = tmp_path_factory.mktemp("stranger") / "mnist_jax"
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True)
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"]):
        subprocess.run(["git", *command], cwd=root, check=True, capture_output=True)
    return root


@pytest.fixture(scope="module")
def stranger(clone, data_dir, tmp_path_factory):
    """(run, cache): run a command in the clone as a user with no MNIST_JAX_DATA_DIR, no
    TFDS data and an empty cache, whose mirror is a local server of the four `.gz` files."""
    served = tmp_path_factory.mktemp("mirror")
    for stem in IDX_SHA256:
        shutil.copy(data_dir / f"{stem}.gz", served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    home = tmp_path_factory.mktemp("home")
    env = {key: value for key, value in os.environ.items() if key != "MNIST_JAX_DATA_DIR"}
    env |= {"MNIST_JAX_MIRROR": f"http://127.0.0.1:{server.server_address[1]}/", "XDG_CACHE_HOME": str(home / "cache"),
            "TFDS_DATA_DIR": str(home / "tfds"), "PYTHONPATH": str(clone)}

    def run(*command):
        return subprocess.run([sys.executable, *map(str, command)], cwd=clone, env=env, capture_output=True, text=True, timeout=600)

    yield run, home / "cache" / "mnist_jax"
    server.shutdown()


def test_without_any_mnist_the_tests_stop_with_one_message_on_how_to_provide_it(clone, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "MNIST_JAX_DATA_DIR"}
    env |= {"MNIST_JAX_MIRROR": "http://127.0.0.1:9/", "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "TFDS_DATA_DIR": str(tmp_path / "tfds"), "PYTHONPATH": str(clone)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_data.py"],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    (message,) = [line for line in proc.stdout.splitlines() if "the tests on real data need MNIST" in line]
    assert "MNIST_JAX_DATA_DIR" in message and "internet" in message
    assert "Traceback" not in proc.stdout + proc.stderr


def test_train_py_downloads_and_verifies_mnist_into_an_empty_cache(stranger):
    run, cache = stranger
    proc = run("scripts/train.py", "--stage", "linear_ce", "--epochs", "1")
    assert proc.returncode == 0, proc.stderr
    assert "data: download from http://127.0.0.1" in proc.stdout and "[Test] loss=" in proc.stdout
    assert sorted(p.name for p in cache.glob("*.gz")) == sorted(f"{stem}.gz" for stem in IDX_SHA256)


def test_the_tests_find_mnist_as_train_py_does(stranger):
    run, _ = stranger
    proc = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_data.py", "-k", "published_label_counts or pinned_digests")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "2 passed" in proc.stdout


# Every script but train.py (tests/test_train_script.py), as a user runs it, with its outputs at their defaults
COMMANDS = {
    "study.py": ["--seeds", "2", "--epochs", "1", "--stages", "linear_ce,mlp"],
    "make_assets.py": [],
    "linearity.py": ["--seeds", "1", "--widths", "8", "--epochs", "1", "--max-steps", "5"],
    "compare.py": ["--stages", "linear_ce", "--seeds", "2", "--epochs", "1", "--torch-loop", "both"],
    "benchmark.py": ["--stages", "linear_ce", "--epochs", "2", "--no-end-to-end"],
}


@pytest.fixture(scope="module")
def default_runs(stranger, clone) -> dict:
    """Each script once, two at a time (one script's single-threaded work, importing,
    compiling, drawing, overlaps the other's on a second core); make_assets.py after the
    study it draws."""
    run, _ = stranger
    lanes = [["study.py", "make_assets.py", "linearity.py"], ["benchmark.py", "compare.py"]]
    with ThreadPoolExecutor(len(lanes)) as pool:
        ran = pool.map(lambda lane: {script: run(f"scripts/{script}", *COMMANDS[script]) for script in lane}, lanes)
        procs = {script: proc for lane in ran for script, proc in lane.items()}
    for script, proc in procs.items():
        assert proc.returncode == 0, (script, proc.stderr[-2000:])
    return procs


def test_study_py_writes_results_and_make_assets_py_every_figure_under_runs(default_runs, clone):
    results = json.loads((clone / "runs/study/results.json").read_text())
    assert list(results["stages"]) == ["linear_ce", "mlp"]
    for r in results["stages"].values():
        assert r["seeds"] == [0, 1] and len(r["test_accuracies"]) == 2 and len(r["history"][0]) == 1
        assert r["ci95"][0] <= r["mean"] <= r["ci95"][1]
    assert len(results["steps"]) == 1 and {"command", "device", "jax_version", "seconds"} <= results.keys()
    arrays = np.load(clone / "runs/study/study_arrays.npz")
    assert arrays["linear_ce_weights"].shape == (10, 784) and arrays["mlp_predictions"].shape == (10_000,)
    assert arrays["mlp_confusion"].sum() == 10_000
    # progress in the unit of the work, as plain lines off a terminal
    assert "linear_ce, 2 seeds: epoch 1/1" in default_runs["study.py"].stdout
    for name in ("training_curves", "comparison_chart", "weight_templates", "evolution_diagram", "confusion_matrices", "misclassified"):
        assert (clone / "runs/figures" / f"{name}.png").stat().st_size > 5_000, name


def test_linearity_py_writes_the_ceilings_and_the_sweep_under_runs(default_runs, clone):
    report = json.loads((clone / "runs/linearity/linearity.json").read_text())
    assert report["linear_ce_converged"]["steps"] <= 5 and [r["hidden"] for r in report["width_sweep"]] == [8]
    assert (clone / "runs/linearity/width_sweep.png").stat().st_size > 5_000
    assert "linearity: model 3/3" in default_runs["linearity.py"].stdout


def test_compare_py_writes_the_table_json_and_figure_under_runs(default_runs, clone):
    report = json.loads((clone / "runs/compare/compare.json").read_text())
    (stage,) = report["stages"]
    assert stage["stage"] == "linear_ce" and stage["documented_accuracy"] == 0.9215
    for framework in ("jax", "torch_original", "torch_tensor"):
        assert len(stage[framework]["accuracies"]) == 2 and 0.8 < stage[framework]["mean_accuracy"] < 1
        assert stage[framework]["seconds_per_epoch"] > 0
    assert stage["jax"]["compile_seconds"] > 0
    assert (clone / "runs/compare/framework_comparison.png").stat().st_size > 10_000
    assert "| `linear_ce` | 92.15 |" in default_runs["compare.py"].stdout
    assert "compare: run 6/6" in default_runs["compare.py"].stdout


def test_benchmark_py_writes_the_figures_it_prints(default_runs, clone):
    stdout = default_runs["benchmark.py"].stdout
    report = json.loads((clone / "runs/benchmark/benchmark.json").read_text())
    assert {"stages", "ceiling_flops", "device", "jax_version", "torch_version"} <= report.keys()
    (row,) = report["stages"]
    assert row["stage"] == "linear_ce" and report["torch_loops"] == ["tensor", "original", "fused", "compile"]
    for peer in [f"torch_{loop}" for loop in report["torch_loops"]] + ["nnx_jit"]:
        assert row[f"speedup_vs_{peer}"] == pytest.approx(row[f"{peer}_epoch_seconds"] / row["jax_epoch_seconds"])
        assert f"{row[f'speedup_vs_{peer}']:.1f}x" in stdout
    assert row["torch_compile_warm_up_seconds"] > 0  # torch.compile compiles in its first epoch
    assert row["jax_samples_per_second"] == pytest.approx(54_000 / row["jax_epoch_seconds"])
    assert report["ceiling_flops"] == row["ceiling_flops"]  # one round
    assert 0 < row["efficiency"] < 1 and row["jax_compile_seconds"] > 0


def test_every_script_refuses_to_overwrite_its_results_and_no_tracked_file_changes(default_runs, stranger, clone):
    """study.py as a user runs it, in a process of its own; the other scripts' mains in this
    process, in the clone (the refusal comes from parsing, before any work)."""
    run, _ = stranger
    written = {p: p.stat().st_mtime_ns for p in (clone / "runs").rglob("*") if p.is_file()}
    for script, args in COMMANDS.items():
        proc = run(f"scripts/{script}", *args) if script == "study.py" else run_script_in_process(script, *args, cwd=clone)
        assert proc.returncode == 2 and "--overwrite" in proc.stderr and len(proc.stderr.splitlines()) == 1, (script, proc.stderr)
    assert {p: p.stat().st_mtime_ns for p in (clone / "runs").rglob("*") if p.is_file()} == written
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert status.stdout == ""


def test_a_non_editable_install_trains_from_the_console_command(clone, data_args, tmp_path):
    """`pip install` of the checkout (not editable) into a venv that has the dependencies: `mnist-jax train` and
    `python -m mnist_jax` run the installed copy from any folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "dependencies.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")))  # its .pth not run
    source = shutil.copytree(clone, tmp_path / "source", ignore=shutil.ignore_patterns(".git"))  # pip builds in it
    subprocess.run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", source], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([venv / "bin" / "python", "-c", "import mnist_jax; print(mnist_jax.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site)), where.stdout  # not this checkout, nor the editable one
    proc = subprocess.run([venv / "bin" / "mnist-jax", "train", "--stage", "linear_ce", "--epochs", "1", "--out", "run",
                           *data_args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "[Test] loss=" in proc.stdout and (tmp_path / "run" / "checkpoint.npz").is_file(), proc.stderr
    refused = subprocess.run([venv / "bin" / "python", "-m", "mnist_jax", "study", "--seeds", "0"], env=env, cwd=tmp_path,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith(
        "python -m mnist_jax study: error: argument --seeds: expected an integer from 1")  # the command as typed
