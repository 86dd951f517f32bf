"""A run's dense → low-rank switch: dense warm-up (Pufferfish), automatic ranks (Cuttlefish), post-training
decomposition.

A run with ``lowrank`` set and ``warmup_dense = E > 0`` trains its dense model for ``E`` epochs, then converts it
with ``init="fit"`` (each conv replaced by the truncated SVD, or the method's own fit, of its trained weight; batch
norms and every other layer carried over) and goes on low-rank. With ``rank="auto"`` (method ``svd``) each layer's
rank is Cuttlefish's scaled stable rank (:mod:`.auto_rank`), measured before every warm-up epoch, and the switch
comes as soon as every layer's rank has settled, after ``E`` epochs at the latest; a layer whose rank would not
cut its MACs stays dense. :class:`LowRankPhase` is that state; it is saved in every checkpoint
(``state["lowrank_phase"]``) so that a resumed run, ``eval`` and ``export`` rebuild the model in the form the
weights belong to, and it records the chosen ranks.

The optimizer at the switch: a new one (momentum and Adam moments start from zero, as in Pufferfish's and
Cuttlefish's code: the factors are new parameters, the dense weights' momentum has no meaning for them), while the
learning-rate schedule continues where it was (same global step).
"""

from __future__ import annotations

import copy
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from ..convert import ConversionReport, convert
from ..errors import CheckpointError
from ..utils.annotations import fits
from . import auto_rank
from .layer_timing import dense_is_faster

if TYPE_CHECKING:
    from ..distributed import DistInfo
    from .config import TrainConfig
    from .schedule import LRSchedule

PHASE_KEY = "lowrank_phase"
"""The checkpoint entry holding a run's :class:`LowRankPhase` (absent in runs built low-rank or dense)."""


@dataclass
class LowRankPhase:
    """Where a run with a dense phase stands (see the module doc).

    Attributes:
        switch_epoch: epochs trained dense before the switch (``None``: still dense).
        ranks: the rank of every converted layer, by module name (``rank="auto"`` only).
        dense_layers: convs left dense because their rank would not cut their MACs (``rank="auto"``).
        init_ranks: each tracked layer's stable rank at initialization (the scale of ``rank="auto"``).
        history: the scaled stable ranks measured before each warm-up epoch, ``[{layer: rank}, ...]``.
        settled: the layers whose rank has settled.
        source: the dense checkpoint a decomposed run started from (``lowrankcnn decompose``).
        low_rank_layers: the convs converted at the switch.
        timed_dense: layers kept dense because they trained at least as fast dense (``dense_if_faster``), with the
            median milliseconds of a training step of each form.
    """

    switch_epoch: int | None = None
    ranks: dict[str, int] = field(default_factory=dict)
    dense_layers: list[str] = field(default_factory=list)
    init_ranks: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, int]] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    source: str | None = None
    low_rank_layers: list[str] = field(default_factory=list)
    timed_dense: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def switched(self) -> bool:
        return self.switch_epoch is not None

    @property
    def stays_dense(self) -> bool:
        """Switched, but no layer was worth converting (automatic ranks that cut no MACs, or dense layers at least as
        fast): the model went on dense."""
        return self.switched and not self.low_rank_layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], path: object) -> LowRankPhase | None:
        """The phase saved in checkpoint ``state`` (``None`` if it has none); a ``CheckpointError`` if malformed."""
        saved = state.get(PHASE_KEY)
        if saved is None:
            return None
        hints = typing.get_type_hints(cls)
        bad = (
            "is not a dict"
            if not isinstance(saved, dict)
            else next((f"has an unknown field {k!r}" for k in saved if k not in hints), None)
            or next((f"field {k!r} is {v!r}" for k, v in saved.items() if not fits(v, hints[k])), None)
        )
        if bad is None:
            phase = cls(**saved)
            nested = [phase.ranks, *phase.history, phase.init_ranks]
            if not all(isinstance(k, str) and fits(v, int) and v >= 1 for d in nested for k, v in d.items()):
                bad = "has a rank that is not a positive integer"
            elif phase.switch_epoch is not None and phase.switch_epoch < 0:
                bad = f"switch_epoch is {phase.switch_epoch}"
        if bad is not None:
            raise CheckpointError(f"{path}: its {PHASE_KEY!r} entry {bad}; use another checkpoint")
        return phase

    def convert_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The run's ``convert`` keywords ``options`` plus what rebuilds the switched structure: the per-layer ranks
        and the layers kept dense (added to ``exclude``)."""
        merged = dict(options)
        if self.ranks:
            merged["per_layer"] = {name: {"rank": rank} for name, rank in self.ranks.items()}
        if self.dense_layers:
            merged["exclude"] = [*options.get("exclude", ()), *self.dense_layers]
        return merged


def candidates(model: nn.Module, method: str, options: Mapping[str, Any]) -> list[str]:
    """The convs ``convert(model, method, **options)`` would replace (found on a meta-device copy: no memory)."""
    stand_in = copy.deepcopy(model).to("meta")
    _, report = convert(stand_in, method, inplace=True, count=False, **options)
    return [layer.name for layer in report.converted]


def conv_weights(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    return {name: model.get_submodule(name).weight for name in names}


def measure_ranks(model: nn.Module, phase: LowRankPhase) -> dict[str, int]:
    """The scaled stable rank of every tracked layer now (``phase.init_ranks`` gives the layers and scales)."""
    weights = conv_weights(model, list(phase.init_ranks))
    return {name: auto_rank.scaled_rank(w, phase.init_ranks[name]) for name, w in weights.items()}


def breaks_even(conv: nn.Conv2d, rank: int) -> bool:
    """Whether a channel-rank layer of ``rank`` has fewer MACs than ``conv``: ``r (C_in k² + C_out) < C_out C_in k²``
    (the 1x1 runs at the output size, like the k x k, so per-pixel counts compare)."""
    kernel = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return rank * (kernel + conv.out_channels) < conv.out_channels * kernel


def switch(
    model: nn.Module,
    method: str,
    options: Mapping[str, Any],
    phase: LowRankPhase,
    epoch: int,
    auto: bool,
    count: bool = False,
    example_shape: tuple[int, ...] | None = None,
) -> tuple[nn.Module, ConversionReport | None]:
    """Convert the trained dense ``model`` (``init="fit"``), recording the switch in ``phase``; with ``auto`` each
    tracked layer gets its scaled stable rank now (the measurement of this ``epoch`` in ``phase.history`` if there
    is one), and layers where that rank saves no MACs stay dense. With an ``example_shape`` (a batch of the data), a
    converted layer that does not train faster than its dense conv stays dense too (:mod:`.layer_timing`). When no
    layer is left to convert, the model is returned as it is, with no report. ``count``: MACs in the report (a
    profile pass before and after, at the model's declared input)."""

    def fit() -> tuple[nn.Module, ConversionReport | None]:
        return convert(model, method, init="fit", count=count, **phase.convert_options(options))

    if auto:
        ranks = phase.history[epoch] if len(phase.history) == epoch + 1 else measure_ranks(model, phase)
        phase.dense_layers = [name for name, r in ranks.items() if not breaks_even(model.get_submodule(name), r)]
        phase.ranks = {name: r for name, r in ranks.items() if name not in phase.dense_layers}
    phase.switch_epoch = epoch
    converted, report = (model, None) if auto and not phase.ranks else fit()
    if report is not None and example_shape is not None:
        names = [layer.name for layer in report.converted]
        phase.timed_dense = dense_is_faster(model, converted, names, example_shape)
        if phase.timed_dense:
            phase.dense_layers += list(phase.timed_dense)
            phase.ranks = {n: r for n, r in phase.ranks.items() if n not in phase.timed_dense}
            converted, report = fit() if len(phase.timed_dense) < len(names) else (model, None)
    phase.low_rank_layers = [] if report is None else [layer.name for layer in report.converted]
    return converted, report


def start_auto(model: nn.Module, method: str, options: Mapping[str, Any]) -> LowRankPhase:
    """A fresh ``rank="auto"`` phase: the stable rank at initialization of every conv the method would replace."""
    names = candidates(model, method, options)
    return LowRankPhase(init_ranks={n: auto_rank.stable_rank(w) for n, w in conv_weights(model, names).items()})


def ready_to_switch(phase: LowRankPhase, epoch: int, warmup: int, auto: bool) -> bool:
    """Before epoch ``epoch + 1``: switch now? Fixed warm-up: after ``warmup`` epochs. Auto: once every tracked
    layer has settled (the measurement for ``epoch`` is already in ``phase.history``), else after ``warmup``."""
    if phase.switched:
        return False
    if epoch >= warmup:
        return True
    if not auto or epoch == 0:
        return False
    phase.settled = auto_rank.settled(phase.history[1:], phase.settled)  # [0]: at init, full rank by construction
    return len(phase.settled) == len(phase.init_ranks)


def fresh_phase(model: nn.Module, method: str, options: Mapping[str, Any], auto: bool) -> LowRankPhase:
    """The phase of a new run that starts dense: for ``auto`` ranks, the stable ranks of its initialization. The
    conversion is tried on a meta-device stand-in, so options it refuses fail now, not after the warm-up."""
    if auto:
        return start_auto(model, method, options)
    candidates(model, method, options)
    return LowRankPhase()


def check_phase_fits(phase: LowRankPhase | None, model: nn.Module, path: object) -> None:
    """A ``CheckpointError`` if ``phase`` (a resumed run's) names layers its dense model does not have."""
    if phase is None or phase.switched:
        return  # a switched phase's names are checked by the conversion that rebuilds the model
    modules = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    unknown = sorted(set(phase.init_ranks) - modules)
    if unknown:
        raise CheckpointError(f"{path}: its {PHASE_KEY!r} tracks {', '.join(unknown[:3])}, which the model lacks")


def before_epoch(
    phase: LowRankPhase,
    model: nn.Module,
    method: str,
    options: Mapping[str, Any],
    epoch: int,
    warmup: int,
    auto: bool,
    example_shape: tuple[int, ...] | None = None,
) -> tuple[nn.Module, ConversionReport | None] | None:
    """Before epoch ``epoch + 1`` of a dense phase: measure the ranks (``auto``; idempotent for one ``epoch``, so a
    resumed run measures the same) and switch if it is time; returns the converted model and its report, or ``None``
    while the run stays dense."""
    if phase.switched:
        return None
    if auto:
        del phase.history[epoch:]
        phase.history.append(measure_ranks(model, phase))
    if not ready_to_switch(phase, epoch, warmup, auto):
        return None
    return switch(model, method, options, phase, epoch, auto, example_shape=example_shape)


def switch_message(phase: LowRankPhase, report: ConversionReport | None, method: str) -> str:
    """The line a run prints at its switch."""
    epochs = phase.switch_epoch or 0
    after = f"after {epochs} dense epoch{'' if epochs == 1 else 's'}"
    if report is None:
        message = f"{after}: no layer is worth converting (no MAC or time saved); the model stays dense"
    else:
        ranks = ", ".join(f"{n} {r}" for n, r in phase.ranks.items())
        message = (
            f"{after}: converted to {method} ({len(report.converted)} convs, params "
            f"{report.params_before:,} -> {report.params_after:,})" + (f"; ranks: {ranks}" if ranks else "")
        )
    if phase.timed_dense:
        message += f"; kept dense (trains at least as fast): {', '.join(phase.timed_dense)}"
    return message


class PhaseSwitching:
    """Mixed into :class:`~.trainer.Trainer`: the switch of a run with a dense phase, on its ``config``, ``phase``,
    ``model``, ``info`` (the data's shape), ``epoch``, ``schedule`` and ``best_acc``."""

    config: TrainConfig
    phase: LowRankPhase | None
    model: nn.Module
    info: dict[str, Any]
    epoch: int
    schedule: LRSchedule
    optimizer: torch.optim.Optimizer
    best_acc: float
    verbose: bool
    dist: DistInfo

    _place: Callable[[nn.Module], None]  # the trainer's: device, memory format, DDP
    _make_optimizer: Callable[[], torch.optim.Optimizer]

    def _switch_if_due(self) -> None:
        """Before an epoch: measure the ranks and, when due, convert the model and start a new optimizer (the
        schedule goes on at the same step); see the module doc."""
        c = self.config
        if self.phase is None:
            return
        size = self.info["input_size"]  # a batch of the data, for timing each layer's training step
        example = (c.batch_size, self.info["in_chans"], size, size) if c.dense_if_faster else None
        auto = c.rank == "auto"
        switched = before_epoch(
            self.phase, self.model, c.lowrank, c.lowrank_options(), self.epoch, c.warmup_dense, auto, example
        )
        if switched is None:
            return
        model, report = switched
        if report is not None:
            self._place(model)
            self.optimizer = self._make_optimizer()
            self.schedule.rebind(self.optimizer)
            self.best_acc = -1.0  # best.pt: the best low-rank epoch, not a dense warm-up one
        message = switch_message(self.phase, report, c.lowrank)
        if self.verbose and self.dist.is_main:
            tqdm.write(message, file=sys.stdout)
