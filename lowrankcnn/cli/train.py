"""``lowrankcnn train`` and ``lowrankcnn demo``: training runs with checkpoints and exact resume."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from ..data import DATASETS
from ..demo import compare
from ..errors import ConfigError
from ..layers.rank1 import Rank1Scheme
from ..training import OPTIMIZERS, SCHEDULES, TrainConfig, Trainer, recipe_config
from ..training.config import INITS, PROJECT_UNITS
from .common import (
    add_command,
    default_run_dir,
    explicit_flags,
    lowrank_parent,
    model_parent,
    parse_model_kwarg,
    positive_int,
    threads_parent,
    trust_parent,
)

DEMO_EPOCHS, DEMO_TRAIN_SUBSET = 3, 40_000
"""``lowrankcnn demo``'s budget: a first impression within 5 minutes on a 2-core CPU."""
RESUME_FLAGS = {"resume", "epochs", "workers", "data_dir", "no_progress", "progress", "trust_factory"}
"""Flags that may accompany ``--resume``; every other one would change the saved run and is refused."""


def _model_kwargs(args: argparse.Namespace) -> dict[str, object]:
    kwargs: dict[str, object] = dict(args.model_kwargs or [])
    for key, value in (("dropout", args.dropout), ("bn", args.bn), ("rank1_scheme", args.rank1_scheme)):
        if value is not None:
            kwargs[key] = value
    return kwargs


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The configuration of a new run: the model's recipe, overridden by every flag given."""
    if not args.model:
        raise ConfigError("give $model NAME or package.module:function (or $resume RUN_DIR to continue a run)")
    settings = {name: getattr(args, name) for name in CONFIG_FLAGS}
    settings["lowrank_kwargs"] = dict(args.lowrank_kwargs) if args.lowrank_kwargs else None
    settings["augment"] = False if args.no_augment else None
    return recipe_config(
        args.model, args.out or default_run_dir(args.model), model_kwargs=_model_kwargs(args), **settings
    )


CONFIG_FLAGS = (
    "data",
    "data_dir",
    "width_mult",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "optimizer",
    "schedule",
    "warmup_epochs",
    "patience",
    "label_smoothing",
    "channels_last",
    "seed",
    "train_subset",
    "test_subset",
    "input_size",
    "workers",
    "device",
    "project_every",
    "project_unit",
    "recalibrate_bn",
    "threads",
    "dist_timeout",
    "lowrank",
    "rank",
    "rank_ratio",
    "keep_dense",
    "lowrank_kwargs",
    "warmup_dense",
    "dense_if_faster",
    "init",
    "frobenius_decay",
)
"""``train`` flags that are :class:`TrainConfig` fields of the same name (``None``: not given)."""


def _resume(args: argparse.Namespace) -> Trainer:
    refused = sorted(explicit_flags(args) - RESUME_FLAGS)
    if refused:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in refused)
        raise ConfigError(
            f"{flags} cannot be combined with --resume: a resumed run uses its saved configuration (only --epochs, "
            "to extend it, --workers, and --data-dir for where the same data now lives may change). Start a new "
            "run with another --out to change it"
        )
    return Trainer.resume(
        args.resume,
        epochs=args.epochs,
        workers=args.workers,
        progress=args.progress,
        data_dir=args.data_dir,
        trust_factory=args.trust_factory,
    )


def _interrupt_hint(args: argparse.Namespace) -> str:
    run = args.resume or args.out or (default_run_dir(args.model) if args.model else None)
    if run and (Path(run) / "last.pt").is_file():
        return f"completed epochs are saved; continue with `lowrankcnn train --resume {run}`"
    return "no epoch was completed, so nothing was saved; run the same command again to start over"


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume:
        trainer = _resume(args)
    else:
        trainer = Trainer(_train_config(args), progress=args.progress, overwrite=args.overwrite)
    with trainer:
        main = trainer.dist.is_main
        where = trainer.run_dir
        if main and trainer.repaired:
            print(f"{where}: repaired {' and '.join(trainer.repaired)} from last.pt (a stop interrupted a save)")
        if trainer.finished:
            if main:
                print(
                    f"{where} already finished its {trainer.config.epochs} epochs; nothing to resume "
                    "(add --epochs N to extend it)"
                )
            return
        if args.resume and main:
            label, total = trainer.config.model_label, trainer.config.epochs
            print(f"resuming {label} in {where} after epoch {trainer.epoch} of {total}")
        history = trainer.fit()
        if main and history:
            best = max(r["test_acc"] for r in history)
            kept_dense = trainer.phase is not None and trainer.phase.stays_dense
            label = trainer.config.model_label + (" (kept dense: no layer was worth converting)" if kept_dense else "")
            print(
                f"done: {label}, {len(history)} epochs, "
                f"final test acc {history[-1]['test_acc']:.4f}, "
                f"best {best:.4f}; checkpoints in {where}"
            )


def cmd_demo(args: argparse.Namespace) -> None:
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
        threads=args.threads,
        model_kwargs={"bn": not args.no_bn, "dropout": args.dropout},
    )
    summary = compare(args.dense, args.lowrank, base, args.out, progress=args.progress, overwrite=args.overwrite)
    print(summary.text())
    print(f"\nwritten: {args.out}/summary.md, {args.out}/curves.png")


def _progress_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: only on a terminal; the per-epoch lines are always printed)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    parents = [threads_parent(), model_parent(width_default=None), lowrank_parent(), trust_parent()]
    p = add_command(sub, "train", cmd_train, "train a model from scratch (torchrun-aware)", parents)
    p.allow_abbrev = False  # --resume refuses flags it cannot honour: they must be recognisable
    p.set_defaults(interrupt_hint=_interrupt_hint)
    p.add_argument(
        "--model",
        help="registry name (e.g. vgg11_gmp_lr), or your own model's factory 'package.module:function' (imported "
        "from the current folder or PYTHONPATH; called with num_classes/in_chans if it takes them)",
    )
    p.add_argument("--data", choices=DATASETS, help="dataset (default fashion-mnist)")
    p.add_argument(
        "--data-dir",
        help="dataset folder (fashion-mnist default: $LOWRANKCNN_FASHION_MNIST or the "
        "Debian package's /usr/share/datasets/fashion-mnist)",
    )
    p.add_argument("--out", help="run directory (default runs/MODEL); refused if it already holds a run")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt (with --epochs: extend it)"
    )
    p.add_argument("--epochs", type=int, help="(default: the model's recipe, else 10)")
    p.add_argument("--batch-size", type=int, help="global batch size, split over torchrun ranks (default 128)")
    p.add_argument("--lr", type=float, help="(default: the model's recipe, else 0.02)")
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="(default: the model's recipe, else sgd)")
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="cosine (default); step (/10 at 50%% and 75%%); inverse: lr0/(1+lr0*wd*t) with /10 on plateau",
    )
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--patience", type=int, help="plateau epochs before an inverse-schedule drop")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--dropout", type=float, help="override the model's dropout")
    p.add_argument(
        "--bn",
        action=argparse.BooleanOptionalAction,
        help="batch norm after every conv (VGG, NiN, Kim CIFAR; default: the model's recipe)",
    )
    p.add_argument(
        "--rank1-scheme",
        choices=typing.get_args(Rank1Scheme),
        help="rank-1 models: train the 1-D factors (default) or the 3-D filters with re-projection",
    )
    p.add_argument(
        "--project-every", type=int, help="projected scheme: re-project every N epochs (or steps, --project-unit)"
    )
    p.add_argument("--project-unit", choices=PROJECT_UNITS)
    p.add_argument(
        "--recalibrate-bn",
        type=int,
        metavar="N",
        help="after a projection at an epoch's end, re-estimate batch-norm statistics on N training batches "
        "before testing (0: off; default 50)",
    )
    p.add_argument(
        "--lowrank-kwargs",
        nargs="+",
        type=parse_model_kwarg,
        metavar="KEY=VALUE",
        help="the --lowrank method's layer options, e.g. scheme=projected (rank1)",
    )
    p.add_argument(
        "--warmup-dense",
        type=int,
        metavar="E",
        help="with --lowrank: train the dense model E epochs, then convert it by fitting its trained weights and go "
        "on low-rank (Pufferfish; with --rank auto, E is the longest warm-up)",
    )
    p.add_argument(
        "--dense-if-faster",
        action="store_true",
        default=None,
        help="with --warmup-dense: at the switch, time each converted layer's training step against its dense conv "
        "and keep the dense conv where it is at least as fast (Cuttlefish's profiling)",
    )
    p.add_argument(
        "--init",
        choices=INITS,
        help="low-rank layers: composite (default) or spectral (the SVD of a He-initialized dense weight)",
    )
    p.add_argument(
        "--frobenius-decay",
        type=float,
        metavar="LAMBDA",
        help="weight decay on each low-rank layer's product (LAMBDA/2 ||W||^2) instead of on its factors",
    )
    p.add_argument("--channels-last", action="store_true", default=None, help="channels-last memory format")
    p.add_argument("--no-augment", action="store_true", help="no random crops / flips")
    p.add_argument("--seed", type=int)
    p.add_argument("--train-subset", type=int, help="use the first N training images")
    p.add_argument("--test-subset", type=int, help="use the first N test images")
    p.add_argument(
        "--input-size",
        type=int,
        help="image size: imagefolder crop (default 224); fashion-mnist/cifar: zero-pad to this size",
    )
    p.add_argument("--workers", type=int, help="DataLoader workers (imagefolder; default 2)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--dist-timeout", type=float, help="seconds a torchrun rank waits for the others before failing (default 300)"
    )
    _progress_flags(p)

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
    p.add_argument("--epochs", type=positive_int, default=DEMO_EPOCHS, help=f"(default {DEMO_EPOCHS})")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--train-subset",
        type=int,
        default=DEMO_TRAIN_SUBSET,
        help=f"train on the first N images (default {DEMO_TRAIN_SUBSET}: the demo takes under 5 minutes on 2 CPU "
        "cores; 60000 for the whole training set)",
    )
    p.add_argument("--data-dir")
    p.add_argument("--no-bn", action="store_true", help="train without batch norm (as in the paper; slower to start)")
    p.add_argument("--dropout", type=float, default=0.0, help="FC dropout (default 0; the paper's VGG used 0.5)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--overwrite", action="store_true", help="retrain runs in --out that were made with other settings")
    _progress_flags(p)
