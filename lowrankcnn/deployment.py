"""Deploy transform: an inference-only copy of a model built from standard PyTorch modules.

``deploy(model, target)`` deep-copies ``model`` in eval mode, folds every batch
norm that follows a conv (or linear) layer into it where that is provably exact
(:mod:`lowrankcnn.layers.fold`), and replaces each low-rank layer by standard
modules computing the same function:

* ``target="factorized"``: every low-rank layer (``LowRankConv2d``) becomes its first ``deploy_forms()``
  entry: composite layers run one conv per basis group, concatenated, then the join 1x1; separable
  layers their two convs; rank-1 and consecutive layers a 1x1 conv then depthwise
  convs (``rank1="depthwise"``: 1x1 then one depthwise k x k, the default, measured
  faster on CPU; ``rank1="chain"``: 1x1 -> depthwise k x 1 -> depthwise 1 x k: ``rank1`` picks the form of
  that name where a layer has one). ``rank1="fused"``, the old name of ``"depthwise"``, still works (deprecated).
* ``target="dense"``: every low-rank layer fused into its dense form, one ``nn.Conv2d`` (``to_dense()``;
  a ``ConfigError`` names any layer that has no exact dense form).
* ``target="auto"`` (the default): per layer, whichever of the two is faster on this machine, timed
  interleaved on the layer's real input shape, in rounds of ``repeats`` until the faster form wins beyond the
  noise (its upper quartile below the other's lower quartile), at most ``lowrankcnn.timing.AUTO_ROUNDS`` rounds;
  a layer still undecided keeps the factorized form (the rule: fewer MACs, unless measured slower). The decision, the
  timings and any note are recorded on the chosen module (``deploy_form``, ``deploy_ms``, ``deploy_note``).
  With ``channels_last=None`` (the default) ``auto`` also deploys the model in both memory formats and keeps
  the one whose whole forward is faster (the same beyond-noise rule; undecided: NCHW).

``deploy_decision(deployed)`` reports the whole-model decision: the input shape and where it came from, the
memory format and its timings, the device, and notes (e.g. timings too noisy to trust).

The input shape (``input_shape``, else batch 1 at the size the model's ``default_cfg`` declares, else batch 1
at 224 x 224 with its first conv's input channels) drives one forward pass on a zero batch that counts how
often each module runs (a conv that a ``forward`` also calls outside its ``nn.Sequential`` is shared, and
folding into it would change its other use) and the ``auto`` timings. A guessed shape the model refuses
leaves batch norms unfolded and every layer factorized, with the reason; a given or declared one it refuses is
a ``ShapeError``.

``deploy_report`` lists every replaced layer, and every batch norm after a foldable layer that was
kept (form ``"unfolded"``) with the reason. A low-rank module registered under several names is
replaced everywhere by one deployed module. The original model is not modified.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from .errors import ConfigError, LowRankCNNError
from .layers import LowRankConv2d
from .layers.fold import BATCH_NORM_TYPES, count_calls, fold_batchnorms_
from .models.cfg import model_cfg
from .profiling import input_channels
from .timing import (
    MEMORY_FORMATS,
    TORCH_FORMATS,
    MemoryFormat,
    fastest,
    inference_fn,
)
from .utils import model_device, resolve_device
from .utils.probe import probe, zeros_for

Target = Literal["factorized", "dense", "auto"]
Rank1Deploy = Literal["depthwise", "chain"]
"""Factorized form of a rank-1 layer: ``"depthwise"`` (1x1 conv, one depthwise k_h x k_w) or ``"chain"``
(1x1 conv, depthwise k_h x 1, depthwise 1 x k_w)."""
TARGETS: tuple[Target, ...] = get_args(Target)
RANK1_FORMS: tuple[Rank1Deploy, ...] = get_args(Rank1Deploy)
_RANK1_RENAMED = {"fused": "depthwise"}
"""Old ``rank1`` names, still accepted with a ``DeprecationWarning``."""
LOW_RANK: tuple[type[nn.Module], ...] = (LowRankConv2d,)
"""What ``deploy`` replaces: every layer implementing the low-rank protocol."""


@dataclass(frozen=True)
class LayerChoice:
    """One deployed layer: its name, the form used (``"factorized"``, ``"dense"``, or ``"unfolded"`` for a
    batch norm left in place), the auto timings (ms per call, if timed) and why (for ``"unfolded"``)."""

    name: str
    form: str
    ms: dict[str, float]
    note: str = ""


def factorized_form(module: nn.Module, rank1: Rank1Deploy = "depthwise") -> nn.Module:
    """Standard modules computing the low-rank layer ``module`` in its factorized form: its ``deploy_forms()``
    entry named ``rank1`` if it has one (rank-1 layers), else its first."""
    if not isinstance(module, LowRankConv2d):
        raise ConfigError(f"factorized_form: {type(module).__name__} is not a low-rank layer")
    name = _rank1_form(rank1, stacklevel=2)
    forms = module.deploy_forms()
    return forms[name] if name in forms else forms[next(iter(forms))]


def _candidates(module: LowRankConv2d, target: Target, rank1: Rank1Deploy) -> dict[str, nn.Module]:
    forms: dict[str, nn.Module] = {}
    if target in ("factorized", "auto"):
        forms["factorized"] = factorized_form(module, rank1)
    if target in ("dense", "auto"):
        try:
            forms["dense"] = module.to_dense()
        except ConfigError:
            if target == "dense":
                raise
    return forms


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[dict[nn.Module, int], dict[nn.Module, torch.Size]]:
    """Calls per module and the input shape of every low-rank layer, on a zero batch of ``input_shape``."""
    shapes: dict[nn.Module, torch.Size] = {}

    def record(module: nn.Module, args: tuple) -> None:
        shapes.setdefault(module, args[0].shape)

    x = zeros_for(model, tuple(input_shape))
    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, LOW_RANK)]
    calls = probe(
        model,
        hooks,
        f"deploy: the model does not run on a batch shaped {tuple(input_shape)}",
        "pass the $input_shape it takes",
        "input_shape",
        lambda: count_calls(model, lambda: model(x)),
    )
    return dict(calls), shapes


def _time_forms(
    forms: dict[str, nn.Module], shape: torch.Size, fmt: MemoryFormat, repeats: int, device: torch.device
) -> tuple[str, dict[str, float], str]:
    """The faster of a layer's forms on a random input of ``shape`` (:func:`~lowrankcnn.timing.fastest`, fallback
    factorized)."""
    x = torch.randn(shape, device=device).contiguous(memory_format=TORCH_FORMATS[fmt])
    ready = {k: m.to(device=device, memory_format=TORCH_FORMATS[fmt]) for k, m in forms.items()}
    return fastest({k: inference_fn(m, x) for k, m in ready.items()}, repeats, device, "factorized")


def _guess_input_shape(model: nn.Module) -> tuple[tuple[int, int, int, int] | None, str]:
    """Batch 1 at the size ``model.default_cfg`` declares, else at 224 x 224 with its first conv's input channels;
    and where that came from."""
    cfg = model_cfg(model)
    if cfg is not None:
        return (1, cfg.in_chans, cfg.input_size, cfg.input_size), "batch 1 at the size its default_cfg declares"
    channels = input_channels(model)
    if channels is None:
        return None, "no input shape: the model declares none and does not start with a conv"
    return (
        1,
        channels,
        GUESSED_SIZE,
        GUESSED_SIZE,
    ), f"guessed: batch 1 at {GUESSED_SIZE}x{GUESSED_SIZE} (no default_cfg)"


GUESSED_SIZE = 224
"""Square input size ``deploy`` assumes for a model that declares none (the ImageNet convention)."""


@dataclass(frozen=True)
class DeployDecision:
    """What ``deploy`` decided for the whole model (``deploy_decision(deployed)``).

    ``input_shape`` traced and timed with (``None``: none known) and ``input_source`` (given, declared, guessed);
    ``memory_format`` chosen; ``format_ms``: whole-model median ms per memory format when both were timed;
    ``notes``: anything the user should know (an undecided choice, a guessed shape the model refused).
    """

    target: str
    input_shape: tuple[int, ...] | None
    input_source: str
    memory_format: MemoryFormat
    format_ms: dict[str, float]
    device: str
    notes: tuple[str, ...] = ()

    def text(self) -> str:
        """One line: ``deploy auto at (1, 3, 224, 224) (given) on cpu: channels_last (contiguous 3.1 ms, ...)``."""
        timed = ", ".join(f"{k} {v:.3f} ms" for k, v in self.format_ms.items())
        shape = "no input shape" if self.input_shape is None else f"{self.input_shape} ({self.input_source})"
        notes = "".join(f"; {n}" for n in self.notes)
        return (
            f"deploy {self.target} at {shape} on {self.device}: {self.memory_format}"
            + (f" ({timed})" if timed else "")
            + notes
        )


def deploy_decision(deployed: nn.Module) -> DeployDecision | None:
    """The whole-model decision ``deploy`` recorded on ``deployed`` (``None`` for a model it did not make)."""
    decision = getattr(deployed, "deploy_decision", None)
    return decision if isinstance(decision, DeployDecision) else None


def _rank1_form(rank1: str, stacklevel: int) -> Rank1Deploy:
    """``rank1`` checked, an old name replaced by the new one (with a ``DeprecationWarning`` for the caller
    ``stacklevel`` frames above this function)."""
    if rank1 in _RANK1_RENAMED:
        new = _RANK1_RENAMED[rank1]
        warnings.warn(
            f"deploy: rank1={rank1!r} is deprecated; use rank1={new!r}", DeprecationWarning, stacklevel=stacklevel + 1
        )
        return new  # type: ignore[return-value]
    if rank1 not in RANK1_FORMS:
        raise ConfigError(f"deploy: $rank1 must be one of {', '.join(RANK1_FORMS)}, got {rank1!r}", param="rank1")
    return rank1  # type: ignore[return-value]


def _check_arguments(
    target: str, rank1: str, channels_last: object, input_shape: object, repeats: object
) -> Rank1Deploy:
    """Refuse a bad argument of ``deploy``; return ``rank1`` under its current name."""
    if target not in TARGETS:
        raise ConfigError(f"deploy: $target must be one of {', '.join(TARGETS)}, got {target!r}", param="target")
    rank1 = _rank1_form(rank1, stacklevel=4)  # _check_arguments, deploy, no_grad's wrapper, deploy's caller
    if channels_last is not None and not isinstance(channels_last, bool):
        raise ConfigError(f"deploy: $channels_last must be True, False or None, got {channels_last!r}")
    if input_shape is not None and (
        not isinstance(input_shape, (tuple, list, torch.Size))
        or len(input_shape) < 2
        or not all(type(s) is int and s > 0 for s in input_shape)
    ):
        raise ConfigError(
            f"deploy: $input_shape must be positive integers (N, C, H, W), got {input_shape!r}", param="input_shape"
        )
    if type(repeats) is not int or repeats < 1:
        raise ConfigError(f"deploy: $repeats must be an integer >= 1, got {repeats!r}", param="repeats")
    return rank1


@dataclass
class _Trace:
    """What one forward pass found: calls per module (``None``: not traced), low-rank input shapes, and why not."""

    calls: dict[nn.Module, int] | None
    shapes: dict[nn.Module, torch.Size]
    untraced: str | None = None


def _trace_for_deploy(model: nn.Module, target: Target, shape: tuple[int, ...] | None, given: bool) -> _Trace:
    """Trace ``model`` on a zero batch of ``shape``; skipped when nothing needs it (no batch norm to fold and no
    timing). A ``given`` shape the model refuses is a ``ShapeError``; a declared or guessed one leaves the model
    untraced, with the reason."""
    if target != "auto" and not any(isinstance(m, BATCH_NORM_TYPES) for m in model.modules()):
        return _Trace(None, {})
    if shape is None:
        return _Trace(None, {}, "no input shape to trace the forward pass with; pass input_shape=(N, C, H, W)")
    try:
        calls, shapes = _trace(model, shape)
    except LowRankCNNError:
        if given:
            raise
        return _Trace(None, {}, f"it does not run on the assumed input {shape}; pass input_shape=(N, C, H, W)")
    return _Trace(calls, shapes)


def _replace(root: nn.Module, module: nn.Module, new: nn.Module) -> nn.Module:
    """Put ``new`` wherever ``module`` is registered in ``root`` (every name); returns the new root."""
    if module is root:
        return new
    for name, m in list(root.named_modules(remove_duplicate=False)):
        if m is module:
            parent, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent), child, new)
    return root


def _deploy_in(
    model: nn.Module,
    target: Target,
    rank1: Rank1Deploy,
    fmt: MemoryFormat,
    shape: tuple[int, ...] | None,
    given: bool,
    repeats: int,
    device: torch.device,
) -> tuple[nn.Module, _Trace]:
    """``model`` (a private copy, changed in place) deployed in memory format ``fmt``."""
    trace = _trace_for_deploy(model, target, shape, given)
    folds = fold_batchnorms_(model, trace.calls, keep_all=trace.untraced)
    for name, reason in folds.kept.items():
        bn = model.get_submodule(name)
        bn.deploy_form, bn.deploy_ms, bn.deploy_note = "unfolded", {}, reason
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, LOW_RANK)]:
        try:
            forms = _candidates(module, target, rank1)
        except ConfigError as err:
            raise ConfigError(
                f"deploy: layer {name or type(module).__name__}: {err}; use $target='factorized'", param="target"
            ) from None
        form, ms, note = next(iter(forms)), {}, ""
        if module in trace.shapes and len(forms) > 1:
            form, ms, note = _time_forms(forms, trace.shapes[module], fmt, repeats, device)
        chosen = forms[form]
        chosen.deploy_form, chosen.deploy_ms, chosen.deploy_note = form, ms, note
        model = _replace(model, module, chosen)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device=device, memory_format=TORCH_FORMATS[fmt]).eval(), trace


def _device_of(model: nn.Module, device: torch.device | str | None) -> torch.device:
    return resolve_device(str(device)) if device is not None else model_device(model)


@torch.no_grad()
def deploy(
    model: nn.Module,
    target: Target = "auto",
    rank1: Rank1Deploy = "depthwise",
    channels_last: bool | None = None,
    input_shape: tuple[int, int, int, int] | None = None,
    repeats: int = 10,
    device: torch.device | str | None = None,
) -> nn.Module:
    """An eval-mode, BN-folded copy of ``model`` with every low-rank layer in the ``target`` form.

    Args:
        model: any module; its low-rank layers are replaced, the rest is kept.
        target: ``"auto"`` (default: the faster form per layer, measured), ``"factorized"`` or ``"dense"`` (see
            the module doc).
        rank1: factorized form of rank-1 and consecutive layers, ``"depthwise"`` (1x1 conv, one depthwise
            k_h x k_w) or ``"chain"`` (1x1 conv, depthwise k_h x 1, depthwise 1 x k_w); ``"fused"`` is the
            deprecated name of ``"depthwise"``.
        channels_last: the copy's memory format (feed it inputs in the same format); ``None``: with ``auto``,
            the faster of the two, measured; otherwise NCHW.
        input_shape: ``(N, C, H, W)`` of the batch that traces the forward pass (which batch norms can be folded)
            and that ``auto`` times for; default: see the module doc.
        repeats: timed calls per form and round (``auto``).
        device: where the copy lives and is timed (``"cpu"``, ``"cuda"``, ``"auto"``); default: the model's.

    Raises:
        ConfigError: an unknown target/rank1/device, or (``dense``) a layer with no exact dense form.
        ShapeError: the model does not run on the given ``input_shape``.
    """
    rank1 = _check_arguments(target, rank1, channels_last, input_shape, repeats)
    dev = _device_of(model, device)
    base = copy.deepcopy(model).eval().to(dev)
    given = input_shape is not None
    shape, source = (tuple(input_shape), "given") if given else _guess_input_shape(base)
    timed = target == "auto" and shape is not None
    if channels_last is None and timed:
        formats: tuple[MemoryFormat, ...] = MEMORY_FORMATS
    else:
        formats = ("channels_last",) if channels_last else ("contiguous",)
    built = {
        fmt: _deploy_in(copy.deepcopy(base) if i else base, target, rank1, fmt, shape, given, repeats, dev)
        for i, fmt in enumerate(formats)
    }
    untraced = built[formats[0]][1].untraced
    notes = [] if untraced is None else [f"batch norms not folded: {untraced}"]
    fmt, format_ms = formats[0], {}
    if len(formats) > 1 and built[fmt][1].calls is not None:
        x = zeros_for(base, shape)
        fns = {f: inference_fn(m, x.contiguous(memory_format=TORCH_FORMATS[f])) for f, (m, _) in built.items()}
        fmt, format_ms, note = fastest(fns, repeats, dev, "contiguous")
        notes += [f"memory format {note}"] if note else []
    deployed = built[fmt][0]
    deployed.deploy_decision = DeployDecision(target, shape, source, fmt, format_ms, str(dev), tuple(notes))
    return deployed


def deploy_report(deployed: nn.Module) -> list[LayerChoice]:
    """The layers ``deploy`` replaced and the batch norms it kept, in module order, with form, timings and a note
    (why a batch norm was kept; an ``auto`` choice decided by the rule)."""
    return [
        LayerChoice(name, m.deploy_form, dict(m.deploy_ms), getattr(m, "deploy_note", ""))
        for name, m in deployed.named_modules()
        if hasattr(m, "deploy_form")
    ]
