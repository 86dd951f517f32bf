"""``lowrankcnn bench``: a model timed against its dense twin (interleaved), speed-up vs MAC ratio."""

from __future__ import annotations

import argparse
import json

from ..bench import DEPLOY_CHOICES, BenchSettings, bench, dense_twin
from .common import add_command, json_parent, set_threads, threads_parent


def cmd_bench(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    baseline = args.baseline if args.baseline != "none" else None
    if args.baseline is None:
        baseline = dense_twin(args.model)
    settings = BenchSettings(
        input_size=args.input_size,
        batch_size=args.batch_size,
        train=args.train,
        deploy=args.deploy or ("none" if args.train else "factorized"),
        channels_last=args.channels_last,
        compile=args.compile,
        width_mult=args.width_mult,
        num_classes=args.num_classes,
        in_chans=args.in_chans,
        repeats=args.repeats,
        warmup=args.warmup,
    )
    result = bench(args.model, baseline, settings)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "bench",
        cmd_bench,
        "time a model against a baseline (interleaved): speed-up vs MAC ratio",
        [threads_parent(), json_parent()],
    )
    p.add_argument("--model", required=True)
    p.add_argument("--baseline", help="model to compare with (default: the dense twin; 'none' for no baseline)")
    p.add_argument("--input-size", type=int, help="square input size (default: the model's native size)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--train", action="store_true", help="time a training step instead of inference")
    p.add_argument("--deploy", choices=DEPLOY_CHOICES, help="inference form (default factorized; 'none' = as trained)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--repeats", type=int, default=15, help="timed runs of each model (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
