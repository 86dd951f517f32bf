"""``lowrankcnn.convert``: any model made low-rank, with a report whose counts are profile's."""

import pytest
import torch
from conftest import rel_err, requires_fashion_mnist
from torch import nn

from lowrankcnn import create_model, deploy, profile
from lowrankcnn.convert import CONVERT_METHODS, convert
from lowrankcnn.errors import ConfigError
from lowrankcnn.layers import LowRankConv2d


class Block(nn.Module):
    """A residual block written as users write them: convs and BNs as attributes, not an nn.Sequential."""

    def __init__(self, c: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, 2 * c if stride == 2 else c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.conv1.out_channels)
        self.conv2 = nn.Conv2d(self.conv1.out_channels, self.conv1.out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(self.conv1.out_channels)
        self.short = nn.Conv2d(c, self.conv1.out_channels, 1, stride, bias=False) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.short(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.Sequential(Block(16), Block(16, stride=2))
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.reflect = nn.Conv2d(32, 32, 3, padding=1, padding_mode="reflect")
        self.even = nn.Conv2d(32, 32, 2, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.even(self.reflect(self.dw(self.blocks(self.stem(x)))))
        return self.head(x.mean((2, 3)))


def test_a_hand_written_residual_model_is_converted_and_counted_like_profile():
    model = Net().eval()
    new, report = convert(model, "lr", input_size=(3, 16, 16))
    assert {c.name for c in report.converted} == {
        "blocks.0.conv1",
        "blocks.0.conv2",
        "blocks.1.conv1",
        "blocks.1.conv2",
    }
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["stem"] == "first conv (keep_first)" and reasons["dw"] == "depthwise"
    assert reasons["blocks.1.short"].startswith("1x1") and "padding mode 'reflect'" in reasons["reflect"]
    assert "cannot reproduce it exactly" in reasons["even"]
    before, after = profile(model, (3, 16, 16)), profile(new, (3, 16, 16))
    rows = {r.name: r for r in after.layers}
    for c in report.converted:
        assert c.macs_after == rows[c.name].macs and c.params_after == rows[c.name].params
        assert isinstance(new.get_submodule(c.name), LowRankConv2d)
    assert (report.macs_before, report.macs_after) == (before.macs, after.macs)
    assert report.params_after == sum(p.numel() for p in new.parameters()) < report.params_before
    assert isinstance(model.blocks[0].conv1, nn.Conv2d)  # not in place: the original is untouched
    assert new(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert "blocks.0.conv1" in report.table() and report.to_dict()["mac_ratio"] == report.mac_ratio


@pytest.mark.parametrize("method", CONVERT_METHODS)
def test_every_method_converts_a_zoo_resnet_and_deploys_equivalently(method):
    model = create_model("resnet20", num_classes=10, width_mult=0.5)
    new, report = convert(model, method)
    assert report.converted and report.macs_after < report.macs_before
    for m in new.modules():  # random BN statistics, so folding mistakes show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.data.uniform_(0.5, 1.5)
    new.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(deploy(new, "factorized")(x), new(x)) < 1e-4


@pytest.mark.parametrize("method", ["lr", "rank1", "sf", "svd", "bsconv"])
def test_fit_reproduces_a_dense_conv_that_is_already_in_the_family(method):
    """init='fit' (post-training decomposition) is exact when the dense weight has the method's structure."""
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=True)
    with torch.no_grad():
        w = torch.zeros_like(conv.weight)
        if method == "lr":  # half the filters on the vertical bar, half on the horizontal one
            w[:4, :, :, 1], w[4:, :, 1, :] = torch.randn(4, 8, 3), torch.randn(4, 8, 3)
        elif method == "rank1":
            w = torch.einsum("oc,oh,ow->ochw", torch.randn(8, 8), torch.randn(8, 3), torch.randn(8, 3))
        elif method == "sf":  # a 1x3 conv then a 3x1 conv
            w = torch.einsum("mcw,om,oh->ochw", torch.randn(8, 8, 3), torch.randn(8, 8), torch.randn(8, 3))
        elif method == "svd":  # rank 2 = 0.25 * C_out as a C_out x (C_in k_h k_w) matrix
            w = torch.einsum("or,rchw->ochw", torch.randn(8, 2), torch.randn(2, 8, 3, 3))
        else:  # bsconv: a channel vector times a blueprint per filter
            w = torch.einsum("oc,ohw->ochw", torch.randn(8, 8), torch.randn(8, 3, 3))
        conv.weight.copy_(w)
    model = nn.Sequential(nn.Conv2d(8, 8, 1), conv)
    new, _ = convert(model, method, init="fit", keep_first=False, min_channels=1)
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        assert rel_err(new(x), model(x)) < 1e-4


def test_include_exclude_and_options():
    model = create_model("resnet18", num_classes=10, width_mult=0.25)
    _, report = convert(model, "lr", include=["layer4.*"], exclude=["layer4.1.*"])
    assert {c.name for c in report.converted} == {"layer4.0.conv1", "layer4.0.conv2"}
    _, wide = convert(model, "lr_join", include=["layer4.0.conv1"], basis_width=128)
    assert "1x1" in wide.converted[0].new_kind or wide.converted[0].params_after != report.converted[0].params_after


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: convert("resnet18"), "must be a torch.nn.Module"),
        (lambda m: convert(m, "tucker"), "unknown method 'tucker'"),
        (lambda m: convert(m, "lr", init="svd"), "init must be one of composite, fit"),
        (lambda m: convert(m, "lr", colour=1), "unknown option"),
        (lambda m: convert(m, "lr", min_channels=0), "min_channels must be an integer >= 1"),
        (lambda m: convert(nn.Sequential(nn.Conv2d(3, 8, 1)), "lr"), "no conv of Sequential can be converted"),
    ],
)
def test_bad_input_is_one_clear_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call(create_model("resnet20", width_mult=0.25))


def test_a_shared_conv_weight_is_refused():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    twin = nn.Conv2d(8, 8, 3, padding=1)
    twin.weight = conv.weight
    with pytest.raises(ConfigError, match="share one weight"):
        convert(nn.Sequential(nn.Conv2d(3, 8, 3), conv, twin), "lr")


@requires_fashion_mnist
def test_a_converted_resnet20_learns_fashion_mnist(tmp_path):
    from lowrankcnn.training import Trainer, recipe_config

    config = recipe_config(
        "resnet20",
        str(tmp_path / "run"),
        lowrank="lr",
        width_mult=0.5,
        epochs=2,
        train_subset=4096,
        test_subset=1000,
        batch_size=128,
        lr=0.05,
        threads=torch.get_num_threads(),
    )
    with Trainer(config, progress=False, verbose=False) as trainer:
        history = trainer.fit()
    assert history[-1]["test_acc"] > 0.55  # chance is 0.1
    assert any(isinstance(m, LowRankConv2d) for m in trainer.model.modules())


def test_count_false_converts_the_same_without_counting():
    model = create_model("resnet20", width_mult=0.5)
    torch.manual_seed(0)
    counted, report = convert(model, "lr")
    torch.manual_seed(0)
    quiet, bare = convert(model, "lr", count=False)
    assert report.macs_after is not None and bare.macs_after is None and bare.input_size is None
    assert [c.name for c in bare.converted] == [c.name for c in report.converted]
    pairs = zip(counted.state_dict().values(), quiet.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_a_bad_input_size_is_an_error_not_a_silent_report_without_macs():
    with pytest.raises(ConfigError, match="input_size must be S, \\(H, W\\) or \\(C, H, W\\)"):
        convert(create_model("resnet20", width_mult=0.5), "lr", input_size=(3, 32, 32, 1))
