"""Wall-clock timing: interleaved runs so that machine drift hits every candidate alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError


@dataclass
class Timing:
    """Seconds per call over ``repeats`` timed calls."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        q = statistics.quantiles(self.samples, n=4) if len(self.samples) > 1 else [self.median] * 3
        return (q[2] - q[0]) / self.median


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 10, warmup: int = 2) -> dict[str, Timing]:
    """Time each callable ``repeats`` times in the order A, B, A, B, ... after ``warmup`` untimed rounds.

    Raises:
        ConfigError: ``repeats`` < 1 or ``warmup`` < 0 (or not integers).
    """
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if type(value) is not int or value < low:
            raise ConfigError(f"timing: ${name} must be an integer >= {low}, got {value!r}", param=name)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: Timing(s) for name, s in samples.items()}


def inference_fn(model: nn.Module, batch: torch.Tensor) -> Callable[[], object]:
    """A no-grad eval-mode forward of ``model`` on ``batch``."""
    model.eval()

    @torch.no_grad()
    def run() -> object:
        return model(batch)

    return run
