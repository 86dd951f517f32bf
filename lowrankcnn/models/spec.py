"""``ModelSpec``: which model to build and how (the fields every command and script shares).

A spec is a value: it names a registered model or a user's own factory (``"package.module:function"``, or the
function itself), its class and input-channel counts (``None``: the model's native ones), its width multiplier,
its own keywords, and the low-rank method its convs are converted with (``lowrankcnn.convert``; ``None``: as
built). ``TrainConfig``, ``BenchSettings``, the command line's model flags, ``demo`` and the benchmark scripts
all describe models with it, and ``spec.create()`` is the one place they are built.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .cfg import model_cfg
from .registry import ModelInfo, create_model, model_info, validate_model_kwargs

FACTORY_SEPARATOR = ":"
"""``"package.module:function"`` names a factory; registry names never contain it."""


def is_factory_path(model: object) -> bool:
    """Whether ``model`` is a string naming a factory (``"package.module:function"``) rather than a registry name."""
    return isinstance(model, str) and FACTORY_SEPARATOR in model


@dataclass(frozen=True)
class ModelSpec:
    """A model to build: ``model`` is a registry name, a factory path ``"package.module:function"`` or a factory
    ``f(**kwargs) -> nn.Module``; ``lowrank`` converts its convs with that ``lowrankcnn.convert`` method.

    ``num_classes``/``in_chans`` of ``None`` mean the model's native counts. A factory receives
    ``num_classes``/``in_chans`` when they are set and its signature takes them, plus ``kwargs``; ``width_mult``
    applies to registered models only. Building from a factory path imports its module (runs its code).
    """

    model: str | Callable[..., nn.Module]
    num_classes: int | None = None
    in_chans: int | None = None
    width_mult: float = 1.0
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    lowrank: str | None = None
    lowrank_options: Mapping[str, Any] = field(default_factory=dict)
    """``convert`` keywords of the conversion (e.g. ``rank_ratio``, ``exclude``, ``per_layer``)."""

    @property
    def name(self) -> str:
        """The registry name or factory path (a function's ``__name__``), with ``+method`` when converted."""
        if isinstance(self.model, str):
            base = self.model
        else:
            base = getattr(self.model, "__name__", type(self.model).__name__)
        return base if self.lowrank is None else f"{base}+{self.lowrank}"

    @property
    def registered(self) -> bool:
        """Whether ``model`` is a registry name."""
        return isinstance(self.model, str) and not is_factory_path(self.model)

    @property
    def info(self) -> ModelInfo | None:
        """The registry's record (``None`` for a factory)."""
        return model_info(self.model) if self.registered else None

    @property
    def dense(self) -> ModelSpec:
        """This spec without its low-rank conversion (the model it converts)."""
        return replace(self, lowrank=None, lowrank_options={})

    def factory(self) -> Callable[..., nn.Module]:
        """The factory function (importing it for a factory path); a :class:`ConfigError` for a registry name."""
        if self.registered:
            raise ConfigError(f"{self.model} is a registry name, not a factory", param="model")
        return import_factory(self.model) if isinstance(self.model, str) else self.model

    def validate(self) -> None:
        """Raise :class:`ConfigError` for an unknown name or method, or a keyword the model does not take (nothing
        is built; a factory path is imported)."""
        if self.lowrank is not None:
            from ..convert import CONVERT_METHODS  # lowrankcnn.convert imports the profiler, which imports models

            if self.lowrank not in CONVERT_METHODS:
                raise ConfigError(
                    f"$lowrank must be one of {', '.join(CONVERT_METHODS)}, got {self.lowrank!r}", param="lowrank"
                )
        if self.registered:
            validate_model_kwargs(self.model, self.kwargs)
            return
        if not isinstance(self.model, str) and not callable(self.model):
            raise ConfigError(f"$model must be a registry name or a factory, got {type(self.model).__name__}")
        if self.width_mult != 1.0:
            raise ConfigError("$width_mult applies to registered models only; build the width into the factory")
        _check_factory_kwargs(self.factory(), self.name, self.kwargs)

    def create(self, device: torch.device | str | None = None) -> nn.Module:
        """Build the model (on ``device``, e.g. ``"meta"`` to count it without allocating anything), converted
        when ``lowrank`` is set (a registered model's ``default_cfg`` then names ``"name+method"`` and its dense
        original as the baseline)."""
        self.validate()
        with torch.device(device) if device is not None else nullcontext():
            if self.registered:
                model = create_model(self.model, self.num_classes, self.in_chans, self.width_mult, **self.kwargs)
            else:
                model = self._call_factory()
            if self.lowrank is not None:
                from ..convert import convert

                options = dict(self.lowrank_options)
                model, _ = convert(model, self.lowrank, inplace=True, count=False, **options)  # report not used
        cfg = model_cfg(model)
        if cfg is not None and self.lowrank is not None:
            model.default_cfg = replace(cfg, name=f"{cfg.name}+{self.lowrank}", baseline=cfg.name)
        return model

    def _call_factory(self) -> nn.Module:
        factory = self.factory()
        accepted = _keywords(factory)
        sizes = {
            k: v
            for k, v in (("num_classes", self.num_classes), ("in_chans", self.in_chans))
            if v is not None and (accepted is None or k in accepted)
        }
        model = factory(**sizes, **self.kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"the factory {self.name} returned a {type(model).__name__}, not an nn.Module")
        return model

    def with_kwargs(self, **kwargs: Any) -> ModelSpec:
        """A copy with ``kwargs`` merged over this spec's keywords."""
        return replace(self, kwargs={**self.kwargs, **kwargs})

    def to_dict(self) -> dict[str, Any]:
        """The plain-JSON form (a registry name or a factory path; not a function object)."""
        if not isinstance(self.model, str):
            raise ConfigError(
                f"a spec built from the function {self.name} cannot be saved; name it as 'package.module:function'"
            )
        return {
            "model": self.model,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "width_mult": self.width_mult,
            "kwargs": dict(self.kwargs),
            "lowrank": self.lowrank,
            "lowrank_options": dict(self.lowrank_options),
        }


def conversion_options(
    rank: int | None = None, rank_ratio: float | None = None, keep_dense: Sequence[str] = ()
) -> dict[str, Any]:
    """The ``convert`` keywords of a conversion's common settings (:attr:`ModelSpec.lowrank_options`): ``svd``'s
    ``rank`` or ``rank_ratio``, and the ``keep_dense`` name patterns as ``exclude``; unset ones are left out."""
    options: dict[str, Any] = {k: v for k, v in (("rank", rank), ("rank_ratio", rank_ratio)) if v is not None}
    if keep_dense:
        options["exclude"] = list(keep_dense)
    return options


def _keywords(factory: Callable[..., Any]) -> set[str] | None:
    """The keyword names ``factory`` takes (``None``: any, it has ``**kwargs`` or no readable signature)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_factory_kwargs(factory: Callable[..., Any], name: str, kwargs: Mapping[str, Any]) -> None:
    accepted = _keywords(factory)
    unknown = sorted(set(kwargs) - accepted) if accepted is not None else []
    if unknown:
        takes = ", ".join(sorted(accepted)) or "no keywords"
        raise ConfigError(f"the factory {name} does not take {', '.join(unknown)} (it takes {takes})", param="model")


def import_factory(path: str) -> Callable[..., nn.Module]:
    """The function named by ``"package.module:function"``, importable from ``sys.path`` or the current folder
    (importing the module runs its code: name only your own).

    Raises:
        ConfigError: not of that form, a module that cannot be imported, or a name that is not callable.
    """
    module_name, sep, attr = path.partition(FACTORY_SEPARATOR)
    if not sep or not module_name or not all(part.isidentifier() for part in (*module_name.split("."), attr)):
        raise ConfigError(f"{path!r} is not a registry name or a factory 'package.module:function'", param="model")
    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m`: the user's own folder is importable
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"cannot import {module_name!r} for the factory {path!r} ({err}); run from the folder that holds it or "
            "add that folder to PYTHONPATH",
            param="model",
        ) from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{module_name} has no function {attr!r} (from {path!r})", param="model")
    return factory
