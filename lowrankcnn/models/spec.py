"""``ModelSpec``: which model to build and how (the five fields every command and script shares).

A spec is a value: it names a registered model (or holds a factory for a user's own), its class and
input-channel counts (``None``: the model's native ones), its width multiplier and its own keywords.
``TrainConfig``, ``BenchSettings``, the command line's model flags, ``demo`` and the benchmark scripts
all describe models with it, and ``spec.create()`` is the one place they are built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .registry import ModelInfo, create_model, model_info, validate_model_kwargs


@dataclass(frozen=True)
class ModelSpec:
    """A model to build: ``model`` is a registry name, or a factory ``f(**kwargs) -> nn.Module``.

    ``num_classes``/``in_chans`` of ``None`` mean the model's native counts. A factory receives
    ``num_classes``/``in_chans`` only when they are set, plus ``kwargs``; ``width_mult`` applies to
    registered models only.
    """

    model: str | Callable[..., nn.Module]
    num_classes: int | None = None
    in_chans: int | None = None
    width_mult: float = 1.0
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The registry name, or the factory's ``__name__``."""
        return self.model if isinstance(self.model, str) else getattr(self.model, "__name__", type(self.model).__name__)

    @property
    def registered(self) -> bool:
        return isinstance(self.model, str)

    @property
    def info(self) -> ModelInfo | None:
        """The registry's record (``None`` for a factory)."""
        return model_info(self.model) if isinstance(self.model, str) else None

    def validate(self) -> None:
        """Raise :class:`ConfigError` for an unknown name or a keyword the model does not take (nothing is built)."""
        if isinstance(self.model, str):
            validate_model_kwargs(self.model, self.kwargs)
        elif not callable(self.model):
            raise ConfigError(f"$model must be a registry name or a factory, got {type(self.model).__name__}")
        elif self.width_mult != 1.0:
            raise ConfigError("$width_mult applies to registered models only; build the width into the factory")

    def create(self, device: torch.device | str | None = None) -> nn.Module:
        """Build the model (on ``device``, e.g. ``"meta"`` to count it without allocating anything)."""
        self.validate()
        with torch.device(device) if device is not None else nullcontext():
            if isinstance(self.model, str):
                return create_model(self.model, self.num_classes, self.in_chans, self.width_mult, **self.kwargs)
            sizes = {k: v for k, v in (("num_classes", self.num_classes), ("in_chans", self.in_chans)) if v is not None}
            return self.model(**sizes, **self.kwargs)

    def with_kwargs(self, **kwargs: Any) -> ModelSpec:
        """A copy with ``kwargs`` merged over this spec's keywords."""
        return replace(self, kwargs={**self.kwargs, **kwargs})

    def to_dict(self) -> dict[str, Any]:
        """The plain-JSON form (registered models only)."""
        if not isinstance(self.model, str):
            raise ConfigError(f"a spec built from the factory {self.name} cannot be saved; register the model")
        return {
            "model": self.model,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "width_mult": self.width_mult,
            "kwargs": dict(self.kwargs),
        }


def import_factory(path: str) -> Callable[..., nn.Module]:
    """The function named by ``"package.module:function"`` (importing the module runs its code: name only your own).

    Raises:
        ConfigError: not of that form, a module that cannot be imported, or a name that is not callable.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise ConfigError(f"{path!r} is not a registry name or a factory 'package.module:function'", param="model")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"cannot import {module_name!r} for the factory {path!r} ({err})", param="model") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{module_name} has no function {attr!r} (from {path!r})", param="model")
    return factory
