"""CIFAR-10/100: pixel-exact reading of the official pickles, and what the restricted unpickler refuses."""

import io
import os
import pickle
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import make_cifar, py2_pickle_bytes, write_py2_pickle
from numpy._core.multiarray import _reconstruct

from lowrankcnn.data import RestrictedUnpickler, UnsafePickleError, load_cifar, load_cifar_classes
from lowrankcnn.errors import ConfigError, DataError, DataNotFoundError


@pytest.mark.parametrize("numpy_module", ["numpy.core.multiarray", "numpy._core.multiarray"])
@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_reads_official_format_exactly(tmp_path, variant, numpy_module):
    """Files as numpy 1.x (the official archives) and numpy 2.x pickle them load pixel for pixel."""
    arrays = make_cifar(tmp_path, variant, numpy_module=numpy_module)
    folder = next(tmp_path.iterdir())
    assert numpy_module.encode() in (folder / ("test" if variant == "cifar100" else "test_batch")).read_bytes()
    for data_dir in (tmp_path, folder):  # the batch folder itself or its parent
        x, y = load_cifar(variant, data_dir, train=True)
        assert x.dtype == torch.uint8 and x.shape == (len(arrays["train_x"]), 3, 32, 32) and y.dtype == torch.int64
        assert torch.equal(x, torch.from_numpy(arrays["train_x"]))
        assert torch.equal(y, torch.from_numpy(arrays["train_y"]))
    x, y = load_cifar(variant, tmp_path, train=False)
    assert torch.equal(x, torch.from_numpy(arrays["test_x"])) and torch.equal(y, torch.from_numpy(arrays["test_y"]))
    names = load_cifar_classes(variant, tmp_path)
    assert names == [f"class_{i}" for i in range(10 if variant == "cifar10" else 100)]


def test_cifar_test_split_needs_only_test_batch_and_meta(tmp_path):
    arrays = make_cifar(tmp_path, "cifar10", splits=("test",))
    assert sorted(p.name for p in (tmp_path / "cifar-10-batches-py").iterdir()) == ["batches.meta", "test_batch"]
    x, y = load_cifar("cifar10", tmp_path, train=False)
    assert torch.equal(x, torch.from_numpy(arrays["test_x"])) and torch.equal(y, torch.from_numpy(arrays["test_y"]))
    with pytest.raises(DataNotFoundError, match="CIFAR-10 not found in .*data_batch_1"):
        load_cifar("cifar10", tmp_path, train=True)


def test_cifar_accepts_python3_pickles_with_str_keys(tmp_path):
    make_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    labels = np.array([3, 4], dtype=np.int64)  # a label array (not a list) is accepted too
    path.write_bytes(pickle.dumps({"data": data, "labels": labels}, protocol=2))
    x, y = load_cifar("cifar10", tmp_path, train=False)
    assert torch.equal(x.flatten(1), torch.from_numpy(data)) and y.tolist() == [3, 4]
    path.write_bytes(pickle.dumps({"data": np.asfortranarray(data.reshape(2, 3072)), "labels": [1, 2]}, protocol=2))
    assert torch.equal(load_cifar("cifar10", tmp_path, train=False)[0].flatten(1), torch.from_numpy(data))


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_malicious_pickle_without_running_it(tmp_path):
    make_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": []}, protocol=2))
    with pytest.raises(UnsafePickleError) as info:
        load_cifar("cifar10", tmp_path, train=False)
    assert isinstance(info.value, DataError)
    assert f"refusing to unpickle {path}: it references" in str(info.value) and "system" in str(info.value)
    assert not marker.exists()


class _ZeroStrideArray:
    """Pickles as ``numpy.ndarray((200000, 3072), uint8, b"\\0", 0, (0, 0))``: 600 MB of zeros from one byte."""

    def __reduce__(self):
        return (np.ndarray, ((200000, 3072), np.dtype("u1"), b"\0", 0, (0, 0)))


def test_cifar_refuses_an_array_declared_by_calling_ndarray(tmp_path):
    """The issue's attack: a few hundred bytes declaring 200,000 images with zero strides."""
    make_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _ZeroStrideArray(), b"labels": [0] * 10}, protocol=2))
    assert path.stat().st_size < 400
    with pytest.raises(UnsafePickleError, match="numpy.ndarray called directly"):
        load_cifar("cifar10", tmp_path, train=False)


class _ArrayState:
    """Pickles exactly as numpy pickles an array (``_reconstruct`` then BUILD), with ``shape`` and ``raw`` free to
    disagree."""

    def __init__(self, shape: tuple[int, ...], raw: bytes, dtype: str = "u1") -> None:
        self.shape, self.raw, self.dtype = shape, raw, dtype

    def __reduce__(self):
        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, self.shape, np.dtype(self.dtype), False, self.raw))


def _array_pickle(shape: tuple[int, ...], raw: bytes, dtype: str = "u1") -> bytes:
    return pickle.dumps({"data": _ArrayState(shape, raw, dtype), "labels": [0, 0]}, protocol=2)


def test_cifar_refuses_arrays_whose_shape_disagrees_with_their_bytes(tmp_path):
    make_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(_array_pickle((2, 3072), bytes(6144)))
    assert load_cifar("cifar10", tmp_path, train=False)[0].shape == (2, 3, 32, 32)  # the builder is faithful
    path.write_bytes(_array_pickle((200000, 3072), bytes(6144)))
    with pytest.raises(DataError, match=r"shape \(200000, 3072\) \(uint8\) needs 614,400,000 bytes but 6,144 are"):
        load_cifar("cifar10", tmp_path, train=False)
    path.write_bytes(_array_pickle((2, 3072), bytes(6144), dtype="f4"))
    with pytest.raises(UnsafePickleError, match="a numpy dtype 'f4'"):
        load_cifar("cifar10", tmp_path, train=False)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x05\x85U\x01b\x87R.", "_reconstruct with"),
        (b"c_codecs\nencode\nX\x02\x00\x00\x0061X\x03\x00\x00\x00hex\x86R.", "_codecs.encode other than"),
        (b"}}b.", "BUILD on a dict"),
        (b"(cnumpy\ndtype\nX\x02\x00\x00\x00u1o.", "creates objects of arbitrary classes"),
        (b"cnumpy\ndtype\nX\x01\x00\x00\x00O\x85R.", "a numpy dtype 'O'"),
        (b"cbuiltins\neval\n.", "references builtins.eval"),
    ],
    ids=["reconstruct-args", "codec-amplifier", "build-dict", "obj-opcode", "object-dtype", "eval"],
)
def test_restricted_unpickler_refuses_everything_a_cifar_file_never_does(payload, message):
    with pytest.raises(UnsafePickleError, match=message):
        RestrictedUnpickler(io.BytesIO(b"\x80\x02" + payload), Path("x"), max_bytes=len(payload)).load()


def test_cifar_memo_index_allocates_nothing(tmp_path):
    """``LONG_BINPUT 2**24`` makes the C unpickler allocate a 2**25-entry memo (256 MiB) from 10 bytes."""
    make_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    good = path.read_bytes()
    path.write_bytes(b"\x80\x02K\x00r" + struct.pack("<I", 2**24) + b"0" + good[2:])  # push, memoize, pop
    tracemalloc.start()
    try:
        start = time.perf_counter()
        assert load_cifar("cifar10", tmp_path, train=False)[0].shape == (10, 3, 32, 32)
        elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20 and elapsed < 5


@pytest.mark.parametrize(
    "labels, message",
    [
        ([0.0, 1.5], "'labels' must hold integer labels, but item 0 is float 0.0"),
        ([1, True], "'labels' must hold integer labels, but item 1 is bool True"),
        ([1, b"2"], "'labels' must hold integer labels, but item 1 is bytes b'2'"),
        ([0, 10], r"'labels' holds labels outside 0..9"),
        ([-1, 0], r"'labels' holds labels outside 0..9"),
        ({b"a": 1}, "'labels' must be a list of integer labels, got dict"),
    ],
    ids=["float", "bool", "bytes", "too-large", "negative", "dict"],
)
def test_cifar_labels_must_be_integers_in_range(tmp_path, labels, message):
    make_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_py2_pickle(path, {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": labels})
    with pytest.raises(DataError, match=f"^{path}: {message}"):
        load_cifar("cifar10", tmp_path, train=False)


def test_cifar_truncated_and_malformed_batches(tmp_path):
    make_cifar(tmp_path, "cifar100")
    path = tmp_path / "cifar-100-python" / "test"
    full = path.read_bytes()
    for cut in (5000, 40, 3):
        path.write_bytes(full[:cut])
        with pytest.raises(DataError, match=f"{path}: truncated or corrupt CIFAR pickle"):
            load_cifar("cifar100", tmp_path, train=False)
    write_py2_pickle(path, {b"data": np.zeros((2, 1024), dtype=np.uint8), b"fine_labels": [0, 1]})
    with pytest.raises(DataError, match=r"'data' must be a uint8 array of shape \(N, 3072\)"):
        load_cifar("cifar100", tmp_path, train=False)
    write_py2_pickle(path, {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match="missing key"):
        load_cifar("cifar100", tmp_path, train=False)
    write_py2_pickle(path, {b"data": np.zeros((2, 3072), dtype=np.uint8), b"fine_labels": [0, 1, 2]})
    with pytest.raises(DataError, match="2 images but 'fine_labels' holds 3 labels"):
        load_cifar("cifar100", tmp_path, train=False)
    path.write_bytes(py2_pickle_bytes([1, 2]))
    with pytest.raises(DataError, match="expected a pickled dict, got list"):
        load_cifar("cifar100", tmp_path, train=False)


def test_cifar_missing_files_and_bad_variant(tmp_path):
    with pytest.raises(DataNotFoundError, match="CIFAR-10 not found in .*data_batch_1.*cifar-10-batches-py"):
        load_cifar("cifar10", tmp_path, train=True)
    with pytest.raises(DataNotFoundError) as info:
        load_cifar("cifar10", None, train=True)
    assert info.value.param == "data_dir" and "pass data_dir pointing at cifar-10-batches-py/" in str(info.value)
    with pytest.raises(ConfigError, match="variant must be 'cifar10' or 'cifar100', got 'cifar1000'"):
        load_cifar("cifar1000", tmp_path, train=True)
