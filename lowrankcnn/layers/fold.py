"""Folding batch norm into the layer before it, only where that is provably exact.

In eval mode a batch norm is a per-channel affine map ``y -> scale * y + shift``.
Every layer here computes a linear map plus a per-output-channel bias, so the
affine map can be moved into its last weights and its bias exactly:
``fold_affine_(layer, scale, shift)`` rewrites ``layer`` in place so that it
computes ``scale * layer(x) + shift`` (channel axis 1). A low-rank layer does it itself
(``LowRankConv2d.fold_affine_`` / ``fold_batchnorm_``).

``fold_batchnorms_`` folds a batch norm into the layer before it in an ``nn.Sequential`` only when
nothing else can see the change:

* the container runs ``nn.Sequential.forward`` (a subclass that overrides ``forward`` may call its
  children in any order, so adjacency there says nothing about the data flow);
* the layer, the batch norm and the weights being rewritten belong to that container alone (a module
  or parameter registered under another name is shared with another part of the model);
* with ``calls`` (how often each module ran in one forward pass, see :func:`count_calls`), the layer
  and the batch norm run exactly as often as their container (a module also called directly from a
  ``forward``, or held unregistered elsewhere, is shared too).

Every batch norm after a foldable layer that is left alone is reported with the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ._deprecation import warn_renamed
from .base import LowRankConv2d, batchnorm_affine, fold_into_
from .fold_graph import after_fold, fold_traced_batchnorms_, unfolded_batchnorms

BATCH_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
"""The batch-norm layers (a lazy one becomes one of these on its first call): what ``fold_batchnorms_`` may fold
and ``init_weights_`` resets."""


def __getattr__(name: str) -> object:
    if name == "BatchNorm":  # the old name of BATCH_NORM_TYPES
        warn_renamed("lowrankcnn.layers.fold.BatchNorm", "BATCH_NORM_TYPES")
        return BATCH_NORM_TYPES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plain_sequential(module: nn.Module) -> bool:
    """``module`` is an ``nn.Sequential`` whose ``forward`` is ``nn.Sequential.forward`` (children in order)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def fold_path(module: nn.Module, channels: int) -> list[nn.Module] | None:
    """The modules ``fold_affine_(module, ...)`` with ``channels`` outputs would go through, outermost first.

    ``None`` if ``module`` cannot absorb a per-channel affine map of ``channels`` channels (not a supported
    layer, or a channel mismatch). An ``nn.Sequential`` on the path stands for its last module; a low-rank
    layer is the end of the path (it folds the map into itself).
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return [module] if module.weight.shape[0] == channels else None
    if isinstance(module, nn.Sequential):
        inner = fold_path(module[-1], channels) if len(module) else None
        return None if inner is None else [module, *inner]
    if isinstance(module, LowRankConv2d):
        return [module] if module.out_channels == channels else None
    return None


@torch.no_grad()
def fold_affine_(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> bool:
    """Make ``module`` compute ``scale * module(x) + shift``; return False if it cannot.

    Supported: ``nn.Conv2d`` (any groups), ``nn.Linear``, every low-rank layer (``LowRankConv2d.fold_affine_``)
    and an ``nn.Sequential`` whose last module is one of these (the caller vouches that it is last in the data flow
    too).
    """
    path = fold_path(module, scale.numel())
    if path is None:
        return False
    leaf = path[-1]
    if isinstance(leaf, LowRankConv2d):
        leaf.fold_affine_(scale, shift)
    else:
        fold_into_(leaf, leaf.weight, scale, shift)
    return True


def count_calls(model: nn.Module, run: Callable[[], object]) -> Counter[nn.Module]:
    """How often each module is called while ``run()`` executes (every module, registered or not)."""
    calls: Counter[nn.Module] = Counter()

    def hook(module: nn.Module, _args: tuple) -> None:
        calls[module] += 1

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return calls


@dataclass
class Folds:
    """What ``fold_batchnorms_`` did: ``folded`` batch norms (now ``nn.Identity``) and, for each batch norm
    after a foldable layer that was left alone, why (``kept``: qualified name -> reason)."""

    folded: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


def _why_not(
    parent: nn.Module,
    path: list[nn.Module],
    bn: nn.Module,
    names: Counter[nn.Module],
    params: Counter[int],
    calls: Mapping[nn.Module, int] | None,
    layer: str,
) -> str | None:
    """Why folding ``bn`` into ``path`` inside ``parent`` might not be exact (``None``: it is exact)."""
    custom = next((m for m in (parent, *path) if isinstance(m, nn.Sequential) and not plain_sequential(m)), None)
    if custom is not None:
        return (
            f"inside {type(custom).__name__}, an nn.Sequential subclass with its own forward: the order of its "
            "children need not be its data flow"
        )
    if any(names[m] != names[parent] for m in (*path, bn)):
        return f"{layer} or the batch norm is registered elsewhere in the model too (shared)"
    if any(params[id(p)] != names[parent] for p in path[-1].parameters()):
        return f"the weights of {layer} are shared with another module"
    if calls is not None and any(calls.get(m, 0) != calls.get(parent, 0) for m in (*path, bn)):
        counts = ", ".join(f"{type(m).__name__} {calls.get(m, 0)}x" for m in (parent, path[-1], bn))
        return f"{layer} or the batch norm is also called outside its nn.Sequential (calls: {counts})"
    return None


@torch.no_grad()
def fold_batchnorms_(
    model: nn.Module, calls: Mapping[nn.Module, int] | None = None, *, keep_all: str | None = None
) -> Folds:
    """Fold every batch norm that directly follows a foldable layer, where exact: neighbours in an ``nn.Sequential``,
    then (with ``calls``) pairs the traced data flow shows (:mod:`~lowrankcnn.layers.fold_graph`: residual blocks
    that call ``self.conv1``/``self.bn1``). Every batch norm left is in ``kept`` with the reason.

    Args:
        model: an eval-mode copy (its weights are rewritten; folded batch norms become ``nn.Identity``,
            names kept).
        calls: calls per module in one forward pass (:func:`count_calls`). Without it a module that a
            ``forward`` calls directly besides its ``nn.Sequential`` cannot be detected; pass it unless the
            model is known to be free of such reuse.
        keep_all: fold nothing; every batch norm that would have been folded is kept with this reason.

    Returns:
        :class:`Folds`: the folded batch norms and the kept ones with the reason (see the module doc).
    """
    names = Counter(m for _, m in model.named_modules(remove_duplicate=False))
    params = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    result = Folds()
    for prefix, parent in list(model.named_modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        keys = list(parent._modules)
        for before, key in zip(keys, keys[1:], strict=False):
            bn, layer = parent._modules[key], parent._modules[before]
            qualified = f"{prefix}.{key}" if prefix else key
            if not isinstance(bn, BATCH_NORM_TYPES) or after_fold(bn) is None or bn.running_mean is None or not layer:
                continue
            path = fold_path(layer, bn.num_features)
            if path is None:
                continue
            layer_name = f"{prefix}.{before}" if prefix else before
            reason = _why_not(parent, path, bn, names, params, calls, layer_name) or keep_all
            if reason is not None:
                result.kept[qualified] = f"not folded into {layer_name}: {reason}"
                continue
            if isinstance(path[-1], LowRankConv2d):
                path[-1].fold_batchnorm_(bn)
            else:
                fold_affine_(layer, *batchnorm_affine(bn))
            parent._modules[key] = after_fold(bn)
            result.folded.append(qualified)
    if calls is not None and keep_all is None:  # blocks that call their layers as attributes: the traced graph
        fold_traced_batchnorms_(model, calls, names, params, result.folded, result.kept)
    for name, why in unfolded_batchnorms(model, result.kept).items():
        result.kept[name] = keep_all or why
    return result
