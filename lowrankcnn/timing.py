"""Wall-clock timing: interleaved runs so that machine drift hits every candidate alike.

``inference_fn`` and ``train_step_fn`` are the zero-argument callables :func:`interleaved` times
(one inference batch; one training step of forward + cross-entropy + backward + SGD step). On a CUDA
device the clock is read only after ``torch.cuda.synchronize`` (kernels run asynchronously).

Noise: a timing is trusted only if the machine was quiet. :func:`noise_warning` says when it was not (a
wide spread of the interleaved repeats, or other processes busy on the CPU while timing: measured from
``/proc/stat`` minus this process's own CPU time, the load average where that is unavailable) and :func:`separated`
decides whether one candidate is faster beyond the noise (its upper quartile below the other's lower one).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

import torch
from torch import nn

from .errors import ConfigError
from .utils.losses import classification_loss

K = TypeVar("K", bound=Hashable)
MemoryFormat = Literal["contiguous", "channels_last"]
MEMORY_FORMATS: tuple[MemoryFormat, ...] = get_args(MemoryFormat)
TORCH_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
NOISY_SPREAD = 0.15
"""An interquartile range above this fraction of the median makes a timing untrustworthy."""


@dataclass
class Timing:
    """Seconds per call over ``repeats`` timed calls."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def quartiles(self) -> tuple[float, float]:
        """Lower and upper quartile (both the median for a single sample)."""
        if len(self.samples) < 2:
            return self.median, self.median
        q = statistics.quantiles(self.samples, n=4)
        return q[0], q[2]

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        low, high = self.quartiles
        return (high - low) / self.median


def separated(faster: Timing, slower: Timing) -> bool:
    """Whether ``faster`` beats ``slower`` beyond the noise: its upper quartile below ``slower``'s lower quartile."""
    return faster.quartiles[1] < slower.quartiles[0]


AUTO_ROUNDS = 3
"""Most rounds :func:`fastest` times before it falls back to its rule."""


def fastest(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device, fallback: str
) -> tuple[str, dict[str, float], str]:
    """``(winner, median ms per candidate, note)``: rounds of interleaved timing, pooled, until the fastest is
    faster than every other beyond the noise (:func:`separated`), at most :data:`AUTO_ROUNDS`; else ``fallback``
    (and a note saying so)."""
    pooled: dict[str, list[float]] = {k: [] for k in fns}
    for round_ in range(AUTO_ROUNDS):
        for k, t in interleaved(fns, repeats=repeats, warmup=2 if round_ == 0 else 0, device=device).items():
            pooled[k] += t.samples
        timings = {k: Timing(v) for k, v in pooled.items()}
        best = min(timings, key=lambda k: timings[k].median)
        ms = {k: t.median * 1e3 for k, t in timings.items()}
        if all(separated(timings[best], t) for k, t in timings.items() if k != best):
            return best, ms, ""
    return fallback, ms, f"within timing noise after {AUTO_ROUNDS * repeats} runs each: kept {fallback} (the rule)"


def load_average() -> float | None:
    """The 1-minute load average (``None`` where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds spent by every process (``busy``, from ``/proc/stat``) and by this one (``own``) at ``wall``."""

    busy: float
    own: float
    wall: float


def cpu_snapshot() -> CpuSnapshot | None:
    """Now's :class:`CpuSnapshot` (``None`` where ``/proc/stat`` is not readable: not Linux)."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()  # cpu user nice system idle iowait irq softirq steal ...
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    own = os.times()
    return CpuSnapshot((user + nice + system + irq + softirq + steal) / ticks, own.user + own.system, time.monotonic())


def other_cores(start: CpuSnapshot | None, end: CpuSnapshot | None) -> float | None:
    """How many cores other processes kept busy, on average, between two snapshots (``None`` if unknown)."""
    if start is None or end is None or end.wall <= start.wall:
        return None
    return max(0.0, (end.busy - start.busy) - (end.own - start.own)) / (end.wall - start.wall)


OTHER_CORES_NOISY = 0.5
"""Other processes using this many cores on average while timing make the timing untrustworthy."""


def noise_warning(
    timings: Mapping[object, Timing], load_before: float | None = None, others: float | None = None
) -> str | None:
    """A one-line warning when ``timings`` cannot be trusted, else ``None``: an interquartile range above
    ``NOISY_SPREAD`` of the median, or other processes busy while timing: ``others`` cores on average
    (:func:`other_cores`, at or above ``OTHER_CORES_NOISY``), or, where that is unknown, a load average
    (``load_before``) at or above the number of cores."""
    reasons = []
    worst = max(timings.values(), key=lambda t: t.spread, default=None)
    if worst is not None and worst.spread > NOISY_SPREAD:
        reasons.append(f"repeats vary by {100 * worst.spread:.0f}% (interquartile range / median)")
    cores = os.cpu_count() or 1
    if others is not None:
        if others >= OTHER_CORES_NOISY:
            reasons.append(f"other processes kept {others:.1f} of {cores} cores busy while timing")
    elif load_before is not None and load_before >= cores:
        reasons.append(f"load average {load_before:.1f} on {cores} cores before timing")
    if not reasons:
        return None
    return "timings are noisy: " + "; ".join(reasons) + "; rerun on a quiet machine"


def synchronize(device: torch.device | str | None) -> None:
    """Wait for a CUDA device's queued kernels (no-op on the CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: Mapping[K, Callable[[], object]],
    repeats: int = 10,
    warmup: int = 2,
    device: torch.device | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[K, Timing]:
    """Time each callable ``repeats`` times in the order A, B, A, B, ... after ``warmup`` untimed rounds.

    ``device``: where the callables run; on CUDA every reading of the clock follows a synchronize.
    ``progress(rounds_left)`` is called after each timed round.

    Raises:
        ConfigError: ``repeats`` < 1 or ``warmup`` < 0 (or not integers).
    """
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if type(value) is not int or value < low:
            raise ConfigError(f"timing: ${name} must be an integer >= {low}, got {value!r}", param=name)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[K, list[float]] = {key: [] for key in fns}
    for done in range(1, repeats + 1):
        for key, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[key].append(time.perf_counter() - start)
        if progress is not None:
            progress(repeats - done)
    return {key: Timing(s) for key, s in samples.items()}


def inference_fn(model: nn.Module, batch: torch.Tensor) -> Callable[[], object]:
    """A no-grad eval-mode forward of ``model`` on ``batch``."""
    model.eval()

    @torch.no_grad()
    def run() -> object:
        return model(batch)

    return run


def train_step_fn(
    model: nn.Module, batch: torch.Tensor, target: torch.Tensor, lr: float = 1e-4
) -> Callable[[], object]:
    """One training step of ``model`` (put in training mode) on ``batch``: forward, cross-entropy against
    ``target``, backward, SGD step (momentum 0.9). The step updates ``model``'s weights.

    ``model`` may be a ``torch.compile`` wrapper; the optimizer holds the wrapped module's parameters.
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def run() -> object:
        optimizer.zero_grad(set_to_none=True)
        loss = classification_loss(model(batch), target)
        loss.backward()
        optimizer.step()
        return loss

    return run
