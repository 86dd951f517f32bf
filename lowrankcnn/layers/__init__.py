"""Building blocks: low-rank convolution layers and their initialization."""

from .composite import BasisGroup, CompositeConv2d, format_basis, validate_basis
from .init import composite_fan, init_composite_
from .rank1 import ConsecutiveConv2d, Rank1Conv2d
from .separable import SeparableConv2d

__all__ = [
    "BasisGroup",
    "CompositeConv2d",
    "ConsecutiveConv2d",
    "Rank1Conv2d",
    "SeparableConv2d",
    "composite_fan",
    "format_basis",
    "init_composite_",
    "validate_basis",
]
