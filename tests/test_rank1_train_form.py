"""``Rank1Conv2d(train_form=...)``: training through the 1x1 + depthwise chain computes what the assembled 3-D conv
computes (outputs, gradients, one SGD step), for every geometry; ``"auto"`` resolves by ``chain_is_faster``."""

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err
from torch.utils.flop_counter import FlopCounterMode

from lowrankcnn.errors import ConfigError
from lowrankcnn.layers import ConvSpec, Rank1Conv2d, create_lowrank_conv
from lowrankcnn.layers.rank1 import TRAIN_FORMS, chain_is_faster

# (c_in, c_out, kernel, stride, padding, dilation, bias, shared_spatial)
CASES = {
    "3x3": (5, 16, 3, 1, None, 1, True, False),
    "3x3_stride2_shared": (5, 16, 3, 2, None, 1, True, True),
    "rect_stride_h_dilation_w_shared": (4, 9, (3, 5), (2, 1), None, (1, 2), False, True),
    "rect_stride_w_padding_per_axis": (6, 8, (5, 3), (1, 2), (0, 2), 1, True, False),
    "1x3_stride3_dilated": (3, 7, (1, 3), 3, None, 2, False, False),
    "5x5_uneven_everything": (7, 4, 5, (2, 3), (1, 3), (2, 1), True, False),
}


def pair(case: str, train_forms=("assembled", "chain"), cls=Rank1Conv2d) -> list[Rank1Conv2d]:
    """Layers of ``case`` with identical (random) factors and bias, one per train form, in training mode."""
    c_in, c_out, k, stride, padding, dilation, bias, shared = CASES[case]
    layers = []
    for form in train_forms:
        torch.manual_seed(0)
        layer = cls(c_in, c_out, k, stride, bias, "factors", shared, padding, dilation, train_form=form)
        if layer.bias is not None:
            torch.nn.init.normal_(layer.bias)
        layers.append(layer.train())
    return layers


def run(layer: Rank1Conv2d, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output and gradients (input and every parameter) of ``sum(layer(x) * g)``."""
    x = x.clone().requires_grad_()
    y = layer(x)
    (y * g).sum().backward()
    grads = {name: p.grad for name, p in layer.named_parameters()}
    return {"output": y.detach(), "input_grad": x.grad, **grads}


def output_like(layer: Rank1Conv2d, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.randn_like(
            F.conv2d(x, layer.assembled_weight(), None, layer.stride, layer.padding, layer.dilation)
        )


@pytest.mark.parametrize("case", list(CASES))
def test_chain_and_assembled_give_the_same_outputs_and_gradients(case):
    assembled, chain = pair(case)
    assert assembled.state_dict().keys() == chain.state_dict().keys()
    assert not assembled.trains_chain and chain.trains_chain
    x = torch.randn(3, assembled.in_channels, 17, 14)
    g = output_like(assembled, x)
    a, c = run(assembled, x, g), run(chain, x, g)
    expected = {"output", "input_grad", "channel", "vertical", "horizontal"} | ({"bias"} if CASES[case][6] else set())
    assert a.keys() == c.keys() == expected
    for name in expected:
        assert a[name].shape == c[name].shape, name
        assert rel_err(c[name], a[name]) < 1e-5, name


@pytest.mark.parametrize("case", list(CASES))
def test_one_sgd_step_gives_the_same_factors(case):
    layers = pair(case)
    x = torch.randn(3, layers[0].in_channels, 17, 14)
    g = output_like(layers[0], x)
    for layer in layers:
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
        (layer(x) * g).sum().backward()
        optimizer.step()
    (assembled, chain) = (dict(layer.named_parameters()) for layer in layers)
    initial = dict(pair(case, ("assembled",))[0].named_parameters())
    for name, value in assembled.items():
        assert not torch.equal(value, initial[name]), name  # the step moved it
        assert rel_err(chain[name], value) < 1e-5, name


class StrideOnTheOneByOne(Rank1Conv2d):
    """The bug the comparison must catch: the stride applied to the 1x1 conv instead of the spatial conv."""

    def _chain_forward(self, x):
        t, q, p = self.factors()
        y = F.conv2d(x, t[:, :, None, None], None, self.stride)
        spatial = (q[:, :, None] * p[:, None, :])[:, None]
        return F.conv2d(y, spatial, self.bias, 1, self.padding, self.dilation, self.out_channels)


def test_the_comparison_catches_a_misplaced_stride():
    assembled, buggy = pair("3x3_stride2_shared", cls=StrideOnTheOneByOne)
    x = torch.randn(3, assembled.in_channels, 17, 14)
    with torch.no_grad():
        y, wrong = assembled(x), buggy(x)
    assert y.shape == wrong.shape  # same shape, so only the values can tell
    assert rel_err(wrong, y) > 0.1


def test_the_chain_runs_in_training_mode_only():
    (layer,) = pair("3x3_stride2_shared", ("chain",))
    x = torch.randn(2, layer.in_channels, 16, 16)
    (c_in, c_out), (kh, kw) = (layer.in_channels, layer.out_channels), layer.kernel_size
    out_positions = 8 * 8

    def macs() -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            layer(x)
        return counter.get_total_flops() // 2 // x.shape[0]

    assert layer.forward_form == "factorized"
    assert macs() == c_out * c_in * 16 * 16 + c_out * kh * kw * out_positions  # 1x1 at full size, then depthwise
    layer.eval()
    assert layer.forward_form == "dense"
    assert macs() == c_out * c_in * kh * kw * out_positions


def test_auto_resolves_by_the_documented_rule():
    for c_in, c_out, stride in ((3, 64, 1), (64, 64, 1), (64, 128, 2), (256, 256, 1), (16, 16, 2)):
        layer = Rank1Conv2d(c_in, c_out, 3, stride)
        assert layer.train_form == "auto"
        assert layer.trains_chain == chain_is_faster(c_in, layer.kernel_size, layer.stride)
    assert not Rank1Conv2d(3, 64).trains_chain  # an RGB input layer trains assembled
    assert Rank1Conv2d(256, 256).trains_chain
    assert set(TRAIN_FORMS) == {"assembled", "chain", "auto"}


def test_train_form_options_and_errors():
    spec = ConvSpec.make(8, 16, 3)
    assert Rank1Conv2d.from_spec(spec, train_form="chain").trains_chain
    layer = create_lowrank_conv("rank1", 64, 64, 3, train_form="assembled")
    assert isinstance(layer, Rank1Conv2d) and not layer.trains_chain
    assert "train=assembled" in layer.describe() and "train=" not in Rank1Conv2d(64, 64).describe()
    with pytest.raises(ConfigError, match="train_form must be 'assembled', 'chain', 'auto', got 'fast'"):
        Rank1Conv2d(8, 16, train_form="fast")
    with pytest.raises(ConfigError, match="train_form"):
        create_lowrank_conv("rank1", 8, 16, 3, train_form="fast")
    with pytest.raises(ConfigError, match="train_form='chain' needs scheme='factors'"):
        Rank1Conv2d(8, 16, scheme="projected", train_form="chain")
    for form in ("auto", "assembled"):  # projected trains the 3-D weight: the assembled conv
        projected = Rank1Conv2d(64, 64, scheme="projected", train_form=form).train()
        assert not projected.trains_chain and projected.forward_form == "dense"
