"""Losses shared by training and benchmarking."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(
    output: torch.Tensor | tuple[torch.Tensor, ...],
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    aux_weight: float = 0.3,
) -> torch.Tensor:
    """Cross-entropy of logits ``(N, classes)``; a tuple's auxiliary heads (GoogLeNet) weighted by ``aux_weight``."""
    if isinstance(output, tuple):
        main, *aux = output
        return F.cross_entropy(main, target, label_smoothing=label_smoothing) + aux_weight * sum(
            F.cross_entropy(a, target, label_smoothing=label_smoothing) for a in aux
        )
    return F.cross_entropy(output, target, label_smoothing=label_smoothing)
