"""Model registry: ``register_model``, ``create_model``, ``list_models`` (timm-style)."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError
from ..layers import init_composite_


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model besides how to build it.

    Attributes:
        name: registry name.
        input_size: native square input size (224 for ILSVRC models, 30 for NiN's CIFAR crops).
        num_classes: native number of classes.
        published: figures from the source paper (``macs``, ``params``, ``top1``, ...), if any.
        notes: how the published figures relate to this implementation.
        published_in_training: the published MACs count training-only parts
            (GoogLeNet's auxiliary heads), so compare with ``profile(..., training=True)``.
        in_chans: native number of input channels.
    """

    name: str
    input_size: int
    num_classes: int
    published: dict[str, float] = field(default_factory=dict)
    notes: str = ""
    published_in_training: bool = False
    in_chans: int = 3


_builders: dict[str, Callable[..., nn.Module]] = {}
_infos: dict[str, ModelInfo] = {}


def register_model(
    input_size: int,
    num_classes: int,
    published: dict[str, float] | None = None,
    notes: str = "",
    published_in_training: bool = False,
    in_chans: int = 3,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder ``fn(num_classes, in_chans, width_mult, **kwargs)`` under its name."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _builders:
            raise ConfigError(f"register_model: {fn.__name__!r} is already registered")
        _builders[fn.__name__] = fn
        _infos[fn.__name__] = ModelInfo(
            fn.__name__, input_size, num_classes, dict(published or {}), notes, published_in_training, in_chans
        )
        return fn

    return wrap


def _check_name(name: str) -> None:
    if name not in _builders:
        close = difflib.get_close_matches(name, _builders, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown model {name!r}.{hint} $list_models shows every name.", param="model")


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the shell-style ``pattern``, sorted."""
    return sorted(n for n in _builders if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> ModelInfo:
    """The ``ModelInfo`` of a registered model."""
    _check_name(name)
    return _infos[name]


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    width_mult: float = 1.0,
    init_mode: str = "fan_out",
    **kwargs: object,
) -> nn.Module:
    """Build a registered model with freshly initialized weights.

    Args:
        name: registry name (see ``list_models()``).
        num_classes: output classes; ``None`` means the model's native count
            (1000 for the ILSVRC models, 10 for NiN).
        in_chans: input image channels (1 for Fashion-MNIST); ``None`` means the model's native count
            (3, or 1 for the MNIST nets).
        width_mult: scales every channel width and hidden FC width, keeping each
            layer's basis proportions (CPU-sized twins use e.g. 0.25).
        init_mode: ``"fan_out"`` (the paper's composite init) or ``"fan_in"``.
        **kwargs: passed to the builder (e.g. ``dropout``).
    """
    _check_name(name)
    for arg, value in (("in_chans", in_chans), ("num_classes", num_classes)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigError(f"create_model({name!r}): {arg} must be a positive integer, got {value!r}")
    if not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise ConfigError(f"create_model({name!r}): width_mult must be > 0, got {width_mult!r}")
    classes = num_classes if num_classes is not None else _infos[name].num_classes
    in_chans = in_chans if in_chans is not None else _infos[name].in_chans
    try:
        model = _builders[name](num_classes=classes, in_chans=in_chans, width_mult=float(width_mult), **kwargs)
    except TypeError as err:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if unexpected is None:
            raise
        raise ConfigError(
            f"create_model: {name} does not accept {unexpected.group(1)}=...; see help(lowrankcnn.models) "
            "for the keyword arguments each family takes"
        ) from err
    model.model_name = name
    return init_composite_(model, mode=init_mode)  # type: ignore[arg-type]


def scale_width(channels: float, width_mult: float) -> int:
    """``round(channels * width_mult)``, at least 1: how every zoo width is scaled."""
    return max(1, int(round(channels * width_mult)))
