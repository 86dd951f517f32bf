"""Composite low-rank convolution (Ioannou et al., ICLR 2016, docs/reference.md §1.1).

A composite layer convolves one input with several *groups* of filters of
different spatial shapes (e.g. 3x1 and 1x3 "basis" filters), all with the
same stride, each padded so that the outputs align, and concatenates the
group outputs on the channel axis. An optional 1x1 *join* convolution follows
with no activation in between.

Shapes: input ``(N, in_channels, H, W)`` -> output ``(N, out_channels, H', W')``
with ``H' = floor((H - 1) / stride) + 1`` for odd kernels ("same" padding).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ._checks import check_layer_input, positive_int
from .concat import ParallelConcat
from .conv_from_weights import conv2d_from_weights

BasisGroup = tuple[int, int, int]
"""One group of a composite layer: ``(kernel_h, kernel_w, n_filters)``."""


def _group_padding(basis: Sequence[BasisGroup], layer: str) -> list[tuple[int, int]]:
    """Per-group ``(pad_h, pad_w)`` that makes every group's output the same size.

    Odd kernels get "same" padding ``(k - 1) // 2``. An even kernel extent can
    only be aligned when every group has that same extent along the axis.
    """
    for axis, name in ((0, "kernel_h"), (1, "kernel_w")):
        extents = sorted({g[axis] for g in basis})
        if any(k % 2 == 0 for k in extents) and len(extents) > 1:
            raise ConfigError(
                f"{layer}: basis {list(basis)} mixes {name} extents {extents}; an even "
                f"{name} cannot be aligned with a different one. Use odd kernels "
                "(3, 5, ...) or give every group the same even extent."
            )
    return [((kh - 1) // 2, (kw - 1) // 2) for kh, kw, _ in basis]


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
    _group_padding(groups, layer)
    return groups


def format_basis(basis: Sequence[BasisGroup]) -> str:
    """``[(3, 1, 32), (1, 3, 32)]`` -> ``"3x1:32|1x3:32"``."""
    return "|".join(f"{kh}x{kw}:{n}" for kh, kw, n in basis)


class CompositeConv2d(nn.Module):
    """Concatenated groups of differently-shaped filters, optionally joined by a 1x1 conv.

    Args:
        in_channels: input channels C.
        basis: groups ``(kernel_h, kernel_w, n_filters)``, e.g. ``[(3, 1, 32), (1, 3, 32)]``.
        stride: stride shared by every group.
        bias: whether each basis filter (and the join) has a bias.
        join: if given, a 1x1 conv to ``join`` channels follows, with no activation.

    Attributes:
        basis_channels: sum of the groups' filter counts (channels before the join).
        out_channels: ``join`` if given, else ``basis_channels``.
        groups: one ``nn.Conv2d`` per basis group (the factorized form).
        join: the 1x1 ``nn.Conv2d`` or ``None``.
    """

    def __init__(
        self,
        in_channels: int,
        basis: Sequence[Sequence[int]],
        stride: int = 1,
        bias: bool = True,
        join: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        positive_int(in_channels, "in_channels", name)
        positive_int(stride, "stride", name)
        positive_int(join, "join", name, optional=True)
        self.basis = validate_basis(basis, name)
        self.in_channels = in_channels
        self.stride = stride
        self.basis_channels = sum(n for _, _, n in self.basis)
        self.out_channels = join if join is not None else self.basis_channels
        self.groups = nn.ModuleList(
            nn.Conv2d(in_channels, n, (kh, kw), stride=stride, padding=pad, bias=bias)
            for (kh, kw, n), pad in zip(self.basis, _group_padding(self.basis, name), strict=True)
        )
        self.join = nn.Conv2d(self.basis_channels, join, 1, bias=bias) if join is not None else None

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
        """Padding ``(pad_h, pad_w)`` of the dense form (``to_dense``): "same" for ``kernel_size``."""
        kh, kw = self.kernel_size
        return (kh - 1) // 2, (kw - 1) // 2

    def describe(self) -> str:
        """Short structure string for tables, e.g. ``"3x1:32|1x3:32 -> 1x1:64 /2"``."""
        text = format_basis(self.basis)
        if self.join is not None:
            text += f" -> 1x1:{self.out_channels}"
        return text + (f" /{self.stride}" if self.stride > 1 else "")

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

    @torch.no_grad()
    def to_dense(self) -> nn.Conv2d:
        """The dense form: one ``nn.Conv2d`` computing exactly this layer's function (``deploy(target="dense")``).

        The basis filters and the join are fused into that one conv's weight and bias (``dense_weight``).
        """
        weight, bias = self.dense_weight()
        return conv2d_from_weights(weight, bias, (self.stride, self.stride), self.dense_padding)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, basis={self.describe()}"
