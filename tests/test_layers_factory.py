"""``create_lowrank_conv``, the one conv factory, and ``split_channels``, its one rounding rule for basis groups."""

import pytest
import torch
from torch import nn

from lowrankcnn.errors import ConfigError
from lowrankcnn.layers import METHODS, ConvSpec, LowRankConv2d, create_lowrank_conv, split_channels


def test_split_channels_is_one_rounding_rule():
    assert split_channels(64, [1, 1]) == [32, 32] and split_channels(13, [1, 1]) == [6, 7]
    assert split_channels(64, [3, 3, 2]) == [24, 24, 16] and split_channels(1024, [3, 3, 2]) == [384, 384, 256]
    assert split_channels(112, [3, 3, 1]) == [48, 48, 16]  # the VGG lde basis at D = 64
    assert split_channels(5, [3, 3, 2]) == [2, 2, 1] and split_channels(9, [3, 3, 2]) == [3, 4, 2]
    for total in range(1, 200):
        for weights in ([1, 1], [3, 3, 2], [3, 3, 1], [0.5, 0.25, 0.25]):
            quotas = [total * w / sum(weights) for w in weights]
            try:
                counts = split_channels(total, weights)
            except ConfigError as err:  # only when some group's quota is below one filter
                assert min(quotas) < 1 and "leave a group empty" in str(err)
                continue
            assert sum(counts) == total and all(abs(n - q) < 1 for n, q in zip(counts, quotas, strict=True))


@pytest.mark.parametrize("method", METHODS)
def test_factory_gives_every_method_the_requested_width_and_geometry(method):
    conv = create_lowrank_conv(method, 5, 13, (3, 5), stride=(2, 1), dilation=(1, 2), bias=False)
    reference = nn.Conv2d(5, 13, (3, 5), (2, 1), (1, 4), (1, 2), bias=False)
    spec = ConvSpec.of(reference)
    assert (conv.conv_spec() if isinstance(conv, LowRankConv2d) else ConvSpec.of(conv)) == spec
    x = torch.randn(2, 5, 12, 14)
    assert conv(x).shape == reference(x).shape
    assert isinstance(conv, nn.Conv2d) == (method == "dense")


def test_factory_errors():
    with pytest.raises(ConfigError, match="unknown method 'lowrank'; use one of lr, lr_join"):
        create_lowrank_conv("lowrank", 3, 8, 3)
    with pytest.raises(ConfigError, match="method 'dense' takes no options"):
        create_lowrank_conv("dense", 3, 8, 3, scheme="factors")
    with pytest.raises(ConfigError, match="unknown option"):
        create_lowrank_conv("lr", 3, 8, 3, scheme="factors")
    with pytest.raises(ConfigError, match="padding must be an int >= 0"):
        create_lowrank_conv("rank1", 3, 8, 3, padding=-1)
