"""Helpers shared by the model files."""

from __future__ import annotations

import torch

from ..errors import ShapeError
from ..layers.fold_graph import TRACE_OPAQUE_FUNCTIONS


def check_input(x: torch.Tensor, name: str, in_chans: int, min_input_size: int) -> None:
    """Raise a one-line ``ValueError`` unless ``x`` is ``(N, in_chans, H, W)`` with ``H, W >= min_input_size``."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ShapeError(
            f"{name}: expected a batch of images shaped (N, {in_chans}, H, W), got {tuple(x.shape)}; "
            f"build the model with in_chans={x.shape[1] if x.dim() == 4 else '...'} for other inputs"
        )
    if min(x.shape[-2:]) < min_input_size:
        raise ShapeError(
            f"{name}: input {tuple(x.shape[-2:])} is too small; this architecture needs H and W >= {min_input_size}"
        )


TRACE_OPAQUE_FUNCTIONS.append(check_input)  # torch.fx records the check instead of tracing its shape tests
