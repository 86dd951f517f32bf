"""Deploy transform: an inference-only copy of a model built from standard PyTorch modules.

``deploy(model, target)`` deep-copies ``model`` in eval mode, folds every batch
norm that follows a conv (or linear) layer into it, and replaces each low-rank
layer by standard modules computing the same function:

* ``target="factorized"``: composite layers run one conv per basis group,
  concatenated, then the join 1x1 (``CompositeConv2d.factorized``); separable
  layers their two convs; rank-1 and consecutive layers the 1-D chain
  (``rank1="fused"``: 1x1 then one depthwise k x k, the default, measured faster
  on CPU; ``rank1="chain"``: 1x1 -> depthwise k x 1 -> depthwise 1 x k).
* ``target="dense"``: every low-rank layer fused into one ``nn.Conv2d``
  (a ``ValueError`` names any layer that has no exact dense form).
* ``target="auto"``: per layer, whichever of the two is faster on this machine,
  timed once on the layer's real input shape; the decision and both timings are
  recorded on the chosen module (``deploy_form``, ``deploy_ms``).

Every replaced module carries ``deploy_form``; ``deploy_report`` lists them.
The original model is not modified.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .layers import CompositeConv2d, ConsecutiveConv2d, Rank1Conv2d, SeparableConv2d
from .layers.fold import fold_batchnorms_
from .layers.fuse import equivalent_dense_conv
from .timing import inference_fn, interleaved

TARGETS = ("factorized", "dense", "auto")
RANK1_FORMS = ("fused", "chain")
LOW_RANK: tuple[type[nn.Module], ...] = (CompositeConv2d, SeparableConv2d, Rank1Conv2d, ConsecutiveConv2d)


@dataclass(frozen=True)
class LayerChoice:
    """One deployed layer: its name, the form used, and the auto timings (ms per call, if timed)."""

    name: str
    form: str
    ms: dict[str, float]


def factorized_form(module: nn.Module, rank1: str = "fused") -> nn.Module:
    """Standard modules computing the low-rank layer ``module`` in its factorized form."""
    if isinstance(module, CompositeConv2d):
        return module.factorized()
    if isinstance(module, SeparableConv2d):
        return nn.Sequential(copy.deepcopy(module.horizontal), copy.deepcopy(module.vertical))
    if isinstance(module, (Rank1Conv2d, ConsecutiveConv2d)):
        return module.deploy(fuse_spatial=rank1 == "fused")
    raise ValueError(f"factorized_form: {type(module).__name__} is not a low-rank layer")


def _candidates(module: nn.Module, target: str, rank1: str) -> dict[str, nn.Module]:
    forms: dict[str, nn.Module] = {}
    if target in ("factorized", "auto"):
        forms["factorized"] = factorized_form(module, rank1)
    if target in ("dense", "auto"):
        try:
            forms["dense"] = equivalent_dense_conv(module)
        except ValueError:
            if target == "dense":
                raise
    return forms


def _input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, torch.Size]:
    """Input shape of every low-rank layer of ``model`` on a zero batch of ``input_shape``."""
    shapes: dict[str, torch.Size] = {}

    def record(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(_module: nn.Module, args: tuple) -> None:
            shapes.setdefault(name, args[0].shape)

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules() if isinstance(m, LOW_RANK)]
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def _time_forms(forms: dict[str, nn.Module], shape: torch.Size, channels_last: bool, repeats: int) -> dict[str, float]:
    """Median ms per call of each form on a random input of ``shape`` (timed interleaved)."""
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        forms = {k: m.to(memory_format=torch.channels_last) for k, m in forms.items()}
    timings = interleaved({k: inference_fn(m, x) for k, m in forms.items()}, repeats=repeats, warmup=2)
    return {k: t.median * 1e3 for k, t in timings.items()}


def _default_input_shape(model: nn.Module) -> tuple[int, int, int, int]:
    from .models import model_info

    name = getattr(model, "model_name", None)
    if name is None:
        raise ValueError(
            "deploy: target='auto' times each layer on its real input shape; pass input_shape=(N, C, H, W)"
        )
    info = model_info(name)
    return (1, getattr(model, "in_chans", info.in_chans), info.input_size, info.input_size)


@torch.no_grad()
def deploy(
    model: nn.Module,
    target: str = "factorized",
    rank1: str = "fused",
    channels_last: bool = False,
    input_shape: tuple[int, int, int, int] | None = None,
    repeats: int = 10,
) -> nn.Module:
    """An eval-mode, BN-folded copy of ``model`` with every low-rank layer in the ``target`` form.

    ``input_shape`` (``auto`` only) is the batch shape the layers are timed for; it defaults to
    batch 1 at the registered model's native size. ``channels_last`` converts the copy (feed it
    channels-last inputs too). Raises ``ValueError`` for an unknown target/rank1 form and, with
    ``target="dense"``, for a layer that has no exact dense form.
    """
    if target not in TARGETS:
        raise ValueError(f"deploy: target must be one of {', '.join(TARGETS)}, got {target!r}")
    if rank1 not in RANK1_FORMS:
        raise ValueError(f"deploy: rank1 must be one of {', '.join(RANK1_FORMS)}, got {rank1!r}")
    deployed = copy.deepcopy(model).eval()
    fold_batchnorms_(deployed)
    shapes: dict[str, torch.Size] = {}
    if target == "auto":
        shapes = _input_shapes(deployed, input_shape or _default_input_shape(deployed))
    for name, module in [(n, m) for n, m in deployed.named_modules() if isinstance(m, LOW_RANK)]:
        try:
            forms = _candidates(module, target, rank1)
        except ValueError as err:
            raise ValueError(f"deploy: layer {name or type(module).__name__}: {err}; use target='factorized'") from None
        ms = _time_forms(forms, shapes[name], channels_last, repeats) if name in shapes and len(forms) > 1 else {}
        form = min(ms, key=ms.__getitem__) if ms else next(iter(forms))
        chosen = forms[form]
        chosen.deploy_form, chosen.deploy_ms = form, ms
        if not name:
            deployed = chosen
            break
        parent, _, child = name.rpartition(".")
        setattr(deployed.get_submodule(parent), child, chosen)
    for p in deployed.parameters():
        p.requires_grad_(False)
    if channels_last:
        deployed = deployed.to(memory_format=torch.channels_last)
    return deployed.eval()


def deploy_report(deployed: nn.Module) -> list[LayerChoice]:
    """The layers ``deploy`` replaced, in module order, with their form and auto timings."""
    return [
        LayerChoice(name, m.deploy_form, dict(m.deploy_ms))
        for name, m in deployed.named_modules()
        if hasattr(m, "deploy_form")
    ]
