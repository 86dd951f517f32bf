"""Reader for the IDX format of MNIST-style datasets (plain or gzipped).

Layout: a big-endian header ``00 00 <dtype> <ndim>``, then ``ndim`` uint32 sizes, then the row-major payload.
Only the two files MNIST-style datasets use are accepted: uint8 (dtype ``0x08``) with 3 dims (images,
magic ``0x00000803``) or 1 dim (labels, magic ``0x00000801``).

The payload is read only up to the size the header declares, and that size is checked against what the file can
hold first (its own size; for gzip, deflate's maximum ratio of about 1032:1), so neither a lying header nor a gzip
bomb makes the reader allocate more than the file can honestly contain.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..errors import DataError, DataNotFoundError
from ..utils.io import describe_os_error

IDX_MAGICS: tuple[int, ...] = (0x00000803, 0x00000801)
"""Accepted magic numbers: uint8 with 3 dims (images) or 1 dim (labels)."""

_GZIP_MAX_RATIO = 1100  # deflate expands at most ~1032:1
_CHUNK = 1 << 22


def _read_at_most(f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes of ``f`` (fewer at its end), read in bounded chunks."""
    parts, left = [], n
    while left > 0:
        chunk = f.read(min(left, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_idx(path: str | Path, hint: str = "") -> torch.Tensor:
    """Read an IDX file (``.gz`` or not) into a uint8 tensor shaped as its header says.

    Args:
        path: the file; gunzipped when its name ends in ``.gz``.
        hint: appended to every error message (e.g. how to reinstall the data).

    Raises:
        DataNotFoundError: the file does not exist.
        DataError: a one-line message naming the file for anything else (corrupt or truncated gzip,
            wrong magic number, dims, or a payload length that differs from the header's).
    """
    path = Path(path)
    suffix = f"; {hint}" if hint else ""

    def fail(what: str) -> DataError:
        return DataError(f"{path}: {what}{suffix}")

    if not path.exists():
        raise DataNotFoundError(f"{path} not found{suffix}")
    gz = path.suffix == ".gz"
    try:
        size = path.stat().st_size
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:  # noqa: SIM115
            head = _read_at_most(f, 4)
            if len(head) < 4:
                raise fail(f"truncated IDX file: {len(head)} bytes, fewer than the 4-byte magic number")
            (magic,) = struct.unpack(">I", head)
            if magic not in IDX_MAGICS:
                raise fail(
                    f"not an IDX file of uint8 images or labels: magic number 0x{magic:08x}, "
                    f"expected 0x00000803 (images) or 0x00000801 (labels)"
                )
            ndim = magic & 0xFF
            header_len = 4 + 4 * ndim
            dims_raw = _read_at_most(f, 4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise fail(f"truncated IDX header: {4 + len(dims_raw)} bytes, the {ndim}-dim header needs {header_len}")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            expected = math.prod(dims)
            shape = "x".join(map(str, dims))
            truncated = f"truncated IDX file: header says {shape} ({expected:,} bytes)"
            if gz and expected > size * _GZIP_MAX_RATIO:
                raise fail(
                    f"corrupt IDX header: it says {shape} ({expected:,} bytes), more than a {size:,}-byte gzip "
                    "file can hold"
                )
            if not gz and expected > size - header_len:
                raise fail(f"{truncated} but only {size - header_len:,} bytes follow")
            payload = _read_at_most(f, expected + 1)
    except EOFError as e:
        raise fail(f"truncated gzip file ({e})") from e
    except (OSError, zlib.error) as e:
        reason = describe_os_error(e) if isinstance(e, OSError) and e.errno else str(e)
        raise fail(f"corrupt or unreadable file ({reason})") from e
    if len(payload) != expected:
        if len(payload) < expected:
            raise fail(f"{truncated} but only {len(payload):,} bytes follow")
        raise fail(
            f"trailing garbage after IDX payload: header says {shape} ({expected:,} bytes) but more bytes follow"
        )
    array = np.frombuffer(payload, dtype=np.uint8).reshape(dims)
    return torch.from_numpy(array.copy())
