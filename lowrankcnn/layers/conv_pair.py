"""``ConvPair``: the base of the layers that are one ``k_h x k_w`` conv and one 1x1 conv in sequence.

``ChannelRankConv2d`` runs the ``k_h x k_w`` conv first, ``BSConvU`` the 1x1 conv; either way ``conv_kxk`` carries
the dense conv's kernel, stride, padding and dilation, the conv applied last carries the bias, and there is no
activation between. What follows from that lives here: the forward, the geometry, the factorized form (copies of
the two convs), batch-norm folding into the last conv, He init of each conv with its own fan, and setting the two
weights and the bias from a fit.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
from torch import nn

from ..errors import ConfigError
from ._checks import check_layer_input
from .base import HE_GAIN, Forms, InitMode, LowRankConv2d, fold_into_, he_normal_


class ConvPair(LowRankConv2d):
    """``conv_kxk`` and ``conv_1x1`` (attributes set by the subclass), applied in the order ``order`` names."""

    order: ClassVar[tuple[Literal["conv_kxk", "conv_1x1"], Literal["conv_kxk", "conv_1x1"]]]
    conv_kxk: nn.Conv2d
    conv_1x1: nn.Conv2d

    @property
    def convs(self) -> tuple[nn.Conv2d, nn.Conv2d]:
        """The two convs, in the order they are applied."""
        first, last = self.order
        return getattr(self, first), getattr(self, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(self, x)
        first, last = self.convs
        return last(first(x))

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.conv_kxk.kernel_size

    @property
    def stride(self) -> tuple[int, int]:
        return self.conv_kxk.stride

    @property
    def padding(self) -> tuple[int, int]:
        return self.conv_kxk.padding

    @property
    def dilation(self) -> tuple[int, int]:
        return self.conv_kxk.dilation

    @property
    def bias(self) -> torch.Tensor | None:
        return self.convs[1].bias

    def deploy_forms(self) -> Mapping[str, nn.Module]:
        """``{"factorized": copies of the two convs in sequence}``."""
        return Forms(factorized=lambda: nn.Sequential(*(copy.deepcopy(conv) for conv in self.convs)))

    @torch.no_grad()
    def fold_affine_(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Into the conv applied last."""
        last = self.convs[1]
        fold_into_(last, last.weight, scale, shift)

    @torch.no_grad()
    def reset_parameters(self, mode: InitMode = "fan_out", gain: float = HE_GAIN) -> None:
        """He init of each conv with its own fan (a depthwise conv's is ``k_h k_w``); bias zero."""
        for conv in self.convs:
            he_normal_(conv, mode, gain)

    @torch.no_grad()
    def _set_fit_(self, kxk: torch.Tensor, pointwise: torch.Tensor, bias: torch.Tensor | None) -> None:
        """The fitted weights of ``conv_kxk`` and ``conv_1x1`` (any dtype and device: converted); the dense ``bias``
        goes to the conv applied last (zero for ``None``; a ``ConfigError`` if that conv has no bias to hold it)."""
        last = self.convs[1]
        if bias is not None and last.bias is None:
            raise ConfigError(f"{type(self).__name__}: has no bias to fit a dense bias with")
        self.conv_kxk.weight.copy_(kxk)
        self.conv_1x1.weight.copy_(pointwise)
        if last.bias is not None:
            last.bias.copy_(torch.zeros_like(last.bias) if bias is None else bias)
