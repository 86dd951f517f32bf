"""torchrun / DistributedDataParallel support (gloo on CPU, nccl on CUDA).

``torchrun --nproc-per-node N -m lowrankcnn train ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables; ``setup()``
reads them. Without them everything runs as a single process.

Every collective is bounded by the process group's timeout. Before each one, a
rank records how far it got in the group's key-value store, so when a rank
stops responding (hung, stopped with SIGSTOP, swapped out) the others fail with
one :class:`DistributedError` naming it, instead of waiting forever.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import DistributedError

_PROGRESS_KEY = "lowrankcnn/progress/{}"


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float = 300.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int, low: int, high: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        upper = f" and < {high + 1}" if high is not None else ""
        raise DistributedError(
            f"the environment variable {name}={raw!r} must be an integer >= {low}{upper}; launch data-parallel "
            "runs with torchrun, which sets it, or unset it for a single process"
        )
    return value


def env_info(timeout_s: float = 300.0) -> DistInfo:
    """This process's place in the job, from torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` variables.

    A ``RANK`` without ``WORLD_SIZE`` > 1 is ignored (a single process is always rank 0).

    Raises:
        DistributedError: a variable is not an integer, or ``RANK`` is missing or out of range.
    """
    world_size = _env_int("WORLD_SIZE", 1, 1)
    if world_size == 1:
        return DistInfo(timeout_s=timeout_s)
    if "RANK" not in os.environ:
        raise DistributedError(
            f"WORLD_SIZE={world_size} is set but RANK is not; launch data-parallel runs with torchrun"
        )
    rank = _env_int("RANK", 0, 0, world_size - 1)
    return DistInfo(rank, world_size, _env_int("LOCAL_RANK", 0, 0), timeout_s)


def setup(device: torch.device, timeout_s: float = 300.0) -> DistInfo:
    """Join the process group if launched by torchrun (collectives time out after ``timeout_s``); a no-op otherwise.

    Raises:
        DistributedError: bad torchrun variables, or the group could not be formed within ``timeout_s``
            (no ``MASTER_ADDR``, an unreachable master, a peer that never joined).
    """
    info = env_info(timeout_s)
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except (ValueError, RuntimeError) as err:  # DistStoreError and DistNetworkError are RuntimeErrors
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DistributedError(
                f"rank {info.rank} of {info.world_size} could not join the process group ({first}); launch "
                "data-parallel runs with torchrun, check MASTER_ADDR/MASTER_PORT, or raise $dist_timeout"
            ) from err
    return info


def teardown(synchronize: bool = True) -> None:
    """Leave the process group (a no-op without one); with ``synchronize``, once every rank has come here (a rank
    that destroys the group while a peer still talks to it can abort that peer, in gloo's threads)."""
    if dist.is_initialized():
        if synchronize:
            try:
                dist.barrier()
            except RuntimeError:  # a peer already gone: leave anyway
                pass
        dist.destroy_process_group()


def _store() -> dist.Store | None:
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, AttributeError, ValueError):
        return None


def _behind(info: DistInfo, where: str) -> list[int]:
    """Ranks whose recorded progress is not ``where`` (those that did not reach this collective)."""
    store = _store()
    if store is None:
        return []
    late = []
    for rank in range(info.world_size):
        key = _PROGRESS_KEY.format(rank)
        try:
            reached = store.check([key]) and store.get(key).decode() == where
        except (RuntimeError, ValueError):
            reached = False
        if not reached:
            late.append(rank)
    return late


_COMM_FAILURE = re.compile(r"timed out|timeout|connection (closed|reset)|broken pipe|gloo|nccl", re.IGNORECASE)
"""What a collective's RuntimeError says when a peer is gone or silent (gloo and NCCL messages)."""


@contextmanager
def collective(info: DistInfo, where: str | None = None) -> Iterator[None]:
    """Record that this rank reached ``where``, then run the block (which may hold collectives: an all-reduce,
    DDP's forward broadcast and backward gradient reduction). A collective that fails there because a peer
    did not take part within the timeout becomes one :class:`DistributedError` naming the ranks that never
    reached ``where`` (``None``: inside an enclosing ``collective``, whose mark stands). A no-op for a single
    process.
    """
    if not info.enabled:
        yield
        return
    store = _store()
    if store is not None and where is not None:
        store.set(_PROGRESS_KEY.format(info.rank), where)
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as err:
        if not _COMM_FAILURE.search(str(err)):
            raise
        late = [r for r in _behind(info, where) if r != info.rank] if where else []
        who = f"rank {', '.join(map(str, late))}" if late else "another rank"
        raise DistributedError(
            f"{who} did not respond within {info.timeout_s:g} s at {where or 'a collective'} (stopped, hung or "
            "crashed); "
            f"rank {info.rank} aborts the job. The last checkpoint is intact: resume once every rank can run, "
            "or raise $dist_timeout"
        ) from err


def all_reduce_sum(values: list[float], info: DistInfo, where: str | None = None) -> list[float]:
    """Sum ``values`` over all ranks (identity for a single process); ``where`` labels it (see :func:`collective`).

    Raises:
        DistributedError: a rank did not take part within the process group's timeout (see :func:`collective`).
    """
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    with collective(info, where):
        dist.all_reduce(tensor)
    return tensor.tolist()


def default_threads() -> int | None:
    """Threads per process under torchrun on CPU: the cores divided among local ranks (``None`` otherwise)."""
    local = _env_int("LOCAL_WORLD_SIZE", 1, 1)
    return max(1, (os.cpu_count() or 1) // local) if local > 1 else None
