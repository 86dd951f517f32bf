"""``lowrankcnn eval`` and ``lowrankcnn rank``: a trained checkpoint on a test set."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from ..analysis import output_rank, rank_table
from ..data import DATASETS, DataBundle, build_data
from ..evaluate import check_data_matches, evaluate, most_confused
from ..training import TrainConfig, load_trained_model
from ..utils import resolve_device
from .common import add_command, device_parent, positive_int, set_threads, threads_parent, trust_parent


def _trained_model_and_test_data(
    args: argparse.Namespace, batch_size: int, subset: int | None, workers: int
) -> tuple[torch.nn.Module, TrainConfig, dict, DataBundle]:
    """The checkpoint's model and the test set it is evaluated on (``--data`` or the one it was trained on).

    Only the test split is built; its classes must be the ones the checkpoint was trained on.
    """
    set_threads(args.threads)
    model, config, state = load_trained_model(args.checkpoint, trust_factory=args.trust_factory)
    info = state["data_info"]
    name = args.data or config.data
    data = build_data(
        name,
        args.data_dir or (config.data_dir if not args.data else None),
        batch_size=batch_size,
        augment=False,
        test_subset=subset,
        workers=workers,
        input_size=info["input_size"],
        in_chans=info["in_chans"] if name == "imagefolder" else None,  # decoded as the model was trained
        splits=("test",),
    )
    where = f"{data.name} ({args.data_dir})" if args.data_dir else data.name
    check_data_matches(
        info,
        data.num_classes,
        data.in_chans,
        data.class_names,
        where,
        args.checkpoint,
        param="data_dir" if args.data_dir else "data",
        ignore_class_names=args.ignore_class_names,
    )
    return model, config, state, data


def cmd_eval(args: argparse.Namespace) -> None:
    from ..plot import figure_format, plot_confusion

    if args.confusion:
        figure_format(args.confusion, param="confusion")  # before the evaluation, not after
    device = resolve_device(args.device)  # before any work
    model, config, state, data = _trained_model_and_test_data(args, args.batch_size, args.test_subset, args.workers)
    result = evaluate(model.to(device), data.test, data.num_classes, device=device, confusion=bool(args.confusion))
    print(
        f"{config.model_label} (epoch {state['epoch']}) on {data.name} test, {result.n} images: "
        f"top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  loss {result.loss:.4f}"
    )
    if args.confusion:
        plot_confusion(result.confusion, data.class_names, args.confusion, f"{config.model_label} on {data.name}")
        print(f"confusion matrix written to {args.confusion}")
        pairs = most_confused(result.confusion, data.class_names, 10)
        if pairs:
            print("most confused (true -> predicted: images, share of the true class):")
            for p in pairs:
                print(f"  {p.true} -> {p.predicted}: {p.count} ({100 * p.rate:.1f}%)")


def cmd_rank(args: argparse.Namespace) -> None:
    model, config, state, data = _trained_model_and_test_data(args, args.images, args.images, 0)
    images = torch.cat([x for x, _ in data.test])
    rows = output_rank(model, images)
    print(
        f"{config.model_label} (epoch {state['epoch']}): output ranks on {images.shape[0]} {data.name} test images "
        f"({rows[0].positions if rows else 0} positions at the first layer)"
    )
    print(rank_table(rows))


MAX_RANK_IMAGES = 1024
"""Most images ``rank`` takes (its float64 SVDs grow with images x positions)."""
MAX_WORKERS = 64


def int_range(low: int, high: int) -> Callable[[str], int]:
    """argparse type: an integer in ``low..high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value

    return parse


def _checkpoint_data_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--checkpoint", required=True, help="a .pt file (or run directory: its last.pt)")
    p.add_argument("--data", choices=DATASETS, help="dataset (default: the one it was trained on)")
    p.add_argument("--data-dir", help="the data set's folder (default: the training run's)")
    p.add_argument(
        "--ignore-class-names",
        action="store_true",
        help="accept a data set whose class names differ from training's (labels matched by index)",
    )
    return p


def register(sub: argparse._SubParsersAction) -> None:
    parents = [_checkpoint_data_parent(), threads_parent(), trust_parent()]
    p = add_command(sub, "eval", cmd_eval, "top-1/top-5 of a checkpoint on a test set", [*parents, device_parent()])
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--test-subset", type=positive_int, help="evaluate on the first N test images")
    p.add_argument(
        "--workers", type=int_range(0, MAX_WORKERS), default=2, help="image-folder decoding processes (default 2)"
    )
    p.add_argument(
        "--confusion",
        metavar="PNG",
        help="write a confusion-matrix image (format from the suffix) and print the most-confused pairs",
    )
    p = add_command(
        sub, "rank", cmd_rank, "numerical rank of every conv layer's output next to the rank bounds", parents
    )
    p.add_argument(
        "--images",
        type=int_range(1, MAX_RANK_IMAGES),
        default=32,
        help=f"test images to use (1..{MAX_RANK_IMAGES}, default 32)",
    )
