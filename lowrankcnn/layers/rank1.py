"""Rank-1 convolution (Kim et al. 2018, docs/reference.md §2).

Every 3-D filter is an outer product of a channel vector ``t`` (length C_in),
a vertical vector ``q`` (length k_h) and a horizontal vector ``p`` (length k_w):
``W[o, c, y, x] = t[o, c] * q[o, y] * p[o, x]``.

Two training schemes:

* ``"factors"`` (the authors' code): ``t``, ``q``, ``p`` are the parameters and
  all filters are assembled by one batched outer product at every forward.
* ``"projected"`` (the paper's text): the dense 3-D weight is the parameter;
  ``project_()`` replaces every filter by its best rank-1 approximation (the
  trainer does this every epoch by default and after the last step).

``shared_spatial=True`` is the authors' sharing: ``num`` vertical and ``num``
horizontal vectors, ``C_out = num**2``, filter ``(i, j)`` (output channel
``i * num + j``) is ``t_ij ⊗ q_j ⊗ p_i``.

``deploy()`` gives the exact inference form: 1x1 conv with the channel vectors
(C_in -> C_out), depthwise k_h x 1 conv, depthwise 1 x k_w conv, then the bias.
Zero padding factorizes, so the chain equals the 3-D conv exactly.

Shapes: ``(N, in_channels, H, W)`` -> ``(N, out_channels, H', W')``, "same"
padding ``(k - 1) // 2`` per axis, ``H' = floor((H + 2 pad_h - k_h) / stride) + 1``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ShapeError

Rank1Scheme = Literal["factors", "projected"]
SCHEMES: tuple[str, ...] = ("factors", "projected")


def _pair(value: int | tuple[int, int], what: str, layer: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ConfigError(f"{layer}: {what} must be a positive int or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def _check_channels(layer: str, in_channels: int, out_channels: int) -> None:
    for arg, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{layer}: {arg} must be a positive integer, got {value!r}")


def assemble(t: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Filters ``(C_out, C_in, k_h, k_w)`` from factors ``t (C_out, C_in)``, ``q (C_out, k_h)``, ``p (C_out, k_w)``."""
    return t[:, :, None, None] * (q[:, :, None] * p[:, None, :])[:, None]


def rank1_factors(
    weight: torch.Tensor,
    vertical_index: torch.Tensor,
    horizontal_index: torch.Tensor,
    tol: float = 1e-7,
    max_iter: int = 100,
    n_v: int | None = None,
    n_h: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-1 factors of every filter of ``weight`` by alternating least squares (rank-1 CP).

    Filter ``o`` is fitted by ``t[o] ⊗ q[vertical_index[o]] ⊗ p[horizontal_index[o]]``; with
    ``arange(C_out)`` for both indices every filter has its own spatial vectors. Starts from the
    leading singular vectors of the vertical and horizontal unfoldings (HOSVD), then alternates
    exact least-squares updates of ``t``, ``q`` and ``p`` until the relative residual changes by
    less than ``tol`` (or ``max_iter`` rounds). Exactly rank-1 filters are recovered exactly.

    Returns ``t (C_out, C_in)``, ``q (n_v, k_h)``, ``p (n_h, k_w)``, computed in float64 on the CPU
    (``n_v``/``n_h`` default to the largest index + 1).
    """
    w = weight.detach().cpu().double()
    c_out, _, kh, kw = w.shape
    n_v = n_v if n_v is not None else int(vertical_index.max()) + 1
    n_h = n_h if n_h is not None else int(horizontal_index.max()) + 1

    def leading(unfolded: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
        # unfolded: (C_out, k, rest); sum the Gram matrices of filters sharing a vector.
        gram = torch.zeros(n, unfolded.shape[1], unfolded.shape[1], dtype=w.dtype)
        gram.index_add_(0, index, unfolded @ unfolded.transpose(1, 2))
        return torch.linalg.eigh(gram).eigenvectors[:, :, -1]

    q = leading(w.permute(0, 2, 1, 3).reshape(c_out, kh, -1), vertical_index, n_v)
    p = leading(w.permute(0, 3, 1, 2).reshape(c_out, kw, -1), horizontal_index, n_h)
    norm = w.norm().clamp_min(1e-300)
    previous = math.inf
    for _ in range(max_iter):
        qo, po = q[vertical_index], p[horizontal_index]
        t = torch.einsum("ochw,oh,ow->oc", w, qo, po) / ((qo**2).sum(1) * (po**2).sum(1)).clamp_min(1e-300)[:, None]
        num_q = torch.zeros_like(q).index_add_(0, vertical_index, torch.einsum("ochw,oc,ow->oh", w, t, po))
        den_q = torch.zeros(n_v, dtype=w.dtype).index_add_(0, vertical_index, (t**2).sum(1) * (po**2).sum(1))
        q = num_q / den_q.clamp_min(1e-300)[:, None]
        qo = q[vertical_index]
        num_p = torch.zeros_like(p).index_add_(0, horizontal_index, torch.einsum("ochw,oc,oh->ow", w, t, qo))
        den_p = torch.zeros(n_h, dtype=w.dtype).index_add_(0, horizontal_index, (t**2).sum(1) * (qo**2).sum(1))
        p = num_p / den_p.clamp_min(1e-300)[:, None]
        residual = ((w - assemble(t, qo, p[horizontal_index])).norm() / norm).item()
        if abs(previous - residual) <= tol * max(residual, 1e-12) or residual < 1e-12:
            break
        previous = residual
    # Balance the scale between factors: q and p unit-norm, magnitude in t.
    q_norm, p_norm = q.norm(dim=1).clamp_min(1e-300), p.norm(dim=1).clamp_min(1e-300)
    t = t * (q_norm[vertical_index] * p_norm[horizontal_index])[:, None]
    return t, q / q_norm[:, None], p / p_norm[:, None]


@torch.no_grad()
def rank1_chain(
    t: torch.Tensor,
    q: torch.Tensor,
    p: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    fuse_spatial: bool = False,
) -> nn.Sequential:
    """Standard convs computing the conv with filters ``assemble(t, q, p)`` exactly.

    Default: 1x1 conv (C_in -> C_out, weights ``t``) -> depthwise k_h x 1 (``q``, vertical stride)
    -> depthwise 1 x k_w (``p``, horizontal stride, + ``bias``): ``C_in + k_h + k_w`` MACs per
    output at stride 1. ``fuse_spatial=True``: 1x1 conv -> one depthwise k_h x k_w conv holding
    ``q ⊗ p`` (+ bias): ``k_h * k_w`` instead of ``k_h + k_w`` spatial MACs, but one pass over
    memory instead of two, which is faster on CPUs (see ``benchmarks/``). Zero padding
    factorizes, so both equal the 3-D conv exactly.
    """
    (o, c), kh, kw = t.shape, q.shape[1], p.shape[1]
    (sh, sw), (ph, pw) = stride, padding
    kwargs = {"device": t.device, "dtype": t.dtype}
    has_bias = bias is not None
    channel = nn.Conv2d(c, o, 1, bias=False, **kwargs)
    channel.weight.copy_(t[:, :, None, None])
    if fuse_spatial:
        spatial = nn.Conv2d(o, o, (kh, kw), (sh, sw), (ph, pw), groups=o, bias=has_bias, **kwargs)
        spatial.weight.copy_((q[:, :, None] * p[:, None, :])[:, None])
        layers = [channel, spatial]
    else:
        vertical = nn.Conv2d(o, o, (kh, 1), (sh, 1), (ph, 0), groups=o, bias=False, **kwargs)
        spatial = nn.Conv2d(o, o, (1, kw), (1, sw), (0, pw), groups=o, bias=has_bias, **kwargs)
        vertical.weight.copy_(q[:, None, :, None])
        spatial.weight.copy_(p[:, None, None, :])
        layers = [channel, vertical, spatial]
    if has_bias:
        spatial.bias.copy_(bias)
    return nn.Sequential(*layers)


class Rank1Conv2d(nn.Module):
    """Convolution whose filters are all rank-1 (outer products of 1-D vectors).

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size: ``k`` or ``(k_h, k_w)``.
        stride: ``s`` or ``(s_h, s_w)``.
        bias: add a bias per output channel.
        scheme: ``"factors"`` (train the 1-D vectors) or ``"projected"`` (train the 3-D weight,
            re-project with ``project_()``).
        shared_spatial: the authors' sharing (``C_out`` must be a square ``num**2``).

    Attributes (``factors``): ``channel (C_out, C_in)``, ``vertical (n_v, k_h)``,
    ``horizontal (n_h, k_w)``. (``projected``): ``weight (C_out, C_in, k_h, k_w)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        bias: bool = True,
        scheme: Rank1Scheme = "factors",
        shared_spatial: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _check_channels(name, in_channels, out_channels)
        if scheme not in SCHEMES:
            raise ConfigError(f"{name}: scheme must be 'factors' or 'projected', got {scheme!r}")
        self.in_channels, self.out_channels, self.scheme = in_channels, out_channels, scheme
        self.kernel_size = _pair(kernel_size, "kernel_size", name)
        self.stride = _pair(stride, "stride", name)
        self.padding = ((self.kernel_size[0] - 1) // 2, (self.kernel_size[1] - 1) // 2)
        self.shared_spatial = shared_spatial
        o = torch.arange(out_channels)
        if shared_spatial:
            num = math.isqrt(out_channels)
            if num * num != out_channels:
                raise ConfigError(
                    f"{name}: shared_spatial needs out_channels = num**2 (num vertical x num horizontal vectors), "
                    f"got {out_channels}; use e.g. {num * num} or {(num + 1) ** 2}"
                )
            vertical_index, horizontal_index = o % num, o // num  # filter (i, j) = t_ij ⊗ q_j ⊗ p_i
            self.num_vertical = self.num_horizontal = num
        else:
            vertical_index = horizontal_index = o
            self.num_vertical = self.num_horizontal = out_channels
        self.register_buffer("vertical_index", vertical_index, persistent=False)
        self.register_buffer("horizontal_index", horizontal_index, persistent=False)
        kh, kw = self.kernel_size
        if scheme == "factors":
            self.channel = nn.Parameter(torch.empty(out_channels, in_channels))
            self.vertical = nn.Parameter(torch.empty(self.num_vertical, kh))
            self.horizontal = nn.Parameter(torch.empty(self.num_horizontal, kw))
        else:
            self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kh, kw))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    def he_std(self, mode: str = "fan_out", gain: float = math.sqrt(2.0)) -> float:
        """Std of He init for the equivalent dense conv (the target of ``reset_parameters``)."""
        kh, kw = self.kernel_size
        fan = kh * kw * (self.out_channels if mode == "fan_out" else self.in_channels)
        return gain / math.sqrt(fan)

    @torch.no_grad()
    def reset_parameters(self, mode: str = "fan_out") -> None:
        """Initialize so the assembled filters have the variance of He init for the dense conv.

        ``factors``: each factor ~ N(0, s) with ``s**3 = he_std`` (the product of three independent
        zero-mean factors has the product of their stds). ``projected``: He-init the dense weight,
        project it to rank 1, then rescale the filters to the He std.
        """
        target = self.he_std(mode)
        if self.bias is not None:
            self.bias.zero_()
        if self.scheme == "factors":
            s = target ** (1.0 / 3.0)
            for factor in (self.channel, self.vertical, self.horizontal):
                factor.normal_(0.0, s)
            return
        self.weight.normal_(0.0, target)
        if self.weight.is_meta:  # shapes only: nothing to project
            return
        self.project_()
        self.weight.mul_(target / self.weight.std().clamp_min(1e-12))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-filter ``t (C_out, C_in)``, ``q (C_out, k_h)``, ``p (C_out, k_w)`` of the current filters.

        For ``projected`` these are the best rank-1 factors of the weight (exact after ``project_()``).
        """
        if self.scheme == "factors":
            return self.channel, self.vertical[self.vertical_index], self.horizontal[self.horizontal_index]
        t, q, p = self._fit()
        ref = self.weight
        return t.to(ref), q[self.vertical_index.cpu()].to(ref), p[self.horizontal_index.cpu()].to(ref)

    def _fit(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return rank1_factors(
            self.weight,
            self.vertical_index.cpu(),
            self.horizontal_index.cpu(),
            n_v=self.num_vertical,
            n_h=self.num_horizontal,
        )

    def assembled_weight(self) -> torch.Tensor:
        """The 3-D filters ``(C_out, C_in, k_h, k_w)`` used by ``forward``."""
        if self.scheme == "projected":
            return self.weight
        return assemble(*self.factors())

    @torch.no_grad()
    def project_(self) -> None:
        """Replace every filter by its best rank-1 approximation (``projected`` scheme only)."""
        if self.scheme != "projected":
            raise ConfigError(f"{type(self).__name__}: project_() applies to scheme='projected' only")
        t, q, p = self._fit()
        self.weight.copy_(assemble(t, q[self.vertical_index.cpu()], p[self.horizontal_index.cpu()]).to(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{type(self).__name__}: expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return F.conv2d(x, self.assembled_weight(), self.bias, self.stride, self.padding)

    @torch.no_grad()
    def deploy(self, fuse_spatial: bool = False) -> nn.Sequential:
        """Standard modules computing this layer exactly (see ``rank1_chain``)."""
        t, q, p = (f.detach() for f in self.factors())
        return rank1_chain(t, q, p, self.bias, self.stride, self.padding, fuse_spatial)

    def describe(self) -> str:
        kh, kw = self.kernel_size
        shared = " shared" if self.shared_spatial else ""
        stride = f" /{self.stride[0]}" if self.stride != (1, 1) else ""
        return f"rank1 {kh}x{kw}:{self.out_channels} {self.scheme}{shared}{stride}"

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, {self.describe()}"


class ConsecutiveConv2d(nn.Module):
    """Consecutive 1-D convolutions trained as separate layers (the Flattened-CNN baseline).

    1x1 conv (C_in -> C_out, no bias) -> depthwise k_h x 1 -> depthwise 1 x k_w (+ bias), no
    activation between: the same function class as ``Rank1Conv2d``, but each layer is a
    standard module with its own standard (He) initialization.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _check_channels(name, in_channels, out_channels)
        kh, kw = _pair(kernel_size, "kernel_size", name)
        sh, sw = _pair(stride, "stride", name)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.channel = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.vertical = nn.Conv2d(
            out_channels, out_channels, (kh, 1), (sh, 1), ((kh - 1) // 2, 0), groups=out_channels, bias=False
        )
        self.horizontal = nn.Conv2d(
            out_channels, out_channels, (1, kw), (1, sw), (0, (kw - 1) // 2), groups=out_channels, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{type(self).__name__}: expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return self.horizontal(self.vertical(self.channel(x)))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``t (C_out, C_in)``, ``q (C_out, k_h)``, ``p (C_out, k_w)``: the three convs' weights as 1-D factors."""
        return self.channel.weight[:, :, 0, 0], self.vertical.weight[:, 0, :, 0], self.horizontal.weight[:, 0, 0, :]

    @property
    def bias(self) -> torch.Tensor | None:
        return self.horizontal.bias

    @property
    def stride(self) -> tuple[int, int]:
        return self.vertical.stride[0], self.horizontal.stride[1]

    @property
    def padding(self) -> tuple[int, int]:
        return self.vertical.padding[0], self.horizontal.padding[1]

    @torch.no_grad()
    def deploy(self, fuse_spatial: bool = False) -> nn.Sequential:
        """Copies of the three convs, or with ``fuse_spatial`` the 1x1 then one depthwise k_h x k_w."""
        t, q, p = (f.detach() for f in self.factors())
        return rank1_chain(t, q, p, self.bias, self.stride, self.padding, fuse_spatial)

    def describe(self) -> str:
        kh, kw = self.vertical.kernel_size[0], self.horizontal.kernel_size[1]
        return f"1x1:{self.out_channels} -> dw {kh}x1 -> dw 1x{kw}"
