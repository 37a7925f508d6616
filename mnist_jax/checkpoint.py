"""Saving a run (`metrics.json` and `checkpoint.npz`) and restoring or resuming it.

`checkpoint.npz` (a NumPy archive, not orbax: docs/performance.md) holds the final state, the
best-validation model, and under `meta` the format's version, config and history. It is written
beside the old one and renamed over it: a crash leaves one epoch's checkpoint, never a mix. A
checkpoint damaged, of another format, of arrays its config does not describe or of values no
training saves (not finite, an accuracy above 1) raises `CheckpointError`, never a half-restored
run. Flax is imported by the functions that need it, not above: saving needs none (`train`'s
docstring says why); reading checks the arrays against those its config describes, which Flax builds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from mnist_jax.data import NUM_PIXELS
from mnist_jax.errors import CheckpointError
from mnist_jax.evaluate import to_inputs
from mnist_jax.files import UNREADABLE, atomic_write, finite_number, folder_locked, is_run_metrics, npz_member, write_npz
from mnist_jax.train import HISTORY_KEYS, RunResult, TrainConfig, TrainState, graph, init_state, make_optimizer

if TYPE_CHECKING:
    from flax import nnx

CHECKPOINT_FILE = "checkpoint.npz"
FORMAT = 2  # bump when the layout changes: older checkpoints are then refused, not misread
MAX_META_BYTES = 2**26  # the config and history of some 100,000 epochs, as NumPy stores text (4 bytes a character)


def _tree(final: TrainState, best: TrainState) -> dict:
    """What the archive holds: both models as pure dicts and the final optimizer state's leaves."""
    models = {name: {"params": s.params, "batch_stats": s.batch_stats} for name, s in (("final", final), ("best", best))}
    return models | {"opt_state": jax.tree.leaves(final.opt_state)}


def _name(path: tuple) -> str:
    """An array's name in the archive: its place in `_tree`, e.g. `best/params/hidden/kernel`."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def save_checkpoint(run: RunResult, run_dir: str | os.PathLike) -> None:
    with atomic_write(Path(run_dir) / CHECKPOINT_FILE) as tmp:
        write_checkpoint(run, tmp)


def run_meta(run: RunResult) -> dict:
    """What a checkpoint records of `run` beside its arrays."""
    return {"format": FORMAT, "config": dataclasses.asdict(run.config), "device": run.device, "best_epoch": run.best_epoch,
            "history": run.history}


def write_checkpoint(run: RunResult, path: Path) -> None:
    meta = run_meta(run)
    arrays = {_name(place): np.asarray(leaf) for place, leaf in jax.tree_util.tree_leaves_with_path(_tree(run.final, run.best))}
    write_npz(path, {"meta": np.array(json.dumps(meta)), **arrays})


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / CHECKPOINT_FILE).is_file()


def is_checkpoint(path: Path) -> bool:
    """Whether `path` is an archive as `save_checkpoint` writes (told by its `meta`), whole or damaged after its first
    entry's name: `meta.npy`, the first `save_checkpoint` writes (at 30 of a zip's local header, its length at 26)."""
    if not path.is_file():  # (a pipe would wait for a writer)
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(38)
        if head[:4] == b"PK\x03\x04" and head[26:28] == b"\x08\x00" and head[30:] == b"meta.npy":
            return True
        with zipfile.ZipFile(path) as archive:
            return "meta.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


# What a run folder may hold, each told from a user's file of the same name by its content.
RUN_FILES = {CHECKPOINT_FILE: is_checkpoint, "metrics.json": is_run_metrics}


def saved_epochs(run_dir: str | os.PathLike) -> int:
    """How many epochs the checkpoint in `run_dir` holds (0: none, or unreadable)."""
    try:
        with zipfile.ZipFile(Path(run_dir) / CHECKPOINT_FILE) as archive:
            return len(_meta(archive)["history"])
    except UNREADABLE:
        return 0


def _meta(archive: zipfile.ZipFile) -> dict:
    """The `meta` entry, read only if its header declares at most `MAX_META_BYTES`."""

    def check(shape: tuple, dtype: np.dtype) -> None:
        if shape != () or dtype.kind != "U" or dtype.itemsize > MAX_META_BYTES:
            raise ValueError(f"meta is {dtype}{list(shape)}, expected text of at most {MAX_META_BYTES:,} bytes")

    return json.loads(str(npz_member(archive, "meta", check)))


def _check_meta(meta: dict) -> TrainConfig:
    """The config of a checkpoint's `meta` (TrainConfig's own checks), once its history is of finite figures (accuracies
    from 0 to 1, losses at least 0), epoch by epoch, and its best epoch one of them; else ValueError."""
    config = TrainConfig(**meta["config"])
    history, best = meta["history"], meta["best_epoch"]
    if not isinstance(meta["device"], str) or not isinstance(history, list):
        raise ValueError("no device or no history")
    for epoch, row in enumerate(history, 1):
        if row["epoch"] != epoch:
            raise ValueError(f"history row {epoch} is of epoch {row['epoch']!r}")
        for key, value in {key: row[key] for key in (*HISTORY_KEYS, *row)}.items():
            if not finite_number(value):
                raise ValueError(f"history of epoch {epoch}: {key} is {value!r}, not a finite number")
            if key.endswith("accuracy") and not 0 <= value <= 1 or key.endswith(("loss", "seconds")) and value < 0:
                raise ValueError(f"history of epoch {epoch}: {key} is {value!r}, not " +
                                 ("a fraction from 0 to 1" if key.endswith("accuracy") else "0 or more"))
    if type(best) is not int or not 0 <= best <= len(history):
        raise ValueError(f"best_epoch {best!r} is not one of the {len(history)} epochs of its history")
    return config


def load_run(run_dir: str | os.PathLike) -> RunResult:
    """The run saved in `run_dir` at its last completed epoch, ready to resume."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if Path(run_dir).is_file():
        raise CheckpointError(f"{run_dir} is a file: give the folder of the run that holds {CHECKPOINT_FILE}")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {run_dir}")
    try:
        with zipfile.ZipFile(path) as archive:
            meta = _meta(archive)
            version = meta.get("format", "none") if isinstance(meta, dict) else "none"
            if version != FORMAT:
                raise CheckpointError(f"{path} is in checkpoint format {version}; this version reads format {FORMAT}")
            config = _check_meta(meta)
            tx = make_optimizer(config)
            template = jax.eval_shape(lambda: init_state(config, jax.random.key(0), tx))  # the tree structure
            moments = sum(name.startswith("opt_state/") for name in archive.namelist())
            earlier = config.spec.frozen_hidden and moments > len(jax.tree.leaves(template.opt_state))
            if earlier:  # saved before Adam left the frozen layer out: read as saved, its (zero) moments dropped below
                template = template._replace(opt_state=jax.eval_shape(make_optimizer(config, mask_frozen=False).init, template.params))
            like, structure = jax.tree_util.tree_flatten_with_path(_tree(template, template))

            def read(name: str, expected: jax.ShapeDtypeStruct) -> jax.Array:
                def check(shape: tuple, dtype: np.dtype) -> None:  # before the data is read
                    floats = (dtype, expected.dtype)
                    if shape == expected.shape and {np.dtype(d) for d in floats} == {np.dtype(np.float32), np.dtype(np.float64)}:
                        raise CheckpointError(f"{path} holds {dtype} arrays, saved with jax_enable_x64 "
                                              f"{'on' if dtype == np.float64 else 'off'}: read it with the same setting")
                    if shape != expected.shape or dtype != expected.dtype:
                        raise CheckpointError(
                            f"{path} is damaged: it does not hold the arrays of its own config ({config.describe()}): "
                            f"{name} is {dtype}{list(shape)}, expected {expected.dtype}{list(expected.shape)}"
                        )

                return jnp.asarray(npz_member(archive, name, check))

            saved = jax.tree.unflatten(structure, [read(_name(place), leaf) for place, leaf in like])
    except CheckpointError:
        raise
    except UNREADABLE as e:
        raise CheckpointError(f"{path} is damaged or not a checkpoint ({type(e).__name__}: {e})") from None
    final_params, final_stats, best_params, best_stats = (saved[which][part] for which in ("final", "best") for part in ("params", "batch_stats"))
    opt_state = jax.tree.unflatten(jax.tree.structure(template.opt_state), saved["opt_state"])
    fresh = tx.init(final_params)
    check_values(path, saved, opt_state, fresh)
    if earlier:
        opt_state = without_frozen_moments(opt_state, fresh)
    rate = jnp.asarray(config.dropout_rate, template.dropout_rate.dtype)
    final = TrainState(final_params, final_stats, opt_state, rate)
    best = TrainState(best_params, best_stats, tx.init(best_params), rate)  # only the best epoch's model is saved
    return RunResult(config, meta["device"], final, best, int(meta["best_epoch"]), list(meta["history"]))


def check_values(path: Path, saved: dict, opt_state: optax.OptState, fresh: optax.OptState) -> None:
    """`CheckpointError` unless every array is finite, every BatchNorm variance, Adam second moment and step count at
    least 0, and the optimizer's hyperparameters those its config trains with (`fresh`'s): values no training saves."""
    for place, leaf in jax.tree_util.tree_leaves_with_path(saved):
        name, leaf = _name(place), np.asarray(leaf)  # (NumPy: no program to compile for each shape)
        if np.issubdtype(leaf.dtype, np.floating) and not np.isfinite(leaf).all():
            raise CheckpointError(f"{path} is damaged: {name} holds values that are not finite")
        if "batch_stats/" in name and name.endswith("/var") and (leaf < 0).any():
            raise CheckpointError(f"{path} is damaged: {name} holds a negative variance")
    adams = [s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
    counts, moments = [opt_state.count, *(adam.count for adam in adams)], [nu for adam in adams for nu in jax.tree.leaves(adam.nu)]
    if any(count < 0 for count in counts) or any((np.asarray(nu) < 0).any() for nu in moments):
        raise CheckpointError(f"{path} is damaged: its optimizer state holds a negative step count or second moment")
    for name, value in opt_state.hyperparams.items():
        if value != fresh.hyperparams[name]:
            raise CheckpointError(f"{path} is damaged: its optimizer's {name} is {float(value):g}, where its config "
                                  f"trains with {float(fresh.hyperparams[name]):g}")


def is_adam(state: object) -> bool:
    return isinstance(state, optax.ScaleByAdamState)


def without_frozen_moments(saved: optax.OptState, masked: optax.OptState) -> optax.OptState:
    """An Adam state over every parameter (`make_optimizer(config, mask_frozen=False)`) as the masked one: the same
    step count, learning rate and trained layer's moments; a frozen layer's moments, all zero, dropped."""
    adam, fresh = saved.inner_state[0], masked.inner_state.inner_state[0]
    mu, nu = (jax.tree.unflatten(jax.tree.structure(new), jax.tree.leaves({k: kept[k] for k in kept if k != "hidden"}))
              for kept, new in ((adam.mu, fresh.mu), (adam.nu, fresh.nu)))
    inner = masked.inner_state._replace(inner_state=(fresh._replace(count=adam.count, mu=mu, nu=nu), *masked.inner_state.inner_state[1:]))
    return masked._replace(count=saved.count, hyperparams=saved.hyperparams, hyperparams_states=saved.hyperparams_states, inner_state=inner)


def check_which(run_dir: str | os.PathLike, which: str, function: str) -> None:
    """`run_dir` is a path and `which` names a model of a run, else a `TypeError` or `ValueError` naming `function`,
    the one the user called."""
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"{function}: expected the folder of a run (a str or a path), got {type(run_dir).__name__}")
    if which not in ("final", "best"):
        raise ValueError(f"{function} which: expected 'final' or 'best', got {which!r}")


def load_model(run_dir: str | os.PathLike, which: str = "final") -> tuple[nnx.Module, TrainConfig]:
    """The `final` or `best` (best-validation) model of a saved run, as a Flax NNX module, and its config. It takes
    (N, 784) floats in [0, 1] (`load_classifier` takes raw images) and is in eval mode; the mode is an argument
    (`train=True`, for the MLPs), so `model.train()` and `model.eval()` change nothing. `to_nnx`: standard Flax layers."""
    from flax import nnx

    check_which(run_dir, which, "load_model")
    run = load_run(run_dir)
    if len(run.history) < run.config.epochs:  # a run stopped before its end: its models are of the epochs saved
        warnings.warn(f"{run_dir} ended after epoch {len(run.history)} of {run.config.epochs} (stopped, or its loss stopped "
                      f"being finite): its {which} model is of those epochs", stacklevel=2)
    state = run.final if which == "final" else run.best
    return nnx.merge(graph(run.config), state.params, state.batch_stats), run.config


def load_classifier(run_dir: str | os.PathLike, which: str = "final") -> Callable[[ArrayLike], tuple[np.ndarray, np.ndarray]]:
    """A saved run's model (`load_model`) as a function of raw MNIST images: uint8 (or integers in 0-255) or floats
    (of any precision) in [0, 1], of shape (N, 28, 28), (N, 784), (N, 28, 28, 1) as TFDS gives them, (N, 1, 28, 28) as
    torchvision does, or (28, 28) or (784,) for one; it returns the predicted classes (N,) and probabilities (N, 10), in
    eval mode: `classes, probabilities = load_classifier("runs/mlp_bn-seed42")(images)`. Anything else: `ValueError`."""
    from flax import nnx

    check_which(run_dir, which, "load_classifier")
    model, _ = load_model(run_dir, which)
    graphdef, state = nnx.split(model)
    probabilities = jax.jit(lambda state, x: jax.nn.softmax(nnx.merge(graphdef, state)(to_inputs(x))))

    def classify(images: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        x = _images(images)
        if not x.size:
            return np.zeros(0, int), np.zeros((0, 10), np.float32)
        p = np.asarray(probabilities(state, x.reshape(-1, NUM_PIXELS)))
        return (p.argmax(-1)[0], p[0]) if x.shape in IMAGE_SHAPES[:2] else (p.argmax(-1), p)

    return classify


IMAGE_SHAPES = ((28, 28), (NUM_PIXELS,), (28, 28, 1), (1, 28, 28))  # of one image; a batch's (N, ...) of any of them


def _images(images: ArrayLike) -> np.ndarray:
    """`images` as an array of MNIST images `load_classifier` takes, else a `ValueError` saying what it got."""
    expected = ("load_classifier: expected MNIST images, (N, 28, 28), (N, 784), (N, 28, 28, 1) or (N, 1, 28, 28), "
                "uint8 or floats in [0, 1]; got ")
    try:  # a torch tensor, even one that requires grad, as its values (floats as float32: NumPy has no bfloat16)
        tensor = images.detach().cpu() if hasattr(images, "detach") else None
        x = np.asarray(images if tensor is None else tensor.float() if tensor.is_floating_point() else tensor)
        dtype = x.dtype if tensor is None else str(tensor.dtype).removeprefix("torch.")  # as given (bfloat16, not float32)
    except Exception:  # noqa: BLE001  (ragged lists, torch tensors that require grad, ...: each raises its own kind)
        raise ValueError(f"{expected}a {type(images).__name__} that is no array of numbers") from None
    real = x.dtype.kind in "ui" or jnp.issubdtype(x.dtype, jnp.floating)  # any float: bfloat16 too
    if not real or x.shape not in IMAGE_SHAPES[:2] and x.shape[1:] not in IMAGE_SHAPES and x.shape != (0,):  # ([]: no images)
        kind = "" if real or isinstance(images, np.ndarray) else f" (a {type(images).__name__})"
        raise ValueError(f"{expected}{dtype}{list(x.shape)}{kind}")
    top = 1 if x.dtype.kind not in "ui" else 255
    if x.size and not 0 <= x.min() <= x.max() <= top:
        low, high = (x.min().item(), x.max().item()) if x.dtype.kind in "iu" else (float(x.min()), float(x.max()))
        raise ValueError(f"{expected}{dtype}{list(x.shape)} from {low} to {high}")  # (ml_dtypes prints 2.0 or 2)
    # floats as the model's float32 (JAX takes no long double, nor float8 beside float32), integers in native byte order
    return x.astype(np.float32 if x.dtype.kind not in "ui" else x.dtype.newbyteorder("="), copy=False)


def to_nnx(run_dir: str | os.PathLike, which: str = "final") -> nnx.Sequential:
    """A saved run's model (`load_model`) in Flax's standard layers, in eval mode (`model.train()` and `model.eval()`
    switch it, as in Flax): `nnx.Linear` (its kernel (in, out), the transpose of `models.torch_linear`'s),
    `nnx.BatchNorm` (momentum 0.9 in Flax's convention; in training it keeps the biased variance, where
    `models.BatchNorm1d` keeps PyTorch's unbiased one), `nnx.relu`, `nnx.Dropout`. It takes (N, 784) floats in [0, 1]."""
    from flax import nnx

    check_which(run_dir, which, "to_nnx")
    model, config = load_model(run_dir, which)
    params, stats = (nnx.to_pure_dict(nnx.state(model, kind)) for kind in (nnx.Param, nnx.BatchStat))
    rngs = nnx.Rngs(0)  # the layers' initial values, all replaced; and the dropout masks, if trained

    def load(layer: nnx.Module, values: dict) -> nnx.Module:
        nnx.update(layer, nnx.State(values))
        return layer

    def linear(name: str) -> nnx.Linear:
        kernel = params[name]["kernel"].T
        layer = nnx.Linear(*kernel.shape, precision=jax.lax.Precision.HIGHEST, rngs=rngs)
        return load(layer, {"kernel": kernel, "bias": params[name]["bias"]})

    if not config.spec.is_mlp:
        return nnx.Sequential(linear("linear"))
    layers = [linear("hidden")]
    if "batchnorm" in params:
        norm = nnx.BatchNorm(len(params["hidden"]["bias"]), momentum=0.9, epsilon=1e-5, rngs=rngs)
        layers.append(load(norm, params["batchnorm"] | stats["batchnorm"]))
    if config.spec.activation == "relu":  # the deep linear network has none
        layers.append(nnx.relu)
    if config.dropout_rate > 0:
        layers.append(nnx.Dropout(config.dropout_rate, rngs=rngs))
    layers.append(linear("output"))
    model = nnx.Sequential(*layers)
    model.eval()
    return model


def save_run(run: RunResult, run_dir: str | os.PathLike, metrics: dict, replacing: bool = False) -> None:
    """`checkpoint.npz` and `metrics.json`, each written whole beside its target before either replaces it, the checkpoint
    first: a write that fails (a full disk) leaves the two as they were, and the metrics never describe a state not saved.
    `replacing`: the run there is another's, whose metrics go just before its checkpoint does. Refused before anything
    is written: arguments of other types, a run `load_run` would refuse (a loss that is not finite, say), metrics JSON
    cannot hold, a file there of a name it writes that is not a run's (metrics.json is a run's beside its checkpoint);
    a folder another live run is writing (`files.FolderBusy`)."""
    if not isinstance(run, RunResult) or not isinstance(run_dir, (str, os.PathLike)) or not isinstance(metrics, dict):
        raise TypeError(f"save_run: expected a RunResult, the folder of the run (a str or a path) and a dict of metrics, "
                        f"got {type(run).__name__}, {type(run_dir).__name__} and {type(metrics).__name__}")
    if not os.fspath(run_dir):  # (Path("") is the working folder)
        raise ValueError("save_run run_dir: an empty name (give '.' for the working folder)")
    try:
        _check_meta(run_meta(run))
    except (TypeError, ValueError, KeyError) as e:  # (as `load_run` would refuse it: a row without a figure, one not finite)
        raise ValueError(f"save_run run: {e}") from None
    try:
        metrics_text = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:  # (an object JSON does not know, NaN or infinity)
        raise ValueError(f"save_run metrics: {e}") from None
    metrics_file, checkpoint_file = Path(run_dir) / "metrics.json", Path(run_dir) / CHECKPOINT_FILE
    for path, ours in ((metrics_file, lambda p: is_checkpoint(checkpoint_file) or is_run_metrics(p)), (checkpoint_file, is_checkpoint)):
        if path.is_symlink() or path.exists() and not ours(path):
            raise FileExistsError(f"save_run: {path} is not a run's {path.name}, and will not be replaced")
    made = not Path(run_dir).exists()
    try:
        with folder_locked(Path(run_dir)), atomic_write(metrics_file) as metrics_tmp:  # (a live run's folder: FolderBusy)
            metrics_tmp.write_text(metrics_text)
            with atomic_write(checkpoint_file) as checkpoint_tmp:  # (renamed in as this block ends)
                write_checkpoint(run, checkpoint_tmp)
                if replacing:
                    metrics_file.unlink(missing_ok=True)
    except BaseException:
        if made:  # (arrays that could not be written: the folder made for them goes too)
            with contextlib.suppress(OSError):
                Path(run_dir).rmdir()
        raise
