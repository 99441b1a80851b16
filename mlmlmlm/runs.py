"""Run records as the book quotes them: every run card of a book root, formatted for people,
as MyST substitutions (``{{ r.a_rvq_vae_3.identifiability_audio }}``) so that the chapters'
sentences are rebuilt with their tables and never contradict them.

Introduced in notebook 01_dataset (the runbook builds every chapter with these substitutions).
"""

from __future__ import annotations

import json
import math
import numbers
import re
from pathlib import Path
from typing import Any

from mlmlmlm.config import list_runs

NOT_RUN = "(not run yet)"
NOT_COMPUTED = "n/a"


def fmt(value: Any) -> str:
    """A value as the prose shows it: integers with thousands separators, other numbers to three
    significant figures (``0.766``, ``1.47``, ``2,190``), lists as ranges, ``None`` as n/a."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NOT_COMPUTED
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, numbers.Integral):  # numpy's integers and floats too
        value = int(value)
    elif isinstance(value, numbers.Real):
        value = float(value)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NOT_COMPUTED
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == int(value) and abs(value) >= 100:
            return f"{int(value):,}"
        digits = max(0, 2 - math.floor(math.log10(abs(value)))) if value else 0
        return f"{value:,.{digits}f}"
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return f"{fmt(min(value))}–{fmt(max(value))}"
    return str(value)


def load_cards(root: Path) -> dict[str, dict]:
    """``{"<phase>/<run>": card}`` for every run card under ``<root>/book``."""
    out = {}
    for run in list_runs():
        phase, name = run.split("/")
        path = Path(root) / "book" / phase / "runs" / f"{name}.json"
        if path.exists():
            out[run] = json.loads(path.read_text())
    return out


_QUOTED = re.compile(r"\{\{\s*r\.(\w+)\.(\w+)\s*\}\}")


def quoted_keys(root: Path) -> dict[str, set[str]]:
    """``{run name: keys}`` that the chapters' Markdown under ``<root>/book`` quotes as
    ``{{ r.<name>.<key> }}``."""
    used: dict[str, set[str]] = {}
    for md in sorted((Path(root) / "book").rglob("*.md")):
        for name, key in _QUOTED.findall(md.read_text(encoding="utf-8")):
            used.setdefault(name, set()).add(key)
    return used


def substitutions(root: Path) -> dict[str, Any]:
    """``{"r": {run name: {metric: text}}}`` for every experiment: a card's metrics formatted
    by :func:`fmt`, plus ``scale``, ``date``, ``wall_s`` and ``status``; ``1/N`` as ``chance``.
    A run without a card gets every key its phase's cards have and every key the chapters quote
    of it, as "(not run yet)", so a book built with ``--only`` still builds."""
    cards = load_cards(root)
    keys: dict[str, set[str]] = {}
    for run, card in cards.items():
        keys.setdefault(run.split("/")[0], set()).update(card.get("metrics", {}))
    quoted = quoted_keys(root)
    r: dict[str, dict[str, str]] = {}
    for run in list_runs():
        phase, name = run.split("/")
        card = cards.get(run)
        if card is None:
            base = ({"scale", "date", "wall_s", "status", "chance"} | keys.get(phase, set())
                    | quoted.get(name, set()))
            r[name] = {k: NOT_RUN for k in base}
            continue
        m = card.get("metrics", {})
        row = {k: fmt(v) for k, v in m.items() if k != "not_computed"}
        for k, why in (m.get("not_computed") or {}).items():
            row[k] = f"{NOT_COMPUTED} ({why})"
        n = m.get("n_eval_windows")
        row |= {"scale": card.get("scale", ""), "date": str(card.get("finished_at", ""))[:10],
                "wall_s": fmt(card.get("wall_s")), "status": card.get("status", ""),
                "chance": fmt(1 / n) if n else NOT_COMPUTED}
        r[name] = row
    return {"r": r}


def write_placeholder_pages(root: Path) -> list[Path]:
    """A short page ``book/<phase>/runs/<run>.md`` for every experiment that has no run page
    (``<run>.ipynb``) in this book root, saying how to make it, so the chapters' links to it
    resolve in a book built with ``--only``; a placeholder whose run page now exists is
    removed. Returns the placeholders written."""
    from mlmlmlm.atomic import write_text_atomic

    written = []
    for run in list_runs():
        phase, name = run.split("/")
        pages = Path(root) / "book" / phase / "runs"
        placeholder = pages / f"{name}.md"
        if (pages / f"{name}.ipynb").exists():
            placeholder.unlink(missing_ok=True)
            continue
        write_text_atomic(placeholder, f"# {name} {NOT_RUN}\n\nThis book was built without the run "
                          f"`{run}`. `mlmlmlm book --only {run}` runs it and writes its page, "
                          "its card and its row of the chapter's table.\n")
        written.append(placeholder)
    return written
