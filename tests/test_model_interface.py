"""What a built model declares about itself (``model.default_cfg``) and ``ModelSpec``, for every registered model."""

import pytest
import torch
from torch import nn

from lowrankcnn import create_model, deploy, list_models, model_info
from lowrankcnn.deployment import deploy_decision
from lowrankcnn.errors import ConfigError
from lowrankcnn.models import ModelSpec, model_cfg
from lowrankcnn.training import TrainConfig
from lowrankcnn.training.checkpoint import build_model


@pytest.mark.parametrize("name", list_models())
def test_every_model_declares_its_interface(name):
    info = model_info(name)
    with torch.device("meta"):
        model = create_model(name)
    cfg = model_cfg(model)
    assert (cfg.name, cfg.num_classes, cfg.in_chans, cfg.input_size) == (
        name,
        info.num_classes,
        info.in_chans,
        info.input_size,
    )
    assert cfg.min_input_size == info.min_input_size <= cfg.input_size
    assert len(cfg.mean) == len(cfg.std) == cfg.in_chans
    head = model.get_submodule(cfg.classifier)  # the named layer really produces the logits
    assert (head.out_features if isinstance(head, nn.Linear) else head.out_channels) == cfg.num_classes
    if cfg.baseline is not None:  # the dense twin: registered, dense itself, same task
        twin = model_info(cfg.baseline)
        assert twin.baseline is None and (twin.input_size, twin.num_classes) == (info.input_size, info.num_classes)


def test_only_rank1_models_take_rank1_keywords():
    """kim_dense_* / kim_flat_* used to accept rank1_scheme and shared_spatial and silently ignore them."""
    for name in ("kim_dense_cifar10", "kim_flat_mnist", "vgg11_gmp", "nin"):
        with pytest.raises(ConfigError, match="does not accept the keyword rank1_scheme"):
            create_model(name, width_mult=0.25, rank1_scheme="projected")
    assert create_model("kim_rank1_cifar10", width_mult=0.25, rank1_scheme="projected", shared_spatial=False)


def test_a_model_for_other_channels_does_not_claim_the_native_normalization():
    cfg = model_cfg(create_model("vgg11_gmp_lr", in_chans=1, width_mult=0.125))
    assert cfg.in_chans == 1 and cfg.mean is None and cfg.std is None


def test_a_trained_model_declares_its_data():
    info = {
        "name": "fashion-mnist",
        "num_classes": 10,
        "in_chans": 1,
        "input_size": 28,
        "mean": [0.286],
        "std": [0.353],
    }
    model = build_model(TrainConfig(model="kim_rank1_cifar10", out="x", width_mult=0.25), info)
    cfg = model_cfg(model)
    assert (cfg.input_size, cfg.mean, cfg.std, cfg.num_classes) == (28, (0.286,), (0.353,), 10)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_deploy_reads_the_input_shape_from_the_cfg():
    """Folding needs a traced input: deploy takes it from ``default_cfg`` (here a 1-channel, 28x28 model)."""
    info = {"name": "fashion-mnist", "num_classes": 10, "in_chans": 1, "input_size": 28, "class_names": []}
    model = build_model(TrainConfig(model="vgg11_gmp_lr", out="x", width_mult=0.125, model_kwargs={"bn": True}), info)
    deployed = deploy(model.eval(), "factorized")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())  # every batch norm folded
    assert deploy_decision(deployed).input_shape == (1, 1, 28, 28)
    del model.default_cfg  # a model that declares nothing: traced at 224 x 224 with its first conv's channels
    deployed = deploy(model, "factorized")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert deploy_decision(deployed).input_shape == (1, 1, 224, 224)


def test_model_spec_builds_registered_models_and_factories():
    spec = ModelSpec("kim_rank1_cifar10", num_classes=5, in_chans=1, width_mult=0.25, kwargs={"input_size": 16})
    model = spec.create("meta")
    assert next(model.parameters()).is_meta and model_cfg(model).input_size == 16
    assert spec.to_dict()["kwargs"] == {"input_size": 16} and spec.info.name == spec.name
    with pytest.raises(ConfigError, match="does not accept the keyword colour"):
        spec.with_kwargs(colour=1).create()
    factory = ModelSpec(lambda num_classes=3, in_chans=3: nn.Conv2d(in_chans, num_classes, 1), num_classes=7)
    assert factory.create().out_channels == 7 and factory.info is None
    with pytest.raises(ConfigError, match="cannot be saved"):
        factory.to_dict()
