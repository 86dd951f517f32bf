import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lowrankcnn.training import TrainConfig

FASHION_MNIST = Path(os.environ.get("LOWRANKCNN_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
"""Where the tests read Fashion-MNIST (the Debian package's folder unless the variable says otherwise)."""
requires_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)
"""Mark for every test that reads the real data set: skipped, with the command that installs it, when it is missing."""


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` (pytest-xdist, as ``make test`` runs), each worker takes its share of the cores, so the
    workers' torch threads do not oversubscribe them: its own, and (``OMP_NUM_THREADS``) those of the commands it
    starts. Tests that set a thread count use ``torch.get_num_threads()``, this share."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        share = max(1, (os.cpu_count() or 1) // int(workers))
        torch.set_num_threads(share)
        os.environ["OMP_NUM_THREADS"] = str(share)


@pytest.fixture(scope="session")
def tiny_kim_run(tmp_path_factory) -> Path:
    """One finished one-epoch ``tiny_kim_config`` run, trained once per session (skips without the data set).

    Tests that write into a run take :func:`kim_run_copy` instead.
    """
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    from lowrankcnn.training import Trainer

    out = tmp_path_factory.mktemp("shared") / "kim"
    with Trainer(tiny_kim_config(out), progress=False, verbose=False) as trainer:
        trainer.fit()
    return out


@pytest.fixture(scope="module")
def kim_run_copy(tiny_kim_run, tmp_path_factory) -> Path:
    """A copy of :func:`tiny_kim_run` that a test module may write into."""
    import shutil

    out = tmp_path_factory.mktemp("run") / "kim"
    shutil.copytree(tiny_kim_run, out, ignore=shutil.ignore_patterns(".lock"))
    return out


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_kim_config(out: str | os.PathLike, **overrides: object) -> TrainConfig:
    """``kim_rank1_cifar10`` at width 0.25, one epoch on 256 Fashion-MNIST images padded to 32x32."""
    base = {"width_mult": 0.25, "epochs": 1, "batch_size": 64, "train_subset": 256, "test_subset": 64, "input_size": 32}
    return TrainConfig(model="kim_rank1_cifar10", out=str(out), **{**base, **overrides})


def tiny_vgg_config(out: str | os.PathLike, **overrides: object) -> TrainConfig:
    """``vgg11_gmp_lr`` at width 0.125, two epochs on 512 Fashion-MNIST images, one thread (seconds on a CPU)."""
    base = {"width_mult": 0.125, "epochs": 2, "batch_size": 64, "train_subset": 512, "test_subset": 128}
    return TrainConfig(model="vgg11_gmp_lr", out=str(out), **{**base, "seed": 3, "threads": 1, **overrides})


def checkpoint_state(**overrides: object) -> dict:
    """A minimal checkpoint dict that passes the schema (a tiny model, ``epoch`` epochs of history)."""
    epoch = overrides.get("epoch", 1)
    state = {
        "config": TrainConfig(model="nin_c3_lr", out="run", epochs=3).to_dict(),
        "data_info": {
            "name": "fashion-mnist",
            "num_classes": 2,
            "in_chans": 1,
            "input_size": 28,
            "class_names": ["a", "b"],
        },
        "epoch": epoch,
        "model": {"w": torch.ones(3)},
        "optimizer": {"state": {}, "param_groups": []},
        "schedule": {"step_count": 0, "factor": 1.0, "best_acc": 0.5, "bad_epochs": 0},
        "rng": {"torch": torch.get_rng_state()},
        "history": [{"epoch": 1, "test_acc": 0.5}] * epoch,
        "best_acc": 0.5,
    }
    return {**state, **overrides}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return ((a - b).norm() / b.norm()).item()


def flops(module: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``module(x)`` as torch counts them (``FlopCounterMode``: 2 per multiply-accumulate)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``slow`` (long real-data runs) run only with RUN_SLOW=1 (`make test-slow`)."""
    if os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow run; use RUN_SLOW=1 (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
