import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from mnist_jax.data import DATA_DIR_ENV, load_mnist

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent XLA cache for the session, shared with the scripts the tests run:
    the same programs are compiled once, not once per process."""
    cache = str(tmp_path_factory.mktemp("jax_cache"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The verified IDX files: $MNIST_JAX_DATA_DIR, else ../shared/data/mnist."""
    path = Path(os.environ.get(DATA_DIR_ENV) or SHARED_MNIST)
    if not path.is_dir():
        pytest.fail(f"MNIST IDX files not found at {path}; set {DATA_DIR_ENV}")
    return path


@pytest.fixture(scope="session")
def mnist(data_dir):
    return load_mnist("idx", data_dir)


def run_script(name: str, *args, env: dict | None = None, cwd: Path | None = None):
    """Run scripts/<name> as a user would, in a fresh process."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=600,
    )
