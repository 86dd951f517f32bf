"""The main job behind ``make demo``: a dense model and its low-rank twin, trained and compared.

Trains both on Fashion-MNIST with the same recipe, then prints one table:
params, MACs, test accuracy, training images/s, inference images/s (measured
interleaved in this process) and the speed-up over the dense twin. Writes the
table to ``OUT/summary.md`` and the training curves to ``OUT/curves.png``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .plot import plot_curves
from .profile import profile
from .tables import format_table, markdown_table
from .timing import inference_fn, interleaved
from .training import TrainConfig, Trainer
from .training.checkpoint import atomic_write_text

HEAD = ("model", "params", "MACs", "test acc", "train img/s", "infer img/s", "speed-up", "MAC ratio")


def compare(
    dense: str,
    lowrank: str,
    base: TrainConfig,
    out: str | Path,
    infer_batch: int = 256,
    progress: bool = True,
) -> tuple[list[list[str]], str]:
    """Train ``dense`` and ``lowrank`` with ``base``'s recipe under ``out/<model>``; return (rows, markdown)."""
    out = Path(out)
    trainers: dict[str, Trainer] = {}
    for name in (dense, lowrank):
        trainer = Trainer(replace(base, model=name, out=str(out / name)), progress=progress)
        if progress:
            print(f"training {name} for {base.epochs} epochs ...", flush=True)
        trainer.fit()
        trainers[name] = trainer
    info = trainers[dense].info
    batch = torch.randn(infer_batch, info["in_chans"], info["input_size"], info["input_size"])
    timings = interleaved({n: inference_fn(t.model, batch) for n, t in trainers.items()}, repeats=15)
    stats = {}
    for name, trainer in trainers.items():
        counts = profile(trainer.model, info["input_size"])
        final = trainer.history[-1]
        stats[name] = {
            "params": counts.params,
            "macs": counts.macs,
            "acc": final["test_acc"],
            "train_ips": sum(r["train_images_per_s"] for r in trainer.history) / len(trainer.history),
            "infer_ips": infer_batch / timings[name].median,
        }
    ref = stats[dense]
    rows = [
        [
            name,
            f"{s['params']:,}",
            f"{s['macs']:,}",
            f"{100 * s['acc']:.2f}%",
            f"{s['train_ips']:.0f}",
            f"{s['infer_ips']:.0f}",
            f"{s['infer_ips'] / ref['infer_ips']:.2f}x",
            f"{s['macs'] / ref['macs']:.2f}",
        ]
        for name, s in stats.items()
    ]
    kwargs = base.model_kwargs
    extras = ("batch norm, " if kwargs.get("bn") else "") + (
        f"dropout {kwargs['dropout']}, " if "dropout" in kwargs else ""
    )
    note = (
        f"Fashion-MNIST, width_mult {base.width_mult}, {extras}{base.epochs} epochs, batch {base.batch_size}, "
        f"{base.optimizer} lr {base.lr} ({base.schedule}), seed {base.seed}. MACs per image (1 MAC = 2 FLOPs); "
        f"inference at batch {infer_batch}, median of 15 interleaved runs; speed-up = inference images/s "
        f"over {dense}'s; MAC ratio = MACs over {dense}'s."
    )
    markdown = markdown_table(HEAD, rows) + "\n\n" + note + "\n"
    atomic_write_text(out / "summary.md", markdown)
    plot_curves([out / dense, out / lowrank], out / "curves.png")
    return rows, format_table(HEAD, rows) + "\n\n" + note
