"""Schedules, checkpoints and metrics files (no data needed)."""

import math
import pickle

import pytest
import torch
from conftest import checkpoint_state, requires_fashion_mnist

from lowrankcnn.errors import CheckpointError, RunDirectoryError
from lowrankcnn.training import LRSchedule, load_checkpoint, save_checkpoint
from lowrankcnn.training.metrics import read_metrics, write_metrics


def _opt() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_inverse_schedule_is_the_papers_formula_with_plateau_drops():
    opt = _opt()
    sched = LRSchedule(opt, "inverse", base_lr=0.01, total_steps=1000, weight_decay=5e-4, patience=2)
    for _ in range(250):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 / (1 + 0.01 * 5e-4 * 250))
    sched.epoch_end(0.5)
    sched.epoch_end(0.6)  # improving: no drop
    sched.epoch_end(0.6)
    assert sched.factor == 1.0
    sched.epoch_end(0.59)  # two flat epochs: divide by 10
    assert sched.factor == pytest.approx(0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001 / (1 + 0.01 * 5e-4 * 250))


def test_cosine_warmup_and_step():
    opt = _opt()
    cos = LRSchedule(opt, "cosine", 0.1, total_steps=110, warmup_steps=10)
    assert cos.lr_at(0) == pytest.approx(0.01) and cos.lr_at(9) == pytest.approx(0.1)
    assert cos.lr_at(60) == pytest.approx(0.05) and cos.lr_at(110) == pytest.approx(0.0, abs=1e-12)
    step = LRSchedule(opt, "step", 0.1, total_steps=100)
    assert [step.lr_at(t) for t in (0, 49, 50, 74, 75)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        LRSchedule(opt, "linear", 0.1, 10)


def test_schedule_state_round_trip():
    a = LRSchedule(_opt(), "inverse", 0.1, 100, 1e-3)
    for _ in range(7):
        a.step()
    a.epoch_end(0.3)
    opt = _opt()
    b = LRSchedule(opt, "inverse", 0.1, 100, 1e-3)
    b.load_state_dict(a.state_dict())
    assert b.lr == a.lr and opt.param_groups[0]["lr"] == a.lr


@pytest.mark.parametrize(
    "change",
    [{"optimizer": 3}, {"step_count": "7"}, {"factor": math.nan}, {"bad_epochs": -1}, {"step_count": None}],
)
def test_schedule_state_from_a_file_is_checked_key_by_key(change):
    """load_state_dict used to setattr every key: a hand-edited checkpoint could replace the optimizer."""
    opt = _opt()
    schedule = LRSchedule(opt, "cosine", 0.1, 100)
    state = {**schedule.state_dict(), **change}
    with pytest.raises(ValueError, match="schedule state has"):
        schedule.load_state_dict({k: v for k, v in state.items() if v is not None})
    assert schedule.optimizer is opt and schedule.step_count == 0


def test_checkpoint_round_trip_and_atomicity(tmp_path):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, checkpoint_state(epoch=2))
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.ones(3))
    assert load_checkpoint(path, for_resume=True)["history"] == [{"epoch": 1, "test_acc": 0.5}] * 2
    assert load_checkpoint(tmp_path / "run")["epoch"] == 2  # a run directory means its last.pt
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left behind

    def boom(_f):
        raise RuntimeError("disk full")

    from lowrankcnn.utils import atomic_write_bytes

    with pytest.raises(RuntimeError):
        atomic_write_bytes(path, boom)
    assert load_checkpoint(path)["epoch"] == 2  # the old file is untouched
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint at all", "not a readable checkpoint"),
        (None, "not a readable checkpoint"),  # truncated
        (pickle.dumps(Evil(), protocol=2), "not a readable checkpoint"),
    ],
)
def test_bad_checkpoints_give_clear_errors(tmp_path, content, message, capsys):
    path = tmp_path / "last.pt"
    if content is None:
        save_checkpoint(path, checkpoint_state(model={"w": torch.randn(1000)}))
        content = path.read_bytes()[:500]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_foreign_torch_file_is_rejected(tmp_path):
    torch.save({"weights": torch.ones(2)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint written by lowrankcnn: format None"):
        load_checkpoint(tmp_path / "x.pt")


def test_metrics_files(tmp_path):
    rows = [{"epoch": i, "lr": 0.1, "train_loss": 1.0 / i, "test_acc": 0.5, "extra": math.pi} for i in (1, 2)]
    write_metrics(tmp_path, rows)
    assert read_metrics(tmp_path) == rows
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,lr,train_loss") and len(csv_lines) == 3
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{broken\n')
    with pytest.raises(RunDirectoryError, match="metrics.jsonl:2 is not valid JSON"):
        read_metrics(tmp_path)


def test_every_train_flag_reaches_the_config():
    from lowrankcnn.cli import build_parser
    from lowrankcnn.cli.train import _train_config

    flags = (
        "train --model kim_rank1_cifar10 --out runs/x --epochs 3 --batch-size 32 --lr 0.1 --optimizer adamw "
        "--schedule inverse --warmup-epochs 0.5 --label-smoothing 0.1 --bn --dropout 0.2 --rank1-scheme projected "
        "--project-every 7 --project-unit step --channels-last --no-augment --seed 9 --train-subset 100 "
        "--test-subset 50 --input-size 32 --data-dir /d"
    )
    args = build_parser().parse_args(flags.split())
    c = _train_config(args)
    assert (c.epochs, c.batch_size, c.lr, c.optimizer, c.schedule) == (3, 32, 0.1, "adamw", "inverse")
    assert (c.warmup_epochs, c.label_smoothing, c.channels_last, c.augment, c.seed) == (0.5, 0.1, True, False, 9)
    assert (c.project_every, c.project_unit, c.train_subset, c.test_subset) == (7, "step", 100, 50)
    assert (c.input_size, c.data_dir, c.out) == (32, "/d", "runs/x")
    assert c.model_kwargs == {"bn": True, "dropout": 0.2, "rank1_scheme": "projected"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"config": None}, "missing 'config'"),
        ({"data_info": None}, "missing 'data_info'"),
        ({"optimizer": None}, "missing 'optimizer'"),
        ({"rng": None}, "missing 'rng'"),
        ({"config": {"model": "nin", "out": "x", "epochs": "ten"}}, "field 'epochs' is 'ten' \\(str\\), expected int"),
        ({"config": {"model": "nin", "out": "x", "lr": None}}, "field 'lr' is None"),
        ({"config": ["nin"]}, "the configuration is a list"),
        ({"epoch": -1}, r"epoch counter -1 outside 0..3"),
        ({"epoch": 7, "history": [{}] * 7}, r"epoch counter 7 outside 0..3"),
        ({"epoch": 2, "history": [{}]}, "'history' has 1 rows for 2 epochs"),
        ({"model": {"w": [1.0, 2.0]}}, "'model' is not a state dict of tensors"),
        ({"data_info": {"name": "x", "num_classes": 2, "in_chans": 1, "input_size": 28}}, "class_names"),
        ({"rng": {"torch": "seed"}}, "'rng' has no torch generator state"),
        ({"reference_loss": -1.0}, "'reference_loss' is -1.0, not a finite loss >= 0"),
        ({"reference_loss": "1.5"}, "'reference_loss' is '1.5'"),
    ],
)
def test_checkpoint_schema_is_checked_in_one_place(tmp_path, change, message):
    """Foreign, incomplete or hand-edited checkpoints are one CheckpointError naming what is wrong, for resume."""
    state = checkpoint_state(**{k: v for k, v in change.items() if v is not None})
    for key in (k for k, v in change.items() if v is None):
        del state[key]
    save_checkpoint(tmp_path / "last.pt", state)
    with pytest.raises(CheckpointError, match=f"not a checkpoint written by lowrankcnn: .*{message}"):
        load_checkpoint(tmp_path / "last.pt", for_resume=True)


@requires_fashion_mnist
def test_another_models_weights_on_resume_are_refused(tmp_path):
    from lowrankcnn import create_model
    from lowrankcnn.training import Trainer

    state = checkpoint_state(model=create_model("nin", width_mult=0.125).state_dict())
    state["config"] = {**state["config"], "model": "vgg11_gmp_lr", "out": str(tmp_path), "width_mult": 0.125}
    save_checkpoint(tmp_path / "last.pt", state)
    with pytest.raises(CheckpointError, match="its weights do not fit model vgg11_gmp_lr"):
        Trainer.resume(tmp_path, progress=False)
