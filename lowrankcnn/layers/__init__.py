"""Building blocks: low-rank convolution layers and their initialization.

Modules: ``base`` (``LowRankConv2d``, the protocol every low-rank layer implements, and ``ConvSpec``);
``composite``, ``separable``, ``rank1``, ``channel_rank``, ``bsconv`` (the layers; ``conv_pair`` is the base of
the last two); ``factory`` (``create_lowrank_conv``, the one conv factory); ``init`` (``init_weights_``);
``decompose`` (rank-1 factors of given filters); ``fit`` (factors of the other layers fitted to a dense weight);
``conv_from_weights`` (standard convs built from weights: the deploy forms); ``fuse`` (a layer's dense form, one
``nn.Conv2d``); ``fold`` (batch-norm folding); ``concat`` (``ParallelConcat``).
"""

from .base import ConvSpec, LowRankConv2d
from .bsconv import BSConvU
from .channel_rank import ChannelRankConv2d
from .composite import BasisGroup, CompositeConv2d, format_basis, split_channels, validate_basis
from .consecutive import ConsecutiveConv2d
from .factory import METHODS, LowRankMethod, create_lowrank_conv
from .init import composite_fan, init_composite_, init_weights_
from .rank1 import Rank1Conv2d
from .separable import SeparableConv2d

__all__ = [
    "METHODS",
    "BSConvU",
    "BasisGroup",
    "ChannelRankConv2d",
    "CompositeConv2d",
    "ConsecutiveConv2d",
    "ConvSpec",
    "LowRankConv2d",
    "LowRankMethod",
    "Rank1Conv2d",
    "SeparableConv2d",
    "composite_fan",
    "create_lowrank_conv",
    "format_basis",
    "init_composite_",
    "init_weights_",
    "split_channels",
    "validate_basis",
]
