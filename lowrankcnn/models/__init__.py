"""Architectures registered by name; build them with ``create_model``."""

from . import googlenet, kim, nin, vgg  # noqa: F401  (registering the families)
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
    "ModelInfo",
    "ModelSpec",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
    "scale_width",
    "validate_model_kwargs",
]
