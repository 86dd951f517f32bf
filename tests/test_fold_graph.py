"""Batch norms folded along the traced data flow (residual blocks that call ``self.conv1``/``self.bn1``)."""

import torch
from conftest import rel_err
from test_convert import Block
from torch import nn

from lowrankcnn import deploy
from lowrankcnn.deployment import deploy_report


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's layout: batch norm, then ``self.drop``, then ``self.act``."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.drop, self.act = nn.Identity(), nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class ScaledBatchNorm(nn.BatchNorm2d):
    """A subclass that does more than normalize: never folded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 8, 3, padding=1), BatchNormAct2d(8)
        self.block = Block(8)
        self.conv, self.odd_bn = nn.Conv2d(8, 8, 3, padding=1), ScaledBatchNorm(8)
        self.tap, self.tap_bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem_bn(self.stem(x)))
        y = self.tap(x)
        return self.odd_bn(self.conv(x)) + self.tap_bn(y) + y  # the tap's output is read twice: not foldable


def randomize_batchnorms_(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_residual_and_act_batch_norms_fold_and_the_rest_say_why():
    model = randomize_batchnorms_(Net())
    deployed = deploy(model, "factorized", input_shape=(2, 3, 12, 12))
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) < 1e-5
    left = {n for n, m in deployed.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert left == {"odd_bn", "tap_bn"}  # block.bn1/bn2 (attributes) and stem_bn (a BN + activation) folded
    assert isinstance(deployed.stem_bn, nn.Sequential) and isinstance(deployed.stem_bn[1], nn.SiLU)
    reasons = {r.name: r.note for r in deploy_report(deployed) if r.form == "unfolded"}
    assert "ScaledBatchNorm is not a plain batch norm" in reasons["odd_bn"]
    assert "no conv or linear output flows only into it" in reasons["tap_bn"]


def test_a_block_whose_forward_cannot_be_traced_keeps_its_batch_norms_exact():
    class Untraceable(Block):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 1e9:  # data-dependent control flow: torch.fx cannot trace this
                return x
            return super().forward(x)

    model = randomize_batchnorms_(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Untraceable(8)))
    deployed = deploy(model, "factorized", input_shape=(1, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) < 1e-5
    assert {r.name for r in deploy_report(deployed)} == {"1.bn1", "1.bn2"}
