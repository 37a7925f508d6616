"""User mistakes end in one clear line and exit status 2, never a traceback."""

import pytest

from conftest import run_script


def offline_env(tmp_path) -> dict:
    """No data dir, an empty TFDS folder and an unreachable mirror."""
    return {
        "MNIST_JAX_DATA_DIR": "",
        "TFDS_DATA_DIR": str(tmp_path / "tfds"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "MNIST_JAX_MIRROR": "http://127.0.0.1:9/",
    }


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_without_any_data_source_the_message_names_the_three_ways(tmp_path):
    proc = run_script("train.py", "--stage", "mlp", env=offline_env(tmp_path), cwd=tmp_path)
    assert_one_line_error(proc, "no MNIST found", "TFDS", "download", "--data-dir", "internet")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--stage", "mlp_huge"], ["--stage", "choose from"]),
        (["--stage", "mlp", "--epochs", "0"], ["--epochs", "positive integer"]),
        (["--stage", "mlp", "--lr", "nan"], ["--lr", "positive finite"]),
        (["--stage", "mlp", "--dropout", "1"], ["--dropout", "[0, 1)"]),
        (["--stage", "linear_ce", "--hidden", "64"], ["--hidden", "MLP stages only"]),
        (["--stage", "mlp", "--data-dir", "/no/such/dir"], ["/no/such/dir", "no such directory"]),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(tmp_path, args, fragments):
    proc = run_script("train.py", *args, cwd=tmp_path)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "runs").exists()
