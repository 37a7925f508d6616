"""scripts/colab.ipynb is a valid notebook whose Python runs end to end, without TensorFlow."""

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

NOTEBOOK = ROOT / "scripts" / "colab.ipynb"


def code_cells() -> list[str]:
    return ["".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]


def test_notebook_is_valid_nbformat_4_with_no_stored_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    assert any(line.startswith("!pip install") for cell in code_cells() for line in cell.splitlines())


def test_notebook_python_cells_train_every_stage_run_a_study_and_draw_figures(tmp_path, data_dir):
    python = [
        line for cell in code_cells() for line in cell.splitlines() if not line.lstrip().startswith(("!", "%"))
    ]
    # Colab's TPU runtime has no TensorFlow: make importing it fail. One epoch, and two seeds
    # in the study: the fewest with a mean, a spread and an interval to print and draw.
    script = tmp_path / "notebook.py"
    script.write_text("import sys\nsys.modules['tensorflow'] = None\n" + "\n".join(python) + "\n")
    env = {
        **os.environ, "MNIST_JAX_DATA_DIR": str(data_dir), "MNIST_JAX_EPOCHS": "1", "MNIST_JAX_SEEDS": "2",
        "MNIST_JAX_OUT": str(tmp_path / "out"), "MPLBACKEND": "Agg",
    }
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("linear_mse", "linear_ce", "mlp", "mlp_dropout", "mlp_bn"):
        assert f"{stage:12s} test " in proc.stdout
    assert (tmp_path / "out" / "results.json").is_file()
    for figure in ("training_curves.png", "comparison_chart.png"):
        assert (tmp_path / "out" / figure).stat().st_size > 10_000


@pytest.mark.slow
def test_the_install_cell_installs_the_project_from_repo_against_the_runtimes_jax():
    """The runtime's jax and jaxlib pinned as they are: the same pip command, offline
    against this checkout, would install the project and nothing else."""
    pytest.importorskip("setuptools")  # the build backend, for --no-build-isolation
    where, install = code_cells()[:2]
    assert where.splitlines()[1].startswith('REPO = "https://github.com/')
    pip = [line for line in install.splitlines() if line.startswith("!")]
    assert pip == ['!pip install -q --constraint {CONSTRAINTS} "mnist_jax @ git+{REPO}"']
    namespace = {}
    exec("\n".join(line for line in install.splitlines() if not line.startswith("!")), namespace)
    pins = namespace["CONSTRAINTS"].read_text().split()
    for package in ("jax", "jaxlib"):
        assert f"{package}=={importlib.metadata.version(package)}" in pins
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
         "--constraint", str(namespace["CONSTRAINTS"]), "-e", str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith("Would install")] == ["Would install mnist_jax-0.1.0"]
