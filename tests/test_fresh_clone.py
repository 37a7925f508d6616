"""A stranger's machine: a fresh clone with nothing beside it, an empty cache, and a local
HTTP server on 127.0.0.1 standing in for the internet's MNIST mirror."""

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading

import pytest

from conftest import ROOT
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


def test_every_script_writes_under_runs_by_default_and_refuses_to_overwrite(stranger, clone):
    run, _ = stranger
    commands = [
        ["scripts/study.py", "--seeds", "2", "--epochs", "1", "--stages", "linear_ce,mlp"],
        ["scripts/make_assets.py"],
        ["scripts/linearity.py", "--seeds", "1", "--widths", "8", "--epochs", "1", "--max-steps", "5"],
        ["scripts/compare.py", "--stages", "linear_ce", "--seeds", "1", "--epochs", "1", "--torch-loop", "tensor"],
        ["scripts/benchmark.py", "--stages", "linear_ce", "--epochs", "1", "--no-end-to-end"],
    ]
    for command in commands:
        proc = run(*command)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        if command[0] == "scripts/study.py":  # progress, as plain lines off a terminal
            assert "linear_ce, 2 seeds: epoch 1/1" in proc.stdout and "mlp, 2 seeds: epoch 1/1" in proc.stdout
    written = {p.relative_to(clone / "runs").as_posix() for p in (clone / "runs").rglob("*") if p.is_file()}
    assert {"study/results.json", "figures/comparison_chart.png", "linearity/linearity.json",
            "compare/compare.json", "benchmark.json"} <= written
    for command in commands:
        before = {p: p.stat().st_mtime_ns for p in (clone / "runs").rglob("*") if p.is_file()}
        proc = run(*command)
        assert proc.returncode == 2 and "--overwrite" in proc.stderr and len(proc.stderr.splitlines()) == 1, (command, proc.stderr)
        assert {p: p.stat().st_mtime_ns for p in (clone / "runs").rglob("*") if p.is_file()} == before
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert status.stdout == ""
