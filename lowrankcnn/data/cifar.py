"""CIFAR-10 and CIFAR-100 in the official "python version" pickle format, read without trusting the pickles.

CIFAR-10 (``cifar-10-batches-py/``): ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and ``batches.meta``.
CIFAR-100 (``cifar-100-python/``): ``train``, ``test`` and ``meta`` (the 100 fine labels are used).
Each batch is a Python-2 pickle of a dict with a ``data`` uint8 array ``(N, 3072)`` (1024 red, then green, then
blue values of a 32x32 image, row-major) and a list of labels. Files are unpickled by :class:`RestrictedUnpickler`,
which resolves only the globals a numpy array needs, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

_DOWNLOAD = "the python version from https://www.cs.toronto.edu/~kriz/cifar.html"


class UnsafePickleError(ValueError):
    """A pickle references a global that a CIFAR file never contains."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler resolving only the globals needed to rebuild numpy arrays; anything else is refused."""

    ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes in protocol 2
    }

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"cifar: refusing to unpickle {self.path}: it references {module}.{name}, "
                f"which a CIFAR batch never contains"
            ) from None


def unpickle(path: Path) -> dict:
    """Unpickle one CIFAR file with :class:`RestrictedUnpickler`; its keys are decoded to ``str``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is refused, truncated or corrupt, or is not a dict (message names the file).
    """
    data = path.read_bytes()
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise ValueError(f"{path}: truncated or corrupt CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps things."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int


CIFAR_LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        10,
    ),
    "cifar100": CifarLayout(
        "CIFAR-100", "cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names", 100
    ),
}


def cifar_dir(variant: str, data_dir: str | Path | None) -> Path:
    """The folder holding ``variant``'s files: ``data_dir`` itself or its ``cifar-10-batches-py`` /
    ``cifar-100-python`` subfolder.

    Raises:
        FileNotFoundError: neither holds every file (one line naming the folder and the files expected).
    """
    layout = CIFAR_LAYOUTS[variant]
    files = (*layout.train_files, layout.test_file, layout.meta_file)
    if data_dir is None:
        raise FileNotFoundError(
            f"{variant}: no data directory given: pass --data-dir pointing at {layout.folder}/ ({_DOWNLOAD})"
        )
    root = Path(data_dir).expanduser()
    for folder in (root, root / layout.folder):
        if all((folder / f).is_file() for f in files):
            return folder
    raise FileNotFoundError(
        f"{layout.name} not found in {root}: expected {', '.join(files)} there or in {root / layout.folder} "
        f"({_DOWNLOAD})"
    )


def _decode_batch(path: Path, batch: dict, layout: CifarLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one unpickled batch and turn it into ``(uint8 (N,3,32,32), int64 (N,))``."""
    missing = [k for k in ("data", layout.label_key) if k not in batch]
    if missing:
        raise ValueError(f"{path}: not a {layout.name} batch: missing key(s) {missing}, has {sorted(batch)}")
    data, labels = batch["data"], batch[layout.label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {type(data).__name__} {shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {layout.label_key!r} is not a list of integers") from e
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but {layout.label_key!r} has shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise ValueError(f"{path}: labels outside 0..{layout.num_classes - 1}")
    images = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, 32, 32)
    return images, torch.from_numpy(labels)


def load_cifar(variant: str, data_dir: str | Path | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR split.

    Args:
        variant: ``"cifar10"`` or ``"cifar100"``.
        data_dir: the folder holding the batch files, or its parent (see :func:`cifar_dir`).
        train: the training split (50,000 images), else the test split (10,000).

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` (RGB) and int64 ``(N,)`` (fine labels for CIFAR-100).
    """
    layout = CIFAR_LAYOUTS[variant]
    folder = cifar_dir(variant, data_dir)
    parts = [
        _decode_batch(folder / name, unpickle(folder / name), layout)
        for name in (layout.train_files if train else (layout.test_file,))
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def load_cifar_classes(variant: str, data_dir: str | Path | None) -> list[str]:
    """Class names, in label order, from the variant's meta file (the fine labels for CIFAR-100)."""
    layout = CIFAR_LAYOUTS[variant]
    path = cifar_dir(variant, data_dir) / layout.meta_file
    names = unpickle(path).get(layout.names_key)
    if not isinstance(names, list) or len(names) != layout.num_classes:
        raise ValueError(f"{path}: expected {layout.num_classes} names under {layout.names_key!r}")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
