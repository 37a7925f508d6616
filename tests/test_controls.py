"""The controls of issue 28: a deep linear network (the MLP's parameters without its ReLU) and random features (its
ReLU without learned features). Each trains through `train()`, the scripts, the checkpoint and the converters."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from conftest import load_script, run_script_in_process
from mnist_jax import data, plots
from mnist_jax.checkpoint import load_model, load_run, save_run, to_nnx
from mnist_jax.models import MLP, count_params
from mnist_jax.results import comparisons, load_study
from mnist_jax.stages import ORIGINAL, STAGES, TrainConfig
from mnist_jax.torch_reference import build_model, to_torch
from mnist_jax.train import graph, init_state, make_optimizer, make_train_step, prepare, run_record, train

CONTROLS = [name for name, stage in STAGES.items() if stage.is_control]
RANDOM_FEATURES = [name for name in CONTROLS if STAGES[name].frozen_hidden]


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_the_controls_join_the_registry_after_the_originals_five_with_no_documented_accuracy():
    assert ORIGINAL == ("linear_mse", "linear_ce", "mlp", "mlp_dropout", "mlp_bn")
    assert CONTROLS == ["deep_linear", "random_features", "random_features_1024", "random_features_4096"]
    assert list(STAGES) == [*ORIGINAL, *CONTROLS]
    assert all(STAGES[name].documented_accuracy is None and STAGES[name].loss_name == "cross_entropy" for name in CONTROLS)
    assert [STAGES[name].hidden for name in RANDOM_FEATURES] == [256, 1024, 4096]
    assert STAGES["deep_linear"].activation == "identity" and not STAGES["deep_linear"].frozen_hidden


@pytest.mark.parametrize("stage, total, trainable", [
    ("deep_linear", 203_530, 203_530), ("random_features", 203_530, 2_570),
    ("random_features_1024", 814_090, 10_250), ("random_features_4096", 3_256_330, 40_970),
])
def test_parameter_counts_of_the_controls(stage, total, trainable):
    model = nnx.eval_shape(lambda: STAGES[stage].build(nnx.Rngs(0)))
    assert (count_params(model), count_params(model, trainable=True)) == (total, trainable)


def test_the_deep_linear_network_is_the_product_of_its_matrices_and_its_initialisation_is_the_mlps():
    deep, mlp = (STAGES[name].build(nnx.Rngs(0)) for name in ("deep_linear", "mlp"))
    assert leaves_equal(nnx.state(deep, nnx.Param), nnx.state(mlp, nnx.Param))  # the MLP's shape and initial draws
    x = jax.random.uniform(jax.random.key(1), (64, 784))
    w1, b1, w2, b2 = (np.asarray(getattr(layer, name)[...], np.float64) for layer in (deep.hidden, deep.output)
                      for name in ("kernel", "bias"))
    product = np.asarray(x, np.float64) @ (w2 @ w1).T + (w2 @ b1 + b2)
    np.testing.assert_allclose(np.asarray(deep(x)), product, rtol=0, atol=1e-5)
    y, a, b = jax.random.uniform(jax.random.key(2), (64, 784)), 0.3, -1.7  # affine: f(ax + by) = a f(x) + b f(y) + (1-a-b) f(0)
    f0 = deep(jnp.zeros((1, 784)))
    np.testing.assert_allclose(deep(a * x + b * y), a * deep(x) + b * deep(y) + (1 - a - b) * f0, rtol=0, atol=1e-4)
    assert not np.allclose(mlp(a * x + b * y), a * mlp(x) + b * mlp(y) + (1 - a - b) * mlp(jnp.zeros((1, 784))), atol=1e-3)


@pytest.mark.parametrize("stage", ["deep_linear", "random_features"])
def test_a_control_trains_through_train_and_only_a_random_features_hidden_layer_stays_as_drawn(tiny, stage):
    config = TrainConfig(stage, epochs=2)
    initial = prepare(config, tiny).state.params
    run = train(config, tiny)
    assert len(run.history) == 2 and run.test_accuracy > 0.5
    frozen = STAGES[stage].frozen_hidden
    for which in (run.final, run.best):
        assert leaves_equal(initial["hidden"], which.params["hidden"]) == frozen  # exactly, bit for bit
        assert not leaves_equal(initial["output"], which.params["output"])
    adam = run.final.opt_state.inner_state
    adam = (adam.inner_state if frozen else adam)[0]  # masked for a frozen layer: Adam keeps no moments of it
    assert (jax.tree.leaves((adam.mu["hidden"], adam.nu["hidden"])) == []) == frozen
    assert all(np.any(m) for m in jax.tree.leaves((adam.mu["output"], adam.nu["output"])))


@pytest.mark.parametrize("stage", ["deep_linear", "random_features"])
def test_a_controls_checkpoint_resumes_and_converts_to_torch_and_nnx_with_the_same_logits(tiny, tmp_path, stage):
    config = TrainConfig(stage, epochs=1, hidden=32)
    out = tmp_path / "run"
    run = train(config, tiny, on_epoch=lambda r: save_run(r, out, run_record(r)))
    resumed = train(TrainConfig(stage, epochs=2, hidden=32), tiny, resume=load_run(out))
    if STAGES[stage].frozen_hidden:
        assert leaves_equal(run.final.params["hidden"], resumed.final.params["hidden"])
    assert json.loads((out / "metrics.json").read_text())["documented_accuracy"] is None
    model, loaded = load_model(out)
    assert isinstance(model, MLP) and loaded == config
    x = tiny.test_images[:100].reshape(100, 784).astype(np.float32) / 255
    logits = np.asarray(model(jnp.asarray(x)))
    with torch.no_grad():
        torch_logits = to_torch(out)(torch.from_numpy(x)).numpy()
    for exported in (torch_logits, np.asarray(to_nnx(out)(jnp.asarray(x)))):
        np.testing.assert_allclose(exported, logits, rtol=1e-5, atol=1e-5)


def test_the_pytorch_reference_has_no_relu_in_the_deep_linear_network_and_freezes_random_features():
    deep, features = build_model("deep_linear"), build_model("random_features_1024")
    assert "relu" not in dict(deep.named_children()) and all(p.requires_grad for p in deep.parameters())
    assert features.hidden.weight.shape == (1024, 784)
    assert [name for name, p in features.named_parameters() if p.requires_grad] == ["output.weight", "output.bias"]


def test_a_study_compares_each_control_with_the_mlp_and_steps_only_through_the_originals_stages():
    stages = {name: {"seeds": [0, 1], "test_accuracies": [0.9, 0.91]} for name in ("linear_ce", "mlp", "mlp_bn", *CONTROLS)}
    found = comparisons(stages)
    assert [(d["from"], d["to"]) for d in found["steps"]] == [("linear_ce", "mlp"), ("mlp", "mlp_bn")]
    assert [(d["from"], d["to"]) for d in found["versus_mlp"]] == [("mlp", name) for name in ("mlp_bn", *CONTROLS)]


@pytest.mark.slow  # (script runs, in-process, on synthetic digits: some 15 s)
def test_the_controls_train_through_train_py_study_py_and_sweep_py(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "load_mnist", lambda *_: tiny)  # the synthetic digits, as the scripts import it
    metrics = []
    for stage in ("deep_linear", "random_features"):
        proc = run_script_in_process("train.py", "--stage", stage, "--epochs", "1", "--out", tmp_path / stage)
        assert proc.returncode == 0, proc.stderr
        metrics.append(json.loads((tmp_path / stage / "metrics.json").read_text()))
        assert metrics[-1]["stage"] == stage and metrics[-1]["documented_accuracy"] is None
    assert "stage random_features: 784 -> 256 (frozen) -> ReLU -> 10\n" in proc.stdout
    load_script("train.py").print_table(metrics)  # the table of --stage all: no documented accuracy, no difference from it
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| `")]
    assert [(row[0], row[1], row[3]) for row in rows] == [("`deep_linear`", "—", "—"), ("`random_features`", "—", "—")]
    stages = "mlp,deep_linear,random_features"
    proc = run_script_in_process("study.py", "--stages", stages, "--seeds", "2", "--epochs", "1", "--out", tmp_path / "study")
    assert proc.returncode == 0, proc.stderr
    report, _ = load_study(tmp_path / "study" / "results.json")
    assert list(report["stages"]) == stages.split(",") and report["steps"] == []
    assert report["stages"]["random_features"]["documented_accuracy"] is None
    assert "| `deep_linear` − `mlp` | " in proc.stdout and "| `random_features` − `mlp` | " in proc.stdout
    assert "| `random_features` | — | " in proc.stdout  # no documented accuracy
    proc = run_script_in_process("make_assets.py", "--results", tmp_path / "study", "--out", tmp_path / "figures")
    assert proc.returncode == 0, proc.stderr
    assert {"training_curves.png", "comparison_chart.png", "evolution_diagram.png"} <= {p.name for p in (tmp_path / "figures").iterdir()}
    same = {"mean_accuracy": 0.9, "std_accuracy": None, "seconds_per_epoch": 1.0}
    plots.framework_comparison({"stages": [{"stage": "mlp", "documented_accuracy": 0.9745, "jax": same, "torch_tensor": same},
                                           {"stage": "deep_linear", "documented_accuracy": None, "jax": same, "torch_tensor": same}],
                                "seeds": 1, "epochs": 1, "device": "cpu"}, tmp_path / "figures" / "frameworks.png")
    proc = run_script_in_process("sweep.py", "--stages", "random_features", "--lr", "1e-3,1e-2", "--seeds", "2",
                                 "--epochs", "1", "--out", tmp_path / "sweep")
    assert proc.returncode == 0, proc.stderr
    assert "| `random_features` | 256 | 0.01 | 0 | 2 | " in proc.stdout


def test_adam_masks_out_a_frozen_layer_and_trains_the_rest_exactly_as_the_unmasked_adam(tiny):
    """`make_optimizer` masks a random-features layer out of Adam (as `requires_grad_(False)` leaves it out of
    PyTorch's): it keeps no moments for it, and the steps of every parameter are those of Adam over all, bit for bit."""
    config = TrainConfig("random_features", epochs=1, hidden=64)
    graphdef, start = graph(config), prepare(config, tiny)
    unmasked = optax.inject_hyperparams(optax.adam)(learning_rate=config.lr, b1=0.9, b2=0.999, eps=1e-8)
    images, labels = jnp.asarray(tiny.train_images[:512].reshape(512, -1)), jnp.asarray(tiny.train_labels[:512], jnp.int32)
    states = []
    for tx in (make_optimizer(config), unmasked):
        state = start.state._replace(opt_state=tx.init(start.state.params))
        step = jax.jit(make_train_step(graphdef, config.spec.loss, tx))
        for i in range(4):
            state, _ = step(state, images[128 * i : 128 * (i + 1)], labels[128 * i : 128 * (i + 1)], jax.random.key(i))
        states.append(state)
    masked, plain = states
    assert leaves_equal(masked.params["hidden"], start.state.params["hidden"])  # exactly as drawn
    # the trained layer takes the unmasked Adam's steps, to float32 rounding: XLA fuses the two programs' updates
    # differently (a few roundings, each at most 2**-24 of a parameter below 1/8 = 1/sqrt(64), over 4 steps)
    for ours, theirs, drawn in zip(*(jax.tree.leaves(s.params["output"]) for s in (masked, plain, start.state))):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-7)
        assert np.abs(np.asarray(ours) - np.asarray(drawn)).max() > 1e-4  # (it trained)
    assert len(jax.tree.leaves(masked.opt_state)) < len(jax.tree.leaves(plain.opt_state))  # no moments of the frozen layer


def test_a_random_features_checkpoint_from_before_the_masked_adam_resumes_to_the_masked_runs_end(tiny, tmp_path):
    """A run saved when Adam still kept (zero) moments for the frozen layer loads, converts and resumes: its moments are
    dropped, and it ends where a run of the masked Adam throughout does."""
    config = TrainConfig("random_features", epochs=1, hidden=32)  # (the width of the tests above: their programs, compiled once)
    run = train(config, tiny)
    unmasked = make_optimizer(config, mask_frozen=False)  # the optimizer state an earlier version saved: the same
    real, fresh = run.final.opt_state, unmasked.init(run.final.params)  # moments, and zeros for the frozen layer
    adam, zeros = real.inner_state.inner_state[0], fresh.inner_state[0]

    def with_zeros(unmasked_moments, masked_moments):
        leaves = jax.tree.leaves(unmasked_moments["hidden"]) + jax.tree.leaves(masked_moments)  # hidden < output
        return jax.tree.unflatten(jax.tree.structure(unmasked_moments), leaves)

    earlier = zeros._replace(count=adam.count, mu=with_zeros(zeros.mu, adam.mu), nu=with_zeros(zeros.nu, adam.nu))
    old = fresh._replace(count=real.count, inner_state=(earlier, *fresh.inner_state[1:]))
    save_run(dataclasses.replace(run, final=run.final._replace(opt_state=old)), tmp_path / "earlier", run_record(run))
    save_run(run, tmp_path / "now", run_record(run))
    loaded = load_run(tmp_path / "earlier")
    assert len(jax.tree.leaves(old)) > len(jax.tree.leaves(loaded.final.opt_state))  # the frozen layer's moments dropped
    assert leaves_equal(loaded.final.opt_state, run.final.opt_state)
    ends = [train(dataclasses.replace(config, epochs=2), tiny, resume=load_run(tmp_path / name)) for name in ("earlier", "now")]
    assert [r | {"seconds": 0} for r in ends[0].history] == [r | {"seconds": 0} for r in ends[1].history]
    assert leaves_equal(ends[0].final.params, ends[1].final.params)


@pytest.mark.parametrize("stage", ["mlp_bn", "linear_ce"])
def test_the_optimizer_state_of_a_trained_stage_keeps_the_layout_earlier_versions_saved(stage):
    """Every earlier checkpoint holds the state of Adam with its hyperparameters injected beside the rate; only a frozen
    layer's masking differs (converted on load, above)."""
    config = TrainConfig(stage)
    earlier = optax.inject_hyperparams(optax.adam)(learning_rate=config.lr, b1=0.9, b2=0.999, eps=1e-8)
    ours = init_state(config, jax.random.key(0), make_optimizer(config))
    assert jax.tree.structure(ours.opt_state) == jax.tree.structure(earlier.init(ours.params))
