"""Reader for the IDX format of MNIST-style datasets (plain or gzipped).

Layout: a big-endian header ``00 00 <dtype> <ndim>``, then ``ndim`` uint32 sizes, then the row-major payload.
Only the two files MNIST-style datasets use are accepted: uint8 (dtype ``0x08``) with 3 dims (images,
magic ``0x00000803``) or 1 dim (labels, magic ``0x00000801``).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

IDX_MAGICS: tuple[int, ...] = (0x00000803, 0x00000801)
"""Accepted magic numbers: uint8 with 3 dims (images) or 1 dim (labels)."""


def read_idx(path: str | Path, hint: str = "") -> torch.Tensor:
    """Read an IDX file (``.gz`` or not) into a uint8 tensor shaped as its header says.

    Args:
        path: the file; gunzipped when its name ends in ``.gz``.
        hint: appended to every error message (e.g. how to reinstall the data).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a one-line message naming the file for anything else (corrupt or truncated gzip,
            wrong magic number, dims, or a payload length that differs from the header's).
    """
    path = Path(path)
    suffix = f"; {hint}" if hint else ""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise
    except EOFError as e:
        raise ValueError(f"{path}: truncated gzip file ({e}){suffix}") from e
    except (OSError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or unreadable file ({e}){suffix}") from e

    def fail(what: str) -> ValueError:
        return ValueError(f"{path}: {what}{suffix}")

    if len(data) < 4:
        raise fail(f"truncated IDX file: {len(data)} bytes, fewer than the 4-byte magic number")
    (magic,) = struct.unpack(">I", data[:4])
    if magic not in IDX_MAGICS:
        raise fail(
            f"not an IDX file of uint8 images or labels: magic number 0x{magic:08x}, "
            f"expected 0x00000803 (images) or 0x00000801 (labels)"
        )
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise fail(f"truncated IDX header: {len(data)} bytes, the {ndim}-dim header needs {header_len}")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = math.prod(dims)
    got = len(data) - header_len
    if got != expected:
        what, only = ("truncated IDX file", "only ") if got < expected else ("trailing garbage after IDX payload", "")
        shape = "x".join(map(str, dims))
        raise fail(f"{what}: header says {shape} ({expected:,} bytes) but {only}{got:,} bytes follow")
    array = np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)
    return torch.from_numpy(array.copy())
