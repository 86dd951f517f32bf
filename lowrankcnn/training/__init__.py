"""Training: the loop, run directories, checkpoints, schedules, metrics and DDP support."""

from ..errors import TrainingDiverged
from ..utils.losses import classification_loss
from .checkpoint import build_model, load_checkpoint, load_trained_model, save_checkpoint
from .config import OPTIMIZERS, TrainConfig, recipe_config
from .run_directory import RunDirectory
from .schedule import SCHEDULES, LRSchedule
from .trainer import Trainer

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "LRSchedule",
    "RunDirectory",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "build_model",
    "classification_loss",
    "load_checkpoint",
    "load_trained_model",
    "recipe_config",
    "save_checkpoint",
]
