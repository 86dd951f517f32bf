"""What several commands share: parent parsers for shared flags, thread and device set-up, ``KEY=VALUE`` parsing."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch

from ..distributed import default_threads
from ..training.config import MAX_THREADS


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def thread_count(text: str) -> int:
    """argparse type: a thread count, 1..``MAX_THREADS``."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}, got {value}")
    return value


def threads_parent() -> argparse.ArgumentParser:
    """``--threads``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--threads", type=thread_count, help="torch CPU threads (default: all cores, split among torchrun ranks)"
    )
    return p


def json_parent() -> argparse.ArgumentParser:
    """``--json``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def set_threads(threads: int | None) -> None:
    """Use ``threads`` torch CPU threads (``None``: the torchrun share of the cores, or torch's default)."""
    threads = threads or default_threads()
    if threads:
        torch.set_num_threads(threads)


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], None],
    help: str,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """A sub-command parser whose parsed namespace carries ``func`` and the parser itself (for error rendering)."""
    p = sub.add_parser(name, help=help, parents=list(parents))
    p.set_defaults(func=func, parser=p)
    return p


def explicit_flags(args: argparse.Namespace) -> set[str]:
    """The ``dest`` of every optional argument written on the command line (not left at its default).

    Needs ``args.parser`` (set by :func:`add_command`) and ``args.argv`` (set by ``main``); the parser must
    not allow abbreviations.
    """
    given = {token.split("=", 1)[0] for token in args.argv if token.startswith("--")}
    return {a.dest for a in args.parser._actions if given.intersection(a.option_strings)}
