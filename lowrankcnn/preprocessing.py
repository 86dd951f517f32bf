"""A trained model's input contract: how raw images become what it was trained on.

:class:`Preprocessing` records the normalization (mean, std per channel, applied to pixel values scaled to
0..1), the input size and how images are brought to it, and the class names; ``export`` writes it into the
file's metadata, and :class:`Normalize` bakes the normalization into a graph that then takes raw pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ConfigError


@dataclass(frozen=True)
class Preprocessing:
    """What an exported model's input must be: ``(x / 255 - mean) / std`` per channel of pixels ``x`` in 0..255.

    Attributes:
        mean, std: per-channel statistics (``len == in_chans``, ``std > 0``).
        input_size: the square side the model was exported for.
        class_names: the label of each output logit, in order.
        dataset: the training data set's name.
        geometry: how the data set's images were brought to ``input_size`` (padding or resize and crop).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    class_names: tuple[str, ...] = ()
    dataset: str = ""
    geometry: str = ""

    def __post_init__(self) -> None:
        if not self.mean or len(self.mean) != len(self.std):
            raise ConfigError(f"Preprocessing: $mean {self.mean!r} and $std {self.std!r} need one value per channel")
        if not all(math.isfinite(m) for m in self.mean) or not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ConfigError(f"Preprocessing: $mean {self.mean!r} must be finite and $std {self.std!r} positive")

    @property
    def in_chans(self) -> int:
        return len(self.mean)

    @classmethod
    def from_data_info(cls, info: Mapping[str, Any], input_size: int | None = None) -> Preprocessing:
        """From a checkpoint's ``data_info``; one without ``mean``/``std`` (before lowrankcnn 0.2) gets the
        normalization its data set is trained with (:func:`lowrankcnn.data.normalization`)."""
        if "mean" in info and "std" in info:
            mean, std = info["mean"], info["std"]
        else:
            from .data import normalization

            mean, std = normalization(info["name"], info["in_chans"])
        size = int(input_size or info["input_size"])
        return cls(
            tuple(float(m) for m in mean),
            tuple(float(s) for s in std),
            size,
            tuple(str(c) for c in info.get("class_names") or ()),
            str(info.get("name", "")),
            _geometry(str(info.get("name", "")), size),
        )

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(pixels / 255 - mean) / std`` of a float batch ``(N, C, H, W)`` of values 0..255."""
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        return (pixels / 255 - mean) / std

    def input_range(self, included: bool) -> str:
        if included:
            return "raw pixel values 0..255 (the model normalizes them itself)"
        return "normalized pixels: (x / 255 - mean) / std per channel, for pixel values x in 0..255"

    def metadata(self, included: bool, model: str = "") -> dict[str, str]:
        """What an exported file records, for a file that does (``included``) or does not normalize its input.

        ``input_layout`` (``NCHW``), ``input_shape`` (JSON ``["N", C, H, W]``), ``input_dtype`` (``float32``),
        ``input_range``, ``input_geometry`` (how training images were padded or resized to the input size),
        ``normalization_included`` (``true``/``false``), ``mean`` and ``std`` (JSON lists: normalized =
        ``(x / 255 - mean) / std`` for pixels ``x`` in 0..255), ``class_names`` (JSON list, index = logit),
        ``dataset``, ``model``, ``output``, ``lowrankcnn_version``.
        """
        from . import __version__

        return {
            "input_layout": "NCHW",
            "input_shape": json.dumps(["N", self.in_chans, self.input_size, self.input_size]),
            "input_dtype": "float32",
            "input_range": self.input_range(included),
            "input_geometry": self.geometry,
            "normalization_included": "true" if included else "false",
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "class_names": json.dumps(list(self.class_names)),
            "dataset": self.dataset,
            "model": model,
            "output": f"logits (N, {len(self.class_names) or 'classes'})",
            "lowrankcnn_version": __version__,
        }


def _geometry(dataset: str, size: int) -> str:
    """How ``build_data`` brings ``dataset``'s images to ``size`` x ``size`` (as evaluation does it)."""
    from .data import loaders
    from .data.imagefolder import default_resize

    spec = getattr(loaders, "TENSOR_SPECS", {}).get(dataset)
    if spec is not None:
        pad = (size - spec.input_size) // 2
        native = f"{spec.input_size}x{spec.input_size} images"
        return native if pad <= 0 else f"{native} zero-padded (pixel value 0) by {pad} on every side"
    if dataset == "imagefolder":
        return f"shorter side resized to {default_resize(size)} (bilinear), then the center {size}x{size} crop"
    return ""


class Normalize(nn.Module):
    """``(x / 255 - mean) / std`` per channel of a batch ``(N, C, H, W)`` of raw pixel values (one fused
    multiply-add: ``x * scale + shift``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
        self.register_buffer("scale", (1 / (255 * std_t)).float())
        self.register_buffer("shift", (-mean_t / std_t).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift
