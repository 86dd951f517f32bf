import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lowrankcnn import create_model, profile


@pytest.mark.parametrize(
    "name, size",
    [
        ("vgg11_gmp_lr_join_wfull", 32),
        ("vgg11_gmp_sf", 28),
        ("vgg11_gmp_lr_lde", 32),
        ("nin_c3_lr", 30),
        ("googlenet_lr_conv1", 64),
    ],
)
def test_standard_count_matches_torch_flop_counter(name, size):
    model = create_model(name, num_classes=10, width_mult=0.25).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    assert counter.get_total_flops() == 2 * profile(model, size).macs


def test_rows_cover_every_layer_once():
    model = create_model("vgg11_gmp_lr_join", num_classes=10, width_mult=0.25)
    result = profile(model, 32)
    assert [r.name for r in result.layers][:2] == ["features.conv1", "features.conv2"]
    assert len(result.layers) == 8 + 3
    assert sum(r.params for r in result.layers) == result.params
    first = result.layers[0]
    assert first.kind == "CompositeConv2d" and first.kernel == "3x1:8|1x3:8 -> 1x1:16"
    assert first.output_shape == (16, 32, 32)
    assert first.macs == (3 * 3 * 8 * 2) * 32 * 32 + 16 * 16 * 32 * 32
    assert result.flops == 2 * result.macs
    assert "features.conv1" in result.table() and result.to_dict()["layers"][0]["name"] == "features.conv1"


def test_meta_and_real_models_count_the_same():
    real = create_model("nin_c3", width_mult=0.5)
    with torch.device("meta"):
        meta = create_model("nin_c3", width_mult=0.5)
    assert profile(real, 30).to_dict() == profile(meta, 30).to_dict()


def test_works_on_plain_modules_and_restores_mode():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).train()
    result = profile(model, (2, 5, 5), convention="paper")
    assert result.macs == (4 * 1 * 9) * 25 + 4 + 100 * 3 + 3
    assert model.training
    assert result.layers[0].kernel == "3x3:4 g2"


def test_bad_arguments():
    model = create_model("nin", width_mult=0.25)
    with pytest.raises(ValueError, match="convention must be"):
        profile(model, 30, convention="flops")
    with pytest.raises(ValueError, match="input_size must be"):
        profile(model, (0, 30))
