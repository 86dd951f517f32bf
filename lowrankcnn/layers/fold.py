"""Folding batch norm into the layer before it.

In eval mode a batch norm is a per-channel affine map ``y -> scale * y + shift``.
Every layer here computes a linear map plus a per-output-channel bias, so the
affine map can be moved into its last weights and its bias exactly:
``fold_affine_(layer, scale, shift)`` rewrites ``layer`` in place so that it
computes ``scale * layer(x) + shift`` (channel axis 1).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .composite import CompositeConv2d
from .rank1 import ConsecutiveConv2d, Rank1Conv2d
from .separable import SeparableConv2d

BatchNorm = (nn.BatchNorm1d, nn.BatchNorm2d)


def batchnorm_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of ``bn`` in eval mode: ``bn(y) = scale * y + shift`` per channel.

    Raises ``ValueError`` for a batch norm without running statistics (it normalizes by the
    batch's own statistics even in eval mode, which no fixed affine map reproduces).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError(f"{type(bn).__name__} without running statistics cannot be folded")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.weight is not None:
        scale = scale * bn.weight
        shift = shift * bn.weight
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


def _fold_into(module: nn.Module, weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``weight[o] *= scale[o]``; ``module.bias = scale * bias + shift`` (a bias is created if absent)."""
    weight.mul_(scale.reshape(-1, *[1] * (weight.dim() - 1)))
    if module.bias is None:
        module.bias = nn.Parameter(shift.clone().to(weight), requires_grad=weight.requires_grad)
    else:
        module.bias.mul_(scale).add_(shift)


@torch.no_grad()
def fold_affine_(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> bool:
    """Make ``module`` compute ``scale * module(x) + shift``; return False if it cannot.

    Supported: ``nn.Conv2d`` (any groups), ``nn.Linear``, ``CompositeConv2d`` (into the join,
    or each basis group's slice), ``SeparableConv2d`` (its last conv), ``Rank1Conv2d`` (channel
    vectors or projected weight), ``ConsecutiveConv2d`` (its last conv) and an ``nn.Sequential``
    whose last module is one of these.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        if module.weight.shape[0] != scale.numel():
            return False
        _fold_into(module, module.weight, scale, shift)
        return True
    if isinstance(module, nn.Sequential):
        return len(module) > 0 and fold_affine_(module[-1], scale, shift)
    if getattr(module, "out_channels", None) != scale.numel():
        return False
    if isinstance(module, CompositeConv2d):
        if module.join is not None:
            return fold_affine_(module.join, scale, shift)
        start = 0
        for conv in module.groups:
            n = conv.out_channels
            _fold_into(conv, conv.weight, scale[start : start + n], shift[start : start + n])
            start += n
        return True
    if isinstance(module, SeparableConv2d):
        return fold_affine_(module.vertical, scale, shift)
    if isinstance(module, ConsecutiveConv2d):
        return fold_affine_(module.horizontal, scale, shift)
    if isinstance(module, Rank1Conv2d):
        _fold_into(module, module.channel if module.scheme == "factors" else module.weight, scale, shift)
        return True
    return False


@torch.no_grad()
def fold_batchnorms_(model: nn.Module) -> list[str]:
    """Fold every batch norm that directly follows a foldable layer in an ``nn.Sequential``.

    The folded batch norms are replaced by ``nn.Identity`` (names kept); others stay. Returns the
    qualified names of the folded batch norms. Call on an eval-mode copy: it rewrites weights.
    """
    folded: list[str] = []
    for prefix, parent in list(model.named_modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for before, name in zip(names, names[1:], strict=False):
            bn = parent._modules[name]
            if not isinstance(bn, BatchNorm) or bn.running_mean is None:
                continue
            if fold_affine_(parent._modules[before], *batchnorm_affine(bn)):
                parent._modules[name] = nn.Identity()
                folded.append(f"{prefix}.{name}" if prefix else name)
    return folded
