"""Batch norms folded along the traced data flow, for blocks that hold their layers as attributes.

Residual blocks (torchvision's and timm's ResNets, ours, most user code) keep ``self.conv1``/``self.bn1`` as
attributes and call them in ``forward``, so "the batch norm after the conv" is not visible from the module tree.
``torch.fx`` shows it: in a symbolically traced graph, a batch norm whose only input is a conv's output, where
nothing else reads that output, can be folded into the conv exactly. A module whose ``forward`` cannot be traced
(data-dependent Python control flow) is skipped and its children are traced instead.

Folded: the exact batch-norm types (``nn.BatchNorm1d/2d/3d``, replaced by ``nn.Identity``) and timm's
``BatchNormAct2d`` (replaced by its dropout and activation); any other subclass may do more and is left alone,
with its reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import fx, nn

from .base import LowRankConv2d, batchnorm_affine, fold_into_

EXACT_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


TRACE_OPAQUE_FUNCTIONS: list[Callable[..., object]] = []
"""Functions recorded as one graph node instead of traced (input checks whose ``if`` on shapes would stop
``torch.fx``); a module that owns such a check registers it here (``models._common.check_input`` does)."""


class _Tracer(fx.Tracer):
    """Keeps every low-rank layer and every standard torch module a leaf (one graph node per call)."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=tuple(TRACE_OPAQUE_FUNCTIONS))

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        leaf = isinstance(m, (LowRankConv2d, nn.modules.batchnorm._BatchNorm))
        return leaf or super().is_leaf_module(m, qualname)


def after_fold(bn: nn.Module) -> nn.Module | None:
    """What replaces ``bn`` once its normalization is folded away: ``nn.Identity`` for a plain batch norm, the
    dropout and activation of a timm ``BatchNormAct2d`` (batch norm, then ``self.drop``, then ``self.act``), or
    ``None`` for anything else (not folded)."""
    if type(bn) in EXACT_BATCH_NORMS:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and isinstance(getattr(bn, "act", None), nn.Module):
        return nn.Sequential(getattr(bn, "drop", nn.Identity()), bn.act)
    return None


def _traced_roots(model: nn.Module) -> Iterator[tuple[str, nn.Module, fx.Graph]]:
    """``(name, module, graph)`` for the outermost traceable modules (children of untraceable ones are tried)."""
    pending = [("", model)]
    while pending:
        name, module = pending.pop()
        if not any(True for _ in module.children()):
            continue
        try:
            graph = _Tracer().trace(module)
        except Exception:  # noqa: BLE001  (any tracing failure: data-dependent control flow, unsupported ops)
            pending += [(f"{name}.{n}" if name else n, child) for n, child in module.named_children()]
            continue
        yield name, module, graph


def _foldable_pairs(root: nn.Module, graph: fx.Graph) -> Iterator[tuple[str, str]]:
    """``(layer, batch norm)`` qualified names (relative to ``root``) where the batch norm reads only that layer's
    output and nothing else reads it; both called once in the graph."""
    targets = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        bn = root.get_submodule(node.target)
        source = node.args[0]
        if after_fold(bn) is None or not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        layer = root.get_submodule(source.target)
        if isinstance(layer, (nn.Conv2d, nn.Conv1d, nn.Linear, LowRankConv2d)) and len(source.users) == 1:
            if targets[node.target] == 1 and targets[source.target] == 1:
                yield source.target, node.target


@torch.no_grad()
def fold_traced_batchnorms_(
    model: nn.Module,
    calls: Mapping[nn.Module, int],
    registered: Mapping[nn.Module, int],
    shared: Mapping[int, int],
    folded: list[str],
    kept: dict[str, str],
) -> None:
    """Fold the batch norms left after the ``nn.Sequential`` pass where the traced graph shows it is exact.

    ``calls`` (calls per module in one real forward pass) must agree: the layer, the batch norm and the traced
    module are each called equally often, so no other code path uses them. ``registered`` (names per module) and
    ``shared`` (names per parameter ``id``) are the counts ``fold_batchnorms_`` took of ``model``: the layer and
    the batch norm must each be registered once, and the layer's weights must be its own. Folded names are
    appended to ``folded`` and removed from ``kept``.
    """
    for prefix, root, graph in _traced_roots(model):
        for layer_name, bn_name in _foldable_pairs(root, graph):
            layer, bn = root.get_submodule(layer_name), root.get_submodule(bn_name)
            if bn.running_mean is None or _channels(layer) != bn.num_features:
                continue
            if any(registered.get(m) != 1 for m in (layer, bn)) or any(
                shared.get(id(p)) != 1 for p in layer.parameters()
            ):
                continue
            if not calls.get(root, 0) or not calls.get(layer, 0) == calls.get(bn, 0) == calls.get(root, 0):
                continue
            if isinstance(layer, LowRankConv2d):
                layer.fold_batchnorm_(bn)
            else:
                fold_into_(layer, layer.weight, *batchnorm_affine(bn))
            parent_name, _, child = bn_name.rpartition(".")
            setattr(root.get_submodule(parent_name) if parent_name else root, child, after_fold(bn))
            qualified = f"{prefix}.{bn_name}" if prefix else bn_name
            folded.append(qualified)
            kept.pop(qualified, None)


def _channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def unfolded_batchnorms(model: nn.Module, kept: Mapping[str, str]) -> dict[str, str]:
    """Every batch norm still in ``model`` that ``kept`` does not already explain, with the reason it stays."""
    reasons = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or name in kept:
            continue
        if after_fold(module) is None:
            reasons[name] = f"{type(module).__name__} is not a plain batch norm (it may do more, e.g. an activation)"
        elif module.running_mean is None:
            reasons[name] = "it has no running statistics (track_running_stats=False): it normalizes every batch"
        else:
            reasons[name] = (
                "no conv or linear output flows only into it (it follows an activation, a sum or a pooling, or sits "
                "in a forward that cannot be traced), so no layer can absorb it exactly"
            )
    return reasons
