"""Deploy transform: BN folding, factorized/dense/auto forms, equivalence on every zoo model."""

import pytest
import torch
from conftest import rel_err
from torch import nn

from lowrankcnn import create_model, list_models, model_info
from lowrankcnn.deployment import LOW_RANK, deploy, deploy_decision, deploy_report
from lowrankcnn.layers import (
    BSConvU,
    ChannelRankConv2d,
    CompositeConv2d,
    ConsecutiveConv2d,
    Rank1Conv2d,
    SeparableConv2d,
)
from lowrankcnn.layers.fold import BATCH_NORM_TYPES, batchnorm_affine, fold_affine_, fold_batchnorms_
from lowrankcnn.timing import MEMORY_FORMATS


def randomize_batchnorms(model: nn.Module) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine parameters, every bias a value (as after training)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.1, 0.1)
        for m in model.modules():
            if isinstance(m, BATCH_NORM_TYPES):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.5, 1.5)  # negative scales too
                m.bias.uniform_(-0.5, 0.5)
    return model


def zoo_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """``name`` at width 0.25 (with batch norm where the family has the option) and a small input."""
    try:
        model = create_model(name, width_mult=0.25, bn=True)
    except ValueError:
        model = create_model(name, width_mult=0.25)
    size = min(model_info(name).input_size, 64)
    return randomize_batchnorms(model).eval(), torch.randn(2, model.in_chans, size, size)


LAYERS = {
    "conv": lambda: nn.Conv2d(6, 8, 3, padding=1, bias=False),
    "composite": lambda: CompositeConv2d(6, [(3, 1, 3), (1, 3, 5)]),
    "composite_join": lambda: CompositeConv2d(6, [(3, 1, 3), (1, 3, 3), (3, 3, 2)], join=8),
    "separable": lambda: SeparableConv2d(6, 8),
    "rank1_factors": lambda: Rank1Conv2d(6, 9, bias=False),
    "rank1_projected_shared": lambda: Rank1Conv2d(6, 9, scheme="projected", shared_spatial=True),
    "consecutive": lambda: ConsecutiveConv2d(6, 8, stride=2),
    "channel_rank": lambda: ChannelRankConv2d(6, 8, stride=2, rank=3),
    "bsconv": lambda: BSConvU(6, 8, (3, 5), dilation=2),
}


@pytest.mark.parametrize("kind", list(LAYERS))
def test_fold_affine_into_each_layer_type(kind):
    layer = LAYERS[kind]().eval()
    x = torch.randn(2, 6, 9, 11)
    with torch.no_grad():
        y = layer(x)
    bn = randomize_batchnorms(nn.BatchNorm2d(y.shape[1])).eval()
    scale, shift = batchnorm_affine(bn)
    assert fold_affine_(layer, scale, shift)
    with torch.no_grad():
        assert rel_err(layer(x), bn(y)) < 1e-5


def test_fold_refuses_what_it_cannot_fold():
    bn = nn.BatchNorm2d(4, track_running_stats=False)
    with pytest.raises(ValueError, match="without running statistics"):
        batchnorm_affine(bn)
    assert not fold_affine_(nn.ReLU(), torch.ones(4), torch.zeros(4))
    assert not fold_affine_(nn.Conv2d(3, 5, 1), torch.ones(4), torch.zeros(4))  # channel mismatch
    relu_first = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4))
    assert fold_batchnorms_(relu_first).folded == []  # a ReLU stands between: nothing folded
    assert isinstance(relu_first[2], nn.BatchNorm2d)


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_deploys_equivalently(name):
    model, x = zoo_model(name)
    with torch.no_grad():
        reference = model(x)
    has_low_rank = any(isinstance(m, LOW_RANK) for m in model.modules())
    for target in ("factorized", "dense"):
        if target == "dense" and any(isinstance(m, SeparableConv2d) for m in model.modules()):
            with pytest.raises(ValueError, match=r"layer features\.conv1: .*non-zero bias.*target='factorized'"):
                deploy(model, target)
            continue
        deployed = deploy(model, target)
        assert not any(isinstance(m, LOW_RANK) for m in deployed.modules())
        assert not any(p.requires_grad for p in deployed.parameters())
        report = deploy_report(deployed)
        layers = [r for r in report if r.form != "unfolded"]
        assert bool(layers) == has_low_rank and all(r.form == target for r in layers)
        left = {n for n, m in deployed.named_modules() if isinstance(m, BATCH_NORM_TYPES)}
        assert {r.name for r in report if r.form == "unfolded"} == left  # every batch norm kept, with its reason
        with torch.no_grad():
            assert rel_err(deployed(x), reference) < 1e-4, (name, target)
    # Batch norms that follow a conv are folded, in nn.Sequential or in residual blocks (traced); the Kim CIFAR
    # nets put theirs after the ReLU.
    left = [m for m in deploy(model, "factorized").modules() if isinstance(m, BATCH_NORM_TYPES)]
    assert len(left) == (3 if name.startswith("kim_") and name.endswith("cifar10") else 0)
    assert any(isinstance(m, BATCH_NORM_TYPES) for m in model.modules()) or not left  # original untouched


DEEP = ("resnet34", "resnet50", "resnet56")
"""Families whose default-deploy check (every layer timed) runs in the slow tier only."""


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n.startswith(DEEP) else n for n in list_models()],
)
def test_default_deploy_is_equivalent_and_records_its_choices(name):
    """The default (auto: per-layer form and memory format measured) is equivalent and records what it chose."""
    model, x = zoo_model(name)
    with torch.no_grad():
        reference = model(x)
    has_low_rank = any(isinstance(m, LOW_RANK) for m in model.modules())
    deployed = deploy(model, input_shape=(1, *x.shape[1:]), repeats=1)
    decision = deploy_decision(deployed)
    assert decision.target == "auto" and decision.input_source == "given"
    assert decision.memory_format in MEMORY_FORMATS and set(decision.format_ms) == set(MEMORY_FORMATS)
    layers = [r for r in deploy_report(deployed) if r.form != "unfolded"]
    assert bool(layers) == has_low_rank and all(r.form in ("factorized", "dense") for r in layers)
    assert all(set(r.ms) == {"factorized", "dense"} for r in layers if r.name not in separable_layers(model))
    fmt = torch.channels_last if decision.memory_format == "channels_last" else torch.contiguous_format
    with torch.no_grad():
        assert rel_err(deployed(x.contiguous(memory_format=fmt)), reference) < 1e-4, (name, "auto")


def separable_layers(model: nn.Module) -> set[str]:
    """Names of the layers with no exact dense form when they have a bias (kept factorized untimed)."""
    return {n for n, m in model.named_modules() if isinstance(m, SeparableConv2d)}


def test_auto_times_both_forms_and_records_the_choice():
    model, x = zoo_model("vgg11_gmp_lr_join")
    deployed = deploy(model, "auto", input_shape=(2, 3, 32, 32), repeats=3)
    report = deploy_report(deployed)
    assert len(report) == 8
    for choice in report:
        assert set(choice.ms) == {"factorized", "dense"}
        # the faster beyond the noise, else the documented rule (factorized), with the reason
        assert choice.form == min(choice.ms, key=choice.ms.get) or "within timing noise" in choice.note
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) < 1e-4
    # A layer with no dense form is kept factorized without being timed.
    sf, x = zoo_model("vgg11_gmp_sf")
    assert {(c.form, tuple(c.ms)) for c in deploy_report(deploy(sf, "auto", repeats=1))} == {("factorized", ())}


def test_auto_guesses_an_input_shape_for_unregistered_models():
    layer = nn.Sequential(CompositeConv2d(3, [(3, 1, 4), (1, 3, 4)]), nn.BatchNorm2d(8))
    deployed = deploy(layer, repeats=1)
    decision = deploy_decision(deployed)
    assert decision.input_shape == (1, 3, 224, 224) and decision.input_source.startswith("guessed")
    assert isinstance(deployed[1], nn.Identity)
    deployed = deploy(layer, "auto", input_shape=(1, 3, 8, 8), repeats=1, channels_last=False)
    assert isinstance(deployed[1], nn.Identity) and deploy_decision(deployed).format_ms == {}
    # A guessed shape the model refuses: nothing folded or timed, said so; a given one is an error.
    fixed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    deployed = deploy(fixed, repeats=1)
    assert isinstance(deployed[1], nn.BatchNorm2d)
    assert "does not run on the assumed input (1, 3, 224, 224)" in deploy_decision(deployed).notes[0]
    with pytest.raises(ValueError, match=r"does not run on a batch shaped \(1, 3, 16, 16\)"):
        deploy(fixed, input_shape=(1, 3, 16, 16))


def test_a_bare_low_rank_layer_deploys_to_standard_modules():
    layer = Rank1Conv2d(4, 6, stride=2).eval()
    x = torch.randn(2, 4, 9, 9)
    for target in ("factorized", "dense"):
        deployed = deploy(layer, target)
        assert deployed.deploy_form == target and not isinstance(deployed, Rank1Conv2d)
        with torch.no_grad():
            assert rel_err(deployed(x), layer(x)) < 1e-5


@pytest.mark.parametrize("rank1", ["depthwise", "chain"])
def test_channels_last_deploy_matches(rank1):
    model, x = zoo_model("kim_rank1_cifar10")
    deployed = deploy(model, "factorized", rank1=rank1, channels_last=True)
    assert deployed.features.conv1a[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = deployed(x.contiguous(memory_format=torch.channels_last))
        assert rel_err(y, model(x)) < 1e-4


def test_bad_arguments_are_clear():
    model, _ = zoo_model("nin_c3_lr")
    with pytest.raises(ValueError, match="target must be one of factorized, dense, auto"):
        deploy(model, "fast")
    with pytest.raises(ValueError, match="rank1 must be one of"):
        deploy(model, rank1="dense")


def test_modules_are_not_shadowed_by_the_functions_they_export():
    """``import lowrankcnn.deploy as d`` used to bind the function, so ``d.deploy_report`` failed."""
    import lowrankcnn
    import lowrankcnn.deployment as deployment
    import lowrankcnn.profiling as profiling

    assert lowrankcnn.deploy is deployment.deploy and callable(deployment.deploy_report)
    assert lowrankcnn.profile is profiling.profile and profiling.ProfileResult
