"""The main job behind ``make demo``: a dense model and its low-rank twin, trained and compared.

Trains both on Fashion-MNIST with the same recipe, then measures them with :func:`lowrankcnn.measure.measure`
(the deployed models timed interleaved in this process) and reports one :class:`DemoRow` per model: params,
MACs, test accuracy, training images/s, inference images/s, the speed-up over the dense twin and the MAC
ratio. :class:`Summary` renders them as a table and writes ``OUT/summary.md``; the training curves go to
``OUT/curves.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .measure import measure
from .plot import plot_curves
from .tables import format_table, markdown_table
from .timing import cpu_snapshot, load_average, noise_warning, other_cores
from .training import TrainConfig, load_trained_model
from .training.reuse import train_or_reuse
from .utils import atomic_write_text

HEAD = ("model", "params", "MACs", "test acc", "train img/s", "infer img/s", "speed-up", "MAC ratio")
INFER_REPEATS = 15
_FORMAT_NAMES = {"contiguous": "NCHW", "channels_last": "channels-last"}


@dataclass(frozen=True)
class DemoRow:
    """One trained model of the comparison. Params and MACs per image as built (1 MAC = 2 FLOPs);
    ``speedup`` and ``mac_ratio`` are against the dense model (its inference images/s, its MACs)."""

    model: str
    params: int
    macs: int
    test_acc: float
    """Of the last epoch, as a fraction."""
    train_images_per_s: float
    """Mean over the epochs."""
    infer_images_per_s: float
    speedup: float
    mac_ratio: float

    def cells(self) -> list[str]:
        return [
            self.model,
            f"{self.params:,}",
            f"{self.macs:,}",
            f"{100 * self.test_acc:.2f}%",
            f"{self.train_images_per_s:.0f}",
            f"{self.infer_images_per_s:.0f}",
            f"{self.speedup:.2f}x",
            f"{self.mac_ratio:.2f}x",
        ]


@dataclass(frozen=True)
class Summary:
    """The comparison: ``rows`` (dense model first) and ``note``, the recipe and conventions in words."""

    rows: list[DemoRow]
    note: str

    def text(self) -> str:
        return format_table(HEAD, [r.cells() for r in self.rows]) + "\n\n" + self.note

    def markdown(self) -> str:
        return markdown_table(HEAD, [r.cells() for r in self.rows]) + "\n\n" + self.note + "\n"


def compare(
    dense: str,
    lowrank: str,
    base: TrainConfig,
    out: str | Path,
    infer_batch: int = 256,
    progress: bool | None = None,
    overwrite: bool = False,
) -> Summary:
    """Train ``dense`` and ``lowrank`` with ``base``'s recipe under ``out/<model>``; return :func:`summarize`'s result.

    Finished runs with the same settings are reused and unfinished ones resumed (``train_or_reuse``), so
    running it twice only redoes the summary; runs made with other settings are refused unless ``overwrite``.
    """
    out = Path(out)
    for name in (dense, lowrank):
        train_or_reuse(replace(base, model=name, out=str(out / name)), overwrite=overwrite, progress=progress)
    return summarize(dense, lowrank, out, infer_batch)


def summarize(dense: str, lowrank: str, out: str | Path, infer_batch: int = 256) -> Summary:
    """The comparison of the two finished runs ``out/<model>`` (their ``last.pt``).

    Inference is timed on the deployed models as :func:`lowrankcnn.deploy` gives them by default (batch norm
    folded, each low-rank layer and the memory format in whichever form runs faster here), interleaved in this
    process; a noisy measurement says so in the note. Writes
    ``out/summary.md`` and ``out/curves.png``.
    """
    out = Path(out)
    runs = {name: load_trained_model(out / name / "last.pt") for name in (dense, lowrank)}
    config = runs[dense][1]
    info = runs[dense][2]["data_info"]
    shape = (infer_batch, info["in_chans"], info["input_size"], info["input_size"])
    models = {name: model for name, (model, _, _) in runs.items()}
    load_before, before = load_average(), cpu_snapshot()
    measured = measure(models, shape, dense, count="given", repeats=INFER_REPEATS)  # the defaults: fastest form
    reported = {n: m.timing for n, m in measured.items()}  # the variants reported, not the slower ones dropped
    noise = noise_warning(reported, load_before, other_cores(before, cpu_snapshot()))
    rows = []
    for name, (_, _, state) in runs.items():
        m, history = measured[name], state["history"]
        assert m.speedup is not None and m.mac_ratio is not None  # measured against the dense model
        rows.append(
            DemoRow(
                model=name,
                params=m.params,
                macs=m.macs,
                test_acc=history[-1]["test_acc"],
                train_images_per_s=sum(r["train_images_per_s"] for r in history) / len(history),
                infer_images_per_s=m.images_per_s,
                speedup=m.speedup,
                mac_ratio=m.mac_ratio,
            )
        )
    kwargs = config.model_kwargs
    extras = ("batch norm, " if kwargs.get("bn") else "") + (
        f"dropout {kwargs['dropout']}, " if "dropout" in kwargs else ""
    )
    note = (
        f"Fashion-MNIST, width_mult {config.width_mult}, {extras}{config.epochs} epochs, batch {config.batch_size}, "
        f"{config.optimizer} lr {config.lr} ({config.schedule}), seed {config.seed}. Params and MACs per image as "
        "built (1 MAC = 2 FLOPs); inference of the deployed models as `deploy(model)` gives them by default (batch "
        "norm folded, each low-rank layer factorized or fused and the memory format, whichever runs faster here: "
        + ", ".join(f"{n} {_FORMAT_NAMES[m.memory_format]}" for n, m in measured.items())
        + f") at batch {infer_batch}, median of {INFER_REPEATS} interleaved runs; speed-up = inference images/s "
        f"over {dense}'s; MAC ratio = {dense}'s MACs / the model's MACs (the speed-up the counts promise)."
        + (f" Warning: {noise}." if noise else "")
    )
    summary = Summary(rows, note)
    atomic_write_text(out / "summary.md", summary.markdown())
    plot_curves([out / dense, out / lowrank], out / "curves.png")
    return summary
