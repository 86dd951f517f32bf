"""Train a run only if it is not already done: what ``make demo`` and the benchmark scripts run.

``train_or_reuse(config)`` looks at ``config.out``: a finished run with the same settings is reused
as it is, an unfinished one is resumed, an empty folder starts a new run, and a run made with other
settings is refused (or, with ``overwrite=True``, replaced). Running the same command twice is
therefore cheap and never loses a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import RunDirectoryError
from .config import RESUME_OVERRIDES, TrainConfig
from .run_directory import RunDirectory, saved_config
from .trainer import Trainer


def config_differences(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    """``"lr 0.05 -> 0.02"`` for every setting of ``wanted`` that differs from ``saved``.

    ``threads=None`` in ``wanted`` means "whatever the saved run used"; every other ``None`` is a value
    (``train_subset=None`` is the full training set).
    """
    old = saved.to_dict()
    return [
        f"{name} {old[name]!r} -> {value!r}"
        for name, value in wanted.to_dict().items()
        if name not in RESUME_OVERRIDES and not (name == "threads" and value is None) and value != old[name]
    ]


def train_or_reuse(
    config: TrainConfig, overwrite: bool = False, progress: bool | None = None, verbose: bool = True
) -> list[dict[str, Any]]:
    """Bring the run in ``config.out`` to ``config.epochs`` epochs of ``config``; returns its metrics history.

    Raises:
        RunDirectoryError: ``config.out`` holds a run made with other settings and ``overwrite`` is false.
    """
    run = RunDirectory(config.out)
    last = Path(config.out) / "last.pt"
    if run.holds_run() and last.is_file():
        saved = saved_config(config.out)
        differences = config_differences(saved, config)
        if not differences and saved.epochs == config.epochs:
            with Trainer.resume(config.out, progress=progress, verbose=verbose) as trainer:
                if not trainer.finished and verbose:
                    print(f"resuming {config.model_label} in {config.out} after epoch {trainer.epoch}", flush=True)
                return trainer.fit()
        if not overwrite:
            changed = "; ".join(differences) or f"epochs {saved.epochs} -> {config.epochs}"
            raise RunDirectoryError(
                f"{config.out} holds a {saved.model} run made with other settings ({changed}); "
                "pass $overwrite to retrain it, or give another $out"
            )
    with Trainer(config, progress=progress, overwrite=overwrite, verbose=verbose) as trainer:
        if verbose:
            print(f"training {config.model_label} for {config.epochs} epochs in {config.out}", flush=True)
        return trainer.fit()
