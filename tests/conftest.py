import os

import pytest
import torch

from lowrankcnn.training import TrainConfig


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_kim_config(out: str | os.PathLike, **overrides: object) -> TrainConfig:
    """``kim_rank1_cifar10`` at width 0.25, one epoch on 256 Fashion-MNIST images padded to 32x32."""
    base = {"width_mult": 0.25, "epochs": 1, "batch_size": 64, "train_subset": 256, "test_subset": 64, "input_size": 32}
    return TrainConfig(model="kim_rank1_cifar10", out=str(out), **{**base, **overrides})


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return ((a - b).norm() / b.norm()).item()


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``slow`` (long real-data runs) run only with RUN_SLOW=1 (`make test-slow`)."""
    if os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow run; use RUN_SLOW=1 (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
