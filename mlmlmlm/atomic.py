"""Files written whole or not at all, and strict JSON (no NaN: ``null`` plus the reason).

Introduced in notebook 01_dataset: run cards, metrics files and caches are written through it;
checkpoints use the same rename in :func:`mlmlmlm.checkpoint.save_atomic`.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

NOT_FINITE = "not_computed"  # the key under which strict_json records why a value is null


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, rename:
    a kill at any moment leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def strict_json(obj: Any, reasons: dict[str, str] | None = None, prefix: str = "") -> Any:
    """``obj`` as plain JSON data: numpy scalars and arrays become numbers and lists, paths
    strings, and every NaN/Inf becomes ``None`` with ``reasons[dotted key]`` saying what it was
    (``"NaN"``, ``"inf"``), unless the caller already put a reason there."""
    reasons = {} if reasons is None else reasons
    if isinstance(obj, dict):
        return {str(k): strict_json(v, reasons, f"{prefix}{k}.") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v, reasons, f"{prefix}{i}.") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist(), reasons, prefix)
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        reasons.setdefault(prefix.rstrip("."), "NaN" if math.isnan(obj) else str(obj))
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (``allow_nan=False``), atomically. A top-level mapping with values that are
    not finite gets them as ``null`` and a ``"not_computed": {key: reason}`` entry."""
    reasons: dict[str, str] = {}
    data = strict_json(obj, reasons)
    if reasons and isinstance(data, dict):
        data[NOT_FINITE] = {**reasons, **(data.get(NOT_FINITE) or {})}
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
    return write_text_atomic(path, text + "\n")
