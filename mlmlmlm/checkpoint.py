"""Checkpoint files: atomic writes, checked loads, RNG capture and package versions.

Introduced in notebook 02_audio_codec (the first phase that trains); used by every phase.

A checkpoint is a ``dict`` saved with :func:`torch.save` that carries ``format`` =
:data:`FORMAT`. Everything in it is a tensor or plain Python data, so it loads with
``torch.load(..., weights_only=True)``: opening a checkpoint never runs pickled code.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "mlmlmlm-checkpoint/1"


class CheckpointError(RuntimeError):
    """A file that should be a checkpoint is missing parts, truncated, or something else."""


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` with :func:`torch.save` so that ``path`` is always whole or absent.

    The bytes go to a temporary file in the same folder, are flushed and fsynced, and the
    file is then renamed over ``path`` (``os.replace`` is atomic on one file system). A kill
    at any moment leaves either the previous checkpoint or the new one, never half of one.

    Parameters
    ----------
    obj
        What to save (for checkpoints, a dict with ``format`` = :data:`FORMAT`).
    path
        Destination; its folder is created when missing.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # Make the rename itself durable (the directory entry), where the OS allows it.
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic`, or fail with a one-line message.

    Parameters
    ----------
    path
        The checkpoint file.
    map_location
        Passed to :func:`torch.load` (``"cpu"`` by default, so a GPU checkpoint opens anywhere).

    Returns
    -------
    dict
        The checkpoint.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    CheckpointError
        When the file is truncated, corrupt, or not an mlmlmlm checkpoint; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint file there")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {reason}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mlmlmlm checkpoint (no format tag {FORMAT!r})")
    return ckpt


def to_plain(obj: Any) -> Any:
    """Turn configs into plain data that loads with ``weights_only=True``.

    Dataclasses become dicts, tuples lists, paths and other objects strings, numpy scalars
    Python numbers.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    return str(obj)


def package_versions() -> dict[str, str]:
    """Versions of Python, torch, numpy and mlmlmlm, stored in every checkpoint."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions["numpy"] = np.__version__
    try:
        versions["mlmlmlm"] = metadata.version("mlmlmlm")
    except metadata.PackageNotFoundError:
        versions["mlmlmlm"] = "unknown"
    return versions


def rng_state() -> dict[str, Any]:
    """The state of every random generator the training loop draws from (this process).

    numpy's state is stored as a tensor plus plain numbers so that it loads with
    ``weights_only=True``.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (list, tuple)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
