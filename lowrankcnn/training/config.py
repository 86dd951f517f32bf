"""``TrainConfig``: everything that defines a training run, validated before any work is done.

A config is saved in every checkpoint and in ``config.json``; resuming uses the saved one, so a
resumed run computes exactly what the uninterrupted run would have (the thread count included,
since it changes floating-point summation order). ``recipe_config`` builds a config from a model's
registered default recipe, so every model family has settings that learn.
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from ..convert import ConvertMethod
from ..data.loaders import TENSOR_SPECS
from ..errors import ConfigError
from ..layers.base import unknown_options
from ..layers.factory import LAYERS
from ..models import ModelSpec, model_info
from ..models.spec import conversion_options, is_factory_path
from ..utils import resolve_device
from ..utils.annotations import describe, fits
from .schedule import Schedule

Optimizer = Literal["sgd", "adamw"]
LowRankInit = Literal["composite", "spectral"]
INITS: tuple[str, ...] = typing.get_args(LowRankInit)
ProjectUnit = Literal["epoch", "step"]
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
PROJECT_UNITS: tuple[str, ...] = typing.get_args(ProjectUnit)
RESUME_OVERRIDES = ("epochs", "workers", "out", "data_dir")
"""Fields a resumed run may change: more epochs extend it; workers and the folder path change no result."""
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint and in ``config.json``).

    ``threads=None`` means torch's current setting, which the trainer then records here, so a resumed
    run uses the same count. ``lowrank`` converts the model's convs with that method before training
    (``lowrankcnn.convert``: the model trains low-rank from scratch), with ``rank``/``rank_ratio`` (method ``svd``)
    and leaving the convs matching a ``keep_dense`` pattern dense; ``lowrank_kwargs`` are the method's own layer
    options (e.g. ``{"scheme": "projected"}`` for ``rank1``). ``warmup_dense = E`` trains the dense model
    ``E`` epochs first and then converts it by fitting (``rank="auto"``: Cuttlefish's per-layer rank, switching when
    the ranks settle, after ``E`` epochs at the latest; ``dense_if_faster``: a layer whose low-rank form does not
    train faster than its dense conv stays dense; see :mod:`.lowrank_phase`). ``init="spectral"`` starts every
    low-rank layer from the SVD of a He-initialized dense weight; ``frobenius_decay = λ`` adds ``λ/2 ||W||_F²`` of
    every low-rank layer's product ``W`` to the loss and exempts its factors from ``weight_decay``.
    ``project_every``/``project_unit``: how often layers with a ``constrain_()`` hook (rank-1 ``projected``) are
    projected, always also after the last step; after a projection at an epoch's end the batch-norm statistics
    are re-estimated on ``recalibrate_bn`` training batches before testing (0: not).
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
    recalibrate_bn: int = 50
    threads: int | None = None
    dist_timeout: float = 300.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    lowrank: ConvertMethod | None = None
    rank: int | Literal["auto"] | None = None
    rank_ratio: float | None = None
    keep_dense: list[str] = field(default_factory=list)
    lowrank_kwargs: dict[str, Any] = field(default_factory=dict)
    warmup_dense: int = 0
    dense_if_faster: bool = False
    init: LowRankInit = "composite"
    frobenius_decay: float = 0.0

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
        _at_least("recalibrate_bn", self.recalibrate_bn, 0)
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
        self._validate_lowrank()
        for name in ("optimizer", "schedule", "project_unit", "init"):
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

    def _validate_lowrank(self) -> None:
        _at_least("warmup_dense", self.warmup_dense, 0)
        _finite("frobenius_decay", self.frobenius_decay, low=0.0)
        if self.rank_ratio is not None:
            _finite("rank_ratio", self.rank_ratio, low=0.0, high=1.0 + 1e-9, low_open=True)
        if self.rank is not None and self.rank != "auto":
            _at_least("rank", self.rank, 1)
        if not isinstance(self.keep_dense, list) or not all(isinstance(p, str) for p in self.keep_dense):
            raise ConfigError(
                f"$keep_dense must be a list of name patterns, got {self.keep_dense!r}", param="keep_dense"
            )
        needs_method = {
            "rank": self.rank is not None,
            "rank_ratio": self.rank_ratio is not None,
            "keep_dense": bool(self.keep_dense),
            "lowrank_kwargs": bool(self.lowrank_kwargs),
            "warmup_dense": self.warmup_dense > 0,
        }
        for name, given in needs_method.items():
            if given and self.lowrank is None:
                raise ConfigError(f"${name} applies to a conversion: give $lowrank (e.g. svd) too", param=name)
        if self.lowrank_kwargs and self.lowrank is not None:
            _check_layer_options(self.lowrank, self.lowrank_kwargs)
        if self.rank is not None and self.rank_ratio is not None:
            raise ConfigError("give $rank or $rank_ratio, not both", param="rank")
        if self.rank == "auto":
            if self.lowrank != "svd":
                raise ConfigError(
                    f"$rank auto chooses channel ranks: it needs $lowrank svd, not {self.lowrank!r}", param="rank"
                )
            if self.warmup_dense < 1:
                raise ConfigError(
                    "$rank auto measures the ranks of trained dense weights: give $warmup_dense E >= 1 (the longest "
                    "warm-up; the switch comes earlier once the ranks settle)",
                    param="rank",
                )
        if self.dense_if_faster and self.warmup_dense < 1:
            raise ConfigError(
                "$dense_if_faster times each layer at the dense -> low-rank switch: give $warmup_dense E >= 1",
                param="dense_if_faster",
            )
        if self.init == "spectral" and self.warmup_dense > 0:
            raise ConfigError(
                "$init spectral initializes low-rank layers from scratch; with $warmup_dense they are fitted to the "
                "trained dense weights instead. Use one or the other",
                param="init",
            )
        if self.warmup_dense >= self.epochs:
            raise ConfigError(
                f"$warmup_dense ({self.warmup_dense}) leaves no low-rank epochs in a run of $epochs {self.epochs}",
                param="warmup_dense",
            )

    def lowrank_options(self) -> dict[str, Any]:
        """The ``convert`` keywords of the run's conversion (``rank``/``rank_ratio``, ``keep_dense`` as ``exclude``);
        ``rank="auto"`` ranks are chosen during the run (:mod:`.lowrank_phase`)."""
        rank = self.rank if isinstance(self.rank, int) else None
        return {**self.lowrank_kwargs, **conversion_options(rank, self.rank_ratio, self.keep_dense)}

    @property
    def starts_dense(self) -> bool:
        """Whether the run trains its dense model first and converts it during the run (``warmup_dense``)."""
        return self.lowrank is not None and self.warmup_dense > 0

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
        return ModelSpec(
            self.model,
            num_classes,
            in_chans,
            self.width_mult,
            dict(self.model_kwargs),
            self.lowrank,
            self.lowrank_options(),
        )


_HINTS = typing.get_type_hints(TrainConfig)


def resumed_config(given: TrainConfig, saved: TrainConfig, trained_epochs: int, where: object) -> TrainConfig:
    """The configuration a run in ``where`` resumes with: ``saved``, with only :data:`RESUME_OVERRIDES` taken from
    ``given`` (whose other fields must be ``None`` or as saved); a ``ConfigError`` otherwise, or for fewer
    ``epochs`` than the ``trained_epochs`` already done."""
    for name, value in given.to_dict().items():
        if name not in RESUME_OVERRIDES and value is not None and value != getattr(saved, name):
            raise ConfigError(
                f"{where} is resumed with its saved configuration, where ${name} is "
                f"{getattr(saved, name)!r}; it cannot become {value!r}. Start a new run (another $out) instead",
                param=name,
            )
    if given.epochs < trained_epochs:
        raise ConfigError(
            f"{where} has already trained {trained_epochs} epochs; $epochs must be at least that, got {given.epochs}",
            param="epochs",
        )
    config = replace(saved, **{k: getattr(given, k) for k in RESUME_OVERRIDES})
    config.validate()
    return config


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


def _check_layer_options(method: str, options: dict[str, Any]) -> None:
    """``lowrank_kwargs`` may only hold ``method``'s layer options (``_from_spec``'s keywords, not ``convert``'s)."""
    if method not in LAYERS:
        return  # an unknown method is reported by the model spec
    unknown, accepted = unknown_options(LAYERS[method][0], options, set_elsewhere=("align",))  # ``convert`` sets it
    if unknown:
        raise ConfigError(
            f"$lowrank_kwargs {', '.join(unknown)}: not options of the {method} layer, which takes "
            f"{', '.join(accepted) or 'none'}",
            param="lowrank_kwargs",
        )


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


def input_size_for(config: TrainConfig) -> int | None:
    """The run's input size: ``config.input_size``, else the data's native size, zero-padded up (evenly) to the
    model's minimum input size for in-memory data sets (e.g. GoogLeNet needs 31: Fashion-MNIST is padded to 32)."""
    if config.input_size is not None or config.data not in TENSOR_SPECS or config.uses_factory:
        return config.input_size  # a factory's model declares no minimum: the data's own size
    native, needed = TENSOR_SPECS[config.data].input_size, model_info(config.model).min_input_size
    return None if native >= needed else needed + (needed - native) % 2
