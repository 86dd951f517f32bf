"""Fashion-MNIST from its four IDX files (as shipped by the ``dataset-fashion-mnist`` Debian package)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import DataError, DataNotFoundError
from .idx import read_idx

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
ENV_VAR = "LOWRANKCNN_FASHION_MNIST"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
_REINSTALL = "reinstall with `apt-get install --reinstall dataset-fashion-mnist`"


def fashion_mnist_dir(data_dir: str | Path | None = None) -> Path:
    """The folder to read: ``data_dir``, else ``$LOWRANKCNN_FASHION_MNIST``, else the Debian package's folder."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or DEFAULT_DIR
    return Path(data_dir).expanduser()


def _find(folder: Path, stem: str) -> Path:
    """``folder/stem.gz`` or ``folder/stem``; a one-line :class:`DataNotFoundError` naming the fix otherwise."""
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataNotFoundError(
        f"Fashion-MNIST not found in {folder}: install it with `apt-get update && apt-get install -y "
        f"dataset-fashion-mnist` (as root), or point $data_dir or the {ENV_VAR} environment variable at a folder "
        f"holding {stem}.gz",
        param="data_dir",
    )


def load_fashion_mnist(data_dir: str | Path | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the training (60,000) or test (10,000) split; only that split's two files are read.

    Args:
        data_dir: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; ``None`` resolves as
            :func:`fashion_mnist_dir` does.
        train: the training split, else the test split.

    Returns:
        ``(images, labels)``: uint8 ``(N, 1, 28, 28)`` and int64 ``(N,)`` with values in ``0..9``
        (indices into :data:`FASHION_MNIST_CLASSES`).

    Raises:
        DataNotFoundError: the files are not there.
        DataError: a file is corrupt, truncated or of the wrong shape (one line naming the file).
    """
    folder = fashion_mnist_dir(data_dir)
    prefix = "train" if train else "t10k"
    images_path = _find(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, hint=_REINSTALL)
    labels = read_idx(labels_path, hint=_REINSTALL)
    if images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
        raise DataError(f"{images_path}: expected 28x28 images, got shape {tuple(images.shape)}; {_REINSTALL}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-dim label file, got shape {tuple(labels.shape)}; {_REINSTALL}")
    if len(images) != len(labels):
        raise DataError(
            f"{folder}: {images_path.name} holds {len(images):,} images but {labels_path.name} holds "
            f"{len(labels):,} labels; {_REINSTALL}"
        )
    if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range 0..9; {_REINSTALL}")
    return images.unsqueeze(1), labels.long()
