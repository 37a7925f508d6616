"""scripts/colab.ipynb runs in a Jupyter kernel as on Colab: its install cell installs this
checkout (built offline into a folder of the test's own, so this venv is left as it is) or
stops the notebook in one line when pip fails or the runtime's JAX is outside the supported
range; every other cell then runs, without TensorFlow, and shows each figure it draws as the
PNG file itself, every pixel of it."""

import base64
import importlib.metadata
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tomllib
import warnings

import nbformat
import pytest

from mnist_jax.stages import STAGES
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from conftest import ROOT

NOTEBOOK = ROOT / "scripts" / "colab.ipynb"
FIGURES = ("training_curves.png", "comparison_chart.png")
NOT_INSTALLED = "mnist_jax is not installed: "
# Colab's TPU runtime has no TensorFlow: the kernel finds none, whatever this venv holds.
NO_TENSORFLOW = "--IPKernelApp.exec_lines=import sys; sys.modules['tensorflow'] = None"


def code_cells() -> list[str]:
    return ["".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]


def test_notebook_is_valid_nbformat_4_with_no_stored_outputs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nbformat warns of what it will refuse, as a cell without an id
        nbformat.validate(nbformat.reads(NOTEBOOK.read_text(), as_version=nbformat.NO_CONVERT))
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    where, install = code_cells()[:2]
    assert where.splitlines()[1].startswith('REPO = "https://github.com/')
    assert 'os.environ.get("MNIST_JAX_SOURCE", f"mnist_jax @ git+{REPO}")' in install


@pytest.mark.parametrize("env, said", [
    ({"MNIST_JAX_SEEDS": "ten"}, "MNIST_JAX_SEEDS='ten': expected a whole number from 1"),
    ({"MNIST_JAX_EPOCHS": "0"}, "MNIST_JAX_EPOCHS='0': expected a whole number from 1"),
    ({"MNIST_JAX_SEEDS": "\u00b2"}, "MNIST_JAX_SEEDS='\u00b2': expected a whole number from 1"),  # (a digit int() refuses)
    ({"MNIST_JAX_OUT": "{tmp}"}, "{tmp} holds results.json, training_curves.png, not written by mnist_jax: set MNIST_JAX_OUT to another folder"),
])
def test_the_settings_cell_refuses_what_the_notebook_cannot_use_before_any_work(tmp_path, monkeypatch, env, said):
    """(A user's results.json and a file named as a figure were replaced; seeds of 0 failed after every stage had
    trained: a hostile user's cases.) Its figures and results of an earlier run are the notebook's to replace."""
    (tmp_path / "results.json").write_text('{"my": "own results"}')
    (tmp_path / "training_curves.png").write_text("my notes")
    shutil.copy(ROOT / "assets" / "comparison_chart.png", tmp_path)  # drawn by mnist_jax
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    settings = code_cells()[2]
    with pytest.raises(Exception) as refused:
        exec(settings, {})
    assert type(refused.value).__name__ == "Refused" and refused.value._render_traceback_() == [said.format(tmp=tmp_path)]


def project_copy(tmp_path):
    """What pip needs to build this checkout, copied, so that building it leaves nothing here."""
    source = tmp_path / "mnist_jax-src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for folder in ("mnist_jax", "scripts"):  # scripts/: the package mnist_jax.scripts
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return source


def run_notebook(tmp_path, source, *, path=(), env=None, after=(), cells=None
                 ) -> tuple[nbformat.NotebookNode, CellExecutionError | None]:
    """The notebook (its first `cells`, if given), and the code cells `after` appended, executed in a fresh python3 kernel
    in `tmp_path`, with the install cell's pip pointed at `source` and installing into
    `tmp_path/site` (first on the kernel's path after the folders `path`): offline, the project
    alone, since its dependencies are this venv's. An `env` value None unsets the variable.
    With the error that stopped it, if one did."""
    site = tmp_path / "site"
    site.mkdir()  # before the kernel starts: a folder missing then is never searched again
    kernel_env = {
        **os.environ,
        "MNIST_JAX_SOURCE": str(source),
        "PIP_TARGET": str(site), "PIP_NO_DEPS": "1", "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0",  # sic: pip reads this variable as "build isolation: no"
        "PYTHONPATH": os.pathsep.join(map(str, [*path, site])),
        "MNIST_JAX_EPOCHS": "1", "MNIST_JAX_SEEDS": "2", "MNIST_JAX_OUT": "out",  # 2 seeds: a mean, a spread, an interval
        **(env or {}),
    }
    kernel_env = {name: value for name, value in kernel_env.items() if value is not None and name != "MPLBACKEND"}  # (inline)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = nb.cells[:cells]
    nb.cells += [nbformat.v4.new_code_cell(code) for code in after]
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                            extra_arguments=[NO_TENSORFLOW])
    try:
        client.execute(env=kernel_env)
    except CellExecutionError as e:
        return nb, e
    return nb, None


def outputs(cell, output_type: str) -> list:
    return [output for output in cell.get("outputs", []) if output["output_type"] == output_type]


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


# What the kernel ran with: where its mnist_jax came from, whether it found TensorFlow (as `data` asks), the pins given to pip.
REPORT_CELL = """import importlib.util, json, mnist_jax
print(json.dumps([mnist_jax.__file__, importlib.util.find_spec("tensorflow") is not None, CONSTRAINTS.read_text()]))"""


# The notebook's stages in the test (MNIST_JAX_STAGES): a linear one (the softmax-MSE row of the curves), an MLP (the
# cross-entropy row) and a control, which has no documented accuracy. Every stage trains as these do (test_study.py).
NOTEBOOK_STAGES = ("linear_mse", "mlp", "random_features")


@pytest.mark.slow
def test_the_notebook_runs_in_a_kernel_and_shows_every_figure_at_full_resolution(tmp_path, data_dir):
    source = project_copy(tmp_path)
    nb, error = run_notebook(tmp_path, source, after=[REPORT_CELL],
                             env={"MNIST_JAX_DATA_DIR": str(data_dir), "MNIST_JAX_STAGES": ",".join(NOTEBOOK_STAGES)})
    assert error is None, str(error)[-3000:]
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None and not outputs(cell, "error") for cell in code)
    printed = "".join(output["text"] for cell in code for output in outputs(cell, "stream"))
    for stage in STAGES:  # the stages asked for, each seed 42 and in the study, and no other
        assert (f"{stage:20s} test " in printed) == (stage in NOTEBOOK_STAGES), stage
        assert bool(re.search(rf"^{stage:20s} \d", printed, re.MULTILINE)) == (stage in NOTEBOOK_STAGES), stage  # the study's
    assert "random_features      test " in printed and "(a control: none documented)" in printed
    assert "Traceback" not in printed
    assert list(json.loads((tmp_path / "out" / "results.json").read_text())["stages"]) == list(NOTEBOOK_STAGES)
    shown = [output for cell in code for output in outputs(cell, "display_data") if "image/png" in output["data"]]
    assert len(shown) == len(FIGURES)  # each figure once, and nothing else drawn
    for output, name in zip(shown, FIGURES):
        png, written = base64.b64decode(output["data"]["image/png"]), (tmp_path / "out" / name).read_bytes()
        assert png_size(png) == png_size(written) and png == written, name
        assert not output.get("metadata", {}).get("image/png"), "shown at a size of its own"

    module, found_tensorflow, pins = json.loads(outputs(code[-1], "stream")[-1]["text"])
    assert module == str(tmp_path / "site" / "mnist_jax" / "__init__.py") and not found_tensorflow
    # The install pinned this venv's jax and jaxlib, under which pip would install the project and nothing else.
    for package in ("jax", "jaxlib"):
        assert f"{package}=={importlib.metadata.version(package)}" in pins.split()
    (tmp_path / "pins.txt").write_text(pins)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
         "--constraint", str(tmp_path / "pins.txt"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith("Would install")] == ["Would install mnist_jax-0.1.0"]


def assert_stopped_at_the_install_cell(nb, error, *fragments):
    """The install cell failed with one line holding each fragment, and no cell after it ran."""
    assert error is not None
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    install = code[1]
    (failure,) = outputs(install, "error")
    assert len(failure["traceback"]) == 1 and failure["traceback"][0].startswith(NOT_INSTALLED), failure["traceback"]
    for fragment in fragments:
        assert fragment in failure["traceback"][0]
    assert all(cell.execution_count is None and not cell.get("outputs") for cell in code[2:])


@pytest.mark.slow
def test_a_failing_pip_stops_the_notebook_at_the_install_cell_in_one_line(tmp_path):
    nb, error = run_notebook(tmp_path, tmp_path / "no-such-project")
    assert_stopped_at_the_install_cell(nb, error, f"pip could not get {tmp_path / 'no-such-project'}")
    assert not any((tmp_path / "site").iterdir())


@pytest.mark.slow
def test_a_runtime_jax_older_than_the_supported_range_stops_the_notebook_at_the_install_cell(tmp_path):
    """The runtime's JAX as its metadata says (a jax 0.6.0 first on the kernel's path)."""
    old = tmp_path / "old-runtime" / "jax-0.6.0.dist-info"
    old.mkdir(parents=True)
    (old / "METADATA").write_text("Metadata-Version: 2.1\nName: jax\nVersion: 0.6.0\n")
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(r for r in requirements if r.startswith("jax>="))
    nb, error = run_notebook(tmp_path, project_copy(tmp_path), path=[old.parent])
    assert_stopped_at_the_install_cell(
        nb, error, f"this runtime's jax 0.6.0 is outside the supported range {floor}", "Runtime > Change runtime type",
        '%pip install -U "jax[tpu]"')
    assert not any((tmp_path / "site").iterdir())


@pytest.mark.slow
def test_the_install_cell_run_again_over_the_project_it_installed_passes(tmp_path):
    """Run all again, or after a restarted session: pip's dry run has nothing to install (the same version from the
    same wheel, as from the same git URL), yet the cell reads the project's requirements from its report. The project
    is installed first on the kernel's path, where pip looks (the kernel's install goes to a prefix: --target would
    make pip ignore what is installed; first on the path, pip never touches this venv's own)."""
    wheel, prefix = tmp_path / "wheel", tmp_path / "prefix"
    site = prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    for command in (["wheel", "-w", wheel, project_copy(tmp_path)],
                    ["install", "--target", site, "--find-links", wheel, "mnist_jax"]):
        subprocess.run([sys.executable, "-m", "pip", *command, "-q", "--no-deps", "--no-index", "--no-build-isolation"],
                       check=True, capture_output=True, timeout=300)
    installed = sorted(site.rglob("*"))
    (built,) = wheel.glob("mnist_jax-*.whl")
    nb, error = run_notebook(tmp_path, built, path=[site], env={"PIP_TARGET": None, "PIP_PREFIX": str(prefix)},
                             cells=3, after=["import mnist_jax; print(mnist_jax.__file__)"])
    assert error is None, str(error)[-3000:]
    assert outputs(nb.cells[-1], "stream")[-1]["text"].strip() == str(site / "mnist_jax" / "__init__.py")
    assert sorted(site.rglob("*")) == installed
