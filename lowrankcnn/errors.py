"""The library's own error types: every mistake a user can make, and every condition a user can fix.

Anything that is a :class:`LowRankCNNError` is the user's to fix (bad argument, missing or corrupt file,
full disk, a run directory in use, a diverged run); the ``lowrankcnn`` command prints it as one line.
Any other exception is a bug in lowrankcnn (or in a library below it) and keeps its traceback.

Messages are written in Python terms. An argument is written ``$name`` (or ``$name=value``) in the raw
message: ``str(err)`` renders it as ``name`` (``name=value``), and the command line renders it as the
flag that sets it (``--name``, ``--name value``), so one message serves both audiences::

    >>> err = ConfigError("$lr must be a positive number, got -1.0", param="lr")
    >>> str(err)
    'lr must be a positive number, got -1.0'
    >>> err.render({"lr": "--lr"})
    '--lr must be a positive number, got -1.0'

Each type also derives from the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``, ``OSError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_ARG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)(?:=(\S+?))?(?=[\s,;:)\]]|$|\.(?:\s|$))")


def _python_arg(name: str, value: str | None) -> str:
    return name if value is None else f"{name}={value}"


class LowRankCNNError(Exception):
    """Base class: a user's mistake or a condition the user can fix, reported as one line.

    Args:
        message: the text; ``$name`` / ``$name=value`` mark Python arguments (see the module doc).
        param: the argument at fault, if one is.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.template = message
        self.param = param

    def render(self, flags: Mapping[str, str] | Callable[[str], str | None] | None = None) -> str:
        """The message with each ``$name`` written as ``flags[name]`` (a CLI flag), or as Python if unmapped."""
        lookup = flags.get if isinstance(flags, Mapping) else flags

        def arg(match: re.Match[str]) -> str:
            name, value = match.group(1), match.group(2)
            flag = lookup(name) if lookup else None
            if flag is None:
                return _python_arg(name, value)
            return flag if value is None else f"{flag} {value}"

        return _ARG.sub(arg, self.template)

    def __str__(self) -> str:
        return self.render()


class ConfigError(LowRankCNNError, ValueError):
    """An argument or setting that is invalid or impossible (checked before any work is done)."""


class ShapeError(LowRankCNNError, ValueError):
    """An input tensor whose shape does not fit the module it is given to."""


class DataError(LowRankCNNError, ValueError):
    """A data set file that is corrupt, truncated, unsafe or not in the expected format."""


class DataNotFoundError(LowRankCNNError, FileNotFoundError):
    """A data set that is not where it was looked for."""


class CheckpointError(LowRankCNNError, ValueError):
    """A checkpoint that is unreadable, corrupt, foreign or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist."""


class RunDirectoryError(LowRankCNNError, RuntimeError):
    """A run directory that already holds another run, or is in use by another process."""


class RunDirectoryBusy(RunDirectoryError):
    """A run directory whose lock another process (or another ``Trainer`` of this one) holds: it is training there."""


class OutputError(LowRankCNNError, OSError):
    """A file that cannot be written (disk full, read-only, a directory in the way); nothing was left behind."""


class ExportError(LowRankCNNError, RuntimeError):
    """An exported file that does not reproduce the model (and must not be used)."""


class TrainingDiverged(LowRankCNNError, RuntimeError):
    """The loss or the weights became non-finite or exploded; the last good checkpoint is left intact."""


class DistributedError(LowRankCNNError, RuntimeError):
    """A data-parallel rank stopped responding or failed; the job is aborted, its last checkpoint intact."""


class MissingDependencyError(LowRankCNNError, ImportError):
    """An optional dependency that a feature needs is not installed."""


__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "DistributedError",
    "ExportError",
    "LowRankCNNError",
    "MissingDependencyError",
    "OutputError",
    "RunDirectoryBusy",
    "RunDirectoryError",
    "ShapeError",
    "TrainingDiverged",
]
