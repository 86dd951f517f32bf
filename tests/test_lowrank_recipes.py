"""Training recipes beyond from-scratch low-rank: dense warm-up then SVD (Pufferfish), automatic stable ranks
(Cuttlefish), spectral init + Frobenius decay (Khodak et al.), post-training decomposition (``decompose``)."""

import math

import pytest
import torch
from conftest import requires_fashion_mnist
from torch import nn

from lowrankcnn.cli import main
from lowrankcnn.errors import CheckpointError, ConfigError
from lowrankcnn.layers import ChannelRankConv2d, LowRankConv2d, SeparableConv2d
from lowrankcnn.layers.init import spectral_init_
from lowrankcnn.training import TrainConfig, Trainer, layer_timing, load_checkpoint, load_trained_model, lowrank_phase
from lowrankcnn.training.auto_rank import mean_slope, scaled_rank, settled, stable_rank
from lowrankcnn.training.checkpoint import stayed_dense
from lowrankcnn.training.decompose import decompose_run
from lowrankcnn.training.frobenius import decay_groups, frobenius_penalty
from lowrankcnn.training.layer_timing import input_shapes
from lowrankcnn.training.lowrank_phase import PHASE_KEY, LowRankPhase, breaks_even, start_auto, switch

TIMING = {"train_images_per_s", "epoch_time_s"}


def matrix_with(singular_values, shape=(4, 6), seed=0):
    """A ``shape`` matrix with exactly these singular values (random orthonormal factors)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=g, dtype=torch.float64))
    s = torch.zeros(shape, dtype=torch.float64)
    s[range(len(singular_values)), range(len(singular_values))] = torch.tensor(singular_values, dtype=torch.float64)
    return u @ s @ v.T


def test_stable_rank_of_known_matrices():
    assert stable_rank(matrix_with([2.0, 2.0, 1.0, 1.0])) == 2  # (4 + 4 + 1 + 1) / 4 = 2.5
    assert stable_rank(matrix_with([3.0, 2.0, 1.0])) == 1  # 14 / 9
    assert stable_rank(matrix_with([1.0, 1.0, 1.0, 1.0])) == 4  # orthogonal rows: full rank
    assert stable_rank(torch.zeros(4, 6)) == 1
    conv = matrix_with([2.0, 2.0, 1.0, 1.0], (4, 18)).reshape(4, 2, 3, 3)  # viewed as (C_out, C_in k k)
    assert stable_rank(conv) == 2
    # Cuttlefish's scale: full rank / stable rank at init, the product rounded up, capped at full rank
    assert scaled_rank(conv, init_stable_rank=2) == 4
    assert scaled_rank(conv, init_stable_rank=3) == math.ceil(2 * 4 / 3)
    assert scaled_rank(conv, init_stable_rank=1) == 4


def test_settling_rule():
    assert mean_slope([64, 20], window=2) == math.inf  # too few points
    assert mean_slope([20, 20, 20, 20], window=2) == 0.0
    assert mean_slope([40, 30, 20, 10], window=2, alpha=1.0) == pytest.approx(10.0)
    history = [{"a": 40, "b": 12}, {"a": 30, "b": 12}, {"a": 20, "b": 12}, {"a": 10, "b": 12}]
    assert settled(history, window=2, threshold=1.0) == ["b"]
    assert settled(history, already=["a"], window=2) == ["a", "b"]  # a settled layer stays settled
    # the last layer still moving is held to a 5x looser threshold (Cuttlefish relaxes it for the stragglers)
    assert settled([{"a": 10}, {"a": 12}, {"a": 14}, {"a": 16}], window=2, threshold=0.5, alpha=1.0) == ["a"]


def test_breaks_even_is_the_mac_crossover():
    conv = nn.Conv2d(64, 64, 3)  # dense 64*576 per pixel; channel rank r costs r*(576+64)
    assert breaks_even(conv, 57) and not breaks_even(conv, 58)  # 57.6 is the crossover


def test_auto_ranks_convert_each_layer_at_its_scaled_stable_rank():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3)
    )
    phase = start_auto(model, "svd", {})
    assert set(phase.init_ranks) == {"2", "4"}  # the stem stays dense (keep_first)
    with torch.no_grad():  # layer 2 "trained" to two equal singular values: stable rank 2
        model[2].weight.copy_(matrix_with([1.0, 1.0], (32, 144)).reshape(32, 16, 3, 3))
    converted, report = switch(model, "svd", {}, phase, epoch=3, auto=True)
    rank = math.ceil(2 * 32 / phase.init_ranks["2"])
    assert phase.switch_epoch == 3 and phase.ranks == {"2": rank}
    assert phase.dense_layers == ["4"]  # still random: full rank 32, more MACs than the dense conv
    assert converted[2].rank == rank and type(converted[4]) is nn.Conv2d
    assert [c.name for c in report.converted] == ["2"]
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=1e-5)  # rank >= 2: the fit is exact


def separable():
    torch.manual_seed(0)
    layer = SeparableConv2d(3, 5, 3)
    nn.init.normal_(layer.conv_1xk.weight)
    nn.init.normal_(layer.conv_kx1.weight)
    return layer


def test_frobenius_penalty_gradient_is_that_of_the_explicit_product():
    model = nn.Sequential(separable(), nn.ReLU(), nn.Conv2d(5, 2, 1))
    layer = model[0]
    (grad_h, grad_v) = torch.autograd.grad(
        0.5 * 0.3 * frobenius_penalty(model), [layer.conv_1xk.weight, layer.conv_kx1.weight]
    )
    h, v = layer.conv_1xk.weight.detach().requires_grad_(), layer.conv_kx1.weight.detach().requires_grad_()
    product = torch.einsum("omy,mcx->ocyx", v[:, :, :, 0], h[:, :, 0, :])  # W[o,c,y,x] = sum_m v[o,m,y] h[m,c,x]
    expected = torch.autograd.grad(0.5 * 0.3 * product.square().sum(), [h, v])
    torch.testing.assert_close(grad_h, expected[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_v, expected[1], rtol=1e-6, atol=0)
    assert frobenius_penalty(nn.Sequential(nn.Conv2d(2, 2, 3))).item() == 0.0


def test_frobenius_gradient_of_a_channel_rank_layer_is_the_closed_form():
    torch.manual_seed(1)
    layer = ChannelRankConv2d(4, 6, 3, rank=2)
    grads = torch.autograd.grad(0.5 * 0.3 * frobenius_penalty(layer), [layer.conv_kxk.weight, layer.conv_1x1.weight])
    a = layer.conv_kxk.weight.detach().reshape(2, 36)  # W = B A: (6, 2) @ (2, 36)
    b = layer.conv_1x1.weight.detach().reshape(6, 2)
    w = b @ a
    torch.testing.assert_close(grads[0].reshape(2, 36), 0.3 * b.T @ w, rtol=1e-5, atol=1e-7)  # λ Bᵀ W
    torch.testing.assert_close(grads[1].reshape(6, 2), 0.3 * w @ a.T, rtol=1e-5, atol=1e-7)  # λ W Aᵀ


def test_frobenius_decay_exempts_factor_weights_only():
    model = nn.Sequential(separable(), nn.BatchNorm2d(5), nn.Conv2d(5, 2, 1))
    plain, factors = decay_groups(model, 5e-4, 1e-4)
    assert factors["weight_decay"] == 0.0 and plain["weight_decay"] == 5e-4
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in factors["params"]) == ["0.conv_1xk.weight", "0.conv_kx1.weight"]
    assert "0.conv_kx1.bias" in {names[id(p)] for p in plain["params"]}
    (single,) = decay_groups(model, 5e-4, 0.0)
    assert len(single["params"]) == len(list(model.parameters()))


def test_spectral_init_is_the_svd_of_a_he_normal_weight():
    layer = separable()
    torch.manual_seed(7)
    spectral_init_(layer)
    weight, _ = layer.dense_weight()
    # a 5 x 3 separable layer of a (5*3) x (3*3) matrix keeps rank 5 of 9: the factors carry the top 5 directions,
    # split evenly: both factors have the same singular values (sqrt of the product's)
    matrix = weight.detach().permute(0, 2, 1, 3).reshape(15, 9)
    assert torch.linalg.matrix_rank(matrix) == 5
    h = layer.conv_1xk.weight.detach().permute(0, 1, 3, 2).reshape(5, 9)
    s_h = torch.linalg.svdvals(h)
    torch.testing.assert_close(s_h.square(), torch.linalg.svdvals(matrix)[:5], rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="no low-rank layer"):
        spectral_init_(nn.Conv2d(2, 2, 3))


def tiny_config(out, **overrides):
    base = {"width_mult": 0.5, "epochs": 3, "batch_size": 64, "train_subset": 256, "test_subset": 128, "lr": 0.05}
    return TrainConfig(model="resnet20", out=str(out), **{**base, "seed": 1, "threads": 1, **overrides})


def test_recipe_options_are_checked(tmp_path):
    for overrides, match in [
        ({"warmup_dense": 1}, "give lowrank"),
        ({"lowrank": "svd", "warmup_dense": 3}, "leaves no low-rank epochs"),
        ({"lowrank": "svd", "rank": "auto"}, "warmup_dense"),
        ({"lowrank": "sf", "rank": "auto", "warmup_dense": 1}, "needs lowrank svd"),
        ({"lowrank": "svd", "rank": 4, "rank_ratio": 0.5}, "not both"),
        ({"lowrank": "svd", "init": "spectral", "warmup_dense": 1}, "one or the other"),
        ({"lowrank": "svd", "frobenius_decay": -1.0}, "frobenius_decay"),
        ({"lowrank": "svd", "rank_ratio": 0.0}, "rank_ratio"),
    ]:
        with pytest.raises(ConfigError, match=match):
            tiny_config(tmp_path / "x", **overrides).validate()


class InterruptedAfterSwitch(Trainer):
    """Ctrl-C in the first low-rank epoch (the third), after the switch."""

    def on_step_end(self, epoch: int, step: int) -> None:
        if epoch == 2 and step == 1:
            raise KeyboardInterrupt


@requires_fashion_mnist
def test_warmup_switch_keeps_the_function_and_resumes_exactly(tmp_path):
    config = lambda out: tiny_config(out, lowrank="svd", rank_ratio=1.0, warmup_dense=2)  # noqa: E731
    full = Trainer(config(tmp_path / "a"), progress=False, verbose=False)
    dense_seen = {}
    original = full._switch_if_due

    def spy():
        before = full.model
        original()
        if full.model is not before:  # the switch: the same function at full rank (exact SVD)
            x = torch.randn(4, 1, 28, 28)
            dense_seen["diff"] = (before.eval()(x) - full.model.eval()(x)).abs().max().item()
            dense_seen["epoch"] = full.epoch

    full._switch_if_due = spy
    reference = full.fit()
    assert dense_seen["epoch"] == 2 and dense_seen["diff"] < 1e-4
    assert any(isinstance(m, LowRankConv2d) for m in full.model.modules())
    # the loss goes on from where the dense phase left it (no restart from scratch)
    assert reference[2]["train_loss"] < reference[0]["train_loss"]
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    assert state[PHASE_KEY]["switch_epoch"] == 2

    interrupted = InterruptedAfterSwitch(config(tmp_path / "b"), progress=False, verbose=False)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2  # dense, before the switch
    resumed = Trainer(config(tmp_path / "b"), resume=True, progress=False, verbose=False)
    history = resumed.fit()
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(history) == strip(reference)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    model, _, _ = load_trained_model(tmp_path / "b" / "last.pt")  # eval/export rebuild the low-rank form
    assert any(isinstance(m, LowRankConv2d) for m in model.modules())


@requires_fashion_mnist
def test_auto_rank_records_the_chosen_ranks(tmp_path, capsys):
    out = tmp_path / "auto"
    main(
        ["train", "--model", "resnet20", "--width-mult", "0.5", "--lowrank", "svd", "--rank", "auto"]
        + ["--warmup-dense", "2", "--epochs", "3", "--train-subset", "256", "--test-subset", "128"]
        + ["--batch-size", "64", "--lr", "0.05", "--threads", "1", "--out", str(out), "--no-progress"]
    )
    phase = load_checkpoint(out / "last.pt")[PHASE_KEY]
    assert phase["switch_epoch"] in (1, 2)
    assert len(phase["history"]) == phase["switch_epoch"] + 1
    assert set(phase["ranks"]) | set(phase["dense_layers"]) == set(phase["init_ranks"])
    assert all(1 <= r for r in phase["ranks"].values())
    text = capsys.readouterr().out
    assert "dense epoch" in text
    model, _, _ = load_trained_model(out / "last.pt")
    for name, rank in phase["ranks"].items():
        assert model.get_submodule(name).rank == rank


@requires_fashion_mnist
def test_decompose_then_fine_tune(tmp_path, capsys):
    dense = Trainer(tiny_config(tmp_path / "dense", epochs=1), progress=False, verbose=False)
    dense.fit()
    config, report, phase = decompose_run(tmp_path / "dense", "svd", tmp_path / "ft", rank_ratio=1.0, epochs=1)
    assert report is not None and report.converted and phase.source.endswith("last.pt")
    # at full rank the decomposed model is the dense one
    model, _, state = load_trained_model(tmp_path / "ft" / "last.pt")
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(model(x), dense.model.eval()(x), rtol=0, atol=1e-4)
    assert state["epoch"] == 0
    main(["train", "--resume", str(tmp_path / "ft"), "--no-progress"])
    assert load_checkpoint(tmp_path / "ft" / "last.pt")["epoch"] == 1
    with pytest.raises(ConfigError, match="already low-rank"):
        decompose_run(tmp_path / "ft", "svd", tmp_path / "again")
    assert (
        main(
            ["decompose", "--checkpoint", str(tmp_path / "dense"), "--method", "sf", "--rank", "auto"]
            + ["--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "needs $method svd".replace("$method", "--method") in capsys.readouterr().err


def test_layer_input_shapes_are_what_each_layer_sees():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 8, 3))
    shapes = input_shapes(model, ["0", "2"], torch.randn(5, 1, 28, 28))
    assert shapes == {"0": torch.Size([5, 1, 28, 28]), "2": torch.Size([5, 4, 13, 13])}


@requires_fashion_mnist
def test_dense_if_faster_keeps_the_layers_timing_chose_and_rebuilds_them(tmp_path, monkeypatch):
    timed = []

    def decide(fns, repeats, device, fallback):  # stand-in for the timing: layer3 "trains faster dense"
        name = timed_names.pop(0)
        timed.append(name)
        return ("dense" if name.startswith("layer3") else "low-rank"), {"dense": 1.0, "low-rank": 2.0}, ""

    original = layer_timing.dense_is_faster

    def spy(dense, converted, names, example_shape, repeats=layer_timing.REPEATS):
        timed_names.extend(names)
        assert tuple(example_shape[1:]) == (1, 28, 28) and example_shape[0] == 64  # a batch of the data's shape
        return original(dense, converted, names, example_shape, repeats)

    timed_names: list[str] = []
    monkeypatch.setattr(layer_timing, "fastest", decide)
    monkeypatch.setattr(lowrank_phase, "dense_is_faster", spy)
    config = tiny_config(tmp_path / "run", lowrank="svd", warmup_dense=1, epochs=2, dense_if_faster=True)
    trainer = Trainer(config, progress=False, verbose=False)
    trainer.fit()
    layer3 = [n for n in timed if n.startswith("layer3")]
    assert layer3 and len(timed) > len(layer3)
    phase = load_checkpoint(tmp_path / "run" / "last.pt")[PHASE_KEY]
    assert sorted(phase["timed_dense"]) == sorted(layer3) and set(layer3) <= set(phase["dense_layers"])
    assert set(phase["low_rank_layers"]) == set(timed) - set(layer3)
    assert not stayed_dense(tmp_path / "run" / "last.pt")  # only layer3 stayed dense
    model, _, _ = load_trained_model(tmp_path / "run" / "last.pt")
    for name in timed:
        assert isinstance(model.get_submodule(name), ChannelRankConv2d) == (name not in layer3), name
    with pytest.raises(ConfigError, match="warmup_dense"):
        tiny_config(tmp_path / "x", lowrank="svd", dense_if_faster=True).validate()


@requires_fashion_mnist
def test_train_says_when_its_rule_kept_every_layer_dense(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(layer_timing, "fastest", lambda fns, repeats, device, fallback: ("dense", {}, ""))
    argv = ["train", "--model", "resnet20", "--width-mult", "0.5", "--lowrank", "svd", "--warmup-dense", "1"]
    argv += ["--dense-if-faster", "--epochs", "2", "--train-subset", "128", "--test-subset", "64"]
    assert main([*argv, "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    assert "done: resnet20+svd (kept dense: no layer was worth converting), 2 epochs" in capsys.readouterr().out
    assert stayed_dense(tmp_path / "run" / "last.pt")


@pytest.mark.parametrize(
    "entry, message",
    [
        ("not a dict", "is not a dict"),
        ({"ranks": {"a": 0}}, "not a positive integer"),
        ({"ranks": {"a": "3"}}, "not a positive integer"),
        ({"history": [{"a": 2.5}]}, "not a positive integer"),
        ({"dense_layers": [3]}, "field 'dense_layers' is \\[3\\]"),
        ({"switch_epoch": -1}, "switch_epoch is -1"),
        ({"oops": 1}, "unknown field 'oops'"),
    ],
)
def test_a_malformed_phase_in_a_checkpoint_is_one_error(entry, message):
    with pytest.raises(CheckpointError, match=message):
        LowRankPhase.from_state({PHASE_KEY: entry}, "run/last.pt")
    assert LowRankPhase.from_state({}, "run/last.pt") is None
