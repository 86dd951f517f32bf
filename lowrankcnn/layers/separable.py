"""Sequential separable convolution (the "sf" VGG variant, docs/reference.md §1.1).

A 1xk conv (C -> D) followed by a kx1 conv (D -> D) with no activation
between: Jaderberg et al.'s factorization, trained from scratch here.

Naming: a conv is named by its kernel shape, height x width (``conv_1xk`` is 1 x k,
``conv_kx1`` is k x 1), as in :mod:`lowrankcnn.layers.rank1`.

Shapes: ``(N, in_channels, H, W)`` -> ``(N, out_channels, H', W')``, "same"
padding, stride applied by both convs along their own axis.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ._checks import check_layer_input, positive_int
from ._deprecation import RenamedMembers


class SeparableConv2d(RenamedMembers, nn.Module):
    """``1 x k`` conv to ``out_channels`` followed by a ``k x 1`` conv, no activation between.

    Attributes:
        conv_1xk: the ``1 x k`` conv (in_channels -> out_channels, horizontal stride), applied first.
        conv_kx1: the ``k x 1`` conv (out_channels -> out_channels, vertical stride), applied second.

    The old names ``horizontal`` (``conv_1xk``) and ``vertical`` (``conv_kx1``) still read
    (deprecated), and state dicts saved with them still load.
    """

    renamed_members = {"horizontal": "conv_1xk", "vertical": "conv_kx1"}

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, bias: bool = True
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels), ("stride", stride)):
            positive_int(value, arg, name)
        if type(kernel_size) is not int or kernel_size <= 0 or kernel_size % 2 == 0:
            raise ConfigError(f"{name}: kernel_size must be a positive odd integer (3, 5, ...), got {kernel_size!r}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        pad = kernel_size // 2
        self.conv_1xk = nn.Conv2d(in_channels, out_channels, (1, kernel_size), (1, stride), (0, pad), bias=bias)
        self.conv_kx1 = nn.Conv2d(out_channels, out_channels, (kernel_size, 1), (stride, 1), (pad, 0), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(self, x)
        return self.conv_kx1(self.conv_1xk(x))

    def describe(self) -> str:
        k = self.conv_kx1.kernel_size[0]
        return f"1x{k}:{self.out_channels} -> {k}x1:{self.out_channels}" + (
            f" /{self.stride}" if self.stride > 1 else ""
        )
