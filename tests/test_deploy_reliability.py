"""Issue 10: deploy never changes what a model computes (shared convs, custom containers), profile takes the
channel count from the model, and bad arguments of deploy/profile/bench are the library's own errors."""

import pytest
import torch
from conftest import rel_err
from torch import nn

from lowrankcnn import create_model, deploy, profile
from lowrankcnn.bench import BenchSettings, bench
from lowrankcnn.deployment import LOW_RANK, deploy_decision, deploy_report
from lowrankcnn.errors import ConfigError, LowRankCNNError, ShapeError
from lowrankcnn.layers import CompositeConv2d
from lowrankcnn.models import ModelSpec
from lowrankcnn.timing import interleaved


def trained_looking(model: nn.Module) -> nn.Module:
    """Batch norms with non-trivial statistics and affine parameters (as after training), in eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


class ConvCalledTwice(nn.Module):
    """``body[0]`` runs inside ``body`` (followed by its batch norm) and once more on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.body[0](x)


class SharedRegistered(nn.Module):
    """One composite conv registered in two containers: after a batch norm in one, a ReLU in the other."""

    def __init__(self) -> None:
        super().__init__()
        conv = CompositeConv2d(3, [(3, 1, 2), (1, 3, 2)])
        self.a = nn.Sequential(conv, nn.BatchNorm2d(4))
        self.b = nn.Sequential(conv, nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) - self.b(x)


class Reversed(nn.Sequential):
    """An ``nn.Sequential`` subclass whose forward does not run its children in order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[0](self[1](x)) + self[0](x)


MODELS = {
    "conv_called_twice": ConvCalledTwice,
    "shared_registered": SharedRegistered,
    "custom_sequential": lambda: nn.Sequential(Reversed(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)), nn.ReLU()),
}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("target", ["factorized", "dense"])
def test_deploy_keeps_a_batch_norm_whose_fold_would_change_the_result(kind, target):
    model = trained_looking(MODELS[kind]())
    x = torch.randn(2, 3, 8, 8)
    deployed = deploy(model, target, input_shape=(1, 3, 8, 8))
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) < 1e-5
    assert not any(isinstance(m, LOW_RANK) for m in deployed.modules())  # shared layers replaced everywhere
    (kept,) = [c for c in deploy_report(deployed) if c.form == "unfolded"]
    assert "not folded" in kept.note and any(w in kept.note for w in ("shared", "outside", "own forward"))


def test_deploy_traces_an_unregistered_model_at_a_guessed_shape():
    model = trained_looking(ConvCalledTwice())  # not a registered model: traced at (1, 3, 224, 224)
    x = torch.randn(2, 3, 8, 8)
    deployed = deploy(model, "factorized")
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) < 1e-6
    (kept,) = deploy_report(deployed)
    assert kept.name == "body.1" and "not folded" in kept.note
    assert deploy_decision(deployed).input_source.startswith("guessed")


def test_deploy_still_folds_a_plain_sequential_and_the_zoo():
    model = trained_looking(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    deployed = deploy(model, "factorized", input_shape=(1, 3, 8, 8))
    assert isinstance(deployed[1], nn.Identity) and deploy_report(deployed) == []
    zoo = trained_looking(create_model("vgg11_gmp_lr", width_mult=0.25, bn=True))
    deployed = deploy(zoo, "factorized")  # registered: traced at its native size
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(deployed(x), zoo(x)) < 1e-4


def test_deploy_errors_are_the_librarys():
    model = create_model("nin_c3_lr", width_mult=0.25)
    bad = (
        {"target": "fast"},
        {"rank1": "dense"},
        {"input_shape": (1, 3, -4, 30)},
        {"repeats": 0},
        {"channels_last": "yes"},
        {"device": "tpu"},
    )
    for kwargs in bad:
        with pytest.raises(ConfigError):
            deploy(model, **kwargs)
    with pytest.raises(ShapeError, match="input_shape"):  # a plain torch layer refusing the shape
        deploy(trained_looking(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))), input_shape=(1, 5, 8, 8))


def test_profile_takes_the_channel_count_from_the_model():
    one_channel = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    result = profile(one_channel, 28)
    assert result.input_size == (1, 28, 28) and result.macs == 4 * 9 * 26 * 26 + 4 * 26 * 26 * 10
    low_rank_first = nn.Sequential(CompositeConv2d(2, [(3, 1, 2), (1, 3, 2)]), nn.AdaptiveAvgPool2d(1))
    assert profile(low_rank_first, 8).input_size == (2, 8, 8)
    linear_first = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ConfigError, match="in_chans"):
        profile(linear_first, 2)
    assert profile(linear_first, 2, in_chans=3).macs == 36


def test_profile_errors_are_the_librarys():
    model = create_model("nin", width_mult=0.25)
    for kwargs in ({"convention": "flops"}, {"rank1_form": "x"}, {"input_size": 0}, {"input_size": (0, 30)}):
        with pytest.raises(ConfigError):
            profile(model, **{"input_size": 30, **kwargs})
    with pytest.raises(ConfigError, match="larger than"):
        profile(model, 100_000)
    with pytest.raises(ShapeError, match="in_chans"):  # 3-channel conv given 2 channels
        profile(nn.Sequential(nn.Conv2d(3, 4, 3)), 8, in_chans=2)


@pytest.mark.parametrize(
    "settings",
    [
        BenchSettings(train=True, deploy="factorized"),
        BenchSettings(deploy="fast"),
        BenchSettings(batch_size=0),
        BenchSettings(repeats=-1),
        BenchSettings(warmup=-1),
        BenchSettings(repeats=10**11),  # would run for days
        BenchSettings(warmup=10**11),
        BenchSettings(input_size=0),
        BenchSettings(input_size=100_000),
        BenchSettings(input_size=4096, batch_size=10_000),  # fits no machine: refused before allocating
    ],
)
def test_bench_settings_are_library_errors(settings):
    with pytest.raises(LowRankCNNError):
        bench("kim_rank1_cifar10", None, settings)


def test_a_bad_model_spec_is_a_library_error():
    with pytest.raises(LowRankCNNError, match="width_mult"):
        bench(ModelSpec("kim_rank1_cifar10", width_mult=float("nan")))


def test_timing_repeats_are_checked():
    with pytest.raises(ConfigError, match="repeats"):
        interleaved({"a": lambda: None}, repeats=0)


def test_output_rank_arguments_are_checked():
    from lowrankcnn.analysis import output_rank

    model = create_model("kim_rank1_cifar10", width_mult=0.25).eval()
    with pytest.raises(ConfigError, match="rtol"):
        output_rank(model, torch.randn(2, 3, 32, 32), rtol=0)
    with pytest.raises(ShapeError, match="images"):
        output_rank(model, torch.randn(0, 3, 32, 32))
