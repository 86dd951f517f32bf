"""Per-iteration learning-rate schedules.

* ``cosine``: ``lr0 * 0.5 * (1 + cos(pi * t / T))`` over all ``T`` steps, after an
  optional linear warm-up.
* ``step``: ``lr0``, divided by 10 at 50% and again at 75% of the steps.
* ``inverse``: the paper's ``lr_t = lr0 * (1 + lr0 * lambda * t)^-1`` per iteration
  (``lambda`` = weight decay), further divided by 10 each time the validation
  accuracy has not improved for ``patience`` epochs (docs/reference.md §1.3).

The schedule writes the rate into the optimizer's parameter groups; its state
(step, plateau factor, best accuracy) is saved in checkpoints for exact resume.
"""

from __future__ import annotations

import math
import typing
from typing import Any, Literal

import torch

from ..errors import ConfigError

Schedule = Literal["cosine", "step", "inverse"]
SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)


class LRSchedule:
    """Learning rate as a function of the global step, plus the ``inverse`` schedule's plateau drops."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: Schedule,
        base_lr: float,
        total_steps: int,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        patience: int = 2,
    ) -> None:
        if kind not in SCHEDULES:
            raise ConfigError(f"unknown $schedule {kind!r}; choose one of {', '.join(SCHEDULES)}", param="schedule")
        self.optimizer, self.kind, self.base_lr = optimizer, kind, base_lr
        self.total_steps, self.weight_decay = max(1, total_steps), weight_decay
        self.warmup_steps, self.patience = warmup_steps, patience
        self.step_count = 0
        self.factor = 1.0  # plateau drops (inverse schedule)
        self.best_acc = -math.inf
        self.bad_epochs = 0
        self._apply()

    def lr_at(self, t: int) -> float:
        """Learning rate at global step ``t``."""
        if t < self.warmup_steps:
            return self.base_lr * (t + 1) / self.warmup_steps
        if self.kind == "cosine":
            progress = (t - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if self.kind == "step":
            return self.base_lr * 0.1 ** sum(t >= m * self.total_steps for m in (0.5, 0.75))
        return self.factor * self.base_lr / (1.0 + self.base_lr * self.weight_decay * t)

    @property
    def lr(self) -> float:
        return self.lr_at(self.step_count)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def rebind(self, optimizer: torch.optim.Optimizer) -> None:
        """Drive ``optimizer`` from now on (a run that replaced its optimizer), at the current rate."""
        self.optimizer = optimizer
        self._apply()

    def step(self) -> None:
        """Advance one iteration."""
        self.step_count += 1
        self._apply()

    def epoch_end(self, val_acc: float) -> None:
        """Record the epoch's validation accuracy; ``inverse`` drops by 10 after ``patience`` flat epochs."""
        if val_acc > self.best_acc:
            self.best_acc, self.bad_epochs = val_acc, 0
            return
        self.bad_epochs += 1
        if self.kind == "inverse" and self.bad_epochs >= self.patience:
            self.factor *= 0.1
            self.bad_epochs = 0
            self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _STATE_KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position saved by :meth:`state_dict`.

        Raises:
            ValueError: a key is missing or unknown, or a value has the wrong type or range.
        """
        if set(state) != set(_STATE_KEYS):
            raise ValueError(f"schedule state has keys {sorted(state)}, expected {list(_STATE_KEYS)}")
        counts_ok = all(
            isinstance(state[k], int) and not isinstance(state[k], bool) and state[k] >= 0
            for k in ("step_count", "bad_epochs")
        )
        factor, best = state["factor"], state["best_acc"]
        numbers_ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (factor, best))
        if not (counts_ok and numbers_ok and math.isfinite(factor) and factor > 0 and not math.isnan(best)):
            raise ValueError(f"schedule state has a bad value: {state}")
        for key in _STATE_KEYS:
            setattr(self, key, state[key])
        self._apply()


_STATE_KEYS = ("step_count", "factor", "best_acc", "bad_epochs")
