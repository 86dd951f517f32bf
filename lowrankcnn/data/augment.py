"""Batch augmentation on uint8 image tensors: fixed zero padding, random crop, horizontal flip, normalization.

Randomness is drawn per batch as :class:`AugmentParams` (:meth:`BatchAugment.draw_params`) and applied separately
(:meth:`BatchAugment.apply`), so a data-parallel rank can draw the parameters of the *global* batch and apply
its own slice of them, getting exactly what a single process would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError


@dataclass(frozen=True)
class AugmentParams:
    """Random parameters for ``n`` images.

    Attributes:
        offsets: int64 ``(n, 2)``: ``(top, left)`` of each crop in the zero-padded image, in ``0..2*padding``;
            ``(padding, padding)`` leaves the image in place.
        flips: bool ``(n,)``: mirror the image left-right.
    """

    offsets: torch.Tensor
    flips: torch.Tensor

    def __len__(self) -> int:
        return len(self.flips)

    def __getitem__(self, index: slice) -> AugmentParams:
        """The parameters of images ``index`` (e.g. one rank's slice of a global batch)."""
        return AugmentParams(self.offsets[index], self.flips[index])


class BatchAugment:
    """Augment and normalize batches of uint8 images ``(N, C, H, W)`` into float32 ``(N, C, H + 2*pad, W + 2*pad)``.

    Each image is first zero-padded by ``pad`` on every side (a fixed border: how a dataset is brought to a larger
    input size one batch at a time, never the whole set at once). Then it is (optionally) zero-padded by
    ``crop_padding`` more and cropped back at a random offset, (optionally) mirrored with probability 1/2, and
    normalized as ``(x / 255 - mean) / std``. Padding is black (zero before normalization), as with torchvision's
    ``RandomCrop(padding=...)``.

    Args:
        mean: per-channel means of ``x / 255`` (length ``C``, or 1 to broadcast).
        std: per-channel standard deviations, same length as ``mean``.
        crop_padding: pixels of zero padding for the random crop; 0 disables cropping.
        flip: random horizontal flips.
        pad: pixels of fixed zero padding on every side, applied before anything else.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], crop_padding: int = 0, flip: bool = False, pad: int = 0
    ) -> None:
        if len(mean) != len(std) or not mean:
            raise ConfigError(
                f"BatchAugment: $mean {list(mean)} and $std {list(std)} must have the same, nonzero length",
                param="mean",
            )
        for name, value in (("crop_padding", crop_padding), ("pad", pad)):
            if type(value) is not int or value < 0:
                raise ConfigError(f"BatchAugment: ${name} must be an integer >= 0, got {value!r}", param=name)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.crop_padding = crop_padding
        self.flip = flip
        self.pad = pad

    @property
    def random(self) -> bool:
        """Whether any random augmentation is enabled."""
        return self.crop_padding > 0 or self.flip

    def __repr__(self) -> str:
        return (
            f"BatchAugment(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}, "
            f"crop_padding={self.crop_padding}, flip={self.flip}, pad={self.pad})"
        )

    def draw_params(self, n: int, generator: torch.Generator) -> AugmentParams:
        """Draw parameters for ``n`` images from ``generator``: first the offsets (if cropping), then the flips
        (if flipping). Disabled parts are constant and consume no randomness."""
        p = self.crop_padding
        if p > 0:
            offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator)
        else:
            offsets = torch.zeros(n, 2, dtype=torch.int64)
        if self.flip:
            flips = torch.randint(0, 2, (n,), generator=generator).bool()
        else:
            flips = torch.zeros(n, dtype=torch.bool)
        return AugmentParams(offsets, flips)

    def apply(self, x: torch.Tensor, params: AugmentParams | None) -> torch.Tensor:
        """Pad ``x`` (uint8 ``(N, C, H, W)``), crop and flip it as ``params`` say, then normalize; ``None``: pad and
        normalize only."""
        if x.ndim != 4 or x.dtype != torch.uint8:
            raise ShapeError(f"BatchAugment: expected uint8 (N, C, H, W) images, got {x.dtype} {tuple(x.shape)}")
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
        if params is not None and self.random:
            if len(params) != len(x):
                raise ShapeError(f"BatchAugment: {len(params)} parameter sets for {len(x)} images")
            x = self._crop_flip(x, params.offsets.to(x.device), params.flips.to(x.device))
        return self.normalize(x)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment with fresh parameters drawn from ``generator``; with ``None``, pad and normalize only."""
        return self.apply(x, None if generator is None else self.draw_params(len(x), generator))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x / 255 - mean) / std`` as float32."""
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return x.to(torch.float32).div_(255).sub_(mean).div_(std)

    def _crop_flip(self, x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """One gather: output pixel ``(i, j)`` of image ``k`` is padded pixel ``(top_k + i, left_k + j)``, or
        ``(top_k + i, left_k + W - 1 - j)`` when image ``k`` is flipped."""
        n, c, h, w = x.shape
        p = self.crop_padding
        padded = F.pad(x, (p, p, p, p)) if p > 0 else x
        rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (n, h)
        cols = torch.arange(w, device=x.device).expand(n, w)
        cols = torch.where(flips[:, None], cols.flip(1), cols) + offsets[:, 1:]  # (n, w)
        index = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        return padded.flatten(2).gather(2, index).view(n, c, h, w)
