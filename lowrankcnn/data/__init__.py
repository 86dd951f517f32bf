"""Datasets as deterministic, shardable batch sources: Fashion-MNIST, CIFAR-10/100 and ImageNet-style folders.

Entry point: :func:`build_data` (names in :data:`DATASETS`, splits in :data:`SPLITS`) returning a
:class:`DataBundle`; :func:`normalization` gives the per-channel mean/std a dataset is normalized with.
Every error is one of the library's own (:mod:`lowrankcnn.errors`): ``ConfigError`` for a bad argument,
``DataNotFoundError`` for missing data, ``DataError`` for a corrupt, truncated, unsafe or wrong-format file.
"""

from .augment import AugmentParams, BatchAugment
from .checks import MAX_BATCH_BYTES, MAX_INPUT_SIZE, SPLITS, Split
from .cifar import load_cifar, load_cifar_classes
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from .idx import read_idx
from .imagefolder import ImageFolderDataset
from .loaders import DATASETS, DataBundle, build_data, normalization
from .safe_pickle import RestrictedUnpickler, UnsafePickleError
from .sources import BatchSource, ImageFolderSource, TensorSource, epoch_generator

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "MAX_BATCH_BYTES",
    "MAX_INPUT_SIZE",
    "SPLITS",
    "AugmentParams",
    "BatchAugment",
    "BatchSource",
    "DataBundle",
    "ImageFolderDataset",
    "ImageFolderSource",
    "RestrictedUnpickler",
    "Split",
    "TensorSource",
    "UnsafePickleError",
    "build_data",
    "epoch_generator",
    "load_cifar",
    "load_cifar_classes",
    "load_fashion_mnist",
    "normalization",
    "read_idx",
]
