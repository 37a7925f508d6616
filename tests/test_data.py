"""MNIST is read from IDX files, TFDS or a download, and is always verified."""

import gzip
import hashlib
import http.server
import shutil
import struct
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pooch
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, synthetic_mnist
from mnist_jax import data
from mnist_jax.data import DataError, load_idx_dir, load_mnist, parse_idx
from mnist_jax.train import TrainConfig, train


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x800 + array.ndim
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def test_parse_idx_round_trips_images_and_labels():
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    labels = np.array([7, 0, 9], np.uint8)
    np.testing.assert_array_equal(parse_idx(idx_bytes(images), 3), images)
    np.testing.assert_array_equal(parse_idx(idx_bytes(labels), 1), labels)


@pytest.mark.parametrize(
    "raw, complaint",
    [
        (b"\x00\x00", "truncated header"),
        (idx_bytes(np.zeros((2, 28, 28))), "wrong magic"),  # read as labels (ndim 1)
        (idx_bytes(np.zeros(5))[:-1], "header promises 5"),
    ],
)
def test_parse_idx_rejects_malformed_labels(raw, complaint):
    with pytest.raises(DataError, match=complaint):
        parse_idx(raw, 1, "labels")


def test_parse_idx_rejects_images_that_are_not_28x28():
    with pytest.raises(DataError, match="expected 28x28"):
        parse_idx(idx_bytes(np.zeros((2, 14, 14))), 3, "images")


def test_real_mnist_verifies_and_has_the_published_label_counts(mnist):
    assert mnist.train_images.shape == (60_000, 28, 28) and mnist.train_images.dtype == np.uint8
    assert mnist.test_images.shape == (10_000, 28, 28)
    assert np.bincount(mnist.train_labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]
    assert np.bincount(mnist.test_labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009
    ]


def test_plain_idx_files_load_like_gzipped_ones(data_dir, tmp_path, mnist):
    for gz in data_dir.glob("*.gz"):
        (tmp_path / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    plain = load_idx_dir(tmp_path)
    np.testing.assert_array_equal(plain.train_images, mnist.train_images)
    np.testing.assert_array_equal(plain.test_labels, mnist.test_labels)


def test_gzip_files_of_several_members_or_padded_with_zeros_load_as_gzip_reads_them(data_dir, tmp_path, mnist):
    for gz in data_dir.glob("*.gz"):
        raw = gzip.decompress(gz.read_bytes())
        half = len(raw) // 2
        (tmp_path / gz.name).write_bytes(gzip.compress(b"", compresslevel=1) + gzip.compress(raw[:half], compresslevel=1) + gzip.compress(raw[half:], compresslevel=1) + bytes(8))
    assert gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()) == gzip.decompress(
        (data_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    members = load_idx_dir(tmp_path)
    np.testing.assert_array_equal(members.train_images, mnist.train_images)
    np.testing.assert_array_equal(members.test_labels, mnist.test_labels)
    whole = (tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(whole[: len(whole) - 30])  # its last member cut short
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: cannot read .*end-of-stream"):
        load_idx_dir(tmp_path)


def test_a_file_with_a_wrong_digest_is_rejected(data_dir, tmp_path):
    for gz in data_dir.glob("*.gz"):
        shutil.copy(gz, tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one test label changed: still a valid IDX file
    labels.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: SHA-256 .* differs"):
        load_idx_dir(tmp_path)


def test_a_missing_file_is_named(data_dir, tmp_path):
    for gz in data_dir.glob("*.gz"):
        shutil.copy(gz, tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        load_mnist("auto", tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").mkdir()  # a folder under its name is not what is missing
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: not a file"):
        load_mnist("auto", tmp_path)
    with pytest.raises(DataError, match="nowhere: no such directory"):
        load_mnist("auto", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: not a folder \(a folder of the four IDX files"):
        load_mnist("auto", tmp_path / "t10k-images-idx3-ubyte.gz")  # (a file was called no such directory: a hostile user's case)


def test_tfds_source_reads_uint8_images_and_rejects_data_that_is_not_mnist():
    with tfds.testing.mock_data(num_examples=12):
        mock = data.load_tfds(verify=False)
        assert mock.train_images.shape == (12, 28, 28) and mock.train_images.dtype == np.uint8
        assert mock.train_labels.shape == (12,) and mock.train_labels.max() <= 9
        assert mock.source == "TFDS"
        with pytest.raises(DataError, match="differ from the published MNIST"):
            data.load_tfds()  # random mock examples fail the order-free digest


def test_order_free_digest_ignores_order_but_not_content(mnist):
    images, labels = mnist.test_images, mnist.test_labels
    assert data.records_digest(images, labels) == data.RECORDS_SHA256["test"]
    order = np.random.default_rng(0).permutation(len(labels))
    assert data.records_digest(images[order], labels[order]) == data.RECORDS_SHA256["test"]
    swapped = labels.copy()
    swapped[0] = (swapped[0] + 1) % 10
    assert data.records_digest(images, swapped) != data.RECORDS_SHA256["test"]


def test_the_committed_idx_order_is_that_of_the_idx_files(mnist):
    with np.load(ROOT / "mnist_jax" / data.ORDER_FILE) as committed:
        assert {split: committed[split].tolist() for split in committed} == {
            split: order.tolist() for split, order in data.canonical_order(mnist).items()}


def test_the_idx_order_ships_in_the_package():
    assert f'mnist_jax = ["{data.ORDER_FILE}"]' in (ROOT / "pyproject.toml").read_text()  # [tool.setuptools.package-data]


def test_tfds_in_another_order_gives_the_idx_arrays_and_the_same_seed_42_run(mnist):
    """MNIST through the TFDS path (`tfds.data_source`, mocked) in a shuffled order comes back in the IDX
    files' order, so seed 42's split, batches and results are those of the IDX run."""
    shuffled = {}
    for split, images, labels in (("train", *mnist[:2]), ("test", *mnist[2:4])):
        order = np.random.default_rng(0).permutation(len(labels))
        shuffled[split] = [{"image": images[i, :, :, None], "label": labels[i]} for i in order]
    with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **kwargs: shuffled[split]):
        from_tfds = load_mnist("tfds")
    assert from_tfds.source == "TFDS" and [e["label"] for e in shuffled["train"]] != mnist.train_labels.tolist()
    for got, expected in zip(from_tfds[:4], mnist[:4], strict=True):
        np.testing.assert_array_equal(got, expected)
    idx_run, tfds_run = (train(TrainConfig("linear_ce", epochs=1), source) for source in (mnist, from_tfds))
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in tfds_run.history] == [
        {k: v for k, v in row.items() if k != "seconds"} for row in idx_run.history]
    assert tfds_run.test_accuracy == idx_run.test_accuracy


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server standing in for the download mirror."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture
def mnist_mirror(mirror, data_dir):
    """The local mirror, serving the four MNIST files."""
    for gz in data_dir.glob("*.gz"):
        shutil.copy(gz, mirror[0])
    return mirror


def test_download_fetches_verifies_and_caches(mnist_mirror, tmp_path, mnist):
    root, url = mnist_mirror
    cache = tmp_path / "cache"
    fetched = data.download(cache, url)
    np.testing.assert_array_equal(fetched.train_images, mnist.train_images)
    assert sorted(p.name for p in cache.glob("*.gz")) == sorted(p.name for p in root.iterdir())


def test_the_data_line_names_the_mirror_or_the_cache_and_off_a_terminal_draws_no_progress_bar(mnist_mirror, data_dir, tmp_path,
                                                                                               capfd):
    _, url = mnist_mirror
    cache = tmp_path / "cache"
    fetched = data.download(cache, url)
    assert fetched.source == f"download from {url}, cached in {cache}"
    assert fetched.origin == f"download from {url}"  # what result files record: no folder of this machine
    assert "\r" not in capfd.readouterr().err  # pytest's stderr is no terminal
    cached = data.download(cache, "http://127.0.0.1:9/unused/")
    assert (cached.source, cached.origin) == (
        f"IDX files cached in {cache} by an earlier download", "IDX files cached by an earlier download")
    (cache / "t10k-labels-idx1-ubyte.gz").unlink()
    assert data.download(cache, url).source == f"download from {url} (1 of 4 files), cached in {cache}"
    assert data.load_idx_dir(data_dir).origin == "IDX files"


def test_auto_reads_an_earlier_download_in_the_user_cache_folder_before_it_tries_tfds(data_dir, tmp_path, monkeypatch, mnist):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the user cache folder, as pooch names it
    cache = tmp_path / "mnist_jax"
    assert data.default_cache_dir() == cache == Path(pooch.os_cache("mnist_jax"))
    monkeypatch.setattr(data, "load_tfds", lambda: pytest.fail("TFDS was tried before the earlier download"))
    cache.mkdir()
    for gz in data_dir.glob("*.gz"):
        shutil.copy(gz, cache)
    assert data.reads_files("auto") and data.reads_files("download") and not data.reads_files("tfds")
    found = data.load_mnist("auto")
    assert found.source == f"IDX files cached in {cache} by an earlier download"
    np.testing.assert_array_equal(found.test_images, mnist.test_images)
    (cache / "train-images-idx3-ubyte").write_bytes(b"junk!")  # not what the download wrote: not read, not deleted
    assert data.load_mnist("auto").source == found.source and len(list(cache.iterdir())) == 5
    (cache / "t10k-labels-idx1-ubyte.gz").unlink()  # three of four: TFDS is tried
    assert not data.reads_files("auto")
    with pytest.raises(pytest.fail.Exception, match="TFDS was tried"):
        data.load_mnist("auto")


def cache_with_a_cut_file(cache: Path, files: list[Path]) -> Path:
    """A download cache holding `files`, its test labels cut short (damaged): the cut file."""
    cache.mkdir()
    for gz in files:
        shutil.copy(gz, cache)
    cut = cache / "t10k-labels-idx1-ubyte.gz"
    cut.write_bytes(cut.read_bytes()[:1000])
    return cut


def named_for_deletion(cut: Path) -> str:
    return f"found in the download cache, not downloaded now; delete {cut} to download it afresh$"


def test_a_damaged_file_found_in_the_download_cache_is_named_not_deleted_and_a_folder_the_os_refuses_is_a_data_error(
        data_dir, tmp_path):
    cache = tmp_path / "cache"  # (or a link to a user's own folder of MNIST, whose files are not ours to delete)
    cut = cache_with_a_cut_file(cache, list(data_dir.glob("*.gz")))
    with pytest.raises(DataError, match=named_for_deletion(cut)):
        data.download(cache, "http://unused.invalid/")
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{stem}.gz" for stem in data.IDX_SHA256)
    assert len(cut.read_bytes()) == 1000
    cache.chmod(0o555)  # (read-only: a refusal of the data, not a failed write)
    try:
        with pytest.raises(DataError, match="found in the download cache"):
            data.download(cache, "http://unused.invalid/")
    finally:
        cache.chmod(0o755)
    too_long = tmp_path.joinpath(*["x" * 250] * 17)  # (ENAMETOOLONG: as a folder that cannot be searched)
    with pytest.raises(DataError, match=r": cannot read \(File name too long\)$"):
        load_idx_dir(too_long)
    with pytest.raises(DataError, match=r": cannot hold the download \(File name too long\); set XDG_CACHE_HOME to another"):
        data.download(too_long, "http://unused.invalid/")  # (it was a failed write: status 5, "run the same command again")
    assert not data.downloaded(too_long)


def test_files_fetched_beside_a_damaged_one_found_in_the_cache_are_deleted_and_it_is_kept(mnist_mirror, tmp_path, data_dir):
    """(They were kept unverified, and a bad one would have been blamed on the user next time.)"""
    _, url = mnist_mirror
    cache = tmp_path / "cache"
    cut = cache_with_a_cut_file(cache, list(data_dir.glob("t10k-*.gz")))
    with pytest.raises(DataError, match=named_for_deletion(cut)):
        data.download(cache, url)
    assert sorted(p.name for p in cache.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_a_download_that_fails_its_digest_is_deleted(mirror, tmp_path):
    root, url = mirror
    synthetic = synthetic_mnist(num_train=20, num_test=10)
    for stem, array in zip(data.IDX_SHA256, synthetic[:4]):  # well-formed IDX files, but not MNIST's
        (root / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(array), compresslevel=1))
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as refused:
        data.download(cache, url)
    assert str(refused.value).startswith(f"{url}train-images-idx3-ubyte.gz served data that is not MNIST's (SHA-256 ")
    assert f"the downloaded files were deleted from {cache}" in str(refused.value)  # (not the deleted file named as the fault)
    assert not list(cache.glob("*.gz"))


def test_a_mirror_without_the_files_is_named_with_its_http_status(mirror, tmp_path):
    root, url = mirror
    with pytest.raises(DataError, match=f"download of train-images-idx3-ubyte.gz from {url}nothere/ failed: HTTP 404 "):
        data.download(tmp_path / "cache", url + "nothere/")


def test_tfds_without_mnist_prepared_says_what_is_missing(monkeypatch):
    def data_source(*_, **__):
        raise KeyError("Trying to access `splits['train']` but `splits` is empty. This likely indicates the dataset has not "
                       "been generated yet.")

    monkeypatch.setattr(tfds, "data_source", data_source)
    with pytest.raises(DataError, match=r"no MNIST prepared by TFDS.* \(KeyError: Trying to access `splits\['train'\]` but "
                                        r"`splits` is empty. This likely indicates the dataset has not been generated yet.\)$"):
        data.load_tfds()


def test_unverified_idx_files_load_as_written(tmp_path):
    synthetic = synthetic_mnist(num_train=20, num_test=10)
    for stem, array in zip(data.IDX_SHA256, synthetic[:4]):
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(array), compresslevel=1))
    loaded = load_idx_dir(tmp_path, verify=False)
    for got, written in zip(loaded[:4], synthetic[:4]):
        np.testing.assert_array_equal(got, written)


def test_the_pinned_digests_are_those_of_the_files_read(data_dir):
    for stem, digest in data.IDX_SHA256.items():
        assert hashlib.sha256(gzip.decompress((data_dir / f"{stem}.gz").read_bytes())).hexdigest() == digest
    sums = data_dir / "SHA256SUMS"  # beside an offline copy, as in CI
    if sums.is_file():
        assert dict(line.split()[::-1] for line in sums.read_text().splitlines()) == data.IDX_SHA256


def test_counts_that_disagree_and_labels_outside_0_to_9_are_named(data_dir, tmp_path):
    for gz in data_dir.glob("*.gz"):
        shutil.copy(gz, tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(raw[:-1] + b"\x0c", compresslevel=1))  # a label 12
    with pytest.raises(DataError, match="label 12 outside 0-9"):
        load_idx_dir(tmp_path, verify=False)
    labels.write_bytes(gzip.compress(struct.pack(">2I", 0x801, 9_999) + raw[8:-1], compresslevel=1))
    with pytest.raises(DataError, match="10000 images but 9999 labels"):
        load_idx_dir(tmp_path, verify=False)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=3000), ndim=st.sampled_from([1, 3]))
def test_parse_idx_on_arbitrary_bytes_returns_arrays_or_raises_data_error(raw, ndim):
    check_parse(raw, ndim)


@settings(max_examples=300, deadline=None)
@given(
    ndim=st.sampled_from([1, 3]),
    dims=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 40), min_size=3, max_size=3),
    payload=st.binary(max_size=5000),
)
def test_parse_idx_on_plausible_headers_returns_arrays_or_raises_data_error(ndim, dims, payload):
    raw = struct.pack(f">I{ndim}I", 0x800 + ndim, *dims[:ndim]) + payload
    check_parse(raw, ndim)


def check_parse(raw: bytes, ndim: int):
    try:
        array = parse_idx(raw, ndim)
    except DataError:
        return
    assert array.dtype == np.uint8 and array.ndim == ndim
    if ndim == 3:
        assert array.shape[1:] == (28, 28)


class CutShortHandler(http.server.BaseHTTPRequestHandler):
    """Promises a whole file, sends half of it, and hangs up."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + bytes(49_998))

    def log_message(self, *args):
        pass


def test_a_broken_off_download_never_looks_complete(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutShortHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache = tmp_path / "cache"
    try:
        with pytest.raises(DataError, match="download of train-images-idx3-ubyte.gz .* failed"):
            data.download(cache, f"http://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
    assert not list(cache.glob("*.gz")) if cache.exists() else True


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from mnist_jax.files import atomic_write, write_json

    target = tmp_path / "results.json"
    write_json(target, {"complete": True})
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as tmp:
            tmp.write_text('{"half": ')
            raise KeyboardInterrupt
    assert target.read_text() == '{\n  "complete": true\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def bomb(path, size: int) -> None:
    """A gzip file of `size` zero bytes (a two-hundredth of that on disk)."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        for _ in range(size // 2**20):
            f.write(bytes(2**20))


@pytest.mark.parametrize("name, make", [
    ("train-images-idx3-ubyte.gz", lambda path: bomb(path, 200 * 2**20)),
    ("train-images-idx3-ubyte", lambda path: open(path, "wb").truncate(data.MAX_IDX_BYTES + 1)),  # sparse: nothing on disk
])
def test_a_file_larger_than_any_mnist_file_is_refused_as_damaged_having_read_no_more_than_one(tmp_path, name, make):
    """A gzip bomb of 200 MB (under 1 MB on disk) is refused with at most the largest IDX
    file's 47 MB (and its decompression buffer) in memory, not after expanding it."""
    make(tmp_path / name)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=f"{name}: damaged: it holds more than the 47,040,016 bytes of the largest MNIST IDX file"):
            data.read_idx_file(tmp_path / name, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * data.MAX_IDX_BYTES
