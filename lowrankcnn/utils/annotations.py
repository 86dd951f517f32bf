"""Checking plain values (from JSON, a checkpoint or a command line) against type annotations."""

from __future__ import annotations

import types
import typing
from typing import Literal


def fits(value: object, hint: object) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (``int``, ``float``, ``bool``, ``str``, ``None``,
    ``Literal[...]``, unions of those, ``dict[str, ...]``, ``tuple``/``list``). ``bool`` is not an ``int``
    here, and an ``int`` fits ``float``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is dict or hint is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if origin in (tuple, list):
        return isinstance(value, (tuple, list)) and all(fits(v, args[0]) for v in value) if args else True
    return isinstance(value, hint) if isinstance(hint, type) else True


def describe(hint: object) -> str:
    """``int | None`` -> ``"int or None"``; ``Literal["a", "b"]`` -> ``"one of 'a', 'b'"``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, args))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if hint is None or hint is type(None):
        return "None"
    if typing.get_origin(hint) is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))
