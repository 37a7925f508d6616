"""Saving a run (`metrics.json` and `checkpoint.npz`) and restoring or resuming it.

`checkpoint.npz` holds the final state (parameters, BatchNorm statistics, optimizer
state), the best-validation model, and under `meta` the config and history that
rebuild it; its arrays are named by their place in the tree, e.g.
`best/params/hidden/kernel`. One file, written beside the old one and renamed over
it: a crash leaves the previous epoch's checkpoint or the new one, never a mix.
(A plain NumPy archive rather than orbax: see docs/performance.md.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mnist_jax.files import atomic_write, write_json
from mnist_jax.train import RunResult, TrainConfig, TrainState, init_state, make_optimizer

CHECKPOINT_FILE = "checkpoint.npz"


def _arrays(run: RunResult) -> dict:
    def model(state: TrainState) -> dict:
        return {"params": nnx.to_pure_dict(state.params), "batch_stats": nnx.to_pure_dict(state.batch_stats)}

    return {"final": model(run.final), "best": model(run.best), "opt_state": jax.tree.leaves(run.final.opt_state)}


def _named(tree) -> dict[str, jax.Array]:
    paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in paths}


def save_checkpoint(run: RunResult, run_dir: str | os.PathLike) -> None:
    meta = {"config": dataclasses.asdict(run.config), "device": run.device, "best_epoch": run.best_epoch, "history": run.history}
    arrays = {name: np.asarray(leaf) for name, leaf in _named(_arrays(run)).items()}
    with atomic_write(Path(run_dir) / CHECKPOINT_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / CHECKPOINT_FILE).is_file()


def load_run(run_dir: str | os.PathLike) -> RunResult:
    """The run saved in `run_dir` at its last completed epoch, ready to resume."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    with np.load(path) as saved:
        meta = json.loads(str(saved["meta"]))
        config = TrainConfig(**meta["config"])
        tx = make_optimizer(config.lr)
        graphdef, template = jax.eval_shape(lambda: init_state(config, jax.random.key(0), tx))  # the tree structure
        like = _arrays(RunResult(config, meta["device"], graphdef, template, template, 0, []))
        arrays = jax.tree.unflatten(jax.tree.structure(like), [jnp.asarray(saved[name]) for name in _named(like)])

    def model(which: str) -> tuple[nnx.State, nnx.State]:
        params, batch_stats = jax.tree.map(lambda leaf: leaf, (template.params, template.batch_stats))  # fresh copies
        nnx.replace_by_pure_dict(params, arrays[which]["params"])
        nnx.replace_by_pure_dict(batch_stats, arrays[which]["batch_stats"])
        return params, batch_stats

    final = TrainState(*model("final"), jax.tree.unflatten(jax.tree.structure(template.opt_state), arrays["opt_state"]))
    best_params, best_stats = model("best")
    best = TrainState(best_params, best_stats, tx.init(best_params))  # only the best epoch's model is saved
    return RunResult(config, meta["device"], graphdef, final, best, meta["best_epoch"], meta["history"])


def load_model(run_dir: str | os.PathLike, which: str = "final") -> tuple[nnx.Module, TrainConfig]:
    """The `final` or `best` model of a saved run, as a Flax NNX module."""
    run = load_run(run_dir)
    state = run.final if which == "final" else run.best
    return nnx.merge(run.graphdef, state.params, state.batch_stats), run.config


def save_run(run: RunResult, run_dir: str | os.PathLike, metrics: dict) -> None:
    """Checkpoint first, then `metrics.json`: the metrics never describe a state not saved."""
    save_checkpoint(run, run_dir)
    write_json(Path(run_dir) / "metrics.json", metrics)
