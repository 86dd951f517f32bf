"""Running several modules on one input and concatenating their outputs on the channel axis."""

from __future__ import annotations

import torch
from torch import nn


class ParallelConcat(nn.ModuleList):
    """``torch.cat([m(x) for m in self], dim=1)``: the factorized deploy form of a composite layer.

    Every branch must give outputs of the same ``(N, *, H', W')`` shape; channels add up.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self], dim=1)
