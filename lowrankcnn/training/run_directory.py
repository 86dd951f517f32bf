"""The run directory: one run per folder, one writer at a time, and an end-of-epoch state that is one unit.

Files: ``last.pt`` (end of the latest epoch), ``best.pt`` (best test top-1 so far), ``metrics.jsonl`` /
``metrics.csv`` (one row per epoch), ``config.json``, and ``.lock`` (holds the PID of the process
training in it).

* **One writer.** :meth:`RunDirectory.lock` takes an exclusive ``flock`` on ``.lock`` for the life of the run;
  a second process fails at once, naming the holder's PID. The kernel releases it if the holder dies.
* **No silent replacement.** A folder that already holds a run (a checkpoint or metrics) is refused
  unless the caller resumes it or explicitly overwrites it.
* **One unit per epoch.** ``last.pt`` is the commit point and is written first, then ``best.pt`` (if the
  epoch is the best), then the metrics. A stop between any two writes leaves ``last.pt`` either at the
  old epoch (so the epoch is simply redone) or at the new one, in which case :meth:`reconcile` rewrites
  ``best.pt`` and the metrics from it; every piece it needs is inside ``last.pt``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import typing
from pathlib import Path
from typing import Any

import torch

from ..errors import RunDirectoryBusy, RunDirectoryError
from ..utils import atomic_write_text
from ..utils.io import describe_os_error
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .metrics import write_metrics

RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "config.json")
MARKERS = ("last.pt", "best.pt", "metrics.jsonl")
"""Files whose presence means the folder holds a run (``config.json`` alone is a run that never finished an epoch)."""


def best_epoch(history: list[dict[str, Any]]) -> int:
    """The 1-based epoch with the highest test top-1 (the first one on ties); 0 for an empty history."""
    best, epoch = -1.0, 0
    for row in history:
        if row["test_acc"] > best:
            best, epoch = row["test_acc"], row["epoch"]
    return epoch


def last_checkpoint(run_dir: str | Path) -> Path:
    """``run_dir/last.pt``, which resuming starts from; a :class:`RunDirectoryError` if there is none."""
    path = Path(run_dir) / "last.pt"
    if not path.is_file():
        raise RunDirectoryError(
            f"{run_dir} has no last.pt to resume (no epoch of a run finished there); start the run without $resume"
        )
    return path


def saved_config(run_dir: str | Path) -> TrainConfig:
    """The configuration of the run in ``run_dir`` (from its ``last.pt``)."""
    return TrainConfig.from_dict(load_checkpoint(last_checkpoint(run_dir))["config"], source=str(run_dir))


class RunDirectory:
    """One run's folder (see the module doc). ``path`` may not exist yet."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_file: typing.IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def holds_run(self) -> bool:
        """Whether a run's checkpoint or metrics are here."""
        return any((self.path / name).exists() for name in MARKERS)

    def describe(self) -> str:
        """``"a vgg11_gmp run with 3 epochs done"``-style summary of what is here, from its files."""
        model, done = "a", None
        try:
            model = f"a {json.loads((self.path / 'config.json').read_text())['model']}"
            done = len((self.path / "metrics.jsonl").read_text().splitlines())
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return f"{model} run" + (f" with {done} epoch(s) done" if done is not None else "")

    def lock(self) -> None:
        """Create the folder if needed and hold its lock until :meth:`unlock` (or the process ends).

        Raises:
            RunDirectoryBusy: another process holds the lock (its PID is named).
            RunDirectoryError: the path is not a folder, or cannot be locked.
        """
        if self._lock_file is not None:
            return
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"{self.path} is a file, not a run directory; give another $out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock_file = open(self.path / ".lock", "a+b")  # noqa: SIM115 - held open for the life of the run
        except OSError as err:
            raise RunDirectoryError(f"cannot use {self.path} as a run directory: {describe_os_error(err)}") from err
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            lock_file.seek(0)
            holder = lock_file.read(32).decode(errors="replace").strip() or "unknown"
            lock_file.close()
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirectoryError(f"cannot lock {self.path}: {describe_os_error(err)}") from err
            who = "this process (close the other Trainer first)" if holder == str(os.getpid()) else f"PID {holder}"
            raise RunDirectoryBusy(
                f"{self.path} is in use by another training run ({who}); wait for it to finish, or give another $out"
            ) from None
        lock_file.truncate(0)
        lock_file.write(f"{os.getpid()}\n".encode())
        lock_file.flush()
        self._lock_file = lock_file

    def unlock(self) -> None:
        """Release the lock (the ``.lock`` file stays; it holds no state)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def check_free(self, overwrite: bool) -> None:
        """Refuse a folder that holds a run unless ``overwrite`` (nothing is deleted here).

        Raises:
            RunDirectoryError: the folder holds a run and ``overwrite`` is false.
        """
        if self.holds_run() and not overwrite:
            raise RunDirectoryError(
                f"{self.path} already holds {self.describe()}; continue it with $resume, give another $out, "
                "or pass $overwrite to replace it"
            )

    def clear(self) -> None:
        """Delete the run files of the (locked) folder, for a new run that replaces it."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.path / "config.json", json.dumps(config, indent=2) + "\n")

    def commit_epoch(self, state: dict[str, Any], is_best: bool) -> None:
        """Write the end-of-epoch unit: ``last.pt``, then ``best.pt`` if ``is_best``, then the metrics."""
        save_checkpoint(self.path / "last.pt", state)
        if is_best:
            save_checkpoint(self.path / "best.pt", state)
        write_metrics(self.path, state["history"])

    def reconcile(self, state: dict[str, Any]) -> list[str]:
        """Bring ``best.pt`` and the metrics in line with ``last.pt``'s ``state`` after a stop mid-commit.

        Returns the names of the files it rewrote (empty when everything was consistent).
        """
        repaired = []
        history = state["history"]
        try:
            rows = [json.loads(line) for line in (self.path / "metrics.jsonl").read_text().splitlines()]
            csv_rows = len((self.path / "metrics.csv").read_text().splitlines()) - 1
        except (OSError, ValueError):
            rows, csv_rows = None, -1
        epochs = [r["epoch"] for r in history]
        if rows is None or [r.get("epoch") for r in rows] != epochs or csv_rows != len(epochs):
            write_metrics(self.path, history)
            repaired.append("metrics")
        if history and best_epoch(history) == state["epoch"] and self._saved_epoch("best.pt") != state["epoch"]:
            save_checkpoint(self.path / "best.pt", state)
            repaired.append("best.pt")
        return repaired

    def _saved_epoch(self, name: str) -> int | None:
        """The epoch counter of checkpoint ``name`` here (``None`` if it is missing or unreadable)."""
        try:
            epoch = torch.load(self.path / name, map_location="cpu", weights_only=True, mmap=True).get("epoch")
        except Exception:  # a missing or damaged best.pt is simply rewritten
            return None
        return epoch if isinstance(epoch, int) else None
