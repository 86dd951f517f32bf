"""``lowrankcnn plot``: accuracy and loss curves of finished or running runs."""

from __future__ import annotations

import argparse

from .common import add_command


def cmd_plot(args: argparse.Namespace) -> None:
    from ..plot import plot_curves

    plot_curves(args.runs, args.out)
    print(f"curves of {len(args.runs)} run(s) written to {args.out}")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "plot", cmd_plot, "accuracy / loss curves of one or more runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="curves.png")
