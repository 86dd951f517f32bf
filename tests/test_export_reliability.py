"""Issue 10, export: the checkpoint is never overwritten, non-finite results fail the check and write nothing,
a full disk or read-only folder is one line with nothing left behind, the preprocessing travels in the file's
metadata (and can be baked into the graph), and hostile sizes are one line."""

import math
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lowrankcnn.cli import main
from lowrankcnn.data import normalization
from lowrankcnn.errors import ExportError
from lowrankcnn.export import Preprocessing, export_checked, read_export_metadata
from lowrankcnn.training import load_trained_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(kim_run_copy) -> Path:
    """A one-epoch kim_rank1_cifar10 run (width 0.25) on a Fashion-MNIST subset padded to 32."""
    return kim_run_copy


def edited_checkpoint(run_dir: Path, dest: Path, edit) -> Path:
    """A copy of the run's last.pt with ``edit(state)`` applied."""
    state = torch.load(run_dir / "last.pt", weights_only=True)
    edit(state)
    save_checkpoint(dest, state)
    return dest


def export_args(checkpoint: Path, fmt: str, out: Path) -> list[str]:
    """``export`` arguments with the form forced (``--deploy factorized``): these tests are about failures and
    metadata, not the form, and the default ``auto`` would time both forms first (tests/test_export_auto.py)."""
    return ["export", "--deploy", "factorized", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]


def cli(*args: str, fsize: int | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``lowrankcnn ARGS`` in a fresh process (optionally with files limited to ``fsize`` bytes)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [*prefix, sys.executable, "-m", "lowrankcnn", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        preexec_fn=limit if fsize else None,
        timeout=600,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_out_pointing_at_the_checkpoint_is_refused(run_dir, tmp_path, capsys):
    before = (run_dir / "last.pt").read_bytes()
    link = tmp_path / "link.pt"
    link.symlink_to(run_dir / "last.pt")
    for checkpoint, out in (
        (run_dir / "last.pt", run_dir / "last.pt"),
        (run_dir, run_dir / "last.pt"),  # a run directory means its last.pt
        (run_dir / "last.pt", run_dir / ".." / run_dir.name / "last.pt"),
        (run_dir, link),
    ):
        args = ["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--out" in err and "is the checkpoint being exported" in err
    assert (run_dir / "last.pt").read_bytes() == before
    for name in ("best.pt", "metrics.jsonl", "metrics.csv", "config.json"):  # no other file of the run either
        before = (run_dir / name).read_bytes()
        assert main(["export", "--checkpoint", str(run_dir), "--format", "onnx", "--out", str(run_dir / name)]) == 2
        assert "is a file of the run directory" in capsys.readouterr().err
        assert (run_dir / name).read_bytes() == before


def test_out_that_is_a_directory_is_one_line(run_dir, tmp_path, capsys):
    args = ["export", "--checkpoint", str(run_dir), "--format", "onnx", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "it is a directory" in err


def test_non_finite_outputs_fail_the_check_and_write_nothing(run_dir, tmp_path, capsys):
    def poison(state: dict) -> None:
        name = next(k for k, v in state["model"].items() if k.endswith("bias") and v.is_floating_point())
        state["model"][name][0] = math.nan

    checkpoint = edited_checkpoint(run_dir, tmp_path / "nan.pt", poison)
    for fmt in ("onnx", "torchscript"):
        out = tmp_path / f"nan.{fmt}"
        assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not finite" in err and "nothing was written" in err
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_non_finite_difference_fails_the_check(run_dir, tmp_path, monkeypatch, fmt):
    import lowrankcnn.export as export

    monkeypatch.setattr(export, f"{fmt}_max_abs_diff", lambda *_: math.nan)
    model, _, state = load_trained_model(run_dir)
    prep = Preprocessing.from_data_info(state["data_info"])
    with pytest.raises(ExportError, match="max |difference| nan.*nothing was written.*do not use"):
        export_checked(model, tmp_path / "m", fmt, prep)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_full_disk_is_one_line_and_leaves_no_file(run_dir, tmp_path, fmt):
    out = tmp_path / "out" / f"m.{fmt}"
    out.parent.mkdir()
    result = cli(*export_args(run_dir, fmt, out), fsize=200_000)
    assert_one_line_error(result, f"cannot write {out}")
    assert not list(out.parent.iterdir())  # neither the file nor a temporary one


def in_private_mount(options: str, target: Path) -> tuple[str, ...]:
    """A command prefix running the rest in a private mount namespace with a tmpfs (``options``) on ``target``."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(target)])
    if probe.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    script = f'mount -t tmpfs -o {options} tmpfs "{target}" && exec "$@"'
    return ("unshare", "-m", "sh", "-c", script, "sh")


@pytest.mark.parametrize(
    "options, reason", [("size=128k", "the disk is full"), ("ro,size=1m", "the file system is read-only")]
)
def test_full_or_read_only_file_system_is_one_line(run_dir, tmp_path, options, reason):
    # chmod 0o555 cannot make a folder read-only for root: a real read-only (or tiny) tmpfs does, in a
    # private mount namespace that disappears with the process. Afterwards the folder is listed from inside.
    target = tmp_path / "mnt"
    target.mkdir()
    prefix = in_private_mount(options, target)
    out = target / "m.pt"
    listing = f'; status=$?; ls -A "{target}" >&2; exit $status'
    prefix = (*prefix[:4], prefix[4].replace('exec "$@"', '"$@"' + listing), *prefix[5:])
    result = cli(*export_args(run_dir, "torchscript", out), prefix=prefix)
    assert_one_line_error(result, f"cannot write {out}", reason)  # ls printed nothing: no file, no temp file


def test_preprocessing_metadata_round_trips(run_dir, tmp_path, capsys):
    state = torch.load(run_dir / "last.pt", weights_only=True)
    info = state["data_info"]
    for fmt in ("onnx", "torchscript"):
        out = tmp_path / f"m.{fmt}"
        assert main(export_args(run_dir, fmt, out)) == 0
        printed = capsys.readouterr().out
        assert "mean (0.2860), std (0.3530)" in printed and "--include-preprocessing" in printed
        meta = read_export_metadata(out)
        assert meta["input_layout"] == "NCHW" and meta["input_shape"] == '["N", 1, 32, 32]'
        assert meta["normalization_included"] == "false" and meta["input_dtype"] == "float32"
        assert np.allclose(eval(meta["mean"]), info["mean"]) and np.allclose(eval(meta["std"]), info["std"])
        assert eval(meta["class_names"]) == info["class_names"] and meta["model"] == "kim_rank1_cifar10"
        assert "zero-padded" in meta["input_geometry"] and meta["dataset"] == "fashion-mnist"


def test_an_older_checkpoint_gets_its_data_sets_normalization(run_dir, tmp_path):
    def forget(state: dict) -> None:
        del state["data_info"]["mean"], state["data_info"]["std"]

    checkpoint = edited_checkpoint(run_dir, tmp_path / "old.pt", forget)
    out = tmp_path / "old.onnx"
    assert main(export_args(checkpoint, "onnx", out)) == 0
    mean, std = normalization("fashion-mnist", 1)
    meta = read_export_metadata(out)
    assert eval(meta["mean"]) == list(mean) and eval(meta["std"]) == list(std)


def test_include_preprocessing_takes_raw_pixels(run_dir, tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "raw.onnx"
    args = [*export_args(run_dir, "onnx", out), "--include-preprocessing"]
    assert main(args) == 0
    assert "raw pixel values 0..255" in capsys.readouterr().out
    assert read_export_metadata(out)["normalization_included"] == "true"
    model, _, state = load_trained_model(run_dir)
    info = state["data_info"]
    raw = torch.randint(0, 256, (4, 1, 32, 32)).float()
    normalized = (raw / 255 - torch.tensor(info["mean"]).view(1, -1, 1, 1)) / torch.tensor(info["std"]).view(
        1, -1, 1, 1
    )
    with torch.no_grad():
        expected = model(normalized).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: raw.numpy()})
    assert np.abs(logits - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    (unbaked,) = session.run(None, {session.get_inputs()[0].name: normalized.numpy()})
    assert np.abs(unbaked - expected).max() > 1e-2  # the file really normalizes itself


@pytest.mark.parametrize("size", ["-5", "0", "nan", "100000", "2"])
def test_hostile_input_sizes_are_one_line(run_dir, tmp_path, size):
    out = tmp_path / "m.onnx"
    result = cli(*export_args(run_dir, "onnx", out), "--input-size", size)
    assert_one_line_error(result, "--input-size" if size != "2" else "")
    assert not out.exists()


def test_hostile_checkpoints_are_one_line(tmp_path):
    (tmp_path / "junk.pt").write_bytes(os.urandom(1000))
    for checkpoint in (tmp_path / "missing.pt", tmp_path / "junk.pt", tmp_path):
        result = cli(*export_args(checkpoint, "onnx", tmp_path / "m"))
        assert_one_line_error(result)


def test_out_that_is_not_a_regular_file_is_refused(run_dir, tmp_path, capsys):
    # e.g. `--out /dev/null` as root: the atomic rename would replace the device by a regular file.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert main(["export", "--checkpoint", str(run_dir), "--format", "onnx", "--out", str(fifo)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a regular file" in err
    assert fifo.is_fifo()


def test_export_knows_every_file_of_a_run_directory():
    from lowrankcnn import export
    from lowrankcnn.training import run_directory

    assert export.RUN_FILES == run_directory.RUN_FILES
