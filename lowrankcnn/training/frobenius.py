"""Frobenius decay (Khodak et al., ICLR 2021): weight decay on the *product* of a low-rank layer's factors.

Plain weight decay on factors ``U`` and ``V`` penalizes ``||U||² + ||V||²``, which depends on how the product
``W = U V`` is split between them and pushes the factors towards a balanced split of ever smaller norm. Frobenius
decay penalizes the function instead: ``λ/2 · ||W||_F²`` with ``W`` the layer's dense weight
(``LowRankConv2d.dense_weight()``, ``(C_out, C_in, k_h, k_w)``), summed over the low-rank layers. Its gradient
for a channel-rank layer ``W = B A`` is ``λ W Aᵀ`` for ``B`` and ``λ Bᵀ W`` for ``A``; autograd computes it through
``dense_weight`` for every layer type.

With Frobenius decay on, the factor weights of low-rank layers get no plain weight decay
(:func:`decay_groups`); their biases and every other parameter keep it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers.base import low_rank_layers


def frobenius_penalty(model: nn.Module) -> torch.Tensor:
    """``Σ ||W_l||_F²`` over the low-rank layers ``l`` of ``model`` (a scalar tensor, differentiable in the
    factors; 0 for a model without low-rank layers). The loss term is ``λ/2`` times this."""
    layers = low_rank_layers(model)
    if not layers:
        return torch.zeros(())
    return torch.stack([layer.dense_weight()[0].square().sum() for layer in layers]).sum()


def decay_groups(model: nn.Module, weight_decay: float, frobenius_decay: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: with ``frobenius_decay > 0`` the factor weights of the low-rank layers (every
    parameter of theirs not named ``bias``) have ``weight_decay`` 0, the rest ``weight_decay``; otherwise one
    group with ``weight_decay``. Groups are never empty and keep ``model.parameters()`` order within each."""
    if frobenius_decay <= 0:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    factors = {
        id(p)
        for layer in low_rank_layers(model)
        for name, p in layer.named_parameters()
        if name.rpartition(".")[2] != "bias"
    }
    plain = [p for p in model.parameters() if id(p) not in factors]
    factor_params = [p for p in model.parameters() if id(p) in factors]
    groups = [{"params": plain, "weight_decay": weight_decay}, {"params": factor_params, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
