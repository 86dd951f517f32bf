"""Argument checks and allocation limits of the data layer: each failure is one :class:`ConfigError` naming the
Python argument at fault (``$name``, rendered as ``--name`` by the command line).

Limits (a real run never comes near them; they stop a typo from exhausting memory before any work is done):

* :data:`MAX_INPUT_SIZE`: the largest square input side, 4096.
* :data:`MAX_BATCH_BYTES`: the largest normalized float32 batch one rank may produce, 8 GiB
  (e.g. 256 RGB images of 1024x1024 take 3 GiB; Fashion-MNIST padded to 64 in batches of 256 takes 4 MiB).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Literal, get_args

from ..errors import ConfigError

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = get_args(Split)
"""The splits :func:`~lowrankcnn.data.build_data` can build."""

MAX_INPUT_SIZE = 4096
MAX_BATCH_BYTES = 8 * 2**30


def check_int(name: str, value: object, minimum: int, *, optional: bool = False) -> None:
    """``value`` must be an integer (``int`` or numpy's, not a bool or float) ``>= minimum``, or ``None`` when
    ``optional``."""
    if optional and value is None:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:  # no float, no bool
        none = " (or None)" if optional else ""
        raise ConfigError(f"${name} must be an integer >= {minimum}{none}, got {value!r}", param=name)


def check_splits(splits: Sequence[str]) -> tuple[Split, ...]:
    """The requested splits in canonical order; at least one, each in :data:`SPLITS`."""
    if isinstance(splits, str) or not splits or any(s not in SPLITS for s in splits):
        raise ConfigError(f"$splits must be a non-empty subset of {SPLITS}, got {splits!r}", param="splits")
    return tuple(s for s in SPLITS if s in splits)


def check_sharding(batch_size: int, seed: int, rank: int, world_size: int, *, train: bool) -> None:
    """The batch, seed and data-parallel shard of a source (see :mod:`lowrankcnn.data.sources`)."""
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    check_int("world_size", world_size, 1)
    check_int("rank", rank, 0)
    if rank >= world_size:
        raise ConfigError(f"$rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}", param="rank")
    if train and batch_size % world_size:
        raise ConfigError(
            f"$batch_size={batch_size} is the global batch and must be divisible by world_size ({world_size})",
            param="batch_size",
        )


def check_input_size(input_size: int) -> None:
    """``1 <= input_size <= MAX_INPUT_SIZE``."""
    check_int("input_size", input_size, 1)
    if input_size > MAX_INPUT_SIZE:
        raise ConfigError(
            f"$input_size={input_size} is larger than the {MAX_INPUT_SIZE} pixels this library accepts",
            param="input_size",
        )


def check_batch_bytes(input_size: int, in_chans: int, batch: int, what: str, batch_param: str) -> None:
    """A float32 batch of ``batch`` images ``(in_chans, input_size, input_size)`` must fit :data:`MAX_BATCH_BYTES`."""
    nbytes = batch * in_chans * input_size * input_size * 4
    if nbytes > MAX_BATCH_BYTES:
        raise ConfigError(
            f"{what} batches of {batch} images of {in_chans}x{input_size}x{input_size} would take "
            f"{nbytes / 2**30:.1f} GiB each, more than the {MAX_BATCH_BYTES // 2**30} GiB limit; "
            f"use a smaller $input_size or ${batch_param}",
            param="input_size",
        )
