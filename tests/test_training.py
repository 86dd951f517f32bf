"""Training on real Fashion-MNIST subsets: learning, exact resume, NaN, bad inputs, DDP, eval and plot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import requires_fashion_mnist, tiny_vgg_config

from lowrankcnn.cli import main
from lowrankcnn.layers import Rank1Conv2d
from lowrankcnn.training import TrainConfig, Trainer, TrainingDiverged, load_checkpoint, load_trained_model
from lowrankcnn.training.metrics import read_metrics

pytestmark = requires_fashion_mnist
TIMING = {"train_images_per_s", "epoch_time_s"}


def small_config(tmp_path: Path, **kwargs) -> TrainConfig:
    return tiny_vgg_config(tmp_path / "run", **{"train_subset": 1024, "test_subset": 256, **kwargs})


def test_small_lowrank_model_learns_fashion_mnist(tmp_path):
    config = small_config(
        tmp_path, width_mult=0.25, epochs=3, train_subset=6000, test_subset=1000, lr=0.02,
        threads=torch.get_num_threads(), model_kwargs={"bn": True},
    )  # fmt: skip
    history = Trainer(config, progress=False).fit()
    assert history[-1]["test_acc"] > 0.70  # chance is 0.10
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    run = Path(config.out)
    assert {p.name for p in run.iterdir()} >= {"last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "config.json"}
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    assert len((run / "metrics.csv").read_text().splitlines()) == 4


@pytest.mark.slow
def test_full_fashion_mnist_two_epochs(tmp_path):
    """The full-data version of the test above (about 2 minutes on 2 cores)."""
    config = small_config(
        tmp_path,
        width_mult=0.25,
        epochs=2,
        train_subset=None,
        test_subset=None,
        batch_size=128,
        lr=0.02,
        model_kwargs={"bn": True},
    )
    history = Trainer(config, progress=False).fit()
    assert history[-1]["test_acc"] > 0.85


class InterruptedTrainer(Trainer):
    """Raises KeyboardInterrupt (as Ctrl-C would) at step 5 of the second epoch."""

    def on_step_end(self, epoch: int, step: int) -> None:
        if epoch == 1 and step == 5:
            raise KeyboardInterrupt


def test_interrupted_and_resumed_run_reproduces_the_uninterrupted_one(tmp_path):
    full = Trainer(small_config(tmp_path / "a"), progress=False)
    reference = full.fit()
    interrupted = InterruptedTrainer(small_config(tmp_path / "b"), progress=False)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert load_checkpoint(tmp_path / "b" / "run" / "last.pt")["epoch"] == 1
    resumed = Trainer(small_config(tmp_path / "b"), resume=True, progress=False)
    assert resumed.epoch == 1
    history = resumed.fit()
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(history) == strip(reference)  # exactly equal metrics
    assert strip(read_metrics(tmp_path / "b" / "run")) == strip(reference)  # no duplicated rows
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


class PoisonedTrainer(Trainer):
    """Turns the loss into NaN in the second epoch (as a diverging run would)."""

    def loss(self, output, target):
        loss = super().loss(output, target)
        return loss * float("nan") if self.epoch == 1 else loss


def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(tmp_path):
    trainer = PoisonedTrainer(small_config(tmp_path), progress=False)
    with pytest.raises(
        TrainingDiverged, match=r"loss became nan at epoch 2, step 1 .*run/last.pt \(epoch 1\), is intact"
    ):
        trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_cli_diverging_lr_is_one_line(tmp_path, capsys):
    args = [
        "train",
        "--model",
        "nin_c3_lr",
        "--width-mult",
        "0.125",
        "--epochs",
        "1",
        "--train-subset",
        "256",
        "--test-subset",
        "64",
        "--batch-size",
        "64",
        "--lr",
        "1e12",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "loss became" in err and "No checkpoint was written yet" in err


def test_missing_data_names_the_install_command(tmp_path, capsys):
    code = main(["train", "--model", "vgg11_gmp_lr", "--data-dir", str(tmp_path / "nowhere"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install -y dataset-fashion-mnist" in err


def test_corrupt_checkpoint_for_eval_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"\x80\x02garbage")
    assert main(["eval", "--checkpoint", str(run / "last.pt")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_train_eval_plot(tmp_path, capsys):
    out = tmp_path / "cli"
    args = [
        "train",
        "--model",
        "vgg11_gmp",
        "--width-mult",
        "0.125",
        "--epochs",
        "1",
        "--train-subset",
        "512",
        "--test-subset",
        "200",
        "--batch-size",
        "64",
        "--out",
        str(out),
        "--no-progress",
        "--seed",
        "1",
    ]
    assert main(args) == 0
    assert "done: vgg11_gmp, 1 epochs" in capsys.readouterr().out
    png = tmp_path / "confusion.png"
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--test-subset", "200", "--confusion", str(png)]) == 0
    text = capsys.readouterr().out
    acc = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["test_acc"]
    assert f"top-1 {acc:.4f}" in text  # eval reproduces the trainer's own test accuracy
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = tmp_path / "curves.png"
    assert main(["plot", str(out), str(out), "--out", str(curves)]) == 0
    assert curves.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path), "--out", str(curves)]) == 2


def _torchrun(args: list[str], nproc: int) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "lowrankcnn",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_process_ddp_matches_single_process(tmp_path):
    """Same global batch (64 = 2 x 32), dropout off: DDP and one process take the same steps.

    Tolerance: gradients are averaged over ranks in a different order than one process sums
    them, so parameters agree to float32 rounding (max abs diff < 1e-4) rather than bit-exactly.
    """
    common = [
        "train",
        "--model",
        "vgg11_gmp_lr",
        "--width-mult",
        "0.125",
        "--epochs",
        "2",
        "--train-subset",
        "512",
        "--test-subset",
        "128",
        "--batch-size",
        "64",
        "--dropout",
        "0",
        "--no-bn",  # batch statistics are per rank under DDP (no SyncBatchNorm), so equality needs no BN
        "--seed",
        "5",
        "--no-progress",
        "--threads",
        "1",
    ]
    _torchrun([*common, "--out", str(tmp_path / "ddp")], nproc=2)
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    ddp, single = load_checkpoint(tmp_path / "ddp" / "last.pt"), load_checkpoint(tmp_path / "single" / "last.pt")
    for name, tensor in single["model"].items():
        diff = (ddp["model"][name] - tensor).abs().max().item()
        assert diff < 1e-4, f"{name}: DDP and single-process weights differ by {diff:.2e}"
    for a, b in zip(ddp["history"], single["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=2 / 128)
    assert not (tmp_path / "ddp" / "metrics.jsonl.tmp").exists()


def test_cli_model_kwargs_reach_the_model_and_bad_ones_are_one_line(tmp_path, capsys):
    args = ["train", "--model", "kim_rank1_cifar10", "--width-mult", "0.25", "--input-size", "32", "--epochs", "1"]
    args += ["--train-subset", "200", "--test-subset", "100", "--batch-size", "100", "--no-progress"]
    out = tmp_path / "run"
    assert main([*args, "--out", str(out), "--model-kwargs", "shared_spatial=False", "rank1_scheme=projected"]) == 0
    model, _, state = load_trained_model(out / "last.pt")
    assert state["config"]["model_kwargs"].items() >= {"shared_spatial": False, "rank1_scheme": "projected"}.items()
    layers = [m for m in model.modules() if isinstance(m, Rank1Conv2d)]
    assert layers and all(not m.shared_spatial and m.scheme == "projected" for m in layers)
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--model-kwargs", "colour=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not accept the keyword colour=" in err
    assert main([*args, "--out", str(tmp_path / "bad"), "--model-kwargs", "shared_spatial"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected KEY=VALUE" in err
