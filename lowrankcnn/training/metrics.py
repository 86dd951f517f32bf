"""Per-epoch metrics: ``metrics.jsonl`` (one JSON object per epoch) and ``metrics.csv``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..errors import RunDirectoryError
from ..utils import atomic_write_text

METRIC_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "test_top5",
    "train_images_per_s",
    "epoch_time_s",
)


def write_metrics(run_dir: str | Path, history: list[dict[str, Any]]) -> None:
    """Rewrite both metrics files from the full history (atomically, so resume never duplicates rows)."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a run directory's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise RunDirectoryError(f"{path} not found; is {run_dir} a run directory written by lowrankcnn training?")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise RunDirectoryError(f"{path}:{i} is not valid JSON ({err.msg}); the file is corrupt") from err
    return rows
