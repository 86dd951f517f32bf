"""``lowrankcnn export``: a checkpoint deployed, written as ONNX or TorchScript with its preprocessing, checked."""

from __future__ import annotations

import argparse

from ..deployment import TARGETS
from ..export import (
    CHECK_BATCH,
    FORMATS,
    Preprocessing,
    check_export_options,
    check_export_target,
    deploy_for_export,
    export_checked,
)
from ..profiling import check_fits_memory
from ..training import load_trained_model
from ..training.checkpoint import checkpoint_path
from ..utils import resolve_device
from .common import (
    add_command,
    device_parent,
    positive_int,
    progress_printer,
    set_threads,
    threads_parent,
    trust_parent,
)


def cmd_export(args: argparse.Namespace) -> None:
    out = check_export_target(args.out, checkpoint_path(args.checkpoint))  # before any work
    check_export_options(args.format, bool(args.channels_last))
    device = resolve_device(args.device)
    set_threads(args.threads)
    model, config, state = load_trained_model(args.checkpoint, trust_factory=args.trust_factory)
    prep = Preprocessing.from_data_info(state["data_info"], args.input_size)
    size = prep.input_size
    check_fits_memory(model, size, CHECK_BATCH, f"export at {size}x{size}", ("input_size",), in_chans=prep.in_chans)
    shape = (1, prep.in_chans, prep.input_size, prep.input_size)
    chosen = deploy_for_export(  # deployed (and timed) on --device, returned on the CPU where it is checked
        model,
        args.format,
        shape,
        args.deploy,
        channels_last=args.channels_last,
        device=device,
        progress=progress_printer(None),
    )
    if args.deploy == "auto":
        print(f"deploy auto: {chosen.choice}")
    report = export_checked(
        chosen.model,
        out,
        args.format,
        prep,
        include_preprocessing=args.include_preprocessing,
        channels_last=chosen.channels_last,
        model_name=config.model,
        extra_metadata=chosen.metadata(),
    )
    c, s, _ = report.input_shape
    layout = ", channels-last" if chosen.channels_last else ""
    print(
        f"{config.model_label} (epoch {state['epoch']}, deploy {chosen.form}{layout}) exported to {report.path} as "
        f"{args.format}: "
        f"input (N, {c}, {s}, {s}) float32; max |difference| vs PyTorch on random inputs {report.max_abs_diff:.2e} "
        f"(outputs up to {report.output_scale:.2f})"
    )
    mean, std = (", ".join(f"{v:.4f}" for v in values) for values in (prep.mean, prep.std))
    print(f"input: {prep.input_range(args.include_preprocessing)}; mean ({mean}), std ({std})")
    if prep.geometry:
        print(f"  images as in training: {prep.geometry}")
    if not args.include_preprocessing:
        print("  (--include-preprocessing bakes this into the file, so it takes raw pixels 0..255)")
    print(
        f"outputs: logits of {len(prep.class_names)} classes ({', '.join(prep.class_names[:10])}"
        f"{', ...' if len(prep.class_names) > 10 else ''}); all of this is in the file's metadata"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "export",
        cmd_export,
        "deploy a checkpoint and export it to ONNX or TorchScript (checked before it is written)",
        [threads_parent(), trust_parent(), device_parent()],
    )
    p.add_argument("--checkpoint", required=True, help="a .pt file (or run directory: its last.pt)")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", required=True, help="file to write (only if the check passes; written atomically)")
    p.add_argument(
        "--deploy",
        choices=TARGETS,
        default="auto",
        help="layer form: auto (default: the fastest measured where the file runs, at batch 1 and the export's "
        "input size: ONNX, the whole model factorized or dense, whichever onnxruntime runs faster; TorchScript, "
        "each layer's faster form and the faster memory format in PyTorch), factorized or dense (forced, untimed)",
    )
    p.add_argument("--input-size", type=positive_int, help="square input size (default: the training size)")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TorchScript only: force channels-last weights, or NCHW with --no-channels-last (default: measured "
        "under --deploy auto, else NCHW)",
    )
    p.add_argument(
        "--include-preprocessing",
        action="store_true",
        help="bake the training normalization into the file: it then takes raw pixel values 0..255 (float32, NCHW)",
    )
