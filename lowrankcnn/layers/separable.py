"""Sequential separable convolution (the "sf" VGG variant, docs/reference.md §1.1).

A 1xk conv (C -> D) followed by a kx1 conv (D -> D) with no activation
between: Jaderberg et al.'s factorization, trained from scratch here.

Naming: a conv is named by its kernel shape, height x width (``conv_1xk`` is 1 x k,
``conv_kx1`` is k x 1), as in :mod:`lowrankcnn.layers.rank1`.

Shapes: ``(N, in_channels, H, W)`` -> ``(N, out_channels, H', W')``, "same"
padding by default, stride (and padding, dilation) applied by each conv along its own axis.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from ..errors import ConfigError
from ._checks import check_layer_input, compact, conv_geometry
from ._deprecation import RenamedMembers
from .base import HE_GAIN, ConvSpec, Forms, InitMode, LowRankConv2d, fold_into_, geometry_text, he_normal_
from .fit import fit_separable


class SeparableConv2d(RenamedMembers, LowRankConv2d):
    """``1 x k`` conv to ``out_channels`` followed by a ``k x 1`` conv, no activation between.

    Args:
        in_channels, out_channels: C, D.
        kernel_size: ``k`` or ``(k_h, k_w)``: the 1 x k_w conv comes first, then the k_h x 1 conv.
        stride, padding, dilation: of the dense conv this layer stands for; each conv takes its own axis.
            ``padding=None``: "same" padding (odd kernels only).
        bias: both convs have a bias.

    Attributes:
        conv_1xk: the ``1 x k`` conv (in_channels -> out_channels, horizontal stride), applied first.
        conv_kx1: the ``k x 1`` conv (out_channels -> out_channels, vertical stride), applied second.
        stride, padding, dilation: an int when both axes agree, else an ``(h, w)`` pair.

    The old names ``horizontal`` (``conv_1xk``) and ``vertical`` (``conv_kx1``) still read
    (deprecated), and state dicts saved with them still load.
    """

    renamed_members = {"horizontal": "conv_1xk", "vertical": "conv_kx1"}

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
        geometry = conv_geometry(name, in_channels, out_channels, kernel_size, stride, padding, dilation)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry
        if padding is None and (kh % 2 == 0 or kw % 2 == 0):
            raise ConfigError(
                f"{name}: kernel_size must be a positive odd integer (3, 5, ...) for 'same' padding, got "
                f"{kernel_size!r}; give an explicit padding for an even kernel"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.padding, self.dilation = compact((sh, sw)), compact((ph, pw)), compact((dh, dw))
        self.conv_1xk = nn.Conv2d(in_channels, out_channels, (1, kw), (1, sw), (0, pw), (1, dw), bias=bias)
        self.conv_kx1 = nn.Conv2d(out_channels, out_channels, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=bias)

    @classmethod
    def _from_spec(cls, spec: ConvSpec) -> SeparableConv2d:
        return cls(**spec.kwargs())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(self, x)
        return self.conv_kx1(self.conv_1xk(x))

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.conv_kx1.kernel_size[0], self.conv_1xk.kernel_size[1]

    @property
    def has_bias(self) -> bool:
        return self.conv_1xk.bias is not None or self.conv_kx1.bias is not None

    def describe(self) -> str:
        (kh, kw), d = self.kernel_size, self.out_channels
        return f"1x{kw}:{d} -> {kh}x1:{d}" + geometry_text(self.stride, self.dilation)

    def dense_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The composed filters and bias. With a 1xk bias and vertical padding the bias is exact only away from
        the top and bottom borders (that bias meets the kx1 conv's zero padding there); ``to_dense`` refuses then."""
        h, v = self.conv_1xk, self.conv_kx1  # (D, C, 1, k) then (D, D, k, 1)
        weight = torch.einsum("omy,mcx->ocyx", v.weight[:, :, :, 0], h.weight[:, :, 0, :])
        bias = None
        if h.bias is not None or v.bias is not None:
            bias = v.bias if v.bias is not None else torch.zeros_like(h.bias)
            if h.bias is not None:
                bias = bias + v.weight.sum(dim=(2, 3)) @ h.bias  # the 1xk bias passes through the kx1 conv
        return weight, bias

    @torch.no_grad()
    def to_dense(self) -> nn.Conv2d:
        """One ``nn.Conv2d`` equal to this layer; a ``ConfigError`` if the 1xk conv has a non-zero bias and the kx1
        conv pads vertically (no single conv equals that)."""
        if self.conv_1xk.bias is not None and self.conv_1xk.bias.any() and _pair(self.padding)[0] > 0:
            raise ConfigError(
                "equivalent_dense_conv: this SeparableConv2d's 1xk conv has a non-zero bias, which the kx1 conv's "
                "zero padding cuts off at the borders, so no single conv equals it; keep it factorized"
            )
        return super().to_dense()

    def deploy_forms(self) -> Mapping[str, nn.Module]:
        """``{"factorized": copies of the two convs in sequence}``."""
        return Forms(factorized=lambda: nn.Sequential(copy.deepcopy(self.conv_1xk), copy.deepcopy(self.conv_kx1)))

    @torch.no_grad()
    def fold_affine_(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Into the last conv (``conv_kx1``)."""
        fold_into_(self.conv_kx1, self.conv_kx1.weight, scale, shift)

    @torch.no_grad()
    def reset_parameters(self, mode: InitMode = "fan_out", gain: float = HE_GAIN) -> None:
        """He init of each conv with its own fan (the composite rule for single-group layers); biases zero."""
        he_normal_(self.conv_1xk, mode, gain)
        he_normal_(self.conv_kx1, mode, gain)

    @torch.no_grad()
    def fit_(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Truncated SVD (:func:`~lowrankcnn.layers.fit.fit_separable`); the dense bias goes to the kx1 conv."""
        first, second = fit_separable(weight, self.out_channels)
        self.conv_1xk.weight.copy_(first)
        self.conv_kx1.weight.copy_(second)
        if self.conv_1xk.bias is not None:
            self.conv_1xk.bias.zero_()
        if bias is not None:
            if self.conv_kx1.bias is None:
                raise ConfigError(f"{type(self).__name__}: has no bias to fit a dense bias with")
            self.conv_kx1.bias.copy_(bias)
        elif self.conv_kx1.bias is not None:
            self.conv_kx1.bias.zero_()

    def macs(self, output_hw: tuple[int, int], input_hw: tuple[int, int]) -> int:
        """The 1xk conv at the input height and output width, then the kx1 conv at the output size."""
        (kh, kw), c, d = self.kernel_size, self.in_channels, self.out_channels
        return d * c * kw * input_hw[0] * output_hw[1] + d * d * kh * output_hw[0] * output_hw[1]
