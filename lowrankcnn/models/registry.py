"""Model registry: ``register_model``, ``create_model``, ``list_models`` (timm-style).

Each registered builder ``fn(num_classes, in_chans, width_mult, **kwargs)`` declares which keyword
arguments a user may pass (``kwargs_of``: the family class whose ``__init__`` receives them, and
``user_kwargs``: which of its parameters are open to users), so ``create_model`` checks every keyword's
name and type (from the annotations) before building anything, and a command line can do the same.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import math
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.checks import MAX_INPUT_SIZE
from ..errors import ConfigError
from ..layers import init_weights_
from ..layers.factory import channel_alignment, resolve_align
from ..layers.init import InitMode
from ..utils.annotations import describe, fits
from .cfg import IMAGENET_MEAN, IMAGENET_STD, ModelCfg

MAX_WIDTH_MULT = 64.0
"""Largest ``width_mult`` accepted (VGG-11 at 64x has 32,768-channel convs); larger values are mistakes."""
RESERVED_KWARGS = ("num_classes", "in_chans", "width_mult", "init_mode")
"""Arguments of ``create_model`` itself; they are not model keywords."""
KWARG_RANGES: dict[str, tuple[float, float]] = {"dropout": (0.0, 1.0), "fc_width": (1, math.inf)}
"""Closed ranges for model keywords that every family shares (``input_size`` is bounded by the model's
``min_input_size`` and the largest input the library accepts)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model besides how to build it.

    Attributes:
        name: registry name.
        input_size: native square input size (224 for ILSVRC models, 30 for NiN's CIFAR crops).
        num_classes: native number of classes.
        in_chans: native number of input channels.
        min_input_size: smallest square input the architecture accepts.
        mean, std: normalization of the native data set (ImageNet, CIFAR-10, MNIST).
        classifier: dotted name of the layer producing the logits.
        baseline: the dense twin the model is compared with (``None`` for a dense model).
        published: figures from the source paper (``macs``, ``params``, ``top1``, ...), if any.
        notes: how the published figures relate to this implementation.
        published_in_training: the published MACs count training-only parts
            (GoogLeNet's auxiliary heads), so compare with ``profile(..., training=True)``.
        kwargs: the keyword arguments users may pass to ``create_model`` and their annotations.
        recipe: training settings (``TrainConfig`` fields, ``model_kwargs`` included) that make this model
            learn; used where a run does not set them.
        init_mode: the init rule the family applies in its constructor by default (``"fan_in"`` where fan-out
            init makes the activations grow through the network, as in GoogLeNet).
    """

    name: str
    input_size: int
    num_classes: int
    in_chans: int = 3
    min_input_size: int = 1
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    classifier: str = "classifier"
    baseline: str | None = None
    published: Mapping[str, float] = field(default_factory=dict)
    notes: str = ""
    published_in_training: bool = False
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    recipe: Mapping[str, Any] = field(default_factory=dict)
    init_mode: InitMode = "fan_out"


_builders: dict[str, Callable[..., nn.Module]] = {}
_infos: dict[str, ModelInfo] = {}
_takes_init_mode: dict[str, bool] = {}
"""Whether a model's family class takes ``init_mode`` (then ``create_model`` passes an override to it)."""


def _family_init_mode(kwargs_of: type | None) -> InitMode | None:
    """The default ``init_mode`` of the family's ``__init__``, or ``None`` if it takes none."""
    if kwargs_of is None:
        return None
    param = inspect.signature(kwargs_of.__init__).parameters.get("init_mode")
    return None if param is None else param.default


def _user_kwargs(fn: Callable[..., nn.Module], kwargs_of: type | None, names: tuple[str, ...]) -> dict[str, Any]:
    """Annotations of the builder's own keywords plus ``names`` taken from ``kwargs_of.__init__``."""
    own = typing.get_type_hints(fn)
    schema = {
        n: own.get(n, Any)
        for n, p in inspect.signature(fn).parameters.items()
        if p.kind == p.KEYWORD_ONLY or (p.default is not p.empty and not n.startswith("_"))
    }
    if kwargs_of is not None:
        hints = typing.get_type_hints(kwargs_of.__init__)
        schema.update({n: hints.get(n, Any) for n in names})
    for reserved in RESERVED_KWARGS:
        schema.pop(reserved, None)
    return schema


def register_model(
    input_size: int,
    num_classes: int,
    *,
    in_chans: int = 3,
    min_input_size: int = 1,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    classifier: str = "classifier",
    baseline: str | None = None,
    published: Mapping[str, float] | None = None,
    notes: str = "",
    published_in_training: bool = False,
    kwargs_of: type | None = None,
    user_kwargs: tuple[str, ...] = (),
    recipe: Mapping[str, Any] | None = None,
    init_mode: InitMode | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder ``fn(num_classes, in_chans, width_mult, **kwargs)`` under its name.

    Every argument but the native input size and class count is a keyword (see :class:`ModelInfo`);
    ``kwargs_of`` and ``user_kwargs`` declare the keywords ``**kwargs`` forwards (see the module doc).
    A model initializes itself in its constructor; ``init_mode`` (``None``: the default of ``kwargs_of``'s
    ``init_mode`` parameter, else ``"fan_out"``) records which rule it uses by default.
    """
    family_mode = _family_init_mode(kwargs_of)

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _builders:
            raise ConfigError(f"register_model: {fn.__name__!r} is already registered")
        _builders[fn.__name__] = fn
        _infos[fn.__name__] = ModelInfo(
            name=fn.__name__,
            input_size=input_size,
            num_classes=num_classes,
            in_chans=in_chans,
            min_input_size=min_input_size,
            mean=tuple(mean),
            std=tuple(std),
            classifier=classifier,
            baseline=baseline,
            published=dict(published or {}),
            notes=notes,
            published_in_training=published_in_training,
            kwargs=_user_kwargs(fn, kwargs_of, user_kwargs),
            recipe=dict(recipe or {}),
            init_mode=init_mode or family_mode or "fan_out",
        )
        _takes_init_mode[fn.__name__] = family_mode is not None
        return fn

    return wrap


def _check_name(name: str) -> None:
    if name not in _builders:
        close = difflib.get_close_matches(str(name), _builders, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown model {name!r}.{hint} $list_models shows every name.", param="model")


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the shell-style ``pattern``, sorted."""
    return sorted(n for n in _builders if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> ModelInfo:
    """The ``ModelInfo`` of a registered model."""
    _check_name(name)
    return _infos[name]


def validate_model_kwargs(name: str, kwargs: Mapping[str, object]) -> None:
    """Check model keywords against what ``name`` accepts, before anything is built.

    Raises:
        ConfigError: an unknown keyword, one that ``create_model`` takes itself, or a value of the
            wrong type or range (the message names the keyword, what it needs and what is accepted).
    """
    schema = model_info(name).kwargs
    accepted = ", ".join(sorted(schema)) or "none"
    for key, value in kwargs.items():
        if key in RESERVED_KWARGS:
            where = "the data set sets it" if key in ("num_classes", "in_chans") else f"set it with ${key}"
            raise ConfigError(f"{key} is not a model keyword but an argument of create_model: {where}")
        if key not in schema:
            raise ConfigError(f"{name} does not accept the keyword {key}=...; it accepts: {accepted}")
        if not fits(value, schema[key]):
            raise ConfigError(f"{name}: keyword {key} must be {describe(schema[key])}, got {value!r}")
        ranges = {**KWARG_RANGES, "input_size": (model_info(name).min_input_size, MAX_INPUT_SIZE)}
        if key in ranges and isinstance(value, (int, float)):
            low, high = ranges[key]
            if not (math.isfinite(value) and low <= value <= high):
                bounds = f"at least {low:g}" if math.isinf(high) else f"in [{low:g}, {high:g}]"
                raise ConfigError(f"{name}: keyword {key} must be {bounds}, got {value!r}")


def _check_size(name: str, num_classes: int | None, in_chans: int | None, width_mult: float) -> None:
    for arg, value in (("in_chans", in_chans), ("num_classes", num_classes)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ConfigError(f"create_model({name!r}): ${arg} must be a positive integer, got {value!r}", param=arg)
    ok = isinstance(width_mult, (int, float)) and not isinstance(width_mult, bool) and math.isfinite(width_mult)
    if not (ok and 0 < width_mult <= MAX_WIDTH_MULT):
        raise ConfigError(
            f"create_model({name!r}): $width_mult must be a number in (0, {MAX_WIDTH_MULT:g}], got {width_mult!r}",
            param="width_mult",
        )


def _memory_bytes() -> int:
    """Physical memory of this machine (0 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    width_mult: float = 1.0,
    init_mode: InitMode | None = None,
    *,
    align: int | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build a registered model; it initializes its own weights (the family's rule, see ``init_mode``).

    Args:
        name: registry name (see ``list_models()``).
        num_classes: output classes; ``None`` means the model's native count
            (1000 for the ILSVRC models, 10 for NiN).
        in_chans: input image channels (1 for Fashion-MNIST); ``None`` means the model's native count
            (3, or 1 for the MNIST nets).
        width_mult: scales every channel width and hidden FC width, keeping each
            layer's basis proportions (CPU-sized twins use e.g. 0.25); at most ``MAX_WIDTH_MULT``.
        init_mode: ``None`` keeps the model's own initialization (``model_info(name).init_mode`` names its rule);
            ``"fan_out"`` (the paper's composite init) or ``"fan_in"`` overrides it: passed to the family's
            constructor when it takes ``init_mode``, else applied with ``init_weights_`` after building.
        align: every basis group of the model's composite layers a multiple of ``align`` channels (a power of two)
            where the width allows it, e.g. 16 for onnxruntime's NCHWc convolutions on AVX-512 (the rule:
            ``lowrankcnn.layers.split_channels``); layer widths never change, and models without composite layers
            are unchanged. ``None``: the ambient ``lowrankcnn.layers.factory.channel_alignment`` (1 unless set),
            which builds every published structure.
        **kwargs: the model's own keywords (``model_info(name).kwargs``, e.g. ``dropout``), checked by
            :func:`validate_model_kwargs`.

    Returns:
        The model, carrying its interface (input size, normalization, classifier, dense twin) as
        ``model.default_cfg`` (:class:`~lowrankcnn.models.cfg.ModelCfg`).

    Raises:
        ConfigError: an unknown model, a bad size, keyword or ``align``, or weights that would not fit in this
            machine's memory (checked on the meta device before anything is allocated).
    """
    _check_name(name)
    align = resolve_align(align, f"create_model({name!r})")
    _check_size(name, num_classes, in_chans, width_mult)
    validate_model_kwargs(name, kwargs)
    info = _infos[name]
    classes = num_classes if num_classes is not None else info.num_classes
    in_chans = in_chans if in_chans is not None else info.in_chans
    passed = {"init_mode": init_mode} if init_mode is not None and _takes_init_mode[name] else {}

    def build() -> nn.Module:
        with channel_alignment(align):
            return _builders[name](
                num_classes=classes, in_chans=in_chans, width_mult=float(width_mult), **kwargs, **passed
            )

    if torch.get_default_device().type != "meta":
        with torch.device("meta"):
            weight_bytes = sum(p.numel() * p.element_size() for p in build().parameters())
        if weight_bytes > _memory_bytes() // 2 > 0:
            raise ConfigError(
                f"create_model({name!r}): with width_mult={width_mult:g}, {classes} classes, {in_chans} input "
                f"channels and keywords {dict(kwargs)} the weights alone need {weight_bytes / 2**30:.1f} GiB, more "
                "than half of this machine's memory; use a smaller width, class count or keyword",
                param="width_mult",
            )
    model = build()
    model.default_cfg = ModelCfg(
        name=name,
        num_classes=classes,
        in_chans=in_chans,
        input_size=int(kwargs.get("input_size", info.input_size)),  # type: ignore[call-overload]
        min_input_size=info.min_input_size,
        mean=info.mean if in_chans == info.in_chans else None,
        std=info.std if in_chans == info.in_chans else None,
        classifier=info.classifier,
        baseline=info.baseline,
    )
    if init_mode is not None and not passed:
        init_weights_(model, mode=init_mode)
    return model


def scale_width(channels: float, width_mult: float) -> int:
    """``round(channels * width_mult)``, at least 1: how every zoo width is scaled."""
    return max(1, int(round(channels * width_mult)))
