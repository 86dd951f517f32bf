"""The zoo checked against the papers: ``compare_published(name)`` counts a model as the paper did.

Published MAC figures use the paper's convention (one extra MAC per bias) and, for GoogLeNet, include
the training-only auxiliary heads (``ModelInfo.published_in_training``). A model is comparable only at
its native input size, class count and width; otherwise there is nothing published to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..profiling import profile
from .registry import create_model, model_info


@dataclass(frozen=True)
class PublishedCheck:
    """One model's counts next to its paper's.

    ``macs`` is the standard inference count (1 MAC = 2 FLOPs); ``paper_convention_macs`` counts as the paper
    did; ``vs_published`` is ``paper_convention_macs / published_macs - 1`` (0.0: exact). The last three are
    ``None`` when nothing comparable was published.
    """

    model: str
    input_size: int
    params: int
    macs: int
    paper_convention_macs: int | None
    published_macs: int | None
    vs_published: float | None
    notes: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "input_size": self.input_size,
            "params": self.params,
            "macs": self.macs,
            "paper_convention_macs": self.paper_convention_macs,
            "published_macs": self.published_macs,
            "vs_published": self.vs_published,
        }


def compare_published(
    name: str,
    input_size: int | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    width_mult: float = 1.0,
) -> PublishedCheck:
    """Count ``name`` (on the meta device: nothing is allocated) and compare it with the published MACs.

    ``input_size`` etc. default to the model's native ones; any other value still counts the model, with
    nothing to compare (the published columns are ``None``).
    """
    info = model_info(name)
    size = info.input_size if input_size is None else input_size
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)
    counted = profile(model, size)
    published = info.published.get("macs")
    native = size == info.input_size and width_mult == 1.0 and num_classes in (None, info.num_classes)
    if published is None or not native or in_chans not in (None, info.in_chans):
        return PublishedCheck(name, size, counted.params, counted.macs, None, None, None, info.notes)
    paper = profile(model, size, convention="paper", training=info.published_in_training).macs
    return PublishedCheck(
        name, size, counted.params, counted.macs, paper, int(published), paper / published - 1.0, info.notes
    )
