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


def int_pair(value: int | tuple[int, int], arg: str, layer: str, *, minimum: int = 1) -> tuple[int, int]:
    """``k`` -> ``(k, k)``; a pair of ints ``>= minimum`` is returned as a tuple; anything else is a ``ConfigError``."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or not all(type(v) is int and v >= minimum for v in pair):
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ConfigError(f"{layer}: {arg} must be {what} or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def positive_pair(value: int | tuple[int, int], arg: str, layer: str) -> tuple[int, int]:
    """``k`` -> ``(k, k)``; a pair of positive ints is returned as a tuple; anything else is a ``ConfigError``."""
    return int_pair(value, arg, layer)


def same_padding(kernel_size: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """``((k_h - 1) // 2 * d_h, (k_w - 1) // 2 * d_w)``: "same" padding for odd kernels (floor for even ones)."""
    return tuple((k - 1) // 2 * d for k, d in zip(kernel_size, dilation, strict=True))  # type: ignore[return-value]


def compact(pair: tuple[int, int]) -> int | tuple[int, int]:
    """``(s, s)`` -> ``s``; an uneven pair stays a pair (how the composite and separable layers store their stride)."""
    return pair[0] if pair[0] == pair[1] else pair


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


def conv_geometry(
    layer: str,
    in_channels: object,
    out_channels: object,
    kernel_size: object,
    stride: object,
    padding: object,
    dilation: object,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Check a conv layer's arguments; returns ``(kernel, stride, padding, dilation)`` pairs (``padding=None``:
    "same" padding)."""
    kernel, stride_hw = conv_arguments(layer, in_channels, out_channels, kernel_size, stride)
    dilation_hw = positive_pair(dilation, "dilation", layer)  # type: ignore[arg-type]
    if padding is None:
        return kernel, stride_hw, same_padding(kernel, dilation_hw), dilation_hw
    return kernel, stride_hw, int_pair(padding, "padding", layer, minimum=0), dilation_hw  # type: ignore[arg-type]
