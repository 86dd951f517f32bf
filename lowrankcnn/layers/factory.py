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
``"svd"``       k x k conv to ``rank`` channels, then a 1x1 conv (``ChannelRankConv2d``, Pufferfish; ``rank``,
                ``rank_ratio``, default 0.25)
``"bsconv"``    1x1 conv, then a depthwise k x k conv (``BSConvU``, blueprint separable conv)
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

Alignment: ``align=A`` (a power of two) makes every basis group of the composite methods a multiple of ``A``
channels (``split_channels(..., align=A)``: the same rule on blocks of ``A`` channels; a width that is not a multiple
of ``A``, or has fewer blocks than groups, is split in blocks of the largest power of two below ``A`` that fits,
down to 1). onnxruntime's fast x86 convolutions (NCHWc) work on blocks of 8 channels (AVX2) or 16 (AVX-512), and
keep a concat on that path only if every input is block-aligned, so ``align=16`` keeps a composite layer's groups
and their concat there. The total width never changes, so a layer still has its dense twin's width. The methods
without basis groups (``sf``, ``rank1``, ``consecutive``, ``svd``, ``bsconv``, ``dense``) have nothing to align and
ignore it.
``align=None`` (the default) is the ambient alignment: 1, or the value of an enclosing
``with channel_alignment(A):``, which is how ``create_model(..., align=A)`` and ``convert(..., align=A)``
reach every conv a model family or a conversion builds.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal, get_args

from torch import nn

from ..errors import ConfigError
from .base import ConvSpec, LowRankConv2d
from .bsconv import BSConvU
from .channel_rank import ChannelRankConv2d
from .composite import LR_PARTS, WFULL_PARTS, CompositeConv2d, check_align
from .consecutive import ConsecutiveConv2d
from .rank1 import Rank1Conv2d
from .separable import SeparableConv2d

LowRankMethod = Literal["lr", "lr_join", "lr_wfull", "sf", "rank1", "consecutive", "svd", "bsconv", "dense"]
METHODS: tuple[LowRankMethod, ...] = get_args(LowRankMethod)
LAYERS: Mapping[str, tuple[type[LowRankConv2d], Mapping[str, Any]]] = {
    "lr": (CompositeConv2d, {"parts": LR_PARTS}),
    "lr_join": (CompositeConv2d, {"parts": LR_PARTS, "join": True}),
    "lr_wfull": (CompositeConv2d, {"parts": WFULL_PARTS, "join": True}),
    "sf": (SeparableConv2d, {}),
    "rank1": (Rank1Conv2d, {}),
    "consecutive": (ConsecutiveConv2d, {}),
    "svd": (ChannelRankConv2d, {}),
    "bsconv": (BSConvU, {}),
}
"""Every low-rank method: its layer class and the options it passes to ``from_spec`` / ``from_conv``."""

_ALIGN: ContextVar[int] = ContextVar("lowrankcnn_channel_align", default=1)


@contextmanager
def channel_alignment(align: int) -> Iterator[int]:
    """Within the block, ``create_lowrank_conv`` and ``convert`` called without ``align`` align basis groups to
    ``align`` channels (a power of two); ``create_model(..., align=...)`` builds its model inside this block."""
    token = _ALIGN.set(check_align(align, "channel_alignment"))
    try:
        yield align
    finally:
        _ALIGN.reset(token)


def resolve_align(align: int | None, layer: str) -> int:
    """``align`` checked (a power of two), or the ambient alignment (:func:`channel_alignment`) for ``None``."""
    return _ALIGN.get() if align is None else check_align(align, layer)


def build_options(method: str, options: Mapping[str, Any], align: int | None, layer: str) -> dict[str, Any]:
    """The options ``method``'s layer is built with: its defaults, ``options``, and the resolved ``align`` when the
    layer takes one (a class whose ``_from_spec`` has an ``align`` keyword; the others ignore alignment)."""
    cls, defaults = LAYERS[method]
    merged = {**defaults, **options}
    resolved = resolve_align(align, layer)
    if "align" in inspect.signature(cls._from_spec).parameters:
        merged["align"] = resolved
    return merged


def create_lowrank_conv(
    method: LowRankMethod,
    in_chs: int,
    out_chs: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | None = None,
    dilation: int | tuple[int, int] = 1,
    bias: bool = True,
    *,
    align: int | None = None,
    **kw: Any,
) -> nn.Module:
    """A conv of ``method`` from ``in_chs`` to ``out_chs`` channels with the dense conv's geometry.

    Args:
        method: see the module doc.
        in_chs, out_chs: input and output channels (the output is exactly ``out_chs`` wide for every method).
        kernel_size, stride, dilation: an int or an ``(h, w)`` pair, as in ``nn.Conv2d``.
        padding: an int or a pair; ``None`` is "same" padding, ``(k - 1) // 2 * dilation`` per axis.
        bias: a bias per output channel.
        align: composite methods: every basis group a multiple of ``align`` channels (a power of two) where the
            width allows it (see the module doc); ``None``: the ambient :func:`channel_alignment` (1 by default).
            The other methods have no groups to align and ignore it.
        **kw: the method's own options (composite: ``parts``, ``basis_width``; rank1: ``scheme``,
            ``shared_spatial``; svd: ``rank`` or ``rank_ratio``).

    Returns:
        The layer, initialized by its constructor (models re-initialize themselves at the end of theirs).

    Raises:
        ConfigError: an unknown method or option, a geometry the method cannot take, or an ``align`` that is not a
            power of two.
    """
    if method not in METHODS:
        raise ConfigError(f"create_lowrank_conv: unknown method {method!r}; use one of {', '.join(METHODS)}")
    spec = ConvSpec.make(in_chs, out_chs, kernel_size, stride, padding, dilation, bias, layer="create_lowrank_conv")
    if method == "dense":
        resolve_align(align, "create_lowrank_conv")
        if kw:
            raise ConfigError(f"create_lowrank_conv: method 'dense' takes no options, got {', '.join(sorted(kw))}")
        return spec.conv2d()
    cls, _ = LAYERS[method]
    return cls.from_spec(spec, **build_options(method, kw, align, "create_lowrank_conv"))
