"""Standard ``nn.Conv2d`` modules built from given weights: the deploy forms of the low-rank layers.

* :func:`conv2d_from_weights`: one ``nn.Conv2d`` holding a given weight and bias (the *dense* form:
  in this package "dense" always means a single ``nn.Conv2d`` equal to a layer).
* :func:`rank1_chain`: a 1x1 conv followed by depthwise convs, built from rank-1 factors ``t, q, p``
  (the *chain* of a ``Rank1Conv2d`` or ``ConsecutiveConv2d``).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from ..errors import ConfigError

ChainSpatial = Literal["separate", "depthwise"]
"""Spatial part of a rank-1 chain after its 1x1 conv: ``"separate"`` (depthwise k_h x 1, then
depthwise 1 x k_w) or ``"depthwise"`` (one depthwise k_h x k_w conv)."""
CHAIN_SPATIAL: tuple[ChainSpatial, ...] = get_args(ChainSpatial)


@torch.no_grad()
def conv2d_from_weights(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> nn.Conv2d:
    """An ``nn.Conv2d`` holding ``weight`` ``(C_out, C_in, k_h, k_w)`` and ``bias``, on their device and dtype."""
    o, c, kh, kw = weight.shape
    kwargs = {"bias": bias is not None, "device": weight.device, "dtype": weight.dtype}
    conv = nn.Conv2d(c, o, (kh, kw), stride, padding, dilation, **kwargs)
    conv.weight.copy_(weight)
    if bias is not None:
        conv.bias.copy_(bias)
    return conv


@torch.no_grad()
def rank1_chain(
    t: torch.Tensor,
    q: torch.Tensor,
    p: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    spatial: ChainSpatial = "separate",
    dilation: tuple[int, int] = (1, 1),
) -> nn.Sequential:
    """Standard convs computing the conv with filters ``t[o, c] * q[o, y] * p[o, x]`` exactly.

    ``spatial="separate"``: 1x1 conv (C_in -> C_out, weights ``t``) -> depthwise k_h x 1 (``q``,
    vertical stride) -> depthwise 1 x k_w (``p``, horizontal stride, + ``bias``): ``C_in + k_h + k_w``
    MACs per output at stride 1. ``spatial="depthwise"``: 1x1 conv -> one depthwise k_h x k_w conv
    holding ``q ⊗ p`` (+ bias): ``k_h * k_w`` instead of ``k_h + k_w`` spatial MACs, but one pass
    over memory instead of two, which is faster on CPUs (see ``benchmarks/``). Zero padding
    factorizes, so both equal the 3-D conv exactly (``dilation`` applies to each conv along its axis).
    """
    if spatial not in CHAIN_SPATIAL:
        raise ConfigError(f"rank1_chain: spatial must be one of {', '.join(CHAIN_SPATIAL)}, got {spatial!r}")
    (o, c), kh, kw = t.shape, q.shape[1], p.shape[1]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    kwargs = {"device": t.device, "dtype": t.dtype}
    has_bias = bias is not None
    conv_1x1 = nn.Conv2d(c, o, 1, bias=False, **kwargs)
    conv_1x1.weight.copy_(t[:, :, None, None])
    if spatial == "depthwise":
        last = nn.Conv2d(o, o, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups=o, bias=has_bias, **kwargs)
        last.weight.copy_((q[:, :, None] * p[:, None, :])[:, None])
        layers = [conv_1x1, last]
    else:
        conv_kx1 = nn.Conv2d(o, o, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=o, bias=False, **kwargs)
        last = nn.Conv2d(o, o, (1, kw), (1, sw), (0, pw), (1, dw), groups=o, bias=has_bias, **kwargs)
        conv_kx1.weight.copy_(q[:, None, :, None])
        last.weight.copy_(p[:, None, None, :])
        layers = [conv_1x1, conv_kx1, last]
    if has_bias:
        last.bias.copy_(bias)
    return nn.Sequential(*layers)
