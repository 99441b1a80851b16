"""Reading the pybela ``Logger`` files of a Bela recording folder: ``read_bela_log``, ``BelaLog``.

Introduced in notebook 01_dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlmlmlm.data.records import DataError

DEFAULT_BELA_EMG_SR = 22050.0
BELA_BUFFER_BYTES = 4104
BELA_TYPES = {"f": "<f4", "d": "<f8", "i": "<i4", "j": "<u4"}


@dataclass
class BelaLog:
    """One pybela logger file: header fields, buffer timestamps [n_buf] and values [n]."""

    project: str
    variable: str
    type_code: str
    timestamps: np.ndarray
    values: np.ndarray


def read_bela_log(path) -> BelaLog:
    """Read a pybela ``Logger`` binary file (dense timestamp mode).

    A logger file (little-endian, as written on the board) is a header then fixed 4104-byte
    buffers. Header: three NUL-terminated UTF-8 strings (project name, variable name, C++ type
    code ``f`` float32, ``d`` float64, ``i`` int32, ``j`` uint32), then ``uint32`` pid and
    ``uint32`` pid id, then zero padding to a multiple of 4 bytes. Buffer ("dense" timestamp
    mode, the Watcher default): ``uint64`` timestamp of the first value, in Watcher ticks, then
    1024 values of a 4-byte type or 512 of an 8-byte type. Consecutive buffers of a complete
    log advance their timestamp by the same step. Sparse-mode logs (values + per-value ``uint32``
    offsets) look the same from outside and are not supported.

    Raises
    ------
    DataError : ``"<path>: not a Bela logger file: <reason>"``.
    """
    path = Path(path)
    data = path.read_bytes()
    strings, pos = [], 0
    for _ in range(3):
        end = data.find(b"\0", pos, pos + 256)
        if end < 0:
            raise DataError(path, "not a Bela logger file: header strings are not NUL-terminated")
        try:
            strings.append(data[pos:end].decode("utf-8"))
        except UnicodeDecodeError:
            raise DataError(path, "not a Bela logger file: header is not UTF-8 text") from None
        pos = end + 1
    project, variable, type_code = strings
    if type_code not in BELA_TYPES:
        raise DataError(path, f"not a Bela logger file: unsupported variable type {type_code!r}")
    pos += 8  # uint32 pid, uint32 pid id
    pos += -pos % 4  # zero padding to a multiple of 4
    body = data[pos:]
    if len(body) == 0 or len(body) % BELA_BUFFER_BYTES:
        raise DataError(
            path,
            f"not a Bela logger file: {len(body)} data bytes is not a whole number of "
            f"{BELA_BUFFER_BYTES}-byte buffers (truncated file?)",
        )
    buffers = np.frombuffer(body, dtype=np.uint8).reshape(-1, BELA_BUFFER_BYTES)
    timestamps = buffers[:, :8].copy().view("<u8")[:, 0]
    values = buffers[:, 8:].copy().view(BELA_TYPES[type_code]).reshape(-1)
    steps = np.diff(timestamps.astype(np.int64))
    if len(steps) and (np.any(steps <= 0) or np.any(steps != steps[0])):
        raise DataError(path, "logger buffers are not contiguous (a buffer was dropped?)")
    return BelaLog(project, variable, type_code, timestamps, values)


def write_bela_log(path, values: np.ndarray, variable: str, project: str = "mlmlmlm",
                   start: int = 0, step: int = 1024) -> Path:
    """Write ``values`` [n] (float32) as a pybela ``Logger`` file in dense mode, the layout
    :func:`read_bela_log` documents: the header, then 1024-value buffers whose timestamps advance
    by ``step`` ticks, the last buffer zero-padded. Written atomically."""
    from mlmlmlm.atomic import write_bytes_atomic

    per = (BELA_BUFFER_BYTES - 8) // 4
    header = b"".join(s.encode() + b"\0" for s in (project, variable, "f"))
    header += np.array([0, 0], "<u4").tobytes()  # pid, pid id
    header += b"\0" * (-len(header) % 4)
    v = np.asarray(values, dtype="<f4").reshape(-1)
    n_buf = max(1, -(-len(v) // per))
    body = np.zeros((n_buf, BELA_BUFFER_BYTES), np.uint8)
    body[:, :8] = (start + step * np.arange(n_buf, dtype="<u8")).view(np.uint8).reshape(n_buf, 8)
    padded = np.zeros(n_buf * per, "<f4")
    padded[: len(v)] = v
    body[:, 8:] = padded.view(np.uint8).reshape(n_buf, -1)
    return write_bytes_atomic(path, header + body.tobytes())
