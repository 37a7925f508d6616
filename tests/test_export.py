"""Every program a run compiles exports for TPU and CUDA from this CPU (`jax.export`), at
the shapes of a real run: no custom calls (so nothing calls back to the host), and every
matmul asks for full float32 precision, as PyTorch's default does."""

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.export  # a submodule jax 0.7 does not import with jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from mnist_jax import sharding
from mnist_jax.data import MNIST, NUM_EXAMPLES
from mnist_jax.evaluate import make_evaluate
from mnist_jax.stages import STAGES
from mnist_jax.study import _grid_programs
from mnist_jax.train import (
    Point, TrainConfig, device_data, epoch_keys, examples_at, graph, initial, make_optimizer, make_train_epoch,
    point, shuffle,
)

PLATFORMS = ("tpu", "cuda")


def real_shapes() -> MNIST:
    """MNIST's shapes and dtypes (zeros: only the shapes are exported)."""
    train, test = NUM_EXAMPLES["train"], NUM_EXAMPLES["test"]
    return MNIST(np.zeros((train, 28, 28), np.uint8), np.zeros(train, np.uint8),
                 np.zeros((test, 28, 28), np.uint8), np.zeros(test, np.uint8), "shapes")


def exported_facts(jitted, *args) -> dict:
    """What the export of `jitted` at `args` (arrays or shapes) says about accelerators."""
    exported = jax.export.export(jitted, platforms=PLATFORMS)(*args)
    text = exported.mlir_module()
    dots = re.findall(r"stablehlo\.dot(?:_general)? .*", text)
    return {
        "platforms": list(exported.platforms),
        "custom_calls": sorted(set(re.findall(r"stablehlo\.custom_call @(\w+)", text))),
        "host_callbacks": len(re.findall(r"callback", text)),
        "dots": len(dots),
        "dots_not_highest": [d[:120] for d in dots if "precision = [HIGHEST, HIGHEST]" not in d],
        "devices": exported.nr_devices,
        "batch_split": len(re.findall(r'sdy\.sharding_constraint .*\[\{"batch"\}', text)),
    }


def programs(config: TrainConfig, data: MNIST, models: int = 10, mesh: jax.sharding.Mesh | None = None) -> dict:
    """Each program `train.train` and `study.train_grid` compile, with its arguments'
    shapes (the grid's as an accelerator runs them: every model of a chunk vmapped, each
    with its own learning rate and dropout rate); with a `mesh`, the training epoch's
    batches split over it, as `train` does."""
    tx = make_optimizer(config)
    graphdef, init = graph(config), jax.tree_util.Partial(initial, config, tx, len(data.train_images))
    epochs_key, state, train_idx, val_idx = jax.eval_shape(init, point(config))
    images, labels, test_images, test_labels = jax.eval_shape(lambda: device_data(data))
    if mesh is not None:
        state, images, labels = sharding.abstract((state, images, labels), mesh)
    val_images, val_labels = jax.eval_shape(examples_at, images, labels, val_idx)
    evaluate = jax.jit(make_evaluate(graphdef, config.spec.loss))
    grid_epoch, grid_test = _grid_programs(config, graphdef, tx, sharding.make_mesh("seed", 1), vmapped=True)
    many_keys, many_states, many_train_idx, many_val_idx = jax.eval_shape(jax.vmap(init), Point(*(jnp.full(models, x) for x in point(config))))
    grid_models = (many_states, many_train_idx, many_val_idx, many_keys)
    return {
        "init": (jax.jit(init), point(config)),
        "epoch_keys": (epoch_keys, epochs_key, 1),
        "shuffle": (shuffle, epochs_key, train_idx),
        "examples_at": (examples_at, images, labels, val_idx),
        "train_epoch": (jax.jit(make_train_epoch(graphdef, config.spec.loss, tx, config.batch_size, mesh)),
                        state, images, labels, train_idx, epochs_key),
        "evaluate_validation": (evaluate, state.params, state.batch_stats, val_images, val_labels),
        "evaluate_test": (evaluate, state.params, state.batch_stats, test_images, test_labels),
        "grid_epoch": (grid_epoch, grid_models, jnp.int32(1), images, labels, test_images, test_labels),
        "grid_test": (grid_test, many_states, test_images, test_labels),
    }


def assert_ready_for_accelerators(facts: dict) -> None:
    assert facts["platforms"] == list(PLATFORMS)
    assert facts["custom_calls"] == [] and facts["host_callbacks"] == 0
    assert facts["dots_not_highest"] == []


# Programs of no stage: module functions of a key, indices and images, which are the same
# arrays whatever the stage. They are exported with the quick tier's `linear_ce` only, as is
# `linear_mse`'s `init` (it builds the model, the same linear one, and holds no loss).
OF_NO_STAGE = {"epoch_keys", "shuffle", "examples_at"}
EXPORTED_WITH_LINEAR_CE = {"linear_ce": set(), "linear_mse": OF_NO_STAGE | {"init"}}


@pytest.mark.parametrize("stage", [s if s == "linear_ce" else pytest.param(s, marks=pytest.mark.slow) for s in STAGES])
def test_every_program_of_a_stage_exports_for_tpu_and_cuda_with_full_float32_matmuls(stage):
    for name, (jitted, *args) in programs(TrainConfig(stage), real_shapes()).items():
        if name in EXPORTED_WITH_LINEAR_CE.get(stage, OF_NO_STAGE):
            continue
        facts = exported_facts(jitted, *args)
        assert_ready_for_accelerators(facts)
        if name in ("train_epoch", "evaluate_test", "grid_epoch"):
            assert facts["dots"] > 0, name  # the checks saw the model's matmuls


# In a fresh process: the device count is fixed when JAX starts.
MESH_PROGRAM = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from mnist_jax import sharding
    from mnist_jax.train import TrainConfig
    from test_export import exported_facts, programs, real_shapes

    mesh = sharding.make_mesh("batch", 128, 54_000 % 128)
    facts = {"devices": mesh.size}
    for stage in ("linear_ce", "mlp_bn"):
        jitted, *args = programs(TrainConfig(stage), real_shapes(), mesh=mesh)["train_epoch"]
        facts[stage] = exported_facts(jitted, *args)
    print(json.dumps(facts))
    """
)


@pytest.mark.slow
def test_the_training_epoch_split_over_a_mesh_of_devices_exports_too():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-c", MESH_PROGRAM, str(ROOT / "tests")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts.pop("devices") == 4
    for stage, stage_facts in facts.items():
        assert_ready_for_accelerators(stage_facts)
        assert stage_facts["devices"] == 4 and stage_facts["batch_split"] >= 2, stage  # each batch's images and labels
