"""``lowrankcnn train`` and ``lowrankcnn demo``: training runs with checkpoints and exact resume."""

from __future__ import annotations

import argparse
import ast

from ..data import DATASETS
from ..demo import compare
from ..errors import ConfigError
from ..training import OPTIMIZERS, SCHEDULES, TrainConfig, Trainer
from .common import add_command, set_threads, threads_parent


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


def _interrupt_hint(args: argparse.Namespace) -> str:
    where = args.resume or args.out
    return f"completed epochs are saved; continue with `lowrankcnn train --resume {where}`"


def cmd_train(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    if not (args.model or args.resume):
        raise ConfigError("give $model NAME (or $resume RUN_DIR to continue a run)")
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


def cmd_demo(args: argparse.Namespace) -> None:
    set_threads(args.threads)
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


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", cmd_train, "train a zoo model from scratch (torchrun-aware)", [threads_parent()])
    p.set_defaults(interrupt_hint=_interrupt_hint)
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
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = add_command(
        sub,
        "demo",
        cmd_demo,
        "train a dense model and its low-rank twin on Fashion-MNIST and compare",
        [threads_parent()],
    )
    p.add_argument("--dense", default="vgg11_gmp")
    p.add_argument("--lowrank", default="vgg11_gmp_lr")
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int)
    p.add_argument("--data-dir")
    p.add_argument("--no-bn", action="store_true", help="train without batch norm (as in the paper; slower to start)")
    p.add_argument("--dropout", type=float, default=0.0, help="FC dropout (default 0; the paper's VGG used 0.5)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--no-progress", action="store_true")
