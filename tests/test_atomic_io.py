"""Atomic output: a full disk, a directory in the way or a kill mid-write never leaves a broken or stray file."""

import os
import subprocess
import sys
import textwrap

import pytest

from lowrankcnn.errors import OutputError
from lowrankcnn.training import load_checkpoint, save_checkpoint
from lowrankcnn.utils import atomic_write_text
from lowrankcnn.utils.io import remove_stale_temps


def test_temp_files_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "last.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.pt.{dead.stdout.strip()}.abc123.tmp"
    live = tmp_path / f".last.pt.{os.getppid()}.def456.tmp"  # a writer that is still running: left alone
    other = tmp_path / ".best.pt.1.xyz.tmp"  # another target's temp: left alone
    for path in (stale, live, other):
        path.write_bytes(b"x" * 1000)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temps(target) == []


def test_a_killed_writer_leaves_a_temp_that_the_next_write_removes(tmp_path):
    target = tmp_path / "big.bin"
    script = textwrap.dedent(
        f"""
        import os, signal
        from lowrankcnn.utils import atomic_write_bytes
        def write(f):
            f.write(b"x" * 1_000_000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write_bytes({str(target)!r}, write)
        """
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    assert not target.exists() and len(list(tmp_path.glob(".big.bin.*.tmp"))) == 1
    atomic_write_text(target, "ok")
    assert target.read_text() == "ok" and not list(tmp_path.glob("*.tmp"))


def test_targets_that_cannot_be_written_are_one_output_error(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputError, match="it is a directory"):
        atomic_write_text(tmp_path / "dir", "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        atomic_write_text(tmp_path / "file" / "out.txt", "x")


def test_full_disk_keeps_the_old_checkpoint_and_leaves_no_temp(tmp_path):
    """A file-size limit makes writes fail with EFBIG, as a full disk fails with ENOSPC."""
    from conftest import checkpoint_state

    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint_state())
    script = textwrap.dedent(
        f"""
        import resource, signal, sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from conftest import checkpoint_state
        from lowrankcnn.errors import OutputError
        from lowrankcnn.training import save_checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            save_checkpoint({str(path)!r}, checkpoint_state(model={{"w": torch.zeros(100_000)}}))
        except OutputError as err:
            print(err)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"cannot write {path}:") and "previous file, if any, is intact" in result.stdout
    assert load_checkpoint(path)["model"]["w"].numel() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
