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
