"""Composite low-rank convolution (Ioannou et al., ICLR 2016, docs/reference.md §1.1).

A composite layer convolves one input with several *groups* of filters of
different spatial shapes (e.g. 3x1 and 1x3 "basis" filters), all with the
same stride, each padded so that the outputs align, and concatenates the
group outputs on the channel axis. An optional 1x1 *join* convolution follows
with no activation in between.

Shapes: input ``(N, in_channels, H, W)`` -> output ``(N, out_channels, H', W')``
with ``H' = floor((H - 1) / stride) + 1`` for odd kernels ("same" padding, the default).

Splitting a width into basis groups follows one rule everywhere (:func:`split_channels`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..errors import ConfigError
from ._checks import check_layer_input, compact, int_pair, positive_int, positive_pair, same_padding
from .base import (
    HE_GAIN,
    ConvSpec,
    Forms,
    InitMode,
    LowRankConv2d,
    fold_into_,
    geometry_text,
    he_normal_,
    normal_init_,
)
from .concat import ParallelConcat
from .fit import fit_composite

BasisGroup = tuple[int, int, int]
"""One group of a composite layer: ``(kernel_h, kernel_w, n_filters)``."""
Part = tuple[str, float]
"""One group of a basis to build: its shape relative to the dense kernel k_h x k_w (``"kx1"``: k_h x 1,
``"1xk"``: 1 x k_w, ``"kxk"``: k_h x k_w) and its weight in the split of the basis width."""
LR_PARTS: tuple[Part, ...] = (("kx1", 1), ("1xk", 1))
"""The paper's "lr" basis: half k x 1, half 1 x k."""
WFULL_PARTS: tuple[Part, ...] = (("kx1", 3), ("1xk", 3), ("kxk", 2))
"""The paper's "wfull" basis: 3/8 k x 1, 3/8 1 x k, 1/4 full k x k."""


def check_align(align: object, layer: str = "split_channels") -> int:
    """``align`` if it is a power of two (1, 2, 4, 8, 16, ...: SIMD channel blocks), else a ``ConfigError``."""
    if type(align) is not int or align < 1 or align & (align - 1):
        raise ConfigError(f"{layer}: align must be a power of two (1, 2, 4, 8, 16, ...), got {align!r}")
    return align


def split_channels(total: int, weights: Sequence[float], layer: str = "split_channels", align: int = 1) -> list[int]:
    """Split ``total`` channels into groups in proportion to ``weights``: the one rounding rule of the package.

    Group ``g`` gets the floor of its quota ``q_g = total * w_g / sum(w)``; the channels left over go one each to
    the groups with the largest remainders ``q_g - floor(q_g)``, a tie going to the later group (largest-remainder
    apportionment). The counts always sum to ``total`` exactly, so a composite layer has the width of the dense conv
    it stands for, at any ``width_mult``. Halves of an odd width give the k x 1 group one filter less than the
    1 x k group: 13 -> 6 | 7. A split that leaves a group empty is a ``ConfigError``.

    ``align`` (a power of two; 1, the default, is the rule above) makes every group a multiple of ``align``
    channels, e.g. the 8- or 16-channel blocks of onnxruntime's NCHWc convolutions on AVX2 / AVX-512: the same rule
    apportions ``total / align`` blocks of ``align`` channels. Where that is impossible (``total`` is not a multiple
    of ``align``, or has fewer blocks than there are groups) the groups are multiples of the largest power of two
    below ``align`` that allows it, down to 1: the total never changes. With ``align=16``: 64 by 3:3:2 gives
    16 | 32 | 16 (24 | 24 | 16 at ``align=1``), 16 in halves gives 8 | 8, 24 gives 8 | 16, 13 gives 6 | 7.
    """
    positive_int(total, "total", layer)
    check_align(align, layer)
    if not weights or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in weights):
        raise ConfigError(f"{layer}: weights must be positive numbers, got {list(weights)!r}")
    fractions = [Fraction(w) for w in weights]

    def apportion(units: int) -> list[int]:
        quotas = [units * w / sum(fractions) for w in fractions]
        counts = [int(q) for q in quotas]
        by_remainder = sorted(range(len(quotas)), key=lambda g: (quotas[g] - counts[g], g), reverse=True)
        for g in by_remainder[: units - sum(counts)]:
            counts[g] += 1
        return counts

    while align > 1 and (total % align or min(apportion(total // align)) == 0):
        align //= 2
    counts = [n * align for n in apportion(total // align)]
    if min(counts) == 0:
        raise ConfigError(
            f"{layer}: {total} channels split by {list(weights)} leave a group empty ({counts}); "
            "a basis needs at least one filter per group (use a larger width)"
        )
    return counts


def _check_alignment(basis: Sequence[BasisGroup], layer: str) -> None:
    """An even kernel extent can only be aligned when every group has that same extent along the axis."""
    for axis, name in ((0, "kernel_h"), (1, "kernel_w")):
        extents = sorted({g[axis] for g in basis})
        if any(k % 2 == 0 for k in extents) and len(extents) > 1:
            raise ConfigError(
                f"{layer}: basis {list(basis)} mixes {name} extents {extents}; an even "
                f"{name} cannot be aligned with a different one. Use odd kernels "
                "(3, 5, ...) or give every group the same even extent."
            )


def _offsets(basis: Sequence[BasisGroup]) -> list[tuple[int, int]]:
    """Where each group's filters sit (centred) in the common kernel: ``(top, left)``."""
    kh_max, kw_max = max(g[0] for g in basis), max(g[1] for g in basis)
    return [((kh_max - kh) // 2, (kw_max - kw) // 2) for kh, kw, _ in basis]


def _group_padding(
    basis: Sequence[BasisGroup], padding: tuple[int, int], dilation: tuple[int, int], layer: str
) -> list[tuple[int, int]]:
    """Per-group ``(pad_h, pad_w)`` that aligns every group's output with the dense form's (padding ``padding``)."""
    pads = [(padding[0] - top * dilation[0], padding[1] - left * dilation[1]) for top, left in _offsets(basis)]
    if min(min(p) for p in pads) < 0:
        raise ConfigError(
            f"{layer}: padding {padding} is too small to centre the basis {format_basis(basis)} in the common "
            f"kernel (a group would need padding {min(pads)}); use at least 'same' padding for the smaller groups"
        )
    return pads


def validate_basis(basis: Sequence[Sequence[int]], layer: str = "CompositeConv2d") -> list[BasisGroup]:
    """Check a basis description and return it as a list of int triples."""
    if not isinstance(basis, Sequence) or isinstance(basis, (str, bytes)) or len(basis) == 0:
        raise ConfigError(
            f"{layer}: basis must be a non-empty list of (kernel_h, kernel_w, n_filters) "
            f"groups, e.g. [(3, 1, 32), (1, 3, 32)]; got {basis!r}"
        )
    groups: list[BasisGroup] = []
    for i, group in enumerate(basis):
        if len(group) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in group):
            raise ConfigError(
                f"{layer}: basis group {i} is {group!r}; expected three integers (kernel_h, kernel_w, n_filters)"
            )
        if min(group) <= 0:
            raise ConfigError(
                f"{layer}: basis group {i} is {tuple(group)}; kernel sizes and filter "
                "counts must all be positive integers"
            )
        groups.append((group[0], group[1], group[2]))
    _check_alignment(groups, layer)
    return groups


def format_basis(basis: Sequence[BasisGroup]) -> str:
    """``[(3, 1, 32), (1, 3, 32)]`` -> ``"3x1:32|1x3:32"``."""
    return "|".join(f"{kh}x{kw}:{n}" for kh, kw, n in basis)


class CompositeConv2d(LowRankConv2d):
    """Concatenated groups of differently-shaped filters, optionally joined by a 1x1 conv.

    Args:
        in_channels: input channels C.
        basis: groups ``(kernel_h, kernel_w, n_filters)``, e.g. ``[(3, 1, 32), (1, 3, 32)]``.
        stride: stride shared by every group.
        bias: whether each basis filter (and the join) has a bias.
        join: if given, a 1x1 conv to ``join`` channels follows, with no activation.
        padding: padding of the dense form (the kernel holding every group, ``kernel_size``); each group is
            padded so that its output aligns with it. ``None``: "same" padding ``(k - 1) // 2 * dilation``.
        dilation: dilation shared by every group.

    Attributes:
        basis_channels: sum of the groups' filter counts (channels before the join).
        out_channels: ``join`` if given, else ``basis_channels``.
        groups: one ``nn.Conv2d`` per basis group (the factorized form).
        join: the 1x1 ``nn.Conv2d`` or ``None``.
        stride, padding, dilation: an int when both axes agree, else an ``(h, w)`` pair.
    """

    def __init__(
        self,
        in_channels: int,
        basis: Sequence[Sequence[int]],
        stride: int | tuple[int, int] = 1,
        bias: bool = True,
        join: int | None = None,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        positive_int(in_channels, "in_channels", name)
        stride_hw, dilation_hw = positive_pair(stride, "stride", name), positive_pair(dilation, "dilation", name)
        positive_int(join, "join", name, optional=True)
        self.basis = validate_basis(basis, name)
        kernel = (max(kh for kh, _, _ in self.basis), max(kw for _, kw, _ in self.basis))
        padding_hw = (
            same_padding(kernel, dilation_hw) if padding is None else int_pair(padding, "padding", name, minimum=0)
        )
        pads = _group_padding(self.basis, padding_hw, dilation_hw, name)
        self.in_channels = in_channels
        self.stride, self.padding, self.dilation = compact(stride_hw), compact(padding_hw), compact(dilation_hw)
        self.basis_channels = sum(n for _, _, n in self.basis)
        self.out_channels = join if join is not None else self.basis_channels
        self.groups = nn.ModuleList(
            nn.Conv2d(in_channels, n, (kh, kw), stride=stride_hw, padding=pad, dilation=dilation_hw, bias=bias)
            for (kh, kw, n), pad in zip(self.basis, pads, strict=True)
        )
        self.join = nn.Conv2d(self.basis_channels, join, 1, bias=bias) if join is not None else None

    @classmethod
    def _from_spec(
        cls,
        spec: ConvSpec,
        *,
        parts: Sequence[Part] = LR_PARTS,
        basis_width: int | None = None,
        join: bool = False,
        align: int = 1,
    ) -> CompositeConv2d:
        """``parts`` split ``basis_width`` (default: ``out_channels``) by :func:`split_channels`, each group a multiple
        of ``align`` channels where the width allows it; ``join=True`` adds a 1x1 conv from the basis to
        ``out_channels`` (then ``basis_width`` may differ from it)."""
        name = f"{cls.__name__}.from_spec"
        kh, kw = spec.kernel_size
        shapes = {"kx1": (kh, 1), "1xk": (1, kw), "kxk": (kh, kw)}
        if not parts or any(len(p) != 2 or p[0] not in shapes for p in parts):
            raise ConfigError(
                f"{name}: parts must be (shape, weight) pairs with shape in {list(shapes)}, got {parts!r}"
            )
        width = spec.out_channels if basis_width is None else positive_int(basis_width, "basis_width", name)
        if not join and width != spec.out_channels:
            raise ConfigError(f"{name}: basis_width {width} needs join=True (without a join the basis is the output)")
        counts = split_channels(width, [w for _, w in parts], name, align)
        basis = [(*shapes[shape], n) for (shape, _), n in zip(parts, counts, strict=True)]
        out = spec.out_channels if join else None
        return cls(spec.in_channels, basis, spec.stride, spec.bias, out, spec.padding, spec.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(self, x)
        y = torch.cat([conv(x) for conv in self.groups], dim=1)
        return self.join(y) if self.join is not None else y

    @property
    def kernel_size(self) -> tuple[int, int]:
        """The smallest kernel that holds every basis filter (the kernel of the dense form, ``to_dense``)."""
        return max(kh for kh, _, _ in self.basis), max(kw for _, kw, _ in self.basis)

    @property
    def dense_padding(self) -> tuple[int, int]:
        """Padding ``(pad_h, pad_w)`` of the dense form (``to_dense``): ``padding`` as a pair."""
        return _pair(self.padding)

    @property
    def has_bias(self) -> bool:
        return self.groups[0].bias is not None or (self.join is not None and self.join.bias is not None)

    def describe(self) -> str:
        """Short structure string for tables, e.g. ``"3x1:32|1x3:32 -> 1x1:64 /2"``."""
        text = format_basis(self.basis)
        if self.join is not None:
            text += f" -> 1x1:{self.out_channels}"
        return text + geometry_text(self.stride, self.dilation)

    def dense_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight ``(out_channels, in_channels, Kh, Kw)`` and bias of the dense form (``to_dense``).

        Each basis filter is zero-padded (centred) to the common kernel ``Kh x Kw``;
        the join matrix then mixes the padded filters and folds in their biases.
        """
        kh_max, kw_max = self.kernel_size
        weights, biases = [], []
        for conv in self.groups:
            kh, kw = conv.kernel_size
            top, left = (kh_max - kh) // 2, (kw_max - kw) // 2
            weights.append(F.pad(conv.weight, (left, kw_max - kw - left, top, kh_max - kh - top)))
            if conv.bias is not None:
                biases.append(conv.bias)
        weight = torch.cat(weights, dim=0)
        bias = torch.cat(biases) if biases else None
        if self.join is not None:
            mix = self.join.weight.flatten(1)  # (out, basis_channels)
            weight = torch.einsum("ob,bchw->ochw", mix, weight)
            if bias is not None:
                bias = mix @ bias
            if self.join.bias is not None:
                bias = self.join.bias if bias is None else bias + self.join.bias
        return weight, bias

    @torch.no_grad()
    def factorized(self) -> nn.Module:
        """Standard modules computing this layer: copies of the group convs run side by side and
        concatenated (``ParallelConcat``), then the join conv if any (factorized deploy form)."""
        groups = ParallelConcat(copy.deepcopy(conv) for conv in self.groups)
        return groups if self.join is None else nn.Sequential(groups, copy.deepcopy(self.join))

    def deploy_forms(self) -> Mapping[str, nn.Module]:
        """``{"factorized": self.factorized()}``."""
        return Forms(factorized=self.factorized)

    @torch.no_grad()
    def fold_affine_(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Into the join, or (no join) into each basis group's slice of the output channels."""
        if self.join is not None:
            fold_into_(self.join, self.join.weight, scale, shift)
            return
        start = 0
        for conv in self.groups:
            n = conv.out_channels
            fold_into_(conv, conv.weight, scale[start : start + n], shift[start : start + n])
            start += n

    @torch.no_grad()
    def reset_parameters(self, mode: InitMode = "fan_out", gain: float = HE_GAIN) -> None:
        """Basis groups by the composite rule (:func:`composite_fan`), the join by He init; biases zero."""
        for conv, n_hat in zip(self.groups, composite_fan(self, mode), strict=True):
            normal_init_(conv, n_hat, gain)
        if self.join is not None:
            he_normal_(self.join, mode, gain)

    @torch.no_grad()
    def fit_(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Least squares onto the basis (:func:`~lowrankcnn.layers.fit.fit_composite`); the dense bias goes to the
        join's bias, or without a join to each group's slice."""
        if bias is not None and not self.has_bias:
            raise ConfigError(f"{type(self).__name__}: has no bias to fit a dense bias with")
        offsets = _offsets(self.basis)
        regions = [(top, left, kh, kw) for (top, left), (kh, kw, _) in zip(offsets, self.basis, strict=True)]
        filters, mix = fit_composite(weight, regions, [n for _, _, n in self.basis], self.join is not None)
        for conv, w in zip(self.groups, filters, strict=True):
            conv.weight.copy_(w)
            if conv.bias is not None:
                conv.bias.zero_()
        last = self.groups if self.join is None else [self.join]
        if self.join is not None:
            self.join.weight.copy_(mix[:, :, None, None])
        if bias is not None:
            start = 0
            for conv in last:
                conv.bias.copy_(bias[start : start + conv.out_channels])
                start += conv.out_channels

    def macs(self, output_hw: tuple[int, int], input_hw: tuple[int, int]) -> int:
        """Every group's filters at every output position, then the join's."""
        positions = output_hw[0] * output_hw[1]
        per_position = sum(n * self.in_channels * kh * kw for kh, kw, n in self.basis)
        if self.join is not None:
            per_position += self.out_channels * self.basis_channels
        return per_position * positions

    def extra_repr(self) -> str:
        return f"{self.in_channels}, basis={self.describe()}"


def composite_fan(layer: CompositeConv2d, mode: InitMode = "fan_out") -> list[int]:
    """The ``n_hat`` each basis group of ``layer`` is initialized with, one per group.

    ``"fan_out"``: ``n_hat = sum_g kernel_h_g * kernel_w_g * n_filters_g`` for every group (the gradient reaching
    the input is the sum of every group's contribution); ``"fan_in"``: each group's own
    ``in_channels * kernel_h * kernel_w`` (each output channel comes from exactly one group).
    """
    if mode == "fan_out":
        n_hat = sum(kh * kw * n for kh, kw, n in layer.basis)
        return [n_hat] * len(layer.basis)
    return [layer.in_channels * kh * kw for kh, kw, _ in layer.basis]
