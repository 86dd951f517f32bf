"""Every model family has a default recipe that learns from the command line with no training flags."""

import json

import pytest
from conftest import requires_fashion_mnist

from lowrankcnn.cli import main

pytestmark = requires_fashion_mnist


SLOWEST_TO_LEARN = ("nin_c3_lr", "googlenet_lr")
"""11-17 s each: only the slow tier trains them; the fast tier checks their recipes' init (``test_init.py``)."""


@pytest.mark.parametrize(
    "model",
    ["vgg11_gmp_sf", "kim_rank1_cifar10", "kim_flat_mnist"]
    + [pytest.param(m, marks=pytest.mark.slow) for m in SLOWEST_TO_LEARN],
)
def test_default_recipe_learns(tmp_path, model):
    """2 epochs on 3,000 images at width 0.25, no training flags: well above chance (10%).

    Before the recipes, the Kim nets stayed near chance with the command's defaults, and GoogLeNet
    diverged (its fan-out init put the first loss near 600).
    """
    out = tmp_path / model
    args = ["train", "--model", model, "--width-mult", "0.25", "--train-subset", "3000", "--test-subset", "500"]
    assert main([*args, "--epochs", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["test_acc"] > 0.3, rows  # 3x chance
