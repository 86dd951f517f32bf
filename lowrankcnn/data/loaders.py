"""``build_data``: a dataset by name as train and test :class:`BatchSource` objects plus what a model needs to know."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .augment import BatchAugment
from .cifar import load_cifar, load_cifar_classes
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from .imagefolder import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataset, find_classes, scan_images
from .sources import BatchSource, ImageFolderSource, TensorSource

DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "cifar100", "imagefolder")
"""Names accepted by :func:`build_data` (for argparse ``choices``)."""


@dataclass(frozen=True)
class TensorDatasetSpec:
    """Shape and training recipe of an in-memory dataset."""

    in_chans: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool


TENSOR_SPECS: dict[str, TensorDatasetSpec] = {
    "fashion-mnist": TensorDatasetSpec(1, 28, (0.2860,), (0.3530,), crop_padding=2, flip=True),
    "cifar10": TensorDatasetSpec(3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), crop_padding=4, flip=True),
    "cifar100": TensorDatasetSpec(3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), crop_padding=4, flip=True),
}


@dataclass
class DataBundle:
    """A dataset ready for training: its train and test sources and what a model needs to know about it."""

    name: str
    train: BatchSource
    test: BatchSource
    num_classes: int
    in_chans: int
    input_size: int
    class_names: list[str]


def _load_tensors(name: str, data_dir: str | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, train)
    return load_cifar(name, data_dir, train)


def build_data(
    name: str,
    data_dir: str | None = None,
    batch_size: int = 128,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    augment: bool = True,
    train_subset: int | None = None,
    test_subset: int | None = None,
    workers: int = 2,
    input_size: int | None = None,
    eval_batch_size: int | None = None,
    in_chans: int | None = None,
) -> DataBundle:
    """Build the train and test sources of dataset ``name`` (one of :data:`DATASETS`).

    Args:
        name: ``"fashion-mnist"`` (``data_dir`` default: ``$LOWRANKCNN_FASHION_MNIST``, else the Debian package's
            folder), ``"cifar10"`` / ``"cifar100"`` (``data_dir``: the python-version batch folder or its parent)
            or ``"imagefolder"`` (``data_dir``: the root holding ``train/<class>/`` and ``val/<class>/``).
        batch_size: the global training batch (all ranks together); divisible by ``world_size``.
        seed: with the epoch, fixes the training order and augmentation (see :mod:`lowrankcnn.data.sources`).
        rank, world_size: this process's data-parallel shard.
        augment: random crops and flips for training (Fashion-MNIST: padding 2 + flips; CIFAR: padding 4 + flips;
            image folders: random crops of the resized image + flips). Test sources never augment.
        train_subset, test_subset: keep only the first K samples (image folders: K evenly spaced ones, since their
            samples are sorted by class).
        workers: DataLoader worker processes decoding image folders (in-memory datasets ignore it).
        input_size: the square input side. In-memory datasets accept their native size (28 / 32) or a larger
            one, reached by zero-padding every image equally on all sides (e.g. Fashion-MNIST at 32 for the
            CIFAR-shaped nets); image folders default to 224 (shorter side resized to
            ``round(input_size * 256 / 224)`` first).
        eval_batch_size: the global test batch (default ``batch_size``); each rank evaluates
            ``max(1, eval_batch_size // world_size)`` samples at a time.
        in_chans: image folders decode to RGB (3, default) or grayscale (1); in-memory datasets only accept their own.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    sharding = dict(seed=seed, rank=rank, world_size=world_size)
    if name == "imagefolder":
        in_chans = in_chans or 3
        train_ds, test_ds, classes = _imagefolder_datasets(
            data_dir, input_size or 224, in_chans, augment, seed, train_subset, test_subset
        )
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if in_chans == 1:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        normalize = BatchAugment(mean, std)
        return DataBundle(
            name=name,
            train=ImageFolderSource(train_ds, normalize, batch_size, train=True, workers=workers, **sharding),
            test=ImageFolderSource(test_ds, normalize, eval_batch_size, train=False, workers=workers, **sharding),
            num_classes=len(classes),
            in_chans=in_chans,
            input_size=train_ds.input_size,
            class_names=classes,
        )

    spec = TENSOR_SPECS[name]
    size = spec.input_size if input_size is None else input_size
    if size < spec.input_size or (size - spec.input_size) % 2 or in_chans not in (None, spec.in_chans):
        raise ValueError(
            f"{name}: its images are {spec.in_chans}x{spec.input_size}x{spec.input_size}; got input_size={input_size}, "
            f"in_chans={in_chans}. Leave in_chans unset; input_size may be {spec.input_size} or larger by an even "
            "amount (zero-padded)"
        )
    pad = (size - spec.input_size) // 2
    train_x, train_y = _load_tensors(name, data_dir, train=True)
    test_x, test_y = _load_tensors(name, data_dir, train=False)
    if pad:
        train_x, test_x = (torch.nn.functional.pad(x, (pad, pad, pad, pad)) for x in (train_x, test_x))
    train_x, train_y = train_x[:train_subset], train_y[:train_subset]
    test_x, test_y = test_x[:test_subset], test_y[:test_subset]
    train_aug = BatchAugment(spec.mean, spec.std, spec.crop_padding if augment else 0, spec.flip and augment)
    normalize = BatchAugment(spec.mean, spec.std)
    if name == "fashion-mnist":
        class_names = list(FASHION_MNIST_CLASSES)
    else:
        class_names = load_cifar_classes(name, data_dir)
    return DataBundle(
        name=name,
        train=TensorSource(train_x, train_y, train_aug, batch_size, train=True, **sharding),
        test=TensorSource(test_x, test_y, normalize, eval_batch_size, train=False, **sharding),
        num_classes=len(class_names),
        in_chans=spec.in_chans,
        input_size=size,
        class_names=class_names,
    )


def _evenly_spaced(samples: list, k: int | None) -> list:
    """``k`` samples spread evenly over ``samples`` (all of them when ``k`` is ``None`` or too large)."""
    if k is None or k >= len(samples):
        return samples
    return [samples[i * len(samples) // k] for i in range(k)]


def _imagefolder_datasets(
    data_dir: str | None,
    input_size: int,
    in_chans: int,
    augment: bool,
    seed: int,
    train_subset: int | None,
    test_subset: int | None,
) -> tuple[ImageFolderDataset, ImageFolderDataset, list[str]]:
    """The train and val datasets of ``data_dir/{train,val}/<class>/`` and the class names (sorted)."""
    if data_dir is None:
        raise FileNotFoundError(
            "imagefolder: pass --data-dir pointing at a folder with train/<class>/ and val/<class>/"
        )
    root = Path(data_dir).expanduser()
    classes = find_classes(root / "train")
    train_samples = _evenly_spaced(scan_images(root / "train", classes), train_subset)
    test_samples = _evenly_spaced(scan_images(root / "val", classes), test_subset)
    train_ds = ImageFolderDataset(train_samples, input_size, train=augment, in_chans=in_chans, seed=seed)
    return train_ds, ImageFolderDataset(test_samples, input_size, in_chans=in_chans), classes
