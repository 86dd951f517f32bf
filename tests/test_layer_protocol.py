"""The low-rank layer protocol (``lowrankcnn.layers.LowRankConv2d``): every layer class conforms, and a layer class
defined in this file, with no library edit, works with ``profile``, ``deploy`` (every target), batch-norm folding,
``init_weights_`` and the trainer's constraint hook."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import flops, rel_err
from torch import nn

from lowrankcnn import create_model, deploy, profile
from lowrankcnn.deployment import LOW_RANK, deploy_report
from lowrankcnn.errors import ConfigError
from lowrankcnn.layers import (
    BSConvU,
    ChannelRankConv2d,
    CompositeConv2d,
    ConsecutiveConv2d,
    ConvSpec,
    LowRankConv2d,
    Rank1Conv2d,
    SeparableConv2d,
    init_weights_,
)
from lowrankcnn.layers.base import HE_GAIN, constrained_modules, fold_into_, he_normal_
from lowrankcnn.layers.composite import WFULL_PARTS
from lowrankcnn.layers.fold import batchnorm_affine, fold_batchnorms_
from lowrankcnn.training.trainer import Trainer


class MiddleWidthConv2d(LowRankConv2d):
    """A k_h x 1 conv to ``mid`` channels, then a 1 x k_w conv to ``out_channels`` (bias on the last only).

    A layer type the library does not know: everything it needs is the protocol.
    """

    def __init__(
        self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, dilation=1, bias=True, mid=None
    ):
        super().__init__()
        spec = ConvSpec.make(in_channels, out_channels, kernel_size, stride, padding, dilation, bias)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = spec.kernel_size, spec.stride, spec.padding, spec.dilation
        mid = mid or max(1, out_channels // 2)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, spec.kernel_size
        self.stride, self.padding, self.dilation = spec.stride, spec.padding, spec.dilation
        self.first = nn.Conv2d(in_channels, mid, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False)
        self.second = nn.Conv2d(mid, out_channels, (1, kw), (1, sw), (0, pw), (1, dw), bias=bias)
        self.constrained = 0

    @classmethod
    def _from_spec(cls, spec, *, mid=None):
        return cls(**spec.kwargs(), mid=mid)

    @property
    def bias(self):
        return self.second.bias

    def forward(self, x):
        return self.second(self.first(x))

    def dense_weight(self):
        weight = torch.einsum("omx,mcy->ocyx", self.second.weight[:, :, 0, :], self.first.weight[:, :, :, 0])
        return weight, self.second.bias

    def deploy_forms(self):
        return {"factorized": nn.Sequential(copy.deepcopy(self.first), copy.deepcopy(self.second))}

    def fold_affine_(self, scale, shift):
        fold_into_(self.second, self.second.weight, scale, shift)

    def reset_parameters(self, mode="fan_out", gain=HE_GAIN):
        he_normal_(self.first, mode, gain)
        he_normal_(self.second, mode, gain)

    def macs(self, output_hw, input_hw):
        (kh, kw), mid = self.kernel_size, self.first.out_channels
        first = mid * self.in_channels * kh * output_hw[0] * input_hw[1]
        return first + self.out_channels * mid * kw * output_hw[0] * output_hw[1]

    def describe(self):
        (kh, kw), mid = self.kernel_size, self.first.out_channels
        return f"{kh}x1:{mid} -> 1x{kw}:{self.out_channels}"

    def constrain_(self):  # e.g. a max-norm constraint on the middle filters
        self.constrained += 1
        with torch.no_grad():
            self.first.weight.clamp_(-1, 1)


KINDS = {
    "lr": (CompositeConv2d, {}),
    "lr_join": (CompositeConv2d, {"join": True}),
    "lr_wfull": (CompositeConv2d, {"parts": WFULL_PARTS, "join": True}),
    "lr_join_wide": (CompositeConv2d, {"join": True, "basis_width": 14}),
    "sf": (SeparableConv2d, {}),
    "rank1": (Rank1Conv2d, {}),
    "rank1_projected": (Rank1Conv2d, {"scheme": "projected"}),
    "rank1_shared": (Rank1Conv2d, {"shared_spatial": True}),
    "consecutive": (ConsecutiveConv2d, {}),
    "svd": (ChannelRankConv2d, {}),
    "svd_rank4": (ChannelRankConv2d, {"rank": 4}),
    "bsconv": (BSConvU, {}),
    "custom": (MiddleWidthConv2d, {"mid": 5}),
}
GEOMETRIES = {
    "same": {"kernel_size": 3, "padding": 1},
    "stride2": {"kernel_size": 3, "stride": 2, "padding": 1},
    "rect_uneven": {"kernel_size": (3, 5), "stride": (2, 1), "padding": (1, 2)},
    "dilated": {"kernel_size": 3, "padding": 2, "dilation": 2},
    "wide_pad_no_bias": {"kernel_size": 5, "padding": 3, "bias": False},
    "mixed": {"kernel_size": (5, 3), "stride": (1, 2), "padding": (3, 2), "dilation": (1, 2)},
}


def randomize(layer: nn.Module) -> nn.Module:
    """Every parameter random (a separable layer's 1xk bias zero: with it, it has no exact dense form)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
        if isinstance(layer, SeparableConv2d) and layer.conv_1xk.bias is not None:
            layer.conv_1xk.bias.zero_()
        if isinstance(layer, Rank1Conv2d) and layer.scheme == "projected":
            layer.project_()
    return layer


def random_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("kind", list(KINDS))
def test_from_conv_has_the_dense_geometry_and_every_form_computes_the_layer(kind, geometry):
    cls, options = KINDS[kind]
    conv = nn.Conv2d(6, 9, **GEOMETRIES[geometry])
    layer = randomize(cls.from_conv(conv, **options))
    assert isinstance(layer, LowRankConv2d) and layer.conv_spec() == ConvSpec.of(conv)
    assert layer.has_bias == (conv.bias is not None)
    x = torch.randn(2, 6, 13, 11)
    with torch.no_grad():
        y = layer(x)
        assert y.shape == conv(x).shape
        dense = layer.to_dense()
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation"):
            assert getattr(dense, attr) == getattr(conv, attr), attr
        assert rel_err(dense(x), y) < 1e-5
        weight, bias = layer.dense_weight()
        assert weight.shape == conv.weight.shape and (bias is None) == (conv.bias is None)
        forms = layer.deploy_forms()
        assert forms and all(rel_err(form(x), y) < 1e-5 for form in forms.values())
    macs = [flops(form, x) // 2 // x.shape[0] for form in forms.values()]
    assert layer.macs(tuple(y.shape[-2:]), tuple(x.shape[-2:])) == min(macs)  # the form with the fewest MACs
    forward = layer.dense_macs(tuple(y.shape[-2:])) if layer.forward_form == "dense" else min(macs)
    assert flops(layer, x) // 2 // x.shape[0] == forward
    assert layer.params == sum(p.numel() for p in layer.parameters()) and layer.describe()


@pytest.mark.parametrize("geometry", ["same", "dilated", "rect_uneven"])
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "custom"])
def test_fit_is_exact_for_a_weight_in_the_layers_family(kind, geometry):
    """A dense weight the layer can represent (the dense form of a random layer of the same kind) is fitted exactly:
    composite ones supported on the basis (the cross for "lr"), rank-1 ones, separable ones of rank <= C_out."""
    cls, options = KINDS[kind]
    conv = nn.Conv2d(6, 9, **GEOMETRIES[geometry])
    source = randomize(cls.from_conv(conv, **options))
    with torch.no_grad():
        weight, bias = source.dense_weight()
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    fitted = cls.from_conv(conv, fit=True, **options)
    got, got_bias = fitted.dense_weight()
    assert rel_err(got, weight) < 1e-5 and rel_err(got_bias, bias) < 1e-5
    x = torch.randn(2, 6, 12, 10)
    with torch.no_grad():
        assert rel_err(fitted(x), conv(x)) < 1e-5


def test_fit_is_the_least_squares_fit_for_any_weight():
    torch.manual_seed(3)
    conv = nn.Conv2d(6, 8, 3, padding=1)
    weight = conv.weight.detach()
    # composite without a join: each group gets its output channels' dense filters cropped to its region
    lr = CompositeConv2d.from_conv(conv, fit=True)
    cross = torch.zeros(3, 3)
    cross[:, 1] = 1
    expected = weight.clone()
    expected[:4] *= cross
    expected[4:] *= cross.T
    assert rel_err(lr.dense_weight()[0], expected) < 1e-6
    # separable: the rank-C_out truncated SVD of the (C_out k_h) x (C_in k_w) unfolding
    matrix = weight.permute(0, 2, 1, 3).reshape(8 * 3, 6 * 3).double()
    s = torch.linalg.svdvals(matrix)
    sf = SeparableConv2d.from_conv(conv, fit=True)
    residual = (sf.dense_weight()[0] - weight).norm().item()
    assert residual == pytest.approx(s[8:].norm().item(), rel=1e-4)
    # composite with a join: first-order optimality, for the basis (exact: the last step solves it given the join)
    # and for the join (up to the convergence tolerance)
    join = CompositeConv2d.from_conv(conv, fit=True, join=True)
    with torch.no_grad():
        residual = (weight - join.dense_weight()[0]).reshape(8, 6, 9)
        mix = join.join.weight.flatten(1)
        unjoined = copy.deepcopy(join)
        unjoined.join = None
        basis = unjoined.dense_weight()[0].reshape(8, 6, 9)
    support = torch.stack([cross.flatten()] * 4 + [cross.T.flatten()] * 4)[:, None, :]
    assert (torch.einsum("ob,ocp->bcp", mix, residual) * support).abs().max() < 1e-5
    assert (residual.flatten(1) @ basis.flatten(1).T).abs().max() < 1e-3 * weight.norm() * basis.norm()
    assert residual.norm() < (weight - expected).norm()  # the join buys accuracy over the crop


@pytest.mark.parametrize("kind", list(KINDS))
def test_fold_batchnorm_into_itself_is_exact(kind):
    cls, options = KINDS[kind]
    layer = randomize(cls.from_conv(nn.Conv2d(6, 9, 3, stride=2, padding=1, bias=kind != "lr"), **options)).eval()
    bn = random_bn(9)
    x = torch.randn(2, 6, 11, 9)
    with torch.no_grad():
        expected = bn(layer(x))
        layer.fold_batchnorm_(bn)
        assert rel_err(layer(x), expected) < 1e-5
        scale, shift = batchnorm_affine(bn)
        again = copy.deepcopy(layer)
        again.fold_affine_(scale, shift)
        assert rel_err(again(x), bn(layer(x))) < 1e-5


def expected_stds(layer: nn.Module) -> list[tuple[torch.Tensor, float]]:
    """The composite rule (fan-out): basis groups share sqrt(2 / n_hat); rank-1 filters get the dense conv's He std;
    every other inner conv its own He fan-out std."""
    if isinstance(layer, CompositeConv2d):
        n_hat = sum(kh * kw * n for kh, kw, n in layer.basis)
        pairs = [(g.weight, math.sqrt(2 / n_hat)) for g in layer.groups]
        return pairs + ([(layer.join.weight, math.sqrt(2 / layer.out_channels))] if layer.join is not None else [])
    if isinstance(layer, Rank1Conv2d):
        kh, kw = layer.kernel_size
        return [(layer.assembled_weight(), math.sqrt(2 / (kh * kw * layer.out_channels)))]
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    return [(c.weight, math.sqrt(2 * c.groups / (math.prod(c.kernel_size) * c.out_channels))) for c in convs]


@pytest.mark.parametrize("kind", list(KINDS))
def test_reset_parameters_follows_the_composite_rule_and_init_weights_calls_it(kind):
    torch.manual_seed(0)
    cls, options = KINDS[kind]
    options = {**options, "basis_width": 320} if "basis_width" in options else options
    layer = cls.from_conv(nn.Conv2d(48, 256, 3, padding=1), **options)
    for p in layer.parameters():
        nn.init.constant_(p, 5.0)
    layer.reset_parameters()
    for weight, std in expected_stds(layer):
        assert weight.std().item() == pytest.approx(std, rel=0.1)
    assert all(not p.any() for n, p in layer.named_parameters() if n.endswith("bias"))
    torch.manual_seed(1)
    init_weights_(nn.Sequential(layer))  # the model-level init reaches the layer through the protocol
    state = copy.deepcopy(layer.state_dict())
    torch.manual_seed(1)
    layer.reset_parameters()
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in state.items())


def test_from_conv_refuses_what_it_cannot_take():
    cases = [
        (lambda: CompositeConv2d.from_conv(nn.Conv2d(4, 8, 3, groups=2)), "grouped"),
        (lambda: Rank1Conv2d.from_conv(nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect")), "zero padding"),
        (lambda: CompositeConv2d.from_conv(nn.Conv2d(4, 8, 3)), "too small to centre"),
        (lambda: CompositeConv2d.from_conv(nn.Conv2d(4, 8, 2)), "even kernel_h cannot be aligned"),
        (lambda: Rank1Conv2d.from_conv(nn.Conv2d(4, 8, 3), shared_spatial=True), r"num\*\*2"),
        (lambda: SeparableConv2d.from_conv(nn.Conv2d(4, 8, 3), scheme="factors"), "unknown option"),
        (lambda: CompositeConv2d.from_conv(nn.Conv2d(4, 8, 3, padding=1), basis_width=12), "needs join=True"),
        (lambda: CompositeConv2d.from_conv(nn.Conv2d(4, 1, 3, padding=1)), "leave a group empty"),
        (lambda: MiddleWidthConv2d.from_conv(nn.Conv2d(4, 8, 3), fit=True), "cannot fit"),
        (lambda: Rank1Conv2d.from_conv(nn.Linear(3, 4)), "expected an nn.Conv2d"),
    ]
    for build, message in cases:
        with pytest.raises(ConfigError, match=message):
            build()


def test_same_padding_of_a_dense_conv_is_taken():
    layer = ConsecutiveConv2d.from_conv(nn.Conv2d(3, 4, 5, padding="same", dilation=2))
    assert layer.padding == (4, 4) and layer(torch.randn(1, 3, 9, 9)).shape == (1, 4, 9, 9)


class SmallNet(nn.Module):
    """Protocol layers of two kinds, each followed by a batch norm, in a plain ``nn.Sequential``."""

    def __init__(self):
        super().__init__()
        self.in_chans = 3
        self.features = nn.Sequential(
            MiddleWidthConv2d(3, 8, 3, mid=5),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            CompositeConv2d(8, [(3, 1, 4), (1, 3, 4)], stride=2),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            MiddleWidthConv2d(8, 6, (5, 3), stride=(2, 1), dilation=(1, 2), padding=(2, 2)),
            nn.BatchNorm2d(6),
        )
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_a_layer_defined_outside_the_library_works_with_every_feature():
    torch.manual_seed(0)
    model = SmallNet()
    init_weights_(model)
    first = model.features[0]
    assert first.first.weight.std().item() == pytest.approx(math.sqrt(2 / (3 * 5)), rel=0.2)  # its own rule
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.load_state_dict(random_bn(m.num_features).state_dict())
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    # profile asks the layer: rows, kernel text and MACs (equal to torch's own count of the forward pass)
    result = profile(model, (3, 16, 16))
    assert [r.kind for r in result.layers] == ["MiddleWidthConv2d", "CompositeConv2d", "MiddleWidthConv2d", "Linear"]
    assert result.layers[0].kernel == "3x1:5 -> 1x3:8" and result.layers[0].output_shape == (8, 16, 16)
    assert result.macs == flops(model, x[:1]) // 2 and result.params == sum(p.numel() for p in model.parameters())
    # deploy: every target, every batch norm folded into the layer before it
    with torch.no_grad():
        reference = model(x)
    for target in ("factorized", "dense", "auto"):
        deployed = deploy(model, target, input_shape=(1, 3, 16, 16), repeats=1)
        assert not any(isinstance(m, (LowRankConv2d, nn.BatchNorm2d)) for m in deployed.modules())
        assert {c.form for c in deploy_report(deployed)} <= {"factorized", "dense"}
        assert len(deploy_report(deployed)) == 3
        with torch.no_grad():
            assert rel_err(deployed(x), reference) < 1e-5, target
    # batch-norm folding on its own
    folded = copy.deepcopy(model)
    assert fold_batchnorms_(folded).folded == ["features.1", "features.4", "features.7"]
    with torch.no_grad():
        assert rel_err(folded(x), reference) < 1e-5
    # the trainer's constraint step reaches it (and nothing without a hook)
    hooked = constrained_modules(model)
    assert hooked == [model.features[0], model.features[6]]
    Trainer.project(SimpleNamespace(constrained=hooked))
    assert first.constrained == 1 and first.first.weight.abs().max() <= 1
    assert LOW_RANK == (LowRankConv2d,)


def test_the_trainer_constrains_projected_rank1_layers_through_the_hook():
    model = create_model("vgg11_gmp_rank1", num_classes=10, width_mult=0.125, rank1_scheme="projected")
    layers = constrained_modules(model)
    assert len(layers) == 8 and all(isinstance(m, Rank1Conv2d) for m in layers)
    layer = layers[0]
    with torch.no_grad():
        layer.weight.add_(0.1 * torch.randn_like(layer.weight))
    Trainer.project(SimpleNamespace(constrained=layers))
    ranks = [torch.linalg.matrix_rank(f.flatten(1).double(), rtol=1e-5).item() for f in layer.weight.detach()]
    assert max(ranks) == 1
