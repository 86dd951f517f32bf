"""``lowrankcnn bench``: a model timed against its dense twin (interleaved), speed-up vs MAC ratio."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from ..bench import DEPLOY_CHOICES, ENGINES, BenchSettings, baseline_spec, bench, default_baseline
from ..errors import ConfigError
from .common import (
    add_command,
    device_parent,
    json_parent,
    lowrank_parent,
    model_parent,
    model_spec,
    parse_model_kwarg,
    progress_printer,
    set_threads,
    shape_parent,
    threads_parent,
)


def cmd_bench(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    spec = model_spec(args, args.model)
    if args.baseline is None:
        baseline = default_baseline(spec)
    else:
        baseline = baseline_spec(args.baseline if args.baseline != "none" else None, spec)
    if args.baseline_kwargs is not None:
        if baseline is None:
            raise ConfigError("$baseline_kwargs given without a baseline", param="baseline_kwargs")
        baseline = replace(baseline, kwargs=dict(args.baseline_kwargs))
    settings = BenchSettings(
        input_size=args.input_size,
        batch_size=args.batch_size,
        train=args.train,
        deploy=args.deploy,
        channels_last=args.channels_last,
        compile=args.compile,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        engine=args.engine,
    )
    result = bench(spec, baseline, settings, progress=progress_printer(args.progress))
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "bench",
        cmd_bench,
        "time a model against a baseline (interleaved): speed-up vs MAC ratio",
        [threads_parent(), json_parent(), shape_parent(), model_parent(), lowrank_parent(), device_parent()],
    )
    p.add_argument("--model", required=True)
    p.add_argument(
        "--baseline",
        help="model to compare with (default: the model before --lowrank, else its dense twin; 'none' for no "
        "baseline), built with the model's "
        "classes, channels, width and the --model-kwargs it accepts",
    )
    p.add_argument(
        "--baseline-kwargs",
        nargs="*",
        type=parse_model_kwarg,
        metavar="KEY=VALUE",
        help="the baseline's own keywords instead of the --model-kwargs it accepts (none given: its defaults)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train", action="store_true", help="time a training step instead of inference")
    p.add_argument(
        "--deploy",
        choices=DEPLOY_CHOICES,
        help="inference form: auto (default: the faster form per layer, measured), factorized, dense, or none (as "
        "trained)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="force the memory format (default: both timed, each model keeps its faster one)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--repeats", type=int, default=15, help="timed runs of each model (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="torch",
        help="run the deployed models in eager PyTorch (default) or export them to ONNX and time them in "
        "onnxruntime (CPU, same thread count)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress on stderr: phases, expected time, rounds left (default: only on a terminal)",
    )
