"""Run directories: one run per folder, one writer at a time, and an end-of-epoch state repaired after any kill."""

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import FASHION_MNIST, requires_fashion_mnist

from lowrankcnn.cli import main
from lowrankcnn.errors import RunDirectoryError
from lowrankcnn.training import RunDirectory, load_checkpoint
from lowrankcnn.training.metrics import read_metrics

DATA = FASHION_MNIST
pytestmark = requires_fashion_mnist
TINY = ["--width-mult", "0.125", "--train-subset", "256", "--test-subset", "64", "--batch-size", "64", "--threads", "1"]


def train_args(out: Path, model: str = "vgg11_gmp_lr", epochs: int = 2) -> list[str]:
    return ["train", "--model", model, "--epochs", str(epochs), *TINY, "--out", str(out)]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_existing_run_is_refused_unless_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(out, epochs=1)) == 0
    before = {name: digest(out / name) for name in ("last.pt", "best.pt", "metrics.jsonl", "config.json")}
    capsys.readouterr()
    assert main(train_args(out, model="nin_c3_lr", epochs=1)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a vgg11_gmp_lr run with 1 epoch(s) done" in err
    assert "--resume" in err and "--overwrite" in err
    assert before == {name: digest(out / name) for name in before}  # nothing touched
    assert main([*train_args(out, model="nin_c3_lr", epochs=1), "--overwrite"]) == 0
    assert load_checkpoint(out)["config"]["model"] == "nin_c3_lr"


def test_second_writer_fails_at_once_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from lowrankcnn.training import RunDirectory; r = RunDirectory({str(out)!r}); "
            "r.lock(); print('locked', flush=True); import time; time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(train_args(out, epochs=1)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"in use by another training run (PID {holder.pid})" in err
        assert not (out / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(train_args(out, epochs=1)) == 0  # the lock died with its holder


def test_out_that_is_a_file_and_resume_without_checkpoint(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(train_args(tmp_path / "file")) == 2
    assert "is a file, not a run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "has no last.pt to resume" in capsys.readouterr().err


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from lowrankcnn.cli import main
    from lowrankcnn.training.trainer import Trainer
    from lowrankcnn.utils import io

    kill_after = sys.argv[1]  # a file of the epoch-2 commit to die right after, or "" to die just before it
    run_epoch, replace, epoch = Trainer._run_epoch, io.os.replace, [0]

    def better_every_epoch(self):  # every epoch is the best so far, so each commit writes best.pt too
        row = run_epoch(self)
        row["test_acc"] = 0.1 * row["epoch"]
        epoch[0] = row["epoch"]
        if epoch[0] == 2 and not kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return row

    def replace_then_die(src, dst):
        replace(src, dst)
        if epoch[0] == 2 and os.path.basename(dst) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    Trainer._run_epoch = better_every_epoch
    io.os.replace = replace_then_die
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize("kill_after", ["", "last.pt", "best.pt", "metrics.jsonl"])
def test_kill_at_each_commit_boundary_is_repaired(tmp_path, kill_after, capsys):
    """SIGKILL at every boundary of the last epoch's commit; ``--resume`` then leaves a complete, consistent run."""
    out = tmp_path / "run"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    result = subprocess.run([sys.executable, str(script), kill_after, *train_args(out)], capture_output=True)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    assert main(["train", "--resume", str(out)]) == 0
    last = load_checkpoint(out, for_resume=True)
    history = last["history"]
    assert last["epoch"] == 2 and [r["epoch"] for r in history] == [1, 2]
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    best_epoch = max(history, key=lambda r: (r["test_acc"], -r["epoch"]))["epoch"]
    assert load_checkpoint(out / "best.pt")["epoch"] == best_epoch
    if kill_after in ("last.pt", "best.pt"):
        assert "repaired" in capsys.readouterr().out


def test_repair_is_a_no_op_on_a_consistent_run(tmp_path):
    out = tmp_path / "run"
    assert main(train_args(out, epochs=1)) == 0
    directory = RunDirectory(out)
    directory.lock()
    try:
        assert directory.reconcile(load_checkpoint(out, for_resume=True)) == []
        with pytest.raises(RunDirectoryError, match="this process"):
            RunDirectory(out).lock()
    finally:
        directory.unlock()
    state = load_checkpoint(out, for_resume=True)
    (out / "best.pt").unlink()
    assert RunDirectory(out).reconcile(state) == ["best.pt"]
    assert torch.equal(
        load_checkpoint(out / "best.pt")["model"]["classifier.fc8.weight"], state["model"]["classifier.fc8.weight"]
    )


def test_a_stray_rank_variable_does_not_bypass_the_run_directory_checks(tmp_path, monkeypatch, capsys):
    """RANK=1 without WORLD_SIZE used to skip the lock and the claim, silently replacing the run."""
    out = tmp_path / "run"
    assert main(train_args(out, epochs=1)) == 0
    before = digest(out / "last.pt")
    capsys.readouterr()
    for rank in ("1", "-1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        assert main(train_args(out, model="vgg11_gmp", epochs=1)) == 2
        assert "already holds a vgg11_gmp_lr run" in capsys.readouterr().err
    assert digest(out / "last.pt") == before


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(tmp_path, capsys):
    """--overwrite with a wrong --data-dir used to delete the old run, then fail: nothing left."""
    out = tmp_path / "run"
    assert main(train_args(out, epochs=1)) == 0
    before = {name: digest(out / name) for name in ("last.pt", "best.pt", "metrics.jsonl", "config.json")}
    capsys.readouterr()
    bad = [*train_args(out, epochs=1), "--overwrite", "--data-dir", str(tmp_path / "nowhere")]
    assert main(bad) == 2
    assert "not found" in capsys.readouterr().err
    assert before == {name: digest(out / name) for name in before}


def test_data_dir_is_saved_absolute_and_resume_may_point_at_moved_data(tmp_path, monkeypatch, capsys):
    """A relative --data-dir was saved verbatim: resume or eval from another folder read other data or failed."""
    data = tmp_path / "data"
    data.mkdir()
    for name in DATA.glob("*-ubyte.gz"):
        (data / name.name).symlink_to(name)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main([*train_args(out, epochs=1), "--data-dir", "data"]) == 0
    assert load_checkpoint(out)["config"]["data_dir"] == str(data)
    data.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--epochs", "2", "--data-dir", str(tmp_path / "moved")]) == 0
    saved = load_checkpoint(out)
    assert saved["epoch"] == 2 and saved["config"]["data_dir"] == str(tmp_path / "moved")
