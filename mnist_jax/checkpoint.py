"""Saving a run (`metrics.json` and an orbax checkpoint) and restoring its models."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from mnist_jax.train import RunResult, TrainConfig

CHECKPOINT_DIR = "checkpoint"


def write_json(path: Path, obj) -> None:
    """Write JSON atomically: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _model_state(state) -> dict:
    return {"params": nnx.to_pure_dict(state.params), "batch_stats": nnx.to_pure_dict(state.batch_stats)}


def save_checkpoint(result: RunResult, directory: Path) -> None:
    """The final and best-validation models, with the config that rebuilds them."""
    import orbax.checkpoint as ocp

    arrays = {"final": _model_state(result.final), "best": _model_state(result.best)}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(
            Path(directory).absolute(),
            args=ocp.args.Composite(
                arrays=ocp.args.StandardSave(arrays),
                config=ocp.args.JsonSave(
                    {**dataclasses.asdict(result.config), "best_epoch": result.best_epoch}
                ),
            ),
            force=True,
        )


def load_model(run_dir: str | os.PathLike, which: str = "final") -> tuple[nnx.Module, TrainConfig]:
    """Rebuild the `final` or `best` model of a run saved by `save_run`."""
    import orbax.checkpoint as ocp

    directory = Path(run_dir).absolute() / CHECKPOINT_DIR
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        config_dict = ckptr.restore(directory, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
            "config"
        ]
        config_dict.pop("best_epoch")
        config = TrainConfig(**config_dict)
        model = config.spec.build(nnx.Rngs(0), config.hidden, config.dropout)
        _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        target = {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(batch_stats)}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"final": target, "best": target})
        restored = ckptr.restore(
            directory, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract))
        )["arrays"][which]
    restored = jax.tree.map(jnp.asarray, restored)
    nnx.replace_by_pure_dict(params, restored["params"])
    nnx.replace_by_pure_dict(batch_stats, restored["batch_stats"])
    nnx.update(model, params, batch_stats)
    return model, config


def save_run(result: RunResult, out_dir: str | os.PathLike, metrics: dict) -> None:
    out_dir = Path(out_dir)
    save_checkpoint(result, out_dir / CHECKPOINT_DIR)
    write_json(out_dir / "metrics.json", metrics)
