"""What the trainer promises beyond learning: the divergence policy, exact resume across thread counts,
extending a finished run, refusing flags a resume cannot honour, quiet logs and hints that work."""

import subprocess
import sys

import pytest
import torch
from conftest import requires_fashion_mnist, tiny_vgg_config

from lowrankcnn.cli import main
from lowrankcnn.training import Trainer, TrainingDiverged, load_checkpoint
from lowrankcnn.training.metrics import read_metrics

pytestmark = requires_fashion_mnist
TINY = ["--width-mult", "0.125", "--train-subset", "256", "--test-subset", "64", "--batch-size", "64"]


class PoisonedAtEpochEnd(Trainer):
    """After the last step of the second epoch, makes one weight NaN, or the logits overflow (weights stay finite)."""

    poison = "weights"

    def on_step_end(self, epoch: int, step: int) -> None:
        if epoch == 1 and step == len(self.data.train) - 1:
            with torch.no_grad():
                if self.poison == "weights":
                    self.model.classifier.fc8.weight[0, 0] = float("nan")
                else:
                    self.model.classifier.fc8.weight.fill_(3e38)


@pytest.mark.parametrize("poison", ["weights", "test loss"])
def test_non_finite_epoch_is_never_saved(tmp_path, poison):
    expected = "weight classifier.fc8.weight became non-finite" if poison == "weights" else "test loss became nan"
    poisoned = type("Poisoned", (PoisonedAtEpochEnd,), {"poison": poison})
    trainer = poisoned(tiny_vgg_config(tmp_path / "run"), progress=False)
    with pytest.raises(TrainingDiverged, match=rf"{expected} at epoch 2 .*epoch 1\), is intact"):
        trainer.fit()
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(tmp_path / "run" / name)
        assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in state["model"].values())
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1]


def test_exploding_loss_stops_with_a_hint(tmp_path, capsys):
    args = ["train", "--model", "vgg11_gmp", "--epochs", "1", *TINY, "--lr", "5", "--out", str(tmp_path / "r")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "loss exploded to" in err and "Lower --lr" in err
    assert not (tmp_path / "r" / "last.pt").exists()


class InterruptedTrainer(Trainer):
    def on_step_end(self, epoch: int, step: int) -> None:
        if epoch == 1 and step == 3:
            raise KeyboardInterrupt


def test_resume_is_exact_under_another_thread_count(tmp_path):
    """One and two threads sum differently; the saved thread count makes the resumed run match bit for bit."""
    with Trainer(tiny_vgg_config(tmp_path / "a"), progress=False, verbose=False) as full:
        full.fit()
        reference = {k: v.clone() for k, v in full.model.state_dict().items()}
    with pytest.raises(KeyboardInterrupt):
        InterruptedTrainer(tiny_vgg_config(tmp_path / "b"), progress=False, verbose=False).fit()
    torch.set_num_threads(2)
    with Trainer.resume(tmp_path / "b", progress=False, verbose=False) as resumed:
        assert resumed.config.threads == 1 and torch.get_num_threads() == 1
        resumed.fit()
        for name, tensor in resumed.model.state_dict().items():
            assert torch.equal(tensor, reference[name]), name
    assert torch.get_num_threads() == 2  # closing restores the caller's setting


def test_extend_a_finished_run_and_refuse_flags_resume_cannot_honour(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "vgg11_gmp_lr", "--epochs", "1", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lr cannot be combined with --resume" in err
    assert main(["train", "--resume", str(out), "--epochs", "0"]) == 2
    assert "has already trained 1 epochs; --epochs must be at least that, got 0" in capsys.readouterr().err
    assert main(["train", "--resume", str(out)]) == 0
    assert "already finished its 1 epochs" in capsys.readouterr().out
    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 0
    assert "resuming vgg11_gmp_lr" in capsys.readouterr().out
    state = load_checkpoint(out, for_resume=True)
    assert state["epoch"] == 3 and state["config"]["epochs"] == 3
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]
    lrs = [r["lr"] for r in state["history"]]
    assert lrs[0] == pytest.approx(0.02) and lrs[1] < lrs[0]  # one cosine schedule laid over the 3 epochs


def _cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lowrankcnn", *args], capture_output=True, text=True, **kwargs)


def test_logs_without_a_terminal_have_epoch_lines_and_no_bars(tmp_path):
    result = _cli(["train", "--model", "vgg11_gmp_lr", "--epochs", "2", *TINY, "--out", str(tmp_path / "r")])
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "batch/s" not in result.stderr  # no tqdm frames in a log
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("epoch ")] == ["1/2", "2/2"]
    forced = _cli(["train", "--resume", str(tmp_path / "r"), "--epochs", "3", "--progress"])
    assert "batch/s" in forced.stderr and "epoch 3/3" in forced.stdout


STOP_AT = (
    "import sys\nfrom lowrankcnn.cli import main\nfrom lowrankcnn.training.trainer import Trainer\n"
    "def stop(self, epoch, step):\n    if epoch == int(sys.argv[1]) and step == 1: raise KeyboardInterrupt\n"
    "Trainer.on_step_end = stop\nsys.exit(main(sys.argv[2:]))\n"
)


@pytest.mark.parametrize("epoch", [0, 1])
def test_interrupt_hints_work_as_written(tmp_path, epoch):
    """Ctrl-C in the first epoch, or in a later one: the printed hint, run as written, finishes the run."""
    out = tmp_path / "run"
    args = ["train", "--model", "vgg11_gmp_lr", "--epochs", "2", *TINY, "--out", str(out)]
    interrupted = subprocess.run([sys.executable, "-c", STOP_AT, str(epoch), *args], capture_output=True, text=True)
    assert interrupted.returncode == 130
    hint = interrupted.stderr.strip().splitlines()[-1]
    if epoch == 0:
        assert hint.endswith("no epoch was completed, so nothing was saved; run the same command again to start over")
        again = _cli(args[0:])
    else:
        command = hint.split("`")[1]
        assert command == f"lowrankcnn train --resume {out}"
        again = _cli(command.split()[1:])
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(out)["epoch"] == 2


def test_fit_twice_is_a_no_op_and_a_closed_trainer_refuses(tmp_path):
    """A second fit() used to run on a torn-down process group; the lifecycle is the context manager's."""
    from lowrankcnn.errors import RunDirectoryError

    with Trainer(tiny_vgg_config(tmp_path / "run", epochs=1)) as trainer:
        first = trainer.fit()
        assert trainer.fit() == first and len(first) == 1
    with pytest.raises(RunDirectoryError, match="is closed"):
        trainer.fit()
