"""``lowrankcnn convert``: the conversion report of a zoo model or of any importable model factory."""

from __future__ import annotations

import argparse
import json

from ..convert import CONVERT_INITS, CONVERT_METHODS, convert
from .common import add_command, json_parent, model_parent, model_spec, shape_parent


def cmd_convert(args: argparse.Namespace) -> None:
    spec = model_spec(args, args.model)
    model = spec.create("meta" if args.init == "composite" else None)  # counting needs no real weights
    _, report = convert(
        model,
        args.method,
        include=args.include,
        exclude=args.exclude or (),
        keep_first=not args.convert_first,
        min_channels=args.min_channels,
        init=args.init,
        inplace=True,
        input_size=args.input_size,
        **({} if args.method_rank_ratio is None else {"rank_ratio": args.method_rank_ratio}),
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "convert",
        cmd_convert,
        "replace the convs of a model by low-rank ones and report what changed (params, MACs, skipped convs)",
        [json_parent(), shape_parent(), model_parent()],
    )
    p.add_argument("--model", required=True, help="registry name, or a factory 'package.module:function'")
    p.add_argument("--method", choices=CONVERT_METHODS, default="lr", help="low-rank layer to use (default lr)")
    p.add_argument(  # its own dest: the model flags' ``rank_ratio`` belongs to ``--lowrank`` (cli.common)
        "--rank-ratio",
        dest="method_rank_ratio",
        type=float,
        help="svd: inner width as a fraction of each conv's output channels (default 0.25)",
    )
    p.add_argument("--init", choices=CONVERT_INITS, default="composite", help="composite (train) or fit (decompose)")
    p.add_argument("--include", nargs="+", metavar="PATTERN", help="convert only these module names (shell patterns)")
    p.add_argument("--exclude", nargs="+", metavar="PATTERN", help="leave these module names dense")
    p.add_argument("--convert-first", action="store_true", help="convert the first conv too (kept dense by default)")
    p.add_argument("--min-channels", type=int, default=8, help="leave convs narrower than this dense (default 8)")
