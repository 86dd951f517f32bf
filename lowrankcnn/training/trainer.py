"""Training loop with checkpoints, exact resume, NaN detection and DDP.

A run directory holds ``last.pt`` (end of the latest epoch), ``best.pt``
(best test top-1 so far), ``metrics.jsonl`` / ``metrics.csv`` and
``config.json``. With a fixed seed on CPU, a run interrupted and resumed
with ``resume=True`` reproduces the uninterrupted run exactly: the data order
and augmentation of every epoch depend only on ``(seed, epoch)``, and the
checkpoint holds the model, optimizer, schedule and RNG states.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import DataBundle, build_data
from ..distributed import DistInfo, all_reduce_sum, setup, teardown
from ..errors import CheckpointError, ConfigError, TrainingDiverged
from ..evaluate import evaluate, main_logits
from ..layers import Rank1Conv2d
from ..models import create_model
from ..utils import atomic_write_text
from .checkpoint import load_checkpoint, save_checkpoint
from .metrics import write_metrics
from .schedule import LRSchedule

OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint and in ``config.json``)."""

    model: str
    out: str
    data: str = "fashion-mnist"
    data_dir: str | None = None
    width_mult: float = 1.0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    patience: int = 2
    label_smoothing: float = 0.0
    aux_weight: float = 0.3
    channels_last: bool = False
    augment: bool = True
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    input_size: int | None = None
    workers: int = 2
    device: str = "auto"
    project_every: int = 1
    project_unit: str = "epoch"
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ``ValueError`` for impossible settings, before any work is done."""
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"${name} must be at least 1, got {getattr(self, name)}", param=name)
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"$lr must be a positive number, got {self.lr}", param="lr")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"$optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.project_every < 1 or self.project_unit not in ("epoch", "step"):
            raise ConfigError(
                f"$project_every must be >= 1 and $project_unit 'epoch' or 'step', got "
                f"{self.project_every} {self.project_unit!r}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"$label_smoothing must be in [0, 1), got {self.label_smoothing}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def classification_loss(
    output: torch.Tensor | tuple[torch.Tensor, ...],
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    aux_weight: float = 0.3,
) -> torch.Tensor:
    """Cross-entropy of logits ``(N, classes)``; a tuple's auxiliary heads (GoogLeNet) weighted by ``aux_weight``."""
    if isinstance(output, tuple):
        main, *aux = output
        return F.cross_entropy(main, target, label_smoothing=label_smoothing) + aux_weight * sum(
            F.cross_entropy(a, target, label_smoothing=label_smoothing) for a in aux
        )
    return F.cross_entropy(output, target, label_smoothing=label_smoothing)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def data_info(data: DataBundle) -> dict[str, Any]:
    """What a checkpoint needs to rebuild the model and label its outputs."""
    return {
        "name": data.name,
        "num_classes": data.num_classes,
        "in_chans": data.in_chans,
        "input_size": data.input_size,
        "class_names": list(data.class_names),
    }


def build_model(config: TrainConfig, info: dict[str, Any]) -> nn.Module:
    return create_model(
        config.model,
        num_classes=info["num_classes"],
        in_chans=info["in_chans"],
        width_mult=config.width_mult,
        **config.model_kwargs,
    )


def load_trained_model(path: str | Path) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild a trained model from a checkpoint: ``(model in eval mode, config, checkpoint dict)``."""
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    model = build_model(config, state["data_info"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit model {config.model} ({str(err).splitlines()[0]})") from err
    return model.eval(), config, state


class Trainer:
    """Trains ``config.model`` on ``config.data``; ``fit()`` runs all remaining epochs.

    Args:
        config: the run's settings.
        resume: continue from ``config.out/last.pt`` (its saved config is used).
        progress: show tqdm progress bars (rank 0 only).
    """

    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True) -> None:
        checkpoint = None
        if resume:
            checkpoint = load_checkpoint(Path(config.out) / "last.pt")
            config = TrainConfig.from_dict({**checkpoint["config"], "out": config.out})
        config.validate()
        self.config, self.progress = config, progress
        self.device = resolve_device(config.device)
        self.dist: DistInfo = setup(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.run_dir = Path(config.out)
        torch.manual_seed(config.seed)
        self.data = build_data(
            config.data,
            config.data_dir,
            batch_size=config.batch_size,
            seed=config.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            augment=config.augment,
            train_subset=config.train_subset,
            test_subset=config.test_subset,
            workers=config.workers,
            input_size=config.input_size,
        )
        self.info = data_info(self.data)
        self.model = build_model(config, self.info).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = self._make_optimizer()
        steps_per_epoch = len(self.data.train)
        self.schedule = LRSchedule(
            self.optimizer,
            config.schedule,
            config.lr,
            config.epochs * steps_per_epoch,
            config.weight_decay,
            round(config.warmup_epochs * steps_per_epoch),
            config.patience,
        )
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_acc = -1.0
        if checkpoint is not None:
            self._restore(checkpoint)
        self.projected_layers = [
            m for m in self.model.modules() if isinstance(m, Rank1Conv2d) and m.scheme == "projected"
        ]
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = self.model.parameters()
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.epoch, self.history, self.best_acc = state["epoch"], list(state["history"]), state["best_acc"]
        torch.set_rng_state(state["rng"]["torch"])

    def _state(self) -> dict[str, Any]:
        return {
            "model_name": self.config.model,
            "config": asdict(self.config),
            "data_info": self.info,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "history": self.history,
            "best_acc": self.best_acc,
        }

    def loss(self, output: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        return classification_loss(output, target, self.config.label_smoothing, self.config.aux_weight)

    def project(self) -> None:
        """Re-project every ``projected`` rank-1 layer onto rank-1 filters (identically on every rank)."""
        for module in self.projected_layers:
            module.project_()

    def on_step_end(self, epoch: int, step: int) -> None:
        """Hook called after every optimizer step (no-op; subclasses may override)."""

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training data; returns mean loss, accuracy and throughput (all ranks)."""
        c, model = self.config, self.ddp_model
        model.train()
        self.data.train.set_epoch(self.epoch)
        loss_sum = correct = seen = 0.0
        start = time.perf_counter()
        bar = tqdm(
            total=len(self.data.train),
            desc=f"epoch {self.epoch + 1}/{c.epochs}",
            unit="batch",
            disable=not (self.progress and self.dist.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        for step, (x, y) in enumerate(self.data.train):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if c.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            output = model(x)
            loss = self.loss(output, y)
            (step_loss,) = all_reduce_sum([loss.item()], self.dist)
            if not math.isfinite(step_loss):
                raise TrainingDiverged(
                    f"loss became {step_loss} at epoch {self.epoch + 1}, step {step + 1} (lr {self.schedule.lr:.3g}); "
                    f"training stopped. {self._last_good()} Lower --lr (or add --warmup-epochs) and retrain."
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
            if c.project_unit == "step" and self.schedule.step_count % c.project_every == 0:
                self.project()
            n = y.numel()
            loss_sum += loss.item() * n
            correct += (main_logits(output).argmax(1) == y).sum().item()
            seen += n
            bar.update()
            bar.set_postfix(
                loss=f"{loss_sum / seen:.3f}",
                acc=f"{correct / seen:.3f}",
                img_s=f"{seen * self.dist.world_size / (time.perf_counter() - start):.0f}",
            )
            self.on_step_end(self.epoch, step)
        bar.close()
        elapsed = time.perf_counter() - start
        loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], self.dist)
        return {"train_loss": loss_sum / seen, "train_acc": correct / seen, "train_images_per_s": seen / elapsed}

    def _last_good(self) -> str:
        last = self.run_dir / "last.pt"
        if self.epoch == 0 or not last.exists():
            return "No checkpoint was written yet."
        return f"The last good checkpoint, {last} (epoch {self.epoch}), is intact."

    def fit(self) -> list[dict[str, Any]]:
        """Train until ``config.epochs``; returns the per-epoch metrics history."""
        c = self.config
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.json", json.dumps(asdict(c), indent=2) + "\n")
        try:
            while self.epoch < c.epochs:
                start = time.perf_counter()
                lr = self.schedule.lr
                row: dict[str, Any] = {"epoch": self.epoch + 1, "lr": lr, **self.train_epoch()}
                last = self.epoch + 1 == c.epochs
                if last or (c.project_unit == "epoch" and (self.epoch + 1) % c.project_every == 0):
                    self.project()  # always after the last step: trained layers are exactly rank-1
                result = evaluate(
                    self.model,
                    self.data.test,
                    self.data.num_classes,
                    self.device,
                    c.channels_last,
                    dist_info=self.dist,
                )
                row.update(test_loss=result.loss, test_acc=result.top1, test_top5=result.top5)
                row["epoch_time_s"] = time.perf_counter() - start
                self.epoch += 1
                self.history.append(row)
                self.schedule.epoch_end(result.top1)
                is_best = result.top1 > self.best_acc
                self.best_acc = max(self.best_acc, result.top1)
                if self.dist.is_main:
                    state = self._state()
                    save_checkpoint(self.run_dir / "last.pt", state)
                    if is_best:
                        save_checkpoint(self.run_dir / "best.pt", state)
                    write_metrics(self.run_dir, self.history)
                    if self.progress:
                        tqdm.write(
                            f"epoch {row['epoch']}/{c.epochs}  loss {row['train_loss']:.4f}  "
                            f"train acc {row['train_acc']:.4f}  test acc {row['test_acc']:.4f}  "
                            f"top5 {row['test_top5']:.4f}  {row['train_images_per_s']:.0f} img/s  "
                            f"{row['epoch_time_s']:.1f}s"
                        )
        finally:
            teardown()
        return self.history
