"""The main job behind ``make demo``: a dense model and its low-rank twin, trained and compared.

Trains both on Fashion-MNIST with the same recipe, then prints one table:
params, MACs, test accuracy, training images/s, inference images/s of the
deployed models (measured interleaved in this process), the speed-up over the
dense twin and the MAC ratio. Writes the
table to ``OUT/summary.md`` and the training curves to ``OUT/curves.png``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .deployment import deploy
from .plot import plot_curves
from .profiling import profile
from .tables import format_table, markdown_table
from .timing import inference_fn, interleaved
from .training import TrainConfig, load_trained_model
from .training.reuse import train_or_reuse
from .utils import atomic_write_text

HEAD = ("model", "params", "MACs", "test acc", "train img/s", "infer img/s", "speed-up", "MAC ratio")


def compare(
    dense: str,
    lowrank: str,
    base: TrainConfig,
    out: str | Path,
    infer_batch: int = 256,
    progress: bool | None = None,
    overwrite: bool = False,
) -> tuple[list[list[str]], str]:
    """Train ``dense`` and ``lowrank`` with ``base``'s recipe under ``out/<model>``; return ``summarize``'s result.

    Finished runs with the same settings are reused and unfinished ones resumed (``train_or_reuse``), so
    running it twice only redoes the summary; runs made with other settings are refused unless ``overwrite``.
    """
    out = Path(out)
    for name in (dense, lowrank):
        train_or_reuse(replace(base, model=name, out=str(out / name)), overwrite=overwrite, progress=progress)
    return summarize(dense, lowrank, out, infer_batch)


def summarize(dense: str, lowrank: str, out: str | Path, infer_batch: int = 256) -> tuple[list[list[str]], str]:
    """Table of the two finished runs ``out/<model>`` (their ``last.pt``); returns (rows, text).

    Inference is timed on the deployed models (``deploy(model, "auto")``: batch norm folded, each
    low-rank layer in whichever form runs faster here), interleaved in this process. Writes
    ``out/summary.md`` and ``out/curves.png``.
    """
    out = Path(out)
    runs = {name: load_trained_model(out / name / "last.pt") for name in (dense, lowrank)}
    config = runs[dense][1]
    info = runs[dense][2]["data_info"]
    shape = (infer_batch, info["in_chans"], info["input_size"], info["input_size"])
    deployed = {name: deploy(model, "auto", input_shape=shape) for name, (model, _, _) in runs.items()}
    timings = interleaved({n: inference_fn(m, torch.randn(shape)) for n, m in deployed.items()}, repeats=15)
    stats = {}
    for name, (model, _, state) in runs.items():
        counts = profile(model, info["input_size"])
        history = state["history"]
        stats[name] = {
            "params": counts.params,
            "macs": counts.macs,
            "acc": history[-1]["test_acc"],
            "train_ips": sum(r["train_images_per_s"] for r in history) / len(history),
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
            f"{ref['macs'] / s['macs']:.2f}x",
        ]
        for name, s in stats.items()
    ]
    kwargs = config.model_kwargs
    extras = ("batch norm, " if kwargs.get("bn") else "") + (
        f"dropout {kwargs['dropout']}, " if "dropout" in kwargs else ""
    )
    note = (
        f"Fashion-MNIST, width_mult {config.width_mult}, {extras}{config.epochs} epochs, batch {config.batch_size}, "
        f"{config.optimizer} lr {config.lr} ({config.schedule}), seed {config.seed}. Params and MACs per image as "
        "built (1 MAC = 2 FLOPs); inference of the deployed models (`deploy(model, 'auto')`: batch norm folded, "
        f"each low-rank layer factorized or fused, whichever runs faster here) at batch {infer_batch}, median of "
        "15 interleaved runs; speed-up = inference images/s "
        f"over {dense}'s; MAC ratio = {dense}'s MACs / the model's MACs (the speed-up the counts promise)."
    )
    markdown = markdown_table(HEAD, rows) + "\n\n" + note + "\n"
    atomic_write_text(out / "summary.md", markdown)
    plot_curves([out / dense, out / lowrank], out / "curves.png")
    return rows, format_table(HEAD, rows) + "\n\n" + note
