"""The one measurement pipeline (``lowrankcnn.bench``): what is timed, how it is counted, and what it reports.

No test asserts on a time; they check which module ran, in which mode and memory format, and that every
count and ratio equals its recomputation.
"""

import copy
import json

import pytest
import torch
from torch import nn

import lowrankcnn.measure as measure_module
from lowrankcnn import create_model, deploy, profile
from lowrankcnn.bench import BenchSettings, baseline_spec, bench, measure
from lowrankcnn.cli import main
from lowrankcnn.errors import ConfigError
from lowrankcnn.layers import Rank1Conv2d
from lowrankcnn.models import ModelSpec
from lowrankcnn.timing import interleaved

CALLS: list[dict] = []
"""What every forward of a ``Recorder`` saw while ``interleaved`` was timing (filled by ``timed_calls``)."""
_RECORDING = [False]


class Recorder(nn.Module):
    """conv (rank-1 or dense) -> batch norm -> ReLU -> pool -> linear; its forward notes how it was run."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, low_rank: bool = True) -> None:
        super().__init__()
        self.in_chans, self.tag = in_chans, "low-rank" if low_rank else "dense"
        conv = Rank1Conv2d(in_chans, 8) if low_rank else nn.Conv2d(in_chans, 8, 3, padding=1)
        self.features = nn.Sequential(conv, nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _RECORDING[0]:
            CALLS.append(
                {
                    "tag": self.tag,
                    "training": self.training,
                    "grad": torch.is_grad_enabled(),
                    "batch": x.shape[0],
                    "channels_last": x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                    "types": {type(m) for m in self.modules()},
                }
            )
        return self.fc(self.features(x))


def recorder(**kwargs: object) -> Recorder:
    return Recorder(**kwargs)


@pytest.fixture
def timed_calls(monkeypatch) -> list[dict]:
    """``CALLS``, recording only inside the pipeline's ``interleaved`` call (not deploy's tracing or profiling)."""

    def spy(fns, **kwargs):
        _RECORDING[0] = True
        try:
            return interleaved(fns, **kwargs)
        finally:
            _RECORDING[0] = False

    CALLS.clear()
    monkeypatch.setattr(measure_module, "interleaved", spy)
    return CALLS


def by_tag(calls: list[dict], tag: str) -> list[dict]:
    return [c for c in calls if c["tag"] == tag]


@pytest.mark.parametrize("channels_last", [False, True])
def test_bench_times_the_deployed_form_in_eval_mode(timed_calls, channels_last):
    settings = BenchSettings(input_size=12, batch_size=3, repeats=4, warmup=2, channels_last=channels_last)
    result = bench(ModelSpec(recorder), ModelSpec(recorder, kwargs={"low_rank": False}), settings)
    for tag in ("low-rank", "dense"):
        calls = by_tag(timed_calls, tag)
        assert len(calls) == 2 + 4  # warm-up and timed rounds, nothing else
        for c in calls:
            assert not c["training"] and not c["grad"] and c["batch"] == 3 and c["channels_last"] == channels_last
            assert Rank1Conv2d not in c["types"] and nn.BatchNorm2d not in c["types"]  # deployed, BN folded
    (choice,) = result.measured.deploy_choices  # auto (the default): the form measured faster
    assert choice.form in ("factorized", "dense") and set(choice.ms) == {"factorized", "dense"}
    deployed = deploy(Recorder(in_chans=3), choice.form, input_shape=(3, 3, 12, 12))
    assert result.measured.macs == profile(deployed, 12).macs  # counted: what ran
    assert result.measured.params == profile(deployed, 12).params
    assert [c["name"] for c in result.to_dict()["deploy_choices"]] == ["features.0"]


def test_bench_times_a_training_step_on_the_training_form(timed_calls):
    settings = BenchSettings(input_size=12, batch_size=3, repeats=3, warmup=1, train=True, deploy="none")
    bench(ModelSpec(recorder), None, settings)
    assert len(timed_calls) == 2 * (1 + 3)  # both memory formats by default
    assert sum(c["channels_last"] for c in timed_calls) == 1 + 3
    for c in timed_calls:
        assert c["training"] and c["grad"] and Rank1Conv2d in c["types"] and nn.BatchNorm2d in c["types"]


def test_measure_leaves_the_given_models_alone_and_counts_them_on_request(timed_calls):
    models = {"dense": Recorder(low_rank=False), "low-rank": Recorder()}
    before = {k: copy.deepcopy(m.state_dict()) for k, m in models.items()}
    out = measure(models, (2, 3, 10, 10), "dense", train=True, deploy="none", count="given", repeats=2, warmup=0)
    assert len(timed_calls) == 2 * 2 * 2  # models x memory formats x repeats: warmup=0 runs nothing untimed
    for name, model in models.items():
        assert model.training and all(torch.equal(v, before[name][k]) for k, v in model.state_dict().items())
        assert out[name].macs == profile(model, 10).macs and out[name].params == profile(model, 10).params
    low = out["low-rank"]
    assert low.mac_ratio == pytest.approx(out["dense"].macs / low.macs) and low.mac_ratio > 1
    assert low.speedup == pytest.approx(out["dense"].timing.median / low.timing.median)
    assert low.efficiency == pytest.approx(low.speedup / low.mac_ratio)
    assert low.images_per_s == pytest.approx(2 / low.timing.median)
    assert out["dense"].speedup == out["dense"].mac_ratio == 1.0


def test_measure_keeps_each_models_faster_memory_format(timed_calls):
    models = {"a": Recorder(), "b": Recorder(low_rank=False)}
    out = measure(models, (2, 3, 10, 10), memory_formats=("contiguous", "channels_last"), deploy="dense", repeats=3)
    assert sorted(c["channels_last"] for c in by_tag(timed_calls, "low-rank")) == [False] * 6 + [True] * 6
    for m in out.values():
        assert set(m.timings) == {"contiguous", "channels_last"}
        assert m.timing is m.timings[m.memory_format] == min(m.timings.values(), key=lambda t: t.median)
        assert m.speedup is None and m.mac_ratio is None and m.efficiency is None  # no baseline given
    assert out["a"].macs == out["b"].macs  # deployed dense: the rank-1 conv became a dense 3x3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"baseline": "c"}, "baseline 'c' is not one of"),
        ({"train": True}, "training step times the model as trained"),
        ({"memory_formats": ("nhwc",)}, "memory_formats must be distinct"),
        ({"memory_formats": ("contiguous", "contiguous")}, "memory_formats must be distinct"),
        ({"count": "all"}, "count must be one of"),
        ({"repeats": 0}, "repeats must be an integer >= 1"),
    ],
)
def test_measure_refuses_bad_options(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        measure({"a": Recorder()}, (1, 3, 8, 8), **kwargs)
    with pytest.raises(ConfigError, match="input_shape"):
        measure({"a": Recorder()}, (1, 3, 8))


def _params(name: str, **kwargs: object) -> int:
    return sum(p.numel() for p in create_model(name, width_mult=0.125, **kwargs).parameters())


def test_cli_bench_model_kwargs_build_both_models_with_them(capsys):
    args = ["bench", "--model", "vgg11_gmp_lr", "--width-mult", "0.125", "--input-size", "32", "--batch-size", "2"]
    args += ["--repeats", "1", "--warmup", "0", "--deploy", "none", "--json", "--threads", str(torch.get_num_threads())]
    assert main([*args, "--model-kwargs", "bn=true"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model_kwargs"] == d["baseline_kwargs"] == {"bn": True}
    assert d["params"] == _params("vgg11_gmp_lr", bn=True) != _params("vgg11_gmp_lr")  # as built: with BN
    assert d["baseline_params"] == _params("vgg11_gmp", bn=True)
    assert main([*args, "--model-kwargs", "bn=true", "--baseline-kwargs"]) == 0  # the baseline as it comes
    d = json.loads(capsys.readouterr().out)
    assert d["baseline_kwargs"] == {} and d["baseline_params"] == _params("vgg11_gmp")
    assert main([*args, "--model-kwargs", "fc_width=0"]) == 2
    assert "keyword fc_width must be at least 1" in capsys.readouterr().err


def test_a_baseline_named_is_built_like_the_model():
    spec = ModelSpec("kim_rank1_cifar10", 7, 1, 0.25, {"rank1_scheme": "projected", "bn": False})
    assert baseline_spec("kim_dense_cifar10", spec) == ModelSpec("kim_dense_cifar10", 7, 1, 0.25, {"bn": False})
    given = ModelSpec("nin", width_mult=0.5)
    assert baseline_spec(given, spec) is given and baseline_spec(None, spec) is None


def test_bench_refuses_models_that_take_different_inputs():
    with pytest.raises(ConfigError, match="input channels"):
        bench(ModelSpec("kim_rank1_mnist", width_mult=0.25), ModelSpec("kim_dense_cifar10", width_mult=0.25))
    with pytest.raises(ConfigError, match="input_size"):
        bench(ModelSpec(recorder))
