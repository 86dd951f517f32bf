"""A user's own model, named ``package.module:function``: trained (converted low-rank), rebuilt from its checkpoint
for eval/export/resume only when trusted, benched against its dense self, and every mistake one clear error."""

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import FASHION_MNIST, requires_fashion_mnist

from lowrankcnn.bench import default_baseline
from lowrankcnn.cli import main
from lowrankcnn.errors import CheckpointError, ConfigError
from lowrankcnn.layers import CompositeConv2d
from lowrankcnn.models import ModelSpec, model_cfg
from lowrankcnn.profiling import profile
from lowrankcnn.training import TrainConfig, Trainer, build_model, load_trained_model

USER_MODULE = """
from torch import nn


def small_cnn(num_classes=10, in_chans=3, width=16):
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )


def rgb_only(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def five_outputs():
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def not_a_model(num_classes=10):
    return "a string"
"""
INFO = {"num_classes": 10, "in_chans": 1, "input_size": 28, "mean": [0.286], "std": [0.353]}


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``usernets`` importable from the current folder, as a user's file in their own repository."""
    (tmp_path / "usernets.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "usernets", raising=False)
    yield tmp_path
    sys.modules.pop("usernets", None)


def config(out, **kw):
    settings = dict(
        model="usernets:small_cnn",
        out=str(out),
        data_dir=str(FASHION_MNIST),
        epochs=3,
        lr=0.1,
        batch_size=64,
        train_subset=4000,
        test_subset=500,
        workers=0,
        threads=torch.get_num_threads(),
        lowrank="lr",
    )
    return TrainConfig(**{**settings, **kw})


def test_factory_model_is_built_converted_with_a_cfg(user_module):
    model = build_model(config(user_module / "run"), INFO)
    kinds = [type(m).__name__ for m in model if isinstance(m, (torch.nn.Conv2d, CompositeConv2d))]
    assert kinds == ["Conv2d", "CompositeConv2d", "CompositeConv2d"]  # the stem stays dense
    cfg = model_cfg(model)
    assert (cfg.name, cfg.baseline, cfg.input_size, cfg.in_chans, cfg.mean) == (
        "usernets:small_cnn+lr",
        "usernets:small_cnn",
        28,
        1,
        (0.286,),
    )
    assert cfg.classifier == "12"
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"model": "usernets:rgb_only"}, "does not take a batch of this data, shaped (2, 1, 28, 28)"),
        ({"model": "usernets:five_outputs"}, "to (2, 5), not one logit per class (2, 10)"),
        ({"model": "usernets:not_a_model"}, "returned a str, not an nn.Module"),
        ({"model": "usernets:missing"}, "usernets has no function 'missing'"),
        ({"model": "nosuchmodule:net"}, "cannot import 'nosuchmodule'"),
        ({"model": "usernets:small_cnn", "model_kwargs": {"depth": 3}}, "does not take depth (it takes in_chans"),
        ({"model": "usernets:small_cnn", "width_mult": 0.5}, "width_mult applies to registered models only"),
        ({"model": "user nets:x"}, "is not a registry name or a factory"),
    ],
)
def test_factory_mistakes_are_one_config_error(user_module, kw, message):
    with pytest.raises(ConfigError) as err:
        cfg = config(user_module / "run", **{"lowrank": None, **kw})
        cfg.validate()
        build_model(cfg, INFO)
    assert message in str(err.value)


def test_converted_factory_spec_is_benched_against_its_dense_self(user_module):
    spec = ModelSpec("usernets:small_cnn", 10, 1, lowrank="sf")
    assert default_baseline(spec) == ModelSpec("usernets:small_cnn", 10, 1)
    assert default_baseline(ModelSpec("usernets:small_cnn")) is None
    assert default_baseline(ModelSpec("resnet20", lowrank="lr")).model == "resnet20"
    assert default_baseline(ModelSpec("resnet20_lr")).model == "resnet20"
    assert spec.to_dict()["model"] == "usernets:small_cnn"


@requires_fashion_mnist
def test_factory_run_trains_and_is_rebuilt_only_when_trusted(user_module, capsys):
    out = user_module / "run"
    with Trainer(config(out), progress=False, verbose=False) as trainer:
        history = trainer.fit()
        images = torch.randn(4, 1, 28, 28)
        expected = trainer.model.eval()(images)
    assert history[-1]["test_acc"] > 0.5  # it learns (chance is 0.1)

    for load in (lambda: load_trained_model(out), lambda: Trainer.resume(out, epochs=4, progress=False)):
        with pytest.raises(CheckpointError, match="factory 'usernets:small_cnn'.*trust_factory"):
            load()
    model, saved, _ = load_trained_model(out, trust_factory=True)
    assert saved.model == "usernets:small_cnn" and saved.lowrank == "lr"
    torch.testing.assert_close(model(images), expected, rtol=0, atol=0)

    assert main(["eval", "--checkpoint", str(out), "--test-subset", "100", "--workers", "0"]) == 2
    assert "--trust-factory if you trust this file" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out), "--test-subset", "100", "--trust-factory"]) == 0
    assert "usernets:small_cnn+lr (epoch 3) on fashion-mnist test, 100 images" in capsys.readouterr().out
    onnx = user_module / "m.onnx"
    assert main(["export", "--checkpoint", str(out), "--format", "onnx", "--out", str(onnx), "--trust-factory"]) == 0
    assert onnx.stat().st_size > 0
    with Trainer.resume(out, epochs=4, progress=False, verbose=False, trust_factory=True) as trainer:
        assert len(trainer.fit()) == 4


def test_readme_example_factory_is_counted_and_converted(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "examples"))
    dense = ModelSpec("my_models:small_cnn", 10, 1).create("meta")
    lowrank = ModelSpec("my_models:small_cnn", 10, 1, lowrank="lr").create("meta")
    assert (profile(dense, 28).params, profile(dense, 28).macs) == (241_898, 36_353_792)  # MACs: README's bench
    assert (profile(lowrank, 28).params, profile(lowrank, 28).macs) == (82_154, 12_269_312)  # (params: BN unfolded)
