"""A grid's progress on disk, so that a study or sweep stopped at any moment (a signal,
a lost machine) resumes where it was and ends exactly as an uninterrupted one.

`--out/progress/` holds `work.json` (the options that decide the results) and one
`<chunk>.npz` per chunk of models: their states after the last epoch saved, and that
epoch's rows of metrics. Each file is written beside the old one and renamed over it.
The randomness of an epoch depends on the seed and the epoch number alone, so training
on from a saved epoch gives the arrays an unbroken run gives.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from mnist_jax.errors import ProgressError
from mnist_jax.files import UNREADABLE, atomic_write, foreign_entries, is_json_with, remove_ours, write_json

FOLDER = "progress"
WORK_FILE = "work.json"
MAX_META = 2**20  # bytes: a chunk's metadata is a few hundred


class Saved(NamedTuple):
    epochs: int  # epochs done
    states: object  # the chunk's models, stacked: a tree like the one saved
    rows: np.ndarray  # (epochs, models, metrics)


CHUNK = re.compile(r"[a-z_]+-hidden\d+-bits\d+-from\d+-\d+\.npz")  # the name `study.train_grid` gives a chunk

class GridProgress:
    """The progress files of one piece of work in `out`; `write` False in every process
    of several but the first (each reads, process 0 writes: `out` must be shared)."""

    def __init__(self, out: Path, work: dict, write: bool = True):
        self.folder, self.work, self.write, self.run_id = out / FOLDER, work, write, None
        self.started = True  # resuming, until `start`
    def ours(self) -> dict:
        """Each file name in the folder that this class wrote, with its check."""
        names = {WORK_FILE: lambda path: is_json_with(path, "script")}
        if self.folder.is_dir() and not self.folder.is_symlink():
            names |= {p.name: lambda path: True for p in self.folder.iterdir() if CHUNK.fullmatch(p.name)}
        return names

    def foreign(self) -> list[str]:
        if self.folder.is_symlink() or self.folder.exists() and not self.folder.is_dir():
            return [f"{FOLDER} (a link or a file)"]
        return [f"{FOLDER}/{name}" for name in foreign_entries(self.folder, self.ours())]

    def saved_chunks(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("*.npz") if CHUNK.fullmatch(p.name)) if self.folder.is_dir() else []

    def exists(self) -> bool:
        return (self.folder / WORK_FILE).is_file()

    def differences(self) -> list[str]:
        """The options of the saved work that differ from this one's, as 'name: saved, asked';
        the saved work's `run_id` becomes this one's (a resume continues it)."""
        try:
            saved = json.loads((self.folder / WORK_FILE).read_text())
        except UNREADABLE as e:
            raise ProgressError(f"{self.folder / WORK_FILE} is damaged ({type(e).__name__})") from None
        if not isinstance(saved, dict):
            raise ProgressError(f"{self.folder / WORK_FILE} is damaged")
        self.run_id = saved.get("run_id")
        return [f"{k} {saved.get(k)!r} (asked: {v!r})" for k, v in self.work.items() if saved.get(k) != v]

    def start(self) -> None:
        """A fresh start under a new `run_id`, by which its results are told from earlier
        ones. The progress already in the folder stays until the first save replaces it."""
        self.run_id, self.started = uuid.uuid4().hex, False
    def load(self, key: str, like) -> Saved | None:
        """The chunk `key`'s saved progress, its states shaped as `like`; None if none."""
        path = self.folder / f"{key}.npz"
        if not path.is_file():
            return None
        leaves, treedef = jax.tree.flatten(like)
        try:
            with np.load(path) as saved:
                if saved["meta"].nbytes > MAX_META:
                    raise ValueError("metadata too large")
                meta = json.loads(str(saved["meta"]))
                arrays = [saved[f"state_{i}"] for i in range(len(leaves))]
                rows = saved["rows"]
        except UNREADABLE as e:
            raise ProgressError(f"{path} is damaged ({type(e).__name__}); pass --overwrite to start again") from None
        epochs = meta.get("epochs") if isinstance(meta, dict) else None
        expected = [(leaf.shape, np.dtype(leaf.dtype)) for leaf in leaves]
        if not isinstance(epochs, int) or rows.shape[:1] != (epochs,) or [(a.shape, a.dtype) for a in arrays] != expected:
            raise ProgressError(f"{path} does not hold the models of this work; pass --overwrite to start again")
        return Saved(epochs, jax.tree.unflatten(treedef, arrays), rows)

    def save(self, key: str, epochs: int, states, rows: np.ndarray) -> None:
        """The chunk `key` after `epochs` epochs (`states` and `rows` whole, as NumPy)."""
        if not self.started:  # the first save of a fresh start: the work it replaces goes now
            self.started = True
            if self.write:
                self.clear()
                write_json(self.folder / WORK_FILE, self.work | {"run_id": self.run_id})
        if not self.write:
            return
        arrays = {f"state_{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(states))}
        with atomic_write(self.folder / f"{key}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps({"epochs": epochs})), rows=rows, **arrays)

    def clear(self) -> None:
        """Remove the files of this class, and the folder if nothing else is in it."""
        if not self.write or not self.folder.is_dir() or self.folder.is_symlink():
            return
        remove_ours(self.folder, self.ours())
        if not any(self.folder.iterdir()):
            self.folder.rmdir()
