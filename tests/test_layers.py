import pytest
import torch
from conftest import rel_err
from torch import nn

from lowrankcnn.layers import CompositeConv2d, SeparableConv2d


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(17, 17), (15, 22)])
@pytest.mark.parametrize(
    "basis, join",
    [
        ([(3, 1, 8), (1, 3, 8)], None),
        ([(3, 1, 8), (1, 3, 8)], 12),
        ([(3, 1, 6), (1, 3, 6), (3, 3, 4)], 16),
        ([(3, 1, 6), (1, 3, 6), (3, 3, 4)], None),
        ([(5, 1, 4), (1, 5, 4), (3, 3, 2)], 7),
        ([(2, 2, 5)], None),
    ],
)
def test_to_dense_matches_factorized(basis, join, stride, size):
    layer = CompositeConv2d(5, basis, stride=stride, join=join)
    for p in layer.parameters():  # non-zero biases so bias folding is exercised
        nn.init.normal_(p)
    x = torch.randn(3, 5, *size)
    dense = layer.to_dense()
    assert isinstance(dense, nn.Conv2d)
    assert dense.out_channels == layer.out_channels
    y, y_dense = layer(x), dense(x)
    assert y.shape == y_dense.shape
    if all(kh % 2 and kw % 2 for kh, kw, _ in basis):  # odd kernels: "same" output size
        assert y.shape == (3, layer.out_channels, (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1)
    assert rel_err(y_dense, y) < 1e-5


def test_to_dense_would_catch_a_misplaced_filter():
    """The equivalence check is sensitive: shifting one basis filter breaks it."""
    layer = CompositeConv2d(4, [(3, 1, 4), (1, 3, 4)])
    x = torch.randn(2, 4, 9, 9)
    weight, _ = layer.dense_weight()
    wrong = nn.functional.conv2d(x, torch.roll(weight, 1, dims=-1), layer.to_dense().bias, padding=1)
    assert rel_err(wrong, layer(x)) > 0.1


def test_output_shape_and_channels():
    layer = CompositeConv2d(3, [(3, 1, 10), (1, 3, 6)], stride=2)
    assert layer.out_channels == layer.basis_channels == 16
    assert layer(torch.randn(2, 3, 31, 30)).shape == (2, 16, 16, 15)
    joined = CompositeConv2d(3, [(3, 1, 10), (1, 3, 6)], join=5)
    assert joined.out_channels == 5 and joined.basis_channels == 16
    assert joined.kernel_size == (3, 3)


def test_no_bias():
    layer = CompositeConv2d(3, [(3, 1, 4), (1, 3, 4)], bias=False, join=6)
    assert all(c.bias is None for c in layer.groups) and layer.join.bias is None
    assert layer.to_dense().bias is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"basis": []}, "non-empty list"),
        ({"basis": [(3, 1, 0)]}, "must all be positive"),
        ({"basis": [(3, -1, 4)]}, "must all be positive"),
        ({"basis": [(3, 1)]}, "three integers"),
        ({"basis": [(3, 1, 2.5)]}, "three integers"),
        ({"basis": [(2, 1, 4), (1, 3, 4)]}, "even kernel_h cannot be aligned"),
        ({"basis": [(3, 1, 4)], "join": 0}, "join must be None or a positive"),
        ({"basis": [(3, 1, 4)], "stride": 0}, "stride must be a positive"),
        ({"basis": "3x1"}, "non-empty list"),
    ],
)
def test_invalid_configurations_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        CompositeConv2d(3, **kwargs)
    assert str(info.value).startswith("CompositeConv2d:")


def test_wrong_input_channels_is_a_clear_error():
    layer = CompositeConv2d(3, [(3, 1, 4), (1, 3, 4)])
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\), got \(2, 4, 8, 8\)"):
        layer(torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match="expected input of shape"):
        layer(torch.randn(3, 8, 8))


def test_describe():
    assert CompositeConv2d(3, [(3, 1, 4), (1, 3, 4)], stride=2, join=8).describe() == "3x1:4|1x3:4 -> 1x1:8 /2"


@pytest.mark.parametrize("stride", [1, 2])
def test_separable_is_1xk_then_kx1(stride):
    layer = SeparableConv2d(3, 8, 3, stride)
    assert layer.conv_1xk.kernel_size == (1, 3) and layer.conv_kx1.kernel_size == (3, 1)
    x = torch.randn(2, 3, 13, 12)
    expected = layer.conv_kx1(layer.conv_1xk(x))
    assert torch.equal(layer(x), expected)
    assert layer(x).shape == (2, 8, (13 - 1) // stride + 1, (12 - 1) // stride + 1)


def test_separable_rejects_even_kernels_and_bad_inputs():
    with pytest.raises(ValueError, match="kernel_size must be a positive odd"):
        SeparableConv2d(3, 8, 4)
    with pytest.raises(ValueError, match="out_channels must be a positive"):
        SeparableConv2d(3, 0)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\)"):
        SeparableConv2d(3, 8)(torch.randn(1, 1, 8, 8))
