"""What the benchmark scripts share: their training config from the command line, and the "Made by" block."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields
from typing import Any

from lowrankcnn.training import TrainConfig

_FIELDS = {f.name for f in fields(TrainConfig)} - {"model", "out"}


def base_config(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """The recipe shared by every run of a script: each parsed flag named like a ``TrainConfig`` field (e.g.
    ``--lr`` -> ``lr``; ``None``: the field's default), then ``overrides``; ``model`` and ``out`` are set per run."""
    given = {k: v for k, v in vars(args).items() if k in _FIELDS and v is not None}
    return TrainConfig(model="", out="", **{**given, **overrides})


def made_by(summarize_only: bool, rebuilt: str = "the table") -> str:
    """Markdown for a results README: the command that made it; with ``--summarize-only``, the training command
    (the same without that flag) and this one, which rebuilt ``rebuilt`` (and the inference timings)."""
    command = "python " + shlex.join(sys.argv)
    if not summarize_only:
        return f"```sh\n{command}\n```"
    return (
        f"```sh\n{command.replace(' --summarize-only', '')}\n```\n\nwith {rebuilt} (and the inference timings) "
        f"rebuilt from its finished runs by\n\n```sh\n{command}\n```"
    )
