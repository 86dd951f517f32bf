"""Command-line interface: ``lowrankcnn <command> ...`` (also ``python -m lowrankcnn``).

One module per group of commands; each has ``register(subparsers)`` adding its parsers, whose
``func`` runs the command. Errors of the library's own types (:mod:`lowrankcnn.errors`) are
printed as one line, with each Python argument they name written as the flag that sets it;
anything else is a bug and keeps its traceback. Importing this package is cheap: torch and the
commands are imported inside :func:`main`, so Ctrl-C during start-up is one line too.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import typing
from collections.abc import Sequence

LIBRARY_NAMES = {"list_models": "`lowrankcnn models`"}
"""Library functions that errors point to, and the command that does the same."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (with where to find help), exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import bench, convert, decompose, evaluate, export, models, plot, train

    parser = OneLineParser(prog="lowrankcnn", description="Low-rank CNNs: model zoo, counting, training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (models, convert, train, decompose, evaluate, export, bench, plot):
        module.register(sub)
    return parser


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``dest -> --flag`` for every optional argument of ``parser`` (how errors name arguments)."""
    flags = {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}
    return {**LIBRARY_NAMES, **flags}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 diverged, 2 user error, 130 interrupted)."""
    if hasattr(signal, "SIGPIPE"):  # `lowrankcnn ... | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = None
    try:
        from ..errors import LowRankCNNError, TrainingDiverged

        argv = list(sys.argv[1:] if argv is None else argv)
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help, or a usage error already printed as one line
            return done.code if isinstance(done.code, int) else 2
        args.argv = argv
        try:
            args.func(args)
        except LowRankCNNError as err:
            print(f"lowrankcnn {args.command}: error: {err.render(flag_names(args.parser))}", file=sys.stderr)
            return 1 if isinstance(err, TrainingDiverged) else 2
    except KeyboardInterrupt:
        command = getattr(args, "command", None)
        hint = args.interrupt_hint(args) if getattr(args, "interrupt_hint", None) else None
        print(
            f"\nlowrankcnn{' ' + command if command else ''}: interrupted" + (f"; {hint}" if hint else ""),
            file=sys.stderr,
        )
        return 130
    return 0


__all__ = ["build_parser", "main"]


def run() -> None:
    """The ``lowrankcnn`` program: :func:`main`, then exit with its status.

    After a Ctrl-C the process ends with ``os._exit(130)`` once the outputs are flushed: a KeyboardInterrupt that
    passed through C code (torch, the data loaders) can leave the interpreter set to end itself by SIGINT even
    though the command handled it, which a shell or a job runner would read as "killed", not "exit 130".
    """
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)
