import math

import pytest
import torch
from conftest import rel_err
from torch import nn

from lowrankcnn.layers import ConsecutiveConv2d, Rank1Conv2d, init_weights_
from lowrankcnn.layers.decompose import assemble, rank1_factors


def _tensor_rank1_error(w: torch.Tensor) -> float:
    """Largest second singular value over first, across every filter's three unfoldings."""
    worst = 0.0
    for o in range(w.shape[0]):
        f = w[o].double()
        for unfold in (
            f.reshape(f.shape[0], -1),
            f.permute(1, 0, 2).reshape(f.shape[1], -1),
            f.permute(2, 0, 1).reshape(f.shape[2], -1),
        ):
            s = torch.linalg.svdvals(unfold)
            worst = max(worst, (s[1] / s[0]).item() if len(s) > 1 else 0.0)
    return worst


CASES = [
    (6, 16, 3, 1, False),
    (6, 16, 3, 2, False),
    (5, 9, 3, 2, True),
    (4, 16, (3, 5), 1, True),
    (3, 8, (1, 3), 2, False),
    (7, 4, 5, (2, 1), False),
]


@pytest.mark.parametrize("scheme", ["factors", "projected"])
@pytest.mark.parametrize("c_in, c_out, k, stride, shared", CASES)
def test_chain_equals_3d_form(scheme, c_in, c_out, k, stride, shared):
    layer = Rank1Conv2d(c_in, c_out, k, stride, scheme=scheme, shared_spatial=shared)
    nn.init.normal_(layer.bias)
    if scheme == "projected":  # a trained (moved) weight, then projected as the trainer does
        with torch.no_grad():
            layer.weight.add_(0.1 * torch.randn_like(layer.weight))
        layer.project_()
    x = torch.randn(2, c_in, 13, 10)
    deployed = layer.to_chain("separate")
    assert [type(m) for m in deployed] == [nn.Conv2d] * 3
    assert deployed[1].groups == deployed[2].groups == c_out
    y = layer(x)
    assert y.shape == deployed(x).shape
    assert rel_err(deployed(x), y) < 1e-5
    depthwise = layer.to_chain()  # the default: the faster form
    assert len(depthwise) == 2 and depthwise[1].groups == c_out and depthwise[1].kernel_size == layer.kernel_size
    assert rel_err(depthwise(x), y) < 1e-5


def test_chain_is_sensitive_to_a_wrong_factor():
    layer = Rank1Conv2d(4, 9, 3, shared_spatial=True)
    deployed = layer.to_chain("separate")
    with torch.no_grad():
        deployed[1].weight[0] = deployed[1].weight[0].flip(1)
    x = torch.randn(1, 4, 9, 9)
    assert rel_err(deployed(x), layer(x)) > 1e-2


def test_assembled_filters_are_rank1_and_shared_vectors_are_shared():
    layer = Rank1Conv2d(5, 16, 3, shared_spatial=True)
    w = layer.assembled_weight().detach()
    assert _tensor_rank1_error(w) < 1e-6
    # filter (i, j) = channel o = i * 4 + j uses vertical vector j and horizontal vector i
    assert layer.vertical.shape == (4, 3) and layer.horizontal.shape == (4, 3)
    q = w.sum(dim=(1, 3))  # proportional to the vertical vector of each filter
    cos = torch.nn.functional.cosine_similarity(q[1], q[5], dim=0).abs()  # both j = 1
    assert cos.item() == pytest.approx(1.0, abs=1e-5)


def test_projection_is_best_rank1_and_idempotent():
    torch.manual_seed(1)
    w = torch.randn(8, 6, 3, 3, dtype=torch.float64)
    idx = torch.arange(8)
    t, q, p = rank1_factors(w, idx, idx, tol=1e-12, max_iter=500)
    approx = assemble(t, q, p)
    # exactness on rank-1 input
    t2, q2, p2 = rank1_factors(approx, idx, idx)
    assert rel_err(assemble(t2, q2, p2), approx) < 1e-10
    # optimality: the residual is orthogonal to each factor direction (first-order conditions)
    r = w - approx
    assert torch.einsum("ochw,oh,ow->oc", r, q, p).abs().max() < 1e-4  # a wrong fit violates it at O(1)
    # and no random rank-1 filter does better than the fit
    best = (w - approx).flatten(1).norm(dim=1)
    for _ in range(20):
        rand = assemble(
            torch.randn(8, 6, dtype=torch.float64),
            torch.randn(8, 3, dtype=torch.float64),
            torch.randn(8, 3, dtype=torch.float64),
        )
        scale = (rand * w).sum(dim=(1, 2, 3)) / (rand * rand).sum(dim=(1, 2, 3))
        assert ((w - scale[:, None, None, None] * rand).flatten(1).norm(dim=1) >= best - 1e-9).all()
    layer = Rank1Conv2d(6, 8, scheme="projected")
    with torch.no_grad():
        layer.weight.copy_(w.float())
    layer.project_()
    once = layer.weight.detach().clone()
    assert _tensor_rank1_error(once) < 1e-5
    layer.project_()
    assert rel_err(layer.weight.detach(), once) < 1e-6


@pytest.mark.parametrize("scheme, shared", [("factors", False), ("factors", True), ("projected", False)])
def test_init_matches_he_variance_of_the_dense_conv(scheme, shared):
    torch.manual_seed(0)
    layer = Rank1Conv2d(96, 256, 3, scheme=scheme, shared_spatial=shared)
    target = math.sqrt(2 / (9 * 256))
    assert layer.he_std() == pytest.approx(target)
    assert layer.assembled_weight().std().item() == pytest.approx(target, rel=0.10)
    init_weights_(layer, mode="fan_in")
    assert layer.assembled_weight().std().item() == pytest.approx(math.sqrt(2 / (9 * 96)), rel=0.10)


def test_gradients_reach_the_factors():
    layer = Rank1Conv2d(3, 4)
    layer(torch.randn(2, 3, 8, 8)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (layer.channel, layer.vertical, layer.horizontal))


def test_consecutive_is_three_standard_layers():
    layer = ConsecutiveConv2d(5, 8, 3, stride=2)
    assert [m.kernel_size for m in (layer.conv_1x1, layer.conv_kx1, layer.conv_1xk)] == [(1, 1), (3, 1), (1, 3)]
    assert layer(torch.randn(2, 5, 11, 11)).shape == (2, 8, 6, 6)
    # it computes a rank-1 conv: same function as Rank1Conv2d with the same factors
    r1 = Rank1Conv2d(5, 8, 3, stride=2)
    with torch.no_grad():
        r1.channel.copy_(layer.conv_1x1.weight[:, :, 0, 0])
        r1.vertical.copy_(layer.conv_kx1.weight[:, 0, :, 0])
        r1.horizontal.copy_(layer.conv_1xk.weight[:, 0, 0, :])
        r1.bias.copy_(layer.conv_1xk.bias)
    x = torch.randn(2, 5, 11, 11)
    assert rel_err(layer(x), r1(x)) < 1e-5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"out_channels": 10, "shared_spatial": True}, "shared_spatial needs out_channels = num\\*\\*2"),
        ({"scheme": "cp"}, "scheme must be 'factors' or 'projected'"),
        ({"kernel_size": 0}, "kernel_size must be a positive int"),
        ({"stride": (1, 2, 3)}, "stride must be a positive int"),
        ({"out_channels": 0}, "out_channels must be a positive integer"),
    ],
)
def test_bad_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Rank1Conv2d(**{"in_channels": 3, "out_channels": 9, **kwargs})


def test_bad_input_and_project_on_factors():
    layer = Rank1Conv2d(3, 4)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\)"):
        layer(torch.randn(1, 2, 5, 5))
    with pytest.raises(ValueError, match="project_\\(\\) applies to scheme='projected' only"):
        layer.project_()
