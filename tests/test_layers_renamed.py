"""Renamed layer members and functions: the old names still work (with a DeprecationWarning), old checkpoints load."""

import warnings

import pytest
import torch
from conftest import rel_err
from torch import nn

from lowrankcnn import create_model
from lowrankcnn.deployment import deploy
from lowrankcnn.layers import ConsecutiveConv2d, Rank1Conv2d, SeparableConv2d, init_weights_
from lowrankcnn.layers.fold import BATCH_NORM_TYPES

OLD_NAMES = {  # old submodule name -> new, per layer class
    SeparableConv2d: {"horizontal": "conv_1xk", "vertical": "conv_kx1"},
    ConsecutiveConv2d: {"channel": "conv_1x1", "vertical": "conv_kx1", "horizontal": "conv_1xk"},
}


def old_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with the key names the layers had before the rename."""
    renames = {}
    for name, module in model.named_modules():
        for old, new in OLD_NAMES.get(type(module), {}).items():
            renames[f"{name}.{new}." if name else f"{new}."] = f"{name}.{old}." if name else f"{old}."
    state = {}
    for key, value in model.state_dict().items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        state[renames[prefix] + key[len(prefix) :] if prefix else key] = value
    return state


@pytest.mark.parametrize("name", ["vgg11_gmp_sf", "kim_flat_cifar10"])
def test_a_checkpoint_with_the_old_key_names_loads_and_gives_identical_outputs(name):
    torch.manual_seed(0)
    trained = create_model(name, width_mult=0.25).eval()
    for p in trained.parameters():  # nothing left at its initial value
        nn.init.normal_(p, std=0.1)
    state = old_state_dict(trained)
    assert any(".horizontal." in k for k in state) and not any(".conv_1xk." in k for k in state)
    fresh = create_model(name, width_mult=0.25).eval()
    fresh.load_state_dict(state)  # strict: every old key lands on its new parameter
    x = torch.randn(2, fresh.in_chans, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))


def test_a_bare_layer_loads_old_keys_and_a_key_under_both_names_is_refused():
    layer, other = SeparableConv2d(3, 4), SeparableConv2d(3, 4)
    other.load_state_dict(old_state_dict(layer))
    x = torch.randn(1, 3, 7, 7)
    assert torch.equal(other(x), layer(x))
    both = {**layer.state_dict(), **old_state_dict(layer)}
    with pytest.raises(RuntimeError, match="Unexpected key"):
        other.load_state_dict(both)


@pytest.mark.parametrize("cls", list(OLD_NAMES))
def test_old_submodule_names_read_with_a_warning(cls):
    layer = cls(3, 4)
    for old, new in OLD_NAMES[cls].items():
        with pytest.warns(DeprecationWarning, match=f"{cls.__name__}.{old} is deprecated; use {cls.__name__}.{new}"):
            assert getattr(layer, old) is getattr(layer, new)
    assert not set(OLD_NAMES[cls]) & {name for name, _ in layer.named_modules()}


@pytest.mark.parametrize("cls", [Rank1Conv2d, ConsecutiveConv2d])
@pytest.mark.parametrize("fuse_spatial, spatial", [(False, "separate"), (True, "depthwise")])
def test_layer_deploy_is_a_deprecated_alias_of_to_chain(cls, fuse_spatial, spatial):
    layer = cls(3, 4, stride=2)
    x = torch.randn(2, 3, 9, 9)
    with pytest.warns(DeprecationWarning, match="to_chain") as record:
        old = layer.deploy(fuse_spatial=fuse_spatial)
    assert record[0].filename == __file__
    new = layer.to_chain(spatial)
    assert [m.kernel_size for m in old] == [m.kernel_size for m in new]
    with torch.no_grad():
        assert torch.equal(old(x), new(x))
        assert rel_err(new(x), layer(x)) < 1e-5


def test_rank1_fused_is_a_deprecated_name_of_depthwise():
    model = create_model("kim_rank1_cifar10", width_mult=0.25).eval()
    with pytest.warns(DeprecationWarning, match="rank1='fused' is deprecated; use rank1='depthwise'") as record:
        old = deploy(model, "factorized", rank1="fused")
    assert record[0].filename == __file__  # the warning points at the caller
    new = deploy(model, "factorized", rank1="depthwise")
    assert [type(m) for m in old.modules()] == [type(m) for m in new.modules()]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(old(x), new(x))


def test_init_composite_is_a_deprecated_alias_of_init_weights():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # importing the old name does not warn; only calling it does
        from lowrankcnn.layers import init_composite_
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), Rank1Conv2d(8, 9), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(1, 3, 8, 8))
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match="init_composite_ is deprecated; use init_weights_") as record:
        init_composite_(net, mode="fan_in")
    assert record[0].filename == __file__
    old = [p.clone() for p in net.parameters()]
    torch.manual_seed(0)
    init_weights_(net, mode="fan_in")
    assert all(torch.equal(a, b) for a, b in zip(old, net.parameters(), strict=True))


def test_fold_batchnorm_is_a_deprecated_name_of_batch_norm_types():
    import lowrankcnn.layers.fold as fold

    with pytest.warns(DeprecationWarning, match="BATCH_NORM_TYPES"):
        assert fold.BatchNorm is BATCH_NORM_TYPES
    assert all(issubclass(t, nn.modules.batchnorm._BatchNorm) for t in BATCH_NORM_TYPES)


def test_moved_functions_keep_their_old_import_paths():
    from lowrankcnn.layers import conv_from_weights, decompose
    from lowrankcnn.layers.rank1 import assemble, rank1_chain, rank1_factors

    assert rank1_factors is decompose.rank1_factors and assemble is decompose.assemble
    assert rank1_chain is conv_from_weights.rank1_chain
    with pytest.raises(ValueError, match="spatial must be one of separate, depthwise"):
        rank1_chain(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), None, (1, 1), (1, 1), spatial="fused")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SeparableConv2d(3, True), "SeparableConv2d: out_channels must be a positive integer, got True"),
        (lambda: ConsecutiveConv2d(3.0, 4), "ConsecutiveConv2d: in_channels must be a positive integer, got 3.0"),
        (lambda: Rank1Conv2d(3, 4, stride=(1, True)), "Rank1Conv2d: stride must be a positive int or a pair"),
        (lambda: ConsecutiveConv2d(3, 4, kernel_size="3"), "kernel_size must be a positive int or a pair"),
    ],
)
def test_argument_checks_are_shared_and_refuse_bools(build, message):
    with pytest.raises(ValueError, match=message):
        build()
