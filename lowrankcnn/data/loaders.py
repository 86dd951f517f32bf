"""``build_data``: a dataset by name as train and/or test :class:`BatchSource` objects, plus what a model needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from .augment import BatchAugment
from .checks import Split, check_batch_bytes, check_input_size, check_int, check_sharding, check_splits
from .cifar import cifar_dir, load_cifar, load_cifar_classes
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from .imagefolder import IMAGENET_MEAN, IMAGENET_STD, open_image_folder
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


TENSOR_SPECS: dict[str, TensorDatasetSpec] = {
    "fashion-mnist": TensorDatasetSpec(1, 28, (0.2860,), (0.3530,), crop_padding=2),
    "cifar10": TensorDatasetSpec(3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), crop_padding=4),
    "cifar100": TensorDatasetSpec(3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), crop_padding=4),
}


@dataclass
class DataBundle:
    """A dataset ready for training or evaluation: its sources and what a model needs to know about it.

    Attributes:
        train, test: the sources of the splits that were built (``None`` for a split not asked for).
        mean, std: the per-channel normalization every batch went through, ``(x / 255 - mean) / std`` for uint8
            pixels ``x`` (what a deployed model's input must get too); see :func:`normalization`.
    """

    name: str
    train: BatchSource | None
    test: BatchSource | None
    num_classes: int
    in_chans: int
    input_size: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ConfigError(f"$name must be a dataset of {', '.join(DATASETS)}, got {name!r}", param="name")


def normalization(name: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel that :func:`build_data` normalizes dataset ``name`` with, as
    ``(x / 255 - mean) / std``: the dataset's own statistics, or ImageNet's for image folders (their average over
    the three channels for grayscale).

    Raises:
        ConfigError: ``name`` is not in :data:`DATASETS`, or ``in_chans`` is not a channel count it has.
    """
    _check_name(name)
    if name == "imagefolder":
        if in_chans == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        if in_chans == 1:
            return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
        raise ConfigError(f"imagefolder: $in_chans must be 1 or 3, got {in_chans!r}", param="in_chans")
    spec = TENSOR_SPECS[name]
    if in_chans != spec.in_chans:
        raise ConfigError(f"{name} has {spec.in_chans} channel(s), not $in_chans={in_chans!r}", param="in_chans")
    return spec.mean, spec.std


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
    *,
    splits: Sequence[Split] = ("train", "test"),
) -> DataBundle:
    """Build the sources of dataset ``name`` (one of :data:`DATASETS`) for the splits asked for.

    Every argument is checked before any file is read; nothing of a split that is not in ``splits`` is read,
    validated or allocated (e.g. ``splits=("test",)`` for evaluation needs only the test files, and a test set
    smaller than ``batch_size`` is fine).

    Args:
        name: ``"fashion-mnist"`` (``data_dir`` default: ``$LOWRANKCNN_FASHION_MNIST``, else the Debian package's
            folder), ``"cifar10"`` / ``"cifar100"`` (``data_dir``: the python-version batch folder or its parent)
            or ``"imagefolder"`` (``data_dir``: the root holding ``train/<class>/`` and ``val/<class>/``; with
            only the test split, ``val/`` alone, and the class names come from it).
        batch_size: the global training batch (all ranks together); divisible by ``world_size``.
        seed: with the epoch, fixes the training order and augmentation (see :mod:`lowrankcnn.data.sources`).
        rank, world_size: this process's data-parallel shard.
        augment: random crops and flips for training (Fashion-MNIST: padding 2 + flips; CIFAR: padding 4 + flips;
            image folders: random crops of the resized image + flips). Test sources never augment.
        train_subset, test_subset: keep only the first K >= 1 samples (image folders: K evenly spaced ones, since
            their samples are sorted by class); ``None`` keeps all.
        workers: DataLoader worker processes decoding image folders (in-memory datasets ignore it).
        input_size: the square input side, at most :data:`~lowrankcnn.data.checks.MAX_INPUT_SIZE`. In-memory
            datasets accept their native size (28 / 32) or a larger one, reached by zero-padding every image equally
            on all sides, one batch at a time (e.g. Fashion-MNIST at 32 for the CIFAR-shaped nets); image folders
            default to 224 (shorter side resized to ``round(input_size * 256 / 224)`` first). One rank's float32
            batch may take at most :data:`~lowrankcnn.data.checks.MAX_BATCH_BYTES`.
        eval_batch_size: the global test batch (default ``batch_size``); each rank evaluates
            ``max(1, eval_batch_size // world_size)`` samples at a time.
        in_chans: image folders decode to RGB (3, default) or grayscale (1); in-memory datasets only accept their own.
        splits: the splits to build, a non-empty subset of ``("train", "test")``; the bundle's other source is
            ``None``.

    Raises:
        ConfigError: an argument is invalid (naming it), or the training set holds less than one batch.
        DataNotFoundError: the data is not where it was looked for.
        DataError: a file is corrupt, truncated, unsafe or not in the expected format.
    """
    splits = check_splits(splits)
    _check_name(name)
    eval_arg = "batch_size" if eval_batch_size is None else "eval_batch_size"  # the argument that set it
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    check_sharding(batch_size, seed, rank, world_size, train="train" in splits)
    check_int("eval_batch_size", eval_batch_size, 1)
    check_int("train_subset", train_subset, 1, optional=True)
    check_int("test_subset", test_subset, 1, optional=True)
    check_int("workers", workers, 0)
    spec = TENSOR_SPECS.get(name)
    if spec is None:
        in_chans = 3 if in_chans is None else in_chans
        size = 224 if input_size is None else input_size
    else:
        in_chans = spec.in_chans if in_chans is None else in_chans
        size = spec.input_size if input_size is None else input_size
    mean, std = normalization(name, in_chans)
    check_input_size(size)
    if spec is not None and (size < spec.input_size or (size - spec.input_size) % 2):
        raise ConfigError(
            f"{name}: its images are {spec.in_chans}x{spec.input_size}x{spec.input_size}; $input_size may be "
            f"{spec.input_size} or larger by an even amount (zero-padded), got {size}",
            param="input_size",
        )
    if "train" in splits:
        check_batch_bytes(size, in_chans, batch_size // world_size, "training", "batch_size")
    if "test" in splits:
        check_batch_bytes(size, in_chans, max(1, eval_batch_size // world_size), "test", eval_arg)
    subsets: dict[Split, int | None] = {"train": train_subset, "test": test_subset}
    global_batch = {"train": batch_size, "test": eval_batch_size}
    sharding = dict(seed=seed, rank=rank, world_size=world_size)
    sources: dict[Split, BatchSource] = {}
    if spec is None:
        datasets, class_names = open_image_folder(data_dir, splits, size, in_chans, augment, seed, subsets)
        normalize = BatchAugment(mean, std)
        for split, dataset in datasets.items():
            train = split == "train"
            sources[split] = ImageFolderSource(
                dataset, normalize, global_batch[split], train=train, workers=workers, **sharding
            )
    else:
        if name != "fashion-mnist":
            cifar_dir(name, data_dir, splits)  # type: ignore[arg-type]  # every file there before any is read
        pad = (size - spec.input_size) // 2
        for split in splits:
            train = split == "train"
            images, labels = _load_tensors(name, data_dir, train)
            if subsets[split] is not None and subsets[split] < len(images):  # keep the subset, free the rest
                images, labels = images[: subsets[split]].clone(), labels[: subsets[split]].clone()
            crop = spec.crop_padding if augment and train else 0
            aug = BatchAugment(mean, std, crop_padding=crop, flip=augment and train, pad=pad)
            sources[split] = TensorSource(images, labels, aug, global_batch[split], train=train, **sharding)
        class_names = list(FASHION_MNIST_CLASSES) if name == "fashion-mnist" else load_cifar_classes(name, data_dir)
    return DataBundle(
        name=name,
        train=sources.get("train"),
        test=sources.get("test"),
        num_classes=len(class_names),
        in_chans=in_chans,
        input_size=size,
        class_names=class_names,
        mean=mean,
        std=std,
    )


def _load_tensors(name: str, data_dir: str | Path | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, train)
    return load_cifar(name, data_dir, train)  # type: ignore[arg-type]  # name is a CIFAR variant here
