"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain Python values (str, int, float,
bool, None, lists and dicts of those) saved with ``torch.save``. It is
written to a temporary file in the same folder and renamed over the target,
so a crash never leaves a half-written file. It is loaded with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, CheckpointNotFoundError
from ..utils import atomic_write_bytes

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (plus a format tag) to ``path`` atomically."""
    buffer = io.BytesIO()  # serialized in memory first: a full disk is then an OSError, not a torch RuntimeError
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` onto the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable lowrankcnn checkpoint (truncated,
            corrupt, or holding objects other than tensors and plain values).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} not found; pass a .pt file written by lowrankcnn training")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({reason[:160]}); it may be truncated or corrupt, "
            "or not written by lowrankcnn. Use another checkpoint (e.g. best.pt) or retrain."
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise CheckpointError(f"{path} is not a lowrankcnn checkpoint (no 'format'/'model' entries)")
    return state
