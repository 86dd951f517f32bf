"""The protocol every low-rank convolution of this package implements: :class:`LowRankConv2d`.

A low-rank conv is a linear map plus a per-output-channel bias, like ``nn.Conv2d``, computed through factors. Every
feature of the package (``deploy``, batch-norm folding, fusing, ``init_weights_``, ``profile``, ``output_rank``, the
trainer's constraint step) reaches a layer through the methods below, never through its class. So a new layer type is
one subclass: implement the abstract methods and every feature works on it.

:class:`ConvSpec` is the geometry a layer shares with its dense ``nn.Conv2d`` (channels, kernel, stride, padding,
dilation, bias): ``from_spec`` builds a layer from one, ``from_conv`` from a dense conv, ``conv_spec`` reads it back.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, TypeVar, get_args

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from ..errors import ConfigError
from ._checks import conv_geometry
from .conv_from_weights import conv2d_from_weights

InitMode = Literal["fan_out", "fan_in"]
INIT_MODES: tuple[InitMode, ...] = get_args(InitMode)
HE_GAIN = math.sqrt(2.0)
"""He et al.'s gain for ReLU networks, the default of every init here."""
L = TypeVar("L", bound="LowRankConv2d")


@dataclass(frozen=True)
class ConvSpec:
    """The geometry of a 2-D convolution, every field a pair as in ``nn.Conv2d``: what a low-rank layer shares
    with the dense conv it stands for."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    bias: bool = True

    @classmethod
    def make(
        cls,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        *,
        layer: str = "ConvSpec",
    ) -> ConvSpec:
        """Checked and normalized; ``padding=None`` is "same" padding (``(k - 1) // 2 * dilation`` per axis)."""
        kernel, stride_hw, pad, dil = conv_geometry(
            layer, in_channels, out_channels, kernel_size, stride, padding, dilation
        )
        if not isinstance(bias, bool):
            raise ConfigError(f"{layer}: bias must be True or False, got {bias!r}")
        return cls(in_channels, out_channels, kernel, stride_hw, pad, dil, bias)

    @classmethod
    def of(cls, conv: nn.Module, layer: str = "from_conv") -> ConvSpec:
        """The geometry of ``conv``, an ``nn.Conv2d`` with ``groups=1`` and zero padding (else a ``ConfigError``)."""
        if not isinstance(conv, nn.Conv2d):
            raise ConfigError(f"{layer}: expected an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ConfigError(
                f"{layer}: {conv} is grouped (groups={conv.groups}); only groups=1 convs have a form here"
            )
        if conv.padding_mode != "zeros":
            raise ConfigError(f"{layer}: {conv} pads with {conv.padding_mode!r}; only zero padding factorizes")
        padding = conv.padding
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            total = [(k - 1) * d for k, d in zip(conv.kernel_size, conv.dilation, strict=True)]
            if any(t % 2 for t in total):
                raise ConfigError(f"{layer}: {conv} pads 'same' unevenly (even kernel); give it a numeric padding")
            padding = (total[0] // 2, total[1] // 2)
        return cls.make(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            padding,
            conv.dilation,
            conv.bias is not None,
            layer=layer,
        )

    def kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments, named as ``nn.Conv2d`` (and every layer here but the composite) takes
        them: ``in_channels``, ``out_channels``, ``kernel_size``, ``stride``, ``padding``, ``dilation``, ``bias``."""
        return asdict(self)

    def conv2d(self) -> nn.Conv2d:
        """A freshly initialized ``nn.Conv2d`` of this geometry."""
        return nn.Conv2d(**self.kwargs())


class Forms(Mapping[str, nn.Module]):
    """``name -> module``, each module built on first access (a form may be costly: an ALS fit, copies)."""

    def __init__(self, **builders: Callable[[], nn.Module]) -> None:
        self._builders = builders
        self._built: dict[str, nn.Module] = {}

    def __getitem__(self, name: str) -> nn.Module:
        if name not in self._built:
            self._built[name] = self._builders[name]()
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


class LowRankConv2d(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every factorized 2-D convolution: the methods every feature of the package relies on.

    Attributes (set by the subclass, as attributes or properties):
        in_channels, out_channels: C_in, C_out.
        kernel_size: ``(k_h, k_w)`` of the dense conv the layer equals.
        stride, padding, dilation: an int (both axes) or an ``(h, w)`` pair, as ``nn.Conv2d`` takes them;
            :meth:`conv_spec` gives all of them as pairs.
        has_bias: whether the layer adds a bias per output channel.

    Class attributes:
        forward_form: ``"factorized"`` if ``forward`` runs the factors, ``"dense"`` if it assembles the dense
            weight and runs one conv (``Rank1Conv2d``): ``profile(rank1_form="assembled")`` then counts it as that
            dense conv.
        paper_rank_bound: ``output_rank`` reports Kim et al.'s claimed bound
            ``rank(Y) <= min(rank H[X], C_in, C_out)`` for this layer (their rank-1 layer).

    Optional hook: ``constrain_() -> bool``. A layer whose parameters must be brought back into its family after an
    optimizer step (the rank-1 "projected" scheme) defines it; the trainer calls it on every module that has one.
    It returns whether it changed the parameters (``False`` for a no-op; ``None`` counts as a change), and after
    a change at an epoch's end the trainer re-estimates the batch-norm statistics.
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: int | tuple[int, int]
    padding: int | tuple[int, int]
    dilation: int | tuple[int, int]
    forward_form: ClassVar[str] = "factorized"
    paper_rank_bound: ClassVar[bool] = False

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def _from_spec(cls: type[L], spec: ConvSpec, **options: object) -> L:
        """Build the layer with ``spec``'s geometry; ``options`` are the class's own keyword-only choices.

        Raise ``ConfigError`` for a geometry or option the layer cannot take.
        """

    @classmethod
    def from_spec(cls: type[L], spec: ConvSpec, **options: object) -> L:
        """The layer with ``spec``'s channels, kernel, stride, padding, dilation and bias (constructor init).

        Raises:
            ConfigError: an option ``_from_spec`` does not take, a value the layer cannot take, or a layer whose
                geometry would differ from ``spec`` (named field by field).
        """
        _check_options(cls, options)
        layer = cls._from_spec(spec, **options)
        got = layer.conv_spec()
        if got != spec:
            diff = ", ".join(
                f"{f} {getattr(got, f)} instead of {getattr(spec, f)}"
                for f in spec.__dataclass_fields__
                if getattr(got, f) != getattr(spec, f)
            )
            raise ConfigError(f"{cls.__name__}: cannot take the geometry of the conv it replaces: {diff}")
        return layer

    @classmethod
    def from_conv(cls: type[L], conv: nn.Conv2d, *, fit: bool = False, **options: object) -> L:
        """A layer with ``conv``'s in/out channels, kernel, stride, padding, dilation and bias.

        Args:
            conv: an ``nn.Conv2d`` with ``groups=1`` and zero padding.
            fit: fit the factors to ``conv``'s weight and bias (:meth:`fit_`); otherwise the layer is freshly
                initialized by :meth:`reset_parameters` (the composite rule, fan-out).
            **options: the class's own choices (see its ``_from_spec``).

        Raises:
            ConfigError: see :meth:`from_spec`; a grouped or non-zero-padded conv.
        """
        layer = cls.from_spec(ConvSpec.of(conv, f"{cls.__name__}.from_conv"), **options)
        layer = layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
        if fit:
            if conv.weight.is_meta:
                raise ConfigError(f"{cls.__name__}.from_conv: cannot fit to a weight on the meta device")
            layer.fit_(conv.weight.detach(), None if conv.bias is None else conv.bias.detach())
        else:
            layer.reset_parameters()
        return layer

    def conv_spec(self) -> ConvSpec:
        """The layer's geometry, every field a pair (the geometry of its dense form)."""
        return ConvSpec(
            self.in_channels,
            self.out_channels,
            _pair(self.kernel_size),
            _pair(self.stride),
            _pair(self.padding),
            _pair(self.dilation),
            self.has_bias,
        )

    @property
    def has_bias(self) -> bool:
        """Whether a bias is added per output channel (default: a ``bias`` attribute that is not ``None``)."""
        return getattr(self, "bias", None) is not None

    def fit_(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Set the factors to approximate the dense ``weight`` ``(C_out, C_in, k_h, k_w)`` and ``bias`` (exactly when
        the weight is in the layer's family). The default refuses: a layer opts in by overriding it."""
        raise ConfigError(f"{type(self).__name__} cannot fit its factors to a dense weight")

    # -- forms -------------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def dense_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight ``(C_out, C_in, k_h, k_w)`` and bias of the one dense conv equal to this layer (``to_dense``)."""

    @torch.no_grad()
    def to_dense(self) -> nn.Conv2d:
        """One ``nn.Conv2d`` computing exactly this layer's function (``deploy(target="dense")``).

        A layer without an exact dense form overrides this to raise a ``ConfigError`` that says why.
        """
        spec = self.conv_spec()
        weight, bias = self.dense_weight()
        return conv2d_from_weights(weight.detach(), bias, spec.stride, spec.padding, spec.dilation)

    @abc.abstractmethod
    def deploy_forms(self) -> Mapping[str, nn.Module]:
        """Standard modules computing this layer in factorized form, by name; the first is the default
        (``deploy(target="factorized")``; its ``rank1`` argument picks a form by name where a layer has several)."""

    # -- batch norm, init, constraint ----------------------------------------------------------------------------

    @abc.abstractmethod
    def fold_affine_(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Rewrite the layer in place to compute ``scale * self(x) + shift`` (per output channel), exactly."""

    @torch.no_grad()
    def fold_batchnorm_(self, bn: nn.Module) -> None:
        """Fold the eval-mode batch norm ``bn`` that follows this layer into it (exact)."""
        self.fold_affine_(*batchnorm_affine(bn))

    @abc.abstractmethod
    def reset_parameters(self, mode: InitMode = "fan_out", gain: float = HE_GAIN) -> None:
        """Initialize by the composite rule (docs/reference.md §1.2) and zero the biases.

        ``mode="fan_out"``: every basis group shares ``std = gain / sqrt(n_hat)``, ``n_hat = sum_g k_h k_w d_g``, and
        every other inner conv gets He fan-out init; ``"fan_in"``: each conv uses its own fan-in.
        """

    # -- cost and description --------------------------------------------------------------------------------

    @abc.abstractmethod
    def macs(self, output_hw: tuple[int, int], input_hw: tuple[int, int]) -> int:
        """Multiply-accumulates of one image through the factorized computation with the fewest MACs (no bias term).

        ``input_hw`` matters for layers with a stage that runs before the stride (a 1x1 conv at input resolution).
        """

    def dense_macs(self, output_hw: tuple[int, int]) -> int:
        """Multiply-accumulates of one image through the dense form (no bias term)."""
        kh, kw = _pair(self.kernel_size)
        return self.out_channels * self.in_channels * kh * kw * output_hw[0] * output_hw[1]

    @property
    def params(self) -> int:
        """Parameters of the layer."""
        return sum(p.numel() for p in self.parameters())

    @property
    def bias_count(self) -> int:
        """Bias parameters (any parameter named ``bias``): the paper's MAC convention adds one MAC for each."""
        return sum(p.numel() for name, p in self.named_parameters() if name.rpartition(".")[2] == "bias")

    @abc.abstractmethod
    def describe(self) -> str:
        """Short structure text for tables (``profile``'s "kernel / basis" column), e.g. ``"3x1:32|1x3:32"``."""


def constrained_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` with a ``constrain_()`` hook (e.g. every rank-1 layer), which the trainer calls
    after the steps ``project_every``/``project_unit`` name and after the last step."""
    return [m for m in model.modules() if callable(getattr(m, "constrain_", None))]


def low_rank_layers(model: nn.Module) -> list[LowRankConv2d]:
    """The low-rank layers of ``model`` in module order, outermost only (a low-rank layer inside another is part of
    it)."""
    found: list[LowRankConv2d] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, LowRankConv2d):
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found


def unknown_options(
    cls: type[LowRankConv2d], options: Iterable[str], set_elsewhere: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """``(unknown, accepted)``: the names in ``options`` that ``cls._from_spec`` does not take, and the keyword-only
    options it takes other than ``set_elsewhere``, both sorted; nothing is unknown if it takes ``**kwargs``."""
    params = inspect.signature(cls._from_spec).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return [], []
    accepted = sorted(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in set(set_elsewhere))
    return sorted(set(options) - set(accepted)), accepted


def _check_options(cls: type[LowRankConv2d], options: Mapping[str, object]) -> None:
    """A ``ConfigError`` naming every option ``cls._from_spec`` does not take."""
    unknown, accepted = unknown_options(cls, options)
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown option(s) {', '.join(unknown)}; it takes {', '.join(accepted) or 'none'}"
        )


def geometry_text(stride: int | tuple[int, int], dilation: int | tuple[int, int] = 1) -> str:
    """The end of a ``describe()`` text: ``" /2"`` for stride 2 on both axes (``" /2x1"`` uneven), then ``" dil2"``
    for dilation 2; nothing for 1."""
    text = ""
    for value, mark in ((stride, " /"), (dilation, " dil")):
        h, w = _pair(value)
        if (h, w) != (1, 1):
            text += f"{mark}{h}" if h == w else f"{mark}{h}x{w}"
    return text


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


@torch.no_grad()
def fold_into_(module: nn.Module, weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``weight[o] *= scale[o]``; ``module.bias = scale * bias + shift`` (a bias is created if absent)."""
    weight.mul_(scale.reshape(-1, *[1] * (weight.dim() - 1)))
    if module.bias is None:
        module.bias = nn.Parameter(shift.clone().to(weight), requires_grad=weight.requires_grad)
    else:
        module.bias.mul_(scale).add_(shift)


def fan(module: nn.Conv2d | nn.Linear, mode: InitMode) -> int:
    """He fan of a plain layer: ``k_h k_w C_out / groups`` (fan-out) or ``k_h k_w C_in / groups`` (fan-in) for a
    conv; ``in_features`` for a linear layer (always fan-in: a fan-out rule on a 10-way classifier explodes)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    receptive = math.prod(module.kernel_size)
    channels = module.out_channels if mode == "fan_out" else module.in_channels
    return receptive * channels // module.groups


@torch.no_grad()
def normal_init_(module: nn.Conv2d | nn.Linear, n_hat: int, gain: float = HE_GAIN) -> None:
    """``weight ~ N(0, gain / sqrt(n_hat))``, bias zero."""
    nn.init.normal_(module.weight, 0.0, gain / math.sqrt(n_hat))
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def he_normal_(module: nn.Conv2d | nn.Linear, mode: InitMode = "fan_out", gain: float = HE_GAIN) -> None:
    """He init of a plain conv or linear layer (:func:`fan`), bias zero."""
    normal_init_(module, fan(module, mode), gain)
