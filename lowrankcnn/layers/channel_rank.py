"""Channel-rank factorization (Pufferfish, Wang et al. MLSys 2021): a k x k conv to ``rank`` channels, then a 1x1.

The dense weight reshaped to ``C_out x (C_in k_h k_w)`` is factored as ``U V^T`` of rank ``r``: ``V^T`` is a
``k_h x k_w`` conv from C_in to ``r`` channels (carrying the stride, padding and dilation), ``U`` a 1x1 conv from
``r`` to C_out (carrying the bias). ``fit_`` takes the truncated SVD, the best rank-``r`` weight (Eckart-Young).

Naming: a conv is named by its kernel shape (``conv_kxk``, ``conv_1x1``), as in :mod:`lowrankcnn.layers.rank1`.
The forward, geometry, factorized form, folding and init are :class:`~lowrankcnn.layers.conv_pair.ConvPair`'s.

Shapes: ``(N, in_channels, H, W)`` -> ``(N, out_channels, H', W')``, "same" padding by default.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ._checks import conv_geometry, positive_int
from .base import ConvSpec, geometry_text
from .conv_pair import ConvPair
from .fit import fit_channel_rank

DEFAULT_RANK_RATIO = 0.25
"""Pufferfish's default: the rank is a quarter of the output channels."""


def resolve_rank(
    rank: int | None,
    rank_ratio: float | None,
    in_channels: int,
    out_channels: int,
    kernel: tuple[int, int],
    layer: str,
) -> int:
    """``rank``, or ``max(1, round(rank_ratio * C_out))`` (default ratio :data:`DEFAULT_RANK_RATIO`), checked to lie
    in ``1 .. min(C_out, C_in k_h k_w)``; a ``ConfigError`` for both given, a bad value or a rank past that limit."""
    if rank is not None and rank_ratio is not None:
        raise ConfigError(f"{layer}: give rank or rank_ratio, not both (got rank={rank!r}, rank_ratio={rank_ratio!r})")
    if rank is None:
        ratio = DEFAULT_RANK_RATIO if rank_ratio is None else rank_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ConfigError(f"{layer}: rank_ratio must be a number in (0, 1], got {ratio!r}")
        rank = max(1, round(ratio * out_channels))
    positive_int(rank, "rank", layer)
    limit = min(out_channels, in_channels * math.prod(kernel))
    if rank > limit:
        raise ConfigError(
            f"{layer}: rank must be at most min(C_out, C_in*k_h*k_w) = min({out_channels}, "
            f"{in_channels}*{kernel[0]}*{kernel[1]}) = {limit}, got {rank}"
        )
    return rank


class ChannelRankConv2d(ConvPair):
    """A ``k_h x k_w`` conv from C_in to ``rank`` channels (no bias), then a 1x1 conv to C_out, no activation between.

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size, stride, padding, dilation: of the dense conv this layer stands for, all taken by ``conv_kxk``;
            ``padding=None``: "same" padding.
        bias: ``conv_1x1`` adds a bias per output channel.
        rank: the inner width ``r``, ``1 .. min(C_out, C_in k_h k_w)``.
        rank_ratio: ``r = max(1, round(rank_ratio * C_out))`` (Python rounding), in (0, 1]; at most one of ``rank``
            and ``rank_ratio`` (neither: ratio 0.25).

    Attributes:
        conv_kxk: ``(r, C_in, k_h, k_w)``, applied first.
        conv_1x1: ``(C_out, r, 1, 1)`` with the bias, applied second.
        rank: ``r``.
    """

    order = ("conv_kxk", "conv_1x1")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        bias: bool = True,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
        *,
        rank: int | None = None,
        rank_ratio: float | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        kernel, stride_hw, padding_hw, dilation_hw = conv_geometry(
            name, in_channels, out_channels, kernel_size, stride, padding, dilation
        )
        r = resolve_rank(rank, rank_ratio, in_channels, out_channels, kernel, name)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv_kxk = nn.Conv2d(in_channels, r, kernel, stride_hw, padding_hw, dilation_hw, bias=False)
        self.conv_1x1 = nn.Conv2d(r, out_channels, 1, bias=bias)

    @classmethod
    def _from_spec(
        cls, spec: ConvSpec, *, rank: int | None = None, rank_ratio: float | None = None
    ) -> ChannelRankConv2d:
        return cls(**spec.kwargs(), rank=rank, rank_ratio=rank_ratio)

    @property
    def rank(self) -> int:
        return self.conv_kxk.out_channels

    def describe(self) -> str:
        kh, kw = self.kernel_size
        return f"{kh}x{kw}:{self.rank} -> 1x1:{self.out_channels}" + geometry_text(self.stride, self.dilation)

    def dense_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``W[o] = sum_r conv_1x1[o, r] conv_kxk[r]`` and ``conv_1x1``'s bias (exact: ``conv_kxk`` has no bias)."""
        return torch.einsum("or,rcyx->ocyx", self.conv_1x1.weight[:, :, 0, 0], self.conv_kxk.weight), self.bias

    def fit_(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """The rank-``r`` truncated SVD (:func:`~lowrankcnn.layers.fit.fit_channel_rank`); the bias goes to
        ``conv_1x1``. At full rank the layer equals the dense conv."""
        self._set_fit_(*fit_channel_rank(weight, self.rank), bias)

    def macs(self, output_hw: tuple[int, int], input_hw: tuple[int, int]) -> int:
        """``r C_in k_h k_w H' W' + C_out r H' W'``: both convs at the output size."""
        (kh, kw), positions = self.kernel_size, output_hw[0] * output_hw[1]
        return self.rank * (self.in_channels * kh * kw + self.out_channels) * positions
