"""The versions the project declares: a lower bound for each requirement (.ci/lowest installs
each at it, beside the newest), the same floors in README, and no API newer than the floors."""

import re
import tomllib

import jax
import numpy as np
from flax import nnx

from conftest import ROOT
from mnist_jax.models import MLP
from mnist_jax.train import pure

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REQUIREMENT = re.compile(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)")


def floors(requirements: list[str]) -> dict[str, str]:
    found = {}
    for requirement in requirements:
        match = REQUIREMENT.fullmatch(requirement)
        assert match, f"{requirement}: not a plain lower bound"
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


def test_pure_replaces_each_variable_by_its_array_as_nnx_as_pure_does():
    """`train.pure` stands for flax 0.12.7's `nnx.as_pure` on every supported flax."""
    model = MLP(hidden=8, batchnorm=True, rngs=nnx.Rngs(0))
    state = nnx.state(model)
    plain = pure(state)
    leaves = jax.tree.leaves(plain)
    assert leaves and all(isinstance(leaf, jax.Array) for leaf in leaves)
    assert [v[...].shape for v in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))] == [
        leaf.shape for leaf in leaves]
    if hasattr(nnx, "as_pure"):  # flax 0.12.7 on
        expected = nnx.as_pure(state)
        assert jax.tree.structure(plain) == jax.tree.structure(expected)
        jax.tree.map(np.testing.assert_array_equal, plain, expected)
