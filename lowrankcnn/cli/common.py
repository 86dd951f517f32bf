"""What several commands share: parent parsers for shared flags, thread and device set-up, ``KEY=VALUE`` parsing."""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Callable, Sequence

import torch

from ..distributed import default_threads
from ..errors import ConfigError
from ..models import ModelSpec
from ..models.spec import conversion_options
from ..training.config import MAX_THREADS

_WORDS = {"true": True, "yes": True, "false": False, "no": False, "none": None}


def parse_model_kwarg(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(KEY, value)``: ``true/false/yes/no/none`` (any case) -> bool/None, a Python literal
    (``0.3``, ``(1, 2)``) -> its value, anything else -> the string. Types are checked against the model later."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. shared_spatial=false), got {text!r}")
    if value.strip().lower() in _WORDS:
        return key, _WORDS[value.strip().lower()]
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return key, value


def model_parent(width_default: float | None = 1.0) -> argparse.ArgumentParser:
    """``--width-mult`` and ``--model-kwargs KEY=VALUE ...``: how a registered model is built."""
    p = argparse.ArgumentParser(add_help=False)
    default = "the model's recipe, else 1.0" if width_default is None else f"{width_default:g}"
    p.add_argument("--width-mult", type=float, default=width_default, help=f"channel width multiplier ({default})")
    p.add_argument(
        "--model-kwargs",
        nargs="+",
        type=parse_model_kwarg,
        metavar="KEY=VALUE",
        help="model keywords, e.g. shared_spatial=false bn=true (true/false/yes/no, numbers, strings; checked "
        "against the model)",
    )
    return p


def lowrank_parent() -> argparse.ArgumentParser:
    """``--lowrank METHOD``: the model's convs converted with ``lowrankcnn.convert``."""
    from ..convert import CONVERT_METHODS

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--lowrank",
        choices=CONVERT_METHODS,
        help="convert the model's convs with this method (as `lowrankcnn convert`; any model)",
    )
    p.add_argument(
        "--rank",
        type=rank_value,
        help="svd: inner width of every converted conv (train: 'auto' for Cuttlefish's per-layer stable rank, "
        "with --warmup-dense)",
    )
    p.add_argument("--rank-ratio", type=float, help="svd: inner width as a fraction of each conv's outputs (0.25)")
    p.add_argument("--keep-dense", nargs="+", metavar="PATTERN", help="leave convs with these names dense")
    return p


def rank_value(text: str) -> int | str:
    """``--rank``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}")
    return value


def lowrank_options(args: argparse.Namespace) -> dict[str, object]:
    """The ``convert`` keywords of :func:`lowrank_parent`'s flags (``--rank auto`` is a training recipe: refused
    here)."""
    rank = getattr(args, "rank", None)
    if rank == "auto":
        raise ConfigError("--rank auto chooses ranks during training (lowrankcnn train --warmup-dense E)")
    options = conversion_options(rank, getattr(args, "rank_ratio", None), getattr(args, "keep_dense", None) or ())
    if options and getattr(args, "lowrank", None) is None:
        raise ConfigError("--rank, --rank-ratio and --keep-dense apply to a conversion: give --lowrank too")
    return options


def shape_parent() -> argparse.ArgumentParser:
    """``--input-size``, ``--num-classes``, ``--in-chans`` of a model built without data."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--input-size", type=int, default=None, help="square input size (default: the model's native size)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default: the model's native count)")
    p.add_argument("--in-chans", type=int, default=None, help="input channels (default: the model's native count)")
    return p


def model_spec(args: argparse.Namespace, name: str) -> ModelSpec:
    """The :class:`ModelSpec` the flags of :func:`model_parent` and :func:`shape_parent` describe for ``name``."""
    return ModelSpec(
        name,
        getattr(args, "num_classes", None),
        getattr(args, "in_chans", None),
        1.0 if args.width_mult is None else args.width_mult,
        dict(args.model_kwargs or []),
        getattr(args, "lowrank", None),
        lowrank_options(args),
    )


def device_parent() -> argparse.ArgumentParser:
    """``--device``: where a command runs its model."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--device", default="auto", help="auto (default: cuda if available, else cpu), cpu, cuda or cuda:N")
    return p


def trust_parent() -> argparse.ArgumentParser:
    """``--trust-factory``: let a checkpoint of a user's own model import the module that builds it."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--trust-factory",
        action="store_true",
        help="the checkpoint's model is a factory 'package.module:function': import that module to rebuild it "
        "(runs its code; only for files you trust)",
    )
    return p


def default_run_dir(model: str) -> str:
    """``runs/MODEL`` (a factory path's ``:`` written as ``.``)."""
    return f"runs/{model.replace(':', '.')}"


def progress_printer(enabled: bool | None) -> Callable[[str], None] | None:
    """A progress callback writing to stderr (``None``: only when stderr is a terminal; there, each line
    overwrites the last)."""
    terminal = sys.stderr.isatty()
    if not (terminal if enabled is None else enabled):
        return None

    def show(line: str) -> None:
        if terminal:  # the last round clears the line for the result
            sys.stderr.write("\r\033[K" + ("" if line == "0 rounds left" else line))
            sys.stderr.flush()
        elif not line.endswith("rounds left"):
            print(line, file=sys.stderr, flush=True)

    return show


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
