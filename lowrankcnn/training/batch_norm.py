"""Re-estimate batch-norm statistics after the weights jump (a projection onto rank-1 filters).

Batch norm's running mean and variance are averages over the batches *before* a projection; the projected
layers produce other activations, so evaluating with those statistics measures a broken model (a resnet20
projected once an epoch tested at 10-17% while training at 78-85%). :func:`recalibrate_batch_norm` recomputes
them from forward passes of the projected model, as ``torch.optim.swa_utils.update_bn`` does after weight
averaging, with every other module in eval mode (dropout off, so no random numbers are drawn).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..distributed import DistInfo, collective


def tracked_batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The batch-norm layers of ``model`` that keep running statistics (and so can be stale)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batch_norm(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    max_batches: int,
    device: torch.device,
    channels_last: bool = False,
    dist_info: DistInfo | None = None,
) -> int:
    """Set every tracked batch norm's running mean and variance to their average over up to ``max_batches``
    ``(images (N, C, H, W), labels)`` batches; returns how many were used (0: nothing to do, nothing changed).

    Each batch counts equally (momentum ``None``, a cumulative average). With data parallelism every rank
    averages over its own shard and the ranks' statistics are then averaged, so all ranks hold the same.
    The model's weights, its train/eval modes and the batch norms' momenta are left as they were.
    """
    norms = tracked_batch_norms(model)
    if not norms or max_batches < 1:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used = 0
    try:
        for x, _ in islice(batches, max_batches):
            x = x.to(device, non_blocking=True)
            model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
            used += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    if dist_info is not None and dist_info.enabled:
        stats = [s for m in norms for s in (m.running_mean, m.running_var)]
        flat = torch.cat([s.flatten() for s in stats])
        with collective(dist_info, "batch-norm recalibration"):
            torch.distributed.all_reduce(flat)
        flat /= dist_info.world_size
        for stat, mean in zip(stats, flat.split([s.numel() for s in stats]), strict=True):
            stat.copy_(mean.view_as(stat))
    return used
