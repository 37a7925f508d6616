"""Saving a run (`metrics.json` and an orbax checkpoint) and restoring or resuming it.

The checkpoint of a run folder holds the final state (parameters, BatchNorm
statistics, optimizer state), the best-validation model, and the config and
history that rebuild it. Orbax writes each epoch's checkpoint to a temporary
folder and renames it when complete, keeping the previous one until then.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
from flax import nnx

from mnist_jax.files import write_json
from mnist_jax.train import RunResult, TrainConfig, TrainState, init_state, make_optimizer

CHECKPOINT_DIR = "checkpoint"


def _manager(run_dir: str | os.PathLike):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINT_DIR, options=options)


def _arrays(run: RunResult) -> dict:
    def model(state: TrainState) -> dict:
        return {"params": nnx.to_pure_dict(state.params), "batch_stats": nnx.to_pure_dict(state.batch_stats)}

    return {
        "final": model(run.final),
        "best": model(run.best),
        "opt_state": jax.tree.leaves(run.final.opt_state),
    }


def save_checkpoint(run: RunResult, run_dir: str | os.PathLike) -> None:
    import orbax.checkpoint as ocp

    meta = {
        "config": dataclasses.asdict(run.config),
        "device": run.device,
        "best_epoch": run.best_epoch,
        "history": run.history,
    }
    with _manager(run_dir) as manager:
        manager.save(
            len(run.history),
            args=ocp.args.Composite(arrays=ocp.args.StandardSave(_arrays(run)), meta=ocp.args.JsonSave(meta)),
        )


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    if not (Path(run_dir) / CHECKPOINT_DIR).is_dir():
        return False
    with _manager(run_dir) as manager:
        return manager.latest_step() is not None


def load_run(run_dir: str | os.PathLike) -> RunResult:
    """The run saved in `run_dir` at its last completed epoch, ready to resume."""
    import orbax.checkpoint as ocp

    if not has_checkpoint(run_dir):  # checked first: opening a manager creates its folder
        raise FileNotFoundError(f"no checkpoint in {Path(run_dir) / CHECKPOINT_DIR}")
    with _manager(run_dir) as manager:
        step = manager.latest_step()
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        config = TrainConfig(**meta["config"])
        tx = make_optimizer(config.lr)

        def template() -> tuple[nnx.GraphDef, TrainState]:
            return init_state(config, jax.random.key(0), tx)

        graphdef, final = template()
        _, best = template()
        like = RunResult(config, meta["device"], graphdef, final, best, 0, [])
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(like))
        arrays = manager.restore(
            step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract))
        )["arrays"]

    for state, saved in ((final, arrays["final"]), (best, arrays["best"])):
        nnx.replace_by_pure_dict(state.params, saved["params"])
        nnx.replace_by_pure_dict(state.batch_stats, saved["batch_stats"])
    opt_state = jax.tree.unflatten(jax.tree.structure(final.opt_state), arrays["opt_state"])
    final = final._replace(opt_state=opt_state)
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
