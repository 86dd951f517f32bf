"""``leaderboard.py report``: accuracy, counts, interleaved timings, Pareto plots and verdicts from finished runs."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lowrankcnn import profile
from lowrankcnn.errors import RunDirectoryError
from lowrankcnn.measure import measure
from lowrankcnn.onnx_runtime import SESSION_CONFIG
from lowrankcnn.tables import markdown_table
from lowrankcnn.timing import cpu_snapshot, noise_warning, other_cores
from lowrankcnn.training import load_trained_model
from lowrankcnn.training.checkpoint import stayed_dense
from lowrankcnn.training.metrics import read_metrics
from lowrankcnn.utils import atomic_write_bytes, atomic_write_text

INFER_BATCH, TRAIN_BATCH, REPEATS = 64, 128, 15
SHAPE = (1, 28, 28)


@dataclass
class Row:
    name: str
    label: str
    accs: dict[int, float]
    """Final test accuracy by seed."""
    params: int
    macs: int
    epoch_s: float
    timing: dict[str, Any]
    stayed_dense: bool = False
    """A low-rank recipe whose rule kept every layer dense (e.g. Cuttlefish's timing): it trained the dense model."""

    @property
    def acc(self) -> float:
        return statistics.mean(self.accs.values())

    @property
    def spread(self) -> float:
        """Max - min test accuracy over the seeds (0 with one seed)."""
        return max(self.accs.values()) - min(self.accs.values())


def _finished_runs(runs: Path, name: str) -> dict[int, Path]:
    """The finished runs of entry ``name`` in ``runs``, by seed."""
    found = {}
    for path in sorted(runs.glob(f"{name}_s*")):
        match = re.fullmatch(rf"{re.escape(name)}_s(\d+)", path.name)
        if not match:
            continue  # sf_s* also matches sf_si_fd_s0
        try:
            config = json.loads((path / "config.json").read_text())
            done = len(read_metrics(path)) >= config["epochs"]
        except (OSError, ValueError, RunDirectoryError):  # a run just started has no metrics yet
            continue
        if done:
            found[int(match.group(1))] = path
    return found


def _time(name: str, model: torch.nn.Module, dense: torch.nn.Module, threads: int | None) -> dict[str, Any]:
    """Inference (torch, deployed by default; onnxruntime) and a training step, each interleaved with dense."""
    if threads:
        torch.set_num_threads(threads)
    models = {"dense": dense} if name == "dense" else {"dense": dense, name: model}
    result: dict[str, Any] = {}
    start = cpu_snapshot()
    timings = {}
    for key, kwargs in {
        "torch": {"input_shape": (INFER_BATCH, *SHAPE)},
        "onnxruntime": {"input_shape": (INFER_BATCH, *SHAPE), "engine": "onnxruntime"},
        "train": {"input_shape": (TRAIN_BATCH, *SHAPE), "train": True, "deploy": "none"},
    }.items():
        measured = measure(models, baseline="dense", repeats=REPEATS, **kwargs)
        m = measured[name]
        result[key] = {"ms": 1000 * m.timing.median, "dense_ms": 1000 * m.baseline_seconds, "speedup": m.speedup}
        # ORT: "onnxruntime factorized" / "onnxruntime dense", the faster whole-model form
        result[key]["form"] = m.variant
        timings.update({(key, k): v.timing for k, v in measured.items()})
    result["noise"] = noise_warning(timings, None, other_cores(start, cpu_snapshot())) or ""
    return result


def _rows(
    entries: Sequence[Any], runs: Path, results: Path, threads: int | None, retime: bool, quick: dict[str, Any]
) -> tuple[list[Row], list[str], list[str]]:
    """One row per entry with a finished run of its settings (``entry.differences``), the entries missing, and notes
    (runs left out for other settings, MACs that differ between seeds). An entry is timed again when its or dense's
    checkpoint, or the timing setup, changed since ``timings.json`` was written, or with ``retime``."""
    cache_path = results / "timings.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() and not retime else {}
    setup = [threads, INFER_BATCH, TRAIN_BATCH, REPEATS, torch.__version__, _ort_setup()]
    rows, missing, notes = [], [], []
    valid = {}
    for entry in entries:
        valid[entry.name] = {}
        for seed, path in _finished_runs(runs, entry.name).items():
            differs = entry.differences(seed, runs, **quick)
            if differs:
                notes.append(f"{path} left out: made with other settings ({'; '.join(differs)}).")
            else:
                valid[entry.name][seed] = path
    if not valid.get("dense"):
        raise SystemExit(f"no finished dense run in {runs}: train it first (leaderboard.py train --only dense)")
    dense_path = valid["dense"][min(valid["dense"])]
    dense_model = load_trained_model(dense_path / "last.pt")[0]
    for entry in entries:
        paths = valid[entry.name]
        if not paths:
            missing.append(entry.name)
            continue
        for path in paths.values():  # the per-run record, committed: settings and per-epoch metrics
            for name in ("config.json", "metrics.csv"):
                atomic_write_text(results / "runs" / path.name / name, (path / name).read_text())
        first = min(paths)
        loaded = {seed: load_trained_model(path / "last.pt") for seed, path in paths.items()}
        counts = {seed: profile(model, SHAPE) for seed, (model, _, _) in loaded.items()}
        macs = {seed: c.macs for seed, c in counts.items()}
        if max(macs.values()) > 1.02 * min(macs.values()):
            notes.append(f"{entry.name}: MACs differ between seeds ({', '.join(f'{m:,}' for m in macs.values())}).")
        histories = {seed: read_metrics(path) for seed, path in paths.items()}
        stamp = [str(p / "last.pt") for p in (paths[first], dense_path)]
        stamp += [(p / "last.pt").stat().st_mtime_ns for p in (paths[first], dense_path)] + setup
        if cache.get(entry.name, {}).get("checkpoints") != stamp:
            print(f"timing {entry.name} against dense", flush=True)
            cache[entry.name] = {**_time(entry.name, loaded[first][0], dense_model, threads), "checkpoints": stamp}
            atomic_write_text(cache_path, json.dumps(cache, indent=2) + "\n")
        rows.append(
            Row(
                entry.name,
                entry.label,
                {seed: history[-1]["test_acc"] for seed, history in histories.items()},
                counts[first].params,
                macs[first],
                statistics.median(r["epoch_time_s"] for r in histories[first]),
                cache[entry.name],
                any(stayed_dense(paths[seed] / "last.pt", state) for seed, (_, _, state) in loaded.items()),
            )
        )
    return rows, missing, notes


def _ort_setup() -> str | None:
    """onnxruntime's version and the timed sessions' config entries (``None``: not installed)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return f"{onnxruntime.__version__} {json.dumps(SESSION_CONFIG, sort_keys=True)}"


def _labels_below(rows: list[Row], x: Callable[[Row], float]) -> set[str]:
    """Entries whose label goes below their point: of two points close together (in the plot's log-x, linear-y
    frame), where the labels would overlap, the lower one's (a label below the upper point would land on the lower
    point's label)."""
    span_x = math.log(max(map(x, rows)) / min(map(x, rows))) or 1.0
    span_y = (max(r.acc for r in rows) - min(r.acc for r in rows)) or 1.0
    above: list[Row] = []
    below = set()
    for r in sorted(rows, key=x):
        near = [o for o in above if math.log(x(r) / x(o)) / span_x < 0.12 and abs(r.acc - o.acc) / span_y < 0.05]
        if near and all(r.acc < o.acc for o in near):
            below.add(r.name)
            continue
        for o in near:  # r is the upper point: the lower ones' labels go below
            above.remove(o)
            below.add(o.name)
        above.append(r)
    return below


def _plots(rows: list[Row], results: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    dense_ms = next(r for r in rows if r.name == "dense").timing["torch"]["ms"]
    for key, xlabel, x in (
        ("macs", "MACs per 28x28 image (millions, log scale)", lambda r: r.macs / 1e6),
        (
            "latency",
            f"deployed CPU latency, ms per batch of {INFER_BATCH} (torch, log scale): dense's, divided by each "
            "entry's speed-up measured side by side with it",
            lambda r: dense_ms / r.timing["torch"]["speedup"],
        ),
    ):
        fig = Figure(figsize=(8, 5.5))
        ax = fig.subplots()
        below = _labels_below(rows, x)
        for r in rows:
            ax.errorbar(
                x(r),
                100 * r.acc,
                yerr=[[100 * (r.acc - min(r.accs.values()))], [100 * (max(r.accs.values()) - r.acc)]],
                fmt="o",
                color="black" if r.name == "dense" else "tab:blue",
                capsize=3,
            )
            offset = (5, -11) if r.name in below else (5, 4)
            ax.annotate(r.name, (x(r), 100 * r.acc), textcoords="offset points", xytext=offset, fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel(xlabel, fontsize=8 if key == "latency" else 10)
        ax.set_ylabel("Fashion-MNIST test accuracy (%)")
        ax.set_title(f"resnet20 leaderboard: accuracy vs {'MACs' if key == 'macs' else 'measured latency'}")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        atomic_write_bytes(results / f"pareto_{key}.png", lambda f, fig=fig: fig.savefig(f, format="png", dpi=120))


TRAINED = 0.5
"""A run that ends below this test accuracy (5x chance on the 10 classes) did not train: what a "trains where X
fails" claim is about, rather than a small gap."""
CLAIMS = (
    ("Ioannou: lr ≈ lr_join", "lr", "lr_join", "equal"),
    ("Ioannou: lr_wfull beats dense", "lr_wfull", "dense", "better"),
    ("Ioannou: from scratch beats post-training decomposition (sf)", "sf", "posttrain_sf", "better"),
    ("Kim: 3-D rank-1 trains where consecutive 1-D fails", "rank1", "consecutive", "trains"),
    ("Pufferfish: warm-up + SVD beats from-scratch low-rank", "pufferfish", "svd", "better"),
    ("Cuttlefish: automatic rank beats fixed rank at equal MACs", "cuttlefish_ranks", "fixed_ranks", "better"),
    ("Khodak: spectral init + Frobenius decay beats the composite init on sf", "sf_si_fd", "sf", "better"),
)


def _verdicts(rows: list[Row]) -> list[str]:
    """One line per claim: the two entries' mean accuracy over the seeds both have (paired), and the verdict."""
    by = {r.name: r for r in rows}
    spreads = [r.spread for r in rows if len(r.accs) > 1]
    noise = max(spreads, default=0.0)
    lines = [
        f"Seed noise: the largest max-min spread of any entry with 2+ seeds is {100 * noise:.2f} pp; a difference "
        "no larger than that is called within noise. Each claim compares the two entries on the seeds both have."
        if spreads
        else "Seed noise: not measured yet (one seed per entry), so no difference below can be called significant."
    ]
    for claim, a, b, kind in CLAIMS:
        if a not in by or b not in by:
            lines.append(f"- **{claim}**: not yet measured ({a if a not in by else b} missing).")
            continue
        dense_form = [n for n in (a, b) if by[n].stayed_dense]
        if dense_form:
            lines.append(f"- **{claim}**: not testable here: {dense_form[0]}'s rule kept every layer dense.")
            continue
        seeds = sorted(set(by[a].accs) & set(by[b].accs))
        if not seeds:
            lines.append(f"- **{claim}**: not yet measured ({a} and {b} share no seed).")
            continue
        acc_a, acc_b = (statistics.mean(by[n].accs[s] for s in seeds) for n in (a, b))
        diff = 100 * (acc_a - acc_b)
        within = abs(diff) <= 100 * noise
        mac = f"MACs {by[a].macs / 1e6:.1f}M vs {by[b].macs / 1e6:.1f}M"
        on = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
        accs = f"{100 * acc_a:.2f}% vs {100 * acc_b:.2f}% on {on} ({diff:+.2f} pp, {mac})"
        one_seed = len(seeds) == 1
        if kind == "trains":  # a failure to train is no small gap: judged without the seed noise
            gap = "one seed" if one_seed else ("within" if within else "beyond") + " seed noise"
            if acc_a < TRAINED:
                verdict = f"not testable here: {a} itself does not train (below {TRAINED:.0%})"
            elif acc_b < TRAINED:
                verdict = f"holds: {b} does not train (below {TRAINED:.0%})"
            else:
                verdict = f"does not hold here: {b} trains too (the {diff:+.2f} pp gap: {gap})"
        elif one_seed or not spreads:
            verdict = "one shared seed: unconfirmed"
        elif kind == "equal":
            verdict = "holds (no difference beyond seed noise)" if within else "does not hold"
        else:
            verdict = "within seed noise" if within else ("holds" if diff > 0 else "does not hold")
        lines.append(f"- **{claim}**: {accs}: {verdict}.")
    return lines


def _front(rows: list[Row], cost: Callable[[Row], float]) -> list[Row]:
    """The Pareto front, cheapest first: each entry more accurate than every entry that costs no more."""
    front: list[Row] = []
    for r in sorted(rows, key=lambda r: (cost(r), -r.acc)):
        if not front or r.acc > front[-1].acc:
            front.append(r)
    return front


def _which_to_pick(rows: list[Row]) -> list[str]:
    """Per budget, the entry to pick: the Pareto fronts of accuracy against MACs and against measured latency."""
    rows = [r for r in rows if not r.stayed_dense]  # the dense model under another name
    lines = ["**Which to pick.** At each budget, the most accurate entry that costs no more (the Pareto front):"]
    for what, cost, unit in (
        ("MACs", lambda r: r.macs, lambda r: f"{r.macs / 1e6:.1f}M MACs"),
        (
            "measured PyTorch latency",
            lambda r: 1 / r.timing["torch"]["speedup"],
            lambda r: f"{r.timing['torch']['speedup']:.2f}x dense's speed",
        ),
    ):
        steps = " → ".join(f"`{r.name}` {100 * r.acc:.2f}% at {unit(r)}" for r in _front(rows, cost))
        lines.append(f"- by {what}: {steps}.")
    lines.append(
        "Every other entry is beaten on both accuracy and cost by one on the front (an entry its rule kept dense is "
        "left out: it is the dense model); a step of the front smaller than the seed noise above is not a real "
        "difference."
    )
    return lines


def _goal(rows: list[Row]) -> str:
    dense = next(r for r in rows if r.name == "dense")
    ok = [
        r
        for r in rows
        if r.name != "dense"
        and dense.acc - r.acc <= 0.003
        and r.macs <= dense.macs / 3
        and (r.timing["torch"]["speedup"] or 0) >= 2.0
    ]
    if ok:
        best = max(ok, key=lambda r: r.acc)
        return (
            f"Goal met by **{best.name}**: {100 * best.acc:.2f}% vs dense {100 * dense.acc:.2f}%, "
            f"{dense.macs / best.macs:.2f}x fewer MACs, {best.timing['torch']['speedup']:.2f}x faster."
        )
    return (
        "Goal (within 0.3 pp of dense at <= 1/3 of its MACs and >= 2x its measured CPU speed) not met by any "
        "entry; see the table for the closest."
    )


def report(
    entries: Sequence[Any],
    runs: Path,
    results: Path,
    command: str,
    threads: int | None,
    recipe: str,
    retime: bool = False,
    quick: dict[str, Any] | None = None,
) -> None:
    """Write ``results/README.md`` (table, verdicts, picks), the plots and ``timings.json`` from the finished runs
    (``quick``: the subsets of a quick check's runs)."""
    results.mkdir(parents=True, exist_ok=True)
    rows, missing, notes = _rows(entries, runs, results, threads, retime, quick or {})
    dense = next(r for r in rows if r.name == "dense")
    head = (
        "entry",
        "method",
        "test acc",
        "seeds",
        "params",
        "MACs",
        "MAC ratio",
        "torch x",
        "ORT x",
        "train x",
        "s/epoch",
    )
    body = [
        [
            r.name,
            r.label + (" (kept dense)" if r.stayed_dense else ""),
            f"{100 * r.acc:.2f}%" + (f" ±{100 * r.spread / 2:.2f}" if len(r.accs) > 1 else ""),
            str(len(r.accs)),
            f"{r.params:,}",
            f"{r.macs:,}",
            f"{dense.macs / r.macs:.2f}x",
            f"{r.timing['torch']['speedup']:.2f}x",
            f"{r.timing['onnxruntime']['speedup']:.2f}x",
            f"{r.timing['train']['speedup']:.2f}x",
            f"{r.epoch_s:.0f}",
        ]
        for r in sorted(rows, key=lambda r: -r.acc)
    ]
    table = markdown_table(head, body)
    _plots(rows, results)
    text = "\n".join(
        [
            "# Low-rank leaderboard: resnet20 on Fashion-MNIST",
            "",
            f"Recipe: {recipe}.",
            "",
            "Trained by (resumable; a finished run with the same settings is reused):",
            "",
            "```sh\npython benchmarks/leaderboard.py train --threads 1 &   # two workers share the plan\n"
            "python benchmarks/leaderboard.py train --threads 1 &\n```",
            "",
            "Reported by (timings interleaved with the dense model, on a quiet machine):",
            "",
            f"```sh\n{command}\n```",
            "",
            "Columns: test accuracy after the last epoch (mean, ± half the max-min spread over seeds); params and "
            "MACs per 28x28 image (1 MAC = 2 FLOPs) of the trained model; MAC ratio = dense MACs / entry MACs; "
            "torch x, ORT x: "
            f"deployed inference speed-up over dense at batch {INFER_BATCH} in PyTorch (`deploy` auto) and onnxruntime "
            f"(the faster whole-model form), train x: training-step speed-up at batch {TRAIN_BATCH}, each median of "
            f"{REPEATS} interleaved runs on this 2-core CPU; s/epoch: wall-clock of the run's epochs (median), under "
            "its own thread count and whatever else ran: not comparable across entries. Each run's settings and "
            "per-epoch metrics are in [`runs/`](runs/).",
            "",
            table,
            "",
            *_verdicts(rows),
            "",
            *_which_to_pick(rows),
            "",
            _goal(rows),
            "",
            *[f"Timing warning, {r.name}: {r.timing['noise']}." for r in rows if r.timing.get("noise")],
            "",
            *([f"Not finished yet: {', '.join(missing)}.", ""] if missing else []),
            *([*notes, ""] if notes else []),
            "![accuracy vs MACs](pareto_macs.png)",
            "",
            "![accuracy vs latency](pareto_latency.png)",
            "",
        ]
    )
    atomic_write_text(results / "README.md", text)
    print(text)
