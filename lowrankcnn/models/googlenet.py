"""GoogLeNet (Caffe's bvlc_googlenet) and its low-rank variants (docs/reference.md §1.6).

``googlenet_lr`` replaces, inside every inception module, each 3x3 conv by a
composite 3x1 | 1x3 layer with half the filters in each group and each 5x5
by 5x1 | 1x5 halves. ``googlenet_lr_conv1`` also makes conv1 (7x7/2) a
7x1 | 1x7 composite and conv2's 3x3 a 3x1 | 1x3 composite.

The two auxiliary classifiers (after inception 4a and 4d) run in training mode
only; then ``forward`` returns ``GoogLeNetOutputs(logits, aux1, aux2)``, in
eval mode just the logits ``(N, num_classes)``. Pools round up, as in Caffe.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import create_lowrank_conv, init_weights_
from ..layers.init import InitMode
from ._common import check_input
from .cfg import model_label
from .registry import register_model, scale_width


class GoogLeNetOutputs(NamedTuple):
    """Training-mode outputs: main logits and the two auxiliary heads' logits."""

    logits: torch.Tensor
    aux1: torch.Tensor
    aux2: torch.Tensor


def spatial_conv(c: int, d: int, k: int, stride: int = 1, lowrank: bool = False) -> nn.Module:
    """A k x k conv, or the composite k x 1, D/2 | 1 x k, D/2 when ``lowrank`` ("same" padding)."""
    return create_lowrank_conv("lr" if lowrank else "dense", c, d, k, stride)


def conv_relu(conv: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU(inplace=True)))


class Inception(nn.Module):
    """Four parallel branches concatenated: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1.

    ``(N, in_channels, H, W)`` -> ``(N, ch1 + ch3 + ch5 + pool_proj, H, W)``.
    """

    def __init__(
        self, c: int, ch1: int, ch3_red: int, ch3: int, ch5_red: int, ch5: int, pool_proj: int, lowrank: bool
    ) -> None:
        super().__init__()
        self.branch1 = conv_relu(nn.Conv2d(c, ch1, 1))
        self.branch3 = nn.Sequential(
            conv_relu(nn.Conv2d(c, ch3_red, 1)), conv_relu(spatial_conv(ch3_red, ch3, 3, lowrank=lowrank))
        )
        self.branch5 = nn.Sequential(
            conv_relu(nn.Conv2d(c, ch5_red, 1)), conv_relu(spatial_conv(ch5_red, ch5, 5, lowrank=lowrank))
        )
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_relu(nn.Conv2d(c, pool_proj, 1)))
        self.out_channels = ch1 + ch3 + ch5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


class AuxHead(nn.Module):
    """Auxiliary classifier: 5x5/3 avg pool -> 1x1,128 -> fc 1024 -> dropout 0.7 -> fc classes.

    The pool's output is 4x4 at 224x224 input; on smaller inputs an adaptive
    average pool brings it to 4x4 (a no-op at 224x224).
    """

    def __init__(self, c: int, num_classes: int, width_mult: float, dropout: float = 0.7) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3, ceil_mode=True)
        self.conv = conv_relu(nn.Conv2d(c, scale_width(128, width_mult), 1))
        self.fc = nn.Linear(scale_width(128, width_mult) * 16, scale_width(1024, width_mult))
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(scale_width(1024, width_mult), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) >= 5:
            x = self.pool(x)
        x = torch.flatten(self.conv(F.adaptive_avg_pool2d(x, 4)), 1)
        return self.classifier(self.drop(torch.relu(self.fc(x))))


# name -> (ch1, ch3_reduce, ch3, ch5_reduce, ch5, pool_proj); "pool" = 3x3/2 max pool
INCEPTIONS: tuple[tuple[str, tuple[int, ...]] | str, ...] = (
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    "pool",
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    "pool",
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
)


class GoogLeNet(nn.Module):
    """GoogLeNet with optional low-rank inception and stem convs.

    Args:
        lowrank_inception: composite 3x1|1x3 and 5x1|1x5 layers inside inception modules.
        lowrank_stem: composite conv1 (7x1|1x7, stride 2) and conv2 (3x1|1x3).
        aux_logits: build the two auxiliary heads (used in training mode only).
        num_classes, in_chans, width_mult: as in ``create_model``.
        dropout: before the final classifier (0.4 in Caffe).
        init_mode: the model initializes itself with ``init_weights_(self, init_mode)``; fan-in by default,
            because fan-out init grows the activations ~30x through the narrowing 1x1 reduce convs.

    Input ``(N, in_chans, H, W)`` with ``H, W >= 31``.
    """

    min_input_size = 31

    def __init__(
        self,
        lowrank_inception: bool = False,
        lowrank_stem: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        aux_logits: bool = True,
        dropout: float = 0.4,
        init_mode: InitMode = "fan_in",
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        w = lambda c: scale_width(c, width_mult)  # noqa: E731
        self.stem = nn.Sequential(
            OrderedDict(
                conv1=conv_relu(spatial_conv(in_chans, w(64), 7, 2, lowrank_stem)),
                pool1=nn.MaxPool2d(3, 2, ceil_mode=True),
                norm1=nn.LocalResponseNorm(5, 1e-4, 0.75),
                conv2_reduce=conv_relu(nn.Conv2d(w(64), w(64), 1)),
                conv2=conv_relu(spatial_conv(w(64), w(192), 3, 1, lowrank_stem)),
                norm2=nn.LocalResponseNorm(5, 1e-4, 0.75),
                pool2=nn.MaxPool2d(3, 2, ceil_mode=True),
            )
        )
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        c = w(192)
        for i, spec in enumerate(INCEPTIONS):
            if spec == "pool":
                blocks[f"pool{i}"] = nn.MaxPool2d(3, 2, ceil_mode=True)
                continue
            name, widths = spec
            block = Inception(c, *(w(v) for v in widths), lowrank=lowrank_inception)
            blocks[f"inception{name}"] = block
            c = block.out_channels
        self.blocks = nn.Sequential(blocks)
        self.aux1 = AuxHead(self.blocks.inception4a.out_channels, num_classes, width_mult) if aux_logits else None
        self.aux2 = AuxHead(self.blocks.inception4d.out_channels, num_classes, width_mult) if aux_logits else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(c, num_classes)
        init_weights_(self, init_mode)

    def test_params(self) -> int:
        """Parameters used at test time less the final classifier (the paper's "test params")."""
        skip = {id(p) for m in (self.aux1, self.aux2, self.fc) if m is not None for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        check_input(x, model_label(self), self.in_chans, self.min_input_size)
        x = self.stem(x)
        aux: list[torch.Tensor] = []
        for name, block in self.blocks.named_children():
            x = block(x)
            head = {"inception4a": self.aux1, "inception4d": self.aux2}.get(name)
            if head is not None and self.training:
                aux.append(head(x))
        logits = self.fc(self.drop(torch.flatten(self.pool(x), 1)))
        return GoogLeNetOutputs(logits, *aux) if aux else logits


_NOTE = (
    "Published ILSVRC figures (Ioannou et al. 2016). MACs include both auxiliary heads (profile "
    "with training=True, paper convention); 'test_params' exclude the auxiliary heads and the "
    "final classifier."
)
_GOOGLENET = {
    "classifier": "fc",
    "published_in_training": True,
    "kwargs_of": GoogLeNet,
    "user_kwargs": ("aux_logits", "dropout"),
    "min_input_size": GoogLeNet.min_input_size,
    # no batch norm: SGD at 0.02 barely moves in the first epochs, AdamW learns at once
    "recipe": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
}
_LR_NOTE = (
    _NOTE + " The published MACs of the low-rank variants are 6-14% above what the structure gives "
    "(the original asymmetric convs seem to have been computed on padded, then cropped, outputs)."
)


@register_model(
    224,
    1000,
    published={"macs": 1_591_056_680, "test_params": 5_973_552, "top1": 0.677, "top5": 0.883},
    notes=_NOTE,
    baseline=None,
    **_GOOGLENET,
)
def googlenet(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> GoogLeNet:
    """Caffe's bvlc_googlenet (inception 3a-5b, auxiliary heads at 4a and 4d)."""
    return GoogLeNet(False, False, num_classes, in_chans, width_mult, **kwargs)


@register_model(
    224,
    1000,
    published={"macs": 1_178_239_528, "test_params": 3_503_664, "top1": 0.673, "top5": 0.880},
    notes=_LR_NOTE,
    baseline="googlenet",
    **_GOOGLENET,
)
def googlenet_lr(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> GoogLeNet:
    """GoogLeNet with every inception 3x3 -> 3x1|1x3 halves and 5x5 -> 5x1|1x5 halves."""
    return GoogLeNet(True, False, num_classes, in_chans, width_mult, **kwargs)


@register_model(
    224,
    1000,
    published={"macs": 837_542_440, "test_params": 3_421_872, "top1": 0.659, "top5": 0.870},
    notes=_LR_NOTE,
    baseline="googlenet",
    **_GOOGLENET,
)
def googlenet_lr_conv1(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> GoogLeNet:
    """googlenet_lr plus conv1 7x7 -> 7x1|1x7 halves and conv2 3x3 -> 3x1|1x3 halves."""
    return GoogLeNet(True, True, num_classes, in_chans, width_mult, **kwargs)
