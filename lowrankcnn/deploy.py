"""Deploy transform: an inference-only copy of a model built from standard PyTorch modules.

``deploy(model)`` deep-copies ``model`` in eval mode and replaces every
``Rank1Conv2d`` by standard convs computing it exactly, so a trained rank-1
network runs at its decomposed cost. ``rank1="fused"`` (default) gives a 1x1
conv then one depthwise k_h x k_w conv (measured faster on CPU);
``rank1="chain"`` gives the 1x1 -> depthwise k_h x 1 -> depthwise 1 x k_w
chain. The original model is not modified.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import Rank1Conv2d

RANK1_FORMS = ("fused", "chain")


def _replace(parent: nn.Module, fuse_spatial: bool) -> None:
    for name, child in parent.named_children():
        if isinstance(child, Rank1Conv2d):
            setattr(parent, name, child.deploy(fuse_spatial))
        else:
            _replace(child, fuse_spatial)


@torch.no_grad()
def deploy(model: nn.Module, rank1: str = "fused") -> nn.Module:
    """An eval-mode copy of ``model`` with rank-1 layers decomposed into standard convs."""
    if rank1 not in RANK1_FORMS:
        raise ValueError(f"deploy: rank1 must be one of {', '.join(RANK1_FORMS)}, got {rank1!r}")
    deployed = copy.deepcopy(model).eval()
    if isinstance(deployed, Rank1Conv2d):
        return deployed.deploy(rank1 == "fused")
    _replace(deployed, rank1 == "fused")
    for p in deployed.parameters():
        p.requires_grad_(False)
    return deployed
