"""Output-rank analysis (Kim et al., docs/reference.md §2.1).

A conv layer computes ``Y = H[X] · W`` (plus bias): ``H[X]`` is the im2col
matrix of the input (rows = output positions, columns = ``C_in * k_h * k_w``),
``W`` the ``(C_in * k_h * k_w) x C_out`` filter matrix. Hence always

    rank(Y) <= min(rank H[X], rank W)                              (the tight bound)

The paper states that rank-1 filters give ``rank(Y) <= min(rank H[X], N, q)``
(N input channels, q filters). That holds when all filters share one spatial
pattern (then ``rank W <= N``), but not for rank-1 filters with different
vertical/horizontal vectors, whose ``W`` generally has full rank
``min(C_in * k_h * k_w, C_out)`` like a dense layer's. ``output_rank``
reports both bounds next to the measured rank so this can be checked on
trained models.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, ShapeError
from .layers import LowRankConv2d
from .layers.fuse import FUSABLE, dense_filters
from .profiling import outermost_units
from .tables import format_table
from .utils.probe import probe


@dataclass
class RankRow:
    """One conv layer: ranks of its input patches, filters and output (bias removed), and the bounds."""

    name: str
    kind: str
    positions: int
    in_channels: int
    out_channels: int
    input_rank: int
    weight_rank: int
    output_rank: int
    bound: int
    paper_bound: int | None

    @property
    def bound_holds(self) -> bool:
        return self.output_rank <= self.bound

    @property
    def paper_bound_holds(self) -> bool | None:
        return None if self.paper_bound is None else self.output_rank <= self.paper_bound


def numerical_rank(matrix: torch.Tensor, rtol: float) -> int:
    """Singular values above ``rtol * largest`` (computed in float64)."""
    s = torch.linalg.svdvals(matrix.double())
    return int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0


@torch.no_grad()
def output_rank(model: nn.Module, images: torch.Tensor, rtol: float = 1e-6) -> list[RankRow]:
    """Per conv layer of ``model``, the numerical rank of its output matrix (positions x channels).

    ``images`` ``(N, C, H, W)`` are run through the model in eval mode; each layer's input is
    captured and the layer re-run in float64 without its bias, so ranks are not blurred by
    float32 noise (``rtol`` is relative to the largest singular value).

    Raises:
        ConfigError: ``rtol`` outside (0, 1). ShapeError: ``images`` is not a non-empty ``(N, C, H, W)`` batch.
    """
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        raise ConfigError(f"output_rank: $rtol must be a number in (0, 1), got {rtol!r}", param="rtol")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ShapeError(f"output_rank: $images must be a non-empty batch (N, C, H, W), got {tuple(images.shape)}")
    units = {m: n for m, n in outermost_units(model).items() if isinstance(m, FUSABLE) and _is_dense_conv_like(m)}
    captured: dict[nn.Module, torch.Tensor] = {}

    def keep_input(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        captured.setdefault(module, inputs[0].detach())

    handles = [m.register_forward_hook(keep_input) for m in units]
    refusal = f"output_rank: the model does not run on $images shaped {tuple(images.shape)}"
    probe(model, handles, refusal, "give images the model takes", "images", lambda: model(images), training=False)
    rows = []
    for module, name in units.items():
        if module not in captured:
            continue
        weight, _, stride, padding = dense_filters(copy.deepcopy(module).double())
        x = captured[module].double()
        patches = F.unfold(x, weight.shape[-2:], padding=padding, stride=stride)  # (N, C*kh*kw, L)
        h = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        w = weight.reshape(weight.shape[0], -1).T
        y = h @ w  # equals the layer's output without bias, positions x channels
        input_rank, weight_rank = numerical_rank(h, rtol), numerical_rank(w, rtol)
        c_out, c_in = weight.shape[:2]
        paper = min(input_rank, c_in, c_out) if getattr(module, "paper_rank_bound", False) else None
        rows.append(
            RankRow(
                name,
                type(module).__name__,
                h.shape[0],
                c_in,
                c_out,
                input_rank,
                weight_rank,
                numerical_rank(y, rtol),
                min(input_rank, weight_rank),
                paper,
            )
        )
    return rows


def _is_dense_conv_like(module: nn.Module) -> bool:
    """An undilated conv with ``groups=1`` (low-rank or not): its output is ``H[X] W`` with the im2col matrix."""
    if isinstance(module, LowRankConv2d):
        return module.conv_spec().dilation == (1, 1)
    return module.groups == 1 and module.dilation == (1, 1)


def rank_table(rows: list[RankRow]) -> str:
    """The rows of :func:`output_rank` as a text table, each bound marked as holding or not."""
    head = ("layer", "kind", "C_in", "C_out", "rank H[X]", "rank W", "rank Y", "min(H,W) bound", "paper bound")
    body = [
        [
            r.name,
            r.kind,
            str(r.in_channels),
            str(r.out_channels),
            str(r.input_rank),
            str(r.weight_rank),
            str(r.output_rank),
            f"{r.bound} {'ok' if r.bound_holds else 'VIOLATED'}",
            "-" if r.paper_bound is None else f"{r.paper_bound} {'ok' if r.paper_bound_holds else 'exceeded'}",
        ]
        for r in rows
    ]
    return format_table(head, body, left=2)
