"""Small models in states the zoo does not build, shared by test modules."""

import torch
from torch import nn

from lowrankcnn import create_model
from lowrankcnn.layers import SeparableConv2d


def no_dense_form_model(width_mult: float = 0.125) -> nn.Module:
    """``vgg11_gmp_sf`` (10 classes, 1 channel) in eval mode with a bias between each separable layer's two convs:
    the kx1 conv's zero padding cuts it off at the borders, so no layer has an exact dense form."""
    model = create_model("vgg11_gmp_sf", 10, 1, width_mult).eval()
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, SeparableConv2d):
                layer.conv_1xk.bias.fill_(0.1)
    return model
