"""Mistakes the training recipes must refuse in one line, and the bugs a review of the first version found (each
test here failed on 4adb8d8): conversion options checked before a warm-up trains, ``lowrank_kwargs`` limited to the
layer's options, malformed checkpoint phases, ``best.pt`` of a warm-up run, ``convert(per_layer=)`` mistakes, the
leaderboard's reuse and report, ``decompose``'s threads and output folder."""

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lowrankcnn.cli import main
from lowrankcnn.convert import convert
from lowrankcnn.errors import CheckpointError, ConfigError
from lowrankcnn.layers import LowRankConv2d
from lowrankcnn.training import TrainConfig, Trainer, load_checkpoint, load_trained_model
from lowrankcnn.training.decompose import decompose_run

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def tiny(out, **overrides):
    base = dict(width_mult=0.5, epochs=3, batch_size=64, train_subset=256, test_subset=128, lr=0.05, seed=1, threads=1)
    return TrainConfig(model="resnet20", out=str(out), **{**base, **overrides})


# --- 1. warm-up runs check their conversion options only at the switch -------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [
        {"lowrank": "lr", "rank": 4},  # rank is an svd option
        {"lowrank": "svd", "lowrank_kwargs": {"rank": "auto"}},
        {"lowrank": "svd", "keep_dense": ["layer*"]},  # nothing left to convert
    ],
)
def test_warmup_run_rejects_bad_conversion_options_before_training(tmp_path, overrides):
    config = tiny(tmp_path / "run", warmup_dense=1, **overrides)
    with pytest.raises(ConfigError):
        Trainer(config, progress=False, verbose=False).fit()
    # on 4adb8d8 the ConfigError only comes at the switch: epoch 1 was trained and committed, and the run can never
    # be resumed past it (--resume cannot change the saved options)
    assert not (tmp_path / "run" / "last.pt").exists()


# --- 2. --lowrank-kwargs keys that are convert() keywords: tracebacks -------------------------------------------
@pytest.mark.parametrize("kwarg", ["inplace=false", "count=true", "per_layer=5", "exclude=5", "method=svd"])
def test_lowrank_kwargs_colliding_with_convert_keywords_is_a_one_line_error(tmp_path, kwarg, capsys):
    argv = ["train", "--model", "resnet20", "--width-mult", "0.5", "--lowrank", "svd", "--lowrank-kwargs", kwarg]
    argv += ["--epochs", "2", "--train-subset", "256", "--test-subset", "128", "--threads", "1", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2  # TypeError / AttributeError traceback on 4adb8d8


def test_lowrank_kwargs_init_fit_breaks_a_warmup_run_at_the_switch(tmp_path):
    config = tiny(tmp_path / "run", lowrank="svd", warmup_dense=1, lowrank_kwargs={"init": "fit"})
    with pytest.raises(ConfigError):  # TypeError "multiple values for keyword argument 'init'" after epoch 1
        Trainer(config, progress=False, verbose=False).fit()


# --- 3. malformed lowrank_phase entries: tracebacks instead of CheckpointError -----------------------------------
class StopInSecondEpoch(Trainer):
    def on_step_end(self, epoch, step):
        if epoch == 1:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def auto_rank_run(tmp_path_factory):
    """An auto-rank run stopped in its dense phase (after one epoch), trained once for the module."""
    src = tmp_path_factory.mktemp("phase") / "src"
    config = tiny(src, lowrank="svd", rank="auto", warmup_dense=2, epochs=4)
    with pytest.raises(KeyboardInterrupt):
        StopInSecondEpoch(config, progress=False, verbose=False).fit()
    return src


@pytest.mark.parametrize(
    "patch",
    [
        {"ranks": [1, 2]},
        {"history": 7},
        {"settled": 5},
        {"init_ranks": [1]},
        {"init_ranks": {"layer1.0.conv1": "x"}},
        {"init_ranks": {"nope": 3}},
        {"switch_epoch": 1, "ranks": {"layer2.0.conv1": 2}, "dense_layers": [1]},
    ],
)
def test_malformed_phase_is_a_checkpoint_error(tmp_path, auto_rank_run, patch):
    src = tmp_path / "src"
    shutil.copytree(auto_rank_run, src)
    (src / ".lock").unlink(missing_ok=True)
    state = load_checkpoint(src / "last.pt", for_resume=True)
    state["lowrank_phase"] = {**state["lowrank_phase"], **patch}
    torch.save(state, src / "last.pt")
    with pytest.raises(CheckpointError):  # eval, or at the latest the resume (a dense phase's tracked layers)
        load_trained_model(src / "last.pt")
        Trainer.resume(src, progress=False, verbose=False)


# --- 4. best.pt of a warm-up run is the dense model ----------------------------------------------------------------
def test_best_checkpoint_of_a_warmup_run_is_low_rank(tmp_path):
    # the epoch right after the switch usually scores below the dense one (the truncated SVD loses accuracy)
    config = tiny(tmp_path / "run", lowrank="svd", warmup_dense=1, epochs=2)
    with Trainer(config, progress=False, verbose=False) as t:
        t.fit()
    model, _, state = load_trained_model(tmp_path / "run" / "best.pt")
    assert state["epoch"] > config.warmup_dense, "best.pt was chosen among the dense warm-up epochs"
    assert any(isinstance(m, LowRankConv2d) for m in model.modules())


# --- 5. convert(per_layer=) --------------------------------------------------------------------------------------
def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
    )


def test_per_layer_unknown_name_does_not_mutate_inplace():
    model = _net()
    with pytest.raises(ConfigError):
        convert(model, "svd", inplace=True, count=False, per_layer={"nope": {"rank": 2}})
    assert all(type(m) is not type(None) and not isinstance(m, LowRankConv2d) for m in model)


@pytest.mark.parametrize("per_layer", [{"2": {"rnak": 4}}, {"2": {"rank": 10**6}}, {"1": {"rank": 2}}])
def test_per_layer_mistakes_are_errors_not_silently_dense(per_layer):
    with pytest.raises(ConfigError):
        convert(_net(), "svd", count=False, per_layer=per_layer)


# --- 6. leaderboard ----------------------------------------------------------------------------------------------
def _fake_run(path, epochs, accs, **config):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({**config, "epochs": epochs}))
    (path / "metrics.jsonl").write_text("".join(json.dumps({"test_acc": a}) + "\n" for a in accs))


def test_report_does_not_mix_sf_with_sf_si_fd(tmp_path):
    from _leaderboard_report import _finished_runs

    _fake_run(tmp_path / "sf_s0", 1, [0.8])
    _fake_run(tmp_path / "sf_si_fd_s0", 1, [0.9])
    assert {seed: p.name for seed, p in _finished_runs(tmp_path, "sf").items()} == {0: "sf_s0"}


def test_one_seed_equal_claim_is_unconfirmed():
    from _leaderboard_report import Row, _verdicts

    rows = [Row(n, n, {0: a}, 1, 1, 1.0, {}) for n, a in (("lr", 0.900), ("lr_join", 0.901))]
    line = next(v for v in _verdicts(rows) if "lr ≈ lr_join" in v)
    assert "unconfirmed" in line, line  # 4adb8d8: "does not hold" on one seed


@pytest.mark.parametrize(
    "consecutive, verdict",
    [(0.909, "does not hold here: consecutive trains too (the +0.30 pp gap: one seed)"), (0.2, ": holds: consecutive")],
)
def test_kims_claim_is_about_failing_to_train_not_a_small_gap(consecutive, verdict):
    from _leaderboard_report import Row, _verdicts

    rows = [Row(n, n, {0: a}, 1, 1, 1.0, {}) for n, a in (("rank1", 0.912), ("consecutive", consecutive))]
    line = next(v for v in _verdicts(rows) if "Kim" in v)
    assert verdict in line, line


def test_a_claim_compares_two_entries_on_the_seeds_both_have():
    from _leaderboard_report import Row, _verdicts

    rows = [Row("lr", "lr", {0: 0.90, 1: 0.92}, 1, 1, 1.0, {}), Row("lr_join", "lr_join", {0: 0.91}, 1, 1, 1.0, {})]
    line = next(v for v in _verdicts(rows) if "lr ≈ lr_join" in v)
    assert "90.00% vs 91.00% on seed 0 (-1.00 pp" in line and "one shared seed: unconfirmed" in line, line


def test_a_claim_on_an_entry_its_rule_kept_dense_is_not_testable():
    from _leaderboard_report import Row, _verdicts

    rows = [
        Row(n, n, {0: a, 1: a}, 1, 1, 1.0, {}, n == "cuttlefish_ranks")
        for n, a in (("cuttlefish_ranks", 0.93), ("fixed_ranks", 0.91))
    ]
    line = next(v for v in _verdicts(rows) if "Cuttlefish" in v)
    assert "not testable here: cuttlefish_ranks's rule kept every layer dense" in line, line


def test_cuttlefish_claim_compares_with_a_fixed_rank_run_of_the_same_recipe_and_macs():
    import leaderboard

    from lowrankcnn.models import create_model
    from lowrankcnn.profiling import profile

    auto, fixed = (leaderboard.BY_NAME[n].config(0) for n in ("cuttlefish_ranks", "fixed_ranks"))
    differs = {k for k, v in auto.to_dict().items() if fixed.to_dict()[k] != v}
    assert differs == {"rank", "rank_ratio", "out"}, differs
    model, _ = convert(create_model("resnet20", num_classes=10, in_chans=1), method="svd", rank_ratio=fixed.rank_ratio)
    assert abs(profile(model, (1, 28, 28)).macs / 25_968_288 - 1) < 0.01  # cuttlefish_ranks seed 0's MACs


def test_pareto_plot_puts_the_label_of_a_crowded_point_below_it():
    from _leaderboard_report import Row, _labels_below

    rows = [
        Row(n, n, {0: a}, 1, m, 1.0, {}) for n, a, m in (("sf", 0.9303, 21.8), ("cr", 0.9300, 26.0), ("x", 0.91, 5))
    ]
    assert _labels_below(rows, lambda r: r.macs) == {"cr"}  # sf's and cr's labels would overlap; x is far away
    rows[1] = Row("cr", "cr", {0: 0.9313}, 1, 26.0, 1.0, {})  # the point to the right is the upper one now
    assert _labels_below(rows, lambda r: r.macs) == {"sf"}  # so the left one's label goes below


def test_which_to_pick_lists_the_pareto_front_cheapest_first():
    from _leaderboard_report import Row, _front, _which_to_pick

    def row(name, acc, macs, speedup):
        return Row(name, name, {0: acc}, 1, macs, 1.0, {"torch": {"speedup": speedup}})

    rows = [row("dense", 0.93, 30, 1.0), row("lr", 0.92, 10, 1.3), row("bad", 0.91, 12, 0.9), row("tiny", 0.85, 5, 1.1)]
    assert [r.name for r in _front(rows, lambda r: r.macs)] == ["tiny", "lr", "dense"]  # bad: lr is cheaper and better
    assert [r.name for r in _front(rows, lambda r: 1 / r.timing["torch"]["speedup"])] == ["lr", "dense"]
    kept_dense = Row("kept", "kept", {0: 0.94}, 1, 30, 1.0, {"torch": {"speedup": 0.99}}, True)
    by_latency = _which_to_pick([*rows, kept_dense])[2]
    assert by_latency.startswith("- by measured PyTorch latency: `lr` 92.00% at 1.30x dense's speed → `dense`")
    assert "kept" not in by_latency


def test_leaderboard_plan_resumes_started_runs_then_trains_both_seeds_of_the_headline_entries(tmp_path):
    import leaderboard

    _fake_run(tmp_path / "bsconv_s0", 10, [0.5] * 3)  # started, 3 of 10 epochs done
    order = [(e.name, s) for e, s in leaderboard.plan(None, 2, tmp_path)]
    headline = [(n, s) for s in (0, 1) for n in ("dense", "lr", "pufferfish", "cuttlefish_ranks")]
    assert order[: 1 + len(headline)] == [("bsconv", 0), *headline]
    # seed 0 of every other entry, those a claim compares first (was: board order, so the controls of the Pufferfish,
    # Cuttlefish and post-training verdicts came after entries no verdict reads)
    rest = [n for n, s in order[1 + len(headline) :]]
    assert sorted(rest) == sorted(e.name for e in leaderboard.ENTRIES if not e.headline and e.name != "bsconv")
    assert rest[-2:] == ["rank1_projected", "cuttlefish"]


def test_a_leaderboard_worker_skips_the_run_another_worker_is_training(tmp_path, capsys):
    import subprocess

    import leaderboard

    folder = tmp_path / "dense_s0"
    hold = "from lowrankcnn.training.run_directory import RunDirectory as R; import sys, time; r = R(sys.argv[1]); "
    hold += "r.lock(); print('locked', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        outcome = leaderboard.train(leaderboard.BY_NAME["dense"], 0, tmp_path, {"train_subset": 64, "test_subset": 64})
    finally:
        holder.kill()
        holder.wait()
    assert outcome == "skipped" and "another worker is training it; skipped" in capsys.readouterr().out


def test_the_leaderboards_per_run_metrics_are_not_git_ignored():
    """The report writes each run's config and metrics under ``results/leaderboard/runs/``; a ``runs/`` pattern in
    ``.gitignore`` (meant for the top-level run folders) kept them out of every commit."""
    import subprocess

    root = BENCHMARKS.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("results/leaderboard/runs/dense_s0/metrics.csv", "results/leaderboard/runs/dense_s0/config.json"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0
        assert not ignored, f"{path} is git-ignored"
    assert subprocess.run(["git", "check-ignore", "-q", "runs/leaderboard/dense_s0/last.pt"], cwd=root).returncode == 0


def test_a_new_run_takes_the_workers_threads_and_a_begun_one_keeps_its_own(tmp_path):
    import leaderboard

    (tmp_path / "config.json").write_text("{}")  # killed in its first epoch: nothing to resume, it starts anew
    assert leaderboard.new_run_threads(tmp_path, 1) == {"threads": 1}  # was: none, so 2 threads beside a worker
    (tmp_path / "last.pt").write_bytes(b"")
    assert leaderboard.new_run_threads(tmp_path, 1) == {}


# --- 7, 8. decompose: --threads was ignored; --out SOURCE --overwrite deleted the source run ------------------------
@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("decompose") / "dense"
    with Trainer(tiny(out, epochs=1), progress=False, verbose=False) as t:
        t.fit()
    return out


def test_leaderboard_report_times_an_entry_once_unless_asked_to_retime(tmp_path, dense_run, monkeypatch):
    import _leaderboard_report as board

    shutil.copytree(dense_run, tmp_path / "runs" / "dense_s0")
    dense = SimpleNamespace(name="dense", label="dense", differences=lambda seed, runs, **quick: [])
    timed = []
    monkeypatch.setattr(board, "_time", lambda name, *a: timed.append(name) or {"noise": ""})
    for retime, threads in ((False, 1), (False, 1), (True, 1), (False, 2)):  # 2 threads: another timing setup
        rows, missing, _ = board._rows([dense], tmp_path / "runs", tmp_path / "out", threads, retime, {})
    assert timed == ["dense"] * 3 and [r.name for r in rows] == ["dense"] and not missing


def test_leaderboard_leaves_out_a_run_made_with_other_settings(tmp_path, dense_run, monkeypatch):
    import _leaderboard_report as board
    import leaderboard

    runs = tmp_path / "runs"
    shutil.copytree(dense_run, runs / "dense_s0")
    shutil.copytree(dense_run, runs / "lr_s0")  # a tiny dense run where lr's run belongs
    dense = SimpleNamespace(name="dense", label="dense", differences=lambda seed, runs, **quick: [])
    monkeypatch.setattr(board, "_time", lambda *a: {"noise": ""})
    rows, missing, notes = board._rows([dense, leaderboard.BY_NAME["lr"]], runs, tmp_path / "out", 1, False, {})
    assert missing == ["lr"] and len(notes) == 1 and "lr_s0 left out: made with other settings (" in notes[0]
    assert "lowrank None -> 'lr'" in notes[0], notes[0]
    with pytest.raises(SystemExit, match="holds a run made with other settings"):
        leaderboard.train(leaderboard.BY_NAME["lr"], 0, runs)  # never reused


def test_the_extra_seeds_go_to_the_two_best_entries_that_are_not_headline_ones(tmp_path, dense_run):
    import leaderboard

    for name, acc in (("cuttlefish_ranks", 0.94), ("sf", 0.93), ("lr_wfull", 0.92), ("rank1", 0.90)):
        shutil.copytree(dense_run, tmp_path / f"{name}_s0")
        (tmp_path / f"{name}_s0" / "metrics.jsonl").write_text(json.dumps({"test_acc": acc}) + "\n")
    order = [(e.name, s) for e, s in leaderboard.plan(None, 2, tmp_path)]
    assert order[-2:] == [("sf", 1), ("lr_wfull", 1)]  # was: only sf (cuttlefish_ranks took a place)


def test_a_post_training_run_is_recognised_whatever_form_its_folder_was_given_in(tmp_path, dense_run, monkeypatch):
    import leaderboard

    monkeypatch.chdir(tmp_path)
    shutil.copytree(dense_run, tmp_path / "runs" / "dense_e7_s1")
    decompose_run(tmp_path / "runs" / "dense_e7_s1", "sf", Path("runs") / "posttrain_sf_s1", epochs=3, lr=0.01)
    quick = {"train_subset": 256, "test_subset": 128}
    entry = leaderboard.BY_NAME["posttrain_sf"]
    assert entry.differences(1, Path("runs"), **quick) == []
    assert entry.differences(1, tmp_path / "runs", **quick) == []  # was: "another decomposed run"


def decompose_argv(source, out, *extra):
    return ["decompose", "--checkpoint", str(source), "--method", "svd", "--out", str(out), *extra]


def test_decompose_threads_flag_is_honoured(tmp_path, dense_run, monkeypatch):
    import lowrankcnn.training.decompose as dec

    seen = []
    real = dec.switch
    monkeypatch.setattr(dec, "switch", lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    torch.set_num_threads(2)
    assert main(decompose_argv(dense_run, tmp_path / "ft", "--threads", "1")) == 0
    assert seen == [1]


def test_decompose_refuses_to_overwrite_its_own_source(dense_run):
    assert main(decompose_argv(dense_run, dense_run, "--overwrite")) == 2
    assert (dense_run / "best.pt").exists()


@pytest.mark.parametrize("flag", [["--lowrank", "svd"], ["--lowrank", "svd", "--rank", "3"]])
def test_models_refuses_conversion_flags_it_would_ignore(flag, capsys):
    assert main(["models", "resnet20", *flag]) == 2
    assert "profile" in capsys.readouterr().err


def test_cached_onnxruntime_timings_are_keyed_by_the_session_config():
    """A timing made with other session options (spin-waiting sessions slowed each other) is not reused."""
    pytest.importorskip("onnxruntime")
    from _leaderboard_report import _ort_setup

    assert '"session.intra_op.allow_spinning": "0"' in _ort_setup()
