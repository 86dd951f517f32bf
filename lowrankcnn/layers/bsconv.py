"""Blueprint separable convolution, unconstrained (BSConv-U, Haase & Amthor CVPR 2020).

Every filter is one spatial "blueprint" scaled per input channel: ``W[o, c, y, x] = pw[o, c] * dw[o, y, x]``, rank 1
along the channel direction (unlike ``Rank1Conv2d``, the blueprint ``dw[o]`` is a full ``k_h x k_w`` kernel). It runs
as a 1x1 conv (``pw``, C_in -> C_out, at the input resolution) then a depthwise ``k_h x k_w`` conv (``dw``, carrying
the stride, padding, dilation and bias).

Naming: a conv is named by its kernel shape (``conv_1x1``, ``conv_kxk``), as in :mod:`lowrankcnn.layers.rank1`.
The forward, geometry, factorized form, folding and init are :class:`~lowrankcnn.layers.conv_pair.ConvPair`'s.

Shapes: ``(N, in_channels, H, W)`` -> ``(N, out_channels, H', W')``, "same" padding by default.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import conv_geometry
from .base import ConvSpec, geometry_text
from .conv_pair import ConvPair
from .fit import fit_channel_rank1


class BSConvU(ConvPair):
    """A 1x1 conv from C_in to C_out (no bias), then a depthwise ``k_h x k_w`` conv (``groups=C_out``).

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size, stride, padding, dilation: of the dense conv this layer stands for, all taken by the depthwise
            conv; ``padding=None``: "same" padding.
        bias: the depthwise conv adds a bias per output channel.

    Attributes:
        conv_1x1: ``(C_out, C_in, 1, 1)``, applied first.
        conv_kxk: the depthwise conv ``(C_out, 1, k_h, k_w)`` with the bias, applied second.
    """

    order = ("conv_1x1", "conv_kxk")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        bias: bool = True,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
    ) -> None:
        super().__init__()
        kernel, stride_hw, padding_hw, dilation_hw = conv_geometry(
            type(self).__name__, in_channels, out_channels, kernel_size, stride, padding, dilation
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv_1x1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.conv_kxk = nn.Conv2d(
            out_channels, out_channels, kernel, stride_hw, padding_hw, dilation_hw, groups=out_channels, bias=bias
        )

    @classmethod
    def _from_spec(cls, spec: ConvSpec) -> BSConvU:
        return cls(**spec.kwargs())

    def describe(self) -> str:
        kh, kw = self.kernel_size
        return f"1x1:{self.out_channels} -> dw{kh}x{kw}" + geometry_text(self.stride, self.dilation)

    def dense_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``W[o, c] = conv_1x1[o, c] * conv_kxk[o]`` and the depthwise bias (exact: ``conv_1x1`` has no bias)."""
        return self.conv_1x1.weight * self.conv_kxk.weight, self.bias

    def fit_(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Per filter, the best rank-1 split into a channel vector and a blueprint
        (:func:`~lowrankcnn.layers.fit.fit_channel_rank1`); the bias goes to the depthwise conv."""
        pointwise, spatial = fit_channel_rank1(weight)
        self._set_fit_(spatial, pointwise, bias)

    def macs(self, output_hw: tuple[int, int], input_hw: tuple[int, int]) -> int:
        """``C_out C_in H W`` (the 1x1 conv at the input size, before the stride) ``+ C_out k_h k_w H' W'``."""
        (kh, kw), (h_in, w_in), (h_out, w_out) = self.kernel_size, input_hw, output_hw
        return self.out_channels * (self.in_channels * h_in * w_in + kh * kw * h_out * w_out)
