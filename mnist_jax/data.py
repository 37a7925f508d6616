"""MNIST from IDX files on disk, TFDS, or a download, each verified against the published digests before use
and delivered in the IDX files' order, so a run on any machine trains on exactly the 70,000 images of the original
study, and a seed draws the same split from any source."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import struct
import sys
import zlib
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mnist_jax.errors import DataError

SOURCES = ("auto", "idx", "tfds", "download")
DATA_DIR_ENV = "MNIST_JAX_DATA_DIR"
MIRROR_ENV = "MNIST_JAX_MIRROR"
MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"

# SHA-256 of each decompressed IDX file, as published for the original MNIST.
IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# TFDS stores the same examples in its own order, so it is checked by an order-independent digest:
# SHA-256 over the sorted SHA-256s of each (label byte + 784 pixel bytes) record, computed from the files above.
RECORDS_SHA256 = {
    "train": "3655811c0e1223700a4714a92a51f55bd215ed7dc1fa2baa4326a2b58042d82d",
    "test": "634538fb34c5277fce98470b8b285d1e8419eb87f328da42ef1faf690d2c3911",
}
NUM_EXAMPLES = {"train": 60_000, "test": 10_000}
NUM_VALIDATION = 6_000
NUM_PIXELS = 28 * 28
NUM_CLASSES = 10
# The IDX position of each record in the order of its SHA-256 (`canonical_order`): TFDS's records are put back in IDX order.
ORDER_FILE = "idx_order.npz"
_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}  # unsigned bytes, 1 or 3 dimensions
MAX_IDX_BYTES = 16 + NUM_EXAMPLES["train"] * NUM_PIXELS  # the training images, decompressed


class MNIST(NamedTuple):
    train_images: np.ndarray  # (60000, 28, 28) uint8
    train_labels: np.ndarray  # (60000,) uint8
    test_images: np.ndarray  # (10000, 28, 28) uint8
    test_labels: np.ndarray  # (10000,) uint8
    source: str  # where it came from, for the log

    @property
    def origin(self) -> str:
        """`source` without this machine's folders, for result files: 'IDX files', 'TFDS', 'download from URL'."""
        return re.sub(r"(, cached)? in .*?(?= by an earlier download$|$)", "", self.source)


def checked(data: MNIST, caller: str, batch_size: int) -> MNIST:
    """`data` if it holds what training in batches of `batch_size` reads (as `load_mnist` gives it); else a ValueError
    naming `caller` and the field."""
    if not isinstance(data, MNIST):
        raise ValueError(f"{caller}: expected an MNIST (mnist_jax.data.load_mnist), got {type(data).__name__}")
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[1:] == (28, 28) and len(images)):
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise ValueError(f"{caller}: {split}_images: expected a NumPy array of uint8 images, (N, 28, 28) with N > 0, got {got}")
        if not (isinstance(labels, np.ndarray) and labels.dtype.kind in "iu" and labels.shape == (len(images),)):
            got = f"{labels.dtype} {labels.shape}" if isinstance(labels, np.ndarray) else type(labels).__name__
            raise ValueError(f"{caller}: {split}_labels: expected a NumPy array of {len(images)} integer labels, one per image, got {got}")
        if labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"{caller}: {split}_labels: expected classes 0-9, got {labels.min()} to {labels.max()}")
    if batch_size > len(data.train_images) - NUM_VALIDATION:
        raise ValueError(f"TrainConfig batch_size: expected at most the {max(0, len(data.train_images) - NUM_VALIDATION)} "
                         f"training images ({len(data.train_images)} less {NUM_VALIDATION} for validation), got {batch_size}")
    return data


def parse_idx(raw: bytes, ndim: int, name: str = "IDX data") -> np.ndarray:
    """Decode one IDX array of unsigned bytes with `ndim` dimensions."""
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated header ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != _IDX_MAGIC[ndim]:
        raise DataError(f"{name}: wrong magic number 0x{magic:08x}, expected 0x{_IDX_MAGIC[ndim]:08x}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if ndim == 3 and shape[1:] != (28, 28):
        raise DataError(f"{name}: images are {shape[1]}x{shape[2]}, expected 28x28")
    if len(raw) - header != math.prod(shape):
        raise DataError(f"{name}: {len(raw) - header} data bytes, header promises {math.prod(shape)} for shape {shape}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def gunzip(compressed: bytes, limit: int) -> bytes:
    """The gzip members of `compressed`, inflated (at most `limit` bytes) in calls that let go of the GIL, so that `cli`
    reads MNIST while JAX is imported; `EOFError` if they are cut short."""
    members, size = [], 0
    while compressed and size < limit:
        inflate = zlib.decompressobj(wbits=31)
        members.append(inflate.decompress(compressed, limit - size))
        size += len(members[-1])
        if not inflate.eof and size < limit:
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        compressed = inflate.unused_data.lstrip(b"\0")  # (zeros may pad a gzip file, as `gzip` allows)
    return b"".join(members)


def read_idx_file(path: Path, ndim: int, verify: bool = True) -> np.ndarray:
    """Read an IDX file (plain or gzip); check its SHA-256 against the published one. Only up to `MAX_IDX_BYTES`
    are read and inflated: a file that is, or expands to, more is damaged, refused as soon as seen."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_IDX_BYTES + 1)
        if path.suffix == ".gz" and len(raw) <= MAX_IDX_BYTES:
            raw = gunzip(raw, MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) > MAX_IDX_BYTES:
        raise DataError(f"{path}: damaged: it holds more than the {MAX_IDX_BYTES:,} bytes of the largest MNIST IDX file")
    array = parse_idx(raw, ndim, str(path))
    stem = path.name.removesuffix(".gz")
    if verify and (digest := hashlib.sha256(raw).hexdigest()) != IDX_SHA256.get(stem):
        raise DataError(f"{path}: SHA-256 {digest[:16]}... differs from the published digest of {stem}")
    return array


def _pair(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"{where}: label {labels.max()} outside 0-9")
    return images, labels


def load_idx_dir(directory: str | os.PathLike, verify: bool = True, suffixes: tuple[str, ...] = ("", ".gz")) -> MNIST:
    """The four IDX files in `directory` (a torchvision `MNIST/raw` folder works), each the first found of its name
    with each of `suffixes`."""
    directory = Path(directory)
    try:  # (`is_dir` and `is_file` raise where a folder cannot be searched)
        if not directory.is_dir():
            raise DataError(f"{directory}: not a folder (a folder of the four IDX files is expected)" if directory.exists()
                            else f"{directory}: no such directory")
        named = {stem: [directory / f"{stem}{suffix}" for suffix in suffixes] for stem in IDX_SHA256}
        paths = {stem: next((p for p in found if p.is_file()), None) or next((p for p in found if p.exists()), None)
                 for stem, found in named.items()}  # a file, else what holds its name
    except OSError as e:
        raise DataError(f"{directory}: cannot read ({e.strerror})") from None
    arrays = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        pair = []
        for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
            stem = f"{prefix}-{kind}-ubyte"
            path = paths[stem]
            if path is None:
                raise DataError(f"{directory}: missing {stem}" + (" (plain or .gz)" if len(suffixes) > 1 else suffixes[0]))
            if not path.is_file():
                raise DataError(f"{path}: not a file")
            pair.append(read_idx_file(path, ndim, verify))
        arrays.extend(_pair(*pair, f"{directory} ({split})"))
    return MNIST(*arrays, source=f"IDX files in {directory}")


def _record_digests(images: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """SHA-256 of each (label byte + 784 pixel bytes) record."""
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], 1)
    return [hashlib.sha256(r.tobytes()).digest() for r in records]


def _by_digest(digests: list[bytes]) -> np.ndarray:
    """The positions of `digests` in their sorted order."""
    return np.array(sorted(range(len(digests)), key=digests.__getitem__), np.int64)


def records_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """Order-independent SHA-256 of (label, image) records."""
    return hashlib.sha256(b"".join(sorted(_record_digests(images, labels)))).hexdigest()


def canonical_order(data: MNIST) -> dict[str, np.ndarray]:
    """For each split, the IDX position of each record in the order of the records' SHA-256 (all are distinct),
    as uint16: what `ORDER_FILE` holds, written from the IDX files by `np.savez_compressed(path, **canonical_order(data))`."""
    return {split: _by_digest(_record_digests(images, labels)).astype(np.uint16)
            for split, images, labels in (("train", *data[:2]), ("test", *data[2:4]))}


def in_idx_order(images: np.ndarray, labels: np.ndarray, split: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """`split`'s records in any order, verified as MNIST's (else `DataError`) and put in the IDX files' order."""
    digests = _record_digests(images, labels)
    by_digest = _by_digest(digests)
    digest = hashlib.sha256(b"".join(digests[i] for i in by_digest)).hexdigest()  # as `records_digest`
    if len(digests) != NUM_EXAMPLES[split] or digest != RECORDS_SHA256[split]:
        raise DataError(f"{where}: examples differ from the published MNIST")
    with resources.files("mnist_jax").joinpath(ORDER_FILE).open("rb") as f:
        place = np.empty(len(digests), np.int64)
        place[np.load(f)[split]] = by_digest  # the record at each IDX position
    return images[place], labels[place]


def _why(e: Exception) -> str:
    """What went wrong, in one short line: an HTTP status and its reason, else the exception's kind and first line."""
    if (response := getattr(e, "response", None)) is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code} {response.reason}"
    text = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()  # (a KeyError's str is its repr)
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line if len(line) <= 200 else line[:200] + '...'}" if line else type(e).__name__


def load_tfds(verify: bool = True) -> MNIST:
    """MNIST prepared by TFDS, read with `tfds.data_source` (no TensorFlow needed); if TensorFlow is importable
    and MNIST is not prepared yet, TFDS prepares it. With `verify`, its records (in TFDS's own order) are checked and put
    in the IDX files' order."""
    try:
        import tensorflow_datasets as tfds
        from absl import logging as absl_logging
    except ImportError:
        raise DataError("tensorflow-datasets is not installed") from None
    can_prepare = importlib.util.find_spec("tensorflow") is not None  # TFDS needs it only to prepare MNIST
    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS warns about folders it looks in
    arrays = []
    for split in ("train", "test"):
        try:
            source = tfds.data_source("mnist", split=split, download=can_prepare)
            examples = [source[i] for i in range(len(source))]
        except Exception as e:  # TFDS raises many kinds: missing, offline, corrupt
            why = "" if can_prepare else ", and TensorFlow is not installed to prepare it"
            raise DataError(f"no MNIST prepared by TFDS{why} ({_why(e)})") from None
        images = np.stack([ex["image"].reshape(28, 28) for ex in examples]).astype(np.uint8)
        labels = np.array([ex["label"] for ex in examples]).astype(np.uint8)
        if verify:
            images, labels = in_idx_order(images, labels, split, f"TFDS mnist {split}")
        arrays.extend(_pair(images, labels, f"TFDS mnist {split}"))
    return MNIST(*arrays, source="TFDS")


def default_cache_dir() -> Path:
    """The user cache folder, as `pooch.os_cache` names it (without importing pooch's 0.1 s)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("mnist_jax"))


def downloaded(cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether an earlier download left all four files in the cache."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        return all((cache_dir / f"{stem}.gz").is_file() for stem in IDX_SHA256)
    except OSError:  # (a folder that cannot be searched)
        return False


def reads_files(source: str = "auto", data_dir: str | os.PathLike | None = None) -> bool:
    """Whether `load_mnist(source, data_dir)` reads IDX files on disk (without TFDS or the network)."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    return source == "idx" or source == "auto" and bool(data_dir) or source in ("auto", "download") and downloaded()


def download(cache_dir: str | os.PathLike | None = None, mirror: str | None = None) -> MNIST:
    """Fetch the four `.gz` files from TFDS's mirror into a cache, then verify them; files this call fetched that
    fail are deleted, so never reused (one found there is left to its owner)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    mirror = mirror or os.environ.get(MIRROR_ENV) or MIRROR  # (set but empty: unset, as $MNIST_JAX_DATA_DIR)
    try:
        fetched = [stem for stem in IDX_SHA256 if not (cache_dir / f"{stem}.gz").is_file()]
    except OSError as e:  # (a name too long, say)
        raise DataError(f"{cache_dir}: cannot hold the download ({e.strerror}); set XDG_CACHE_HOME to another folder") from None
    if fetched:
        import pooch

        pooch.get_logger().setLevel("WARNING")  # the progress bar says what is downloading
        downloader = pooch.HTTPDownloader(progressbar=sys.stderr.isatty(), timeout=30)  # a bar's carriage returns only on a terminal
    for stem in fetched:
        name = f"{stem}.gz"
        try:
            # known_hash=None: the digests are of decompressed files, checked below
            pooch.retrieve(mirror.rstrip("/") + "/" + name, known_hash=None, fname=name, path=cache_dir, downloader=downloader)
        except Exception as e:  # requests/pooch raise many kinds when offline
            raise DataError(f"download of {name} from {mirror} failed: {_why(e)}") from None
    try:
        data = load_idx_dir(cache_dir, suffixes=(".gz",))  # what it downloaded, nothing else there
    except DataError as e:
        bad = next((stem for stem in IDX_SHA256 if f"{stem}.gz" in str(e)), None)  # (None: the files disagree, one with another)
        for stem in fetched:  # what this download wrote (unverified, if another file failed first)
            (cache_dir / f"{stem}.gz").unlink(missing_ok=True)
        if not (bad in fetched or bad is None and fetched):  # found there, not downloaded now: maybe a user's, not ours to delete
            path = cache_dir / f"{bad}.gz"
            found = "fix its permissions, or delete it," if bad and not os.access(path, os.R_OK) else \
                f"delete {path}" if bad else f"delete the .gz files of {cache_dir}"
            raise DataError(f"{e}: found in the download cache, not downloaded now; {found} to download it afresh") from None
        fault = str(e).removeprefix(f"{cache_dir / f'{bad}.gz'}: ")
        served = f"{mirror.rstrip('/')}/{bad}.gz" if bad else mirror
        raise DataError(f"{served} served data that is not MNIST's ({fault}); the downloaded files were deleted from "
                        f"{cache_dir}: try again later, or another mirror (${MIRROR_ENV})") from None
    if not fetched:
        return data._replace(source=f"IDX files cached in {cache_dir} by an earlier download")
    part = "" if len(fetched) == len(IDX_SHA256) else f" ({len(fetched)} of {len(IDX_SHA256)} files)"
    return data._replace(source=f"download from {mirror}{part}, cached in {cache_dir}")


def load_mnist(source: str = "auto", data_dir: str | os.PathLike | None = None) -> MNIST:
    """Load verified MNIST. `auto` reads the IDX files of `data_dir` (or $MNIST_JAX_DATA_DIR) when one is given,
    and otherwise those of an earlier download, then tries TFDS, then the download."""
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if source == "idx" or (source == "auto" and data_dir):
        if not data_dir:
            raise DataError(f"--source idx needs --data-dir or {DATA_DIR_ENV}")
        return load_idx_dir(data_dir)
    if source == "tfds":
        return load_tfds()
    if source == "download" or downloaded():  # (auto: an earlier download is read before TFDS is imported)
        return download()
    failures = []
    for name, attempt in (("TFDS", load_tfds), ("download", download)):
        try:
            return attempt()
        except DataError as e:
            failures.append(f"{name}: {e}")
    raise DataError(f"no MNIST found ({'; '.join(failures)}). Provide it one of three ways: --data-dir DIR (or {DATA_DIR_ENV}) "
                    "holding the four IDX files; MNIST prepared by TFDS (needs TensorFlow once to prepare); "
                    "or internet access for the verified download")
