"""Folding batch norm into the layer before it, only where that is provably exact.

In eval mode a batch norm is a per-channel affine map ``y -> scale * y + shift``.
Every layer here computes a linear map plus a per-output-channel bias, so the
affine map can be moved into its last weights and its bias exactly:
``fold_affine_(layer, scale, shift)`` rewrites ``layer`` in place so that it
computes ``scale * layer(x) + shift`` (channel axis 1).

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

from ..errors import ConfigError
from ._deprecation import warn_renamed
from .composite import CompositeConv2d
from .rank1 import ConsecutiveConv2d, Rank1Conv2d
from .separable import SeparableConv2d

BATCH_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
"""The batch-norm layers (a lazy one becomes one of these on its first call): what ``fold_batchnorms_`` may fold
and ``init_weights_`` resets."""


def __getattr__(name: str) -> object:
    if name == "BatchNorm":  # the old name of BATCH_NORM_TYPES
        warn_renamed("lowrankcnn.layers.fold.BatchNorm", "BATCH_NORM_TYPES")
        return BATCH_NORM_TYPES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of ``bn`` in eval mode: ``bn(y) = scale * y + shift`` per channel.

    Raises ``ConfigError`` for a batch norm without running statistics (it normalizes by the
    batch's own statistics even in eval mode, which no fixed affine map reproduces).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError(f"{type(bn).__name__} without running statistics cannot be folded")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.weight is not None:
        scale = scale * bn.weight
        shift = shift * bn.weight
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


def plain_sequential(module: nn.Module) -> bool:
    """``module`` is an ``nn.Sequential`` whose ``forward`` is ``nn.Sequential.forward`` (children in order)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def fold_path(module: nn.Module, channels: int) -> list[nn.Module] | None:
    """The modules ``fold_affine_(module, ...)`` with ``channels`` outputs would go through, outermost first.

    ``None`` if ``module`` cannot absorb a per-channel affine map of ``channels`` channels (not a supported
    layer, or a channel mismatch). An ``nn.Sequential`` on the path stands for its last module.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return [module] if module.weight.shape[0] == channels else None
    if isinstance(module, nn.Sequential):
        inner = fold_path(module[-1], channels) if len(module) else None
        return None if inner is None else [module, *inner]
    if getattr(module, "out_channels", None) != channels:
        return None
    last: nn.Module | None = None
    if isinstance(module, CompositeConv2d) and module.join is not None:
        last = module.join
    elif isinstance(module, SeparableConv2d):
        last = module.conv_kx1
    elif isinstance(module, ConsecutiveConv2d):
        last = module.conv_1xk
    elif not isinstance(module, (CompositeConv2d, Rank1Conv2d)):
        return None
    if last is None:
        return [module]
    inner = fold_path(last, channels)
    return None if inner is None else [module, *inner]


def _fold_into(module: nn.Module, weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``weight[o] *= scale[o]``; ``module.bias = scale * bias + shift`` (a bias is created if absent)."""
    weight.mul_(scale.reshape(-1, *[1] * (weight.dim() - 1)))
    if module.bias is None:
        module.bias = nn.Parameter(shift.clone().to(weight), requires_grad=weight.requires_grad)
    else:
        module.bias.mul_(scale).add_(shift)


@torch.no_grad()
def fold_affine_(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> bool:
    """Make ``module`` compute ``scale * module(x) + shift``; return False if it cannot.

    Supported: ``nn.Conv2d`` (any groups), ``nn.Linear``, ``CompositeConv2d`` (into the join,
    or each basis group's slice), ``SeparableConv2d`` (its last conv), ``Rank1Conv2d`` (channel
    vectors or projected weight), ``ConsecutiveConv2d`` (its last conv) and an ``nn.Sequential``
    whose last module is one of these (the caller vouches that it is last in the data flow too).
    """
    path = fold_path(module, scale.numel())
    if path is None:
        return False
    leaf = path[-1]
    if isinstance(leaf, (nn.Conv2d, nn.Linear)):
        _fold_into(leaf, leaf.weight, scale, shift)
    elif isinstance(leaf, CompositeConv2d):  # no join: each basis group owns a slice of the output channels
        start = 0
        for conv in leaf.groups:
            n = conv.out_channels
            _fold_into(conv, conv.weight, scale[start : start + n], shift[start : start + n])
            start += n
    else:  # Rank1Conv2d
        _fold_into(leaf, leaf.channel if leaf.scheme == "factors" else leaf.weight, scale, shift)
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
    """Fold every batch norm that directly follows a foldable layer in an ``nn.Sequential``, where exact.

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
            if not isinstance(bn, BATCH_NORM_TYPES) or bn.running_mean is None or layer is None:
                continue
            path = fold_path(layer, bn.num_features)
            if path is None:
                continue
            layer_name = f"{prefix}.{before}" if prefix else before
            reason = _why_not(parent, path, bn, names, params, calls, layer_name) or keep_all
            if reason is not None:
                result.kept[qualified] = f"not folded into {layer_name}: {reason}"
                continue
            fold_affine_(layer, *batchnorm_affine(bn))
            parent._modules[key] = nn.Identity()
            result.folded.append(qualified)
    return result
