"""Batch-norm statistics are re-estimated after a projection at an epoch's end (rank-1 ``projected`` scheme)."""

import pytest
import torch
from conftest import requires_fashion_mnist, tiny_kim_config
from torch import nn

from lowrankcnn.errors import ConfigError
from lowrankcnn.layers import Rank1Conv2d
from lowrankcnn.training import Trainer
from lowrankcnn.training.batch_norm import recalibrate_batch_norm, tracked_batch_norms


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Dropout(0.5), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))


def test_recalibration_sets_the_mean_and_variance_of_the_batches_and_restores_everything_else():
    net = _net().train()
    net[4].eval()
    bn = net[2]
    bn.running_mean.fill_(7.0)
    batches = [(torch.randn(5, 2, 6, 6), torch.zeros(5)) for _ in range(4)]
    assert recalibrate_batch_norm(net, iter(batches), 3, torch.device("cpu")) == 3
    with torch.no_grad():  # dropout off: the convolution's own output, each batch weighted equally
        acts = [net[0](x) for x, _ in batches[:3]]
    mean = torch.stack([a.mean((0, 2, 3)) for a in acts]).mean(0)
    var = torch.stack([a.var((0, 2, 3), unbiased=True) for a in acts]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and net[4].momentum == 0.1
    assert [m.training for m in net] == [True, True, True, True, False]


def test_nothing_changes_without_batch_norm_or_batches():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert recalibrate_batch_norm(net, [], 5, torch.device("cpu")) == 0
    assert recalibrate_batch_norm(net, [(torch.randn(2, 2, 5, 5), None)], 0, torch.device("cpu")) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items() if "num_batches" not in k)
    assert recalibrate_batch_norm(nn.Conv2d(1, 1, 1), [(torch.randn(1, 1, 2, 2), None)], 5, torch.device("cpu")) == 0
    assert tracked_batch_norms(nn.BatchNorm2d(3, track_running_stats=False)) == []


def _fresh_statistics(trainer: Trainer) -> list[torch.Tensor]:
    """The running statistics a recalibration computes for the weights as they are now."""
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in tracked_batch_norms(trainer.model)]
    trainer.recalibrate_batch_norm()
    fresh = [t.clone() for m in tracked_batch_norms(trainer.model) for t in (m.running_mean, m.running_var)]
    for m, (mean, var) in zip(tracked_batch_norms(trainer.model), stats, strict=True):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
    return fresh


@requires_fashion_mnist
def test_after_an_epoch_end_projection_the_statistics_belong_to_the_projected_weights(tmp_path):
    """Fails on the old trainer, which tested projected weights under the statistics of the weights before."""
    config = tiny_kim_config(tmp_path / "run", epochs=2, recalibrate_bn=2, model_kwargs={"rank1_scheme": "projected"})
    with Trainer(config, progress=False, verbose=False) as trainer:
        calls = []
        original = trainer.recalibrate_batch_norm
        trainer.recalibrate_batch_norm = lambda: calls.append(trainer.epoch) or original()
        trainer.fit()
        assert calls == [0, 1]  # once after each epoch's projection
        trainer.recalibrate_batch_norm = original
        trainer.epoch -= 1  # the last epoch's batches
        stats = [t for m in tracked_batch_norms(trainer.model) for t in (m.running_mean, m.running_var)]
        assert stats and all(torch.equal(a, b) for a, b in zip(stats, _fresh_statistics(trainer), strict=True))


@requires_fashion_mnist
def test_the_factors_scheme_changes_nothing_so_nothing_is_recalibrated(tmp_path):
    with Trainer(tiny_kim_config(tmp_path / "run"), progress=False, verbose=False) as trainer:
        calls = []
        trainer.recalibrate_batch_norm = lambda: calls.append(1) or 0
        trainer.fit()
        assert any(isinstance(m, Rank1Conv2d) for m in trainer.model.modules()) and calls == []


def test_a_negative_batch_count_is_refused():
    with pytest.raises(ConfigError, match=r"^recalibrate_bn must be an integer >= 0, got -1"):
        tiny_kim_config("unused", recalibrate_bn=-1).validate()


def test_the_cli_flag_reaches_the_config_and_is_checked(tmp_path, capsys):
    from lowrankcnn.cli import main

    assert main(["train", "--model", "kim_rank1_cifar10", "--out", str(tmp_path / "r"), "--recalibrate-bn", "-2"]) == 2
    assert "--recalibrate-bn must be an integer >= 0, got -2" in capsys.readouterr().err


class _StopsInTheSecondEpoch(Trainer):
    def on_step_end(self, epoch: int, step: int) -> None:
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt


@requires_fashion_mnist
def test_a_resumed_projected_run_reproduces_the_uninterrupted_one(tmp_path):
    def config(name: str):
        overrides = {"epochs": 2, "recalibrate_bn": 2, "threads": 1, "model_kwargs": {"rank1_scheme": "projected"}}
        return tiny_kim_config(tmp_path / name, **overrides)

    with Trainer(config("full"), progress=False, verbose=False) as full:
        reference = full.fit()
    with pytest.raises(KeyboardInterrupt), _StopsInTheSecondEpoch(config("split"), progress=False, verbose=False) as t:
        t.fit()
    with Trainer.resume(tmp_path / "split", progress=False, verbose=False) as resumed:
        assert resumed.epoch == 1
        history = resumed.fit()
        assert [r["test_loss"] for r in history] == [r["test_loss"] for r in reference]
        for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
            assert torch.equal(a, b), name


@requires_fashion_mnist
def test_under_ddp_every_rank_recalibrates_on_its_shard_and_the_statistics_are_averaged(tmp_path):
    from test_training import _torchrun

    from lowrankcnn.data import build_data
    from lowrankcnn.training import load_trained_model

    out = tmp_path / "ddp"
    shape = ["--width-mult", "0.25", "--batch-size", "64", "--train-subset", "256", "--test-subset", "64"]
    _torchrun(
        ["train", "--model", "kim_rank1_cifar10", *shape, "--input-size", "32", "--epochs", "1", "--rank1-scheme",
         "projected", "--recalibrate-bn", "2", "--threads", "1", "--no-progress", "--out", str(out)],
        nproc=2,
    )  # fmt: skip
    model, _, _ = load_trained_model(out / "last.pt")
    saved = [t.clone() for m in tracked_batch_norms(model) for t in (m.running_mean, m.running_var)]
    per_rank = []
    for rank in (0, 1):  # what each rank computed: the first 2 batches of its shard of epoch 0
        data = build_data("fashion-mnist", batch_size=64, rank=rank, world_size=2, train_subset=256, input_size=32)
        data.train.set_epoch(0)
        recalibrate_batch_norm(model, data.train, 2, torch.device("cpu"))
        per_rank.append([t.clone() for m in tracked_batch_norms(model) for t in (m.running_mean, m.running_var)])
    assert not all(torch.allclose(a, b) for a, b in zip(*per_rank, strict=True))  # the shards differ
    for got, a, b in zip(saved, *per_rank, strict=True):
        torch.testing.assert_close(got, (a + b) / 2, rtol=1e-5, atol=1e-6)
