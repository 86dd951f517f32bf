"""The divergence policy of the trainer: stop *before* saving an epoch whose loss or weights went bad.

A step's loss that is not finite or exceeds ``DIVERGENCE_FACTOR`` times the run's first loss, or a test loss or
weight that is not finite at the end of an epoch, raises :class:`TrainingDiverged` with one line saying where it
happened and which checkpoint is intact; ``last.pt`` and ``best.pt`` therefore only ever hold finite models.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..errors import TrainingDiverged

if TYPE_CHECKING:
    from torch import nn

    from .run_directory import RunDirectory
    from .schedule import LRSchedule

DIVERGENCE_FACTOR = 100.0
"""A step loss this many times the run's first loss counts as divergence."""


class DivergencePolicy:
    """Mixed into :class:`~.trainer.Trainer`: the checks, on its ``run``, ``epoch``, ``schedule``, ``model`` and
    ``reference_loss`` (the run's first step loss, saved in the checkpoint)."""

    run: RunDirectory
    epoch: int
    schedule: LRSchedule
    model: nn.Module
    reference_loss: float | None

    def _diverged(self, what: str, step: int | None = None) -> TrainingDiverged:
        last = self.run.path / "last.pt"
        if self.epoch == 0 or not last.exists():
            saved = "No checkpoint was written yet."
        else:
            saved = f"The last good checkpoint, {last} (epoch {self.epoch}), is intact."
        return TrainingDiverged(
            f"{what} at epoch {self.epoch + 1}{'' if step is None else f', step {step + 1}'} "
            f"(lr {self.schedule.lr:.3g}); training stopped before saving it. "
            f"{saved} Lower $lr (or add $warmup_epochs) and retrain."
        )

    def _check_step_loss(self, loss: float, step: int) -> None:
        if not math.isfinite(loss):
            raise self._diverged(f"the loss became {loss}", step)
        if self.reference_loss is None:
            self.reference_loss = loss
        elif loss > DIVERGENCE_FACTOR * max(self.reference_loss, 1e-3):
            raise self._diverged(
                f"the loss exploded to {loss:.3g} (over {DIVERGENCE_FACTOR:g}x the run's first loss, "
                f"{self.reference_loss:.3g})",
                step,
            )

    def _check_finite_model(self) -> None:
        for name, tensor in [*self.model.named_parameters(), *self.model.named_buffers()]:
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise self._diverged(f"weight {name} became non-finite")
