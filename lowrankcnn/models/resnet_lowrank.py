"""The ResNets made low-rank by :func:`lowrankcnn.convert`: ``resnet18_lr``, ``resnet20_rank1``, ...

Each variant is its dense twin (``models/resnet.py``) with every eligible conv replaced by the method's layer
(``convert(model, method, min_channels=1)``: every spatial conv at any width; the stem and the 1x1 projections
stay dense), freshly initialized with the
composite rule for training from scratch. Its ``baseline`` is the dense model, so ``bench`` compares the two.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .registry import register_model
from .resnet import _CIFAR, _IMAGENET, resnet18, resnet20, resnet34, resnet50, resnet56

METHODS = ("lr", "lr_join", "rank1")
"""The conversions registered for every ResNet (any other method: ``convert(create_model(name), method)``)."""


def _variant(dense: Callable[..., nn.Module], method: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, **kwargs) -> nn.Module:
        from ..convert import convert  # lowrankcnn.convert imports the profiler, which imports this package

        dense_model = dense(num_classes, in_chans, width_mult, **kwargs)
        model, _ = convert(dense_model, method, inplace=True, min_channels=1, count=False)
        return model

    build.__name__ = build.__qualname__ = f"{dense.__name__}_{method}"
    build.__doc__ = f"{dense.__name__} with its convs converted by lowrankcnn.convert(model, {method!r})."
    return build


for _dense, _size, _classes, _family in (
    (resnet18, 224, 1000, _IMAGENET),
    (resnet34, 224, 1000, _IMAGENET),
    (resnet50, 224, 1000, _IMAGENET),
    (resnet20, 32, 10, _CIFAR),
    (resnet56, 32, 10, _CIFAR),
):
    for _method in METHODS:
        register_model(
            _size,
            _classes,
            **{**_family, "baseline": _dense.__name__},
            notes=f"{_dense.__name__} converted by lowrankcnn.convert(model, {_method!r}).",
        )(_variant(_dense, _method))
