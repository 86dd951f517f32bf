"""``ConsecutiveConv2d``: Kim et al.'s consecutive 1-D convolutions (the Flattened-CNN baseline).

Three standard convs ``conv_1x1`` (C_in -> C_out) -> depthwise ``conv_kx1`` -> depthwise ``conv_1xk``, no
activation between, each trained as its own layer with its own He initialization: the same function class as
:class:`~lowrankcnn.layers.rank1.Rank1Conv2d` (whose filter math, chain forms and MACs it shares through
:class:`~lowrankcnn.layers.rank1.Rank1FilterLayer`), trained differently.

Shapes: ``(N, in_channels, H, W)`` -> ``(N, out_channels, H', W')``, "same" padding by default.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_layer_input, conv_geometry
from ._deprecation import RenamedMembers
from .base import HE_GAIN, ConvSpec, InitMode, fold_into_, geometry_text, he_normal_
from .rank1 import Rank1FilterLayer

__all__ = ["ConsecutiveConv2d"]


class ConsecutiveConv2d(RenamedMembers, Rank1FilterLayer):
    """Consecutive 1-D convolutions trained as separate layers (the Flattened-CNN baseline).

    1x1 conv (C_in -> C_out, no bias) -> depthwise k_h x 1 -> depthwise 1 x k_w (+ bias), no
    activation between: the same function class as ``Rank1Conv2d``, but each layer is a
    standard module with its own standard (He) initialization.

    Attributes:
        conv_1x1: the 1x1 conv (C_in -> C_out, no bias), applied first.
        conv_kx1: the depthwise k_h x 1 conv (vertical stride, padding, dilation), applied second.
        conv_1xk: the depthwise 1 x k_w conv (horizontal stride, padding, dilation, bias), applied last.

    The old names ``channel``, ``vertical``, ``horizontal`` still read (deprecated), and state dicts
    saved with them still load.
    """

    renamed_members = {"channel": "conv_1x1", "vertical": "conv_kx1", "horizontal": "conv_1xk"}

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
        name = type(self).__name__
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv_geometry(
            name, in_channels, out_channels, kernel_size, stride, padding, dilation
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv_1x1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.conv_kx1 = nn.Conv2d(
            out_channels, out_channels, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=out_channels, bias=False
        )
        self.conv_1xk = nn.Conv2d(
            out_channels, out_channels, (1, kw), (1, sw), (0, pw), (1, dw), groups=out_channels, bias=bias
        )

    @classmethod
    def _from_spec(cls, spec: ConvSpec) -> ConsecutiveConv2d:
        return cls(**spec.kwargs())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(self, x)
        return self.conv_1xk(self.conv_kx1(self.conv_1x1(x)))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``t (C_out, C_in)``, ``q (C_out, k_h)``, ``p (C_out, k_w)``: the three convs' weights as 1-D factors."""
        return self.conv_1x1.weight[:, :, 0, 0], self.conv_kx1.weight[:, 0, :, 0], self.conv_1xk.weight[:, 0, 0, :]

    @property
    def bias(self) -> torch.Tensor | None:
        return self.conv_1xk.bias

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.conv_kx1.kernel_size[0], self.conv_1xk.kernel_size[1]

    @property
    def stride(self) -> tuple[int, int]:
        return self.conv_kx1.stride[0], self.conv_1xk.stride[1]

    @property
    def padding(self) -> tuple[int, int]:
        return self.conv_kx1.padding[0], self.conv_1xk.padding[1]

    @property
    def dilation(self) -> tuple[int, int]:
        return self.conv_kx1.dilation[0], self.conv_1xk.dilation[1]

    @torch.no_grad()
    def fold_affine_(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Into the last conv (``conv_1xk``)."""
        fold_into_(self.conv_1xk, self.conv_1xk.weight, scale, shift)

    @torch.no_grad()
    def reset_parameters(self, mode: InitMode = "fan_out", gain: float = HE_GAIN) -> None:
        """He init of each of the three convs with its own fan; bias zero."""
        for conv in (self.conv_1x1, self.conv_kx1, self.conv_1xk):
            he_normal_(conv, mode, gain)

    def _set_factors(self, t: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> None:
        self.conv_1x1.weight.copy_(t[:, :, None, None])
        self.conv_kx1.weight.copy_(q[:, None, :, None])
        self.conv_1xk.weight.copy_(p[:, None, None, :])

    def describe(self) -> str:
        kh, kw = self.kernel_size
        return f"1x1:{self.out_channels} -> dw {kh}x1 -> dw 1x{kw}" + geometry_text(self.stride, self.dilation)
