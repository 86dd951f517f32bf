"""Datasets as deterministic, shardable batch sources: Fashion-MNIST, CIFAR-10/100 and ImageNet-style folders.

Entry point: :func:`build_data` (names in :data:`DATASETS`) returning a :class:`DataBundle`.
"""

from .augment import AugmentParams, BatchAugment
from .cifar import RestrictedUnpickler, UnsafePickleError, load_cifar, load_cifar_classes
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from .idx import read_idx
from .imagefolder import ImageFolderDataset
from .loaders import DATASETS, DataBundle, build_data
from .sources import BatchSource, ImageFolderSource, TensorSource, epoch_generator

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "AugmentParams",
    "BatchAugment",
    "BatchSource",
    "DataBundle",
    "ImageFolderDataset",
    "ImageFolderSource",
    "RestrictedUnpickler",
    "TensorSource",
    "UnsafePickleError",
    "build_data",
    "epoch_generator",
    "load_cifar",
    "load_cifar_classes",
    "load_fashion_mnist",
    "read_idx",
]
