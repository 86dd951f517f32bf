"""Parameter and multiply-accumulate (MAC) counting.

Conventions (docs/reference.md §1.4):

* ``"standard"``: MACs = sum over conv and linear layers of
  ``weights x output positions`` (1 MAC = 2 FLOPs). Pooling, activations,
  normalization and dropout count nothing.
* ``"paper"``: the standard count plus one MAC per bias parameter, added once
  per layer call, as the published tool did (the figures in the papers).

Counts are per image (the model is run on a batch of one). Rows are reported
per *unit*: a low-rank layer (``LowRankConv2d``: ``CompositeConv2d``, ``SeparableConv2d``, ...) is
one row whose MACs, parameters and kernel text the layer gives itself (``macs``, ``params``,
``describe``), as is every other conv or linear layer.
Models on the ``meta`` device are profiled without computing anything.

Each row also records the channel widths its convs write (``widths``: a composite layer's basis groups, then its
join), so ``ProfileResult.misaligned(16)`` lists the layers with a width that is not a multiple of 16: the layers
and concats onnxruntime's fast NCHWc convolutions cannot keep on their blocked path on AVX-512 (8 on AVX2; see
``create_model(..., align=...)``).

Low-rank layers whose ``forward`` assembles a dense weight (``forward_form == "dense"``: ``Rank1Conv2d``)
are counted in one of two forms (``rank1_form``):
``"decomposed"`` (as deployed: 1x1 conv at input resolution, depthwise k_h x 1,
depthwise 1 x k_w, i.e. ``C_in + k_h + k_w`` MACs per output element at stride 1)
or ``"assembled"`` (as trained: one dense conv, ``C_in * k_h * k_w``).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from .data.checks import MAX_INPUT_SIZE
from .errors import ConfigError
from .layers import LowRankConv2d
from .layers.composite import check_align
from .models.cfg import model_label
from .tables import format_table
from .utils.probe import probe, zeros_for

Convention = Literal["standard", "paper"]
Rank1Form = Literal["decomposed", "assembled"]
UNIT_TYPES: tuple[type[nn.Module], ...] = (LowRankConv2d, nn.Conv2d, nn.Linear)
"""Modules reported as one row each (outermost wins)."""
LEAF_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
"""Modules whose MACs are counted from their weights (a low-rank layer counts its own)."""


@dataclass
class LayerRow:
    """One profiled layer: ``output_shape`` excludes the batch axis."""

    name: str
    kind: str
    kernel: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    widths: tuple[int, ...] = ()
    """Channel widths the unit's convs write (:func:`channel_widths`); ``()`` for a linear layer."""


@dataclass
class ProfileResult:
    """Totals and per-layer rows; ``params`` counts every parameter of the model."""

    model: str
    input_size: tuple[int, int, int]
    convention: Convention
    params: int
    macs: int
    layers: list[LayerRow] = field(default_factory=list)
    rank1_form: Rank1Form | None = None
    """How rank-1 layers were counted; ``None`` when the model has none."""

    @property
    def flops(self) -> int:
        """``2 * macs`` (one multiply and one add per MAC)."""
        return 2 * self.macs

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["layers"] = [asdict(row) for row in self.layers]
        return data

    def misaligned(self, align: int) -> list[LayerRow]:
        """The rows with a channel width (``widths``: a basis group, a conv's output) not a multiple of ``align``."""
        check_align(align, "profile")
        return [r for r in self.layers if any(w % align for w in r.widths)]

    def table(self, align: int | None = None) -> str:
        """A readable fixed-width table of the rows and totals; with ``align``, a last column ``align A`` saying
        ``no`` for every row :meth:`misaligned` lists (``ok`` for the others with convs)."""
        head: tuple[str, ...] = ("layer", "kind", "kernel / basis", "output", "params", "MACs")
        body: list[Sequence[str] | None] = [
            [r.name, r.kind, r.kernel, "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.macs:,}"]
            for r in self.layers
        ]
        if align is not None:
            flagged = {id(r) for r in self.misaligned(align)}
            head += (f"align {align}",)
            for row, r in zip(body, self.layers, strict=True):
                row.append("no" if id(r) in flagged else "ok" if r.widths else "")  # type: ignore[union-attr]
        body += [None, ["total", "", "", "", f"{self.params:,}", f"{self.macs:,}", *([""] if align else [])]]
        title = (
            f"{self.model} @ {'x'.join(map(str, self.input_size))}, "
            f"MACs per image, {self.convention} convention (1 MAC = 2 FLOPs)"
            + (f", rank-1 layers {self.rank1_form}" if self.rank1_form else "")
        )
        return title + "\n" + format_table(head, body, left=4)


def describe_kernel(module: nn.Module) -> str:
    """Kernel/basis text for a profile row."""
    if hasattr(module, "describe"):
        return module.describe()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        text = f"{kh}x{kw}:{module.out_channels}"
        if module.groups > 1:
            text += f" g{module.groups}"
        stride = module.stride if module.stride[0] != module.stride[1] else module.stride[0]
        return text + (f" /{stride}" if stride not in (1, (1, 1)) else "")
    if isinstance(module, nn.Linear):
        return f"fc {module.in_features}->{module.out_features}"
    return ""


def channel_widths(module: nn.Module) -> tuple[int, ...]:
    """The channel widths a profile unit's convs write: a composite layer's basis groups (then its join's output),
    every ``nn.Conv2d`` of another unit (a deployed layer's convs are units of their own), else its
    ``out_channels``; ``()`` for a linear layer."""
    if isinstance(module, nn.Linear):
        return ()
    basis = getattr(module, "basis", None)
    if isinstance(module, LowRankConv2d) and isinstance(basis, list):
        join = getattr(module, "join", None)
        return (*(group[-1] for group in basis), *((join.out_channels,) if isinstance(join, nn.Conv2d) else ()))
    convs = tuple(m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d))
    out = getattr(module, "out_channels", None)
    return convs or ((out,) if type(out) is int else ())


def rank1_macs(layer: LowRankConv2d, input_hw: tuple[int, int], output_hw: tuple[int, int], form: Rank1Form) -> int:
    """MACs of a low-rank layer on one image, without bias: ``"assembled"`` as its dense conv, ``"decomposed"`` as
    its factorized form (``layer.macs``)."""
    return layer.dense_macs(output_hw) if form == "assembled" else layer.macs(output_hw, input_hw)


def leaf_macs(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    output: torch.Tensor,
    convention: Convention,
    rank1_form: Rank1Form = "decomposed",
) -> int:
    """MACs of one call of a unit (``nn.Conv2d``, ``nn.Linear`` or a low-rank layer) on a batch of one.

    A low-rank layer is asked (``macs``, or ``dense_macs`` for ``rank1_form="assembled"`` when its forward
    assembles a dense weight); the paper convention adds one MAC per bias parameter.
    """
    if isinstance(module, LowRankConv2d):
        form = rank1_form if module.forward_form == "dense" else "decomposed"
        macs = rank1_macs(module, tuple(inputs[0].shape[-2:]), tuple(output.shape[-2:]), form)
        return macs + (module.bias_count if convention == "paper" else 0)
    positions = output[0, 0].numel() if isinstance(module, nn.Conv2d) else output[0].numel() // output.shape[-1]
    macs = module.weight.numel() * positions
    if convention == "paper" and module.bias is not None:
        macs += module.bias.numel()
    return macs


def outermost_units(model: nn.Module) -> dict[nn.Module, str]:
    """Outermost unit modules of ``model`` mapped to their qualified names."""
    units: dict[nn.Module, str] = {}
    inside: set[nn.Module] = set()
    for name, module in model.named_modules():
        if module in inside:
            continue
        if isinstance(module, UNIT_TYPES):
            units[module] = name or type(module).__name__
            inside.update(module.modules())
    return units


def input_channels(model: nn.Module) -> int | None:
    """Input channels of ``model``: ``model.in_chans`` if set, else ``in_channels`` of its first conv (or
    low-rank conv) in module order; ``None`` if the first conv/linear layer is a linear one or there is none."""
    declared = getattr(model, "in_chans", None)
    if type(declared) is int:
        return declared
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return None
        channels = getattr(module, "in_channels", None)
        if isinstance(module, UNIT_TYPES) and type(channels) is int:
            return channels
    return None


def image_shape(model: nn.Module, input_size: int | Sequence[int], in_chans: int | None) -> tuple[int, int, int]:
    """``(C, H, W)`` of one image from ``profile``'s arguments (see there), checked."""
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if not 2 <= len(size) <= 3 or not all(type(s) is int and 0 < s for s in size):
        raise ConfigError(
            f"profile: $input_size must be S, (H, W) or (C, H, W) positive integers, got {input_size!r}",
            param="input_size",
        )
    if max(size[-2:]) > MAX_INPUT_SIZE:
        raise ConfigError(
            f"$input_size {input_size!r} is larger than the {MAX_INPUT_SIZE} pixels this library accepts",
            param="input_size",
        )
    if in_chans is not None and (type(in_chans) is not int or in_chans < 1):
        raise ConfigError(f"profile: $in_chans must be a positive integer, got {in_chans!r}", param="in_chans")
    if len(size) == 3:
        return size  # type: ignore[return-value]
    channels = in_chans or input_channels(model)
    if channels is None:
        raise ConfigError(
            f"profile: cannot tell how many input channels {type(model).__name__} takes (its first layer is not a "
            "conv); pass $in_chans, or $input_size as (C, H, W)",
            param="in_chans",
        )
    return (channels, *size)


@torch.no_grad()
def profile(
    model: nn.Module,
    input_size: int | Sequence[int] = 224,
    convention: Convention = "standard",
    in_chans: int | None = None,
    training: bool = False,
    rank1_form: Rank1Form = "decomposed",
) -> ProfileResult:
    """Count parameters and MACs of ``model`` for one image.

    Args:
        model: any module built from conv/linear layers (zoo models or not).
        input_size: ``S`` (square), ``(H, W)`` or ``(C, H, W)``.
        convention: ``"standard"`` or ``"paper"`` (adds one MAC per bias).
        in_chans: input channels when ``input_size`` has no channel axis; defaults to
            ``model.in_chans``, else the ``in_channels`` of the model's first conv (:func:`input_channels`).
        training: profile in training mode (e.g. to count GoogLeNet's auxiliary heads).
        rank1_form: count layers whose forward assembles a dense weight (``Rank1Conv2d``) ``"decomposed"``
            (deployed) or ``"assembled"`` (trained).

    Returns:
        ``ProfileResult`` with per-unit rows in execution order; a unit called
        several times gets one row per call.

    Raises:
        ConfigError: a bad argument, or no way to tell the input channels (pass ``in_chans``).
        ShapeError: the model does not run on a ``(1, C, H, W)`` input of that size.
    """
    if convention not in ("standard", "paper"):
        raise ConfigError(f"profile: $convention must be 'standard' or 'paper', got {convention!r}", param="convention")
    if rank1_form not in ("decomposed", "assembled"):
        raise ConfigError(
            f"profile: $rank1_form must be 'decomposed' or 'assembled', got {rank1_form!r}", param="rank1_form"
        )
    size = image_shape(model, input_size, in_chans)

    units = outermost_units(model)
    rows: list[LayerRow] = []

    def unit_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        params = module.params if isinstance(module, LowRankConv2d) else sum(p.numel() for p in module.parameters())
        rows.append(
            LayerRow(
                units[module],
                type(module).__name__,
                describe_kernel(module),
                tuple(output.shape[1:]),
                params,
                leaf_macs(module, inputs, output, convention, rank1_form),
                channel_widths(module),
            )
        )

    handles = [m.register_forward_hook(unit_hook) for m in units]
    probe(
        model,
        handles,
        f"profile: {type(model).__name__} does not run on a (1, {', '.join(map(str, size))}) input",
        "check $input_size and $in_chans",
        "input_size",
        lambda: model(zeros_for(model, (1, *size))),
        training=training,
    )
    name = model_label(model)
    total_params = sum(p.numel() for p in model.parameters())
    has_rank1 = any(isinstance(m, LowRankConv2d) and m.forward_form == "dense" for m in model.modules())
    return ProfileResult(
        name, size, convention, total_params, sum(r.macs for r in rows), rows, rank1_form if has_rank1 else None
    )


def memory_estimate(result: ProfileResult, batch_size: int, training: bool = False) -> int:
    """Rough float32 bytes to run ``batch_size`` images through the profiled model (an upper-side guess).

    Inference: the weights, the input and three times the largest layer output. Training: four copies of the
    weights (weights, gradients, optimizer state, spare) plus three times every layer output (kept for the
    backward pass, with the activations and norms around them).
    """
    outputs = [math.prod(r.output_shape) for r in result.layers] or [0]
    image = math.prod(result.input_size)
    if training:
        return 4 * (4 * result.params + batch_size * (image + 3 * sum(outputs)))
    return 4 * (result.params + batch_size * (image + 3 * max(outputs)))


def memory_budget() -> int:
    """Bytes a single run may plan to use: 80% of this machine's physical memory (8 GiB if unknown)."""
    try:
        return int(0.8 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def check_fits_memory(
    model: nn.Module,
    input_size: int,
    batch_size: int,
    what: str,
    params: Sequence[str],
    *,
    in_chans: int | None = None,
    training: bool = False,
) -> ProfileResult:
    """Refuse, before anything is allocated, a batch that would not fit in memory with ``model``.

    ``model`` is profiled on the meta device (a meta copy if it has real weights), so nothing is computed;
    its shape errors surface here too. Returns the profile.

    Raises:
        ConfigError: :func:`memory_estimate` exceeds :func:`memory_budget`; the message starts with ``what`` and
            names ``params`` (Python argument names) as what to lower. ShapeError: the model refuses the input.
    """
    param = next(model.parameters(), None)
    meta = model if param is None or param.is_meta else copy.deepcopy(model).to("meta")
    shapes = profile(meta, input_size, in_chans=in_chans)
    needed, budget = memory_estimate(shapes, batch_size, training), memory_budget()
    if needed > budget:
        raise ConfigError(
            f"{what} would need about {needed / 2**30:.1f} GiB of memory, more than the {budget / 2**30:.1f} GiB "
            f"this machine can give it; use a smaller {' or '.join(f'${p}' for p in params)}",
            param=params[0],
        )
    return shapes
