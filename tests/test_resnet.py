"""ResNet family: torchvision's counts and state_dict layout, the CIFAR nets of He et al., forward/backward,
init, deploy equivalence and the registry listing. torchvision itself is only needed by tests/interop."""

import pytest
import torch
from conftest import rel_err
from torch import nn

from lowrankcnn import create_model, deploy, list_models, model_info, profile
from lowrankcnn.cli import main
from lowrankcnn.errors import ConfigError
from lowrankcnn.models.resnet import BasicBlock, Bottleneck, CifarResNet, ResNet, ZeroPadShortcut

# torchvision's own figures (224x224, 1000 classes, standard convention: conv + linear MACs, no bias term).
TORCHVISION_COUNTS = [
    ("resnet18", 11_689_512, 1_814_073_344),
    ("resnet34", 21_797_672, 3_663_761_408),
    ("resnet50", 25_557_032, 4_089_184_256),
]
# He et al. 2016 Table 6 gives 0.27M (ResNet-20) and 0.85M (ResNet-56) with option-A shortcuts; these are our
# exact counts at 32x32, 10 classes (option A, the default), then with shortcut="B".
CIFAR_COUNTS = [
    ("resnet20", "A", 269_722, 40_551_040, 0.27),
    ("resnet56", "A", 853_018, 125_485_696, 0.85),
    ("resnet20", "B", 272_474, 40_813_184, 0.27),
    ("resnet56", "B", 855_770, 125_747_840, 0.86),
]
RESNETS = ["resnet18", "resnet34", "resnet50", "resnet20", "resnet56"]

# torchvision.models.resnet18(weights=None).state_dict(): every key and shape, in order (generated once with
# torchvision 0.29.1 in .venv-interop; tests/interop loads a real torchvision state_dict).
TORCHVISION_RESNET18_KEYS = """
conv1.weight (64, 3, 7, 7)
bn1.weight (64,)
bn1.bias (64,)
bn1.running_mean (64,)
bn1.running_var (64,)
bn1.num_batches_tracked ()
layer1.0.conv1.weight (64, 64, 3, 3)
layer1.0.bn1.weight (64,)
layer1.0.bn1.bias (64,)
layer1.0.bn1.running_mean (64,)
layer1.0.bn1.running_var (64,)
layer1.0.bn1.num_batches_tracked ()
layer1.0.conv2.weight (64, 64, 3, 3)
layer1.0.bn2.weight (64,)
layer1.0.bn2.bias (64,)
layer1.0.bn2.running_mean (64,)
layer1.0.bn2.running_var (64,)
layer1.0.bn2.num_batches_tracked ()
layer1.1.conv1.weight (64, 64, 3, 3)
layer1.1.bn1.weight (64,)
layer1.1.bn1.bias (64,)
layer1.1.bn1.running_mean (64,)
layer1.1.bn1.running_var (64,)
layer1.1.bn1.num_batches_tracked ()
layer1.1.conv2.weight (64, 64, 3, 3)
layer1.1.bn2.weight (64,)
layer1.1.bn2.bias (64,)
layer1.1.bn2.running_mean (64,)
layer1.1.bn2.running_var (64,)
layer1.1.bn2.num_batches_tracked ()
layer2.0.conv1.weight (128, 64, 3, 3)
layer2.0.bn1.weight (128,)
layer2.0.bn1.bias (128,)
layer2.0.bn1.running_mean (128,)
layer2.0.bn1.running_var (128,)
layer2.0.bn1.num_batches_tracked ()
layer2.0.conv2.weight (128, 128, 3, 3)
layer2.0.bn2.weight (128,)
layer2.0.bn2.bias (128,)
layer2.0.bn2.running_mean (128,)
layer2.0.bn2.running_var (128,)
layer2.0.bn2.num_batches_tracked ()
layer2.0.downsample.0.weight (128, 64, 1, 1)
layer2.0.downsample.1.weight (128,)
layer2.0.downsample.1.bias (128,)
layer2.0.downsample.1.running_mean (128,)
layer2.0.downsample.1.running_var (128,)
layer2.0.downsample.1.num_batches_tracked ()
layer2.1.conv1.weight (128, 128, 3, 3)
layer2.1.bn1.weight (128,)
layer2.1.bn1.bias (128,)
layer2.1.bn1.running_mean (128,)
layer2.1.bn1.running_var (128,)
layer2.1.bn1.num_batches_tracked ()
layer2.1.conv2.weight (128, 128, 3, 3)
layer2.1.bn2.weight (128,)
layer2.1.bn2.bias (128,)
layer2.1.bn2.running_mean (128,)
layer2.1.bn2.running_var (128,)
layer2.1.bn2.num_batches_tracked ()
layer3.0.conv1.weight (256, 128, 3, 3)
layer3.0.bn1.weight (256,)
layer3.0.bn1.bias (256,)
layer3.0.bn1.running_mean (256,)
layer3.0.bn1.running_var (256,)
layer3.0.bn1.num_batches_tracked ()
layer3.0.conv2.weight (256, 256, 3, 3)
layer3.0.bn2.weight (256,)
layer3.0.bn2.bias (256,)
layer3.0.bn2.running_mean (256,)
layer3.0.bn2.running_var (256,)
layer3.0.bn2.num_batches_tracked ()
layer3.0.downsample.0.weight (256, 128, 1, 1)
layer3.0.downsample.1.weight (256,)
layer3.0.downsample.1.bias (256,)
layer3.0.downsample.1.running_mean (256,)
layer3.0.downsample.1.running_var (256,)
layer3.0.downsample.1.num_batches_tracked ()
layer3.1.conv1.weight (256, 256, 3, 3)
layer3.1.bn1.weight (256,)
layer3.1.bn1.bias (256,)
layer3.1.bn1.running_mean (256,)
layer3.1.bn1.running_var (256,)
layer3.1.bn1.num_batches_tracked ()
layer3.1.conv2.weight (256, 256, 3, 3)
layer3.1.bn2.weight (256,)
layer3.1.bn2.bias (256,)
layer3.1.bn2.running_mean (256,)
layer3.1.bn2.running_var (256,)
layer3.1.bn2.num_batches_tracked ()
layer4.0.conv1.weight (512, 256, 3, 3)
layer4.0.bn1.weight (512,)
layer4.0.bn1.bias (512,)
layer4.0.bn1.running_mean (512,)
layer4.0.bn1.running_var (512,)
layer4.0.bn1.num_batches_tracked ()
layer4.0.conv2.weight (512, 512, 3, 3)
layer4.0.bn2.weight (512,)
layer4.0.bn2.bias (512,)
layer4.0.bn2.running_mean (512,)
layer4.0.bn2.running_var (512,)
layer4.0.bn2.num_batches_tracked ()
layer4.0.downsample.0.weight (512, 256, 1, 1)
layer4.0.downsample.1.weight (512,)
layer4.0.downsample.1.bias (512,)
layer4.0.downsample.1.running_mean (512,)
layer4.0.downsample.1.running_var (512,)
layer4.0.downsample.1.num_batches_tracked ()
layer4.1.conv1.weight (512, 512, 3, 3)
layer4.1.bn1.weight (512,)
layer4.1.bn1.bias (512,)
layer4.1.bn1.running_mean (512,)
layer4.1.bn1.running_var (512,)
layer4.1.bn1.num_batches_tracked ()
layer4.1.conv2.weight (512, 512, 3, 3)
layer4.1.bn2.weight (512,)
layer4.1.bn2.bias (512,)
layer4.1.bn2.running_mean (512,)
layer4.1.bn2.running_var (512,)
layer4.1.bn2.num_batches_tracked ()
fc.weight (1000, 512)
fc.bias (1000,)"""


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.mark.parametrize("name, params, macs", TORCHVISION_COUNTS)
def test_imagenet_counts_equal_torchvision_to_the_unit(name, params, macs):
    result = profile(meta_model(name), 224)
    assert (result.params, result.macs) == (params, macs)
    info = model_info(name)
    assert (info.input_size, info.num_classes, info.classifier, info.baseline) == (224, 1000, "fc", None)
    assert f"{params:,}" in info.notes and f"{macs:,}" in info.notes


@pytest.mark.parametrize("name, shortcut, params, macs, millions", CIFAR_COUNTS)
def test_cifar_counts(name, shortcut, params, macs, millions):
    result = profile(meta_model(name, shortcut=shortcut), 32)
    assert (result.params, result.macs) == (params, macs)
    assert round(params / 1e6, 2) == millions
    info = model_info(name)
    assert (info.input_size, info.num_classes, info.classifier) == (32, 10, "fc")
    assert info.mean == (0.4914, 0.4822, 0.4465)


def test_cifar_structure_is_6n_plus_2_layers():
    for name, n in (("resnet20", 3), ("resnet56", 9)):
        model = meta_model(name)
        weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert len(weighted) == 6 * n + 2
        assert [model.get_submodule(f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3)] == [16, 32, 64]
        assert [model.get_submodule(f"layer{i}")[0].conv1.stride for i in (1, 2, 3)] == [(1, 1), (2, 2), (2, 2)]
        shortcuts = [m for m in model.modules() if isinstance(m, ZeroPadShortcut)]
        assert len(shortcuts) == 2  # option A: parameter-free, only where the shape changes


def test_state_dict_keys_and_shapes_are_torchvisions():
    expected = [line.split(" ", 1) for line in TORCHVISION_RESNET18_KEYS.strip().splitlines()]
    state = create_model("resnet18").state_dict()
    assert [[key, str(tuple(value.shape))] for key, value in state.items()] == expected
    # the bottleneck puts its stride on the 3x3 (torchvision's v1.5) and projects with downsample.0/.1
    r50 = meta_model("resnet50")
    block = r50.layer2[0]
    assert isinstance(block, Bottleneck) and block.conv2.stride == (2, 2) and block.conv1.stride == (1, 1)
    assert isinstance(block.downsample[0], nn.Conv2d) and isinstance(block.downsample[1], nn.BatchNorm2d)
    assert r50.layer1[0].downsample is not None  # 64 -> 256 channels
    assert r50.fc.in_features == 2048


def test_strict_round_trip_of_a_state_dict():
    src = create_model("resnet18", num_classes=10, width_mult=0.25)
    dst = ResNet(BasicBlock, (2, 2, 2, 2), num_classes=10, width_mult=0.25)
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(2, 3, 40, 40)
    assert torch.equal(src.eval()(x), dst.eval()(x))


@pytest.mark.parametrize("name", RESNETS)
@pytest.mark.parametrize("size", [28, 32])
def test_small_twins_run_forward_and_backward_on_one_channel(name, size):
    model = create_model(name, num_classes=10, in_chans=1, width_mult=0.125)
    x = torch.randn(2, 1, size, size)
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.conv1.weight.grad.abs().sum() > 0  # the gradient reaches the stem through every stage
    assert model.default_cfg.in_chans == 1 and model.default_cfg.mean is None


def test_width_mult_scales_every_stage_and_keeps_the_expansion():
    model = meta_model("resnet50", width_mult=0.5)
    assert model.conv1.out_channels == 32
    assert [model.get_submodule(f"layer{i}")[-1].conv3.out_channels for i in (1, 2, 3, 4)] == [128, 256, 512, 1024]
    assert [model.get_submodule(f"layer{i}")[-1].conv1.out_channels for i in (1, 2, 3, 4)] == [32, 64, 128, 256]
    cifar = meta_model("resnet20", width_mult=0.25)
    assert [cifar.get_submodule(f"layer{i}")[-1].conv2.out_channels for i in (1, 2, 3)] == [4, 8, 16]


def test_the_family_initializes_itself():
    model = ResNet(Bottleneck, (1, 1, 1, 1), num_classes=10, width_mult=0.5)
    conv = model.layer3[0].conv2  # He normal, fan-out: std = sqrt(2 / (3 * 3 * out_channels))
    assert conv.weight.std().item() == pytest.approx((2 / (9 * conv.out_channels)) ** 0.5, rel=0.05)
    assert model.fc.weight.std().item() == pytest.approx((2 / model.fc.in_features) ** 0.5, rel=0.05)
    assert torch.all(model.fc.bias == 0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_zero_init_residual_makes_every_block_start_as_identity():
    model = CifarResNet(3, 10, width_mult=0.5, zero_init_residual=True).eval()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert blocks and all(torch.all(b.bn2.weight == 0) and torch.all(b.bn1.weight == 1) for b in blocks)
    x = torch.randn(2, 8, 8, 8).relu()
    with torch.no_grad():
        assert torch.equal(model.layer1[0](x), x)  # relu(0 + identity) of a non-negative input
    r50 = ResNet(Bottleneck, (1, 1, 1, 1), width_mult=0.25, zero_init_residual=True)
    assert all(
        torch.all(m.bn3.weight == 0) and torch.all(m.bn2.weight == 1)
        for m in r50.modules()
        if isinstance(m, Bottleneck)
    )


def test_zero_init_residual_through_create_model():
    """create_model keeps the family's own init (it no longer re-initializes what the constructor built)."""
    for name, last in (("resnet20", "bn2"), ("resnet50", "bn3")):
        model = create_model(name, width_mult=0.25, zero_init_residual=True)
        blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
        assert blocks and all(torch.all(getattr(b, last).weight == 0) for b in blocks)
    default = create_model("resnet18", width_mult=0.25)
    assert all(torch.all(m.bn2.weight == 1) for m in default.modules() if isinstance(m, BasicBlock))


def test_init_mode_reaches_the_constructor():
    model = ResNet(BasicBlock, (1, 1, 1, 1), width_mult=0.5, init_mode="fan_in")
    conv = model.layer3[0].conv2  # He normal, fan-in: std = sqrt(2 / (3 * 3 * in_channels))
    assert conv.weight.std().item() == pytest.approx((2 / (9 * conv.in_channels)) ** 0.5, rel=0.05)
    assert model_info("resnet18").init_mode == "fan_out"


def test_shortcut_keyword():
    model = create_model("resnet20", shortcut="B", width_mult=0.25)
    assert isinstance(model.layer2[0].downsample, nn.Sequential)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ConfigError, match="shortcut must be one of 'A', 'B'"):
        create_model("resnet20", shortcut="C")
    with pytest.raises(ConfigError, match="resnet18 does not accept the keyword shortcut"):
        create_model("resnet18", shortcut="A")


def test_option_a_shortcut_subsamples_and_pads_with_zeros():
    x = torch.randn(2, 3, 6, 6)
    y = ZeroPadShortcut(3, 5, 2)(x)
    assert y.shape == (2, 5, 3, 3)
    assert torch.equal(y[:, :3], x[:, :, ::2, ::2]) and torch.all(y[:, 3:] == 0)
    with pytest.raises(ValueError, match="cannot pad 5 channels down to 3"):
        ZeroPadShortcut(5, 3, 1)


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(ValueError, match=r"resnet18: expected a batch .*\(N, 1, H, W\)"):
        create_model("resnet18", in_chans=1, width_mult=0.125)(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="layers must give the blocks of 4 stages"):
        ResNet(BasicBlock, (2, 2, 2))


@pytest.mark.parametrize("name", RESNETS)
def test_deploy_equals_the_model_in_eval_mode(name):
    """BNs in ``nn.Sequential`` (the downsample projections) are folded; the blocks' own BNs (attributes of the
    block, not Sequential neighbours) are not folded yet, and deploy stays exact either way."""
    size = 32 if model_info(name).input_size == 32 else 64
    model = create_model(name, num_classes=10, in_chans=1, width_mult=0.25)
    with torch.no_grad():  # a few training-mode batches give the batch norms real running statistics
        for _ in range(3):
            model(torch.randn(8, 1, size, size))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    deployed = deploy(model, "factorized")
    x = torch.randn(4, 1, size, size)
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) < 1e-4
    left = {n for n, m in deployed.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert not any(n.endswith("downsample.1") for n in left)
    assert not deployed.training and not any(p.requires_grad for p in deployed.parameters())


def test_models_command_lists_the_family(capsys):
    assert set(RESNETS) <= set(list_models("resnet*"))
    assert main(["models", "resnet*"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows["resnet18"][1:4] == ["224", "11,689,512", "1,814,073,344"]
    assert rows["resnet50"][1:4] == ["224", "25,557,032", "4,089,184,256"]
    assert rows["resnet56"][1:4] == ["32", "853,018", "125,485,696"]
