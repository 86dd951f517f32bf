"""Exporting a deployed model to ONNX or TorchScript, checked against PyTorch before it is written.

:func:`export_checked` is the whole pipeline (what ``lowrankcnn export`` runs):

1. optionally prepend the input normalization (``include_preprocessing``): the file then takes raw
   pixel values 0..255 (float32, NCHW) instead of normalized ones;
2. serialize in memory: ONNX (torch.export-based exporter, opset 18, weights inside the file) or
   TorchScript (``torch.jit.trace``), both with a dynamic batch axis, with the preprocessing recorded
   as metadata (below);
3. run the serialized model (onnxruntime / ``torch.jit.load``) on random inputs of another batch size
   and compare with PyTorch: a difference above ``rtol * max(1, max |output|)``, or any non-finite
   output or difference, is an :class:`~lowrankcnn.errors.ExportError` and **nothing is written**;
4. write the bytes atomically: a full disk, a read-only folder or a directory in the way is an
   :class:`~lowrankcnn.errors.OutputError`, and neither a partial nor a temporary file is left.

Metadata (:meth:`Preprocessing.metadata`, read back by :func:`read_export_metadata`) is string keys and
values, in ONNX ``metadata_props`` or the TorchScript ``_extra_files`` entry ``lowrankcnn.json``.

:func:`deploy_for_export` picks the deployed form first, measured in the runtime the file will run in: for ONNX,
``target="auto"`` times the whole model factorized and dense in onnxruntime (:func:`lowrankcnn.measure.measure`,
batch 1 at the export's input size) and keeps the faster; for TorchScript it is :func:`lowrankcnn.deploy`'s own
``auto`` (per layer, and the memory format unless one is given), timed in PyTorch. Its
:meth:`ExportForm.metadata` (``deploy_form``, ``deploy_choice``; TorchScript also ``memory_format``) goes into
the file's metadata.
"""

from __future__ import annotations

import io
import json
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from .deployment import TARGETS, Target, deploy, deploy_decision, deploy_report
from .errors import ConfigError, ExportError, MissingDependencyError
from .measure import Progress, has_low_rank, measure
from .preprocessing import Normalize, Preprocessing
from .profiling import check_fits_memory
from .timing import separated
from .utils import atomic_write_bytes, model_device
from .utils.io import check_output_file, same_file

ExportFormat = Literal["onnx", "torchscript"]
FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
EXTRA_FILE = "lowrankcnn.json"
"""Name of the TorchScript ``_extra_files`` entry holding the metadata."""
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "config.json")
"""The files of a training run directory (``lowrankcnn.training.run_directory``), never export targets."""
CHECK_BATCH = 3
"""Batch size of the check (the export traces batch 2, so the dynamic batch axis is checked too)."""


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise MissingDependencyError(f"{module} is not installed; pip install 'lowrankcnn[export]'") from None


@dataclass(frozen=True)
class ExportReport:
    """A checked export: the file, the input it takes, and how closely it reproduces PyTorch."""

    path: Path
    format: ExportFormat
    input_shape: tuple[int, int, int]
    max_abs_diff: float
    output_scale: float
    tolerance: float
    metadata: dict[str, str]


@torch.no_grad()
def serialize(
    model: nn.Module, example: torch.Tensor, fmt: ExportFormat, metadata: Mapping[str, str] | None = None
) -> bytes:
    """The eval-mode ``model`` traced on ``example`` ``(N, C, H, W)`` as the bytes of an ``fmt`` file."""
    check_export_options(fmt)
    if model.training:
        raise ConfigError("export: the model is in training mode; export a deployed (eval-mode) model")
    metadata = dict(metadata or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer chatter
        if fmt == "torchscript":
            buffer = io.BytesIO()  # in memory: a full disk is then an OSError of ours, not a C++ abort
            torch.jit.save(
                torch.jit.trace(model, example, check_trace=False), buffer, {EXTRA_FILE: json.dumps(metadata)}
            )
            return buffer.getvalue()
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
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    if proto.ByteSize() >= 2**31:
        raise ExportError(
            f"export: the model is {proto.ByteSize() / 2**30:.1f} GiB, over ONNX's 2 GiB single-file limit"
        )
    return proto.SerializeToString()


def export_model(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    fmt: ExportFormat,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the eval-mode ``model`` traced on ``example`` ``(N, C, H, W)`` to ``path`` as ``fmt``, unchecked
    (:func:`export_checked` checks the file first). Raises ``OutputError`` if ``path`` cannot be written."""
    data = serialize(model, example, fmt, metadata)
    atomic_write_bytes(path, lambda f: f.write(data))
    return Path(path)


def onnx_max_abs_diff(exported: str | Path | bytes, inputs: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's outputs for an ONNX file (path or bytes) on
    ``inputs`` and ``expected``; ``nan`` if any output is not finite."""
    _require("onnxruntime")
    import onnxruntime as ort

    session = ort.InferenceSession(
        exported if isinstance(exported, bytes) else str(exported), providers=["CPUExecutionProvider"]
    )
    (expected_input,) = session.get_inputs()
    (output,) = session.run(None, {expected_input.name: inputs.numpy()})
    diff = np.abs(output - expected.numpy())
    return float(diff.max()) if np.isfinite(diff).all() else math.nan


def _load_torchscript(
    exported: str | Path | bytes, extra_files: dict[str, Any] | None = None
) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript; it still works
        source = io.BytesIO(exported) if isinstance(exported, bytes) else str(exported)
        return torch.jit.load(source, _extra_files=extra_files)


def torchscript_max_abs_diff(exported: str | Path | bytes, inputs: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference between a saved TorchScript module's (path or bytes) outputs on ``inputs``
    and ``expected``; ``nan`` if any output is not finite."""
    with torch.no_grad():
        diff = (_load_torchscript(exported)(inputs) - expected).abs()
    return float(diff.max()) if bool(diff.isfinite().all()) else math.nan


def read_export_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a file written by :func:`export_checked` (format told by the file's content)."""
    path = Path(path)
    with open(path, "rb") as f:
        is_zip = f.read(2) == b"PK"  # TorchScript files are zip archives
    if is_zip:
        extra: dict[str, Any] = {EXTRA_FILE: ""}
        _load_torchscript(path, extra)
        return json.loads(extra[EXTRA_FILE] or "{}")
    _require("onnx")
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def check_export_target(out: str | Path, source: str | Path | None = None) -> Path:
    """Refuse, before any work, an ``out`` that is a directory, the file being exported (``source``), or any
    file of a run directory (its checkpoints, metrics or ``config.json``).

    Raises:
        OutputError: ``out`` is a directory or not a regular file. ConfigError: ``out`` is ``source`` (it would
            be overwritten).
    """
    out = check_output_file(out)
    if source is not None and same_file(out, Path(source)):
        raise ConfigError(
            f"$out {out} is the checkpoint being exported ({source}); writing it would destroy the checkpoint; "
            "give another file name",
            param="out",
        )
    if out.name in RUN_FILES and any((out.parent / name).is_file() for name in RUN_FILES[:3]):
        raise ConfigError(
            f"$out {out} is a file of the run directory {out.parent}; writing it would destroy it; "
            "give another file name",
            param="out",
        )
    return out


def check_export_options(fmt: str, channels_last: bool = False, rtol: float = 1e-3) -> None:
    """Raise a ``ConfigError`` for an unknown format, channels-last ONNX, or a tolerance that is not positive."""
    if fmt not in FORMATS:
        raise ConfigError(f"export: $fmt must be one of {', '.join(FORMATS)}, got {fmt!r}", param="fmt")
    if fmt == "onnx" and channels_last:
        raise ConfigError(
            "ONNX has no memory format; $channels_last applies to TorchScript only", param="channels_last"
        )
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not math.isfinite(rtol) or rtol <= 0:
        raise ConfigError(f"export: $rtol must be a positive number, got {rtol!r}", param="rtol")


@torch.no_grad()
def finite_outputs(model: nn.Module, inputs: torch.Tensor, out: str | Path | None = None) -> torch.Tensor:
    """``model(inputs)``; an :class:`~lowrankcnn.errors.ExportError` if any output is NaN or inf (nothing of
    ``out`` was written)."""
    outputs = model(inputs)
    if not bool(outputs.isfinite().all()):
        raise ExportError(
            "export: the model's own outputs are not finite (NaN or inf) on random inputs; its weights are "
            f"probably corrupt (a diverged run?); nothing was written{f' to {out}' if out is not None else ''}"
        )
    return outputs


@dataclass(frozen=True)
class ExportForm:
    """The deployed model an export writes, and how its form was chosen (:func:`deploy_for_export`)."""

    model: nn.Module
    """Eval-mode, deployed, on the CPU."""
    fmt: ExportFormat
    form: str
    """``"factorized"``, ``"dense"`` (also: a model without low-rank layers) or ``"mixed"`` (per layer)."""
    channels_last: bool
    choice: str
    """How the form was chosen, one line, with the measured medians when it was timed."""

    def metadata(self) -> dict[str, str]:
        """``deploy_form``, ``deploy_choice`` and (TorchScript) ``memory_format``, for the file's metadata."""
        meta = {"deploy_form": self.form, "deploy_choice": self.choice}
        if self.fmt == "torchscript":
            meta["memory_format"] = "channels_last" if self.channels_last else "contiguous"
        return meta


def _fastest_in_onnxruntime(model: nn.Module, shape: tuple[int, ...], progress: Progress | None) -> tuple[str, str]:
    """``(form, choice)``: the whole ``model`` deployed factorized and dense, timed in onnxruntime sessions on a
    batch of ``shape``; the faster kept (factorized alone when the model has no exact dense form)."""
    result = measure({"model": model}, shape, deploy="auto", engine="onnxruntime", device="cpu", progress=progress)
    timings = {label.removeprefix("onnxruntime "): t for label, t in result["model"].timings.items()}
    form = result["model"].variant.removeprefix("onnxruntime ")
    timed = " vs ".join(f"{k} {t.median * 1e3:.2f} ms" for k, t in timings.items())
    notes = "" if "dense" in timings else " (no exact dense form)"
    if not all(separated(timings[form], t) for k, t in timings.items() if k != form):
        notes += " (within timing noise)"
    return form, f"onnxruntime {timed} per batch of {shape[0]}{notes} -> {form}"


def _torch_choice(deployed: nn.Module) -> tuple[str, str, bool]:
    """``(form, choice, channels_last)`` of what :func:`lowrankcnn.deploy`'s ``auto`` decided for ``deployed``."""
    forms = [c.form for c in deploy_report(deployed) if c.form != "unfolded"]
    kinds = sorted(set(forms))
    form = "mixed" if len(kinds) > 1 else kinds[0] if kinds else "dense"
    counts = ", ".join(f"{forms.count(k)} {k}" for k in kinds) or "no low-rank layers"
    decision = deploy_decision(deployed)
    assert decision is not None  # deploy records one on every model it returns
    timed = " vs ".join(f"{k} {ms:.2f} ms" for k, ms in decision.format_ms.items())
    batch = f" per batch of {decision.input_shape[0]}" if decision.input_shape else ""
    memory = f"{decision.memory_format} ({timed}{batch})" if timed else f"{decision.memory_format} (given)"
    notes = "".join(f"; {n}" for n in decision.notes)
    choice = f"PyTorch per layer at {decision.input_shape}: {counts}; memory format {memory}{notes}"
    return form, choice, decision.memory_format == "channels_last"


def deploy_for_export(
    model: nn.Module,
    fmt: ExportFormat,
    input_shape: tuple[int, int, int, int],
    target: Target = "auto",
    *,
    channels_last: bool | None = None,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> ExportForm:
    """``model`` deployed (:func:`lowrankcnn.deploy`) in the form to export as ``fmt``: with ``target="auto"`` the
    fastest form measured in the runtime the file will run in.

    ONNX, ``auto``: the whole model deployed ``factorized`` and ``dense``, timed in onnxruntime sessions on a batch
    of ``input_shape`` (:func:`lowrankcnn.measure.measure` with ``engine="onnxruntime"``, CPU, torch's thread
    count), the faster kept; a model with no exact dense form keeps factorized, one without low-rank layers is not
    timed. TorchScript, ``auto``: :func:`lowrankcnn.deploy`'s own ``auto`` (each low-rank layer's faster form and,
    with ``channels_last=None``, the faster memory format, timed in PyTorch on ``device``). ``factorized`` and
    ``dense`` force the form, untimed. The deployed model is returned on the CPU, where the export checks it.

    Args:
        input_shape: ``(N, C, H, W)`` traced and timed with; ``lowrankcnn export`` passes batch 1 at the export's
            input size (single-image latency).
        channels_last: TorchScript only (``True`` is refused for ONNX); ``None``: measured under ``auto``, else NCHW.
        progress: receives a line per phase of the onnxruntime timing.

    Raises:
        ConfigError: a bad option, or ``dense`` for a model with no exact dense form. ShapeError: the model refuses
            ``input_shape``. ExportError: (ONNX ``auto``, before timing) its outputs are not finite.
            MissingDependencyError: ONNX ``auto`` without onnxruntime or onnxscript.
    """
    check_export_options(fmt, bool(channels_last))
    if target not in TARGETS:
        raise ConfigError(f"export: $target must be one of {', '.join(TARGETS)}, got {target!r}", param="target")
    shape = tuple(input_shape)
    form, choice = target, "given, not timed"
    if fmt == "torchscript":
        deployed = deploy(model, target, channels_last=channels_last, input_shape=shape, device=device)
        last = bool(channels_last)
        if target == "auto":
            form, choice, last = _torch_choice(deployed)
        return ExportForm(deployed.cpu(), fmt, form, last, choice)
    deployed = None
    if target == "auto" and has_low_rank(model):
        deployed = deploy(model, "factorized", channels_last=False, input_shape=shape, device=device)
        finite_outputs(deployed, torch.randn(shape, device=model_device(deployed)))  # corrupt weights: not timed
        form, choice = _fastest_in_onnxruntime(model, shape, progress)
    elif target == "auto":  # dense and factorized are the same model here
        form, choice = "dense", "no low-rank layers: nothing to choose, not timed"
    if deployed is None or form != "factorized":
        deployed = deploy(model, form, channels_last=False, input_shape=shape, device=device)
    return ExportForm(deployed.cpu(), fmt, form, False, choice)


@torch.no_grad()
def export_checked(
    model: nn.Module,
    out: str | Path,
    fmt: ExportFormat,
    preprocessing: Preprocessing,
    *,
    include_preprocessing: bool = False,
    channels_last: bool = False,
    rtol: float = 1e-3,
    model_name: str = "",
    extra_metadata: Mapping[str, str] | None = None,
) -> ExportReport:
    """Export the eval-mode (deployed) ``model``, check the file against PyTorch, then write it to ``out``.

    Args:
        model: takes normalized batches ``(N, C, S, S)`` with ``C = preprocessing.in_chans`` and
            ``S = preprocessing.input_size``.
        out: the file to write (only after the check passed).
        fmt: ``"onnx"`` or ``"torchscript"``.
        preprocessing: the input normalization, recorded in the file's metadata.
        include_preprocessing: bake the normalization into the graph; the file then takes raw pixel
            values 0..255 (float32, NCHW).
        channels_last: TorchScript only; ``model`` must already be channels-last (``deploy(..., channels_last=True)``).
        rtol: allowed max |difference| relative to ``max(1, max |output|)``.
        model_name: recorded in the metadata.
        extra_metadata: more string entries for the metadata, e.g. :meth:`ExportForm.metadata`.

    Raises:
        ConfigError: a bad argument. ExportError: the file does not reproduce PyTorch (or the model's own
            outputs are not finite); nothing was written. OutputError: ``out`` cannot be written.
    """
    check_export_options(fmt, channels_last, rtol)
    out = check_export_target(out)
    shape = (preprocessing.in_chans, preprocessing.input_size, preprocessing.input_size)
    if include_preprocessing:
        model = nn.Sequential(Normalize(preprocessing.mean, preprocessing.std), model).eval()
        example, check = (torch.randint(0, 256, (n, *shape)).float() for n in (2, CHECK_BATCH))
    else:
        example, check = torch.randn(2, *shape), torch.randn(CHECK_BATCH, *shape)
    if channels_last:
        example, check = (t.contiguous(memory_format=torch.channels_last) for t in (example, check))
    check_fits_memory(model, shape[-1], CHECK_BATCH, f"export at {shape[-1]}x{shape[-1]}", ("input_size",))
    metadata = {**preprocessing.metadata(include_preprocessing, model_name), **(extra_metadata or {})}
    expected = finite_outputs(model, check, out)
    data = serialize(model, example, fmt, metadata)
    diff = (onnx_max_abs_diff if fmt == "onnx" else torchscript_max_abs_diff)(data, check, expected)
    scale = float(expected.abs().max())
    tolerance = rtol * max(1.0, scale)
    if not math.isfinite(diff) or diff > tolerance:
        raise ExportError(
            f"export: the exported {fmt} model disagrees with PyTorch on random inputs (max |difference| {diff:.2e}, "
            f"allowed {tolerance:.2e}); nothing was written to {out}; do not use this export"
        )
    atomic_write_bytes(out, lambda f: f.write(data))
    return ExportReport(out, fmt, shape, diff, scale, tolerance, metadata)
