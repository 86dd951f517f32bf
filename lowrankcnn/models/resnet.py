"""ResNet (He et al. 2016): the ImageNet family in torchvision's layout and the CIFAR family of §4.2.

``resnet18``, ``resnet34`` and ``resnet50`` have torchvision's module names and ``state_dict`` keys
(``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1``..``layer4`` of blocks with ``conv1``/``bn1``/``conv2``/
``bn2`` (/``conv3``/``bn3``) and ``downsample.0``/``.1``, ``avgpool``, ``fc``), so a torchvision checkpoint
loads into them with ``strict=True`` and computes the same function. Like torchvision (ResNet "v1.5"), the
bottleneck block puts its stride on the 3x3 conv, not the first 1x1 as in the paper; shortcuts are
identities, or a strided 1x1 conv + batch norm (option B) where the shape changes.

``resnet20`` and ``resnet56`` are the CIFAR-10 networks of §4.2: a 3x3, 16 stem conv, three stages of
``n`` basic blocks (``n`` = 3 or 9) with 16, 32, 64 channels, stride 2 at the first block of stages 2
and 3, global average pooling and one linear layer; ``6n + 2`` weighted layers. Their shortcuts follow
the paper's option A by default (identity; where the shape changes, the input subsampled by 2 and
zero-padded with the new channels, no parameters), which gives the paper's 0.27M and 0.85M parameters;
``shortcut="B"`` uses the 1x1 conv + batch norm projection instead.

Every family initializes itself in its constructor: He normal fan-out for convs, He fan-in for the
classifier, batch norm weight 1 and bias 0 (``init_weights_``), and optionally zero for the last batch
norm weight of each residual branch (``zero_init_residual``, off by default as in torchvision).
``width_mult`` scales every stage width (and the stem) with ``scale_width``; a bottleneck keeps its
expansion of 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import init_weights_
from ..layers.init import InitMode
from ._common import check_input
from .cfg import CIFAR10_MEAN, CIFAR10_STD, model_label
from .registry import register_model, scale_width

Shortcut = Literal["A", "B"]
"""CIFAR shortcut where the shape changes: ``"A"`` zero-padded identity, ``"B"`` 1x1 conv + BN projection."""


def conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv, padding 1, no bias (a batch norm follows)."""
    return nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)


def conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    """1x1 conv, no bias (a batch norm follows)."""
    return nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)


def projection(in_chs: int, out_chs: int, stride: int) -> nn.Sequential:
    """Option-B shortcut: strided 1x1 conv then batch norm (torchvision's ``downsample``)."""
    return nn.Sequential(conv1x1(in_chs, out_chs, stride), nn.BatchNorm2d(out_chs))


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut (He et al. 2016 §4.2): the input subsampled by ``stride`` with ``out_chs - in_chs``
    zero channels appended; no parameters."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if out_chs < in_chs:
            raise ValueError(f"ZeroPadShortcut: cannot pad {in_chs} channels down to {out_chs}")
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_chs - self.in_chs))

    def extra_repr(self) -> str:
        return f"{self.in_chs}, {self.out_chs}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm (stride on the first), plus the shortcut; ReLU after the sum."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_chs, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def last_bn(self) -> nn.BatchNorm2d:
        """The batch norm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, torchvision's v1.5), 1x1 expand to ``4 * planes``, each with
    batch norm, plus the shortcut; ReLU after the sum."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = conv1x1(in_chs, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_chs)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def last_bn(self) -> nn.BatchNorm2d:
        """The batch norm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]


def _make_stage(
    block: Block, in_chs: int, planes: int, blocks: int, stride: int, shortcut: Shortcut = "B"
) -> tuple[nn.Sequential, int]:
    """``blocks`` blocks of ``planes`` (the first with ``stride``) and the stage's output channels."""
    out_chs = planes * block.expansion
    downsample: nn.Module | None = None
    if stride != 1 or in_chs != out_chs:
        downsample = (
            projection(in_chs, out_chs, stride) if shortcut == "B" else ZeroPadShortcut(in_chs, out_chs, stride)
        )
    layers = [block(in_chs, planes, stride, downsample)]
    layers += [block(out_chs, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers), out_chs


def _init_(model: nn.Module, init_mode: InitMode, zero_init_residual: bool) -> None:
    init_weights_(model, init_mode)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.last_bn().weight)


class ResNet(nn.Module):
    """ImageNet ResNet in torchvision's layout.

    Args:
        block: ``BasicBlock`` (ResNet-18/34) or ``Bottleneck`` (ResNet-50 and deeper).
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes, in_chans, width_mult: as in ``create_model``; ``width_mult`` scales the stem and
            every stage width (64, 128, 256, 512), keeping a bottleneck's expansion.
        zero_init_residual: start every residual branch at zero (its last batch norm weight 0), so each
            block begins as an identity (Goyal et al. 2017); off by default, as in torchvision.
        init_mode: the He rule of the convs, ``"fan_out"`` (torchvision's) or ``"fan_in"``.

    Input ``(N, in_chans, H, W)``, output logits ``(N, num_classes)``; any ``H, W >= 1`` runs (the
    network downsamples by 32 at 224x224, and its global average pool takes any size).
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        zero_init_residual: bool = False,
        init_mode: InitMode = "fan_out",
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet: layers must give the blocks of 4 stages, got {tuple(layers)}")
        self.in_chans = in_chans
        stem = scale_width(64, width_mult)
        self.conv1 = nn.Conv2d(in_chans, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = stem
        for i, (base, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stage, channels = _make_stage(block, channels, scale_width(base, width_mult), blocks, 1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)
        _init_(self, init_mode, zero_init_residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map ``(N, C, H / 32, W / 32)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, model_label(self), self.in_chans, 1)
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


class CifarResNet(nn.Module):
    """The CIFAR-10 ResNet of He et al. 2016 §4.2 (``6n + 2`` layers).

    Args:
        depth_n: basic blocks per stage (``n``; 3 gives ResNet-20, 9 gives ResNet-56).
        num_classes, in_chans, width_mult: as in ``create_model``; ``width_mult`` scales 16, 32, 64.
        shortcut: where a block changes the shape, ``"A"`` (the paper's: zero-padded identity, no
            parameters) or ``"B"`` (1x1 conv + batch norm projection).
        zero_init_residual: start every residual branch at zero (its last batch norm weight 0).
        init_mode: the He rule of the convs, ``"fan_out"`` or ``"fan_in"``.

    Input ``(N, in_chans, H, W)``, output logits ``(N, num_classes)``; any ``H, W >= 1`` runs.
    """

    def __init__(
        self,
        depth_n: int,
        num_classes: int = 10,
        in_chans: int = 3,
        width_mult: float = 1.0,
        shortcut: Shortcut = "A",
        zero_init_residual: bool = False,
        init_mode: InitMode = "fan_out",
    ) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"CifarResNet: shortcut must be 'A' or 'B', got {shortcut!r}")
        self.in_chans = in_chans
        stem = scale_width(16, width_mult)
        self.conv1 = conv3x3(in_chans, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        channels = stem
        for i, base in enumerate((16, 32, 64)):
            planes = scale_width(base, width_mult)
            stage, channels = _make_stage(BasicBlock, channels, planes, depth_n, 1 if i == 0 else 2, shortcut)
            self.add_module(f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)
        _init_(self, init_mode, zero_init_residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map ``(N, C, H / 4, W / 4)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, model_label(self), self.in_chans, 1)
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


_TV_NOTE = (
    "torchvision's layout and state_dict keys (a torchvision checkpoint loads with strict=True); "
    "dense counts at 224x224, 1000 classes, standard convention equal torchvision's: {params:,} params, "
    "{macs:,} MACs."
)
_IMAGENET = {
    "classifier": "fc",
    "baseline": None,
    "min_input_size": 1,
    "kwargs_of": ResNet,
    "user_kwargs": ("zero_init_residual",),
}
_CIFAR = {
    "classifier": "fc",
    "baseline": None,
    "min_input_size": 1,
    "mean": CIFAR10_MEAN,
    "std": CIFAR10_STD,
    "kwargs_of": CifarResNet,
    "user_kwargs": ("shortcut", "zero_init_residual"),
}
_CIFAR_NOTE = (
    "He et al. 2016 §4.2 CIFAR-10 ResNet ({layers} layers, n={n}): option-A (zero-padded identity) shortcuts "
    "by default, {params} params as in the paper's Table 6; shortcut='B' adds 1x1 conv + BN projections."
)


@register_model(224, 1000, notes=_TV_NOTE.format(params=11_689_512, macs=1_814_073_344), **_IMAGENET)
def resnet18(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> ResNet:
    """ResNet-18: basic blocks, (2, 2, 2, 2)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_chans, width_mult, **kwargs)


@register_model(224, 1000, notes=_TV_NOTE.format(params=21_797_672, macs=3_663_761_408), **_IMAGENET)
def resnet34(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> ResNet:
    """ResNet-34: basic blocks, (3, 4, 6, 3)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_chans, width_mult, **kwargs)


@register_model(224, 1000, notes=_TV_NOTE.format(params=25_557_032, macs=4_089_184_256), **_IMAGENET)
def resnet50(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> ResNet:
    """ResNet-50: bottleneck blocks (stride on the 3x3), (3, 4, 6, 3)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, width_mult, **kwargs)


@register_model(32, 10, notes=_CIFAR_NOTE.format(layers=20, n=3, params="0.27M"), **_CIFAR)
def resnet20(num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20: 3 stages of 3 basic blocks (16, 32, 64 channels)."""
    return CifarResNet(3, num_classes, in_chans, width_mult, **kwargs)


@register_model(32, 10, notes=_CIFAR_NOTE.format(layers=56, n=9, params="0.85M"), **_CIFAR)
def resnet56(num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56: 3 stages of 9 basic blocks (16, 32, 64 channels)."""
    return CifarResNet(9, num_classes, in_chans, width_mult, **kwargs)
