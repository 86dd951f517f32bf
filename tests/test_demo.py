"""``make demo`` (= ``lowrankcnn demo``) run twice: the second run reuses the finished runs, never replaces them."""

from pathlib import Path

import pytest
from conftest import requires_fashion_mnist

from lowrankcnn.demo import Summary, compare
from lowrankcnn.errors import RunDirectoryError
from lowrankcnn.profiling import profile
from lowrankcnn.training import TrainConfig, load_checkpoint, load_trained_model

pytestmark = requires_fashion_mnist


def assert_rows_are_the_runs(summary: Summary, out: Path) -> None:
    """Every number of the summary recomputed from the checkpoints, and the table files are views of the rows."""
    dense, low = summary.rows
    for row in summary.rows:
        model, _, state = load_trained_model(out / row.model / "last.pt")
        counts = profile(model, state["data_info"]["input_size"])
        history = state["history"]
        assert (row.params, row.macs) == (counts.params, counts.macs)
        assert row.test_acc == history[-1]["test_acc"]
        assert row.train_images_per_s == pytest.approx(sum(r["train_images_per_s"] for r in history) / len(history))
        assert row.speedup == pytest.approx(row.infer_images_per_s / dense.infer_images_per_s)
        assert row.mac_ratio == pytest.approx(dense.macs / row.macs)
    assert dense.speedup == dense.mac_ratio == 1.0 and low.mac_ratio > 1.5  # vgg11_gmp_lr: about half the MACs
    assert (out / "summary.md").read_text() == summary.markdown()
    assert f"{100 * low.test_acc:.2f}%" in summary.text() and f"{low.macs:,}" in summary.text()


def test_demo_twice_reuses_its_runs_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "demo"
    base = TrainConfig(model="", out="", width_mult=0.125, epochs=1, train_subset=512, test_subset=256, threads=1)
    models = ("vgg11_gmp", "vgg11_gmp_lr")
    summary = compare(*models, base, out, infer_batch=16)
    assert [r.model for r in summary.rows] == list(models)
    assert "training vgg11_gmp for 1 epochs" in capsys.readouterr().out
    stamps = {m: (out / m / "last.pt").stat().st_mtime_ns for m in models}
    again = compare(*models, base, out, infer_batch=16)
    assert "training" not in capsys.readouterr().out
    # the same accuracies: the finished runs were reused
    assert [r.test_acc for r in again.rows] == [r.test_acc for r in summary.rows]
    assert_rows_are_the_runs(again, out)
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
