"""Old names kept working: functions, attributes and state-dict keys renamed for clarity.

Each old name warns with a ``DeprecationWarning`` when it is used (never at import time) and
then does exactly what the new name does.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new``."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=stacklevel)


def renamed_function(new: F, old: str) -> F:
    """``new`` under its old name ``old``: same signature and result, with a ``DeprecationWarning`` per call."""

    @functools.wraps(new)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warn_renamed(old, new.__name__)
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old.rpartition(".")[2]
    alias.__doc__ = f"Deprecated alias of :func:`{new.__name__}`."
    return alias  # type: ignore[return-value]


class RenamedAttribute:
    """Class attribute ``old = RenamedAttribute("new")``: reading ``obj.old`` warns and returns ``obj.new``."""

    def __init__(self, new: str) -> None:
        self.new = new
        self.old = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.old = f"{owner.__name__}.{name}"

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        warn_renamed(self.old, f"{type(obj).__name__}.{self.new}")
        return getattr(obj, self.new)


def rename_state_dict_keys(state_dict: dict[str, Any], prefix: str, renames: Mapping[str, str]) -> None:
    """Rewrite, in place, keys ``prefix + old + rest`` to ``prefix + new + rest`` for ``old -> new`` in ``renames``.

    For a module's ``_load_from_state_dict``: checkpoints saved before a submodule or parameter was
    renamed load as they did. A key already under its new name is left alone.
    """
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        head, dot, tail = rest.partition(".")
        new_key = prefix + renames.get(head, head) + dot + tail
        if head in renames and new_key not in state_dict:  # both present: strict loading reports the old one
            state_dict[new_key] = state_dict.pop(key)


class RenamedMembers:
    """Mixin (before ``nn.Module``) for a layer whose submodules or parameters were renamed.

    ``renamed_members = {old: new}`` on the class gives every ``old`` a deprecated read alias
    (:class:`RenamedAttribute`) and makes ``load_state_dict`` accept the old keys
    (:func:`rename_state_dict_keys`), so checkpoints saved with the old names load unchanged.
    """

    renamed_members: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for old, new in cls.__dict__.get("renamed_members", {}).items():
            alias = RenamedAttribute(new)
            alias.__set_name__(cls, old)
            setattr(cls, old, alias)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        rename_state_dict_keys(state_dict, prefix, self.renamed_members)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]
