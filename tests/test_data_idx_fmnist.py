"""IDX files and Fashion-MNIST: pixel-exact reading, one-line library errors, bounded reading."""

import gzip
import struct
import tracemalloc

import numpy as np
import pytest
import torch
from data_helpers import fashion_mnist_folder, make_fashion_mnist, write_idx

from lowrankcnn.data import load_fashion_mnist, read_idx
from lowrankcnn.data.fashion_mnist import DEFAULT_DIR
from lowrankcnn.errors import DataError, DataNotFoundError

fmnist_dir = pytest.fixture(fashion_mnist_folder, name="fmnist_dir")


@pytest.mark.parametrize("name", ["x-images-idx3-ubyte.gz", "x-images-idx3-ubyte"])
def test_read_idx_round_trip(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    labels = np.array([9, 0, 3], dtype=np.uint8)
    got = read_idx(write_idx(tmp_path / name, images))
    assert got.dtype == torch.uint8 and got.shape == (3, 4, 5) and torch.equal(got, torch.from_numpy(images))
    assert torch.equal(read_idx(write_idx(tmp_path / f"{name}-labels", labels)), torch.from_numpy(labels))


def _idx_bytes(images: np.ndarray) -> bytes:
    return struct.pack(">I", 0x803) + struct.pack(">3I", *images.shape) + images.tobytes()


def _flip_deflate(z: bytes) -> bytes:
    return z[:12] + bytes(b ^ 0xFF for b in z[12:-8]) + z[-8:]


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("x.gz", lambda raw: gzip.compress(raw[:30]), "truncated IDX file: header says 3x4x5 (60 bytes) but only 14"),
        ("x", lambda raw: raw[:30], "truncated IDX file: header says 3x4x5 (60 bytes) but only 14 bytes follow"),
        ("x.gz", lambda raw: gzip.compress(raw + b"junk"), "trailing garbage after IDX payload: header says 3x4x5"),
        ("x", lambda raw: raw + b"junk", "trailing garbage after IDX payload: header says 3x4x5 (60 bytes)"),
        ("x.gz", lambda raw: gzip.compress(b"\x00\x00\x0d\x03" + raw[4:]), "magic number 0x00000d03"),
        ("x.gz", lambda raw: gzip.compress(raw[:10]), "truncated IDX header"),
        ("x.gz", lambda raw: gzip.compress(raw[:2]), "truncated IDX file: 2 bytes, fewer than the 4-byte magic"),
        ("x.gz", lambda raw: gzip.compress(raw)[:-12], "truncated gzip file"),
        ("x.gz", lambda raw: raw, "corrupt or unreadable file"),  # not gzip at all
        ("x.gz", lambda raw: _flip_deflate(gzip.compress(raw)), "corrupt"),
    ],
    ids=[
        "short-payload-gz",
        "short-payload",
        "trailing-garbage-gz",
        "trailing-garbage",
        "bad-magic",
        "short-header",
        "short-magic",
        "truncated-gzip",
        "not-gzip",
        "bad-deflate",
    ],
)
def test_read_idx_rejects_corrupt_files_with_one_line(tmp_path, name, make, message):
    raw = _idx_bytes(np.zeros((3, 4, 5), dtype=np.uint8))
    path = tmp_path / name
    path.write_bytes(make(raw))
    with pytest.raises(DataError) as info:
        read_idx(path, hint="reinstall it")
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and text.endswith("; reinstall it") and "\n" not in text


def test_read_idx_missing_file_is_data_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match="nowhere.gz not found"):
        read_idx(tmp_path / "nowhere.gz")


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_lying_header_allocates_nothing_big(tmp_path, gz):
    """A 16-byte header claiming 4 billion^3 bytes is refused from the file size, before reading a payload."""
    raw = struct.pack(">I", 0x803) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1) + b"\0" * 64
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match="more than a .*gzip file can hold" if gz else "but only 64 bytes follow"):
        read_idx(path)


def test_read_idx_reads_no_more_than_the_header_declares(tmp_path):
    """A gzip bomb (a 1x1x1 header, then 64 MiB of zeros) is refused without decompressing it all."""
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros((1, 1, 1), dtype=np.uint8)) + bytes(64 << 20), 1))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="trailing garbage after IDX payload: header says 1x1x1"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


# --------------------------------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_fixture_exactly(tmp_path, gz):
    arrays = make_fashion_mnist(tmp_path, gz=gz)
    for train, prefix in ((True, "train"), (False, "t10k")):
        x, y = load_fashion_mnist(tmp_path, train=train)
        assert x.dtype == torch.uint8 and x.shape == (len(arrays[f"{prefix}-images"]), 1, 28, 28)
        assert y.dtype == torch.int64
        assert torch.equal(x[:, 0], torch.from_numpy(arrays[f"{prefix}-images"]))
        assert torch.equal(y, torch.from_numpy(arrays[f"{prefix}-labels"]).long())


def test_fashion_mnist_test_split_needs_only_its_files(tmp_path):
    arrays = make_fashion_mnist(tmp_path, splits=("t10k",))
    x, _ = load_fashion_mnist(tmp_path, train=False)
    assert torch.equal(x[:, 0], torch.from_numpy(arrays["t10k-images"]))
    with pytest.raises(DataNotFoundError):
        load_fashion_mnist(tmp_path, train=True)


def test_fashion_mnist_dir_from_env(fmnist_dir, monkeypatch):
    monkeypatch.setenv("LOWRANKCNN_FASHION_MNIST", str(fmnist_dir))
    assert load_fashion_mnist(None, train=False)[0].shape == (12, 1, 28, 28)


def test_fashion_mnist_missing_dir_says_how_to_install_in_python_terms(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("LOWRANKCNN_FASHION_MNIST", str(missing))
    with pytest.raises(DataNotFoundError) as info:
        load_fashion_mnist(None, train=True)
    text = str(info.value)
    assert "\n" not in text and f"Fashion-MNIST not found in {missing}" in text
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in text and "LOWRANKCNN_FASHION_MNIST" in text
    assert "point data_dir or" in text and "--data-dir" not in text  # Python terms; the CLI renders the flag
    assert info.value.param == "data_dir" and "point --data-dir or" in info.value.render({"data_dir": "--data-dir"})


def test_fashion_mnist_count_mismatch(fmnist_dir):
    write_idx(fmnist_dir / "t10k-labels-idx1-ubyte.gz", np.zeros(11, dtype=np.uint8))
    with pytest.raises(DataError, match="12 images but t10k-labels-idx1-ubyte.gz holds 11 labels"):
        load_fashion_mnist(fmnist_dir, train=False)


def test_real_fashion_mnist():
    if not (DEFAULT_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed in {DEFAULT_DIR} (apt-get install dataset-fashion-mnist)")
    x, y = load_fashion_mnist(DEFAULT_DIR, train=True)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8 and y.shape == (60000,) and y.dtype == torch.int64
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 6000))
    mean = x.float().div(255).mean().item()
    assert abs(mean - 0.2860) < 1e-3
    x, y = load_fashion_mnist(DEFAULT_DIR, train=False)
    assert x.shape == (10000, 1, 28, 28) and int(y.min()) == 0 and int(y.max()) == 9
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 1000))
