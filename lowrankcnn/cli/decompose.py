"""``lowrankcnn decompose``: a trained dense run fitted by a low-rank method, written as a run to fine-tune."""

from __future__ import annotations

import argparse

from ..convert import CONVERT_METHODS
from ..training.decompose import decompose_run
from .common import add_command, positive_int, rank_value, set_threads, threads_parent, trust_parent


def cmd_decompose(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    config, report, phase = decompose_run(
        args.checkpoint,
        args.method,
        args.out,
        rank=args.rank,
        rank_ratio=args.rank_ratio,
        keep_dense=args.keep_dense,
        epochs=args.epochs,
        lr=args.lr,
        overwrite=args.overwrite,
        trust_factory=args.trust_factory,
        threads=args.threads,
    )
    if report is None:
        print(f"{args.checkpoint}: no conv converted (no automatic rank would cut its layer's MACs)")
    else:
        print(report.table())
    if phase.ranks:
        print("ranks (scaled stable rank): " + ", ".join(f"{n} {r}" for n, r in phase.ranks.items()))
    print(
        f"written: {config.out} ({config.model_label}, epoch 0 of {config.epochs}, lr {config.lr:g}); "
        f"fine-tune with: lowrankcnn train --resume {config.out}"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "decompose",
        cmd_decompose,
        "fit a low-rank method to a trained dense run and write it as a run to fine-tune (train --resume)",
        [threads_parent(), trust_parent()],
    )
    p.add_argument("--checkpoint", required=True, help="the dense run's .pt file (or run directory: its last.pt)")
    p.add_argument("--method", choices=CONVERT_METHODS, required=True, help="low-rank layer to fit")
    p.add_argument("--out", required=True, help="run directory to write (refused if it holds a run)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--rank", type=rank_value, help="svd: inner width, or 'auto' (each layer's scaled stable rank)")
    p.add_argument("--rank-ratio", type=float, help="svd: inner width as a fraction of each conv's outputs (0.25)")
    p.add_argument("--keep-dense", nargs="+", metavar="PATTERN", help="leave convs with these names dense")
    p.add_argument("--epochs", type=positive_int, help="fine-tuning epochs (default: the dense run's)")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (default: the dense run's)")
