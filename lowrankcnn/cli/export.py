"""``lowrankcnn export``: a checkpoint deployed and written as ONNX or TorchScript, then checked."""

from __future__ import annotations

import argparse

import torch

from ..deploy import TARGETS, deploy
from ..errors import ConfigError, ExportError
from ..export import FORMATS, export_model, onnx_max_abs_diff, torchscript_max_abs_diff
from ..training import load_trained_model
from .common import add_command, set_threads, threads_parent


def cmd_export(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    model, config, state = load_trained_model(args.checkpoint)
    info = state["data_info"]
    size = args.input_size or info["input_size"]
    if args.format == "onnx" and args.channels_last:
        raise ConfigError("ONNX has no memory format; $channels_last applies to TorchScript only")
    deployed = deploy(
        model, args.deploy, channels_last=args.channels_last, input_shape=(1, info["in_chans"], size, size)
    )
    example = torch.randn(2, info["in_chans"], size, size)
    if args.channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    path = export_model(deployed, example, args.out, args.format)
    check = torch.randn(3, info["in_chans"], size, size)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = deployed(check)
    diff = (onnx_max_abs_diff if args.format == "onnx" else torchscript_max_abs_diff)(path, check, expected)
    scale = float(expected.abs().max())
    print(
        f"{config.model} (epoch {state['epoch']}, deploy {args.deploy}) exported to {path} as {args.format}: "
        f"input (N, {info['in_chans']}, {size}, {size}); max |difference| vs PyTorch on random inputs {diff:.2e} "
        f"(outputs up to {scale:.2f})"
    )
    if diff > 1e-3 * max(1.0, scale):
        raise ExportError(f"the exported model disagrees with PyTorch (max |difference| {diff:.2e}); do not use {path}")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "export",
        cmd_export,
        "deploy a checkpoint and export it to ONNX or TorchScript (checked)",
        [threads_parent()],
    )
    p.add_argument("--checkpoint", required=True, help="a .pt file (or run directory: its last.pt)")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", required=True, help="file to write (written atomically)")
    p.add_argument("--deploy", choices=TARGETS, default="factorized", help="layer form (default factorized)")
    p.add_argument("--input-size", type=int, help="square input size (default: the training size)")
    p.add_argument("--channels-last", action="store_true", help="TorchScript only: channels-last weights")
