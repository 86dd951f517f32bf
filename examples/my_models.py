"""A model of your own, to train with ``lowrankcnn train --model my_models:small_cnn`` (from this folder).

Any function that returns an ``nn.Module`` works; it receives ``num_classes`` and ``in_chans`` for the data set
when its signature takes them, and ``--model-kwargs`` as keywords.
"""

from torch import nn


def small_cnn(num_classes: int = 10, in_chans: int = 3, width: int = 32) -> nn.Module:
    """Three 3x3 conv blocks with batch norm, global average pooling and a linear classifier."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(in_chans, width),
        *block(width, 2 * width),
        nn.MaxPool2d(2),
        *block(2 * width, 4 * width),
        nn.MaxPool2d(2),
        *block(4 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )
