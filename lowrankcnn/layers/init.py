"""Weight initialization of a whole model: ``init_weights_`` (Ioannou et al., docs/reference.md §1.2).

Every conv, linear, batch-norm and low-rank layer is initialized. The rule for composite
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

import torch
from torch import nn

from ..errors import ConfigError
from ._deprecation import renamed_function
from .base import HE_GAIN, INIT_MODES, InitMode, LowRankConv2d, he_normal_, low_rank_layers
from .composite import composite_fan
from .fold import BATCH_NORM_TYPES

__all__ = ["INIT_MODES", "InitMode", "composite_fan", "init_composite_", "init_weights_", "spectral_init_"]


@torch.no_grad()
def init_weights_(module: nn.Module, mode: InitMode = "fan_out", gain: float = HE_GAIN) -> nn.Module:
    """Initialize every conv, linear, batch-norm and low-rank layer in ``module`` in place; returns ``module``.

    Every low-rank layer (``LowRankConv2d``) initializes itself with ``reset_parameters(mode, gain)``: composite
    layers by the shared-``n_hat`` rule of docs/reference.md §1.2 for their basis groups and plain He init for
    their join, rank-1 layers so that their assembled filters have the He variance of the equivalent dense conv.
    Every other ``nn.Conv2d`` gets plain He init with the same ``mode``, and ``nn.Linear`` gets He fan-in.
    Biases are zeroed; batch-norm layers are reset to weight 1, bias 0.
    """
    if mode not in INIT_MODES:
        raise ConfigError(f"init_weights_: mode must be {' or '.join(map(repr, INIT_MODES))}, got {mode!r}")
    handled: set[nn.Module] = set()
    for sub in module.modules():
        if sub in handled:
            continue
        if isinstance(sub, LowRankConv2d):
            sub.reset_parameters(mode, gain)
            handled.update(sub.modules())
        elif isinstance(sub, (nn.Conv2d, nn.Linear)):
            he_normal_(sub, mode, gain)
        elif isinstance(sub, BATCH_NORM_TYPES) and sub.affine:
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
    return module


@torch.no_grad()
def spectral_init_(module: nn.Module, mode: InitMode = "fan_out", gain: float = HE_GAIN) -> nn.Module:
    """Spectral initialization (Khodak et al., ICLR 2021) of every low-rank layer in ``module``; returns ``module``.

    Each ``LowRankConv2d`` gets the factors its ``fit_`` finds for a dense weight drawn by He init (``mode``,
    ``gain``) for the dense conv it stands for (bias zero): for a channel-rank or separable layer that is the
    truncated SVD of a random Gaussian matrix, whose factors ``U√S`` and ``√S Vᵀ`` have balanced norms. Every other
    layer is left as it is (call :func:`init_weights_` first for a fresh model).

    Raises:
        ConfigError: ``module`` has no low-rank layer, or one that cannot fit its factors to a dense weight.
    """
    if mode not in INIT_MODES:
        raise ConfigError(f"spectral_init_: mode must be {' or '.join(map(repr, INIT_MODES))}, got {mode!r}")
    layers = low_rank_layers(module)
    if not layers:
        raise ConfigError("spectral_init_: the model has no low-rank layer to initialize (convert it first)")
    for layer in layers:
        dense = layer.conv_spec().conv2d().to(next(layer.parameters()).device)
        he_normal_(dense, mode, gain)
        layer.fit_(dense.weight, dense.bias)
    return module


init_composite_ = renamed_function(init_weights_, "init_composite_")
"""Deprecated alias of :func:`init_weights_` (it never initialized composite layers only)."""
