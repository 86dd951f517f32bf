"""Command-line interface: ``lowrankcnn <command> ...`` (also ``python -m lowrankcnn``)."""

from __future__ import annotations

import argparse
import ast
import json
import signal
import sys
from collections.abc import Callable, Sequence

import torch

from .analysis import output_rank
from .bench import DEPLOY_CHOICES, BenchSettings, bench, dense_twin
from .data import DATASETS, DataBundle, build_data
from .demo import compare
from .deploy import TARGETS, deploy
from .distributed import default_threads
from .evaluate import evaluate
from .export import FORMATS, export_model, onnx_max_abs_diff, torchscript_max_abs_diff
from .models import create_model, list_models, model_info
from .plot import plot_confusion, plot_curves
from .profile import ProfileResult, profile
from .tables import format_table
from .training import OPTIMIZERS, SCHEDULES, TrainConfig, Trainer, TrainingDiverged, load_trained_model


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _build_meta(name: str, args: argparse.Namespace) -> torch.nn.Module:
    """The model on the meta device: shapes only, nothing allocated or computed."""
    with torch.device("meta"):
        return create_model(name, num_classes=args.num_classes, in_chans=args.in_chans, width_mult=args.width_mult)


def _profile_model(name: str, args: argparse.Namespace, convention: str, training: bool | None = None) -> ProfileResult:
    size = args.input_size or model_info(name).input_size
    training = args.training if training is None else training
    return profile(_build_meta(name, args), size, convention=convention, training=training, rank1_form=args.rank1_form)


def cmd_profile(args: argparse.Namespace) -> None:
    result = _profile_model(args.model, args, args.convention)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.table())


def cmd_models(args: argparse.Namespace) -> None:
    names = list_models(args.pattern)
    if not names:
        raise CLIError(f"no model matches {args.pattern!r}; run `lowrankcnn models` to list them all")
    rows = []
    for name in names:
        info = model_info(name)
        result = _profile_model(name, args, "standard")
        published = info.published.get("macs")
        native = (args.input_size or info.input_size) == info.input_size and args.width_mult == 1.0
        if published is not None and native and args.num_classes in (None, info.num_classes):
            comparable = _profile_model(name, args, "paper", training=info.published_in_training).macs
        else:
            published = comparable = None
        rows.append(
            {
                "model": name,
                "input_size": result.input_size[-1],
                "params": result.params,
                "macs": result.macs,
                "paper_convention_macs": comparable,
                "published_macs": published,
                "vs_published": None if published is None else comparable / published - 1.0,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    head = ("model", "input", "params", "MACs", "paper-convention MACs", "published MACs", "vs published")
    body = [
        (
            r["model"],
            str(r["input_size"]),
            f"{r['params']:,}",
            f"{r['macs']:,}",
            *(
                ("-", "-", "")
                if r["published_macs"] is None
                else (
                    f"{r['paper_convention_macs']:,}",
                    f"{r['published_macs']:,}",
                    "exact" if r["vs_published"] == 0 else f"{100 * r['vs_published']:+.1f}%",
                )
            ),
        )
        for r in rows
    ]
    print(format_table(head, body, left=1, rules=False))


def _model_kwarg(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(KEY, value)``; the value is a Python literal (``False``, ``0.3``, ``(1, 2)``) or a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. shared_spatial=False), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _train_config(args: argparse.Namespace) -> TrainConfig:
    model_kwargs: dict[str, object] = dict(args.model_kwargs)
    if args.dropout is not None:
        model_kwargs["dropout"] = args.dropout
    if args.bn:
        model_kwargs["bn"] = True
    if args.rank1_scheme:
        model_kwargs["rank1_scheme"] = args.rank1_scheme
    return TrainConfig(
        model=args.model or "",
        out=args.out,
        data=args.data,
        data_dir=args.data_dir,
        width_mult=args.width_mult,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        patience=args.patience,
        label_smoothing=args.label_smoothing,
        channels_last=args.channels_last,
        augment=not args.no_augment,
        seed=args.seed,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        input_size=args.input_size,
        workers=args.workers,
        device=args.device,
        project_every=args.project_every,
        project_unit=args.project_unit,
        model_kwargs=model_kwargs,
    )


def _set_threads(args: argparse.Namespace) -> None:
    threads = args.threads or default_threads()
    if threads:
        torch.set_num_threads(threads)


def cmd_train(args: argparse.Namespace) -> None:
    _set_threads(args)
    if not (args.model or args.resume):
        raise CLIError("give --model NAME (or --resume RUN_DIR to continue a run)")
    args.out = args.resume or args.out or f"runs/{args.model}"
    trainer = Trainer(_train_config(args), resume=bool(args.resume), progress=not args.no_progress)
    if args.resume and trainer.epoch >= trainer.config.epochs:
        if trainer.dist.is_main:
            print(f"{args.resume} already finished its {trainer.config.epochs} epochs; nothing to resume")
        return
    if args.resume and trainer.dist.is_main:
        print(
            f"resuming {trainer.config.model} in {args.resume} after epoch {trainer.epoch} "
            "(with the configuration saved there)"
        )
    history = trainer.fit()
    if trainer.dist.is_main and history:
        best = max(r["test_acc"] for r in history)
        print(
            f"done: {trainer.config.model}, {len(history)} epochs, final test acc {history[-1]['test_acc']:.4f}, "
            f"best {best:.4f}; checkpoints in {trainer.run_dir}"
        )


def _trained_model_and_test_data(
    args: argparse.Namespace, batch_size: int, subset: int | None, workers: int
) -> tuple[torch.nn.Module, TrainConfig, dict, DataBundle]:
    """The checkpoint's model and the test set it is evaluated on (``--data`` or the one it was trained on)."""
    _set_threads(args)
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
        raise CLIError(
            f"{args.checkpoint} was trained on {info['name']} ({info['num_classes']} classes, {info['in_chans']} "
            f"channels) but --data {data.name} has {data.num_classes} classes, {data.in_chans} channels"
        )
    return model, config, state, data


def cmd_eval(args: argparse.Namespace) -> None:
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


def cmd_export(args: argparse.Namespace) -> None:
    _set_threads(args)
    model, config, state = load_trained_model(args.checkpoint)
    info = state["data_info"]
    size = args.input_size or info["input_size"]
    if args.format == "onnx" and args.channels_last:
        raise CLIError("ONNX has no memory format; --channels-last applies to --format torchscript only")
    deployed = deploy(
        model, args.deploy, channels_last=args.channels_last, input_shape=(1, info["in_chans"], size, size)
    )
    example = torch.randn(2, info["in_chans"], size, size)
    if args.channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    path = export_model(deployed, example, args.out, args.format)
    check = torch.randn(3, info["in_chans"], size, size)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = deployed(check)
    diff = (onnx_max_abs_diff if args.format == "onnx" else torchscript_max_abs_diff)(path, check, expected)
    scale = float(expected.abs().max())
    print(
        f"{config.model} (epoch {state['epoch']}, deploy {args.deploy}) exported to {path} as {args.format}: "
        f"input (N, {info['in_chans']}, {size}, {size}); max |difference| vs PyTorch on random inputs {diff:.2e} "
        f"(outputs up to {scale:.2f})"
    )
    if diff > 1e-3 * max(1.0, scale):
        raise CLIError(f"the exported model disagrees with PyTorch (max |difference| {diff:.2e}); do not use {path}")


def cmd_bench(args: argparse.Namespace) -> None:
    _set_threads(args)
    baseline = args.baseline if args.baseline != "none" else None
    if args.baseline is None:
        baseline = dense_twin(args.model)
    settings = BenchSettings(
        input_size=args.input_size,
        batch_size=args.batch_size,
        train=args.train,
        deploy=args.deploy or ("none" if args.train else "factorized"),
        channels_last=args.channels_last,
        compile=args.compile,
        width_mult=args.width_mult,
        num_classes=args.num_classes,
        in_chans=args.in_chans,
        repeats=args.repeats,
        warmup=args.warmup,
    )
    result = bench(args.model, baseline, settings)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())


def cmd_plot(args: argparse.Namespace) -> None:
    plot_curves(args.runs, args.out)
    print(f"curves of {len(args.runs)} run(s) written to {args.out}")


def cmd_demo(args: argparse.Namespace) -> None:
    _set_threads(args)
    base = TrainConfig(
        model="",
        out=args.out,
        data="fashion-mnist",
        data_dir=args.data_dir,
        width_mult=args.width_mult,
        epochs=args.epochs,
        batch_size=128,
        lr=args.lr,
        train_subset=args.train_subset,
        seed=args.seed,
        model_kwargs={"bn": not args.no_bn, "dropout": args.dropout},
    )
    _, table = compare(args.dense, args.lowrank, base, args.out, progress=not args.no_progress)
    print(table)
    print(f"\nwritten: {args.out}/summary.md, {args.out}/curves.png")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-size", type=int, default=None, help="square input size (default: the model's native size)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default: the model's native count)")
    p.add_argument("--in-chans", type=int, default=None, help="input channels (default: the model's native count)")
    p.add_argument("--width-mult", type=float, default=1.0, help="channel width multiplier (default 1.0)")
    p.add_argument("--training", action="store_true", help="count training-only parts (GoogLeNet's auxiliary heads)")
    p.add_argument(
        "--rank1-form",
        choices=("decomposed", "assembled"),
        default="decomposed",
        help="count rank-1 layers as deployed (1-D chain, default) or as trained (assembled 3-D)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowrankcnn", description="Low-rank CNNs: model zoo, counting, training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("profile", help="per-layer parameters and MACs of a model")
    p.add_argument("model", help="registry name, e.g. vgg11_gmp_lr")
    _add_model_args(p)
    p.add_argument(
        "--convention",
        choices=("standard", "paper"),
        default="standard",
        help="'paper' adds one MAC per bias, as the published tables do",
    )
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "models",
        help="list models with params and MACs (standard convention, inference) at native input size, "
        "next to the published figures (paper convention, training-only heads included where the paper did)",
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'vgg11*'")
    _add_model_args(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train a zoo model from scratch (torchrun-aware)")
    p.add_argument("--model", help="registry name, e.g. vgg11_gmp_lr")
    p.add_argument("--data", default="fashion-mnist", choices=DATASETS, help="dataset (default fashion-mnist)")
    p.add_argument(
        "--data-dir",
        help="dataset folder (fashion-mnist default: $LOWRANKCNN_FASHION_MNIST or the "
        "Debian package's /usr/share/datasets/fashion-mnist)",
    )
    p.add_argument("--out", help="run directory (default runs/MODEL)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128, help="global batch size (split over torchrun ranks)")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="cosine",
        help="cosine; step (/10 at 50%% and 75%%); inverse: lr0/(1+lr0*wd*t) with /10 on plateau",
    )
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--patience", type=int, default=2, help="plateau epochs before an inverse-schedule drop")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=None, help="override the model's dropout")
    p.add_argument("--bn", action="store_true", help="batch norm after every conv (VGG and NiN; off in the papers)")
    p.add_argument(
        "--rank1-scheme",
        choices=("factors", "projected"),
        help="rank-1 models: train the 1-D factors (default) or the 3-D filters with re-projection",
    )
    p.add_argument(
        "--project-every",
        type=int,
        default=1,
        help="projected scheme: re-project every N epochs (or steps with --project-unit step)",
    )
    p.add_argument("--project-unit", choices=("epoch", "step"), default="epoch")
    p.add_argument(
        "--model-kwargs",
        nargs="+",
        type=_model_kwarg,
        default=[],
        metavar="KEY=VALUE",
        help="more keyword arguments for create_model, e.g. shared_spatial=False (values are Python literals)",
    )
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-augment", action="store_true", help="no random crops / flips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int, help="use the first N training images")
    p.add_argument("--test-subset", type=int, help="use the first N test images")
    p.add_argument(
        "--input-size",
        type=int,
        help="image size: imagefolder crop (default 224); fashion-mnist/cifar: pad to this size",
    )
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (imagefolder)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores, split among torchrun ranks)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on a test set")
    p.add_argument("--checkpoint", required=True, help="a .pt file (or run directory: its last.pt)")
    p.add_argument("--data", choices=DATASETS, help="dataset (default: the one it was trained on)")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--test-subset", type=int)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int)
    p.add_argument("--confusion", metavar="PNG", help="write a confusion-matrix image")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("rank", help="numerical rank of every conv layer's output next to the rank bounds")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", choices=DATASETS, help="dataset (default: the one it was trained on)")
    p.add_argument("--data-dir")
    p.add_argument("--images", type=int, default=32, help="test images to use (default 32)")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("export", help="deploy a checkpoint and export it to ONNX or TorchScript (checked)")
    p.add_argument("--checkpoint", required=True, help="a .pt file (or run directory: its last.pt)")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", required=True, help="file to write (written atomically)")
    p.add_argument("--deploy", choices=TARGETS, default="factorized", help="layer form (default factorized)")
    p.add_argument("--input-size", type=int, help="square input size (default: the training size)")
    p.add_argument("--channels-last", action="store_true", help="TorchScript only: channels-last weights")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="time a model against a baseline (interleaved): speed-up vs MAC ratio")
    p.add_argument("--model", required=True)
    p.add_argument("--baseline", help="model to compare with (default: the dense twin; 'none' for no baseline)")
    p.add_argument("--input-size", type=int, help="square input size (default: the model's native size)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--train", action="store_true", help="time a training step instead of inference")
    p.add_argument("--deploy", choices=DEPLOY_CHOICES, help="inference form (default factorized; 'none' = as trained)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=15, help="timed runs of each model (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("plot", help="accuracy / loss curves of one or more runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="curves.png")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("demo", help="train a dense model and its low-rank twin on Fashion-MNIST and compare")
    p.add_argument("--dense", default="vgg11_gmp")
    p.add_argument("--lowrank", default="vgg11_gmp_lr")
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int)
    p.add_argument("--data-dir")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-bn", action="store_true", help="train without batch norm (as in the paper; slower to start)")
    p.add_argument("--dropout", type=float, default=0.0, help="FC dropout (default 0; the paper's VGG used 0.5)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `lowrankcnn ... | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (CLIError, ValueError, FileNotFoundError) as err:
        print(f"lowrankcnn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"lowrankcnn {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = getattr(args, "resume", None) or getattr(args, "out", None)
        hint = f"; continue with `lowrankcnn train --resume {where}`" if args.command == "train" else ""
        print(f"\nlowrankcnn {args.command}: interrupted; completed epochs are saved{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
