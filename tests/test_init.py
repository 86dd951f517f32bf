import math

import pytest
import torch
from torch import nn

from lowrankcnn.layers import CompositeConv2d, composite_fan, init_weights_


def test_shared_std_from_sum_over_groups():
    layer = CompositeConv2d(16, [(3, 1, 300), (1, 3, 300), (3, 3, 200)], join=400)
    init_weights_(layer)
    n_hat = 3 * 300 + 3 * 300 + 9 * 200
    assert composite_fan(layer) == [n_hat] * 3
    for conv in layer.groups:  # every group has the same std, not its own fan-out
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / n_hat), rel=0.03)
        assert torch.count_nonzero(conv.bias) == 0
    assert layer.join.weight.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.03)


def test_plain_conv_gets_he_fan_out_and_fan_in_option():
    conv = nn.Conv2d(64, 256, 3)
    init_weights_(conv)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.03)
    init_weights_(conv, mode="fan_in")
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.03)
    layer = CompositeConv2d(64, [(3, 1, 100), (3, 3, 100)])
    assert composite_fan(layer, "fan_in") == [3 * 64, 9 * 64]
    with pytest.raises(ValueError, match="mode must be"):
        init_weights_(conv, mode="fan_avg")


def _stack_stats(naive: bool, depth: int = 16, width: int = 64) -> tuple[float, float]:
    """Plain stack of composite layers + ReLU, no batch norm.

    Returns (gradient norm at the first layer's output / at the last layer's output,
    activation norm at the last layer / at the first). The backward-derived init
    keeps the first ratio near 1.
    """
    torch.manual_seed(0)
    layers = [CompositeConv2d(width, [(3, 1, width // 2), (1, 3, width // 2)]) for _ in range(depth)]
    net = nn.Sequential(*[m for layer in layers for m in (layer, nn.ReLU())])
    init_weights_(net)
    if naive:  # each group initialized as if it were a layer of its own (kaiming fan-out per group)
        for layer in layers:
            for conv in layer.groups:
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    outputs: list[torch.Tensor] = []
    for layer in layers:
        layer.register_forward_hook(lambda _m, _i, out: out.retain_grad() or outputs.append(out))
    out = net(torch.randn(8, width, 16, 16))
    (out * torch.randn_like(out)).sum().backward()
    grad = [o.grad.norm().item() for o in outputs]
    act = [o.norm().item() for o in outputs]
    return grad[0] / grad[-1], act[-1] / act[0]


def test_composite_init_keeps_gradients_flowing_and_naive_init_does_not():
    composite_grad, composite_act = _stack_stats(naive=False)
    naive_grad, naive_act = _stack_stats(naive=True)
    assert 1 / 4 < composite_grad < 4
    assert 1 / 4 < composite_act < 4
    # Naive per-group fan-out init doubles the backward variance at every layer (2 groups),
    # so the first layer's gradient is ~sqrt(2)^15 ~ 180x the last one's; activations
    # blow up the same way going forward.
    assert naive_grad > 50 and naive_grad > 20 * composite_grad
    assert naive_act > 50


def _same_weights(build_a, build_b) -> bool:
    torch.manual_seed(0)
    a = build_a().state_dict()
    torch.manual_seed(0)
    b = build_b().state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _family_cases():
    from lowrankcnn.models.googlenet import GoogLeNet
    from lowrankcnn.models.kim import KimCifarNet, KimMnistNet, conv_factory
    from lowrankcnn.models.nin import NiN, lowrank_conv
    from lowrankcnn.models.resnet import CifarResNet
    from lowrankcnn.models.vgg import VGG, lr_rule

    return {
        "vgg11_gmp_lr": (lambda: VGG(lr_rule, 10, 1, 0.25), {"num_classes": 10, "in_chans": 1, "width_mult": 0.25}),
        "nin_c3_lr": (lambda: NiN(*[lowrank_conv] * 4, (3, 3, 3), width_mult=0.25), {"width_mult": 0.25}),
        "googlenet_lr": (
            lambda: GoogLeNet(True, False, 10, width_mult=0.125),
            {"num_classes": 10, "width_mult": 0.125},
        ),
        "kim_rank1_cifar10": (lambda: KimCifarNet(conv_factory("rank1"), width_mult=0.25), {"width_mult": 0.25}),
        "kim_flat_mnist": (lambda: KimMnistNet(conv_factory("flat"), width_mult=0.25), {"width_mult": 0.25}),
        "resnet20": (lambda: CifarResNet(3, width_mult=0.25), {"width_mult": 0.25}),
    }


@pytest.mark.parametrize("name", ["vgg11_gmp_lr", "nin_c3_lr", "googlenet_lr", "kim_rank1_cifar10", "kim_flat_mnist"])
def test_a_model_initializes_itself_so_create_model_and_its_class_agree(name):
    """Init belongs to the model: its constructor applies the family's rule (composite fan-out; GoogLeNet fan-in),
    and ``create_model`` does not re-initialize, so both give the same weights under the same seed."""
    from lowrankcnn import create_model

    build, kwargs = _family_cases()[name]
    assert _same_weights(build, lambda: create_model(name, **kwargs))
    model = build()
    biases = [p for n, p in model.named_parameters() if n.endswith("bias") and ".bn" not in n]
    assert biases and not any(b.any() for b in biases)  # init_weights_ ran (PyTorch's default biases are not zero)
    composite = [m for m in model.modules() if isinstance(m, CompositeConv2d)]
    if composite:  # the family's rule (composite fan-out; GoogLeNet fan-in) on its widest composite layer
        conv = max(composite, key=lambda m: m.groups[0].weight.numel())
        mode = "fan_in" if name.startswith("googlenet") else "fan_out"
        for g, n_hat in zip(conv.groups, composite_fan(conv, mode), strict=True):
            assert g.weight.std().item() == pytest.approx(math.sqrt(2 / n_hat), rel=0.2)


def test_create_model_keeps_a_familys_own_init_and_passes_an_override_through():
    from lowrankcnn import create_model
    from lowrankcnn.models.googlenet import GoogLeNet
    from lowrankcnn.models.resnet import CifarResNet

    build, kwargs = _family_cases()["resnet20"]  # a family without init_mode: create_model leaves its init alone
    assert _same_weights(build, lambda: create_model("resnet20", **kwargs))
    assert _same_weights(
        lambda: GoogLeNet(num_classes=10, width_mult=0.125, init_mode="fan_out"),
        lambda: create_model("googlenet", num_classes=10, width_mult=0.125, init_mode="fan_out"),
    )
    torch.manual_seed(0)
    overridden = create_model("resnet20", width_mult=0.25, init_mode="fan_in")  # applied after building
    conv = overridden.layer1[0].conv1
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * conv.in_channels)), rel=0.15)
    assert not _same_weights(lambda: CifarResNet(3, width_mult=0.25), lambda: overridden)
