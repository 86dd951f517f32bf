"""Interop tier (`make test-interop`): real torchvision and timm models through profile, deploy and ONNX.

Runs only in ``.venv-interop`` (torch 2.14.1, torchvision 0.29.1, timm; see the Makefile), where torchvision
imports; elsewhere the whole module is skipped. No weights are downloaded (``weights=None`` /
``pretrained=False``): every model gets calibrated batch-norm statistics (one training-mode pass on random
images, then random affine parameters), so deploy and export are compared on non-trivial batch norms.

``MODELS`` (name, factory) is the list the ``lowrankcnn.convert`` tests reuse; ``real_model(name)`` builds
one calibrated, eval-mode instance per name and session.

Batch norms that ``deploy`` leaves unfolded today (those a residual block holds as attributes, not
``nn.Sequential`` neighbours, and timm's ``BatchNormAct2d``) are listed in the summary this module prints
at the end; the deployed model is exact either way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from functools import partial

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

torchvision = pytest.importorskip("torchvision", reason="the interop tier runs in .venv-interop: make test-interop")
timm = pytest.importorskip("timm", reason="the interop tier runs in .venv-interop: make test-interop")

from lowrankcnn import create_model, deploy, profile  # noqa: E402
from lowrankcnn.deployment import deploy_report  # noqa: E402
from lowrankcnn.models.cfg import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from lowrankcnn.preprocessing import Preprocessing  # noqa: E402

INPUT_SIZE = 224
INPUT_SHAPE = (1, 3, INPUT_SIZE, INPUT_SIZE)
"""What ``deploy`` traces these models with (they are not registered, so it needs the shape)."""

MODELS: list[tuple[str, Callable[[], nn.Module]]] = [
    ("torchvision.resnet18", partial(torchvision.models.resnet18, weights=None)),
    ("torchvision.resnet50", partial(torchvision.models.resnet50, weights=None)),
    ("torchvision.vgg11_bn", partial(torchvision.models.vgg11_bn, weights=None)),
    ("torchvision.mobilenet_v2", partial(torchvision.models.mobilenet_v2, weights=None)),
    ("timm.resnet18", partial(timm.create_model, "resnet18", pretrained=False)),
    ("timm.efficientnet_b0", partial(timm.create_model, "efficientnet_b0", pretrained=False)),
]
"""Real models users already have: (name, factory of a freshly initialized model, 1000 classes, 224x224)."""
MODEL_NAMES = [name for name, _ in MODELS]

KNOWN_COUNTS = {
    "torchvision.resnet18": (11_689_512, 1_814_073_344),
    "torchvision.resnet50": (25_557_032, 4_089_184_256),
    "timm.resnet18": (11_689_512, 1_814_073_344),
}
"""(params, MACs) at 224x224 that torchvision publishes; the other models are checked against FlopCounterMode."""

SAME_LAYOUT = [  # (source model, our registered twin): torchvision's and timm's ResNet state_dict keys are ours
    ("torchvision.resnet18", "resnet18"),
    ("torchvision.resnet50", "resnet50"),
    ("timm.resnet18", "resnet18"),
]

SUMMARY: dict[str, dict[str, object]] = {name: {} for name in MODEL_NAMES}
"""What each test measured, printed as one table at the end of the module."""


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return ((a - b).norm() / b.norm()).item()


def batch_norms(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def calibrate_batchnorms_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm the statistics of one random batch and random affine parameters (as after
    training, so folding them is a real test); returns ``model`` in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 1.0  # the running statistics become this batch's
    model.train()(torch.randn(4, 3, INPUT_SIZE, INPUT_SIZE, generator=gen))
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
        # scales below 1: with scales up to 1.5, efficientnet_b0's logits reach ~1e3 and float32 itself drifts
        # by ~1e-4 of that (float64 reference), which says nothing about deploy or export
        bn.weight.copy_(torch.empty_like(bn.weight).uniform_(0.5, 1.0, generator=gen))
        bn.bias.copy_(torch.empty_like(bn.bias).uniform_(-0.2, 0.2, generator=gen))
    return model.eval()


@functools.cache
def real_model(name: str) -> nn.Module:
    """The calibrated eval-mode model ``name`` of ``MODELS``, built once per session (do not modify it)."""
    torch.manual_seed(0)
    return calibrate_batchnorms_(dict(MODELS)[name]())


@functools.cache
def sample_batch(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", autouse=True)
def _print_summary():
    yield
    print("\n\ninterop summary (224x224, 1000 classes, batch-norm statistics calibrated on random images)")
    head = (
        "model",
        "params",
        "MACs (profile)",
        "FlopCounter/2",
        "deploy rel err",
        "BNs folded",
        "ONNX max|diff|/max|y|",
    )
    rows = [head]
    for name in MODEL_NAMES:
        s = SUMMARY[name]
        rows.append(
            (
                name,
                f"{s['params']:,}" if "params" in s else "-",
                f"{s['macs']:,}" if "macs" in s else "-",
                f"{s['flop_counter_macs']:,}" if "flop_counter_macs" in s else "-",
                f"{s['deploy_rel_err']:.1e}" if "deploy_rel_err" in s else "-",
                str(s.get("folded", "-")),
                f"{s['onnx_rel_diff']:.1e}" if "onnx_rel_diff" in s else str(s.get("onnx", "-")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    print("\nbatch norms deploy leaves unfolded, and what deploy_report says about them:")
    for name in MODEL_NAMES:
        s = SUMMARY[name]
        if "unfolded" in s:
            print(
                f"- {name}: {len(s['unfolded'])} unfolded {s['unfolded_kinds']}: {', '.join(s['unfolded']) or 'none'}"
            )
            print(f"  deploy_report: {s['report'] or '[]'}")


@pytest.mark.parametrize("source, ours", SAME_LAYOUT)
def test_state_dict_loads_strictly_into_our_resnet(source, ours):
    theirs = real_model(source)
    model = create_model(ours)
    model.load_state_dict(theirs.state_dict(), strict=True)
    model.eval()
    x = sample_batch()
    with torch.no_grad():
        expected = theirs(x)
        assert rel_err(model(x), expected) < 1e-5
    assert expected.abs().max() > 1e-2  # the comparison is not between two near-zero outputs


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_profile_counts_conv_and_linear_macs_exactly(name):
    model = real_model(name)
    result = profile(model, INPUT_SIZE)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.zeros(INPUT_SHAPE))
    assert out.shape == (1, 1000)
    flop_counter_macs = counter.get_total_flops() // 2
    SUMMARY[name].update(params=result.params, macs=result.macs, flop_counter_macs=flop_counter_macs)
    assert result.params == sum(p.numel() for p in model.parameters())
    assert result.macs == flop_counter_macs  # these models compute only conv and linear MACs
    if name in KNOWN_COUNTS:
        assert (result.params, result.macs) == KNOWN_COUNTS[name]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_deploy_is_exact_and_reports_what_it_left_unfolded(name):
    model = real_model(name)
    deployed = deploy(model, input_shape=INPUT_SHAPE)
    x = sample_batch()
    with torch.no_grad():
        err = rel_err(deployed(x), model(x))
    before, left = batch_norms(model), batch_norms(deployed)
    kinds = sorted({type(deployed.get_submodule(n)).__name__ for n in left})
    report = [f"{c.name}: {c.form} ({c.note})" for c in deploy_report(deployed)]
    SUMMARY[name].update(
        deploy_rel_err=err, folded=f"{len(before) - len(left)}/{len(before)}", unfolded=left, unfolded_kinds=kinds
    )
    SUMMARY[name]["report"] = report
    assert err < 1e-4
    assert not deployed.training and not any(p.requires_grad for p in deployed.parameters())
    assert set(left) <= set(before)
    # a conv -> BN pair inside an nn.Sequential is folded today (the projection shortcuts, mobilenet_v2's and
    # vgg11_bn's layers); the BNs a block holds as attributes wait for the fx/per-block folding of issue 12
    assert not any(n.endswith("downsample.1") for n in left)
    if name in ("torchvision.vgg11_bn", "torchvision.mobilenet_v2"):
        assert left == []


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_export_of_the_deployed_model_matches_onnxruntime(name, tmp_path):
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install 'lowrankcnn[export]'")
    from lowrankcnn.export import export_checked

    deployed = deploy(real_model(name), input_shape=INPUT_SHAPE)
    preprocessing = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE)
    report = export_checked(deployed, tmp_path / "model.onnx", "onnx", preprocessing, model_name=name)
    rel = report.max_abs_diff / report.output_scale
    SUMMARY[name]["onnx_rel_diff"] = rel
    print(f"\n{name}: ONNX max |diff| {report.max_abs_diff:.2e}, max |output| {report.output_scale:.3g}")
    assert report.path.is_file() and math.isfinite(rel)
    assert rel < 1e-4 and report.output_scale > 1e-2
