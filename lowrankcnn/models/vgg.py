"""VGG-11 and its low-rank variants (Ioannou et al., docs/reference.md §1.4).

Every conv layer of VGG-11 is replaced according to the variant's *rule*, a
function ``rule(in_channels, width, stride) -> module`` where ``width`` is the
layer's (already width-scaled) VGG width ``D``; every rule is a call of
``create_lowrank_conv`` (one rounding rule for the basis groups, so a low-rank
variant has its dense twin's widths at any ``width_mult``). Each conv (or composite conv)
is followed by ReLU; a 2x2 max pool follows conv1, conv2, conv3b, conv4b and
conv5b. The ``gmp`` variants replace the last pool with a global max pool, so
fc6 is ``C x 4096`` instead of ``7*7*512 x 4096``.

Pools round up (``ceil_mode``), which changes nothing at 224x224 and lets the
models run on 28x28 Fashion-MNIST. ``vgg11`` ends with an adaptive 7x7 max
pool, identical to the 2x2 pool at 224x224 and valid at any input size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from ..layers import init_weights_
from ..layers.composite import Part
from ..layers.factory import LowRankMethod, create_lowrank_conv
from ..layers.init import InitMode
from ..layers.rank1 import Rank1Scheme
from ._common import check_input
from .cfg import model_label
from .registry import register_model, scale_width

ConvRule = Callable[[int, int, int], nn.Module]

# (name, base width D, max pool after it)
VGG11_CONVS: tuple[tuple[str, int, bool], ...] = (
    ("conv1", 64, True),
    ("conv2", 128, True),
    ("conv3a", 256, False),
    ("conv3b", 256, True),
    ("conv4a", 512, False),
    ("conv4b", 512, True),
    ("conv5a", 512, False),
    ("conv5b", 512, True),
)
LDE_PARTS: tuple[Part, ...] = (("kx1", 3), ("1xk", 3), ("kxk", 1))
"""The low-dimensional embedding's basis 3D/4 | 3D/4 | D/4: a 3:3:1 split of 7D/4 filters."""


def vgg_rule(method: LowRankMethod, out_factor: float = 1.0, basis_factor: float | None = None, **kw: Any) -> ConvRule:
    """``rule(c, d, stride)``: a 3x3 ``create_lowrank_conv(method, ...)`` with ``round(out_factor * d)`` outputs and,
    if given, ``round(basis_factor * d)`` basis filters."""

    def rule(c: int, d: int, stride: int) -> nn.Module:
        basis = {} if basis_factor is None else {"basis_width": scale_width(d, basis_factor)}
        return create_lowrank_conv(method, c, scale_width(d, out_factor), 3, stride, **kw, **basis)

    rule.__doc__ = f"VGG conv by create_lowrank_conv({method!r})"
    return rule


dense_rule = vgg_rule("dense")
"""3x3, D."""
sf_rule = vgg_rule("sf")
"""1x3, D -> 3x1, D (sequential)."""
lr_rule = vgg_rule("lr")
"""3x1, D/2 | 1x3, D/2."""
lr_join_rule = vgg_rule("lr_join")
"""3x1, D/2 | 1x3, D/2 -> 1x1, D."""
wfull_rule = vgg_rule("lr_wfull")
"""3x1, 3D/8 | 1x3, 3D/8 | 3x3, D/4 -> 1x1, D."""
lde_rule = vgg_rule("lr_wfull", out_factor=0.5, basis_factor=1.75, parts=LDE_PARTS)
"""3x1, 3D/4 | 1x3, 3D/4 | 3x3, D/4 -> 1x1, D/2."""


def rank1_rule(c: int, d: int, stride: int, scheme: Rank1Scheme = "factors") -> nn.Module:
    """Rank-1 3x3, D (Kim et al.): every filter an outer product of 1-D vectors."""
    return create_lowrank_conv("rank1", c, d, 3, stride, scheme=scheme)


class VGG(nn.Module):
    """VGG-11 built from a conv rule.

    Args:
        rule: builds each conv layer from ``(in_channels, width, stride)``.
        num_classes, in_chans, width_mult: as in ``create_model``.
        global_max_pool: replace the last 2x2 pool by a global max pool (the "gmp" models).
        conv5_width_factor: multiplies conv5a/b's width (2 for ``lr_2x`` and ``wfull``).
        conv1_stride: stride of conv1 (2 for ``lde`` and the MIT Places runs).
        fc_width: hidden FC width before ``width_mult`` (4096).
        dropout: dropout probability after fc6 and fc7.
        bn: batch norm after every conv layer, before its ReLU (like torchvision's
            ``vgg11_bn``; the paper's models have none).
        init_mode: the model initializes itself with ``init_weights_(self, init_mode)`` (the composite rule).

    Input ``(N, in_chans, H, W)``, output logits ``(N, num_classes)``.
    """

    def __init__(
        self,
        rule: ConvRule,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        global_max_pool: bool = True,
        conv5_width_factor: int = 1,
        conv1_stride: int = 1,
        fc_width: int = 4096,
        dropout: float = 0.5,
        bn: bool = False,
        init_mode: InitMode = "fan_out",
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_chans
        for i, (name, width, pool) in enumerate(VGG11_CONVS):
            factor = conv5_width_factor if name.startswith("conv5") else 1
            conv = rule(channels, scale_width(width * factor, width_mult), conv1_stride if i == 0 else 1)
            layers[name] = conv
            if bn:
                layers[f"bn{name[4:]}"] = nn.BatchNorm2d(conv.out_channels)
            layers[f"relu{name[4:]}"] = nn.ReLU(inplace=True)
            channels = conv.out_channels
            if pool and name != "conv5b":
                layers[f"pool{name[4]}"] = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveMaxPool2d(1 if global_max_pool else 7)
        hidden = scale_width(fc_width, width_mult)
        pooled = channels * (1 if global_max_pool else 49)
        self.classifier = nn.Sequential(
            OrderedDict(
                fc6=nn.Linear(pooled, hidden),
                relu6=nn.ReLU(inplace=True),
                drop6=nn.Dropout(dropout),
                fc7=nn.Linear(hidden, hidden),
                relu7=nn.ReLU(inplace=True),
                drop7=nn.Dropout(dropout),
                fc8=nn.Linear(hidden, num_classes),
            )
        )
        init_weights_(self, init_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, model_label(self), self.in_chans, 1)
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


_VGG_NOTE = "Published ILSVRC figures (Ioannou et al. 2016); MACs in the paper convention (+1 per bias)."
_VGG = {
    "notes": _VGG_NOTE,
    "classifier": "classifier.fc8",
    "kwargs_of": VGG,
    "user_kwargs": ("dropout", "bn", "fc_width"),
    # the paper's plain VGG (no batch norm, dropout 0.5) needs many epochs to leave chance on small runs
    "recipe": {"model_kwargs": {"bn": True, "dropout": 0.0}},
}


def _published(macs: int, params: int, top1: float, top5: float) -> dict[str, float]:
    return {"macs": macs, "params": params, "top1": top1, "top5": top5}


@register_model(224, 1000, published=_published(7_609_101_992, 132_863_336, 0.649, 0.862), baseline=None, **_VGG)
def vgg11(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> VGG:
    """VGG-11 (configuration A): 3x3 convs, 2x2 max pools, fc6 on 7x7x512."""
    return VGG(dense_rule, num_classes, in_chans, width_mult, global_max_pool=False, **kwargs)


@register_model(224, 1000, published=_published(7_508_438_696, 32_200_040, 0.685, 0.887), baseline=None, **_VGG)
def vgg11_gmp(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> VGG:
    """VGG-11 with a global max pool before fc6 (the paper's improved baseline)."""
    return VGG(dense_rule, num_classes, in_chans, width_mult, **kwargs)


@register_model(224, 1000, published=_published(6_525_794_664, 29_658_024, 0.673, 0.879), baseline="vgg11_gmp", **_VGG)
def vgg11_gmp_sf(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> VGG:
    """vgg11_gmp with every conv as 1x3, D -> 3x1, D (sequential separable)."""
    return VGG(sf_rule, num_classes, in_chans, width_mult, **kwargs)


@register_model(224, 1000, published=_published(2_518_134_440, 26_054_888, 0.676, 0.880), baseline="vgg11_gmp", **_VGG)
def vgg11_gmp_lr(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> VGG:
    """vgg11_gmp with every conv as the composite 3x1, D/2 | 1x3, D/2."""
    return VGG(lr_rule, num_classes, in_chans, width_mult, **kwargs)


@register_model(224, 1000, published=_published(3_136_795_304, 31_298_792, 0.693, 0.889), baseline="vgg11_gmp", **_VGG)
def vgg11_gmp_lr_2x(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> VGG:
    """vgg11_gmp_lr with conv5a/b doubled: 3x1, 512 | 1x3, 512 (1024 out), fc6 1024x4096."""
    return VGG(lr_rule, num_classes, in_chans, width_mult, conv5_width_factor=2, **kwargs)


@register_model(224, 1000, published=_published(3_854_023_016, 27_257_768, 0.675, 0.880), baseline="vgg11_gmp", **_VGG)
def vgg11_gmp_lr_join(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> VGG:
    """vgg11_gmp_lr with each composite layer joined by a 1x1, D conv (no activation between)."""
    return VGG(lr_join_rule, num_classes, in_chans, width_mult, **kwargs)


@register_model(224, 1000, published=_published(6_336_823_656, 37_184_712, 0.704, 0.897), baseline="vgg11_gmp", **_VGG)
def vgg11_gmp_lr_join_wfull(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> VGG:
    """3x1, 3D/8 | 1x3, 3D/8 | 3x3, D/4 -> 1x1, D; conv5a/b doubled (384|384|256 -> 1024)."""
    return VGG(wfull_rule, num_classes, in_chans, width_mult, conv5_width_factor=2, **kwargs)


@register_model(224, 1000, published=_published(1_024_052_248, 26_444_584, 0.667, 0.875), baseline="vgg11_gmp", **_VGG)
def vgg11_gmp_lr_lde(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> VGG:
    """Low-dimensional embedding: 3x1, 3D/4 | 1x3, 3D/4 | 3x3, D/4 -> 1x1, D/2; conv1 stride 2."""
    return VGG(lde_rule, num_classes, in_chans, width_mult, conv1_stride=2, **kwargs)


@register_model(224, 1000, baseline="vgg11_gmp", **_VGG)
def vgg11_gmp_rank1(
    num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, rank1_scheme: Rank1Scheme = "factors", **kwargs
) -> VGG:
    """vgg11_gmp with every 3x3 conv a rank-1 conv (``rank1_scheme``: "factors" or "projected")."""
    return VGG(partial(rank1_rule, scheme=rank1_scheme), num_classes, in_chans, width_mult, **kwargs)
