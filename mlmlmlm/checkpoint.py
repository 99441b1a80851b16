"""Checkpoint files: atomic writes, checked loads, restore for resume, weights for evaluation.

Introduced in notebook 02_audio_codec (the first phase that trains); used by every phase. Also
seeding and RNG capture, since a resumed run must draw the same random numbers.

A checkpoint is a ``dict`` saved with :func:`torch.save` that carries ``format`` =
:data:`FORMAT`. Everything in it is a tensor or plain Python data, so it loads with
``torch.load(..., weights_only=True)``: opening a checkpoint never runs pickled code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import re
import warnings
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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
    except Exception as err:  # noqa: BLE001 (RuntimeError, UnpicklingError, EOFError, ...)
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {_reason(err)}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mlmlmlm checkpoint (no format tag {FORMAT!r})")
    return ckpt


def _reason(err: Exception) -> str:
    """The informative line of a torch.load error (its first line is often boilerplate)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported global" in ln:  # weights_only refused an object: not our format
            return ln.split(" was not")[0].replace("WeightsUnpickler error: ", "")
    return re.sub(r"\x1b\[[0-9;]*m", "", lines[0]) if lines else type(err).__name__


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


VERSIONED = ("mlmlmlm", "torch", "numpy", "scipy", "librosa", "vector-quantize-pytorch",
             "auraloss", "music21", "tinysoundfont", "papermill", "jupyter-book")


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on (checkpoints and run cards)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def load_for_eval(
    run_dir: str | Path, model: nn.Module, *, use_ema: bool = True, map_location: Any = "cpu"
) -> nn.Module:
    """Load a run's weights into ``model`` for evaluation: the EMA weights when stored.

    Parameters
    ----------
    run_dir
        A run folder (its ``checkpoint.pt`` is read) or a checkpoint file.
    model
        A module of the run's architecture (rebuilt from ``checkpoint["config"]``).
    use_ema
        Prefer the EMA weights; falls back to the raw weights when the run kept no EMA.

    Returns
    -------
    nn.Module
        ``model``, loaded and in eval mode.
    """
    path = Path(run_dir)
    ckpt = load_checkpoint(path / "checkpoint.pt" if path.is_dir() else path, map_location)
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(state)
    return model.eval()


def restore(ckpt, path, task, optims, ema, cfg, rank: int = 0, world_size: int = 1) -> None:
    """Load a checkpoint into a (not yet DDP-wrapped) task, its optimisers, EMA and RNGs.

    ``optims`` maps checkpoint keys (``optimizer``, ``scheduler``, ``disc_optimizer``,
    ``disc_scheduler``) to objects or None; ``cfg`` is the current ``TrainConfig``.
    """
    _warn_changes(path, ckpt["train_config"], cfg)
    task.model.load_state_dict(ckpt["model"])
    task.load_state_dict(ckpt["task"])
    for name, obj in optims.items():
        if obj is not None and ckpt[name] is not None:
            obj.load_state_dict(ckpt[name])
    if ema is not None and ckpt["ema"] is not None:
        ema.state = {k: v.to(ema.state[k].device) for k, v in ckpt["ema"].items()}
    if len(ckpt["rng"]) == world_size:
        set_rng_state(ckpt["rng"][rank])
    else:
        n = len(ckpt["rng"])
        warnings.warn(
            f"{path}: saved by {n} processes, now {world_size}; random streams are reseeded",
            stacklevel=4,
        )
        seed_everything(cfg.seed + rank + ckpt["step"])


# Settings whose change makes a resumed run differ from an uninterrupted one.
_RESUME_KEYS = [
    "optimizer",
    "lr",
    "betas",
    "weight_decay",
    "schedule",
    "warmup_steps",
    "gamma",
    "disc_lr",
    "batch_size",
    "seed",
    "grad_clip",
    "ema_decay",
]


def _warn_changes(path: Path, saved: dict[str, Any], cfg: Any) -> None:
    now = asdict(cfg)
    changed = [
        f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in _RESUME_KEYS if saved.get(k) != now[k]
    ]
    if cfg.schedule != "constant" and saved.get("max_steps") != cfg.max_steps:
        changed.append(f"max_steps {saved.get('max_steps')} -> {cfg.max_steps} (schedule length)")
    if changed:
        warnings.warn(f"{path}: resuming with changed settings: {'; '.join(changed)}", stacklevel=5)


def config_changes(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config mappings (a run's resolved
    config as stored in its checkpoint, and the current one)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(saved) | set(now), key=str):
            out += config_changes(saved.get(key), now.get(key), f"{prefix}{key}.")
        return out
    # compared as JSON, so a tuple equals the list it was saved as
    same = json.dumps(saved, sort_keys=True, default=str) == json.dumps(now, sort_keys=True,
                                                                         default=str)
    return [] if same else [prefix.rstrip(".")]


# Sections that decide what a checkpoint's weights mean: resuming across a change is an error.
WEIGHT_SECTIONS = ("model", "data", "loss")
# ... and those that decide how it was trained (the runbook starts over when any of them changed;
# a new title or description alone keeps the checkpoint).
TRAINING_SECTIONS = (*WEIGHT_SECTIONS, "train")


def section_changes(saved: Any, now: Any, sections: tuple[str, ...]) -> list[str]:
    """:func:`config_changes` restricted to keys under ``sections``. The saved config is first
    re-resolved through the current dataclasses, so a key added since it was written (at its
    default, e.g. ``model.causal``) is not a change."""
    if isinstance(saved, dict):
        from mlmlmlm.config import ConfigError, config_from_dict

        try:
            saved = config_from_dict(saved, source="checkpoint").to_dict()
        except (ConfigError, TypeError, ValueError):
            pass  # a key that no longer exists: compare as written (it shows as a change)
    return [k for k in config_changes(saved, now) if k.split(".")[0] in sections]


class ResumeError(ValueError):
    """A checkpoint that must not be resumed; one line naming it, the keys and the way out."""


def check_resumable(path: Path, ckpt: dict[str, Any], extra: Any) -> None:
    """Refuse to resume ``ckpt`` (from ``path``) under a config whose model, data or loss
    differ from the one it was written with (:class:`ResumeError` naming the keys)."""
    if not isinstance(extra, dict) or not isinstance(ckpt.get("config"), dict):
        return
    changed = section_changes(ckpt["config"], extra, WEIGHT_SECTIONS)
    if changed:
        shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
        raise ResumeError(f"{path}: written with another configuration ({shown}); "
                          "`mlmlmlm train ... --force` starts over (or pass another --run-dir)")


def supersede_if_changed(run_dir: Path, config: dict[str, Any],
                         sections: tuple[str, ...] = TRAINING_SECTIONS) -> tuple[Path, list[str]] | None:
    """A checkpoint in ``run_dir`` written with another configuration (keys under ``sections``)
    is not resumed: the run dir is moved to ``<run>.superseded`` (replacing an older one), kept,
    never deleted. Returns ``(where it went, the changed keys)``, or None when nothing moved (no
    checkpoint, or the same run killed: it resumes). Used by the runbook and ``train --force``."""
    import os
    import shutil

    ckpt_path = Path(run_dir) / "checkpoint.pt"
    if not ckpt_path.exists():
        return None
    changed = section_changes(load_checkpoint(ckpt_path).get("config"), config, sections)
    if not changed:
        return None
    old = Path(run_dir).with_name(Path(run_dir).name + ".superseded")
    if old.exists():
        shutil.rmtree(old)
    os.replace(run_dir, old)
    return old, changed


def truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint, so a resumed run appends no duplicates."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):  # e.g. a line cut short by a kill
            continue
    path.write_text("".join(keep))
