"""Batch sources: deterministic, shardable iteration over a dataset as normalized float batches.

Contract (relied on for exact resume and for data-parallel training matching a single process):

* Training: epoch ``e`` uses ``epoch_generator(seed, e)`` only. It draws a permutation of all samples; each *global*
  batch is ``batch_size`` consecutive permutation entries (the last partial one is dropped), and right after its
  indices are taken the augmentation parameters of the whole global batch are drawn from the same generator.
  Rank ``r`` of ``world_size`` gets the contiguous slice ``[r*b:(r+1)*b]``, ``b = batch_size // world_size``, of every
  global batch and of its parameters, so concatenating the ranks' batches gives the single-process batch bit for bit.
* Evaluation: no shuffling, no augmentation, nothing dropped; rank ``r`` gets a contiguous shard of the samples
  (the whole set, in order, when ``world_size == 1``) in batches of ``max(1, batch_size // world_size)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError, LowRankCNNError, ShapeError
from .augment import BatchAugment
from .checks import check_int, check_sharding
from .imagefolder import ImageFolderDataset

EPOCH_SEED_STRIDE = 1_000_003


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of training epoch ``epoch``: seeded with ``seed * 1_000_003 + epoch``."""
    return torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch)


@runtime_checkable
class BatchSource(Protocol):
    """Iterable of ``(x float32 (n, C, H, W) normalized, y int64 (n,))`` batches for one rank.

    ``len()`` is the number of batches per epoch, ``num_samples`` the number of samples this rank sees per epoch,
    and ``set_epoch(e)`` selects the order and augmentation of the following iterations.
    """

    num_samples: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


class ShardedSource:
    """The index plan shared by the sources: which samples each step of an epoch holds (see the module doc).

    Args:
        num_total: samples in the dataset.
        batch_size: the global batch (all ranks together), divisible by ``world_size`` when training.
        train: shuffle, drop the last partial batch and slice global batches (else a contiguous shard in order).
        seed, rank, world_size: see the module doc.

    Raises:
        ConfigError: an argument is out of range, or the training set holds less than one global batch.
    """

    def __init__(self, num_total: int, batch_size: int, *, train: bool, seed: int, rank: int, world_size: int) -> None:
        check_sharding(batch_size, seed, rank, world_size, train=train)
        self.num_total, self.batch_size, self.train, self.seed = num_total, batch_size, train, seed
        self.epoch = 0
        if train:
            if num_total < batch_size:
                raise ConfigError(
                    f"the training set has {num_total} samples, fewer than one batch of $batch_size={batch_size}; "
                    "use a smaller $batch_size",
                    param="batch_size",
                )
            b = batch_size // world_size
            self.local = slice(rank * b, (rank + 1) * b)
            self.steps = num_total // batch_size
            self.num_samples = self.steps * b
        else:
            self.local = slice(None)  # the shard is this rank's already
            self.shard = torch.arange(rank * num_total // world_size, (rank + 1) * num_total // world_size)
            self.eval_batch = max(1, batch_size // world_size)
            self.steps = math.ceil(len(self.shard) / self.eval_batch)
            self.num_samples = len(self.shard)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that the next iterations replay (training order and augmentation)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def _global_batches(self) -> tuple[torch.Generator | None, Iterator[torch.Tensor]]:
        """The epoch's generator (``None`` for evaluation) and the index batches, of which this rank takes
        ``[self.local]``. The batches are lazy so that draws interleave with the caller's: permutation first,
        then whatever the caller draws after receiving each batch."""
        if not self.train:
            e = self.eval_batch
            return None, (self.shard[i : i + e] for i in range(0, len(self.shard), e))
        generator = epoch_generator(self.seed, self.epoch)
        perm = torch.randperm(self.num_total, generator=generator)
        b = self.batch_size
        return generator, (perm[s * b : (s + 1) * b] for s in range(self.steps))


class TensorSource(ShardedSource):
    """Batches from in-memory uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``, augmented per batch.

    ``augment`` is applied to training batches with parameters drawn per global batch; evaluation only normalizes.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        augment: BatchAugment,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or labels.shape != (len(images),):
            raise ShapeError(
                f"TensorSource: expected uint8 (N, C, H, W) images and (N,) labels, got {images.dtype} "
                f"{tuple(images.shape)} and {tuple(labels.shape)}"
            )
        super().__init__(len(images), batch_size, train=train, seed=seed, rank=rank, world_size=world_size)
        self.images, self.labels, self.augment = images, labels.long(), augment

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator, batches = self._global_batches()
        for idx in batches:
            params = None
            if generator is not None and self.augment.random:
                params = self.augment.draw_params(len(idx), generator)[self.local]
            local = idx[self.local]
            yield self.augment.apply(self.images[local], params), self.labels[local]


class ImageFolderSource(ShardedSource):
    """Batches decoded from an :class:`ImageFolderDataset` by a DataLoader with ``workers`` worker processes.

    The dataset does the per-sample crop and flip (from ``(seed, epoch, index)``); ``normalize`` (a non-random
    :class:`BatchAugment`) turns each uint8 batch into normalized floats in the main process. A library error
    raised while decoding in a worker process (e.g. :class:`~lowrankcnn.errors.DataError` for a corrupt image)
    comes out as the same error type with its one-line message.
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        normalize: BatchAugment,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 2,
    ) -> None:
        check_int("workers", workers, 0)
        super().__init__(len(dataset), batch_size, train=train, seed=seed, rank=rank, world_size=world_size)
        self.dataset, self.normalize, self.workers = dataset, normalize, workers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.dataset.set_epoch(self.epoch)  # before the loader copies the dataset into its workers
        _, batches = self._global_batches()
        loader = DataLoader(
            self.dataset, batch_sampler=[idx[self.local].tolist() for idx in batches], num_workers=self.workers
        )
        try:
            for x, y in loader:
                yield self.normalize(x), y
        except LowRankCNNError as e:
            raise _from_worker(e) from e


def _from_worker(err: LowRankCNNError) -> LowRankCNNError:
    """The error a DataLoader worker raised, with its own message: the loader re-raises it in the main process as
    ``type(err)("Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...\n<module>.DataError:
    <message>")``; an error raised in the main process is returned as it is."""
    lines = err.template.strip().splitlines()
    if len(lines) < 2 or not lines[0].startswith(f"Caught {type(err).__name__} in DataLoader worker"):
        return err
    cls = type(err)
    for prefix in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        if lines[-1].startswith(prefix):
            return cls(lines[-1][len(prefix) :], param=err.param)
    return cls(lines[-1], param=err.param)
