"""Rank-1 convolution layers (Kim et al. 2018, docs/reference.md §2).

Every 3-D filter is an outer product of a channel vector ``t`` (length C_in),
a vertical vector ``q`` (length k_h) and a horizontal vector ``p`` (length k_w):
``W[o, c, y, x] = t[o, c] * q[o, y] * p[o, x]`` (the factor math and the solver
are in :mod:`lowrankcnn.layers.decompose`).

Naming: "vertical" and "horizontal" name the 1-D *vectors* (along k_h and k_w), as
in the paper; a *conv* is named by its kernel shape, height x width: ``conv_1x1``,
``conv_kx1`` (k_h x 1), ``conv_1xk`` (1 x k_w), listed in the order they are applied.

* ``Rank1Conv2d``: the vectors are parameters (``channel``, ``vertical``,
  ``horizontal``) or, with ``scheme="projected"``, the full 3-D weight is.
* ``ConsecutiveConv2d`` (:mod:`.consecutive`): the same function class as three standard convs
  ``conv_1x1`` -> ``conv_kx1`` -> ``conv_1xk`` trained as separate layers; it shares
  :class:`Rank1FilterLayer` with ``Rank1Conv2d``.

Two training schemes for ``Rank1Conv2d``:

* ``"factors"`` (the authors' code): ``t``, ``q``, ``p`` are the parameters. In eval mode all filters are
  assembled by one batched outer product and run as one conv; in training mode ``train_form`` picks that
  (``"assembled"``) or the chain below (``"chain"``: no 3-D filters are built, and the backward runs through the
  1x1 and depthwise convs), ``"auto"`` (the default) by the layer's shape (:func:`chain_is_faster`). Both forms are
  the same function of the factors, so training follows the same path either way, up to rounding.
* ``"projected"`` (the paper's text): the full 3-D weight is the parameter;
  ``project_()`` replaces every filter by its best rank-1 approximation (the
  trainer does this every epoch by default and after the last step, and then re-estimates
  the batch-norm statistics: :mod:`lowrankcnn.training.batch_norm`).

``shared_spatial=True`` is the authors' sharing: ``num`` vertical and ``num``
horizontal vectors, ``C_out = num**2``, filter ``(i, j)`` (output channel
``i * num + j``) is ``t_ij ⊗ q_j ⊗ p_i``.

``to_chain()`` gives the exact inference form of either layer: 1x1 conv with the
channel vectors (C_in -> C_out), then one depthwise k_h x k_w conv holding ``q ⊗ p`` and the
bias (the default, ``spatial="depthwise"``: measured faster on CPUs, ``results/speed/``), or
depthwise k_h x 1 then 1 x k_w convs (``spatial="separate"``: the fewest MACs). Zero padding
factorizes, so the chain equals the 3-D conv exactly.

Shapes: ``(N, in_channels, H, W)`` -> ``(N, out_channels, H', W')``, "same"
padding ``(k - 1) // 2 * dilation`` per axis by default, ``H' = floor((H + 2 pad_h - d_h (k_h - 1) - 1) / s_h) + 1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ._checks import check_layer_input, conv_geometry
from ._deprecation import warn_renamed
from .base import HE_GAIN, ConvSpec, Forms, InitMode, LowRankConv2d, fold_into_, geometry_text
from .conv_from_weights import ChainSpatial, rank1_chain
from .decompose import assemble, rank1_factors

__all__ = [
    "SCHEMES",
    "TRAIN_FORMS",
    "Rank1Conv2d",
    "Rank1FilterLayer",
    "Rank1Scheme",
    "Rank1TrainForm",
    "assemble",
    "chain_is_faster",
    "rank1_chain",
    "rank1_factors",
]

Rank1Scheme = Literal["factors", "projected"]
SCHEMES: tuple[Rank1Scheme, ...] = get_args(Rank1Scheme)
Rank1TrainForm = Literal["assembled", "chain", "auto"]
"""How a ``scheme="factors"`` layer computes its forward in training mode: ``"assembled"`` (the 3-D filters, one
dense conv), ``"chain"`` (1x1 conv, then one depthwise k_h x k_w conv holding ``q ⊗ p``) or ``"auto"``
(:func:`chain_is_faster`). Both compute the same function of the factors, so the gradients are the same."""
TRAIN_FORMS: tuple[Rank1TrainForm, ...] = get_args(Rank1TrainForm)


def chain_is_faster(in_channels: int, kernel_size: tuple[int, int], stride: tuple[int, int]) -> bool:
    """The rule ``train_form="auto"`` follows: train through the chain when
    ``C_in * min(k_h * k_w, 9) >= 144 * s_h * s_w`` (and the kernel is not 1x1), else assembled.

    For 3x3 kernels: ``C_in >= 16`` at stride 1, ``C_in >= 64`` at stride 2. Measured (forward + backward of one
    layer, ``C_out = C_in`` or 3 -> 64, maps 8-56 px, batches 8 and 64, strides 1 and 2, fp32, one thread of a
    2-core x86 CPU shared with other jobs, medians of interleaved runs): the assembled conv is 1.3-6x faster at
    ``C_in = 3``, the two are even at ``C_in = 16`` (stride 1) and ``C_in = 32`` (stride 2), and the chain is
    1.1-3.5x faster at ``C_in = 64`` and 1.8-8x at ``C_in >= 128`` (stride 1; all but one 5 ms shape). The
    chain's 1x1 conv runs at the input resolution, so a stride costs it ``s_h * s_w`` against the assembled conv.
    Kernels with fewer taps save the assembled conv less (1x3: even at ``C_in`` 64-128); larger ones did not favour
    the chain more (its depthwise 5x5 is slow), hence the cap at 9. Over the 150 measured shapes this rule is within
    1% of always taking the faster form in total time (6% geometric mean, 2.5x worst single shape).
    """
    (kh, kw), (sh, sw) = kernel_size, stride
    return kh * kw > 1 and in_channels * min(kh * kw, 9) >= 144 * sh * sw


class Rank1FilterLayer(LowRankConv2d):
    """What ``Rank1Conv2d`` and ``ConsecutiveConv2d`` share: filters ``t ⊗ q ⊗ p`` from ``factors()``, a
    ``bias``, pairs ``kernel_size``, ``stride``, ``padding``, ``dilation``; their dense form, 1-D chain forms, MACs
    and rank-1 fit."""

    bias: torch.Tensor | None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def to_chain(self, spatial: ChainSpatial = "depthwise") -> nn.Sequential:
        """Standard convs computing this layer exactly: a 1x1 conv, then one depthwise k_h x k_w conv
        (``spatial="depthwise"``, the default: the faster form measured) or depthwise k_h x 1 and 1 x k_w convs
        (``"separate"``); see ``rank1_chain``."""
        t, q, p = (f.detach() for f in self.factors())
        return rank1_chain(t, q, p, self.bias, self.stride, self.padding, spatial, self.dilation)

    def deploy(self, fuse_spatial: bool = False) -> nn.Sequential:
        """Deprecated: ``to_chain("depthwise" if fuse_spatial else "separate")``."""
        warn_renamed(f"{type(self).__name__}.deploy(fuse_spatial=...)", "to_chain(spatial='separate'|'depthwise')")
        return self.to_chain("depthwise" if fuse_spatial else "separate")

    def deploy_forms(self) -> Mapping[str, nn.Module]:
        """``"depthwise"`` (1x1 conv, one depthwise k_h x k_w; the default, faster on CPUs) and ``"chain"`` (1x1 conv,
        depthwise k_h x 1, depthwise 1 x k_w; the fewest MACs)."""
        return Forms(depthwise=lambda: self.to_chain("depthwise"), chain=lambda: self.to_chain("separate"))

    def dense_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return assemble(*self.factors()), self.bias

    def macs(self, output_hw: tuple[int, int], input_hw: tuple[int, int]) -> int:
        """The 1-D chain: 1x1 conv at the input size, depthwise k_h x 1 (output height, input width), depthwise
        1 x k_w at the output size: ``C_out (C_in H W + k_h H' W + k_w H' W')``."""
        (kh, kw), (h_in, w_in), (h_out, w_out) = self.kernel_size, input_hw, output_hw
        return self.out_channels * (self.in_channels * h_in * w_in + kh * h_out * w_in + kw * h_out * w_out)

    @torch.no_grad()
    def fit_(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """The best rank-1 filters (ALS, :func:`~lowrankcnn.layers.decompose.rank1_factors`, with the layer's
        shared vectors if any): exact for rank-1 filters. The dense bias becomes the layer's bias."""
        if bias is not None and self.bias is None:
            raise ConfigError(f"{type(self).__name__}: has no bias to fit a dense bias with")
        self._set_factors(*self._fit(weight))
        if self.bias is not None:
            self.bias.copy_(bias if bias is not None else torch.zeros_like(self.bias))

    def _fit(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Best rank-1 factors of ``weight``: ``t (C_out, C_in)``, ``q (n_v, k_h)``, ``p (n_h, k_w)``."""
        index = torch.arange(weight.shape[0])
        return rank1_factors(weight, index, index)

    def _set_factors(self, t: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> None:
        raise NotImplementedError


class Rank1Conv2d(Rank1FilterLayer):
    """Convolution whose filters are all rank-1 (outer products of 1-D vectors).

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size: ``k`` or ``(k_h, k_w)``.
        stride: ``s`` or ``(s_h, s_w)``.
        bias: add a bias per output channel.
        scheme: ``"factors"`` (train the 1-D vectors) or ``"projected"`` (train the 3-D weight,
            re-project with ``project_()``).
        shared_spatial: the authors' sharing (``C_out`` must be a square ``num**2``).
        padding: ``p`` or ``(p_h, p_w)``; ``None``: "same" padding.
        dilation: ``d`` or ``(d_h, d_w)``.
        train_form: the forward in training mode for ``scheme="factors"`` (:data:`Rank1TrainForm`):
            ``"assembled"`` (build the 3-D filters, one dense conv), ``"chain"`` (1x1 conv with the channel
            vectors at the input resolution, then one depthwise k_h x k_w conv holding ``q ⊗ p`` with the stride,
            padding and dilation, then the bias) or ``"auto"`` (:func:`chain_is_faster`). The two compute the same
            function of the factors (zero padding factorizes), so outputs and gradients agree to rounding. In eval
            mode the layer always runs the assembled conv (deploy it for fast inference). ``scheme="projected"``
            trains the 3-D weight: ``"chain"`` is a ``ConfigError`` there, ``"auto"``/``"assembled"`` mean the
            assembled conv.

    Attributes (``factors``): parameters ``channel (C_out, C_in)`` (channel vectors ``t``),
    ``vertical (n_v, k_h)`` (vertical vectors ``q``), ``horizontal (n_h, k_w)`` (horizontal vectors
    ``p``). (``projected``): ``weight (C_out, C_in, k_h, k_w)``.
    """

    paper_rank_bound = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        bias: bool = True,
        scheme: Rank1Scheme = "factors",
        shared_spatial: bool = False,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
        train_form: Rank1TrainForm = "auto",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        geometry = conv_geometry(name, in_channels, out_channels, kernel_size, stride, padding, dilation)
        self.kernel_size, self.stride, self.padding, self.dilation = geometry
        if scheme not in SCHEMES:
            raise ConfigError(f"{name}: scheme must be {' or '.join(map(repr, SCHEMES))}, got {scheme!r}")
        if train_form not in TRAIN_FORMS:
            raise ConfigError(f"{name}: train_form must be {', '.join(map(repr, TRAIN_FORMS))}, got {train_form!r}")
        if scheme == "projected" and train_form == "chain":
            raise ConfigError(
                f"{name}: train_form='chain' needs scheme='factors' (scheme='projected' trains the 3-D weight)"
            )
        self.in_channels, self.out_channels, self.scheme = in_channels, out_channels, scheme
        self.train_form = train_form
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

    @classmethod
    def _from_spec(
        cls,
        spec: ConvSpec,
        *,
        scheme: Rank1Scheme = "factors",
        shared_spatial: bool = False,
        train_form: Rank1TrainForm = "auto",
    ) -> Rank1Conv2d:
        return cls(**spec.kwargs(), scheme=scheme, shared_spatial=shared_spatial, train_form=train_form)

    @property
    def trains_chain(self) -> bool:
        """Whether the forward in training mode runs the chain (``train_form`` resolved; ``"auto"`` by
        :func:`chain_is_faster`); always ``False`` for ``scheme="projected"``."""
        if self.scheme != "factors" or self.train_form == "assembled":
            return False
        return self.train_form == "chain" or chain_is_faster(self.in_channels, self.kernel_size, self.stride)

    @property
    def forward_form(self) -> str:  # type: ignore[override]
        """``"factorized"`` while in training mode with the chain as the training forward, else ``"dense"``."""
        return "factorized" if self.training and self.trains_chain else "dense"

    def he_std(self, mode: str = "fan_out", gain: float = HE_GAIN) -> float:
        """Std of He init for the equivalent dense conv (the target of ``reset_parameters``)."""
        kh, kw = self.kernel_size
        fan = kh * kw * (self.out_channels if mode == "fan_out" else self.in_channels)
        return gain / math.sqrt(fan)

    @torch.no_grad()
    def reset_parameters(self, mode: InitMode = "fan_out", gain: float = HE_GAIN) -> None:
        """Initialize so the assembled filters have the variance of He init for the dense conv.

        ``factors``: each factor ~ N(0, s) with ``s**3 = he_std`` (the product of three independent
        zero-mean factors has the product of their stds). ``projected``: He-init the full 3-D weight,
        project it to rank 1, then rescale the filters to the He std.
        """
        target = self.he_std(mode, gain)
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
        t, q, p = self._fit(self.weight)
        ref = self.weight
        return t.to(ref), q[self.vertical_index.cpu()].to(ref), p[self.horizontal_index.cpu()].to(ref)

    def _fit(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return rank1_factors(
            weight,
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

    def dense_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.assembled_weight(), self.bias

    @torch.no_grad()
    def project_(self) -> None:
        """Replace every filter by its best rank-1 approximation (``projected`` scheme only)."""
        if self.scheme != "projected":
            raise ConfigError(f"{type(self).__name__}: project_() applies to scheme='projected' only")
        self._set_factors(*self._fit(self.weight))

    def constrain_(self) -> bool:
        """The trainer's constraint step: ``project_()`` for ``projected`` (``factors`` filters are always rank-1,
        so nothing changes: returns ``False``)."""
        if self.scheme != "projected":
            return False
        self.project_()
        return True

    @torch.no_grad()
    def fold_affine_(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Into the channel vectors (``factors``) or the 3-D weight (``projected``) and the bias."""
        fold_into_(self, self.channel if self.scheme == "factors" else self.weight, scale, shift)

    def _set_factors(self, t: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> None:
        if self.scheme == "factors":
            for param, value in ((self.channel, t), (self.vertical, q), (self.horizontal, p)):
                param.copy_(value)
        else:
            self.weight.copy_(assemble(t, q[self.vertical_index.cpu()], p[self.horizontal_index.cpu()]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(self, x)
        if self.training and self.trains_chain:
            return self._chain_forward(x)
        return F.conv2d(x, self.assembled_weight(), self.bias, self.stride, self.padding, self.dilation)

    def _chain_forward(self, x: torch.Tensor) -> torch.Tensor:
        """1x1 conv (channel vectors, input resolution, no stride) -> depthwise k_h x k_w conv with ``q ⊗ p`` (stride,
        padding, dilation) -> bias: the assembled conv's function, without building the 3-D filters."""
        t, q, p = self.factors()
        y = F.conv2d(x, t[:, :, None, None])
        spatial = (q[:, :, None] * p[:, None, :])[:, None]
        return F.conv2d(y, spatial, self.bias, self.stride, self.padding, self.dilation, self.out_channels)

    def describe(self) -> str:
        kh, kw = self.kernel_size
        shared = " shared" if self.shared_spatial else ""
        form = f" train={self.train_form}" if self.train_form != "auto" else ""
        text = f"rank1 {kh}x{kw}:{self.out_channels} {self.scheme}{shared}{form}"
        return text + geometry_text(self.stride, self.dilation)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, {self.describe()}"
