"""The default corpus as a data job: build it, recognise it, and never touch anything else.

Introduced in notebook 01_dataset. ``mlmlmlm data build`` and the runbook call
:func:`ensure_default_corpus`; chapter notebooks never build into the folder they are given.

**Nothing we did not write is deleted or overwritten.** A folder may be (re)built only when

* it does not exist (or is empty), or
* it carries our marker (``corpus.json`` with ``"built_by": "mlmlmlm data build"``; corpora
  built before the marker existed are recognised by their ``name``/``emg_calibration`` keys)
  **and** every file in it is one the builder writes for a recording its manifest lists.

Anything else (a user's recordings, a corpus with a file added by hand) raises
:class:`~mlmlmlm.data.io.DataError` naming the folder and the first foreign file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mlmlmlm.data.io import DataError

MARKER = "mlmlmlm data build"
# what the builder writes per recording id, inside its split folder
RECORDING_SUFFIXES = (".audio.wav", ".emg.wav", ".controls.npz", ".wav")


def read_ours(root: Path) -> dict | None:
    """The manifest of a default corpus at ``root``, or None when ``root`` is not one of ours."""
    path = Path(root) / "corpus.json"
    try:
        man = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(man, dict):
        return None
    legacy = man.get("name") == "default" and "emg_calibration" in man
    return man if (man.get("built_by") == MARKER or legacy) else None


def foreign_files(root: Path, manifest: dict) -> list[Path]:
    """Files under ``root`` that the builder did not write for ``manifest`` (sorted)."""
    root = Path(root)
    ids = {str(e.get("id")) for e in manifest.get("recordings", []) if isinstance(e, dict)}
    own = {"corpus.json", "emg_scale.json"}  # emg_scale.json: written by versions before 0.2
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_dir():
            continue
        rel = p.relative_to(root)
        if str(rel) in own:
            continue
        stem = next((p.name[: -len(s)] for s in RECORDING_SUFFIXES if p.name.endswith(s)), None)
        if stem is None or stem not in ids or len(rel.parts) != 2:
            out.append(p)
    return out


def check_rebuildable(root: Path) -> dict | None:
    """Raise unless ``root`` may be (re)built; return its manifest when it is ours, else None
    (``root`` missing or empty)."""
    root = Path(root)
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return None
    if not root.is_dir():
        raise DataError(root, "is a file, not a corpus folder; nothing was written")
    man = read_ours(root)
    if man is None:
        raise DataError(root, "is not a default corpus built by mlmlmlm (no corpus.json with "
                              f"\"built_by\": \"{MARKER}\"); it is left untouched: build the "
                              "default corpus into another folder")
    foreign = foreign_files(root, man)
    if foreign:
        raise DataError(root, f"holds files the corpus builder did not write "
                              f"({foreign[0].relative_to(root)}"
                              f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''});"
                              " it is left untouched: move them out, or build elsewhere")
    return man


def matches(manifest: dict | None, minutes: float, seed: int) -> bool:
    return manifest is not None and manifest.get("seed") == seed and \
        float(manifest.get("minutes", -1)) == float(minutes)


def ensure_default_corpus(root: Path, minutes: float, seed: int, *, progress: bool = True,
                          log: Callable[[str], None] = print) -> Path:
    """Build the default corpus at ``root`` unless one with these settings is there.

    The build goes to a sibling temporary folder and is renamed into place, so an interrupted
    build never leaves half a corpus. Refuses (``DataError``) a folder that is not ours.
    """
    from mlmlmlm.data.synth.build import build_corpus

    root = Path(root)
    man = check_rebuildable(root)
    if matches(man, minutes, seed):
        return root
    if man is not None:
        log(f"corpus at {root} was built with other settings; rebuilding")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    t0 = time.time()
    log(f"building corpus ({minutes} min, seed {seed}) -> {root}")
    try:
        build_corpus(tmp, minutes=minutes, seed=seed, progress=progress)
        check_rebuildable(root)  # nothing may have appeared there meanwhile
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log(f"corpus built in {time.time() - t0:.0f} s")
    return root


def ensure_default(book_root: Path | None = None, smoke: bool = False, *, progress: bool = True,
                   log: Callable[[str], None] = print) -> Path:
    """The default corpus of a book root (``<root>/data/default``, ``data/smoke``) with the
    settings of ``experiments/01_dataset/base.yaml``, built when missing."""
    from mlmlmlm.paths import default_data_root

    return ensure_default_corpus(default_data_root(book_root, smoke), *default_settings(smoke),
                                 progress=progress, log=log)


def default_settings(smoke: bool) -> tuple[float, int]:
    """``(minutes, seed)`` of the default corpus from ``experiments/01_dataset/base.yaml``."""
    from mlmlmlm.config import load_run_config

    cfg = load_run_config("01_dataset/base", "smoke" if smoke else "cpu").corpus
    return cfg.minutes, cfg.seed
