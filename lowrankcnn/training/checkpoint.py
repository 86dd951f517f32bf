"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain Python values (str, int, float,
bool, None, lists and dicts of those) saved with ``torch.save``. It is
written to a temporary file in the same folder and renamed over the target,
so a crash never leaves a half-written file. It is loaded with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = 1


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path``, renamed onto ``path`` if the block succeeds, removed if it fails.

    The file gets the permissions a plain ``open`` would give it (0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temp file next to ``path``, then rename it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + rename)."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (plus a format tag) to ``path`` atomically."""
    atomic_write_bytes(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **state}, f))


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
        raise FileNotFoundError(f"checkpoint {path} not found; pass a .pt file written by `lowrankcnn train`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path} is not a readable checkpoint ({reason[:160]}); it may be truncated or corrupt, "
            "or not written by lowrankcnn. Use another checkpoint (e.g. best.pt) or retrain."
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise ValueError(f"{path} is not a lowrankcnn checkpoint (no 'format'/'model' entries)")
    return state
