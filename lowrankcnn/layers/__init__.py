"""Building blocks: low-rank convolution layers and their initialization.

Modules: ``composite``, ``separable``, ``rank1`` (the layers); ``init`` (``init_weights_``);
``decompose`` (rank-1 factors of given filters); ``conv_from_weights`` (standard convs built from
weights: the deploy forms); ``fuse`` (a layer's dense form, one ``nn.Conv2d``); ``fold`` (batch-norm
folding); ``concat`` (``ParallelConcat``).
"""

from .composite import BasisGroup, CompositeConv2d, format_basis, validate_basis
from .init import composite_fan, init_composite_, init_weights_
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
    "init_weights_",
    "validate_basis",
]
