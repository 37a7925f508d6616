"""Eight simulated CPU devices give the results of one device: a single run split over
the batch axis, several seeds split over the seed axis."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# Runs in a fresh process: the device count is fixed when JAX starts. A 1,000-image
# training set keeps it quick; 1,000 = 7 x 128 + 104, and 8 divides 128 and 104.
PROGRAM = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from mnist_jax import sharding, study
    from mnist_jax.data import MNIST, load_idx_dir
    from mnist_jax.train import Replay, TrainConfig, graph, init_state, make_optimizer, run_keys, train

    full = load_idx_dir(sys.argv[1])
    data = MNIST(full.train_images[:7000], full.train_labels[:7000], full.test_images[:2000], full.test_labels[:2000], "subset")
    out = {"devices": jax.device_count()}
    config = TrainConfig("mlp_bn", epochs=1)
    # float64, so that agreement to ~1e-10 shows the same computation, rounding aside
    jax.config.update("jax_enable_x64", True)
    start = init_state(config, run_keys(config.seed)[1], make_optimizer(config))
    initial = [jax.tree.map(lambda a: np.asarray(a, np.float64), s) for s in start[:2]]
    for name, mesh in (("one", sharding.make_mesh("batch", 1)), ("many", None)):
        run = train(config, data, mesh=mesh, replay=Replay(initial=initial))
        out[f"run64_{name}"] = {
            "devices": len(run.final.params["hidden"]["kernel"].sharding.device_set),
            "losses": [row["train_loss"] for row in run.history],
            "params": jax.tree.map(lambda a: np.asarray(a).tolist(), run.final.params),
            "batch_stats": jax.tree.map(lambda a: np.asarray(a).tolist(), run.final.batch_stats),
        }
    jax.config.update("jax_enable_x64", False)
    for name, mesh, vmapped in (("one", sharding.make_mesh("seed", 1), False), ("many", None, False), ("many_vmapped", None, True)):
        seeds = study.train_seeds(TrainConfig("linear_ce", epochs=1), data, list(range(8)), mesh=mesh, vmapped=vmapped)
        out[f"seeds_{name}"] = {
            "test_accuracies": seeds.test_accuracies.tolist(),
            "params": jax.tree.map(lambda a: a.tolist(), seeds.final_params),
        }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def eight_devices(data_dir):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(data_dir)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def leaves(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(leaves(value, f"{prefix}{key}/"))
        else:
            flat[prefix + key] = np.asarray(value)
    return flat


def test_a_single_run_splits_each_batch_over_eight_devices_and_matches_one_device(eight_devices):
    one, many = eight_devices["run64_one"], eight_devices["run64_many"]
    assert eight_devices["devices"] == 8 and many["devices"] == 8 and one["devices"] == 1
    np.testing.assert_allclose(many["losses"], one["losses"], rtol=1e-9)
    # atol 1e-10: the bias before BatchNorm has a zero gradient up to rounding, and Adam
    # scales that rounding (1e-17) to steps of ~1e-12; everything else agrees far closer
    for part in ("params", "batch_stats"):  # BatchNorm's statistics are those of the global batch
        for name, value in leaves(one[part]).items():
            np.testing.assert_allclose(leaves(many[part])[name], value, rtol=1e-9, atol=1e-10, err_msg=name)


def test_eight_seeds_split_over_eight_devices_match_one_device(eight_devices):
    """Each model walked through by `lax.map` (the CPU's way): the same float32 figures on
    eight devices as on one. Vmapped (the accelerators' way), within float32 rounding."""
    one, many, vmapped = eight_devices["seeds_one"], eight_devices["seeds_many"], eight_devices["seeds_many_vmapped"]
    assert many["test_accuracies"] == one["test_accuracies"]
    np.testing.assert_allclose(vmapped["test_accuracies"], one["test_accuracies"], atol=1e-3)
    assert len(set(one["test_accuracies"])) > 1  # eight different seeds, not one model eight times
    for name, value in leaves(one["params"]).items():
        np.testing.assert_array_equal(leaves(many["params"])[name], value, err_msg=name)
        np.testing.assert_allclose(leaves(vmapped["params"])[name], value, atol=1e-4, err_msg=name)
