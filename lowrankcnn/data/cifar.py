"""CIFAR-10 and CIFAR-100 in the official "python version" pickle format, read without trusting the pickles.

CIFAR-10 (``cifar-10-batches-py/``): ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and ``batches.meta``.
CIFAR-100 (``cifar-100-python/``): ``train``, ``test`` and ``meta`` (the 100 fine labels are used).
Each batch is a Python-2 pickle of a dict with a ``data`` uint8 array ``(N, 3072)`` (1024 red, then green, then
blue values of a 32x32 image, row-major) and a list of integer labels. Files are unpickled by
:class:`~lowrankcnn.data.safe_pickle.RestrictedUnpickler`, which rebuilds arrays from their bytes and resolves no
other global, so a tampered file can neither run code nor declare more data than it holds.
Only the files of the splits asked for (and the meta file) need to exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..errors import ConfigError, DataError, DataNotFoundError
from .checks import Split
from .safe_pickle import unpickle

CifarVariant = Literal["cifar10", "cifar100"]
_DOWNLOAD = "the python version from https://www.cs.toronto.edu/~kriz/cifar.html"


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

    def files(self, splits: Sequence[Split]) -> tuple[str, ...]:
        """The batch files of ``splits``, then the meta file."""
        batches = (*(self.train_files if "train" in splits else ()), *((self.test_file,) if "test" in splits else ()))
        return (*batches, self.meta_file)


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


def _layout(variant: str) -> CifarLayout:
    try:
        return CIFAR_LAYOUTS[variant]
    except (KeyError, TypeError):
        raise ConfigError(f"$variant must be 'cifar10' or 'cifar100', got {variant!r}", param="variant") from None


def cifar_dir(variant: CifarVariant, data_dir: str | Path | None, splits: Sequence[Split] = ("train", "test")) -> Path:
    """The folder holding ``variant``'s files: ``data_dir`` itself or its ``cifar-10-batches-py`` /
    ``cifar-100-python`` subfolder, whichever holds the batch files of ``splits`` and the meta file.

    Raises:
        DataNotFoundError: neither holds them (one line naming the folder and the files expected).
    """
    layout = _layout(variant)
    files = layout.files(splits)
    if data_dir is None:
        raise DataNotFoundError(
            f"{variant}: no data directory given: pass $data_dir pointing at {layout.folder}/ ({_DOWNLOAD})",
            param="data_dir",
        )
    root = Path(data_dir).expanduser()
    for folder in (root, root / layout.folder):
        if all((folder / f).is_file() for f in files):
            return folder
    raise DataNotFoundError(
        f"{layout.name} not found in {root}: expected {', '.join(files)} there or in {root / layout.folder} "
        f"({_DOWNLOAD})",
        param="data_dir",
    )


def _show(value: Any) -> str:
    """A short description of an unpickled value for an error message."""
    if isinstance(value, (float, bool)) or (isinstance(value, (str, bytes)) and len(value) <= 20):
        return f"{type(value).__name__} {value!r}"
    return type(value).__name__


def _decode_labels(path: Path, values: Any, layout: CifarLayout) -> np.ndarray:
    """``values`` (a list of ints, or a 1-D integer array) as int64, each in ``0..num_classes-1``."""
    key, n = layout.label_key, layout.num_classes
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iu":
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise DataError(f"{path}: {key!r} must be a list of integer labels, got {_show(values)}")
    bad = next((i for i, v in enumerate(values) if type(v) is not int), None)
    if bad is not None:  # floats are not truncated, bools are not taken for 0/1
        raise DataError(f"{path}: {key!r} must hold integer labels, but item {bad} is {_show(values[bad])}")
    if values and (min(values) < 0 or max(values) >= n):
        raise DataError(f"{path}: {key!r} holds labels outside 0..{n - 1}")
    return np.array(values, dtype=np.int64)


def _decode_batch(path: Path, batch: dict[str, Any], layout: CifarLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one unpickled batch and turn it into ``(uint8 (N,3,32,32), int64 (N,))``."""
    missing = [k for k in ("data", layout.label_key) if k not in batch]
    if missing:
        keys = sorted(k for k in batch if isinstance(k, str))[:10]
        raise DataError(f"{path}: not a {layout.name} batch: missing key(s) {missing}, has {keys}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = data.shape if isinstance(data, np.ndarray) else None
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {_show(data)} {shape}")
    labels = _decode_labels(path, batch[layout.label_key], layout)
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but {layout.label_key!r} holds {len(labels)} labels")
    images = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, 32, 32)
    return images, torch.from_numpy(labels)


def load_cifar(variant: CifarVariant, data_dir: str | Path | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR split (only its files and the meta file need to exist).

    Args:
        variant: ``"cifar10"`` or ``"cifar100"``.
        data_dir: the folder holding the batch files, or its parent (see :func:`cifar_dir`).
        train: the training split (50,000 images), else the test split (10,000).

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` (RGB) and int64 ``(N,)`` (fine labels for CIFAR-100).

    Raises:
        DataNotFoundError: the files are not there.
        DataError: a file is corrupt, truncated, unsafe (:class:`~lowrankcnn.data.safe_pickle.UnsafePickleError`)
            or not a CIFAR batch (e.g. non-integer labels); one line naming the file.
    """
    layout = _layout(variant)
    split: Split = "train" if train else "test"
    folder = cifar_dir(variant, data_dir, (split,))
    names = layout.train_files if train else (layout.test_file,)
    parts = [_decode_batch(folder / name, unpickle(folder / name), layout) for name in names]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def load_cifar_classes(variant: CifarVariant, data_dir: str | Path | None) -> list[str]:
    """Class names, in label order, from the variant's meta file (the fine labels for CIFAR-100)."""
    layout = _layout(variant)
    path = cifar_dir(variant, data_dir, ()) / layout.meta_file
    names = unpickle(path).get(layout.names_key)
    if (
        not isinstance(names, list)
        or len(names) != layout.num_classes
        or not all(isinstance(n, (bytes, str)) for n in names)
    ):
        raise DataError(f"{path}: expected {layout.num_classes} names under {layout.names_key!r}")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: a class name under {layout.names_key!r} is not UTF-8 text") from e
