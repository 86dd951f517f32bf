"""Architectures registered by name; build them with ``create_model``."""

from . import googlenet, kim, nin, resnet, resnet_lowrank, vgg  # noqa: F401  (registering the families)
from .cfg import ModelCfg, model_cfg
from .published import PublishedCheck, compare_published
from .registry import (
    ModelInfo,
    create_model,
    list_models,
    model_info,
    register_model,
    scale_width,
    validate_model_kwargs,
)
from .spec import ModelSpec

__all__ = [
    "ModelCfg",
    "ModelInfo",
    "ModelSpec",
    "PublishedCheck",
    "compare_published",
    "create_model",
    "list_models",
    "model_cfg",
    "model_info",
    "register_model",
    "scale_width",
    "validate_model_kwargs",
]
