"""Atomic writes (a reader, or a crash, sees the old complete file or the new one); the lock keeping runs apart."""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import glob
import json
import math
import os
import re
import signal
import stat
import tempfile
import threading
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Mapping

import numpy as np


# What reading a damaged JSON or NumPy file can raise (a truncated archive, bad JSON, a missing key...).
UNREADABLE = (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, RecursionError, zipfile.BadZipFile, zlib.error)

PARTIAL = ".partial-"  # the prefix of a file being written


def is_partial(path: Path) -> bool:
    """Whether `path` is a file `atomic_write` was writing: `.partial-<stem>.<8 random characters><suffix>`."""
    named = re.fullmatch(r"\.partial-.+\.[a-z0-9_]{8}(\.json|\.npz|\.png)?", path.name)
    return bool(named) and path.is_file() and not path.is_symlink()


LOCK = ".mnist_jax.lock"
_LOCKS_HELD: dict[Path, tuple[int, list[Path]]] = {}  # folder -> its lock's descriptor, the folders made for it
_SAVING: set[Path] = set()  # the folders `folder_locked` holds in this process


def finite_number(x) -> bool:
    """Whether a value read from a file is a finite int or float (a bool is not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_json(path: str | os.PathLike, max_bytes: int):
    """A JSON file of at most `max_bytes`, else ValueError, before reading more (a device or a pipe: before reading)."""
    if not stat.S_ISREG((found := os.stat(path)).st_mode):
        raise ValueError("not a file (a folder, a device or a pipe)")
    if found.st_size > max_bytes:
        raise ValueError(f"{found.st_size:,} bytes, more than the {max_bytes:,} such a file may have")
    with open(path, "rb") as f:
        text = f.read(max_bytes + 1)  # (a file that grew since)
    if len(text) > max_bytes:
        raise ValueError(f"more than the {max_bytes:,} bytes such a file may have")
    return json.loads(text)


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


# The signals that stop a script; a run of several processes leaves SIGTERM to JAX.
STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold the stop signals Python handles while files are written (a signal's exception
    inside a library's writer can leave it raising another), then deliver the first."""
    received = []
    main = threading.current_thread() is threading.main_thread()  # only it may set handlers
    handled = [s for s in STOP_SIGNALS if main and signal.getsignal(s) not in (signal.SIG_IGN, signal.SIG_DFL, None)]
    previous = {s: signal.signal(s, lambda signum, _: received.append(signum)) for s in handled}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])


def umask() -> int:
    """The process's umask, read without changing it where Linux tells it (changing it races with other threads' files)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def readable_mode(mode: int) -> int:
    """`mode` (0o644 for a file, 0o755 for a folder) less what the umask withholds: mkstemp's and mkdtemp's owner-only modes
    would hide results from the group and others, and a umask of 077 asks that they be hidden."""
    return mode & ~umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`, which replaces it only if the block succeeds; stop signals wait till then."""
    path = Path(path)
    with signals_deferred():
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"{PARTIAL}{glob.escape(path.stem)}.*{path.suffix}"):  # of a run killed writing it
            if is_partial(stale):
                stale.unlink()
        # (the folder as the system finds it: tempfile names its file by text, taking "link/.." for the folder the link is in)
        fd, tmp = tempfile.mkstemp(dir=os.path.realpath(path.parent), prefix=f"{PARTIAL}{path.stem}.", suffix=path.suffix)
        os.close(fd)
        try:
            yield Path(tmp)
            os.chmod(tmp, readable_mode(0o644))
            os.replace(tmp, path)
        except OSError as e:  # named by the file meant, not by the temporary one (another's, as it was)
            if e.filename not in (None, tmp):
                raise
            raise OSError(e.errno, e.strerror, str(path)) from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_npz(file: str | os.PathLike | BinaryIO, arrays: Mapping[str, np.ndarray], compress: bool = False) -> None:
    """`np.savez(file, **arrays)` (`np.savez_compressed` with `compress`), its archive closed also when a write fails:
    NumPy 1.26's (the floor) left it open, and its closing by the garbage collector later printed a traceback."""
    with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


class FolderBusy(Exception):
    """Another live process holds the folder's lock."""


def real_path(path: Path) -> Path:
    """`path` with its links followed as far as they lead (`Path.resolve` raises on a link to itself)."""
    return Path(os.path.realpath(path))


def lock_folder(folder: Path) -> None:
    """Create `folder` if need be and hold its lock (`LOCK` inside, `flock`ed: the kernel drops it however the holder
    dies) until this process ends; another process, or a `LOCK` not ours (a link, a user's file), gets `FolderBusy`.
    At exit the lock file goes, and the folders made here if nothing was written into them."""
    if real_path(folder) in _LOCKS_HELD:
        return
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        fd = _hold(folder)
    except BaseException:
        _remove_empty(made)  # (a name too long, a permission: the folders made before it are not left)
        raise
    _LOCKS_HELD[real_path(folder)] = fd, made


@contextlib.contextmanager
def folder_locked(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock (the folder made if need be) for a block, unless this process holds it (`lock_folder`)."""
    if real_path(folder) in _LOCKS_HELD:
        yield
        return
    fd = _hold(folder)
    _SAVING.add(real_path(folder))
    try:
        yield
    finally:
        _SAVING.discard(real_path(folder))
        with contextlib.suppress(OSError):
            os.unlink(folder / LOCK)
        os.close(fd)


def _hold(folder: Path) -> int:
    """`folder`, made if need be, and its `LOCK`, flocked and holding this process's id."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)  # (a pipe: no wait)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise FolderBusy(f"{folder} holds {LOCK} as a link, not this project's lock") from None
            raise
        found = os.fstat(fd)
        held = os.read(fd, 32) if stat.S_ISREG(found.st_mode) else b"not a file"
        if found.st_nlink != 1 or not re.fullmatch(rb"(\d+\n)?", held):
            os.close(fd)
            raise FolderBusy(f"{folder} holds a {LOCK} that is not this project's lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = held.decode().strip() or "unknown"
            if real_path(folder) in _SAVING:  # (a save from another thread, say)
                raise FolderBusy(f"{folder} is being written by this process, in another of its calls") from None
            raise FolderBusy(f"{folder} is being written by another run (process {holder})") from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(folder / LOCK).st_ino:
                break
        os.close(fd)  # the file was replaced as its holder left: lock the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _remove_empty(made: list[Path]) -> None:
    for empty in made:  # (deepest first)
        with contextlib.suppress(OSError):
            empty.rmdir()


def release_locks() -> None:
    """Drop every lock this process holds (at exit, also one forced by a signal)."""
    while _LOCKS_HELD:
        folder, (fd, made) = _LOCKS_HELD.popitem()
        with contextlib.suppress(OSError):
            os.unlink(folder / LOCK)
            _remove_empty(made)
        os.close(fd)


atexit.register(release_locks)


def foreign_entries(folder: Path, ours: Mapping[str, Callable[[Path], bool]]) -> list[str]:
    """The entries of `folder` this project did not write: not named in `ours` or refused by its check; every link."""
    found = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if entry.is_symlink():
            found.append(f"{entry.name} (a link)")
        elif entry.name == LOCK or is_partial(entry):
            continue
        elif not (entry.is_file() or entry.is_dir()):
            found.append(f"{entry.name} (not a file: a pipe, a socket or a device)")
        elif entry.name not in ours or not ours[entry.name](entry):
            found.append(entry.name + "/" * entry.is_dir())
    return found


def is_json_with(path: Path, *keys: str) -> bool:
    """Whether `path` is a JSON object holding `keys`: a result of ours, not a user's file of its name."""
    try:
        content = json.loads(path.read_text()) if path.is_file() and path.stat().st_size < 2**30 else None
    except UNREADABLE:
        return False
    return isinstance(content, dict) and set(keys) <= content.keys()


def is_run_metrics(path: Path) -> bool:
    """Whether `path` is the `metrics.json` of a train.py run: the mark of a run's folder."""
    return is_json_with(path, "stage", "framework", "history")


# The keys that tell each named JSON result from a user's file of the same name.
RESULT_KEYS = {"results.json": ("stages", "steps", "command"), "sweep.json": ("grids", "rows"),
               "compare.json": ("stages", "seeds", "epochs", "command"), "linearity.json": ("linear_lstsq", "width_sweep", "command"),
               "benchmark.json": ("command", "device", "torch_loops")}


FIGURE_MARK = {"Comment": "drawn by mnist_jax"}  # a PNG text chunk of every figure it draws (`plots.save_figure`)


def is_result(path: Path) -> bool:
    """Whether `path` is a result the scripts wrote, by name and content: `RESULT_KEYS`, study arrays, a PNG of `FIGURE_MARK`."""
    if path.is_symlink() or not path.is_file():
        return False
    if path.name in RESULT_KEYS:
        return is_json_with(path, *RESULT_KEYS[path.name])
    if path.name == "study_arrays.npz":
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith("_confusion.npy") for name in archive.namelist())
        except (OSError, zipfile.BadZipFile):
            return False
    if path.suffix == ".png":
        with open(path, "rb") as f:
            head = f.read(4096)
        return head.startswith(b"\x89PNG") and b"tEXtComment\x00" + FIGURE_MARK["Comment"].encode() in head
    return False

