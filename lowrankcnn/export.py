"""Exporting a deployed model to ONNX or TorchScript, and checking the ONNX file with onnxruntime.

Files are written to a temporary name in the target directory and renamed into
place, so an interrupted export never leaves a half-written file. The batch
axis is dynamic in both formats; the image size is the one exported with.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .utils import atomic_path

FORMATS = ("onnx", "torchscript")


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ValueError(f"{module} is not installed; pip install 'lowrankcnn[export]'") from None


@torch.no_grad()
def export_model(model: nn.Module, example: torch.Tensor, path: str | Path, fmt: str) -> Path:
    """Write the eval-mode ``model`` traced on ``example`` ``(N, C, H, W)`` to ``path`` as ``fmt``.

    ONNX uses the torch.export-based exporter (opset 18, weights inside the file); TorchScript
    is a ``torch.jit.trace``. Both keep the batch axis dynamic.
    """
    if fmt not in FORMATS:
        raise ValueError(f"export: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if model.training:
        raise ValueError("export: the model is in training mode; export a deployed (eval-mode) model")
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer chatter
        if fmt == "onnx":
            _require("onnxscript")
            log = logging.getLogger("torch.onnx")
            level = log.level
            log.setLevel(logging.ERROR)  # e.g. "torchvision is not installed. Skipping torchvision::nms"
            try:
                program = torch.onnx.export(
                    model,
                    (example,),
                    dynamo=True,
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                    external_data=False,
                    verbose=False,
                )
            finally:
                log.setLevel(level)
            program.save(str(tmp))
        else:
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(tmp))
    return path


def onnx_max_abs_diff(path: str | Path, inputs: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's outputs for ``path`` on ``inputs`` and ``expected``."""
    _require("onnxruntime")
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (expected_input,) = session.get_inputs()
    (output,) = session.run(None, {expected_input.name: inputs.numpy()})
    return float(np.abs(output - expected.numpy()).max())


def torchscript_max_abs_diff(path: str | Path, inputs: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference between the saved TorchScript module's outputs on ``inputs`` and ``expected``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript; it still works
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return float((loaded(inputs) - expected).abs().max())
