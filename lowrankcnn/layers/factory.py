"""``create_lowrank_conv``: the one conv factory of the package (in the spirit of timm's ``create_conv2d``).

Every model family builds its spatial convs through it, so a method name means the same layer everywhere and a new
family (or a converted user model) gets the whole vocabulary from one call::

    conv = create_lowrank_conv("lr", 64, 128, 3, stride=2)  # 3x1:64 | 1x3:64, stride 2, "same" padding

Methods (:data:`LowRankMethod`):

==============  ====================================================================================================
``"lr"``        composite: half k x 1, half 1 x k filters, concatenated (``CompositeConv2d``, parts ``LR_PARTS``)
``"lr_join"``   the same basis, then a 1x1 conv to ``out_chs`` (no activation between)
``"lr_wfull"``  3/8 k x 1, 3/8 1 x k, 1/4 full k x k, then a 1x1 conv to ``out_chs`` (parts ``WFULL_PARTS``)
``"sf"``        1 x k then k x 1 conv, both ``out_chs`` wide (``SeparableConv2d``)
``"rank1"``     every filter an outer product of 1-D vectors (``Rank1Conv2d``; ``scheme``, ``shared_spatial``)
``"consecutive"`` 1x1 conv, depthwise k x 1, depthwise 1 x k (``ConsecutiveConv2d``)
``"dense"``     a plain ``nn.Conv2d``
==============  ====================================================================================================

The composite methods take ``parts`` (``(shape, weight)`` pairs, shape ``"kx1"``, ``"1xk"`` or ``"kxk"``) and
``basis_width`` (the number of basis filters, default ``out_chs``; with a join it may differ) to override the
paper's proportions.

Rounding: a basis is split into groups by one rule, :func:`~lowrankcnn.layers.composite.split_channels`
(largest-remainder apportionment, ties to the later group, the groups summing to the width exactly). So a
composite layer without a join is exactly as wide as the dense conv it replaces at any ``width_mult``, and a
low-rank model has its dense twin's layer widths (before, VGG rounded each half on its own, ``round(D / 2)`` twice,
so at odd widths its halves summed to ``D + 1``). The published structures have even widths everywhere (every
quota is a whole number), so the rule reproduces every published count exactly; the VGG ``lde`` variant
(3x1, 3D/4 | 1x3, 3D/4 | 3x3, D/4 -> 1x1, D/2) is ``"lr_wfull"`` with parts weighted 3:3:1, ``basis_width``
``round(7D/4)`` and ``out_chs`` ``round(D/2)``: 48 | 48 | 16 -> 32 at D = 64, as published.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

from torch import nn

from ..errors import ConfigError
from .base import ConvSpec, LowRankConv2d
from .composite import LR_PARTS, WFULL_PARTS, CompositeConv2d
from .rank1 import ConsecutiveConv2d, Rank1Conv2d
from .separable import SeparableConv2d

LowRankMethod = Literal["lr", "lr_join", "lr_wfull", "sf", "rank1", "consecutive", "dense"]
METHODS: tuple[LowRankMethod, ...] = get_args(LowRankMethod)
LAYERS: Mapping[str, tuple[type[LowRankConv2d], Mapping[str, Any]]] = {
    "lr": (CompositeConv2d, {"parts": LR_PARTS}),
    "lr_join": (CompositeConv2d, {"parts": LR_PARTS, "join": True}),
    "lr_wfull": (CompositeConv2d, {"parts": WFULL_PARTS, "join": True}),
    "sf": (SeparableConv2d, {}),
    "rank1": (Rank1Conv2d, {}),
    "consecutive": (ConsecutiveConv2d, {}),
}
"""Every low-rank method: its layer class and the options it passes to ``from_spec`` / ``from_conv``."""


def create_lowrank_conv(
    method: LowRankMethod,
    in_chs: int,
    out_chs: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | None = None,
    dilation: int | tuple[int, int] = 1,
    bias: bool = True,
    **kw: Any,
) -> nn.Module:
    """A conv of ``method`` from ``in_chs`` to ``out_chs`` channels with the dense conv's geometry.

    Args:
        method: see the module doc.
        in_chs, out_chs: input and output channels (the output is exactly ``out_chs`` wide for every method).
        kernel_size, stride, dilation: an int or an ``(h, w)`` pair, as in ``nn.Conv2d``.
        padding: an int or a pair; ``None`` is "same" padding, ``(k - 1) // 2 * dilation`` per axis.
        bias: a bias per output channel.
        **kw: the method's own options (composite: ``parts``, ``basis_width``; rank1: ``scheme``,
            ``shared_spatial``).

    Returns:
        The layer, initialized by its constructor (models re-initialize themselves at the end of theirs).

    Raises:
        ConfigError: an unknown method or option, or a geometry the method cannot take.
    """
    if method not in METHODS:
        raise ConfigError(f"create_lowrank_conv: unknown method {method!r}; use one of {', '.join(METHODS)}")
    spec = ConvSpec.make(in_chs, out_chs, kernel_size, stride, padding, dilation, bias, layer="create_lowrank_conv")
    if method == "dense":
        if kw:
            raise ConfigError(f"create_lowrank_conv: method 'dense' takes no options, got {', '.join(sorted(kw))}")
        return spec.conv2d()
    cls, options = LAYERS[method]
    return cls.from_spec(spec, **{**options, **kw})
