"""Builders of small data sets in the real on-disk formats, shared by the tests/test_data_*.py modules."""

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lowrankcnn.data import BatchSource


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    raw = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def make_fashion_mnist(
    folder: Path, n_train: int = 40, n_test: int = 12, gz: bool = True, splits: tuple[str, ...] = ("train", "t10k")
) -> dict[str, np.ndarray]:
    """A tiny Fashion-MNIST in the package's layout (only the ``splits`` prefixes); returns the arrays written."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels"] = (np.arange(n) % 10).astype(np.uint8)
        if prefix in splits:
            ext = ".gz" if gz else ""
            write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", arrays[f"{prefix}-images"])
            write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", arrays[f"{prefix}-labels"])
    return arrays


def fashion_mnist_folder(tmp_path: Path) -> Path:
    """A tiny Fashion-MNIST (40 training, 12 test images) under ``tmp_path``; a module makes it a fixture with
    ``fmnist_dir = pytest.fixture(fashion_mnist_folder, name="fmnist_dir")``."""
    make_fashion_mnist(tmp_path / "fmnist")
    return tmp_path / "fmnist"


class Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python-2 ``str`` opcodes (SHORT_BINSTRING/BINSTRING), as the official CIFAR files do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle_bytes(obj: object, numpy_module: str = "numpy.core.multiarray") -> bytes:
    """Protocol 2 with Python-2 strings, like ``cifar-10-python.tar.gz``; numpy's module path as ``numpy_module``
    (``numpy.core.multiarray`` as numpy 1.x writes it, or ``numpy._core.multiarray`` as numpy 2.x does)."""
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue()
    for name in (b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"):
        data = data.replace(name, numpy_module.encode() + b"\n")
    return data


def write_py2_pickle(path: Path, obj: object, numpy_module: str = "numpy.core.multiarray") -> None:
    path.write_bytes(py2_pickle_bytes(obj, numpy_module))


CIFAR_FILES = {
    "cifar10": (["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"], "test_batch"),
    "cifar100": (["train"], "test"),
}


def make_cifar(
    root: Path,
    variant: str,
    per_file: int = 6,
    n_test: int = 10,
    splits: tuple[str, ...] = ("train", "test"),
    numpy_module: str = "numpy.core.multiarray",
) -> dict[str, np.ndarray]:
    """A tiny CIFAR-10/100 in the official python-pickle layout under ``root`` (only the batch files of ``splits``,
    always the meta file); returns the arrays written."""
    rng = np.random.default_rng(1)
    nc, key = (10, b"labels") if variant == "cifar10" else (100, b"fine_labels")
    folder = root / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    train_files, test_file = CIFAR_FILES[variant]
    written: dict[str, list] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for split, files, n in (("train", train_files, per_file), ("test", [test_file], n_test)):
        for name in files:
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, nc, n)]
            batch = {b"batch_label": b"batch " + name.encode(), key: labels, b"data": data}
            batch[b"filenames"] = [f"img_{i}.png".encode() for i in range(n)]
            if variant == "cifar100":
                batch[b"coarse_labels"] = [v // 5 for v in labels]
            if split in splits:
                write_py2_pickle(folder / name, batch, numpy_module)
            written[f"{split}_x"].append(data.reshape(n, 3, 32, 32))
            written[f"{split}_y"].append(np.array(labels))
    class_names = [f"class_{i}".encode() for i in range(nc)]
    if variant == "cifar10":
        write_py2_pickle(folder / "batches.meta", {b"num_cases_per_batch": per_file, b"label_names": class_names})
    else:
        meta = {b"fine_label_names": class_names, b"coarse_label_names": [b"c"] * 20}
        write_py2_pickle(folder / "meta", meta)
    return {k: np.concatenate(v) for k, v in written.items()}


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_imagefolder(
    root: Path, size: tuple[int, int] = (12, 10), splits: tuple[str, ...] = ("train", "val")
) -> dict[Path, np.ndarray]:
    """``root/{train,val}/{cat,dog}/*.png`` (RGB, ``size`` = (h, w)) plus one JPEG in train; returns the PNG arrays."""
    rng = np.random.default_rng(2)
    arrays = {}
    for split, n in (("train", 5), ("val", 3)):
        for cls in ("cat", "dog"):
            for i in range(n):
                array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                if split in splits:
                    arrays[root / split / cls / f"{i}.png"] = array
    for path, array in arrays.items():
        write_image(path, array)
    if "train" in splits:
        write_image(root / "train" / "dog" / "z.jpg", np.full((*size, 3), 128, dtype=np.uint8))
        (root / "train" / "dog" / "notes.txt").write_text("not an image")
    return arrays


def all_batches(source: BatchSource | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    assert source is not None
    return list(source)
