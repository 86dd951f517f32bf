"""``ModelCfg``: what a built model declares about itself, like timm's ``pretrained_cfg``.

``create_model`` attaches one to every model as ``model.default_cfg``; a trained model loaded from a
checkpoint carries the normalization and input size of the data it was trained on. Consumers
(deploy, profile, bench, export) read the interface from here once, instead of reaching back into the
registry through the model's name. A model built by hand (``VGG(...)``) or a user's own module has no
cfg; every consumer then needs its input shape or channel count passed explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


@dataclass(frozen=True)
class ModelCfg:
    """A model's interface.

    Attributes:
        name: registry name.
        num_classes, in_chans: what this instance was built for.
        input_size: the square input it expects (the native size, or the training data's).
        min_input_size: the smallest square input the architecture accepts.
        mean, std: per-channel normalization of its inputs (pixel values scaled to 0..1 first); ``None``
            when unknown (e.g. a native-data model built for another channel count and not yet trained).
        classifier: dotted name of the final layer producing the logits.
        baseline: registry name of the dense twin it is compared with (``None`` for a dense model).
    """

    name: str
    num_classes: int
    in_chans: int
    input_size: int
    min_input_size: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    classifier: str
    baseline: str | None = None


def model_cfg(model: nn.Module) -> ModelCfg | None:
    """``model.default_cfg`` (``None`` for a model not built by ``create_model``)."""
    cfg = getattr(model, "default_cfg", None)
    return cfg if isinstance(cfg, ModelCfg) else None


def model_label(model: nn.Module) -> str:
    """The registry name, else the class name: how messages name a model."""
    cfg = model_cfg(model)
    return cfg.name if cfg is not None else type(model).__name__
