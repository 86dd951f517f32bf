import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


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
