"""Building an ``nn.Conv2d`` from a given weight and bias (the fused deploy forms)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def conv2d_from_weights(
    weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int], padding: tuple[int, int]
) -> nn.Conv2d:
    """An ``nn.Conv2d`` holding ``weight`` ``(C_out, C_in, k_h, k_w)`` and ``bias``, on their device and dtype."""
    o, c, kh, kw = weight.shape
    conv = nn.Conv2d(c, o, (kh, kw), stride, padding, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    conv.weight.copy_(weight)
    if bias is not None:
        conv.bias.copy_(bias)
    return conv
