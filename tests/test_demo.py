"""``make demo`` (= ``lowrankcnn demo``) run twice: the second run reuses the finished runs, never replaces them."""

import os
from pathlib import Path

import pytest

from lowrankcnn.demo import compare
from lowrankcnn.errors import RunDirectoryError
from lowrankcnn.training import TrainConfig, load_checkpoint

DATA = Path(os.environ.get("LOWRANKCNN_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
pytestmark = pytest.mark.skipif(
    not (DATA / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)


def test_demo_twice_reuses_its_runs_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "demo"
    base = TrainConfig(model="", out="", width_mult=0.125, epochs=1, train_subset=512, test_subset=256, threads=1)
    models = ("vgg11_gmp", "vgg11_gmp_lr")
    rows, _ = compare(*models, base, out, infer_batch=16)
    assert [r[0] for r in rows] == list(models)
    assert "training vgg11_gmp for 1 epochs" in capsys.readouterr().out
    stamps = {m: (out / m / "last.pt").stat().st_mtime_ns for m in models}
    again, _ = compare(*models, base, out, infer_batch=16)
    assert "training" not in capsys.readouterr().out
    assert [r[3] for r in again] == [r[3] for r in rows]  # the same accuracies: the finished runs were reused
    assert stamps == {m: (out / m / "last.pt").stat().st_mtime_ns for m in models}
    other = TrainConfig(**{**base.to_dict(), "lr": 0.05})
    with pytest.raises(RunDirectoryError, match=r"made with other settings \(lr 0.02 -> 0.05\).*overwrite"):
        compare(*models, other, out, infer_batch=16)
    compare(*models, other, out, infer_batch=16, overwrite=True)
    assert load_checkpoint(out / "vgg11_gmp")["config"]["lr"] == 0.05


def test_a_full_data_request_is_not_answered_with_a_subset_run(tmp_path):
    """``train_subset=None`` (the full set) used to count as "unspecified", so a subset run was silently reused."""
    from lowrankcnn.training.reuse import config_differences

    subset = TrainConfig(model="nin", out="r", train_subset=256, threads=2)
    full = TrainConfig(model="nin", out="r", train_subset=None, threads=None)
    assert config_differences(subset, full) == ["train_subset 256 -> None"]  # threads=None: whatever the run used
