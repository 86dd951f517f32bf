"""Atomic file output: a file is either the complete new version or untouched, never half-written.

Every write goes to a temporary file next to the target (``.NAME.PID.RANDOM.tmp``), is flushed and
fsynced, then renamed over the target. If the process is killed mid-write, the temporary file stays
behind; the next write of the same target removes the leftovers of processes that are gone. Any
``OSError`` (disk full, read-only folder, a directory in the way) becomes one :class:`OutputError`
naming the target, and no temporary file is left.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import OutputError

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "it is a directory",
    errno.ENOTDIR: "a component of the path is a file, not a folder",
}


def describe_os_error(err: OSError) -> str:
    """A short reason for ``err`` (``"the disk is full"``), falling back to its strerror."""
    return _REASONS.get(err.errno, err.strerror or type(err).__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temporary files of ``path`` left by writers that no longer run; returns what was removed."""
    removed = []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid_text = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _check_target(path: Path) -> None:
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory; give a file name")
    if path.exists() and not path.is_file():  # renaming over it would replace e.g. /dev/null for everyone
        raise OutputError(f"cannot write {path}: it is a device, pipe or socket, not a regular file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {path}: {parent} is a file, not a folder")
            break


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path``, renamed onto ``path`` if the block succeeds, removed if it fails.

    The file gets the permissions a plain ``open`` would give it (0666 less the umask).

    Raises:
        OutputError: the target is a directory, its folder cannot be created, or writing fails
            (e.g. the disk is full); the old ``path`` (if any) is untouched and no temporary file is left.
    """
    path = Path(path)
    _check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {describe_os_error(err)}") from err
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as err:
        reason = describe_os_error(err)
        raise OutputError(f"cannot write {path}: {reason}; the previous file, if any, is intact") from err
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file_object)`` on a temp file next to ``path``, fsync it, then rename it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (also when neither exists yet)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_output_file(out: str | Path) -> Path:
    """Refuse an output path that is a directory, lies under a file, or is an existing non-regular file (a
    device such as ``/dev/null``, a pipe, a socket: the atomic rename would replace it by a regular file).

    Raises:
        OutputError: naming ``out`` and what it is.
    """
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"cannot write {out}: it is a directory; give a file name")
    if out.exists() and not out.is_file():
        raise OutputError(f"cannot write {out}: it is a device, pipe or socket, not a regular file; give a file name")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputError(f"cannot write {out}: {parent} is a file, not a folder")
    return out
