"""Training: the loop, checkpoints, schedules, metrics and DDP support."""

from .checkpoint import load_checkpoint, save_checkpoint
from .schedule import SCHEDULES, LRSchedule
from .trainer import OPTIMIZERS, TrainConfig, Trainer, TrainingDiverged, load_trained_model

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "LRSchedule",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "load_checkpoint",
    "load_trained_model",
    "save_checkpoint",
]
