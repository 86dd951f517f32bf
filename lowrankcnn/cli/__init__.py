"""Command-line interface: ``lowrankcnn <command> ...`` (also ``python -m lowrankcnn``).

One module per group of commands; each has ``register(subparsers)`` adding its parsers, whose
``func`` runs the command. Errors of the library's own types (:mod:`lowrankcnn.errors`) are
printed as one line, with each Python argument they name written as the flag that sets it;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence

from ..errors import LowRankCNNError, TrainingDiverged
from . import bench, evaluate, export, models, plot, train

COMMAND_MODULES = (models, train, evaluate, export, bench, plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowrankcnn", description="Low-rank CNNs: model zoo, counting, training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


LIBRARY_NAMES = {"list_models": "`lowrankcnn models`"}
"""Library functions that errors point to, and the command that does the same."""


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``dest -> --flag`` for every optional argument of ``parser`` (how errors name arguments)."""
    flags = {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}
    return {**LIBRARY_NAMES, **flags}


def main(argv: Sequence[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `lowrankcnn ... | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except LowRankCNNError as err:
        print(f"lowrankcnn {args.command}: error: {err.render(flag_names(args.parser))}", file=sys.stderr)
        return 1 if isinstance(err, TrainingDiverged) else 2
    except KeyboardInterrupt:
        hint = args.interrupt_hint(args) if getattr(args, "interrupt_hint", None) else None
        print(f"\nlowrankcnn {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    return 0


__all__ = ["build_parser", "main"]
