"""onnxruntime as a timing engine: a deployed model exported to ONNX in memory and run by an ``InferenceSession``.

:func:`ort_inference_fn` is the onnxruntime counterpart of :func:`lowrankcnn.timing.inference_fn`: a zero-argument
callable that :func:`lowrankcnn.timing.interleaved` times like any other, so a PyTorch model and its ONNX export
(or two exports) are timed in one interleaved loop::

    fast = lowrankcnn.deploy(model.eval(), input_shape=(1, 1, 28, 28))
    batch = torch.randn(64, 1, 28, 28)
    timings = interleaved({"torch": inference_fn(fast, batch), "onnxruntime": ort_inference_fn(fast, batch, threads=2)})

The export is :func:`lowrankcnn.export.serialize`'s, the one ``lowrankcnn export`` writes (the
``torch.export``-based exporter, its default opset 18, weights inside, a dynamic batch axis). The session
(:func:`ort_session_options`) runs on the ``CPUExecutionProvider`` with ``intra_op_num_threads=threads`` (the
threads one operator uses, as ``torch.set_num_threads``), ``inter_op_num_threads=1`` (operators run one after
another: sequential execution) and graph optimization level ``ORT_ENABLE_ALL``: constant folding and the generic
fusions, plus the layout ones, among them the NCHWc transformer, which on x86 runs convolutions, pools and
channel concats in blocks of 8 (AVX2) or 16 (AVX-512) channels and keeps a concat on that path only if every
input's channel count is a multiple of the block (``create_model(..., align=16)`` builds composite layers so).

Before a callable is returned, the session's output on the batch is compared with PyTorch's
(:func:`check_ort_output`): a relative error ``max |ort - torch| / max |torch|`` of ``1e-4`` or more, or a
non-finite output, is an :class:`~lowrankcnn.errors.ExportError`, so a benchmark never times a wrong model.
A missing ``onnxruntime`` (or ``onnxscript``, which the exporter needs) is a one-line
:class:`~lowrankcnn.errors.MissingDependencyError` naming the ``export`` extra.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, ExportError
from .export import _require, serialize

if TYPE_CHECKING:  # onnxruntime is optional (the ``export`` extra)
    import onnxruntime

ORT_RTOL = 1e-4
"""Largest relative error ``max |ort - torch| / max |torch|`` a timed session may have."""
SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}
"""The config entries of every timed session (see :func:`ort_session_options`); part of a timing cache's key."""


def ort_session_options(threads: int, optimized_model_path: str | Path | None = None) -> onnxruntime.SessionOptions:
    """Session options of a timed run: ``threads`` intra-op threads that do not spin-wait between runs, 1 inter-op
    thread (sequential execution), ``ORT_ENABLE_ALL`` graph optimizations (see the module doc). Spinning (the
    onnxruntime default) made sessions timed side by side slow each other: dense resnet20 at batch 64 on 2 cores took
    25 ms alone but 59-65 ms interleaved with a second session (IQR 30% of the median); without it, 24-25 ms (IQR
    1-14%), and no slower alone. ``optimized_model_path``: onnxruntime writes the
    optimized graph there (to see which nodes run in NCHWc blocks: domain ``com.microsoft.nchwc``; the file is
    for this machine only).

    Raises:
        ConfigError: ``threads`` is not a positive integer. MissingDependencyError: onnxruntime is not installed.
    """
    if type(threads) is not int or threads < 1:
        raise ConfigError(f"onnxruntime: $threads must be a positive integer, got {threads!r}", param="threads")
    _require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no warnings about hardware-specific graphs
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    return options


def ort_session(
    model: nn.Module, example: torch.Tensor, threads: int, optimized_model_path: str | Path | None = None
) -> onnxruntime.InferenceSession:
    """An onnxruntime session (CPU, :func:`ort_session_options`) running the eval-mode ``model`` exported to ONNX
    in memory (:func:`lowrankcnn.export.serialize`, dynamic batch axis) on inputs shaped like ``example``.

    Raises:
        ConfigError: a model in training mode, a bad ``threads``. MissingDependencyError: onnxruntime or onnxscript
            is not installed.
    """
    options = ort_session_options(threads, optimized_model_path)
    import onnxruntime as ort

    example = _nchw(example)
    # Trace a batch of 2: the exporter specializes a traced batch of 1, and the batch axis must stay dynamic.
    data = serialize(model, example[:1].expand(2, *example.shape[1:]).clone(), "onnx")
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _nchw(batch: torch.Tensor) -> torch.Tensor:
    """``batch`` as a contiguous float tensor on the CPU (ONNX has no memory format)."""
    if not isinstance(batch, torch.Tensor) or batch.dim() != 4 or batch.shape[0] < 1:
        raise ConfigError(f"onnxruntime: $batch must be an (N, C, H, W) tensor, got {batch!r:.80}", param="batch")
    return batch.detach().to("cpu", torch.float32).contiguous()


def _run(session: onnxruntime.InferenceSession, inputs: np.ndarray) -> Any:
    (name,) = (i.name for i in session.get_inputs())
    return session.run(None, {name: inputs})


@torch.no_grad()
def ort_relative_error(session: onnxruntime.InferenceSession, model: nn.Module, batch: torch.Tensor) -> float:
    """``max |ort - torch| / max |torch|`` of the session's and ``model``'s outputs on ``batch`` (``nan`` if an
    output is not finite; the absolute difference when PyTorch's outputs are all zero)."""
    batch = _nchw(batch)
    (output, *_) = _run(session, batch.numpy())
    expected = model(batch).float().numpy()
    if output.shape != expected.shape:
        raise ExportError(f"onnxruntime: output shape {output.shape} differs from PyTorch's {expected.shape}")
    diff = np.abs(output - expected)
    if not (np.isfinite(diff).all() and np.isfinite(expected).all()):
        return math.nan
    scale = float(np.abs(expected).max())
    return float(diff.max()) / scale if scale > 0 else float(diff.max())


def check_ort_output(
    session: onnxruntime.InferenceSession, model: nn.Module, batch: torch.Tensor, rtol: float = ORT_RTOL
) -> float:
    """The relative error of the session against ``model`` on ``batch`` (:func:`ort_relative_error`).

    Raises:
        ExportError: an error of ``rtol`` or more, or a non-finite output: do not time (or use) this session.
    """
    error = ort_relative_error(session, model, batch)
    if not error < rtol:
        raise ExportError(
            f"onnxruntime: the exported model disagrees with PyTorch (relative error {error:.2e}, allowed "
            f"{rtol:.0e}); not timing a wrong model"
        )
    return error


class OrtInference:
    """A zero-argument callable running ``session`` on a fixed batch (converted to numpy once, at construction):
    what :func:`lowrankcnn.timing.interleaved` times. ``relative_error`` is the checked error against PyTorch."""

    def __init__(self, session: onnxruntime.InferenceSession, batch: torch.Tensor, relative_error: float) -> None:
        self.session = session
        self.relative_error = relative_error
        self._inputs = {session.get_inputs()[0].name: _nchw(batch).numpy()}

    def __call__(self) -> object:
        return self.session.run(None, self._inputs)


def ort_inference_fn(
    model: nn.Module,
    batch: torch.Tensor,
    threads: int,
    *,
    rtol: float = ORT_RTOL,
    optimized_model_path: str | Path | None = None,
) -> OrtInference:
    """A zero-argument callable running the eval-mode (deployed) ``model``'s ONNX export on ``batch`` in
    onnxruntime with ``threads`` intra-op threads (:func:`ort_session`), checked against PyTorch first.

    Use it as :func:`lowrankcnn.timing.inference_fn`: ``interleaved({"ort": ort_inference_fn(m, x, 2), ...})``.
    The check (one PyTorch and one onnxruntime run of ``batch``) also warms the session up.
    ``optimized_model_path``: see :func:`ort_session_options`.

    Raises:
        ConfigError: a model in training mode, a bad ``batch`` or ``threads``. ExportError: the session's output
            differs from PyTorch's by a relative error of ``rtol`` or more (:func:`check_ort_output`).
            MissingDependencyError: onnxruntime or onnxscript is not installed.
    """
    session = ort_session(model, batch, threads, optimized_model_path)
    return OrtInference(session, batch, check_ort_output(session, model, batch, rtol))
