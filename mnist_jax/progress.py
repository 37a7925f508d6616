"""A grid's progress on disk: a study or sweep stopped at any moment resumes and ends as an unbroken one (an epoch's
randomness depends on the seed and epoch alone). `--out/progress/` holds `work.json` (the options that decide the
results) and per chunk of models a `<chunk>.npz`: their states at the last epoch saved and every epoch's metrics."""

from __future__ import annotations

import json
import re
import uuid
import zipfile
from pathlib import Path

import numpy as np

from mnist_jax.errors import ProgressError
from mnist_jax.files import PARTIAL, UNREADABLE, atomic_write, foreign_entries, is_partial, read_json, write_json, write_npz

FOLDER = "progress"
WORK_FILE = "work.json"
MAX_WORK_BYTES = 2**20  # the options of a piece of work, read back
CHUNK = re.compile(r"[a-z][a-z0-9_]*-hidden\d+-bits\d+-from\d+-\d+\.npz")  # the name `study.train_grid` gives a chunk


def option_difference(name: str, asked, saved) -> str:
    """'--name asked (saved: saved)', each value as the command line gives it: None was none (the script's default)."""
    def shown(value) -> str:
        if value is None or value is False:  # (a flag not given)
            return "not given"
        return "given" if value is True else ",".join(map(str, value)) if isinstance(value, list) else str(value)

    return f"{'the script' if name == 'script' else '--' + name.replace('_', '-')} {shown(asked)} (saved: {shown(saved)})"


def damaged(path: Path, error: Exception) -> ProgressError:
    return ProgressError(f"{path} is damaged ({type(error).__name__}); pass --overwrite to start again")


class GridProgress:
    """The progress files of one piece of work in `out`; `write` False but in process 0 (all read: `out` is shared)."""

    def __init__(self, out: Path, work: dict, write: bool = True):
        self.folder, self.work, self.write, self.run_id = out / FOLDER, work, write, None
        self.started, self.fresh = True, False  # resuming, until `start`

    def ours(self) -> dict:
        """Each file name in the folder that this class wrote for this script (a study's progress is not a sweep's), with
        its check; the chunks, if the work is."""
        if (self.folder / WORK_FILE).is_file() and not self.is_this_scripts(self.folder / WORK_FILE):
            return {}
        return {WORK_FILE: self.is_this_scripts} | {p.name: lambda path: True for p in self.saved_chunks()}

    def is_this_scripts(self, path: Path) -> bool:
        try:
            return read_json(path, MAX_WORK_BYTES)["script"] == self.work.get("script")
        except UNREADABLE:
            return False

    def foreign(self) -> list[str]:
        if self.folder.is_symlink() or self.folder.exists() and not self.folder.is_dir():
            return [f"{FOLDER} (a link or a file)"]
        return [f"{FOLDER}/{name}" for name in foreign_entries(self.folder, self.ours())]

    def saved_chunks(self) -> list[Path]:
        return [p for p in self.folder.glob("*.npz") if CHUNK.fullmatch(p.name)] if self.folder.is_dir() else []

    def exists(self) -> bool:
        return (self.folder / WORK_FILE).is_file()

    def differences(self) -> list[str]:
        """The options of the saved work that differ from this one's, as '--name asked (saved: saved)', once every file
        saved reads whole (else `ProgressError`, before any training); the saved work's `run_id` becomes this one's."""
        path = self.folder / WORK_FILE
        try:
            saved = json.loads(path.read_text())
            self.run_id = saved.get("run_id")  # (an AttributeError if `saved` is no JSON object)
            for path in self.saved_chunks():  # each member read through, against its CRC
                with zipfile.ZipFile(path) as archive:
                    if archive.testzip() is not None or "rows.npy" not in archive.namelist():
                        raise zipfile.BadZipFile
        except UNREADABLE as e:
            raise damaged(path, e) from None
        return [option_difference(k, v, saved.get(k)) for k, v in self.work.items() if saved.get(k) != v]

    def start(self) -> None:
        """A fresh start under a new `run_id` (its results' mark); the progress saved stays until the first save,
        never read (it is of the work being replaced)."""
        self.run_id, self.started, self.fresh = uuid.uuid4().hex, False, True

    def saved_under(self, prefix: str) -> list[tuple[int, int, int]]:
        """The chunks saved under `prefix` (`<prefix>-from<first>-<size>.npz`), as (first point, size, epochs saved)."""
        found = []
        for path in [] if self.fresh else self.saved_chunks():
            if named := re.fullmatch(rf"{re.escape(prefix)}-from(\d+)-(\d+)\.npz", path.name):
                try:
                    with np.load(path) as saved:
                        epochs = len(saved["rows"])
                except UNREADABLE + (IndexError,) as e:
                    raise damaged(path, e) from None
                found.append((int(named[1]), int(named[2]), epochs))
        return found

    def load(self, key: str, like, offset: int = 0) -> tuple[object, np.ndarray] | None:
        """Chunk `key`'s saved states, shaped as `like`, and its metrics (epochs, models, metrics); None if none saved.
        `offset`: `like`'s models are those of the chunk from its `offset`th on (a chunk saved when more fitted at once)."""
        path = self.folder / f"{key}.npz"
        if self.fresh or not path.is_file():
            return None
        import jax  # here, not above: --out is claimed before JAX is imported

        leaves, treedef = jax.tree.flatten(like)
        models = slice(offset, offset + len(leaves[0]))
        try:
            with np.load(path) as saved:
                arrays = [saved[f"state_{i}"][models] for i in range(len(leaves))]
                rows = saved["rows"][:, models]
        except UNREADABLE + (IndexError,) as e:  # (IndexError: an array of no models to take these from)
            raise damaged(path, e) from None
        if rows.ndim != 3 or [(a.shape, a.dtype) for a in arrays] != [(leaf.shape, np.dtype(leaf.dtype)) for leaf in leaves]:
            raise ProgressError(f"{path} does not hold the models of this work; pass --overwrite to start again")
        return jax.tree.unflatten(treedef, arrays), rows

    def save(self, key: str, states, rows: np.ndarray) -> None:
        """The chunk `key` after as many epochs as `rows` has (`states` and `rows` whole, as NumPy)."""
        if not self.started:  # the first save of a fresh start: the work it replaces goes now
            if self.write:
                made = not self.folder.exists() or self.made_folder() or self.left_by_a_kill()
                self.clear()
                write_json(self.folder / WORK_FILE, self.work | {"run_id": self.run_id, "made_folder": made})
            self.started = True  # (once written: started without it is work done and cleared)
        if not self.write:
            return
        import jax

        arrays = {f"state_{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(states))}
        with atomic_write(self.folder / f"{key}.npz") as tmp:
            write_npz(tmp, {"rows": rows, **arrays})

    def made_folder(self) -> bool:
        """Whether the work saved here made the folder (work saved by versions before this was recorded did)."""
        try:
            saved = read_json(self.folder / WORK_FILE, MAX_WORK_BYTES)
            return saved["script"] == self.work.get("script") and saved.get("made_folder", True) is True
        except UNREADABLE:
            return False

    def left_by_a_kill(self) -> bool:
        """Whether the folder holds nothing but a `work.json` half-written when its run was killed (so that run made it)."""
        entries = list(self.folder.iterdir())
        return bool(entries) and all(is_partial(p) and p.name.startswith(f"{PARTIAL}{Path(WORK_FILE).stem}.") for p in entries)

    def clear(self) -> None:
        """Remove the files of this class, and the folder if its work made it and nothing else is in it."""
        if not self.write or not self.folder.is_dir() or self.folder.is_symlink():
            return
        made = self.made_folder()
        for name, check in self.ours().items():
            path = self.folder / name
            if path.is_file() and not path.is_symlink() and check(path):
                path.unlink()
        if made and not any(self.folder.iterdir()):
            self.folder.rmdir()
