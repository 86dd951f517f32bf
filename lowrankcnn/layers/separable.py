"""Sequential separable convolution (the "sf" VGG variant, docs/reference.md §1.1).

A 1xk conv (C -> D) followed by a kx1 conv (D -> D) with no activation
between: Jaderberg et al.'s factorization, trained from scratch here.

Shapes: ``(N, in_channels, H, W)`` -> ``(N, out_channels, H', W')``, "same"
padding, stride applied by both convs along their own axis.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, ShapeError


class SeparableConv2d(nn.Module):
    """``1 x k`` conv to ``out_channels`` followed by a ``k x 1`` conv, no activation between.

    Attributes:
        horizontal: the ``1 x k`` conv (in_channels -> out_channels, horizontal stride).
        vertical: the ``k x 1`` conv (out_channels -> out_channels, vertical stride).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, bias: bool = True
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels), ("stride", stride)):
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}: {arg} must be a positive integer, got {value!r}")
        if not isinstance(kernel_size, int) or kernel_size <= 0 or kernel_size % 2 == 0:
            raise ConfigError(f"{name}: kernel_size must be a positive odd integer (3, 5, ...), got {kernel_size!r}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        pad = kernel_size // 2
        self.horizontal = nn.Conv2d(in_channels, out_channels, (1, kernel_size), (1, stride), (0, pad), bias=bias)
        self.vertical = nn.Conv2d(out_channels, out_channels, (kernel_size, 1), (stride, 1), (pad, 0), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{type(self).__name__}: expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return self.vertical(self.horizontal(x))

    def describe(self) -> str:
        k = self.vertical.kernel_size[0]
        return f"1x{k}:{self.out_channels} -> {k}x1:{self.out_channels}" + (
            f" /{self.stride}" if self.stride > 1 else ""
        )
