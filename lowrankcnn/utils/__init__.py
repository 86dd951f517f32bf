"""Generic helpers that no feature package owns: atomic file output, devices by name."""

from .device import model_device, resolve_device
from .io import atomic_path, atomic_write_bytes, atomic_write_text

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "model_device", "resolve_device"]
