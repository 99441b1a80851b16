"""Where things live, in one place: run folders (keyed by scale), data roots and the cache.

Introduced in notebook 01_dataset; the runbook, ``mlmlmlm train`` and every notebook's setup
cell take their folders from here.

Layout under a *root* (the repository, or a temporary book root for ``--smoke``)::

    <root>/runs/<scale>/<phase>/<run>/            a run's checkpoint, metrics.jsonl, metrics
    <root>/runs/<scale>/<phase>/<run>.set-<hash>/ a ``mlmlmlm train --set`` variation
    <root>/data/default/  <root>/data/smoke/      the embedded default corpus (ours: rebuildable)
    <repo>/.cache/                                derived data (e.g. EMG scales of any data root)

``cpu``, ``paper`` and ``smoke`` runs never share a folder, so ``mlmlmlm train ... --scale
paper`` after ``make book`` starts its own run instead of meeting the cpu checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mlmlmlm.config import REPO_ROOT


def default_data_root(root: Path | None = None, smoke: bool = False) -> Path:
    """The default corpus folder: ``<root>/data/default`` (``data/smoke`` for smoke runs)."""
    return Path(root or REPO_ROOT) / "data" / ("smoke" if smoke else "default")


def run_dir(run: str, scale: str, root: Path | None = None, tag: str = "") -> Path:
    """``<root>/runs/<scale>/<phase>/<run><tag>`` for ``run = "<phase>/<run>"``."""
    phase, name = run.split("/")
    return Path(root or REPO_ROOT) / "runs" / scale / phase / (name + tag)


def set_tag(overrides: dict[str, Any] | None, scale: str, data_root: Path | str) -> str:
    """``".set-<hash>"`` for a ``--set`` variation; the hash covers the overrides, the scale and
    the (resolved) data root, so the same variation on other data never shares a folder."""
    if not overrides:
        return ""
    blob = json.dumps({"overrides": overrides, "scale": scale,
                       "data_root": str(Path(data_root).resolve())}, sort_keys=True)
    return ".set-" + hashlib.sha256(blob.encode()).hexdigest()[:8]


def data_tag(data_root: Path | str, root: Path | None = None, smoke: bool = False) -> str:
    """``""`` for the default corpus of ``root``, else ``".data-<hash>"`` of the resolved data
    root: runs on a user's folder get run folders of their own."""
    resolved = Path(data_root).resolve()
    if resolved == default_data_root(root, smoke).resolve():
        return ""
    return ".data-" + hashlib.sha256(str(resolved).encode()).hexdigest()[:8]


def cache_dir(*parts: str) -> Path:
    """A folder for derived data that must not be written into a user's data folder:
    ``$MLMLMLM_CACHE`` or ``<repo>/.cache``, then ``parts``."""
    base = Path(os.environ.get("MLMLMLM_CACHE") or REPO_ROOT / ".cache")
    return base.joinpath(*parts)


def relative(path: Path | str, root: Path | None = None) -> str:
    """``path`` relative to ``root`` (default the repository) when inside it, else as given:
    how pages and cards show folders without the build machine's absolute paths."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path(root or REPO_ROOT).resolve()))
    except ValueError:
        return str(p)
