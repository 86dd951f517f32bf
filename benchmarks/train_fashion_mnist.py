"""Dense vgg11_gmp vs low-rank vgg11_gmp_lr on full Fashion-MNIST (issue 3's accuracy target).

Trains both with the same recipe and prints the comparison table (params, MACs,
test accuracy, training and inference images/s, speed-up, MAC ratio), then
writes it with the curves and per-epoch metrics under ``--results``.

    python benchmarks/train_fashion_mnist.py --epochs 15 --width-mult 0.5 --bn

Targets: dense >= 93.0% test accuracy; low-rank within 0.5 pp with at most 45% of the MACs.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _common import base_config, made_by

from lowrankcnn.demo import Summary, compare, summarize
from lowrankcnn.utils import atomic_write_text


def verdict(summary: Summary) -> str:
    """The issue's three targets, checked on the dense (first) and low-rank (second) rows."""
    dense, low = summary.rows
    dense_acc, gap, mac_fraction = 100 * dense.test_acc, 100 * (dense.test_acc - low.test_acc), 1 / low.mac_ratio
    return (
        f"- dense test accuracy {dense_acc:.2f}% (target >= 93.0%): {'met' if dense_acc >= 93.0 else 'MISSED'}\n"
        f"- low-rank gap {gap:+.2f} pp (target <= 0.5 pp): {'met' if gap <= 0.5 else 'MISSED'}\n"
        f"- low-rank MACs {100 * mac_fraction:.0f}% of dense (target <= 45%): "
        f"{'met' if mac_fraction <= 0.45 else 'MISSED'}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", default="vgg11_gmp")
    parser.add_argument("--lowrank", default="vgg11_gmp_lr")
    parser.add_argument("--width-mult", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--bn", action="store_true", help="batch norm after every conv")
    parser.add_argument("--dropout", type=float, default=None, help="FC dropout (default: the model's 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-subset", type=int, help="use the first N training images (a quick check)")
    parser.add_argument("--test-subset", type=int, help="use the first N test images (a quick check)")
    parser.add_argument("--runs", default="runs/bench_fashion_mnist", help="where checkpoints go (not committed)")
    parser.add_argument("--results", default="results/fashion_mnist_vgg11", help="committed outputs")
    parser.add_argument(
        "--summarize-only", action="store_true", help="no training: rebuild the table from the finished runs in --runs"
    )
    args = parser.parse_args()

    if args.summarize_only:
        summary = summarize(args.dense, args.lowrank, args.runs)
    else:
        kwargs = {"bn": args.bn, **({} if args.dropout is None else {"dropout": args.dropout})}
        summary = compare(args.dense, args.lowrank, base_config(args, model_kwargs=kwargs), args.runs)
    print(summary.text())
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs)
    shutil.copy(runs / "curves.png", results / "curves.png")
    for name in (args.dense, args.lowrank):
        for f in ("metrics.csv", "metrics.jsonl", "config.json"):
            (results / name).mkdir(exist_ok=True)
            shutil.copy(runs / name / f, results / name / f)
    atomic_write_text(
        results / "README.md",
        f"# {args.dense} vs {args.lowrank} on Fashion-MNIST\n\nMade by:\n\n{made_by(args.summarize_only)}\n\n"
        f"{summary.markdown()}\n{verdict(summary)}\n![curves](curves.png)\n",
    )
    print(verdict(summary))


if __name__ == "__main__":
    main()
