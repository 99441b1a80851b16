"""Figures that compare the runs of a chapter, drawn from their run cards and training logs: the
held-out metrics of every run beside our and the paper's inspection verdicts, and the training
losses against steps. The runbook puts them on each chapter's results page.

Introduced in notebook 02_audio_codec (its results page compares the paper's rows).
"""

from __future__ import annotations

import io
import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlmlmlm.atomic import write_text_atomic
from mlmlmlm.report import LOSS_LABELS
from mlmlmlm.runs import fmt

FIGURE_DIR = "_figures"  # book/<phase>/_figures/: generated beside results.md, git-ignored
COMPARED, CURVES = "runs_compared.svg", "training_curves.svg"

# The held-out metrics a comparison shows, in this order, those a run of the chapter has:
# (run-card metrics key, label, "higher" or "lower" is better). Identifiability first: it is
# what the inspection verdict is computed from; then pitch (raw pitch accuracy, or the older
# cards' f0 error), the EMG envelopes, and the rest.
PANELS = (
    ("identifiability_audio", "identifiability (audio)", "higher"),
    ("identifiability_emg", "identifiability (EMG, mean)", "higher"),
    ("eval_raw_pitch_accuracy", "raw pitch accuracy", "higher"),
    ("eval_f0_error_cents", "f0 error (cents)", "lower"),
    ("eval_envelope_correlation", "envelope correlation", "higher"),
    ("eval_median_cents_error", "median pitch error (cents)", "lower"),
    ("eval_loudness_error_db", "loudness error (dB)", "lower"),
    ("eval_median_frequency_error", "median frequency error (Hz)", "lower"),
    # translation runs (chapter 5): does the EMG steer the sound, and how well are codes predicted
    ("cond_loudness_corr_true", "loudness corr., true EMG", "higher"),
    ("cond_loudness_margin", "loudness corr., true − shuffled", "higher"),
    ("emg_information_nats", "EMG information (nats/code)", "higher"),
    ("token_accuracy_q0", "token accuracy, level 0", "higher"),
)
# metrics on a 0-1 scale, drawn on the same axis (identifiability also shows threshold, chance)
UNIT_RANGE = {"identifiability_audio", "identifiability_emg", "eval_raw_pitch_accuracy",
              "eval_envelope_correlation", "cond_loudness_corr_true", "cond_loudness_margin",
              "token_accuracy_q0"}
MAX_PANELS = 4
WIDTH = 7.5  # inches: the book's text column, where the page shows a figure at its font size
MAX_POINTS = 400  # per training curve: longer logs are averaged in bins (paper scale: 8,000 rows)

VERDICTS = {"successful": ("o", "#2a9d8f"), "unsuccessful": ("X", "#c44536")}
NO_VERDICT = "#9a9a9a"
# (alt text, caption) of each figure on the results page
CAPTIONS = {
    COMPARED: (
        "Bars of each run's held-out metrics and markers of the inspection verdicts",
        ("Held-out metrics of every run of this chapter (bars), with our inspection verdict "
         "(from identifiability and its threshold, dashed) beside the paper's for the same row."),
    ),
    CURVES: (
        "Each run's training losses against steps",
        ("Training losses against steps, one line per run (colours as above). Runs of "
         "different lengths stop at different steps."),
    ),
}
# text stays text in the SVG (searchable, and smaller); a fixed salt keeps the file byte-stable
RC = {"svg.fonttype": "none", "svg.hashsalt": "mlmlmlm", "font.size": 8, "axes.titlesize": 8,
      "xtick.labelsize": 6.5, "ytick.labelsize": 6.5, "axes.formatter.useoffset": False}


@dataclass
class Row:
    """One run as the comparison shows it."""

    name: str
    label: str  # the run's title, "(failed)" added when its notebook failed
    colour: str  # the same run has the same colour in every figure of the page
    values: dict[str, float | None]  # PANELS keys -> finite value or None
    ours: str | None  # our inspection verdict
    paper: str | None  # the paper's verdict for the same row
    threshold: float | None  # identifiability at or above which ours is "successful"
    chance: float | None  # 1 / number of held-out windows


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) \
        and math.isfinite(v) else None


def rows_of(cards: Sequence[dict]) -> list[Row]:
    """The comparison's rows, one per run card, in the cards' order."""
    rows = []
    for i, card in enumerate(cards):
        m = card.get("metrics") or {}
        n = m.get("n_eval_windows")
        label = card.get("title") or card["name"]
        rows.append(Row(
            name=card["name"], label=label + ("" if card.get("status") == "ok" else " (failed)"),
            colour=f"C{i % 10}", values={k: _finite(m.get(k)) for k, _, _ in PANELS},
            ours=m.get("inspection"),
            paper=m.get("paper_inspection") or (card.get("paper") or {}).get("inspection"),
            threshold=_finite(((card.get("params") or {}).get("eval") or {})
                              .get("inspection_threshold")),
            chance=1 / n if n else None))
    return rows


def panels_for(rows: Sequence[Row]) -> list[tuple[str, str, str]]:
    """The PANELS some row has a value for, at most MAX_PANELS."""
    return [p for p in PANELS if any(r.values[p[0]] is not None for r in rows)][:MAX_PANELS]


def compare_figure(cards: Sequence[dict]):
    """Held-out metrics per run (bars, one panel per metric), with the inspection verdicts,
    ours and the paper's, in a first column. ``None`` when fewer than two runs have a metric
    of :data:`PANELS` (a chapter without codecs, or a single run: nothing to compare).

    Returns
    -------
    matplotlib.figure.Figure or None
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    rows = rows_of(cards)
    panels = panels_for(rows)
    if not panels or sum(any(v is not None for v in r.values.values()) for r in rows) < 2:
        return None
    n = len(rows)
    # at most the text column's width (~7.5 in), so that the page shows it at its font size
    fig = Figure(figsize=(min(WIDTH, 2.3 + 2.1 * len(panels)), 0.9 + 0.36 * n),
                 layout="constrained")
    axes = fig.subplots(1, 1 + len(panels), sharey=True, squeeze=False,
                        gridspec_kw={"width_ratios": [1.0] + [2] * len(panels)})[0]
    y = np.arange(n)
    ax = axes[0]
    for i, r in enumerate(rows):
        for x, verdict in ((0, r.ours), (1, r.paper)):
            if verdict in VERDICTS:
                marker, colour = VERDICTS[verdict]
                ax.scatter([x], [i], marker=marker, s=40, color=colour, zorder=3)
            else:
                ax.text(x, i, "–", ha="center", va="center", color=NO_VERDICT)
    ax.set_xticks([0, 1], ["ours", "paper"])
    ax.set_xlim(-0.6, 1.6)
    ax.set_title("inspection")
    ax.set_yticks(y, [textwrap.fill(r.label, 26) for r in rows], fontsize=7)
    ax.invert_yaxis()  # the first run on top, as in the table above
    for ax, (key, label, better) in zip(axes[1:], panels):
        vals = [r.values[key] for r in rows]
        top = max([v for v in vals if v is not None] + [1e-12])
        for i, (r, v) in enumerate(zip(rows, vals)):
            if v is None:  # just inside the panel's left edge, whatever its x range
                ax.text(0.02, i, "n/a", va="center", color=NO_VERDICT, fontsize=7,
                        transform=blended_transform_factory(ax.transAxes, ax.transData))
                continue
            ax.barh(i, v, color=r.colour, height=0.65)
            ax.text(v, i, " " + fmt(v), va="center", fontsize=6.5)
        low = min([0.0] + [v for v in vals if v is not None])
        if key in UNIT_RANGE:
            ax.set_xlim(low, 1.25)  # room for the value labels
            ax.set_xticks([t for t in (-1, -0.5, 0, 0.25, 0.5, 0.75, 1) if t >= low])
        else:
            ax.set_xlim(low, 1.3 * top)
        if key.startswith("identifiability"):
            thr = next((r.threshold for r in rows if r.threshold is not None), None)
            chance = next((r.chance for r in rows if r.chance is not None), None)
            if thr is not None:
                ax.axvline(thr, color="0.3", ls="--", lw=0.8)
            if chance is not None:
                ax.axvline(chance, color="0.3", ls=":", lw=0.8)
        ax.set_title(f"{label} {'↑' if better == 'higher' else '↓'}")
        ax.tick_params(axis="y", length=0)
        ax.grid(axis="x", color="0.9", lw=0.5)
        ax.set_axisbelow(True)
    legend = [Line2D([], [], ls="", marker=m, color=c, label=v) for v, (m, c) in VERDICTS.items()]
    legend += [Line2D([], [], color="0.3", ls="--", lw=0.8,
                      label="inspection threshold (ours)"),
               Line2D([], [], color="0.3", ls=":", lw=0.8, label="chance (1 / held-out windows)")]
    fig.legend(handles=legend, loc="outside lower center", ncols=len(legend), frameon=False,
               fontsize=7)
    return fig


def read_log(path: Path) -> list[dict]:
    """``metrics.jsonl`` rows (``[]`` when the file is missing: a card copied without its run)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def thin(steps: Sequence[float], values: Sequence[float],
         n: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n`` points of a curve: consecutive points averaged in ``n`` equal bins."""
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if len(s) <= n:
        return s, v
    bins = np.array_split(np.arange(len(s)), n)
    return np.array([s[b].mean() for b in bins]), np.array([v[b].mean() for b in bins])


def curves_figure(cards: Sequence[dict], logs: dict[str, list[dict]],
                  keys: Sequence[str] = tuple(LOSS_LABELS)):
    """Each logged training loss against steps, one panel per loss of ``keys`` that a log has,
    one line per run (its colour as in :func:`compare_figure`). ``logs`` maps a card's name to
    its ``metrics.jsonl`` rows; ``None`` when fewer than two runs logged a loss."""
    from matplotlib.figure import Figure

    rows = rows_of(cards)
    keys = [k for k in keys if any(k in e for r in rows for e in logs.get(r.name, []))]
    if not keys or sum(bool(logs.get(r.name)) for r in rows) < 2:
        return None
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(min(WIDTH, 1.9 * ncols + 0.4), 1.7 * nrows + 0.6),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for r in rows:
            pts = [(e["step"], e[key]) for e in logs.get(r.name, [])
                   if key in e and _finite(e[key]) is not None]
            if pts:
                ax.plot(*thin(*zip(*pts)), color=r.colour, lw=0.9, label=r.label)
        ax.set_title(f"{LOSS_LABELS.get(key, key)} (training)")
        ax.set_xlabel("step", fontsize=7)
        ax.grid(color="0.9", lw=0.5)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}  # one per run
    fig.legend(handles=list(handles.values()), labels=list(handles),
               loc="outside lower center", ncols=min(len(handles), 4), frameon=False,
               fontsize=7)
    return fig


def save_svg(fig, path: Path) -> Path:
    """The figure as an SVG whose bytes depend only on what it shows (no date, fixed ids)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return write_text_atomic(path, buf.getvalue())


def results_figures(cards: Sequence[dict], root: Path, page_dir: Path) -> list[str]:
    """Draw the comparison figures of a chapter into ``page_dir/_figures`` and return the
    Markdown (MyST figure directives) that shows them on its results page; ``[]`` when the
    chapter has nothing to compare. Training logs are read from each card's ``run_dir`` under
    ``root``. Figures no longer drawn are removed, so a page never shows a stale one."""
    import matplotlib

    logs = {c["name"]: read_log(Path(root) / c.get("run_dir", "") / "metrics.jsonl")
            for c in cards if c.get("run_dir")}
    out_dir = Path(page_dir) / FIGURE_DIR
    with matplotlib.rc_context(RC):
        figs = [(COMPARED, compare_figure(cards)), (CURVES, curves_figure(cards, logs))]
    lines: list[str] = []
    for name, fig in figs:
        alt, caption = CAPTIONS[name]
        path = out_dir / name
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        save_svg(fig, path)
        lines += [f"```{{figure}} {FIGURE_DIR}/{name}", f":alt: {alt}", ":width: 100%", "",
                  caption, "```", ""]
    return (["## Runs compared", ""] + lines) if lines else []
