"""Wall-clock timing: interleaved runs so that machine drift hits every candidate alike.

``inference_fn`` and ``train_step_fn`` are the zero-argument callables :func:`interleaved` times
(one inference batch; one training step of forward + cross-entropy + backward + SGD step).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from .errors import ConfigError
from .utils.losses import classification_loss

K = TypeVar("K", bound=Hashable)


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


def interleaved(fns: Mapping[K, Callable[[], object]], repeats: int = 10, warmup: int = 2) -> dict[K, Timing]:
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
    samples: dict[K, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[key].append(time.perf_counter() - start)
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
