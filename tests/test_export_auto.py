"""``lowrankcnn export`` without ``--deploy`` writes the fastest form measured where the file runs: ONNX times the
whole model factorized and dense in onnxruntime (batch 1), TorchScript takes ``deploy``'s own auto in PyTorch.
The choice is printed and recorded in the file's metadata; an explicit form, or a model without low-rank layers,
is not timed."""

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from model_helpers import no_dense_form_model
from torch import nn

import lowrankcnn.export as export
from lowrankcnn import create_model, timing
from lowrankcnn.cli import main
from lowrankcnn.deployment import deploy, deploy_decision, deploy_report
from lowrankcnn.export import deploy_for_export, read_export_metadata
from lowrankcnn.layers import LowRankConv2d
from lowrankcnn.timing import Timing
from lowrankcnn.training import load_trained_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SHAPE = (1, 1, 32, 32)
"""The tiny run's export shape: batch 1 at its training size."""


@pytest.fixture(scope="module")
def run(kim_run_copy):
    """The one-epoch kim_rank1_cifar10 run (width 0.25, batch norm; every layer has an exact dense form)."""
    model, _, _ = load_trained_model(kim_run_copy)
    return kim_run_copy, model


def convs(module: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in module.modules())


def onnx_convs(path) -> int:
    return sum(node.op_type == "Conv" for node in onnx.load(str(path)).graph.node)


def no_timing(*args, **kwargs):
    raise AssertionError("timed, but nothing was to be chosen")


def test_default_onnx_export_times_both_forms_and_writes_the_faster(run, tmp_path, capsys):
    run_dir, model = run
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    found = re.fullmatch(
        r"deploy auto: onnxruntime factorized ([\d.]+) ms vs dense ([\d.]+) ms per batch of 1"
        r"( \(within timing noise\))? -> (factorized|dense)",
        printed[0],
    )
    assert found, printed[0]
    medians, form = {"factorized": float(found[1]), "dense": float(found[2])}, found[4]
    assert medians[form] == min(medians.values())
    assert f"(epoch 1, deploy {form})" in printed[1]
    meta = read_export_metadata(out)
    assert meta["deploy_form"] == form and meta["deploy_choice"] == printed[0].removeprefix("deploy auto: ")
    assert "memory_format" not in meta  # ONNX has none
    # the file holds the chosen form (the two differ in conv count) and computes what PyTorch does
    factorized, dense = (deploy(model, f, channels_last=False, input_shape=SHAPE) for f in ("factorized", "dense"))
    assert convs(factorized) != convs(dense)
    assert onnx_convs(out) == convs(factorized if form == "factorized" else dense)
    x = torch.randn(4, *SHAPE[1:])
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.abs(logits - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())


def test_the_faster_form_in_onnxruntime_is_the_one_deployed(run, monkeypatch):
    _, model = run
    calls = []

    def dense_faster(models, shape, **kwargs):
        calls.append((tuple(shape), kwargs))
        timings = {"onnxruntime factorized": Timing([2e-3] * 5), "onnxruntime dense": Timing([1e-3] * 5)}
        return {"model": SimpleNamespace(timings=timings, variant="onnxruntime dense")}

    monkeypatch.setattr(export, "measure", dense_faster)
    chosen = deploy_for_export(model, "onnx", SHAPE)
    ((shape, kwargs),) = calls
    assert shape == SHAPE and kwargs["engine"] == "onnxruntime" and kwargs["deploy"] == "auto"
    assert chosen.form == "dense" and convs(chosen.model) == convs(deploy(model, "dense", input_shape=SHAPE))
    assert chosen.choice == "onnxruntime factorized 2.00 ms vs dense 1.00 ms per batch of 1 -> dense"
    assert chosen.metadata() == {"deploy_form": "dense", "deploy_choice": chosen.choice}


def test_a_model_without_a_dense_form_keeps_factorized():
    model = no_dense_form_model()
    chosen = deploy_for_export(model, "onnx", (1, 1, 28, 28))
    assert chosen.form == "factorized" and convs(chosen.model) == convs(deploy(model, "factorized"))
    assert re.fullmatch(
        r"onnxruntime factorized [\d.]+ ms per batch of 1 \(no exact dense form\) -> factorized", chosen.choice
    )


def test_an_explicit_form_is_not_timed(run, tmp_path, capsys, monkeypatch):
    run_dir, model = run
    monkeypatch.setattr(export, "measure", no_timing)
    out = tmp_path / "f.onnx"
    args = ["export", "--checkpoint", str(run_dir), "--format", "onnx", "--out", str(out), "--deploy", "factorized"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "deploy auto" not in printed and "deploy factorized)" in printed
    meta = read_export_metadata(out)
    assert meta["deploy_form"] == "factorized" and meta["deploy_choice"] == "given, not timed"
    assert onnx_convs(out) == convs(deploy(model, "factorized", input_shape=SHAPE))
    chosen = deploy_for_export(model, "torchscript", SHAPE, "dense")
    assert chosen.form == "dense" and not chosen.channels_last and deploy_decision(chosen.model).format_ms == {}
    assert all(c.ms == {} for c in deploy_report(chosen.model))  # no layer timed either


def test_a_model_without_low_rank_layers_is_not_timed(monkeypatch):
    monkeypatch.setattr(export, "measure", no_timing)
    model = create_model("vgg11_gmp", num_classes=10, in_chans=1, width_mult=0.125).eval()
    chosen = deploy_for_export(model, "onnx", (1, 1, 28, 28))
    assert chosen.form == "dense" and chosen.choice == "no low-rank layers: nothing to choose, not timed"
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(chosen.model(x), model(x), atol=1e-5)


def test_default_torchscript_export_is_deploys_own_auto(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(timing, "AUTO_ROUNDS", 1)  # one round of timing per choice: what is chosen is not tested
    run_dir, model = run
    low_rank_layers = sum(isinstance(m, LowRankConv2d) for m in model.modules())
    for flags, memory in (([], None), (["--channels-last"], "channels_last")):
        out = tmp_path / f"m{len(flags)}.ts"
        assert main(["export", "--checkpoint", str(run_dir), "--format", "torchscript", "--out", str(out), *flags]) == 0
        printed = capsys.readouterr().out.splitlines()
        assert printed[0].startswith("deploy auto: PyTorch per layer at (1, 1, 32, 32): "), printed[0]
        meta = read_export_metadata(out)
        assert meta["deploy_choice"] == printed[0].removeprefix("deploy auto: ")
        assert meta["deploy_form"] in ("factorized", "dense", "mixed")
        assert f"deploy {meta['deploy_form']}" in printed[1]
        counts = re.search(r": ((\d+ (dense|factorized)(, )?)+);", printed[0])[1]
        assert sum(int(n) for n in re.findall(r"\d+", counts)) == low_rank_layers
        if memory is None:  # measured: both formats timed, the chosen one recorded
            assert re.search(r"memory format (\w+) \(contiguous [\d.]+ ms vs channels_last [\d.]+ ms", printed[0])
            memory = re.search(r"memory format (\w+)", printed[0])[1]
        else:
            assert f"memory format {memory} (given)" in printed[0]
        assert meta["memory_format"] == memory
        assert ("channels-last)" in printed[1]) == (memory == "channels_last")
