"""Devices by name, checked against this machine; the device a model lives on."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, checked against this machine.

    Raises:
        ConfigError: an unknown device name, or CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown $device {name!r}; use auto, cpu, cuda or cuda:N", param="device") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"$device {name!r} is not supported; use auto, cpu, cuda or cuda:N", param="device")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"$device {name!r}: CUDA is not available on this machine; use cpu", param="device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"$device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)", param="device"
            )
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
