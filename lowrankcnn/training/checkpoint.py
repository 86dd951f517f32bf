"""Checkpoints: their format, written atomically, read without unpickling arbitrary objects, validated in one place.

A checkpoint is a dict of tensors and plain Python values (str, int, float, bool, None, lists and
dicts of those) saved with ``torch.save``; it is serialized in memory, then written to a temporary
file next to the target and renamed over it, so a crash never leaves a half-written file. It is
loaded with ``torch.load(..., weights_only=True)`` (no code runs), then checked against the schema
below, so a foreign, truncated or hand-edited file is one :class:`CheckpointError` naming what is wrong.

Schema (``format`` 1):

* ``config``: a :class:`TrainConfig` as a dict; ``data_info``: ``name``, ``num_classes``, ``in_chans``,
  ``input_size``, ``class_names`` (and, since lowrankcnn 0.2, the normalization ``mean`` and ``std``);
  ``epoch``: epochs completed, ``0 <= epoch <= config.epochs``; ``model``: the state dict.
* For resuming also: ``optimizer``, ``schedule``, ``rng`` (``torch``: the CPU generator state),
  ``history`` (one metrics row per completed epoch) and ``best_acc``.
"""

from __future__ import annotations

import copy
import io
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataBundle
from ..errors import CheckpointError, CheckpointNotFoundError, ConfigError, LowRankCNNError
from ..models import model_info
from ..models.cfg import ModelCfg, model_cfg
from ..utils import atomic_write_bytes
from .config import TrainConfig
from .lowrank_phase import LowRankPhase

CHECKPOINT_FORMAT = 1
RESUME_KEYS = ("optimizer", "schedule", "rng", "history", "best_acc")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (plus a format tag) to ``path`` atomically (an ``OutputError`` if it cannot be written)."""
    buffer = io.BytesIO()  # serialized in memory first: a full disk is then an OSError, not a torch RuntimeError
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, lambda f: f.write(buffer.getbuffer()))


def checkpoint_path(path: str | Path) -> Path:
    """``path`` itself, or ``path/last.pt`` for a run directory."""
    path = Path(path)
    return path / "last.pt" if path.is_dir() else path


def load_checkpoint(path: str | Path, *, for_resume: bool = False) -> dict[str, Any]:
    """Load and validate a checkpoint written by ``save_checkpoint`` onto the CPU (a run directory: its last.pt).

    Args:
        path: a ``.pt`` file or a run directory.
        for_resume: also require what resuming needs (optimizer, schedule, RNG, history).

    Raises:
        CheckpointNotFoundError: ``path`` does not exist.
        CheckpointError: the file is truncated, corrupt, not written by lowrankcnn, or breaks the schema.
    """
    path = checkpoint_path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} not found; give a .pt file written by lowrankcnn training")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({reason[:160]}); it may be truncated or corrupt, "
            "or not written by lowrankcnn. Use another checkpoint (e.g. best.pt) or retrain."
        ) from err
    validate_checkpoint(state, path, for_resume=for_resume)
    return state


def stayed_dense(path: str | Path, state: dict[str, Any] | None = None) -> bool:
    """Whether the run saved in checkpoint ``path`` switched to low rank but kept every layer dense (its rule, e.g.
    automatic ranks or ``dense_if_faster``, found no layer worth converting): it trained the dense model.
    ``state``: that checkpoint, already loaded (it is not read again).

    Raises:
        CheckpointError: ``path`` is missing, corrupt or not a lowrankcnn checkpoint.
    """
    phase = LowRankPhase.from_state(load_checkpoint(path) if state is None else state, path)
    return phase is not None and phase.stays_dense


def _require(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise CheckpointError(f"{path} is not a checkpoint written by lowrankcnn: {what}")


def _is_int(value: object, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_checkpoint(state: object, path: str | Path, *, for_resume: bool = False) -> TrainConfig:
    """Check ``state`` against the schema (see the module doc); returns its config.

    Raises:
        CheckpointError: the first thing that is missing or wrong, in one line naming ``path``.
    """
    path = Path(path)
    _require(isinstance(state, dict), path, f"it holds a {type(state).__name__}, not a dict")
    assert isinstance(state, dict)
    _require(state.get("format") == CHECKPOINT_FORMAT, path, f"format {state.get('format')!r}, expected 1")
    for key in ("config", "data_info", "epoch", "model", *(RESUME_KEYS if for_resume else ())):
        _require(key in state, path, f"missing {key!r}")
    try:
        config = TrainConfig.from_dict(state["config"], source=str(path))
    except ConfigError as err:
        raise CheckpointError(f"{path} is not a checkpoint written by lowrankcnn: {err}") from None
    info = state["data_info"]
    _require(isinstance(info, dict), path, "'data_info' is not a dict")
    _require(isinstance(info.get("name"), str), path, "'data_info' has no dataset name")
    for key in ("num_classes", "in_chans", "input_size"):
        _require(_is_int(info.get(key), 1), path, f"'data_info' {key!r} is {info.get(key)!r}")
    names = info.get("class_names")
    _require(
        isinstance(names, list) and len(names) == info["num_classes"] and all(isinstance(n, str) for n in names),
        path,
        "'data_info' class_names do not match num_classes",
    )
    for key in ("mean", "std"):
        if key in info:
            values = info[key]
            ok = isinstance(values, (list, tuple)) and len(values) == info["in_chans"]
            _require(ok and all(isinstance(v, (int, float)) for v in values), path, f"'data_info' {key!r} is bad")
    epoch = state["epoch"]
    _require(
        _is_int(epoch) and epoch <= config.epochs,
        path,
        f"epoch counter {epoch!r} outside 0..{config.epochs} (the run's epochs)",
    )
    model = state["model"]
    _require(
        isinstance(model, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in model.items()),
        path,
        "'model' is not a state dict of tensors",
    )
    if for_resume:
        history = state["history"]
        _require(
            isinstance(history, list) and len(history) == epoch and all(isinstance(r, dict) for r in history),
            path,
            f"'history' has {len(history) if isinstance(history, list) else '?'} rows for {epoch} epochs",
        )
        _require(_is_number(state["best_acc"]), path, "'best_acc' is not a number")
        for key in ("optimizer", "schedule", "rng"):
            _require(isinstance(state[key], dict), path, f"{key!r} is not a dict")
        _require(torch.is_tensor(state["rng"].get("torch")), path, "'rng' has no torch generator state")
        reference = state.get("reference_loss")
        _require(
            reference is None or (_is_number(reference) and math.isfinite(reference) and reference >= 0),
            path,
            f"'reference_loss' is {reference!r}, not a finite loss >= 0",
        )
    return config


def data_info(data: DataBundle) -> dict[str, Any]:
    """What a checkpoint needs to rebuild the model, label its outputs and preprocess its inputs."""
    return {
        "name": data.name,
        "num_classes": data.num_classes,
        "in_chans": data.in_chans,
        "input_size": data.input_size,
        "class_names": list(data.class_names),
        "mean": list(data.mean),
        "std": list(data.std),
    }


def build_model(config: TrainConfig, info: dict[str, Any], phase: LowRankPhase | None = None) -> nn.Module:
    """The model a run trains, freshly initialized: ``config.model`` sized for the data set in ``info`` (converted
    when ``config.lowrank`` is set), its ``default_cfg`` carrying that data's input size and normalization.

    ``phase`` (a checkpoint's :class:`~.lowrank_phase.LowRankPhase`) gives the form of a run with a dense phase: the
    dense model before its switch (also for a fresh run of such a config), the converted one with the chosen ranks
    after it.

    A model with an ``input_size`` keyword (a fixed-input net) is built for the data's input size unless the
    run's ``model_kwargs`` set it. A factory's model gets a ``default_cfg`` here (it has none of its own), so
    ``deploy``, ``profile`` and ``export`` know its input.

    Raises:
        ConfigError: the model does not map a batch of the data's shape to one logit per class.
    """
    spec = config.model_spec(info["num_classes"], info["in_chans"])
    switched = phase is not None and phase.switched
    if (switched and phase.stays_dense) or (config.starts_dense and not switched):
        spec = spec.dense
    elif switched:
        spec = replace(spec, lowrank_options=phase.convert_options(spec.lowrank_options))
    if spec.registered and "input_size" in model_info(config.model).kwargs and "input_size" not in spec.kwargs:
        spec = spec.with_kwargs(input_size=info["input_size"])
    model = spec.create()
    mean, std = info.get("mean"), info.get("std")
    data = {
        "input_size": info["input_size"],
        "mean": None if mean is None else tuple(mean),
        "std": None if std is None else tuple(std),
    }
    cfg = model_cfg(model)
    if cfg is not None:  # the model declares the data it is trained on (and, converted, its dense original)
        model.default_cfg = replace(cfg, **data)
    else:
        _check_factory_model(model, spec.name, info)
        model.default_cfg = ModelCfg(
            name=spec.name,
            num_classes=info["num_classes"],
            in_chans=info["in_chans"],
            min_input_size=info["input_size"],
            classifier=_last_layer_name(model),
            baseline=spec.dense.name if spec.lowrank is not None else None,
            **data,
        )
    return model


def _check_factory_model(model: nn.Module, name: str, info: dict[str, Any]) -> None:
    """A :class:`ConfigError` unless ``model`` maps ``(2, C, H, W)`` to ``(2, num_classes)`` (traced on the meta
    device: no memory, no compute)."""
    shape = (2, info["in_chans"], info["input_size"], info["input_size"])
    try:
        with torch.no_grad():
            out = copy.deepcopy(model).to("meta").eval()(torch.empty(shape, device="meta"))
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward is reported, with its text
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"the model from {name} does not take a batch of this data, shaped {shape} ({text[:200]}); "
            "give the factory the data's in_chans and input size",
            param="model",
        ) from err
    if not torch.is_tensor(out) or tuple(out.shape) != (2, info["num_classes"]):
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ConfigError(
            f"the model from {name} maps a batch {shape} to {got}, not one logit per class "
            f"(2, {info['num_classes']}); give the factory a num_classes keyword",
            param="model",
        )


def _last_layer_name(model: nn.Module) -> str:
    """The dotted name of the last ``Linear`` or ``Conv2d`` in registration order (the logits, usually)."""
    names = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return names[-1] if names else ""


def check_trusted(config: TrainConfig, source: str | Path, trust_factory: bool) -> None:
    """A :class:`CheckpointError` if the saved run's model is a factory and ``trust_factory`` is not set:
    rebuilding it imports the module the file names, which runs that module's code."""
    if config.uses_factory and not trust_factory:
        raise CheckpointError(
            f"{source}: its model is built by the factory {config.model!r}; rebuilding it imports and runs that "
            "module. Pass $trust_factory if you trust this file"
        )


def load_state(model: nn.Module, weights: dict[str, torch.Tensor], path: str | Path, name: str) -> None:
    """``model.load_state_dict(weights)``, a :class:`CheckpointError` if they do not fit."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: its weights do not fit model {name} ({first[:200]})") from err


def load_trained_model(
    path: str | Path, *, trust_factory: bool = False
) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild a trained model from a checkpoint: ``(model in eval mode, config, checkpoint dict)``.

    ``trust_factory``: allow a checkpoint of a user's own model (``"package.module:function"``) to import that
    module to rebuild it; off by default, since the file chooses what is imported.

    Raises:
        CheckpointNotFoundError, CheckpointError: see :func:`load_checkpoint`; also a model that
            cannot be rebuilt from the saved configuration, a factory not trusted, or weights that do not fit.
    """
    path = checkpoint_path(path)
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"], source=str(path))
    check_trusted(config, path, trust_factory)
    phase = LowRankPhase.from_state(state, path)
    try:
        model = build_model(config, state["data_info"], phase)
    except LowRankCNNError as err:
        raise CheckpointError(f"{path}: cannot rebuild its model: {err}") from err
    load_state(model, state["model"], path, config.model)
    return model.eval(), config, state
