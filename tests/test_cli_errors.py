"""The command line: one line for every user mistake, a traceback for every bug, and Ctrl-C at any moment."""

import signal
import subprocess
import sys
import time

import pytest
from conftest import requires_fashion_mnist

from lowrankcnn.cli import main
from lowrankcnn.errors import ConfigError


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "nin", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
        (["train", "--model", "nin", "--threads", "-1"], "argument --threads: must be at least 1, got -1"),
        (["train", "--model", "nin", "--device", "tpu9"], "unknown --device 'tpu9'"),
        (["train", "--model", "nin", "--device", "cuda"], "--device 'cuda': CUDA is not available"),
        (["train", "--model", "nin", "--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
        (["train", "--model", "nin", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["train", "--model", "nin", "--train-subset", "-5"], "--train-subset must be an integer >= 1, got -5"),
        (["train", "--model", "nin", "--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
        (["train", "--model", "vgg12"], "unknown model 'vgg12'. Did you mean"),
        (["train", "--model", "nin", "--label-smoothing", "1"], "--label-smoothing must be a finite number >= 0"),
        (["train"], "give --model NAME or package.module:function (or --resume RUN_DIR"),
        (["train", "--model", "nin", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
        (["models", "no_such_model*"], "no model matches 'no_such_model*'"),
        (["train", "--model", "nin", "--seed", str(10**23)], "--seed must be at most 4294967295"),
        (["train", "--model", "nin", "--warmup-epochs", "1e308"], "--warmup-epochs (1e+308) is longer than the run"),
        (["train", "--model", "nin", "--epochs", "2", "--warmup-epochs", "3"], "is longer than the run (--epochs 2)"),
        (["train", "--model", "nin", "--model-kwargs", "fc_width=0"], "nin does not accept the keyword fc_width"),
        (["train", "--model", "vgg11_gmp", "--model-kwargs", "fc_width=0"], "keyword fc_width must be at least 1"),
    ],
)
def test_user_mistakes_are_one_line_naming_the_flag(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "run")] if args[0] == "train" else args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_library_errors_speak_python_and_the_cli_speaks_flags(capsys):
    err = ConfigError("$lr must be a positive number, got -1.0; lower $warmup_epochs=2", param="lr")
    assert str(err) == "lr must be a positive number, got -1.0; lower warmup_epochs=2"
    assert err.render({"lr": "--lr", "warmup_epochs": "--warmup-epochs"}) == (
        "--lr must be a positive number, got -1.0; lower --warmup-epochs 2"
    )
    assert main(["profile", "vgg12"]) == 2
    assert "`lowrankcnn models` shows every name" in capsys.readouterr().err


def test_a_bug_is_not_reported_as_a_user_error(monkeypatch):
    """Only the library's own error types are user errors (exit 2); anything else keeps its traceback."""
    from lowrankcnn.cli import models

    def broken(args):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(models, "cmd_profile", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["profile", "nin"])


@requires_fashion_mnist  # the later delays interrupt the data loading
@pytest.mark.parametrize("delay", [0.3, 0.45, 1.0, 2.5])
def test_ctrl_c_during_start_up_is_one_line(tmp_path, delay):
    """Interrupted while importing torch, building the parser or loading the data: never a traceback.

    (Before 0.1 s the interpreter itself is still starting and SIGINT simply ends it, which prints nothing.)
    """
    args = ["train", "--model", "vgg11_gmp_lr", "--width-mult", "0.125", "--out", str(tmp_path / "run")]
    proc = subprocess.Popen([sys.executable, "-m", "lowrankcnn", *args], stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert "interrupted" in err


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' must be an integer >= 1"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK is not"),
        ({"WORLD_SIZE": "2", "RANK": "abc"}, "RANK='abc' must be an integer >= 0 and < 2"),
        ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK='5' must be an integer >= 0 and < 2"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_WORLD_SIZE": "x"}, "LOCAL_WORLD_SIZE='x' must be an integer"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, "rank 0 of 2 could not join the process group"),
    ],
)
def test_broken_torchrun_environment_is_one_line(tmp_path, monkeypatch, capsys, env, message):
    """These were KeyError/ValueError/DistStoreError tracebacks (the last after a rendezvous wait)."""
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = ["train", "--model", "nin", "--width-mult", "0.125", "--dist-timeout", "2", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
