"""``TrainConfig``: everything that defines a training run, validated before any work is done.

A config is saved in every checkpoint and in ``config.json``; resuming uses the saved one, so a
resumed run computes exactly what the uninterrupted run would have (the thread count included,
since it changes floating-point summation order). ``recipe_config`` builds a config from a model's
registered default recipe, so every model family has settings that learn.
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from ..convert import ConvertMethod
from ..errors import ConfigError
from ..models import ModelSpec, model_info
from ..models.spec import is_factory_path
from ..utils import resolve_device
from ..utils.annotations import describe, fits
from .schedule import Schedule

Optimizer = Literal["sgd", "adamw"]
ProjectUnit = Literal["epoch", "step"]
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
PROJECT_UNITS: tuple[str, ...] = typing.get_args(ProjectUnit)
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint and in ``config.json``).

    ``threads=None`` means torch's current setting, which the trainer then records here, so a resumed
    run uses the same count. ``lowrank`` converts the model's convs with that method before training
    (``lowrankcnn.convert``: the model trains low-rank from scratch).
    ``dist_timeout`` (seconds) bounds how long a data-parallel rank waits for
    the others before the job fails. Field names are the keyword arguments of the library and the
    dashed flags of ``lowrankcnn train``.
    """

    model: str
    out: str
    data: str = "fashion-mnist"
    data_dir: str | None = None
    width_mult: float = 1.0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: Optimizer = "sgd"
    schedule: Schedule = "cosine"
    warmup_epochs: float = 0.0
    patience: int = 2
    label_smoothing: float = 0.0
    aux_weight: float = 0.3
    channels_last: bool = False
    augment: bool = True
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    input_size: int | None = None
    workers: int = 2
    device: str = "auto"
    project_every: int = 1
    project_unit: ProjectUnit = "epoch"
    threads: int | None = None
    dist_timeout: float = 300.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    lowrank: ConvertMethod | None = None

    def validate(self) -> None:
        """Raise :class:`ConfigError` for an impossible setting (the model keywords included)."""
        for name in ("epochs", "batch_size", "patience", "project_every"):
            _at_least(name, getattr(self, name), 1)
        for name in ("train_subset", "test_subset", "input_size", "threads"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        if self.threads is not None and self.threads > MAX_THREADS:
            raise ConfigError(f"$threads must be at most {MAX_THREADS}, got {self.threads}", param="threads")
        _at_least("workers", self.workers, 0)
        _at_least("seed", self.seed, 0)
        if self.seed > MAX_SEED:
            raise ConfigError(f"$seed must be at most {MAX_SEED} (2**32 - 1), got {self.seed}", param="seed")
        _finite("lr", self.lr, low=0.0, low_open=True)
        _finite("width_mult", self.width_mult, low=0.0, low_open=True)
        _finite("weight_decay", self.weight_decay, low=0.0)
        _finite("warmup_epochs", self.warmup_epochs, low=0.0)
        if self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"$warmup_epochs ({self.warmup_epochs:g}) is longer than the run ($epochs {self.epochs})",
                param="warmup_epochs",
            )
        _finite("aux_weight", self.aux_weight, low=0.0)
        _finite("dist_timeout", self.dist_timeout, low=0.0, low_open=True)
        _finite("momentum", self.momentum, low=0.0, high=1.0)
        _finite("label_smoothing", self.label_smoothing, low=0.0, high=1.0)
        for name in ("optimizer", "schedule", "project_unit"):
            choices = typing.get_args(_HINTS[name])
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"${name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}", param=name
                )
        if not self.model:
            raise ConfigError(
                "no model given: pass $model (a registry name, e.g. vgg11_gmp_lr, or a factory "
                "'package.module:function')",
                param="model",
            )
        self.model_spec().validate()  # imports a factory: a run's own factory is trusted (see trust_factory)
        resolve_device(self.device)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """A config from its saved form, every field type-checked; unknown keys are ignored.

        Raises:
            ConfigError: a field has the wrong type or a required one is missing (message names ``source``).
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the configuration is a {type(data).__name__}, not a dict")
        values = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name in ("model", "out"):
                    raise ConfigError(f"{source}: the configuration has no {f.name!r}")
                continue
            value = data[f.name]
            if not fits(value, _HINTS[f.name]):
                raise ConfigError(
                    f"{source}: configuration field {f.name!r} is {value!r} ({type(value).__name__}), "
                    f"expected {describe(_HINTS[f.name])}"
                )
            values[f.name] = float(value) if _HINTS[f.name] is float else value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The saved form (plain JSON values)."""
        return asdict(self)

    @property
    def model_label(self) -> str:
        """How messages name the run's model: ``"resnet20"``, or ``"resnet20+lr"`` converted (its cfg name)."""
        return self.model_spec().name

    @property
    def uses_factory(self) -> bool:
        """Whether the model is a user's factory (``"package.module:function"``): rebuilding it runs that code."""
        return is_factory_path(self.model)

    def model_spec(self, num_classes: int | None = None, in_chans: int | None = None) -> ModelSpec:
        """The run's model, sized for a data set with ``num_classes`` classes and ``in_chans`` channels."""
        return ModelSpec(self.model, num_classes, in_chans, self.width_mult, dict(self.model_kwargs), self.lowrank)


_HINTS = typing.get_type_hints(TrainConfig)


def recipe_config(model: str, out: str, **settings: Any) -> TrainConfig:
    """A config for ``model``: the dataclass defaults, then the model's registered recipe, then ``settings``.

    ``settings`` left as ``None`` do not override (so a command line's unset flags keep the recipe);
    ``model_kwargs`` are merged key by key over the recipe's. A factory (``"package.module:function"``) has no
    recipe: the dataclass defaults apply.
    """
    recipe = {} if is_factory_path(model) else dict(model_info(model).recipe)
    given = {k: v for k, v in settings.items() if v is not None}
    model_kwargs = {**recipe.pop("model_kwargs", {}), **given.pop("model_kwargs", {})}
    return TrainConfig(model=model, out=out, **{**recipe, **given, "model_kwargs": model_kwargs})


def _at_least(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"${name} must be an integer >= {low}, got {value!r}", param=name)


def _finite(name: str, value: object, low: float, high: float | None = None, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bounds = f"> {low:g}" if low_open else f">= {low:g}"
        bounds += f" and < {high:g}" if high is not None else ""
        raise ConfigError(f"${name} must be a finite number {bounds}, got {value!r}", param=name)
