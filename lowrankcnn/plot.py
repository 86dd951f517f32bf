"""Figures: training curves of several runs, and confusion matrices (matplotlib, imported on first use).

The image format follows the output file's suffix (``.png``, ``.pdf``, ``.svg``, ...); it is checked
before anything is drawn, and every file is written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import ConfigError, RunDirectoryError
from .training.metrics import read_metrics
from .utils import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVE_COLUMNS = ("epoch", "train_loss", "test_loss", "train_acc", "test_acc")
"""The metrics columns ``plot_curves`` draws."""
ANNOTATE_MAX = 20
"""Confusion matrices up to this many classes get a count in every cell."""
LABEL_MAX = 50
"""Up to this many classes every row and column is labeled; more get a plain heatmap with index ticks."""
MAX_INCHES = 12.0
"""Largest side of a confusion figure (at 120 dpi: 1440 pixels), whatever the number of classes."""


def _figure(figsize: tuple[float, float], ncols: int = 1) -> tuple[Figure, object]:
    """A figure not registered with pyplot (no GUI backend needed, nothing to close) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols)


def figure_format(out: str | Path, param: str = "out") -> str:
    """The image format of ``out`` from its suffix (``png`` without one), checked before any drawing.

    Raises:
        ConfigError: a suffix matplotlib cannot write; OutputError: ``out`` is a directory or not a regular file.
    """
    from matplotlib.figure import Figure

    from .utils.io import check_output_file

    out = check_output_file(out)
    fmt = out.suffix.lstrip(".").lower() or "png"
    supported = Figure().canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ConfigError(
            f"${param} {out}: cannot write .{fmt} images; use one of {', '.join('.' + f for f in sorted(supported))}",
            param=param,
        )
    return fmt


def _save(fig: Figure, out: str | Path) -> None:
    fmt = figure_format(out)
    atomic_write_bytes(out, lambda f: fig.savefig(f, format=fmt, dpi=120))


def _curve_rows(run: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``, each with a number in every :data:`CURVE_COLUMNS` column."""
    path = Path(run) / "metrics.jsonl"
    try:
        rows = read_metrics(run)
    except (UnicodeDecodeError, OSError) as err:
        raise RunDirectoryError(f"{path} cannot be read ({err}); not a metrics file written by lowrankcnn") from err
    if not rows:
        raise RunDirectoryError(f"{path} has no epochs yet; plot it after the first epoch ends")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise RunDirectoryError(f"{path}:{i} is not a JSON object; not a metrics file written by lowrankcnn")
        for column in CURVE_COLUMNS:
            value = row.get(column)
            if column not in row:
                raise RunDirectoryError(
                    f"{path}:{i} has no {column!r} column; not a metrics file written by lowrankcnn"
                )
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RunDirectoryError(f"{path}:{i}: {column!r} is {value!r}, not a number")
    return rows


def plot_curves(run_dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None) -> None:
    """Loss and accuracy per epoch (train dashed, test solid) of each run, on one 1x2 figure.

    Raises:
        ConfigError: no run, labels that do not match the runs, or an image format matplotlib cannot write.
        RunDirectoryError: a run without a readable ``metrics.jsonl``, with no epochs, or lacking a column.
        OutputError: ``out`` cannot be written.
    """
    if not run_dirs:
        raise ConfigError("plot: give at least one run directory", param="runs")
    if labels is not None and len(labels) != len(run_dirs):
        raise ConfigError(f"plot: {len(labels)} $labels for {len(run_dirs)} runs", param="labels")
    figure_format(out)
    all_rows = [_curve_rows(run) for run in run_dirs]  # every file checked before drawing
    fig, (ax_loss, ax_acc) = _figure((11, 4), ncols=2)
    for i, (run, rows) in enumerate(zip(run_dirs, all_rows, strict=True)):
        label = labels[i] if labels else Path(run).name
        epochs = [r["epoch"] for r in rows]
        color = f"C{i % 10}"
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], "--", color=color, label=f"{label} train")
        ax_loss.plot(epochs, [r["test_loss"] for r in rows], "-", color=color, label=f"{label} test")
        ax_acc.plot(epochs, [r["train_acc"] for r in rows], "--", color=color, label=f"{label} train")
        ax_acc.plot(epochs, [r["test_acc"] for r in rows], "-", color=color, label=f"{label} test")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "top-1 accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out)


def plot_confusion(matrix: torch.Tensor, class_names: Sequence[str], out: str | Path, title: str = "") -> None:
    """Row-normalized confusion matrix ``(classes, classes)`` (true class per row), as an image.

    The figure grows with the number of classes up to :data:`MAX_INCHES` a side. Up to
    :data:`ANNOTATE_MAX` classes every cell shows its count; up to :data:`LABEL_MAX` every row and
    column is labeled; beyond that it is a plain heatmap with class-index ticks (pair it with
    :func:`lowrankcnn.evaluate.most_confused` for a readable summary).

    Raises:
        ConfigError: ``matrix`` is not square with one row per class name, or an unwritable image format.
        OutputError: ``out`` cannot be written.
    """
    n = len(class_names)
    if matrix.dim() != 2 or tuple(matrix.shape) != (n, n):
        raise ConfigError(
            f"plot_confusion: $matrix is {tuple(matrix.shape)}, expected ({n}, {n}) for {n} class names",
            param="matrix",
        )
    figure_format(out)
    counts = matrix.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    side = min(MAX_INCHES, 1.0 + 0.6 * n)
    fig, ax = _figure((side, side))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest" if n <= LABEL_MAX else "antialiased")
    if n <= LABEL_MAX:
        ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
    else:
        step = 10 ** max(0, math.floor(math.log10(n / 5)))
        ax.set_xticks(range(0, n, step))
        ax.set_yticks(range(0, n, step))
    ax.set_xlabel("predicted" + ("" if n <= LABEL_MAX else " (class index)"))
    ax.set_ylabel("true" + ("" if n <= LABEL_MAX else " (class index)"))
    if n <= ANNOTATE_MAX:
        for i in range(n):
            for j in range(n):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, out)
