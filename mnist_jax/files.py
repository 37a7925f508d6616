"""Atomic file writes: a reader, or a crash, sees the old complete file or the new one;
and the lock that keeps two runs from writing one folder."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import math
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np


# What reading a damaged JSON or NumPy file can raise (a truncated archive, bad JSON, a
# missing key or a value of the wrong kind).
UNREADABLE = (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, zlib.error)

PARTIAL = ".partial-"  # the prefix of a file being written
LOCK = ".lock"


def finite_number(x) -> bool:
    """Whether a value read from a file is a finite int or float (a bool is not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_finite(where: str, **figures) -> None:
    """ValueError naming the first of `figures` (read from a file) that is not a finite number."""
    for key, value in figures.items():
        if not finite_number(value):
            raise ValueError(f"{where}: {key} is {value!r}, not a finite number")


def read_json(path: str | os.PathLike, max_bytes: int):
    """A JSON file of at most `max_bytes` (else ValueError, before reading it)."""
    if (size := os.path.getsize(path)) > max_bytes:
        raise ValueError(f"{size:,} bytes, more than the {max_bytes:,} such a file may have")
    return json.loads(Path(path).read_text())


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npz_member(archive: zipfile.ZipFile, name: str, check: Callable[[tuple[int, ...], np.dtype], None]) -> np.ndarray:
    """Array `name` of an .npz archive, its data read only once `check(shape, dtype)`
    has passed on its header: the size a damaged header claims is never allocated."""
    with archive.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version not in _NPY_HEADERS:
            raise ValueError(f"{name}: .npy format version {version}")
        shape, fortran, dtype = _NPY_HEADERS[version](f)
        check(shape, dtype)
        if dtype.hasobject:
            raise ValueError(f"{name}: holds Python objects")
        size = math.prod(shape) * dtype.itemsize
        data = f.read(size)
    if len(data) != size:
        raise ValueError(f"{name}: {len(data)} bytes of the {size} its header declares")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{PARTIAL}{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:  # named by the file meant, not by the temporary one
        raise OSError(e.errno, e.strerror, str(path)) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


class FolderBusy(Exception):
    """Another live process holds the folder's lock."""


def lock_folder(folder: Path) -> int:
    """Create `folder` if need be and hold its lock (`.lock` inside it, `flock`ed) until
    this process ends: a second process gets `FolderBusy`. The kernel drops the lock of
    a process that dies however it dies, so a killed run's lock blocks no one; what it
    was writing (`.partial-*` files) is deleted here, once the lock is ours. At exit the
    lock file goes, and the folders made here if nothing was written into them."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderBusy(f"{folder} is being written by another run (process {holder})") from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(folder / LOCK).st_ino:
                break
        os.close(fd)  # the file was replaced as its holder left: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    for stale in folder.glob(f"{PARTIAL}*"):
        stale.unlink()

    def release() -> None:
        with contextlib.suppress(OSError):
            os.unlink(folder / LOCK)
            for empty in made:
                empty.rmdir()
        os.close(fd)

    atexit.register(release)
    return fd


def holds_results(folder: Path) -> bool:
    """Whether `folder` holds anything but its lock and files being written."""
    return folder.is_dir() and any(p.name != LOCK and not p.name.startswith(PARTIAL) for p in folder.iterdir())
