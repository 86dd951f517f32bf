"""Figures: training curves of several runs, and confusion matrices (matplotlib, imported on first use)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .training.metrics import read_metrics
from .utils import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(figsize: tuple[float, float], ncols: int = 1) -> tuple[Figure, object]:
    """A figure not registered with pyplot (no GUI backend needed, nothing to close) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols)


def _save(fig: Figure, out: str | Path) -> None:
    atomic_write_bytes(out, lambda f: fig.savefig(f, format=Path(out).suffix.lstrip(".") or "png", dpi=120))


def plot_curves(run_dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None) -> None:
    """Loss and accuracy per epoch (train dashed, test solid) of each run, on one 1x2 figure."""
    if not run_dirs:
        raise ValueError("plot: give at least one run directory")
    fig, (ax_loss, ax_acc) = _figure((11, 4), ncols=2)
    for i, run in enumerate(run_dirs):
        rows = read_metrics(run)
        if not rows:
            raise ValueError(f"{run}/metrics.jsonl has no epochs yet")
        label = labels[i] if labels else Path(run).name
        epochs = [r["epoch"] for r in rows]
        color = f"C{i}"
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
    """Row-normalized confusion matrix (true class per row) with counts as annotations."""
    counts = matrix.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(class_names)
    fig, ax = _figure((1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, out)
