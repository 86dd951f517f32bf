"""``lowrankcnn eval`` and ``lowrankcnn rank``: a trained checkpoint on a test set."""

from __future__ import annotations

import argparse

import torch

from ..analysis import output_rank
from ..data import DATASETS, DataBundle, build_data
from ..errors import ConfigError
from ..evaluate import evaluate
from ..tables import format_table
from ..training import TrainConfig, load_trained_model
from .common import add_command, set_threads, threads_parent


def _trained_model_and_test_data(
    args: argparse.Namespace, batch_size: int, subset: int | None, workers: int
) -> tuple[torch.nn.Module, TrainConfig, dict, DataBundle]:
    """The checkpoint's model and the test set it is evaluated on (``--data`` or the one it was trained on)."""
    set_threads(args.threads)
    model, config, state = load_trained_model(args.checkpoint)
    data = build_data(
        args.data or config.data,
        args.data_dir or (config.data_dir if not args.data else None),
        batch_size=batch_size,
        augment=False,
        test_subset=subset,
        workers=workers,
        input_size=config.input_size,
    )
    info = state["data_info"]
    if (data.num_classes, data.in_chans) != (info["num_classes"], info["in_chans"]):
        raise ConfigError(
            f"{args.checkpoint} was trained on {info['name']} ({info['num_classes']} classes, {info['in_chans']} "
            f"channels) but $data {data.name} has {data.num_classes} classes, {data.in_chans} channels"
        )
    return model, config, state, data


def cmd_eval(args: argparse.Namespace) -> None:
    from ..plot import plot_confusion

    model, config, state, data = _trained_model_and_test_data(args, args.batch_size, args.test_subset, args.workers)
    result = evaluate(model, data.test, data.num_classes, confusion=bool(args.confusion))
    print(
        f"{config.model} (epoch {state['epoch']}) on {data.name} test, {result.n} images: "
        f"top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  loss {result.loss:.4f}"
    )
    if args.confusion:
        plot_confusion(result.confusion, data.class_names, args.confusion, f"{config.model} on {data.name}")
        print(f"confusion matrix written to {args.confusion}")


def cmd_rank(args: argparse.Namespace) -> None:
    model, config, state, data = _trained_model_and_test_data(args, args.images, args.images, 0)
    images = torch.cat([x for x, _ in data.test])
    rows = output_rank(model, images)
    head = ("layer", "kind", "C_in", "C_out", "rank H[X]", "rank W", "rank Y", "min(H,W) bound", "paper bound")
    body = [
        [
            r.name,
            r.kind,
            str(r.in_channels),
            str(r.out_channels),
            str(r.input_rank),
            str(r.weight_rank),
            str(r.output_rank),
            f"{r.bound} {'ok' if r.bound_holds else 'VIOLATED'}",
            "-" if r.paper_bound is None else f"{r.paper_bound} {'ok' if r.paper_bound_holds else 'exceeded'}",
        ]
        for r in rows
    ]
    print(
        f"{config.model} (epoch {state['epoch']}): output ranks on {images.shape[0]} {data.name} test images "
        f"({rows[0].positions if rows else 0} positions at the first layer)"
    )
    print(format_table(head, body, left=2))


def _checkpoint_data_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--checkpoint", required=True, help="a .pt file (or run directory: its last.pt)")
    p.add_argument("--data", choices=DATASETS, help="dataset (default: the one it was trained on)")
    p.add_argument("--data-dir")
    return p


def register(sub: argparse._SubParsersAction) -> None:
    parents = [_checkpoint_data_parent(), threads_parent()]
    p = add_command(sub, "eval", cmd_eval, "top-1/top-5 of a checkpoint on a test set", parents)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--test-subset", type=int)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--confusion", metavar="PNG", help="write a confusion-matrix image")
    p = add_command(
        sub, "rank", cmd_rank, "numerical rank of every conv layer's output next to the rank bounds", parents
    )
    p.add_argument("--images", type=int, default=32, help="test images to use (default 32)")
