"""onnxruntime as a timing engine (``lowrankcnn.onnx_runtime``): a deployed model's ONNX export run by an
``InferenceSession``, checked against PyTorch, timed by ``timing.interleaved`` like ``timing.inference_fn``."""

import copy
import sys

import pytest
import torch

import lowrankcnn
from lowrankcnn.errors import ConfigError, ExportError, MissingDependencyError
from lowrankcnn.onnx_runtime import (
    ORT_RTOL,
    OrtInference,
    check_ort_output,
    ort_inference_fn,
    ort_relative_error,
    ort_session_options,
)
from lowrankcnn.timing import inference_fn, interleaved

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def deployed() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = lowrankcnn.create_model("vgg11_gmp_lr", 10, 1, 0.25)
    deployed = lowrankcnn.deploy(model.eval(), "factorized", input_shape=(1, 1, 28, 28), channels_last=False)
    return deployed, torch.randn(4, 1, 28, 28)


@pytest.fixture(scope="module")
def engine(deployed) -> OrtInference:
    model, batch = deployed
    return ort_inference_fn(model, batch, threads=2)  # the one export of this file (a few seconds)


def test_onnxruntime_output_equals_pytorch(deployed, engine):
    model, batch = deployed
    assert engine.relative_error < ORT_RTOL
    (output,) = engine()
    with torch.no_grad():
        expected = model(batch)
    assert ((torch.from_numpy(output) - expected).abs().max() / expected.abs().max()).item() < ORT_RTOL
    # the batch axis is dynamic: another batch size runs and agrees too
    assert ort_relative_error(engine.session, model, torch.randn(3, 1, 28, 28)) < ORT_RTOL


def test_interleaved_times_onnxruntime_like_pytorch(deployed, engine):
    model, batch = deployed
    timings = interleaved({"torch": inference_fn(model, batch), "onnxruntime": engine}, repeats=2, warmup=0)
    assert set(timings) == {"torch", "onnxruntime"}
    assert all(len(t.samples) == 2 and t.median > 0 for t in timings.values())


def test_session_options_are_the_documented_ones(engine):
    used = engine.session.get_session_options()
    assert (used.intra_op_num_threads, used.inter_op_num_threads) == (2, 1)
    assert used.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert used.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert engine.session.get_providers() == ["CPUExecutionProvider"]
    # threads that spin-wait made two sessions timed side by side 2.5x slower and noisy (was: onnxruntime's default)
    assert used.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert ort_session_options(1).intra_op_num_threads == 1 and ort_session_options(3).intra_op_num_threads == 3


def test_a_wrong_model_is_never_timed(deployed, engine):
    model, batch = deployed
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(p for p in other.parameters() if p.dim() == 4).mul_(1.01)  # 1% off in the first conv
    with pytest.raises(ExportError, match=r"disagrees with PyTorch \(relative error .*allowed 1e-04\)"):
        check_ort_output(engine.session, other, batch)
    assert check_ort_output(engine.session, model, batch) < ORT_RTOL


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_threads_is_a_config_error(threads):
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        ort_session_options(threads)


def test_bad_inputs_are_config_errors(deployed):
    model, batch = deployed
    with pytest.raises(ConfigError, match="training mode"):
        ort_inference_fn(copy.deepcopy(model).train(), batch, 1)
    with pytest.raises(ConfigError, match=r"batch must be an \(N, C, H, W\) tensor"):
        ort_inference_fn(model, batch[0], 1)


def test_missing_onnxruntime_is_one_line(monkeypatch, deployed):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(
        MissingDependencyError, match=r"^onnxruntime is not installed; pip install 'lowrankcnn\[export\]'$"
    ):
        ort_inference_fn(*deployed, threads=1)
