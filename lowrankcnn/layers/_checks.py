"""Argument and input checks shared by the layers, each raising the library's own errors."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, ShapeError


def positive_int(value: object, arg: str, layer: str, *, optional: bool = False) -> int | None:
    """``value`` if it is a positive ``int`` (not a bool), else a ``ConfigError`` naming ``layer`` and ``arg``.

    ``optional``: ``None`` is accepted (and returned) as well.
    """
    if optional and value is None:
        return None
    if type(value) is not int or value <= 0:
        what = "None or a positive integer" if optional else "a positive integer"
        raise ConfigError(f"{layer}: {arg} must be {what}, got {value!r}")
    return value


def positive_pair(value: int | tuple[int, int], arg: str, layer: str) -> tuple[int, int]:
    """``k`` -> ``(k, k)``; a pair of positive ints is returned as a tuple; anything else is a ``ConfigError``."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or not all(type(v) is int and v > 0 for v in pair):
        raise ConfigError(f"{layer}: {arg} must be a positive int or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def check_layer_input(layer: nn.Module, x: torch.Tensor) -> None:
    """A ``ShapeError`` unless ``x`` is ``(N, layer.in_channels, H, W)``."""
    if x.dim() != 4 or x.shape[1] != layer.in_channels:
        raise ShapeError(
            f"{type(layer).__name__}: expected input of shape (N, {layer.in_channels}, H, W), got {tuple(x.shape)}"
        )


def conv_arguments(
    layer: str, in_channels: object, out_channels: object, kernel_size: object, stride: object
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Check a conv layer's channels, kernel size and stride; returns ``((k_h, k_w), (s_h, s_w))``."""
    positive_int(in_channels, "in_channels", layer)
    positive_int(out_channels, "out_channels", layer)
    return positive_pair(kernel_size, "kernel_size", layer), positive_pair(stride, "stride", layer)  # type: ignore[arg-type]
