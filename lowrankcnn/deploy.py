"""Deploy transform: an inference-only copy of a model built from standard PyTorch modules.

``deploy(model)`` deep-copies ``model`` in eval mode and replaces every
``Rank1Conv2d`` by its exact 1-D chain (1x1 conv -> depthwise k_h x 1 ->
depthwise 1 x k_w), so a trained rank-1 network runs at its decomposed cost.
The original model is not modified.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import Rank1Conv2d


def _replace(parent: nn.Module) -> None:
    for name, child in parent.named_children():
        if isinstance(child, Rank1Conv2d):
            setattr(parent, name, child.deploy())
        else:
            _replace(child)


@torch.no_grad()
def deploy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with rank-1 layers decomposed into standard convs."""
    deployed = copy.deepcopy(model).eval()
    if isinstance(deployed, Rank1Conv2d):
        return deployed.deploy()
    _replace(deployed)
    for p in deployed.parameters():
        p.requires_grad_(False)
    return deployed
