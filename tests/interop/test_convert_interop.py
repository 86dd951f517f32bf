"""Interop tier: real torchvision and timm models made low-rank by ``lowrankcnn.convert``, deployed and exported.

For each model of ``MODELS``: the conversion report (converted convs, skipped ones with their reasons, the MAC
reduction, counts equal to ``profile``), the forward shape, ``deploy`` equal to the converted model in eval mode
with every batch norm folded, and an ONNX export checked with onnxruntime. Depthwise-separable networks
(mobilenet_v2, efficientnet_b0) have only their stem as an eligible conv, so it is converted there
(``keep_first=False``) and every depthwise and 1x1 conv is listed as skipped.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_torchvision_timm import INPUT_SHAPE, INPUT_SIZE, MODEL_NAMES, batch_norms, real_model, rel_err, sample_batch

from lowrankcnn import deploy, profile
from lowrankcnn.convert import convert
from lowrankcnn.models.cfg import IMAGENET_MEAN, IMAGENET_STD
from lowrankcnn.preprocessing import Preprocessing

DEPTHWISE_NETS = ("torchvision.mobilenet_v2", "timm.efficientnet_b0")
CONVERTED: dict[str, tuple[torch.nn.Module, object]] = {}


def converted(name: str) -> tuple[torch.nn.Module, object]:
    """``(converted eval-mode model, report)``, method "lr", once per session."""
    if name not in CONVERTED:
        options = {"keep_first": False, "min_channels": 1} if name in DEPTHWISE_NETS else {}
        model, report = convert(real_model(name), "lr", input_size=(3, INPUT_SIZE, INPUT_SIZE), **options)
        CONVERTED[name] = (model.eval(), report)
        print(f"\n{name}:\n{report.table()}")
    return CONVERTED[name]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_conversion_report_matches_profile_and_says_why_convs_were_skipped(name):
    model, report = converted(name)
    assert report.converted and report.macs_after < report.macs_before
    after = {r.name: r for r in profile(model, INPUT_SIZE).layers}
    assert all(after[c.name].macs == c.macs_after for c in report.converted)
    assert report.params_after == sum(p.numel() for p in model.parameters())
    if name in DEPTHWISE_NETS:
        assert any(s.reason == "depthwise" for s in report.skipped)
    with torch.no_grad():
        assert model(sample_batch()).shape == (2, 1000)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_deployed_converted_model_is_exact_with_every_batch_norm_folded(name):
    model, _ = converted(name)
    deployed = deploy(model, input_shape=INPUT_SHAPE)
    x = sample_batch()
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) < 1e-4
    assert batch_norms(deployed) == [], batch_norms(deployed)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_converted_model_exports_to_onnx(name, tmp_path):
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install 'lowrankcnn[export]'")
    from lowrankcnn.export import export_checked

    deployed = deploy(converted(name)[0], input_shape=INPUT_SHAPE)
    preprocessing = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE)
    report = export_checked(deployed, tmp_path / "model.onnx", "onnx", preprocessing, model_name=f"{name}+lr")
    rel = report.max_abs_diff / report.output_scale
    print(f"\n{name} (lr): ONNX max |diff| {report.max_abs_diff:.2e}, max |output| {report.output_scale:.3g}")
    assert math.isfinite(rel) and rel < 1e-4
