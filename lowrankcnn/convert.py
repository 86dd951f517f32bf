"""``convert(model, method)``: make any CNN low-rank, the way timm's ``convert_sync_batchnorm`` walks a model.

Every eligible ``nn.Conv2d`` of ``model`` is replaced by the method's low-rank layer with the same input and
output channels, kernel, stride, padding, dilation and bias (``LowRankConv2d.from_conv``): its output has the
same shape, so the rest of the network is untouched. Eligible means a plain ``nn.Conv2d`` with a kernel larger
than 1 in at least one axis, ``groups == 1``, zero padding, selected by ``include``/``exclude``, not the first
conv when ``keep_first``, and at least ``min_channels`` channels in and out. Every other conv is listed in the
report with the reason it was skipped; a conv the method cannot reproduce exactly (e.g. an even kernel the
composite basis cannot align) is skipped with the layer's own reason, never converted wrongly.

``init="composite"`` initializes the new layers for training from scratch (the composite rule, docs/reference.md
§1.2); ``init="fit"`` fits them to the dense weights they replace (post-training decomposition, the baseline
Ioannou et al. argue against, kept so it can be compared).
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn

from .errors import ConfigError
from .layers import ConvSpec, LowRankConv2d
from .layers.factory import LAYERS, build_options
from .models.cfg import model_cfg
from .profiling import image_shape, profile
from .tables import format_table

ConvertMethod = Literal["lr", "lr_join", "lr_wfull", "sf", "rank1", "consecutive", "svd", "bsconv"]
CONVERT_METHODS: tuple[ConvertMethod, ...] = get_args(ConvertMethod)
ConvertInit = Literal["composite", "fit"]
CONVERT_INITS: tuple[ConvertInit, ...] = get_args(ConvertInit)


@dataclass(frozen=True)
class ConvertedLayer:
    """One replaced conv: params and MACs per image (1 MAC = 2 FLOPs) before and after (``None`` without an input
    size to count at)."""

    name: str
    old_kind: str
    new_kind: str
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None


@dataclass(frozen=True)
class SkippedLayer:
    """A conv left as it was, and why."""

    name: str
    reason: str


@dataclass
class ConversionReport:
    """What :func:`convert` did: the replaced convs, the skipped ones, and the whole model's counts."""

    method: str
    init: str
    input_size: tuple[int, int, int] | None
    converted: list[ConvertedLayer] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    align: int = 1
    """The channel alignment the basis groups were split with (``convert(..., align=...)``; 1 for the methods
    without basis groups)."""

    @property
    def mac_ratio(self) -> float | None:
        """Model MACs before / after: the speed-up the counts promise."""
        return self.macs_before / self.macs_after if self.macs_before and self.macs_after else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mac_ratio": self.mac_ratio}

    def table(self) -> str:
        """The per-layer table, the skipped convs with their reasons, and a totals line."""

        def count(value: int | None) -> str:
            return "-" if value is None else f"{value:,}"

        body = [
            [c.name, c.old_kind, c.new_kind, f"{c.params_before:,}", f"{c.params_after:,}"]
            + [count(c.macs_before), count(c.macs_after)]
            for c in self.converted
        ]
        head = ("layer", "was", "now", "params before", "params after", "MACs before", "MACs after")
        lines = [
            f"convert: method {self.method}, init {self.init}"
            + (f", groups aligned to {self.align} channels" if self.align != 1 else "")
            + f", {len(self.converted)} conv(s) replaced, "
            f"{len(self.skipped)} skipped"
            + (f"; MACs per image at {'x'.join(map(str, self.input_size))}" if self.input_size else ""),
            format_table(head, body, left=3),
        ]
        if self.skipped:
            lines += ["skipped:", *(f"  {s.name}: {s.reason}" for s in self.skipped)]
        totals = f"model: params {self.params_before:,} -> {self.params_after:,}"
        if self.macs_before is not None and self.macs_after is not None:
            totals += f", MACs {self.macs_before:,} -> {self.macs_after:,} ({self.mac_ratio:.2f}x fewer)"
        return "\n".join([*lines, totals])


def _kind(module: nn.Module) -> str:
    if isinstance(module, LowRankConv2d):
        return f"{type(module).__name__} {module.describe()}"
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return f"Conv2d {kh}x{kw}" + (f" groups {module.groups}" if module.groups > 1 else "")
    return type(module).__name__


def _why_not(module: nn.Conv2d, min_channels: int) -> str | None:
    """The reason ``module`` is not a candidate at all, or ``None``."""
    if module.groups != 1:
        return "depthwise" if module.groups == module.in_channels else f"grouped (groups={module.groups})"
    if module.kernel_size == (1, 1):
        return "1x1 (already as low-rank as it gets)"
    if module.padding_mode != "zeros":
        return f"padding mode {module.padding_mode!r} (only zero padding is converted exactly)"
    if isinstance(module.padding, str) and module.padding != "same":
        return f"padding {module.padding!r}"
    if min(module.in_channels, module.out_channels) < min_channels:
        return f"fewer than min_channels={min_channels} channels ({module.in_channels} -> {module.out_channels})"
    return None


def _check_arguments(model: object, method: str, init: str, min_channels: object, options: dict[str, Any]) -> None:
    """``options``: the layer's options with the alignment resolved (``build_options``)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"convert: $model must be a torch.nn.Module, got {type(model).__name__}", param="model")
    if method not in CONVERT_METHODS:
        raise ConfigError(
            f"convert: unknown $method {method!r}; use one of {', '.join(CONVERT_METHODS)}", param="method"
        )
    if init not in CONVERT_INITS:
        raise ConfigError(f"convert: $init must be one of {', '.join(CONVERT_INITS)}, got {init!r}", param="init")
    if type(min_channels) is not int or min_channels < 1:
        raise ConfigError(f"convert: $min_channels must be an integer >= 1, got {min_channels!r}", param="min_channels")
    cls, _ = LAYERS[method]
    # the options, checked once on a stand-in conv (nothing allocated) as wide as the model's widest conv (at
    # least 8, so every method's channel split fits) and with its largest kernel: square for rank1's
    # shared_spatial, and the loosest bound for a size-bound option (svd's rank), which is then judged per conv,
    # where a conv too narrow for it is skipped with the reason
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    width = max([8, *(max(c.in_channels, c.out_channels) for c in convs)])
    kernel = max((max(c.kernel_size) for c in convs), default=3)
    with torch.device("meta"):
        cls.from_spec(ConvSpec.make(width, width, kernel, layer=f"convert({method!r})"), **options)
    owners: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.Conv2d) and not isinstance(module, LowRankConv2d):
            other = owners.setdefault(id(module.weight), name)
            if other != name:
                raise ConfigError(
                    f"convert: {other} and {name} share one weight; a converted copy would stop sharing it. "
                    "Give each its own conv, or $exclude both"
                )


def _input_size(model: nn.Module, input_size: int | Sequence[int] | None) -> tuple[int, int, int] | None:
    """``(C, H, W)`` to count MACs at: the argument (checked as ``profile`` checks it), else the model's declared
    input (``default_cfg``)."""
    if input_size is None:
        cfg = model_cfg(model)
        return None if cfg is None else (cfg.in_chans, cfg.input_size, cfg.input_size)
    return image_shape(model, input_size, None)


def convert(
    model: nn.Module,
    method: ConvertMethod = "lr",
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    keep_first: bool = True,
    min_channels: int = 8,
    init: ConvertInit = "composite",
    inplace: bool = False,
    input_size: int | Sequence[int] | None = None,
    count: bool = True,
    align: int | None = None,
    per_layer: Mapping[str, Mapping[str, Any]] | None = None,
    **method_options: Any,
) -> tuple[nn.Module, ConversionReport]:
    """Replace the eligible convs of ``model`` by ``method``'s low-rank layer (see the module doc).

    Args:
        model: any ``nn.Module``.
        method: ``"lr"`` (half k x 1, half 1 x k), ``"lr_join"`` (the same, then a 1x1 back to the width),
            ``"lr_wfull"`` (3/8 k x 1, 3/8 1 x k, 1/4 full, then a 1x1), ``"sf"`` (1 x k then k x 1), ``"rank1"``,
            ``"consecutive"``, ``"svd"`` (k x k to ``rank`` channels, then a 1x1), ``"bsconv"`` (1x1, then
            depthwise k x k).
        include, exclude: shell-style patterns on module names (``"layer4.*"``); ``include=None`` means all.
        keep_first: leave the first eligible conv (the stem, which sees the raw image) dense.
        min_channels: leave convs with fewer input or output channels dense.
        init: ``"composite"`` (train from scratch) or ``"fit"`` (approximate the dense weights).
        inplace: change ``model`` itself instead of a deep copy.
        input_size: ``(C, H, W)`` or a square size to count MACs at (default: the model's ``default_cfg``; without
            either, the report has parameters only).
        count: count MACs for the report (a ``profile`` forward pass before and after); ``False`` when only the
            converted model is wanted (the report then has parameters only).
        align: the composite methods' basis groups are multiples of ``align`` channels (a power of two) where the
            width allows it, e.g. 16 for onnxruntime's NCHWc convolutions on AVX-512 (rule:
            ``lowrankcnn.layers.split_channels``); ``None``: the ambient ``channel_alignment`` (1 by default; what
            ``create_model(..., align=...)`` sets for the registered converted models). Other methods ignore it.
        **method_options: the method's own options (composite: ``parts``, ``basis_width``; rank1: ``scheme``,
            ``shared_spatial``; svd: ``rank`` or ``rank_ratio``), as ``create_lowrank_conv`` takes them. A conv
            too small for a fixed ``rank`` is skipped with the reason.

        per_layer: options for single convs by module name, over ``method_options`` (e.g. Cuttlefish's ranks,
            ``{"layer2.0.conv1": {"rank": 5}}``; a ``rank`` there replaces a global ``rank_ratio``).

    Returns:
        ``(converted model, ConversionReport)``.

    Raises:
        ConfigError: not a module, an unknown method, init or option, an ``align`` that is not a power of two, two
            convs sharing a weight, or no eligible conv (the message lists why each conv was skipped).
    """
    if method in CONVERT_METHODS:  # the options as the layer takes them, the alignment resolved
        method_options = build_options(method, method_options, align, "convert")
    _check_arguments(model, method, init, min_channels, method_options)
    params_before = sum(p.numel() for p in model.parameters())
    size = _input_size(model, input_size) if count else None
    before = profile(model, size) if size else None
    target = model if inplace else copy.deepcopy(model)
    report = ConversionReport(method, init, size, align=method_options.get("align", 1))
    cls, _ = LAYERS[method]
    convs = {
        name for name, m in target.named_modules() if isinstance(m, nn.Conv2d) and not isinstance(m, LowRankConv2d)
    }
    unknown = sorted(set(per_layer or {}) - convs)
    if unknown:
        raise ConfigError(f"convert: $per_layer names {', '.join(unknown)}, which are not plain convs of the model")
    replaced: list[tuple[str, nn.Module, nn.Module]] = []
    first_seen = False
    for name, module in list(target.named_modules()):
        if not isinstance(module, nn.Conv2d) or isinstance(module, LowRankConv2d) or not name:
            continue
        is_first, first_seen = not first_seen, True  # the stem: the first conv in module order
        reason = "first conv (keep_first)" if keep_first and is_first else _why_not(module, min_channels)
        if reason is None and include is not None and not any(fnmatch.fnmatch(name, p) for p in include):
            reason = "not included"
        if reason is None and any(fnmatch.fnmatch(name, p) for p in exclude):
            reason = "excluded"
        if reason is None:
            try:
                layer = cls.from_conv(module, fit=init == "fit", **_options_for(name, method_options, per_layer))
            except ConfigError as err:
                if name in (per_layer or {}):
                    raise ConfigError(f"convert: $per_layer options of {name}: {err}") from err
                reason = f"{method} cannot reproduce it exactly ({err})"
        if reason is not None:
            if name in (per_layer or {}):
                raise ConfigError(f"convert: $per_layer names {name}, which is not converted ({reason})")
            report.skipped.append(SkippedLayer(name, reason))
            continue
        layer.train(module.training)
        replaced.append((name, module, layer))
    if not replaced:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in report.skipped) or "it has no nn.Conv2d"
        raise ConfigError(f"convert: no conv of {type(model).__name__} can be converted ({reasons})")
    for name, _, layer in replaced:  # only now: an error above leaves an inplace model untouched
        _set_submodule(target, name, layer)
    after = profile(target, size) if size else None
    macs_before = {r.name: r.macs for r in before.layers} if before else {}
    macs_after = {r.name: r.macs for r in after.layers} if after else {}
    for name, old, new in replaced:
        report.converted.append(
            ConvertedLayer(
                name,
                _kind(old),
                _kind(new),
                sum(p.numel() for p in old.parameters()),
                sum(p.numel() for p in new.parameters()),
                macs_before.get(name),
                macs_after.get(name),
            )
        )
    report.params_before = params_before
    report.params_after = sum(p.numel() for p in target.parameters())
    report.macs_before, report.macs_after = (before.macs, after.macs) if before and after else (None, None)
    return target, report


def _options_for(
    name: str, options: Mapping[str, Any], per_layer: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, Any]:
    """``options`` with ``per_layer[name]`` over them (a layer's own ``rank`` drops a global ``rank_ratio``)."""
    own = dict((per_layer or {}).get(name, {}))
    merged = {**options, **own}
    if "rank" in own:
        merged.pop("rank_ratio", None)
    return merged


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
