"""Training loop with checkpoints, exact resume, a divergence policy and DDP.

A run directory (:mod:`.run_directory`) holds ``last.pt``, ``best.pt``, the metrics and
``config.json``. With a fixed seed on CPU, a run interrupted and resumed reproduces the
uninterrupted run exactly: the data order and augmentation of every epoch depend only on
``(seed, epoch)``, the checkpoint holds the model, optimizer, schedule and RNG states, and the
thread count is part of the saved configuration.

Divergence policy (:mod:`.divergence`): training stops with :class:`TrainingDiverged`, *before* the
epoch is saved, when a loss or weight is not finite or the loss explodes, so ``last.pt`` and ``best.pt``
only ever hold finite models.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..data import build_data
from ..distributed import DistInfo, all_reduce_sum, collective, default_threads, env_info, setup, teardown
from ..errors import ConfigError, RunDirectoryError
from ..evaluate import evaluate, main_logits
from ..layers.base import constrained_modules, low_rank_layers
from ..layers.init import spectral_init_
from ..utils import resolve_device
from ..utils.losses import classification_loss
from .batch_norm import recalibrate_batch_norm
from .checkpoint import build_model, check_trusted, data_info, load_checkpoint, load_state
from .config import TrainConfig, input_size_for, resumed_config
from .divergence import DivergencePolicy
from .frobenius import decay_groups, frobenius_penalty
from .lowrank_phase import PHASE_KEY, LowRankPhase, PhaseSwitching, check_phase_fits, fresh_phase
from .run_directory import RunDirectory, last_checkpoint, saved_config
from .schedule import LRSchedule


class Trainer(DivergencePolicy, PhaseSwitching):
    """Trains ``config.model`` on ``config.data``; ``fit()`` runs all remaining epochs.

    Use it as a context manager (or call :meth:`close`): it holds the run directory's lock, the
    process group and the thread setting until closed.

    Args:
        config: the run's settings.
        resume: continue from ``config.out/last.pt`` with the saved configuration; ``config`` may only
            change ``epochs`` (extend the run), ``workers`` and ``out``, and ``None`` fields mean "as saved".
            See :meth:`resume` for the usual way in.
        progress: progress bars (rank 0 only); ``None``: only when stderr is a terminal.
        overwrite: replace a run already in ``config.out`` (otherwise that is a :class:`RunDirectoryError`).
        verbose: print one line per epoch (rank 0 only).
        trust_factory: resuming a run of a user's own model (``"package.module:function"``) imports the module
            its checkpoint names; allowed only with this set (a new run's own factory needs nothing).
        start_from: a new run's initial weights and the dense/low-rank phase they belong to (instead of a fresh
            initialization): how ``lowrankcnn decompose`` starts a fine-tuning run from a trained dense model.
    """

    def __init__(
        self,
        config: TrainConfig,
        resume: bool = False,
        progress: bool | None = None,
        overwrite: bool = False,
        verbose: bool = True,
        trust_factory: bool = False,
        start_from: tuple[dict[str, torch.Tensor], LowRankPhase] | None = None,
    ) -> None:
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.verbose = verbose
        self.run = RunDirectory(config.out)
        self.run_dir = self.run.path
        self._threads_before = torch.get_num_threads()
        self._closed = False
        is_main = env_info().is_main
        if not resume:
            config.validate()
        if is_main:
            self.run.lock()
        try:
            checkpoint = None
            if resume:
                path = last_checkpoint(self.run.path)
                checkpoint = load_checkpoint(path, for_resume=True)
                saved = TrainConfig.from_dict(checkpoint["config"], source=str(path))
                check_trusted(saved, path, trust_factory)
                config = resumed_config(config, saved, checkpoint["epoch"], self.run.path)
            elif is_main:
                self.run.check_free(overwrite)
            if checkpoint is not None:
                self._setup(config, LowRankPhase.from_state(checkpoint, path))
            else:
                self._setup(config, None if start_from is None else start_from[1])
                if start_from is not None:
                    load_state(self.model, start_from[0], "the starting weights", config.model)
            if checkpoint is None and self.dist.is_main:
                self.run.clear()  # only now: a run that cannot start (bad data, model) leaves the old one intact
            if checkpoint is not None:
                self._restore(checkpoint)
                if self.dist.is_main:
                    self.repaired = self.run.reconcile(self._state())
        except BaseException:
            self.close(clean=False)
            raise

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        epochs: int | None = None,
        workers: int | None = None,
        progress: bool | None = None,
        verbose: bool = True,
        data_dir: str | None = None,
        trust_factory: bool = False,
    ) -> Trainer:
        """Continue the run in ``run_dir`` with its saved configuration; ``epochs`` above the saved count extends it.

        Extending lays the learning-rate schedule out over the new total, as if the run had been planned for
        ``epochs`` from the start: a finished cosine run restarts at the rate the longer schedule has at that step.
        ``data_dir`` points at the run's data set where it now lives (it must be the same data).
        ``trust_factory``: the run's model is a user's factory and its module may be imported (see :class:`Trainer`).
        """
        saved = saved_config(run_dir)
        changes = {"out": str(run_dir), "epochs": epochs, "workers": workers, "data_dir": data_dir}
        config = replace(saved, **{k: v for k, v in changes.items() if v is not None})
        return cls(config, resume=True, progress=progress, verbose=verbose, trust_factory=trust_factory)

    def _setup(self, config: TrainConfig, phase: LowRankPhase | None) -> None:
        """Threads, device, process group, data, model, optimizer and schedule of a fresh start (in the form
        ``phase``, a resumed run's dense/low-rank phase, gives)."""
        config.threads = config.threads or default_threads() or torch.get_num_threads()
        torch.set_num_threads(config.threads)
        if config.data_dir is not None:  # saved absolute, so eval and resume work from any folder
            config.data_dir = str(Path(config.data_dir).expanduser().absolute())
        self.config = config
        self.device = resolve_device(config.device)
        self.dist: DistInfo = setup(self.device, config.dist_timeout)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
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
            input_size=input_size_for(config),
        )
        self.info = data_info(self.data)
        model = build_model(config, self.info, phase)
        if phase is None and config.init == "spectral":
            spectral_init_(model)
        self.phase = phase
        if phase is None and config.starts_dense:  # converts a stand-in now: bad options fail before any epoch
            self.phase = fresh_phase(model, config.lowrank, config.lowrank_options(), config.rank == "auto")
        check_phase_fits(self.phase, model, self.run.path / "last.pt")
        if config.frobenius_decay > 0 and not config.starts_dense and not low_rank_layers(model):
            raise ConfigError(
                "$frobenius_decay acts on low-rank layers and this model has none: give $lowrank too",
                param="frobenius_decay",
            )
        self._place(model)
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
        self.reference_loss: float | None = None
        self.repaired: list[str] = []

    def _place(self, model: nn.Module) -> None:
        """Make ``model`` the one trained: on the device, in the memory format, wrapped for DDP."""
        self.model = model.to(self.device)
        if self.config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.constrained = constrained_modules(self.model)
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = decay_groups(self.model, c.weight_decay, c.frobenius_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def _restore(self, state: dict[str, Any]) -> None:
        path = self.run.path / "last.pt"
        load_state(self.model, state["model"], path, self.config.model)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            torch.set_rng_state(state["rng"]["torch"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise RunDirectoryError(f"{path}: its optimizer, schedule or RNG state does not fit ({err})") from err
        self.epoch, self.history, self.best_acc = state["epoch"], list(state["history"]), float(state["best_acc"])
        self.reference_loss = state.get("reference_loss")  # validate_checkpoint: None or a finite loss >= 0

    def _state(self) -> dict[str, Any]:
        return {
            "model_name": self.config.model,
            "config": self.config.to_dict(),
            "data_info": self.info,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "history": self.history,
            "best_acc": self.best_acc,
            "reference_loss": self.reference_loss,
            **({} if self.phase is None else {PHASE_KEY: self.phase.to_dict()}),
        }

    def commit_start(self) -> None:
        """Save the run as it starts (epoch 0: ``config.json``, ``last.pt``, empty metrics), so that
        :meth:`resume` trains it (``lowrankcnn decompose`` then ``train --resume``)."""
        if self.dist.is_main:
            self.run.write_config(self.config.to_dict())
            self.run.commit_epoch(self._state(), is_best=False)

    @property
    def finished(self) -> bool:
        """Whether every configured epoch is done."""
        return self.epoch >= self.config.epochs

    def loss(self, output: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        """The classification loss, plus ``λ/2 Σ ||W||_F²`` over the low-rank layers with Frobenius decay ``λ``."""
        c = self.config
        loss = classification_loss(output, target, c.label_smoothing, c.aux_weight)
        if c.frobenius_decay > 0:
            loss = loss + 0.5 * c.frobenius_decay * frobenius_penalty(self.model)
        return loss

    def project(self) -> bool:
        """Apply every layer's constraint (``constrain_()``: e.g. re-project every ``projected`` rank-1 layer onto
        rank-1 filters), identically on every rank; returns whether any parameter changed."""
        changed = [module.constrain_() is not False for module in self.constrained]  # a list: every layer runs
        return any(changed)

    def recalibrate_batch_norm(self) -> int:
        """Re-estimate the batch-norm statistics of the weights as they are now on the first
        ``config.recalibrate_bn`` training batches of this epoch; returns the number of batches used."""
        c = self.config
        self.data.train.set_epoch(self.epoch)
        return recalibrate_batch_norm(
            self.model, self.data.train, c.recalibrate_bn, self.device, c.channels_last, self.dist
        )

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
            with collective(self.dist, f"epoch {self.epoch + 1} step {step + 1}"):
                output = model(x)
                loss = self.loss(output, y)
                (step_loss,) = all_reduce_sum([loss.item()], self.dist)
                self._check_step_loss(step_loss / self.dist.world_size, step)
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
        loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], self.dist, f"end of epoch {self.epoch + 1}")
        return {"train_loss": loss_sum / seen, "train_acc": correct / seen, "train_images_per_s": seen / elapsed}

    def _run_epoch(self) -> dict[str, Any]:
        """Train, project and test one epoch; raise :class:`TrainingDiverged` instead of returning a bad epoch."""
        c = self.config
        start = time.perf_counter()
        row: dict[str, Any] = {"epoch": self.epoch + 1, "lr": self.schedule.lr, **self.train_epoch()}
        if self.epoch + 1 == c.epochs or (c.project_unit == "epoch" and (self.epoch + 1) % c.project_every == 0):
            if self.project():  # always after the last step: trained layers are exactly rank-1
                self.recalibrate_batch_norm()  # the running statistics are those of the weights before
        result = evaluate(
            self.model, self.data.test, self.data.num_classes, self.device, c.channels_last, dist_info=self.dist
        )
        self._check_finite_model()
        if not math.isfinite(result.loss):
            raise self._diverged(f"the test loss became {result.loss}")
        row.update(test_loss=result.loss, test_acc=result.top1, test_top5=result.top5)
        row["epoch_time_s"] = time.perf_counter() - start
        return row

    def fit(self) -> list[dict[str, Any]]:
        """Train until ``config.epochs``, committing each epoch (see the module doc); returns the history.

        If it raises (divergence, Ctrl-C, a failed rank), the trainer is closed: its state is mid-epoch,
        so continue with a new one (:meth:`resume`), which starts from the last committed epoch.
        """
        if self._closed:
            raise RunDirectoryError(
                f"this trainer of {self.run_dir} is closed (its process group and lock are released); "
                "continue with Trainer.resume(run_dir)"
            )
        c = self.config
        try:
            if self.dist.is_main:
                self.run.write_config(c.to_dict())
            while self.epoch < c.epochs:
                self._switch_if_due()
                row = self._run_epoch()
                self.epoch += 1
                self.history.append(row)
                self.schedule.epoch_end(row["test_acc"])
                is_best = row["test_acc"] > self.best_acc
                self.best_acc = max(self.best_acc, row["test_acc"])
                if self.dist.is_main:
                    self.run.commit_epoch(self._state(), is_best)
                    self._log(row)
        except BaseException:
            self.close(clean=False)
            raise
        return self.history

    def _log(self, row: dict[str, Any]) -> None:
        if self.verbose:
            tqdm.write(
                f"epoch {row['epoch']}/{self.config.epochs}  loss {row['train_loss']:.4f}  "
                f"train acc {row['train_acc']:.4f}  test acc {row['test_acc']:.4f}  "
                f"top5 {row['test_top5']:.4f}  {row['train_images_per_s']:.0f} img/s  "
                f"{row['epoch_time_s']:.1f}s",
                file=sys.stdout,
            )

    def close(self, clean: bool = True) -> None:
        """Leave the process group (``clean``: after the other ranks reach this point too, so that none tears its
        connections down while another still uses them; not after an error, when a rank may be gone), release the
        run directory and restore the thread count (idempotent)."""
        self._closed = True
        teardown(synchronize=clean)
        self.run.unlock()
        torch.set_num_threads(self._threads_before)

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(clean=exc_type is None)
