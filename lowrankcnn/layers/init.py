"""Weight initialization of a whole model: ``init_weights_`` (Ioannou et al., docs/reference.md §1.2).

Every conv, linear, batch-norm and rank-1 layer is initialized. The rule for composite
layers is He et al. (2015) initialization generalized to layers made of groups of
differently-shaped filters. On the backward pass the gradient reaching the
input of a composite layer is the sum of every group's contribution, so all
groups share one std computed from the *sum over groups*:

    n_hat = sum_g kernel_h_g * kernel_w_g * n_filters_g,   std = gain * sqrt(1 / n_hat)

with ``gain = sqrt(2)`` for ReLU. For an ordinary conv this is He fan-out
init, ``std = sqrt(2 / (k_h * k_w * out_channels))``.

``mode="fan_in"`` is the forward-pass rule instead. There each output channel
is produced by exactly one group, so each group uses its own fan-in
``in_channels * kernel_h * kernel_w``.

Linear layers always use He fan-in, ``std = sqrt(2 / in_features)``. A
fan-out rule on a 10-way classifier fed by 1024 features would give
``std = sqrt(2 / 10)`` and logits in the hundreds, and training would not start.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import nn

from ..errors import ConfigError
from ._deprecation import renamed_function
from .composite import CompositeConv2d
from .fold import BATCH_NORM_TYPES
from .rank1 import Rank1Conv2d

InitMode = Literal["fan_out", "fan_in"]
INIT_MODES: tuple[InitMode, ...] = get_args(InitMode)


def composite_fan(layer: CompositeConv2d, mode: InitMode = "fan_out") -> list[int]:
    """The ``n_hat`` each basis group of ``layer`` is initialized with, one per group."""
    if mode == "fan_out":
        n_hat = sum(kh * kw * n for kh, kw, n in layer.basis)
        return [n_hat] * len(layer.basis)
    return [layer.in_channels * kh * kw for kh, kw, _ in layer.basis]


def _plain_fan(module: nn.Conv2d | nn.Linear, mode: InitMode) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    receptive = math.prod(module.kernel_size)
    if mode == "fan_out":
        return receptive * module.out_channels // module.groups
    return receptive * module.in_channels // module.groups


def _normal_(module: nn.Conv2d | nn.Linear, n_hat: int, gain: float) -> None:
    nn.init.normal_(module.weight, 0.0, gain / math.sqrt(n_hat))
    if module.bias is not None:
        nn.init.zeros_(module.bias)


@torch.no_grad()
def init_weights_(module: nn.Module, mode: InitMode = "fan_out", gain: float = math.sqrt(2.0)) -> nn.Module:
    """Initialize every conv, linear, batch-norm and rank-1 layer in ``module`` in place; returns ``module``.

    Composite layers get the shared-``n_hat`` rule of docs/reference.md §1.2 for their basis
    groups and plain He init for their join; every other ``nn.Conv2d`` gets
    plain He init with the same ``mode``, and ``nn.Linear`` gets He fan-in.
    ``Rank1Conv2d`` layers are reset so their assembled filters have the He
    variance of the equivalent dense conv. Biases are zeroed;
    batch-norm layers are reset to weight 1, bias 0.
    """
    if mode not in INIT_MODES:
        raise ConfigError(f"init_weights_: mode must be {' or '.join(map(repr, INIT_MODES))}, got {mode!r}")
    handled: set[nn.Module] = set()
    for sub in module.modules():
        if isinstance(sub, CompositeConv2d):
            for conv, n_hat in zip(sub.groups, composite_fan(sub, mode), strict=True):
                _normal_(conv, n_hat, gain)
                handled.add(conv)
        elif isinstance(sub, Rank1Conv2d):
            sub.reset_parameters(mode)
        elif isinstance(sub, (nn.Conv2d, nn.Linear)) and sub not in handled:
            _normal_(sub, _plain_fan(sub, mode), gain)
        elif isinstance(sub, BATCH_NORM_TYPES) and sub.affine:
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
    return module


init_composite_ = renamed_function(init_weights_, "init_composite_")
"""Deprecated alias of :func:`init_weights_` (it never initialized composite layers only)."""
