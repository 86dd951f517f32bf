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
* ``target="auto"``: per layer, whichever of the two is faster on this machine,
  timed once on the layer's real input shape; the decision and both timings are
  recorded on the chosen module (``deploy_form``, ``deploy_ms``).

Batch-norm folding needs one forward pass on a zero batch of ``input_shape`` (by default batch 1 at a
registered model's native size) to count how often each module runs: a conv that a ``forward``
also calls outside its ``nn.Sequential`` is shared, and folding into it would change its other use.
Without an input shape (an unregistered model and no ``input_shape``) nothing is folded.

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
from .timing import inference_fn, interleaved
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


def _time_forms(forms: dict[str, nn.Module], shape: torch.Size, channels_last: bool, repeats: int) -> dict[str, float]:
    """Median ms per call of each form on a random input of ``shape`` (timed interleaved)."""
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        forms = {k: m.to(memory_format=torch.channels_last) for k, m in forms.items()}
    timings = interleaved({k: inference_fn(m, x) for k, m in forms.items()}, repeats=repeats, warmup=2)
    return {k: t.median * 1e3 for k, t in timings.items()}


def _default_input_shape(model: nn.Module) -> tuple[int, int, int, int] | None:
    """Batch 1 at the input size the model declares (``model.default_cfg``), or ``None`` if it declares none."""
    cfg = model_cfg(model)
    return None if cfg is None else (1, cfg.in_chans, cfg.input_size, cfg.input_size)


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


def _check_arguments(target: str, rank1: str, input_shape: object, repeats: object) -> Rank1Deploy:
    """Refuse a bad argument of ``deploy``; return ``rank1`` under its current name."""
    if target not in TARGETS:
        raise ConfigError(f"deploy: $target must be one of {', '.join(TARGETS)}, got {target!r}", param="target")
    rank1 = _rank1_form(rank1, stacklevel=4)  # _check_arguments, deploy, no_grad's wrapper, deploy's caller
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


def _trace_for_deploy(
    model: nn.Module, target: Target, input_shape: tuple[int, ...] | None
) -> tuple[dict[nn.Module, int] | None, dict[nn.Module, torch.Size], str | None]:
    """``(calls, low-rank input shapes, None)``, or ``(None, {}, why batch norms cannot be folded)``.

    The forward pass is skipped when nothing needs it (no batch norm to fold and no timing).
    """
    if target != "auto" and not any(isinstance(m, BATCH_NORM_TYPES) for m in model.modules()):
        return None, {}, None
    if input_shape is not None:
        calls, shapes = _trace(model, tuple(input_shape))
        return calls, shapes, None
    shape = _default_input_shape(model)
    if shape is None and target == "auto":
        raise ConfigError(
            "deploy: target='auto' times each layer on its real input shape; pass $input_shape=(N, C, H, W)",
            param="input_shape",
        )
    why = "no input shape to trace the forward pass with; pass input_shape=(N, C, H, W)"
    if shape is None:
        return None, {}, why
    try:
        calls, shapes = _trace(model, shape)
    except LowRankCNNError:
        if target == "auto":
            raise
        return None, {}, f"{why} (it does not run at its native size {shape})"
    return calls, shapes, None


def _replace(root: nn.Module, module: nn.Module, new: nn.Module) -> nn.Module:
    """Put ``new`` wherever ``module`` is registered in ``root`` (every name); returns the new root."""
    if module is root:
        return new
    for name, m in list(root.named_modules(remove_duplicate=False)):
        if m is module:
            parent, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent), child, new)
    return root


@torch.no_grad()
def deploy(
    model: nn.Module,
    target: Target = "factorized",
    rank1: Rank1Deploy = "depthwise",
    channels_last: bool = False,
    input_shape: tuple[int, int, int, int] | None = None,
    repeats: int = 10,
) -> nn.Module:
    """An eval-mode, BN-folded copy of ``model`` with every low-rank layer in the ``target`` form.

    Args:
        model: any module; its low-rank layers are replaced, the rest is kept.
        target: ``"factorized"``, ``"dense"`` or ``"auto"`` (see the module doc).
        rank1: factorized form of rank-1 and consecutive layers, ``"depthwise"`` (1x1 conv, one depthwise
            k_h x k_w) or ``"chain"`` (1x1 conv, depthwise k_h x 1, depthwise 1 x k_w); ``"fused"`` is the
            deprecated name of ``"depthwise"``.
        channels_last: convert the copy to channels-last (feed it channels-last inputs too).
        input_shape: ``(N, C, H, W)`` of the zero batch that traces the forward pass (which batch norms can
            be folded) and that ``auto`` times the layers for; defaults to batch 1 at the registered model's
            native size. Required for ``auto`` on a model not built by ``create_model``.
        repeats: timed calls per form (``auto``).

    Raises:
        ConfigError: an unknown target/rank1, ``auto`` without an input shape, or (``dense``) a layer with no
            exact dense form.
        ShapeError: the model does not run on ``input_shape``.
    """
    rank1 = _check_arguments(target, rank1, input_shape, repeats)
    deployed = copy.deepcopy(model).eval()
    calls, shapes, untraced = _trace_for_deploy(deployed, target, input_shape)
    folds = fold_batchnorms_(deployed, calls, keep_all=untraced)
    for name, reason in folds.kept.items():
        bn = deployed.get_submodule(name)
        bn.deploy_form, bn.deploy_ms, bn.deploy_note = "unfolded", {}, reason
    for name, module in [(n, m) for n, m in deployed.named_modules() if isinstance(m, LOW_RANK)]:
        try:
            forms = _candidates(module, target, rank1)
        except ConfigError as err:
            raise ConfigError(
                f"deploy: layer {name or type(module).__name__}: {err}; use $target='factorized'", param="target"
            ) from None
        ms = _time_forms(forms, shapes[module], channels_last, repeats) if module in shapes and len(forms) > 1 else {}
        form = min(ms, key=ms.__getitem__) if ms else next(iter(forms))
        chosen = forms[form]
        chosen.deploy_form, chosen.deploy_ms = form, ms
        deployed = _replace(deployed, module, chosen)
    for p in deployed.parameters():
        p.requires_grad_(False)
    if channels_last:
        deployed = deployed.to(memory_format=torch.channels_last)
    return deployed.eval()


def deploy_report(deployed: nn.Module) -> list[LayerChoice]:
    """The layers ``deploy`` replaced and the batch norms it kept, in module order, with form, timings, reason."""
    return [
        LayerChoice(name, m.deploy_form, dict(m.deploy_ms), getattr(m, "deploy_note", ""))
        for name, m in deployed.named_modules()
        if hasattr(m, "deploy_form")
    ]
