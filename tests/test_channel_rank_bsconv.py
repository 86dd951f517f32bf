"""``ChannelRankConv2d`` (method ``"svd"``, Pufferfish) and ``BSConvU`` (method ``"bsconv"``, BSConv-U): their fits
against references computed here by hand, their MACs, their options, and the model-level features (convert, deploy
to every target with batch norms folded, profile, ONNX) on a converted zoo ResNet."""

import pytest
import torch
import torch.nn.functional as F
from conftest import flops, rel_err
from torch import nn

from lowrankcnn import create_model, deploy, profile
from lowrankcnn.cli import main
from lowrankcnn.convert import convert
from lowrankcnn.deployment import deploy_report
from lowrankcnn.errors import ConfigError
from lowrankcnn.export import onnx_max_abs_diff, serialize
from lowrankcnn.layers import BSConvU, ChannelRankConv2d, LowRankConv2d, create_lowrank_conv

GEOMETRIES = {
    "same": {"kernel_size": 3, "padding": 1},
    "strided": {"kernel_size": 3, "stride": 2, "padding": 1},
    "dilated": {"kernel_size": 3, "padding": 2, "dilation": 2},
    "rect_mixed": {"kernel_size": (3, 5), "stride": (2, 1), "padding": (1, 3), "dilation": (1, 2)},
    "no_bias": {"kernel_size": (5, 3), "padding": (2, 1), "bias": False},
}


def dense(c_in: int, c_out: int, dtype: torch.dtype = torch.float32, **geometry: object) -> nn.Conv2d:
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, **geometry).to(dtype)
    if conv.bias is not None:
        nn.init.uniform_(conv.bias, -1, 1)
    return conv


# -- ChannelRankConv2d ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_svd_at_full_rank_reproduces_the_dense_conv(geometry):
    conv = dense(6, 10, **GEOMETRIES[geometry])
    kh, kw = conv.kernel_size
    layer = ChannelRankConv2d.from_conv(conv, fit=True, rank=10)  # min(C_out, C_in k_h k_w) = 10
    x = torch.randn(2, 6, 13, 11)
    with torch.no_grad():
        assert rel_err(layer(x), conv(x)) < 1e-5
        assert rel_err(layer.to_dense()(x), conv(x)) < 1e-5
    assert layer.conv_kxk.weight.shape == (10, 6, kh, kw) and layer.conv_1x1.weight.shape == (10, 10, 1, 1)
    assert (layer.conv_1x1.bias is None) == (conv.bias is None) and layer.conv_kxk.bias is None


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_svd_truncated_fit_is_the_eckart_young_optimum(rank):
    """float64 throughout, so the checks hold to 1e-10: the residual is the SVD tail, and the layer computes the
    conv with the truncated-SVD weight built here (a transposed reshape anywhere would miss both)."""
    conv = dense(4, 9, torch.float64, kernel_size=(3, 5), stride=(1, 2), padding=(1, 2))
    w = conv.weight.detach()
    u, s, vh = torch.linalg.svd(w.reshape(9, 4 * 3 * 5), full_matrices=False)
    w_r = (u[:, :rank] * s[:rank] @ vh[:rank]).reshape(9, 4, 3, 5)
    layer = ChannelRankConv2d.from_conv(conv, fit=True, rank=rank)
    got, bias = layer.dense_weight()
    assert layer.conv_kxk.weight.dtype == torch.float64 and torch.equal(bias, conv.bias)
    residual = ((got - w).norm() ** 2).item()
    assert residual == pytest.approx((s[rank:] ** 2).sum().item(), rel=1e-10)
    assert rel_err(got, w_r) < 1e-10
    x = torch.randn(2, 4, 9, 12, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(layer(x), F.conv2d(x, w_r, conv.bias, (1, 2), (1, 2))) < 1e-10
    # U sqrt(S) and sqrt(S) V^T: the two factors carry the same singular values
    norms = layer.conv_1x1.weight.flatten(1).norm(dim=0), layer.conv_kxk.weight.flatten(1).norm(dim=1)
    assert torch.allclose(norms[0], s[:rank].sqrt(), rtol=1e-10) and torch.allclose(norms[1], s[:rank].sqrt())


def test_svd_rank_options():
    assert ChannelRankConv2d(16, 64, 3).rank == 16  # Pufferfish's default ratio 0.25
    assert ChannelRankConv2d(16, 64, 3, rank_ratio=0.5).rank == 32
    assert ChannelRankConv2d(16, 7, 3, rank_ratio=0.01).rank == 1  # never below one channel
    assert ChannelRankConv2d(16, 64, 3, rank=5).rank == 5
    assert ChannelRankConv2d(2, 64, (3, 1), rank=6).rank == 6  # the limit C_in k_h k_w, reached
    assert create_lowrank_conv("svd", 8, 40, 3, rank_ratio=0.1).rank == 4
    assert set(ChannelRankConv2d(3, 8, 3).state_dict()) == {"conv_kxk.weight", "conv_1x1.weight", "conv_1x1.bias"}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"rank": 4, "rank_ratio": 0.5}, "give rank or rank_ratio, not both"),
        ({"rank": 0}, "rank must be a positive integer, got 0"),
        ({"rank": True}, "rank must be a positive integer, got True"),
        ({"rank": 9}, r"rank must be at most min\(C_out, C_in\*k_h\*k_w\) = min\(8, 3\*3\*3\) = 8, got 9"),
        ({"rank_ratio": 0.0}, r"rank_ratio must be a number in \(0, 1\], got 0.0"),
        ({"rank_ratio": 1.5}, r"rank_ratio must be a number in \(0, 1\], got 1.5"),
        ({"rank_ratio": "half"}, r"rank_ratio must be a number in \(0, 1\], got 'half'"),
        ({"mid": 3}, "unknown option"),
    ],
)
def test_svd_bad_options_are_one_config_error(options, message):
    with pytest.raises(ConfigError, match=message):
        create_lowrank_conv("svd", 3, 8, 3, **options)
    with pytest.raises(ConfigError, match=message):
        ChannelRankConv2d.from_conv(nn.Conv2d(3, 8, 3), **options)


def test_the_rank_limit_is_the_unfolding_of_a_thin_input():
    with pytest.raises(ConfigError, match=r"min\(64, 2\*1\*3\) = 6, got 7"):
        ChannelRankConv2d(2, 64, (1, 3), rank=7)


# -- BSConvU -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_bsconv_fit_is_exact_for_a_weight_in_its_family(geometry):
    conv = dense(5, 7, **GEOMETRIES[geometry])
    kh, kw = conv.kernel_size
    with torch.no_grad():
        conv.weight.copy_(torch.randn(7, 5)[:, :, None, None] * torch.randn(7, 1, kh, kw))
    layer = BSConvU.from_conv(conv, fit=True)
    assert layer.conv_1x1.weight.shape == (7, 5, 1, 1) and layer.conv_kxk.weight.shape == (7, 1, kh, kw)
    assert layer.conv_kxk.groups == 7 and layer.conv_1x1.bias is None
    assert rel_err(layer.dense_weight()[0], conv.weight) < 1e-6
    x = torch.randn(2, 5, 12, 14)
    with torch.no_grad():
        assert rel_err(layer(x), conv(x)) < 1e-5


def test_bsconv_fit_is_the_best_rank1_per_filter_with_a_deterministic_sign():
    conv = dense(6, 5, torch.float64, kernel_size=(3, 5), padding=(1, 2))
    w = conv.weight.detach()
    layer = BSConvU.from_conv(conv, fit=True)
    got = layer.dense_weight()[0]
    s = torch.linalg.svdvals(w.reshape(5, 6, 15))  # per filter, its C_in x (k_h k_w) unfolding
    per_filter = ((got - w) ** 2).sum(dim=(1, 2, 3))
    assert torch.allclose(per_filter, (s[:, 1:] ** 2).sum(1), rtol=1e-10)
    u, _, vh = torch.linalg.svd(w.reshape(5, 6, 15))  # the rank-1 term of each filter, built here
    best = (s[:, :1, None] * u[:, :, :1] @ vh[:, :1]).reshape(5, 6, 3, 5)
    assert rel_err(got, best) < 1e-10
    blueprint = layer.conv_kxk.weight.flatten(1)
    assert (blueprint.gather(1, blueprint.abs().argmax(1, keepdim=True)) > 0).all()  # largest entry positive
    assert torch.allclose(blueprint.norm(dim=1) ** 2, s[:, 0], rtol=1e-10)  # sqrt(sigma) on each side
    with torch.no_grad():
        conv.weight.neg_()
    flipped = BSConvU.from_conv(conv, fit=True)  # -W: the same blueprints, the channel vectors negated
    assert torch.allclose(flipped.conv_kxk.weight, layer.conv_kxk.weight, rtol=1e-12)
    assert torch.allclose(flipped.conv_1x1.weight, -layer.conv_1x1.weight, rtol=1e-12)


def test_bsconv_takes_no_rank_and_keeps_stable_keys():
    with pytest.raises(ConfigError, match="BSConvU: unknown option"):
        create_lowrank_conv("bsconv", 3, 8, 3, rank=2)
    with pytest.raises(ConfigError, match="BSConvU: has no bias to fit a dense bias with"):
        BSConvU(3, 8, bias=False).fit_(torch.randn(8, 3, 3, 3), torch.randn(8))
    assert set(BSConvU(3, 8).state_dict()) == {"conv_1x1.weight", "conv_kxk.weight", "conv_kxk.bias"}


# -- both: MACs, descriptions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("geometry", ["same", "strided", "rect_mixed"])
def test_macs_are_the_hand_formula_and_torchs_count(geometry):
    x, conv = torch.randn(1, 12, 15, 17), dense(12, 20, **GEOMETRIES[geometry])
    for layer in (ChannelRankConv2d.from_conv(conv, rank=6), BSConvU.from_conv(conv)):
        (kh, kw), (h_out, w_out) = layer.kernel_size, layer(x).shape[-2:]
        if isinstance(layer, ChannelRankConv2d):
            expected = 6 * 12 * kh * kw * h_out * w_out + 20 * 6 * h_out * w_out
        else:  # the 1x1 runs at the input size, before the stride
            expected = 20 * 12 * 15 * 17 + 20 * kh * kw * h_out * w_out
        assert layer.macs((h_out, w_out), (15, 17)) == expected
        assert flops(layer.deploy_forms()["factorized"], x) // 2 == expected
        assert flops(layer, x) // 2 == expected


def test_describe():
    assert ChannelRankConv2d(16, 64, 3, rank=16).describe() == "3x3:16 -> 1x1:64"
    assert ChannelRankConv2d(16, 64, (3, 5), stride=(2, 1), rank=8).describe() == "3x5:8 -> 1x1:64 /2x1"
    assert BSConvU(16, 64, 3).describe() == "1x1:64 -> dw3x3"
    assert BSConvU(16, 64, 3, stride=2, dilation=2).describe() == "1x1:64 -> dw3x3 /2 dil2"


# -- models: convert, deploy, fold, profile, ONNX ------------------------------------------------------------------


def converted_resnet(method: str) -> nn.Module:
    torch.manual_seed(0)
    model, report = convert(create_model("resnet20", num_classes=10, width_mult=0.5), method)
    assert len(report.converted) == 18 and all(method != "svd" or "-> 1x1" in c.new_kind for c in report.converted)
    with torch.no_grad():  # trained-looking batch norms and biases, so folding mistakes show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("method", ["svd", "bsconv"])
def test_a_converted_resnet_deploys_to_every_target_folds_and_profiles(method):
    model = converted_resnet(method)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
    for target in ("factorized", "dense", "auto"):
        deployed = deploy(model, target, input_shape=(1, 3, 32, 32), repeats=1)
        assert not any(isinstance(m, (LowRankConv2d, nn.BatchNorm2d)) for m in deployed.modules()), target
        assert {c.form for c in deploy_report(deployed)} <= {"factorized", "dense"}
        with torch.no_grad():
            assert rel_err(deployed(x), reference) < 1e-5, target
    result = profile(model, (3, 32, 32))
    assert result.macs == flops(model, x[:1]) // 2
    rows = [r for r in result.layers if r.kind == type(model.layer1[0].conv1).__name__]
    assert len(rows) == 18 and rows[0].macs == model.layer1[0].conv1.macs((32, 32), (32, 32))


def test_svd_options_reach_convert_and_a_fixed_rank_skips_narrow_convs():
    _, report = convert(create_model("resnet20", width_mult=0.5), "svd", rank=12, count=False)
    assert {c.name.split(".")[0] for c in report.converted} == {"layer2", "layer3"}  # 16 and 32 channels wide
    assert "rank must be at most" in next(s.reason for s in report.skipped if s.name == "layer1.0.conv1")
    half, _ = convert(create_model("resnet20", width_mult=0.5), "svd", rank_ratio=0.5, count=False)
    assert half.layer3[0].conv2.rank == 16


def test_a_rank_no_conv_of_the_model_takes_names_the_models_widest_conv():
    # the options used to be checked on a 4096-channel stand-in, so the bound in the message was 4096
    with pytest.raises(ConfigError, match=r"= min\(32, 32\*3\*3\) = 32, got 5000"):
        convert(create_model("resnet20", width_mult=0.5), "svd", rank=5000, count=False)


@pytest.mark.parametrize("method", ["svd", "bsconv"])
def test_a_converted_resnet_exports_to_onnx(method):
    pytest.importorskip("onnxruntime")
    deployed = deploy(converted_resnet(method), "factorized")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = deployed(x)
    assert onnx_max_abs_diff(serialize(deployed, x[:1], "onnx"), x, expected) < 1e-4


def test_the_convert_command_takes_the_new_methods_and_a_rank_ratio(capsys):
    assert main(["convert", "--model", "resnet20", "--method", "svd", "--rank-ratio", "0.5"]) == 0
    assert "ChannelRankConv2d 3x3:8 -> 1x1:16" in capsys.readouterr().out
    assert main(["convert", "--model", "resnet20", "--method", "bsconv", "--init", "fit"]) == 0
    assert "BSConvU 1x1:16 -> dw3x3" in capsys.readouterr().out
    assert main(["convert", "--model", "resnet20", "--method", "lr", "--rank-ratio", "0.5"]) == 2
    assert "unknown option(s) rank_ratio" in capsys.readouterr().err
