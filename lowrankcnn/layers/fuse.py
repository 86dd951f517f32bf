"""Fusing a layer into its dense form: the one ``nn.Conv2d`` that equals it.

Every low-rank layer is linear up to its bias, so it equals one ``nn.Conv2d``
whose ``(C_out, C_in, k_h, k_w)`` weight is the composed filters. In this package
"dense" means exactly that single-conv equivalent, and "fuse" means building it
(:meth:`~lowrankcnn.layers.base.LowRankConv2d.to_dense` for a low-rank layer).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .base import LowRankConv2d
from .conv_from_weights import conv2d_from_weights

FUSABLE: tuple[type[nn.Module], ...] = (nn.Conv2d, LowRankConv2d)


def dense_filters(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int], tuple[int, int]]:
    """``(weight, bias, stride, padding)`` of the one undilated dense conv equal to ``module``.

    Raises ``ConfigError`` for a grouped or dilated conv (low-rank or not) or any other module type. For a
    ``SeparableConv2d`` whose 1xk conv has a bias the returned bias is exact only away from the top and bottom
    borders (see its ``dense_weight``); ``equivalent_dense_conv`` refuses such a layer.
    """
    if isinstance(module, LowRankConv2d):
        spec = module.conv_spec()
        if spec.dilation != (1, 1):
            raise ConfigError(f"dense_filters: {type(module).__name__} is dilated {spec.dilation}; use its to_dense()")
        weight, bias = module.dense_weight()
        return weight, bias, spec.stride, spec.padding
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.dilation == (1, 1):
        if isinstance(module.padding, str):
            raise ConfigError(f"dense_filters: string padding {module.padding!r} is not supported")
        return module.weight, module.bias, module.stride, module.padding
    raise ConfigError(f"dense_filters: no dense equivalent for {type(module).__name__}")


@torch.no_grad()
def equivalent_dense_conv(module: nn.Module) -> nn.Conv2d:
    """The dense form of ``module``: one ``nn.Conv2d`` computing exactly what it computes."""
    if isinstance(module, LowRankConv2d):
        return module.to_dense()
    return conv2d_from_weights(*dense_filters(module))
