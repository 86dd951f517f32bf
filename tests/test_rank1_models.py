"""Kim et al.'s networks, rank-1 zoo options, rank-1 counting, fused forms and output-rank analysis."""

import math

import pytest
import torch
from conftest import rel_err, requires_fashion_mnist, tiny_kim_config
from torch import nn

from lowrankcnn import create_model, list_models, model_info, profile
from lowrankcnn.analysis import output_rank
from lowrankcnn.cli import main
from lowrankcnn.layers import CompositeConv2d, ConsecutiveConv2d, Rank1Conv2d, SeparableConv2d
from lowrankcnn.layers.fuse import equivalent_dense_conv
from lowrankcnn.models import model_cfg
from lowrankcnn.training import Trainer


def conv_totals(name: str, form: str = "decomposed") -> tuple[int, int]:
    with torch.device("meta"):
        model = create_model(name)
    result = profile(model, 32, rank1_form=form)
    conv = [r for r in result.layers if r.kind != "Linear"]
    return sum(r.params for r in conv), sum(r.macs for r in conv)


def test_cifar_net_counts_match_spec():
    """docs/reference.md §2.2: rank-1 conv params 138,000 vs 1,230,688 dense; conv MACs 20.0 M vs 167.5 M assembled."""
    assert conv_totals("kim_rank1_cifar10") == (138_000, 20_037_632)
    assert conv_totals("kim_rank1_cifar10", "assembled") == (138_000, 167_510_016)
    assert conv_totals("kim_dense_cifar10") == (1_230_688, 167_510_016)
    params, macs = conv_totals("kim_flat_cifar10")
    assert macs == 20_037_632  # consecutive 1-D layers cost what the decomposed rank-1 form costs
    with torch.device("meta"):
        assert profile(create_model("kim_rank1_cifar10"), 32).rank1_form == "decomposed"
        assert profile(create_model("kim_dense_cifar10"), 32).rank1_form is None


@pytest.mark.parametrize("name", list_models("kim_*"))
def test_kim_nets_run_and_dropout_is_off_in_eval(name):
    in_chans = 1 if "mnist" in name else 3
    model = create_model(name, in_chans=in_chans, width_mult=0.25)
    x = torch.randn(4, in_chans, 28 if "mnist" in name else 32, 28 if "mnist" in name else 32)
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_cifar_net_on_fashion_mnist_shapes_and_errors():
    model = create_model("kim_rank1_cifar10", in_chans=1, width_mult=0.25)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="built for 32x32 inputs .* got \\(28, 28\\)"):
        model(torch.randn(2, 1, 28, 28))
    assert create_model("kim_rank1_cifar10", in_chans=1, input_size=28, width_mult=0.25)(
        torch.randn(2, 1, 28, 28)
    ).shape == (2, 10)


def test_shared_spatial_widths_stay_square():
    model = create_model("kim_rank1_cifar10", width_mult=0.5)
    widths = [m.out_channels for m in model.modules() if isinstance(m, Rank1Conv2d)]
    assert widths == [36, 36, 64, 64, 121, 121]  # round(num * sqrt(0.5))**2 for num 8, 12, 16


def test_kim_rank1_unshared_spatial_option():
    """``shared_spatial=False``: one vertical and one horizontal vector per filter, same widths and MACs."""
    shared = create_model("kim_rank1_cifar10", width_mult=0.25)
    unshared = create_model("kim_rank1_cifar10", width_mult=0.25, shared_spatial=False)
    layers = [m for m in unshared.modules() if isinstance(m, Rank1Conv2d)]
    assert [m.out_channels for m in layers] == [16, 16, 36, 36, 64, 64]
    assert all(not m.shared_spatial and m.vertical.shape == (m.out_channels, 3) for m in layers)
    assert shared.features.conv1a.vertical.shape == (4, 3)  # num = sqrt(16) shared vectors
    assert profile(unshared, 32).macs == profile(shared, 32).macs
    extra = sum(2 * 3 * (m.out_channels - math.isqrt(m.out_channels)) for m in layers)  # 2 directions x 3 taps
    assert profile(unshared, 32).params == profile(shared, 32).params + extra


@pytest.mark.parametrize("name", [n for n in list_models() if "rank1_scheme" in model_info(n).kwargs])
@pytest.mark.parametrize("scheme", ["factors", "projected"])
def test_rank1_zoo_options(name, scheme):
    size = model_cfg(create_model(name, width_mult=0.125)).input_size
    model = create_model(name, num_classes=10, in_chans=1, width_mult=0.125, rank1_scheme=scheme)
    layers = [m for m in model.modules() if isinstance(m, Rank1Conv2d)]
    assert layers and all(m.scheme == scheme for m in layers)
    assert model(torch.randn(2, 1, size, size)).shape == (2, 10)
    decomposed, assembled = profile(model, size), profile(model, size, rank1_form="assembled")
    assert decomposed.macs < assembled.macs


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv2d(5, 7, 3, 2, 1),
        CompositeConv2d(5, [(3, 1, 4), (1, 3, 4), (3, 3, 2)], stride=2, join=6),
        nn.Sequential(SeparableConv2d(5, 6, 3, stride=2)),
        Rank1Conv2d(5, 9, 3, 2, shared_spatial=True),
        Rank1Conv2d(5, 6, (3, 5), scheme="projected"),
        ConsecutiveConv2d(5, 6, 3, stride=2),
    ],
)
def test_equivalent_dense_conv(module):
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    if isinstance(module, nn.Sequential):  # a separable layer is exact only without its 1xk bias
        module = module[0]
        with torch.no_grad():
            module.conv_1xk.bias.zero_()
    x = torch.randn(2, 5, 11, 12)
    dense = equivalent_dense_conv(module)
    assert rel_err(dense(x), module(x)) < 1e-5


def test_separable_with_first_bias_is_not_fusable():
    layer = SeparableConv2d(3, 4)
    nn.init.normal_(layer.conv_1xk.bias)
    with pytest.raises(ValueError, match="zero padding cuts off at the borders"):
        equivalent_dense_conv(layer)


def test_tight_bound_holds_and_papers_bound_only_with_one_spatial_pattern():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 12, 12)
    dense = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1))
    rank1 = nn.Sequential(Rank1Conv2d(3, 16))
    one_pattern = nn.Sequential(Rank1Conv2d(3, 16))
    with torch.no_grad():  # every filter t_o ⊗ q ⊗ p with the same q and p
        one_pattern[0].vertical.copy_(one_pattern[0].vertical[:1].expand(16, 3))
        one_pattern[0].horizontal.copy_(one_pattern[0].horizontal[:1].expand(16, 3))
    (d,), (r,), (o,) = (output_rank(m, x) for m in (dense, rank1, one_pattern))
    assert d.output_rank == r.output_rank == 16 > 3  # distinct spatial vectors: as rich as dense
    assert r.paper_bound == 3 and r.paper_bound_holds is False
    assert o.output_rank == 3 and o.paper_bound_holds  # shared pattern: rank <= C_in
    assert all(row.bound_holds for row in (d, r, o))


@requires_fashion_mnist
def test_trained_rank1_model_ranks(tmp_path):
    trainer = Trainer(tiny_kim_config(tmp_path / "r", train_subset=512, lr=0.01), progress=False)
    trainer.fit()
    images = torch.cat([x for x, _ in trainer.data.test])
    rows = output_rank(trainer.model, images)
    assert len(rows) == 6 and all(r.bound_holds for r in rows)
    assert rows[0].in_channels == 1 and rows[0].output_rank > rows[0].paper_bound  # paper's bound exceeded
    assert main(["rank", "--checkpoint", str(tmp_path / "r" / "last.pt"), "--images", "8"]) == 0


def _max_second_singular_ratio(layer: Rank1Conv2d) -> float:
    w = layer.weight.detach().double()
    ratios = []
    for unfold in (w.flatten(2), w.permute(0, 2, 1, 3).flatten(2), w.permute(0, 3, 1, 2).flatten(2)):
        s = torch.linalg.svdvals(unfold)
        if s.shape[1] > 1:  # a 1-channel layer's channel unfolding has a single singular value
            ratios.append((s[:, 1] / s[:, 0]).max().item())
    return max(ratios)


@requires_fashion_mnist
@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_projected_training_leaves_exact_rank1_filters(tmp_path, unit):
    config = tiny_kim_config(
        tmp_path / unit, project_unit=unit, project_every=3, model_kwargs={"rank1_scheme": "projected"}
    )
    trainer = Trainer(config, progress=False)
    calls = []
    trainer.project = lambda original=trainer.project: calls.append(1) or original()
    trainer.fit()
    assert len(calls) == (1 + 4 // 3 if unit == "step" else 1)  # every 3 steps (4 steps) + after the last
    layers = [m for m in trainer.model.modules() if isinstance(m, Rank1Conv2d)]
    assert layers and max(_max_second_singular_ratio(m) for m in layers) < 1e-5


@pytest.mark.parametrize("form", ["depthwise", "chain"])
def test_model_deploy_matches_and_leaves_original(form):
    from lowrankcnn.deployment import deploy

    model = create_model("kim_rank1_cifar10", in_chans=1, width_mult=0.25).eval()
    deployed = deploy(model, "factorized", rank1=form)
    assert not any(isinstance(m, Rank1Conv2d) for m in deployed.modules())
    assert any(isinstance(m, Rank1Conv2d) for m in model.modules())
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) < 1e-4
    counts = profile(deployed, 32)  # standard convs only: the profile counts what actually runs
    assert counts.rank1_form is None and counts.params < profile(model, 32).params + 10_000
    with pytest.raises(ValueError, match="rank1 must be one of"):
        deploy(model, rank1="dense")
