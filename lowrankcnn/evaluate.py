"""Evaluation: loss, top-1 / top-5 accuracy and confusion matrix over a data source."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import DistInfo, all_reduce_sum


@dataclass
class EvalResult:
    """Averages over ``n`` samples; ``confusion[i, j]`` counts true class i predicted as j."""

    loss: float
    top1: float
    top5: float
    n: int
    confusion: torch.Tensor | None = None


def main_logits(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The main head's logits of a model output (GoogLeNet returns a tuple in training mode)."""
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    confusion: bool = False,
    dist_info: DistInfo | None = None,
) -> EvalResult:
    """Evaluate ``model`` in eval mode; with ``dist_info`` the sums are all-reduced over ranks."""
    was_training = model.training
    model.eval()
    loss_sum = top1 = top5 = n = 0.0
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64) if confusion else None
    try:
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = main_logits(model(x)).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            topk = logits.topk(min(5, num_classes), dim=1).indices
            top1 += (topk[:, 0] == y).sum().item()
            top5 += (topk == y[:, None]).any(dim=1).sum().item()
            n += y.numel()
            if matrix is not None:
                matrix += torch.bincount(y.cpu() * num_classes + topk[:, 0].cpu(), minlength=num_classes**2).view(
                    num_classes, num_classes
                )
    finally:
        model.train(was_training)
    loss_sum, top1, top5, n = all_reduce_sum([loss_sum, top1, top5, n], dist_info or DistInfo())
    if n == 0:
        raise ValueError("evaluate: the data source yielded no samples")
    return EvalResult(loss_sum / n, top1 / n, top5 / n, int(n), matrix)
