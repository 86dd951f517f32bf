"""Evaluation: loss, top-1 / top-5 accuracy and confusion matrix over a data source, and the checks that a
data set fits the checkpoint it is evaluated with."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import DistInfo, all_reduce_sum
from .errors import ConfigError, DataError


@dataclass
class EvalResult:
    """Averages over ``n`` samples; ``confusion[i, j]`` counts true class i predicted as j."""

    loss: float
    top1: float
    top5: float
    n: int
    confusion: torch.Tensor | None = None


@dataclass(frozen=True)
class ConfusedPair:
    """``count`` images of class ``true`` predicted as ``predicted`` (``rate``: share of the true class)."""

    true: str
    predicted: str
    count: int
    rate: float


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
    """Evaluate ``model`` in eval mode on ``(images (N, C, H, W), labels (N,))`` batches.

    With ``dist_info`` the sums are all-reduced over ranks.

    Raises:
        DataError: the batches hold no sample, or a label outside ``0..num_classes-1``.
    """
    was_training = model.training
    model.eval()
    loss_sum = top1 = top5 = n = 0.0
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64) if confusion else None
    try:
        for x, y in batches:
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
                raise DataError(
                    f"evaluate: labels must be in 0..{num_classes - 1} for {num_classes} classes, "
                    f"got {int(y.min())}..{int(y.max())}"
                )
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
        raise DataError("evaluate: the data source yielded no samples")
    return EvalResult(loss_sum / n, top1 / n, top5 / n, int(n), matrix)


def _listing(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_data_matches(
    info: Mapping[str, Any],
    num_classes: int,
    in_chans: int,
    class_names: Sequence[str],
    data: str,
    checkpoint: str,
    param: str = "data",
    ignore_class_names: bool = False,
) -> None:
    """Refuse a data set whose classes or channels differ from the ones the checkpoint was trained on.

    Args:
        info: the checkpoint's ``data_info`` (``name``, ``num_classes``, ``in_chans``, ``class_names``).
        num_classes, in_chans, class_names: the data set's.
        data: how to name the data set in the message; ``checkpoint``: how to name the checkpoint.
        param: the argument that chose the data set (named in the message).
        ignore_class_names: only compare the counts (the data set's labels are taken as the checkpoint's,
            index for index, whatever their names).

    Raises:
        ConfigError: one line naming the difference: the counts, or the class names (labels are indices,
            so the same names in another order are a difference too).
    """
    trained = f"{checkpoint} was trained on {info['name']}"
    if (num_classes, in_chans) != (info["num_classes"], info["in_chans"]):
        raise ConfigError(
            f"{trained} ({info['num_classes']} classes, {info['in_chans']} channels) but ${param} {data} has "
            f"{num_classes} classes, {in_chans} channels",
            param=param,
        )
    expected = [str(c) for c in info.get("class_names") or ()]
    given = [str(c) for c in class_names]
    if ignore_class_names or not expected or expected == given:
        return
    missing = [c for c in expected if c not in given]
    extra = [c for c in given if c not in expected]
    if missing or extra:
        what = f"it lacks {_listing(missing)} and has {_listing(extra)} instead"
    else:
        moved = [f"{i}: {e!r} vs {g!r}" for i, (e, g) in enumerate(zip(expected, given, strict=True)) if e != g]
        shown = "; ".join(moved[:3]) + (f"; and {len(moved) - 3} more" if len(moved) > 3 else "")
        what = f"the same names in another order, so labels would be mixed up (label {shown})"
    raise ConfigError(
        f"{trained} but the classes of ${param} {data} differ: {what} (if they are the same classes under other "
        "names, in the same order, pass $ignore_class_names)",
        param=param,
    )


def most_confused(confusion: torch.Tensor, class_names: Sequence[str], k: int = 10) -> list[ConfusedPair]:
    """The ``k`` largest off-diagonal cells of ``confusion`` (true class per row), largest first."""
    counts = confusion.to(torch.int64).clone()
    counts.fill_diagonal_(0)
    totals = confusion.sum(dim=1).clamp(min=1)
    values, flat = counts.flatten().topk(min(k, counts.numel()))
    n = counts.shape[1]
    return [
        ConfusedPair(class_names[i // n], class_names[i % n], int(v), float(v) / float(totals[i // n]))
        for v, i in zip(values.tolist(), flat.tolist(), strict=True)
        if v > 0
    ]
