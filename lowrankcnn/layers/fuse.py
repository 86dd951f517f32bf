"""Fusing a low-rank layer into its dense form: the one ``nn.Conv2d`` that equals it.

Every layer here is linear up to its bias, so it equals one ``nn.Conv2d``
whose ``(C_out, C_in, k_h, k_w)`` weight is the composed filters. In this package
"dense" means exactly that single-conv equivalent, and "fuse" means building it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .composite import CompositeConv2d
from .conv_from_weights import conv2d_from_weights
from .decompose import assemble
from .rank1 import ConsecutiveConv2d, Rank1Conv2d
from .separable import SeparableConv2d

FUSABLE: tuple[type[nn.Module], ...] = (nn.Conv2d, CompositeConv2d, SeparableConv2d, Rank1Conv2d, ConsecutiveConv2d)


def dense_filters(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int], tuple[int, int]]:
    """``(weight, bias, stride, padding)`` of the one dense conv equal to ``module``.

    Raises ``ValueError`` for a grouped ``nn.Conv2d`` or any other module type. For a
    ``SeparableConv2d`` whose 1xk conv has a bias the returned bias is exact only away from the
    top and bottom borders (that bias meets the kx1 conv's zero padding there);
    ``equivalent_dense_conv`` refuses such a layer.
    """
    if isinstance(module, CompositeConv2d):
        weight, bias = module.dense_weight()
        return weight, bias, (module.stride, module.stride), module.dense_padding
    if isinstance(module, Rank1Conv2d):
        return module.assembled_weight(), module.bias, module.stride, module.padding
    if isinstance(module, ConsecutiveConv2d):
        return assemble(*module.factors()), module.bias, module.stride, module.padding
    if isinstance(module, SeparableConv2d):
        h, v = module.conv_1xk, module.conv_kx1  # (D, C, 1, k) then (D, D, k, 1)
        weight = torch.einsum("omy,mcx->ocyx", v.weight[:, :, :, 0], h.weight[:, :, 0, :])
        bias = None
        if h.bias is not None or v.bias is not None:
            bias = v.bias if v.bias is not None else torch.zeros_like(h.bias)
            if h.bias is not None:
                bias = bias + v.weight.sum(dim=(2, 3)) @ h.bias  # the 1xk bias passes through the kx1 conv
        return weight, bias, (v.stride[0], h.stride[1]), (v.padding[0], h.padding[1])
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.dilation == (1, 1):
        if isinstance(module.padding, str):
            raise ConfigError(f"dense_filters: string padding {module.padding!r} is not supported")
        return module.weight, module.bias, module.stride, module.padding
    raise ConfigError(f"dense_filters: no dense equivalent for {type(module).__name__}")


@torch.no_grad()
def equivalent_dense_conv(module: nn.Module) -> nn.Conv2d:
    """The dense form of ``module``: one ``nn.Conv2d`` computing exactly what it computes."""
    if isinstance(module, SeparableConv2d) and module.conv_1xk.bias is not None and module.conv_1xk.bias.any():
        raise ConfigError(
            "equivalent_dense_conv: this SeparableConv2d's 1xk conv has a non-zero bias, which the kx1 conv's "
            "zero padding cuts off at the borders, so no single conv equals it; keep it factorized"
        )
    return conv2d_from_weights(*dense_filters(module))
