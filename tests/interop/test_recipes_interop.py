"""Interop tier: the channel-rank and BSConv layers and the training recipes on real torchvision and timm models.

- ``svd`` fitted at full rank (``init="fit"``, ``rank_ratio=1``) reproduces each model; ``svd`` and ``bsconv`` at
  their defaults deploy exactly and export to ONNX checked in onnxruntime.
- The Pufferfish and Cuttlefish recipes (a dense warm-up, fixed or automatic ranks, then the switch) and the
  post-training path (``decompose`` then fine-tune) train a user's factory wrapping torchvision's and timm's
  ResNet-18 on real Fashion-MNIST, and the checkpoints rebuild in the form their weights belong to.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import requires_fashion_mnist
from test_torchvision_timm import INPUT_SHAPE, INPUT_SIZE, batch_norms, real_model, rel_err, sample_batch

from lowrankcnn import deploy
from lowrankcnn.convert import convert
from lowrankcnn.layers import ChannelRankConv2d
from lowrankcnn.models.cfg import IMAGENET_MEAN, IMAGENET_STD
from lowrankcnn.preprocessing import Preprocessing
from lowrankcnn.training import TrainConfig, Trainer, load_checkpoint, load_trained_model
from lowrankcnn.training.decompose import decompose_run

RESNETS = ("torchvision.resnet18", "timm.resnet18")
FACTORIES = ("interop_factories:torchvision_resnet18", "interop_factories:timm_resnet18")


@pytest.mark.parametrize("name", [*RESNETS, "torchvision.vgg11_bn"])
def test_svd_at_full_rank_reproduces_the_model(name):
    model = real_model(name)
    converted, report = convert(model, "svd", init="fit", rank_ratio=1.0, input_size=(3, INPUT_SIZE, INPUT_SIZE))
    assert report.converted and all("ChannelRankConv2d" in c.new_kind for c in report.converted)
    x = sample_batch()
    with torch.no_grad():
        assert rel_err(converted.eval()(x), model(x)) < 1e-4


@pytest.mark.parametrize("method", ["svd", "bsconv"])
@pytest.mark.parametrize("name", RESNETS)
def test_default_svd_and_bsconv_deploy_exactly_and_export_to_onnx(name, method, tmp_path):
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install 'lowrankcnn[export]'")
    from lowrankcnn.export import export_checked

    model, report = convert(real_model(name), method, input_size=(3, INPUT_SIZE, INPUT_SIZE))
    assert report.macs_after < report.macs_before
    model.eval()
    deployed = deploy(model, input_shape=INPUT_SHAPE)
    x = sample_batch()
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) < 1e-4
    assert batch_norms(deployed) == [], batch_norms(deployed)
    preprocessing = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE)
    onnx = export_checked(deployed, tmp_path / "m.onnx", "onnx", preprocessing, model_name=f"{name}+{method}")
    assert math.isfinite(onnx.max_abs_diff) and onnx.max_abs_diff / onnx.output_scale < 1e-4


def small_run(out, model, **settings) -> TrainConfig:
    """3 epochs on 2,048 real images (``settings`` override)."""
    recipe = dict(epochs=3, lr=0.05, batch_size=64, train_subset=2048, test_subset=500, threads=2)
    return TrainConfig(model=model, out=str(out), **{**recipe, **settings})


RECIPES = {
    "pufferfish": {"lowrank": "svd", "warmup_dense": 1, "keep_dense": ["layer1.*"]},
    "cuttlefish": {"lowrank": "svd", "rank": "auto", "warmup_dense": 1, "frobenius_decay": 5e-4},
}


@requires_fashion_mnist
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("factory", FACTORIES)
def test_warmup_recipes_train_a_users_torchvision_or_timm_resnet(factory, recipe, tmp_path):
    with Trainer(small_run(tmp_path / "run", factory, **RECIPES[recipe]), progress=False) as trainer:
        history = trainer.fit()
    assert history[-1]["test_acc"] > 0.5, history  # chance is 0.10
    phase = load_checkpoint(tmp_path / "run" / "last.pt")["lowrank_phase"]
    assert phase["switch_epoch"] == 1, phase
    model, _, _ = load_trained_model(tmp_path / "run", trust_factory=True)
    rebuilt = {n: m for n, m in model.named_modules() if isinstance(m, ChannelRankConv2d)}
    if recipe == "pufferfish":  # every conv past the stem and layer1 at rank C_out / 4
        assert sorted(n.split(".")[0] for n in rebuilt) == ["layer2"] * 4 + ["layer3"] * 4 + ["layer4"] * 4
        assert all(m.rank == m.out_channels // 4 for m in rebuilt.values())
    else:  # each tracked conv either at its recorded rank or (its rank saving no MACs) dense
        assert {n: m.rank for n, m in rebuilt.items()} == phase["ranks"]
        assert set(phase["ranks"]) | set(phase["dense_layers"]) == set(phase["init_ranks"])


@requires_fashion_mnist
def test_decompose_a_trained_torchvision_resnet_then_fine_tune(tmp_path):
    with Trainer(small_run(tmp_path / "dense", FACTORIES[0], epochs=2), progress=False) as trainer:
        dense_acc = trainer.fit()[-1]["test_acc"]
    decompose_run(tmp_path / "dense", "svd", tmp_path / "svd", epochs=1, lr=0.01, trust_factory=True)
    with Trainer.resume(tmp_path / "svd", progress=False, trust_factory=True) as trainer:
        tuned = trainer.fit()[-1]["test_acc"]
    assert tuned > dense_acc - 0.1, (dense_acc, tuned)  # the fit starts near the dense model, it does not restart
    model, _, _ = load_trained_model(tmp_path / "svd", trust_factory=True)
    assert any(isinstance(m, ChannelRankConv2d) for m in model.modules())
