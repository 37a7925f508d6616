"""The installs the project supports: a lower bound for each requirement (.ci/lowest installs
each at it, beside the newest), the same floors in README, no API newer than the floors, and
a clone's scripts working alike with an installed (not editable) package."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REQUIREMENT = re.compile(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)(?:,!=[0-9][0-9.]*)*")  # a floor, less releases known bad


def floors(requirements: list[str]) -> dict[str, str]:
    found = {}
    for requirement in requirements:
        match = REQUIREMENT.fullmatch(requirement)
        assert match, f"{requirement}: not a lower bound (with at most some releases excluded)"
        found[match[1]] = match[2]
    return found


def test_every_requirement_has_a_lower_bound_and_no_upper_one():
    """So the lowest-direct install of .ci/lowest is a real version of each, and a runtime
    newer than the newest tested (Colab's, say) still installs."""
    runtime = floors(PROJECT["dependencies"])
    assert runtime["jax"] == runtime["jaxlib"]  # a jax release wants the jaxlib of its own version: one floor for both
    for extra in PROJECT["optional-dependencies"].values():
        floors(extra)


def test_readme_states_the_floors_pyproject_declares():
    runtime, readme = floors(PROJECT["dependencies"]), (ROOT / "README.md").read_text()
    python = PROJECT["requires-python"].removeprefix(">=")
    assert f"Python {python}+, JAX {runtime['jax']}+ and Flax {runtime['flax']}+ work" in readme
    assert f"on a JAX older than {runtime['jax']};" in readme  # the notebook's stop


@pytest.mark.slow
def test_a_clones_script_importing_an_installed_package_ends_in_one_line_on_a_signal_while_importing(tmp_path):
    """Its early signal handlers do not depend on where mnist_jax was imported from (`pip install .`
    puts it far from the clone's scripts/)."""
    shutil.copytree(ROOT / "mnist_jax", tmp_path / "site" / "mnist_jax", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "study.py"), "--out", tmp_path / "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})

    def handles_sigterm() -> bool:  # its SigCgt mask: bit 14 is signal 15
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return bool(int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16) >> 14 & 1)

    while proc.poll() is None and not handles_sigterm():
        time.sleep(0.001)  # the first thing a script does
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (143, "stopped by SIGTERM: nothing was started\n")


def test_a_non_editable_install_leaves_nothing_untracked_in_the_clone():
    """`pip install .` builds in the clone's build/ (setuptools): ignored, as the egg-info is."""
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "build/" in ignored and "*.egg-info/" in ignored
