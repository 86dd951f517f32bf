"""The rank-1 networks released with Kim et al. (2018), their dense and consecutive-1-D twins (docs/reference.md §2.2).

Each net comes in three conv flavours with identical channel counts:

* ``rank1``: ``Rank1Conv2d`` with the authors' shared spatial vectors (``C_out = num**2``), or with
  one vertical and one horizontal vector per filter (``shared_spatial=False``, the paper's description);
* ``dense``: ordinary 3x3 convs;
* ``flat``: ``ConsecutiveConv2d`` (1x1 -> depthwise 3x1 -> depthwise 1x3 trained as separate layers).

CIFAR-10 net (input 32x32): conv 3->64 -> conv 64->64 -> pool -> 64->144 -> 144->144 -> pool ->
144->256 -> 256->256 -> pool -> fc 4096->1024 -> fc 1024->512 -> fc 512->10. Each conv has a bias
and a ReLU; the first conv of each pair is followed by batch norm (after the ReLU, as in the
authors' code); dropout 0.5 after each pool and hidden FC.

MNIST net (input 28x28): convs 1->64->64, pool, 64->144->144, pool, 144->256->256->256, with no
bias, activation or normalization (the conv stack is linear, as released), then
fc 12544->2048->1024->10 with batch norm, ReLU and dropout 0.5 after the hidden FCs.

The released code kept dropout on at test time; here ``nn.Dropout`` is off in eval mode.
``width_mult`` scales channels by scaling ``num`` by ``sqrt(width_mult)`` (channels stay squares).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError, ShapeError
from ..layers import create_lowrank_conv, init_weights_
from ..layers.init import InitMode
from ..layers.rank1 import Rank1Scheme
from ._common import check_input
from .cfg import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD, model_label
from .registry import register_model, scale_width

ConvFactory = Callable[[int, int, bool], nn.Module]
"""``(in_channels, out_channels, bias) -> 3x3 conv module``."""


def conv_factory(kind: str, rank1_scheme: Rank1Scheme = "factors", shared_spatial: bool = True) -> ConvFactory:
    """The 3x3 conv of a flavour: ``"rank1"``, ``"dense"`` or ``"flat"``.

    ``shared_spatial`` (rank-1 only): the authors' ``num`` shared vertical and horizontal vectors per
    layer (True), or one vertical and one horizontal vector per filter (False, the paper's description).
    """
    options = {"scheme": rank1_scheme, "shared_spatial": shared_spatial} if kind == "rank1" else {}
    method = {"rank1": "rank1", "dense": "dense", "flat": "consecutive"}.get(kind)
    if method is None:
        raise ConfigError(f"unknown conv flavour {kind!r}")
    return lambda c, d, bias: create_lowrank_conv(method, c, d, 3, bias=bias, **options)


def _square_width(num: int, width_mult: float) -> int:
    """``num'**2`` with ``num' = round(num * sqrt(width_mult))``: channels stay perfect squares."""
    return max(1, int(round(num * math.sqrt(width_mult)))) ** 2


class _FixedInputNet(nn.Module):
    """A ``features -> flatten -> classifier`` net whose first FC layer fixes the input size."""

    in_chans: int
    input_size: int
    min_input_size = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = model_label(self)
        check_input(x, name, self.in_chans, self.min_input_size)
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ShapeError(
                f"{name}: built for {self.input_size}x{self.input_size} inputs (its fc1 size depends on it), "
                f"got {tuple(x.shape[-2:])}; it takes only that size (rebuild it with the model keyword "
                f"input_size={x.shape[-1]} for another)"
            )
        return self.classifier(torch.flatten(self.features(x), 1))


class KimCifarNet(_FixedInputNet):
    """The authors' CIFAR-10 network. Input ``(N, in_chans, input_size, input_size)``, output ``(N, num_classes)``.

    ``bn=False`` drops the three batch-norm layers (for the trainability experiment). The net initializes itself
    with ``init_weights_(self, init_mode)``.
    """

    min_input_size = 8

    def __init__(
        self,
        conv: ConvFactory,
        num_classes: int = 10,
        in_chans: int = 3,
        width_mult: float = 1.0,
        input_size: int = 32,
        dropout: float = 0.5,
        bn: bool = True,
        init_mode: InitMode = "fan_out",
    ) -> None:
        super().__init__()
        self.in_chans, self.input_size = in_chans, input_size
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c = in_chans
        for stage, num in enumerate((8, 12, 16), start=1):
            d = _square_width(num, width_mult)
            layers[f"conv{stage}a"] = conv(c, d, True)
            layers[f"relu{stage}a"] = nn.ReLU(inplace=True)
            if bn:
                layers[f"bn{stage}a"] = nn.BatchNorm2d(d)
            layers[f"conv{stage}b"] = conv(d, d, True)
            layers[f"relu{stage}b"] = nn.ReLU(inplace=True)
            layers[f"pool{stage}"] = nn.MaxPool2d(2)
            layers[f"drop{stage}"] = nn.Dropout(dropout)
            c = d
        self.features = nn.Sequential(layers)
        side = input_size // 8
        h1, h2 = scale_width(1024, width_mult), scale_width(512, width_mult)
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(c * side * side, h1),
                relu1=nn.ReLU(inplace=True),
                drop1=nn.Dropout(dropout),
                fc2=nn.Linear(h1, h2),
                relu2=nn.ReLU(inplace=True),
                drop2=nn.Dropout(dropout),
                fc3=nn.Linear(h2, num_classes),
            )
        )
        init_weights_(self, init_mode)


class KimMnistNet(_FixedInputNet):
    """The authors' MNIST network (linear conv stack). Input ``(N, in_chans, 28, 28)``; it initializes itself
    with ``init_weights_(self, init_mode)``."""

    def __init__(
        self,
        conv: ConvFactory,
        num_classes: int = 10,
        in_chans: int = 1,
        width_mult: float = 1.0,
        input_size: int = 28,
        dropout: float = 0.5,
        init_mode: InitMode = "fan_out",
    ) -> None:
        super().__init__()
        self.in_chans, self.input_size = in_chans, input_size
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c = in_chans
        for stage, (num, repeats) in enumerate(((8, 2), (12, 2), (16, 3)), start=1):
            d = _square_width(num, width_mult)
            for r in range(repeats):
                layers[f"conv{stage}{'abc'[r]}"] = conv(c, d, False)
                c = d
            if stage < 3:
                layers[f"pool{stage}"] = nn.MaxPool2d(2)
        self.features = nn.Sequential(layers)
        side = input_size // 4
        h1, h2 = scale_width(2048, width_mult), scale_width(1024, width_mult)

        def hidden(i: int, n_in: int, n_out: int) -> list[tuple[str, nn.Module]]:
            return [
                (f"fc{i}", nn.Linear(n_in, n_out)),
                (f"bn{i}", nn.BatchNorm1d(n_out)),
                (f"relu{i}", nn.ReLU(inplace=True)),
                (f"drop{i}", nn.Dropout(dropout)),
            ]

        self.classifier = nn.Sequential(
            OrderedDict([*hidden(1, c * side * side, h1), *hidden(2, h1, h2), ("fc3", nn.Linear(h2, num_classes))])
        )
        init_weights_(self, init_mode)


_NOTE = (
    "Authors' released notebooks (docs/reference.md §2.2): best logged test accuracy; their code kept dropout on at "
    "test time and measured accuracy on random batches, so treat it as approximate."
)


RECIPE = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 100, "model_kwargs": {"dropout": 0.0}}
"""What trains these nets from the command line: the authors' Adam at 1e-3 (decoupled weight decay), no dropout."""


def _builder(net: type[_FixedInputNet], kind: str, chans: int) -> Callable[..., nn.Module]:
    """The registered builder of one flavour; only the rank-1 flavour takes the rank-1 keywords."""
    if kind == "rank1":

        def build(
            num_classes: int = 10,
            in_chans: int = chans,
            width_mult: float = 1.0,
            rank1_scheme: Rank1Scheme = "factors",
            shared_spatial: bool = True,
            **kwargs,
        ) -> nn.Module:
            return net(conv_factory(kind, rank1_scheme, shared_spatial), num_classes, in_chans, width_mult, **kwargs)

    else:

        def build(num_classes: int = 10, in_chans: int = chans, width_mult: float = 1.0, **kwargs) -> nn.Module:
            return net(conv_factory(kind), num_classes, in_chans, width_mult, **kwargs)

    return build


def _register_family(
    net: type[_FixedInputNet],
    dataset: str,
    size: int,
    chans: int,
    normalization: tuple[tuple[float, ...], tuple[float, ...]],
    published: dict[str, dict],
    user_kwargs: tuple,
) -> None:
    for kind in ("rank1", "dense", "flat"):
        name = f"kim_{kind}_{dataset}"
        build = _builder(net, kind, chans)
        build.__name__ = build.__qualname__ = name
        build.__doc__ = f"Kim et al.'s {dataset.upper()} net with {kind} 3x3 convs ({net.__doc__.splitlines()[0]})"
        register_model(
            size,
            10,
            in_chans=chans,
            min_input_size=net.min_input_size,
            mean=normalization[0],
            std=normalization[1],
            classifier="classifier.fc3",
            baseline=None if kind == "dense" else f"kim_dense_{dataset}",
            published=published.get(kind, {}),
            notes=_NOTE,
            kwargs_of=net,
            user_kwargs=user_kwargs,
            recipe=RECIPE,
        )(build)


_register_family(
    KimCifarNet,
    "cifar10",
    32,
    3,
    (CIFAR10_MEAN, CIFAR10_STD),
    {"rank1": {"top1": 0.8388}, "dense": {"top1": 0.8643}},
    ("input_size", "dropout", "bn"),
)
_register_family(
    KimMnistNet, "mnist", 28, 1, (MNIST_MEAN, MNIST_STD), {"rank1": {"top1": 0.9923}}, ("input_size", "dropout")
)
