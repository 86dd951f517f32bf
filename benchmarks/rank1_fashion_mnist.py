"""Rank-1 CNNs on full Fashion-MNIST (issue 4's experiments).

1. Same budget and recipe for Kim et al.'s CIFAR net (Fashion-MNIST zero-padded to 32x32):
   dense vs rank-1 "factors" vs rank-1 "projected" vs consecutive 1-D layers. Table: test accuracy,
   params, MACs (assembled and decomposed), training images/s, and inference images/s of the
   deployed form at batch 64 (all deployed models timed interleaved in this process).
2. Trainability: rank-1 vs consecutive 1-D without batch norm.

    python benchmarks/rank1_fashion_mnist.py --width-mult 0.25 --epochs 6

Targets: rank-1 training <= 1.3x the dense twin's time per epoch; deployed rank-1 inference at
batch 64 >= 3x faster than the dense twin; rank-1 accuracy within 1.5 pp of dense.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from _common import base_config, made_by

from lowrankcnn.bench import MEMORY_FORMATS, measure
from lowrankcnn.plot import plot_curves
from lowrankcnn.profiling import profile
from lowrankcnn.tables import format_table, markdown_table
from lowrankcnn.training import TrainConfig, Trainer, load_trained_model
from lowrankcnn.utils import atomic_write_text

VARIANTS = {  # label -> (model, model kwargs); "rank-1" = the authors' shared spatial vectors
    "dense": ("kim_dense_cifar10", {}),
    "rank-1 factors": ("kim_rank1_cifar10", {"rank1_scheme": "factors"}),
    "rank-1 projected": ("kim_rank1_cifar10", {"rank1_scheme": "projected"}),
    "consecutive 1-D": ("kim_flat_cifar10", {}),
    "rank-1 factors, per-filter": ("kim_rank1_cifar10", {"rank1_scheme": "factors", "shared_spatial": False}),
    "rank-1 projected, per-filter": ("kim_rank1_cifar10", {"rank1_scheme": "projected", "shared_spatial": False}),
}
DEFAULT_VARIANTS = ["dense", "rank-1 factors", "rank-1 projected", "consecutive 1-D"]
NO_BN = {"rank-1 factors, no BN": VARIANTS["rank-1 factors"], "consecutive 1-D, no BN": VARIANTS["consecutive 1-D"]}


@dataclass
class Run:
    """A finished run: the trained model (eval mode), its per-epoch history and its directory."""

    model: torch.nn.Module
    history: list[dict]
    run_dir: Path


def train_all(
    variants: dict, base: TrainConfig, runs: Path, extra: dict | None = None, train: bool = True
) -> dict[str, Run]:
    """Train every variant and load the finished runs from ``runs/<label>``.

    A variant whose ``last.pt`` already holds a finished run of the same config is not retrained (so
    an interrupted benchmark, or one with variants added, trains only what is missing); ``train=False``
    trains nothing.
    """
    finished = {}
    for label, (model, kwargs) in variants.items():
        config = replace(
            base,
            model=model,
            out=str(runs / label.replace(" ", "_").replace(",", "")),
            model_kwargs={**kwargs, **(extra or {})},
        )
        last = Path(config.out) / "last.pt"
        loaded = load_trained_model(last) if last.exists() else None
        if train and not (loaded and loaded[1] == config and loaded[2]["epoch"] == config.epochs):
            print(f"== {label}: {model} {config.model_kwargs}", flush=True)
            Trainer(config).fit()
            loaded = None
        trained, done, state = loaded or load_trained_model(last)
        if done != config:
            print(f"warning: {last} was trained with a different config than this command's", flush=True)
        finished[label] = Run(trained, state["history"], Path(config.out))
    return finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width-mult", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout after every pool and FC (authors: 0.5)")
    parser.add_argument("--project-every", type=int, default=1, help="projected scheme: project every N units")
    parser.add_argument("--project-unit", choices=("epoch", "step"), default="epoch")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=DEFAULT_VARIANTS,
        metavar="LABEL",
        help=f"models to compare, from {list(VARIANTS)} (dense is always included)",
    )
    parser.add_argument(
        "--no-bn-epochs", type=int, help="epochs of the no-batch-norm runs (default: --epochs; 0 skips them)"
    )
    parser.add_argument("--train-subset", type=int, help="use the first N training images (a quick check)")
    parser.add_argument("--test-subset", type=int, help="use the first N test images (a quick check)")
    parser.add_argument("--runs", default="runs/bench_rank1")
    parser.add_argument("--results", default="results/rank1_fashion_mnist")
    parser.add_argument(
        "--summarize-only", action="store_true", help="no training: rebuild the tables from the finished runs"
    )
    args = parser.parse_args()
    runs, results = Path(args.runs), Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    base = base_config(args, input_size=32)
    train = not args.summarize_only
    labels = ["dense", *[v for v in args.variants if v != "dense"]]
    variants = {label: VARIANTS[label] for label in labels}
    finished = train_all(variants, base, runs, extra={"dropout": args.dropout}, train=train)

    # Every model deployed and timed in both memory formats in one interleaved run; the faster format counts.
    models = {label: run.model for label, run in finished.items()}
    measured = measure(
        models, (64, 1, 32, 32), "dense", deploy="auto", memory_formats=MEMORY_FORMATS, count="given", repeats=20
    )
    dense_epoch = statistics.median(r["epoch_time_s"] for r in finished["dense"].history)
    rows, stats = [], {}
    for label, run in finished.items():
        m = measured[label]  # params and MACs of the trained model, rank-1 layers decomposed
        assembled = profile(run.model, 32, rank1_form="assembled").macs
        epoch_s = statistics.median(r["epoch_time_s"] for r in run.history)
        train_ips = statistics.median(r["train_images_per_s"] for r in run.history)
        assert m.speedup is not None
        stats[label] = (run.history[-1]["test_acc"], epoch_s / dense_epoch, m.speedup)
        rows.append(
            [
                label,
                f"{100 * run.history[-1]['test_acc']:.2f}%",
                f"{m.params:,}",
                f"{assembled:,}",
                f"{m.macs:,}",
                f"{train_ips:.0f}",
                f"{epoch_s / dense_epoch:.2f}x",
                f"{m.images_per_s:.0f}",
                f"{m.speedup:.2f}x",
                f"{100 * m.timing.spread:.0f}%",
            ]
        )
    head = (
        "model",
        "test acc",
        "params",
        "MACs assembled",
        "MACs decomposed",
        "train img/s",
        "epoch time vs dense",
        "deployed infer img/s (b64)",
        "infer speed-up",
        "IQR",
    )
    print(format_table(head, rows))

    plot_curves([t.run_dir for t in finished.values()], results / "curves.png", labels=list(finished))
    nobn_epochs = args.epochs if args.no_bn_epochs is None else args.no_bn_epochs
    nobn_section = ""
    if nobn_epochs:
        nobn_base = replace(base, epochs=nobn_epochs)
        nobn = train_all(NO_BN, nobn_base, runs, extra={"bn": False, "dropout": args.dropout}, train=train)
        nobn_rows = [[label] + [f"{100 * r['test_acc']:.2f}%" for r in t.history] for label, t in nobn.items()]
        nobn_head = ("model (no batch norm)", *[f"epoch {i + 1}" for i in range(nobn_epochs)])
        print(format_table(nobn_head, nobn_rows))
        plot_curves([t.run_dir for t in nobn.values()], results / "curves_no_bn.png", labels=list(nobn))
        nobn_section = (
            f"## Trainability without batch norm\n\n{markdown_table(nobn_head, nobn_rows)}\n\n"
            "![curves](curves_no_bn.png)\n"
        )

    acc_dense = stats["dense"][0]
    verdicts = []
    for label in (label for label in finished if label.startswith("rank-1")):
        acc, epoch_ratio, speedup = stats[label]
        verdicts += [
            f"- {label}: epoch time {epoch_ratio:.2f}x dense (target <= 1.3x): "
            f"{'met' if epoch_ratio <= 1.3 else 'MISSED'}",
            f"- {label}: deployed inference {speedup:.2f}x dense at batch 64 (target >= 3x): "
            f"{'met' if speedup >= 3 else 'MISSED'}",
            f"- {label}: accuracy {100 * (acc - acc_dense):+.2f} pp vs dense (target within 1.5 pp): "
            f"{'met' if acc_dense - acc <= 0.015 else 'MISSED'}",
        ]
    data = f"the first {args.train_subset} images of Fashion-MNIST" if args.train_subset else "full Fashion-MNIST"
    recipe = (
        'Kim et al.\'s CIFAR net ("rank-1": the authors\' shared spatial vectors; "per-filter": one vertical and '
        f"one horizontal vector per filter) at width_mult {args.width_mult} on {data} zero-padded to "
        "32x32; "
        f"{args.epochs} epochs, batch {args.batch_size}, {args.optimizer} lr {args.lr} (cosine), weight decay "
        f"{args.weight_decay}, dropout {args.dropout}, random crops + flips, seed {args.seed}; training "
        "images/s and epoch times are medians over epochs (robust to other jobs on the machine); projected scheme "
        f"re-projected every {args.project_every} {args.project_unit}(s) and after the last step; 2-core CPU, fp32. "
        "MACs per image. Inference: deployed models (`lowrankcnn.deploy(model, 'auto')`: batch norm folded where it "
        "follows a conv, each rank-1 layer as 1x1 conv + depthwise 3x3 or as one dense conv, whichever this machine "
        "runs faster), batch 64, median of 20 interleaved runs (IQR = spread), each model in its faster memory "
        "format (NCHW or channels-last NHWC)."
    )
    atomic_write_text(
        results / "README.md",
        f"# Rank-1 CNNs on Fashion-MNIST\n\nMade by:\n\n{made_by(args.summarize_only, 'the tables')}\n\n{recipe}\n\n"
        f"{markdown_table(head, rows)}\n\n" + "\n".join(verdicts) + "\n\n![curves](curves.png)\n\n" + nobn_section,
    )
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
