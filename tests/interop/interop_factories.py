"""A user's own factories wrapping torchvision and timm models, as ``--model package.module:function`` names them:
ResNet-18 for grey 28x28 images (one input channel, the data's class count)."""

from __future__ import annotations

import timm
import torchvision
from torch import nn


def torchvision_resnet18(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
    return model


def timm_resnet18(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    return timm.create_model("resnet18", pretrained=False, num_classes=num_classes, in_chans=in_chans)
