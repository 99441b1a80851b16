"""Look-and-listen helpers shared by every chapter: audio player tables, spectrogram grids with one
fixed dB range and colour map, the time-aligned multichannel view, and run metrics files.

Introduced in notebook 01_dataset; used by every notebook so pictures compare across runs.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlmlmlm.atomic import write_json_atomic

# The loss columns of the paper's Tables 2, 4 and 6, in order, and their labels
# (mlmlmlm.recipes.codec.LOSS_KEYS is this order; the codec results table below shows them).
LOSS_LABELS = {"mrstft": "MRSTFT", "kl": "KL", "quantizer": "quantizer",
               "adversarial": "adversarial", "feature_matching": "feature-matching",
               "disc": "disc.", "train": "train"}

# One look for every spectrogram in the book (so pictures compare across runs and chapters).
DB_RANGE = (-100.0, 0.0)  # dB re full scale: a full-scale sine peaks at 0 dB
CMAP = "magma"
PANEL_SIZE = (3.0, 2.0)  # inches per spectrogram panel
FMAX = {"audio": 11025.0, "emg": 500.0}  # Hz shown; surface EMG carries ~nothing above 500 Hz
NFFT_SECONDS = {"audio": 2048 / 44100, "emg": 0.25}  # analysis window length per modality


def wav_bytes(x: np.ndarray, sr: float) -> bytes:
    """16-bit PCM WAV bytes of a mono signal ``x`` [T] in [-1, 1] (clipped)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(x, dtype=np.float32), -1, 1), round(sr), format="WAV",
             subtype="PCM_16")
    return buf.getvalue()


def audio_tag(x: np.ndarray, sr: float) -> str:
    """An ``<audio>`` element with the signal embedded as a WAV data URI (no files to ship)."""
    b64 = base64.b64encode(wav_bytes(x, sr)).decode("ascii")
    return (f'<audio controls preload="metadata" style="width:220px">'
            f'<source src="data:audio/wav;base64,{b64}" type="audio/wav"></audio>')


def audio_table(rows: Sequence[tuple[str, dict[str, np.ndarray]]], sr: float) -> Any:
    """A table of audio players: one row per held-out window, one column per version.

    Parameters
    ----------
    rows : sequence of ``(label, {column: signal [T]})``, e.g.
        ``[("test/3 @ 12.0 s", {"original": x, "reconstruction": y}), ...]``.
    sr : sample rate of every signal.

    Returns
    -------
    IPython.display.HTML
    """
    from IPython.display import HTML

    columns = list(rows[0][1]) if rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["window"] + columns)
    body = "".join(
        "<tr><td>" + html.escape(label) + "</td>"
        + "".join(f"<td>{audio_tag(sig[c], sr)}</td>" for c in columns) + "</tr>"
        for label, sig in rows
    )
    return HTML(f'<table class="mlmlmlm-players"><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")


def spectrogram_db(x: np.ndarray, sr: float, kind: str = "audio") -> tuple[np.ndarray, ...]:
    """Magnitude spectrogram in dB re full scale with the book's fixed settings.

    Returns ``(S_db [F, N], freqs [F], times [N])`` limited to ``FMAX[kind]``.
    """
    from scipy.signal import stft

    n_fft = int(2 ** round(math.log2(max(16, NFFT_SECONDS[kind] * sr))))
    n_fft = min(n_fft, int(2 ** math.floor(math.log2(max(16, len(x))))))  # short smoke windows
    f, t, z = stft(np.asarray(x, dtype=np.float64), fs=sr, nperseg=n_fft, noverlap=n_fft * 3 // 4,
                   window="hann", boundary=None, padded=False)
    # scipy scales by 1/sum(window); a full-scale sine then has |Z| = 0.5, hence the factor 2.
    s_db = 20 * np.log10(np.maximum(2 * np.abs(z), 1e-10))
    keep = f <= FMAX[kind]
    return s_db[keep], f[keep], t


def _draw_spec(ax, x: np.ndarray, sr: float, kind: str, title: str):
    s_db, f, t = spectrogram_db(x, sr, kind)
    im = ax.pcolormesh(t, f, s_db, vmin=DB_RANGE[0], vmax=DB_RANGE[1], cmap=CMAP, shading="auto")
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
    return im


def spectrogram_grid(columns: Sequence[tuple[str, np.ndarray]], sr: float, kind: str = "audio",
                     title: str = "", ncols: int | None = None):
    """Spectrograms side by side with one fixed dB range and colour map.

    Parameters
    ----------
    columns : sequence of ``(label, signal [T])``; pass originals and reconstructions interleaved
        (``orig 1, recon 1, orig 2, recon 2, ...``) as in the paper's Appendix A-C.
    sr : sample rate; ``kind`` : ``"audio"`` or ``"emg"`` (sets the analysis window and FMAX).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    n = len(columns)
    ncols = ncols or n
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows),
                             squeeze=False, sharey=True, constrained_layout=True)
    im = None
    for ax, (label, x) in zip(axes.flat, columns):
        im = _draw_spec(ax, x, sr, kind, label)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("Hz", fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="dB re full scale")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def multichannel_view(audio: np.ndarray, audio_sr: float, emg: np.ndarray, emg_sr: float,
                      names: Sequence[str], title: str = ""):
    """Time-aligned view of one audio channel over six EMG channels (the paper's Figure 2).

    Parameters
    ----------
    audio : [T_a] at ``audio_sr``; emg : [C, T_e] at ``emg_sr``; names : C + 1 channel names.
    """
    import matplotlib.pyplot as plt

    c = emg.shape[0]
    fig, axes = plt.subplots(c + 1, 1, figsize=(10, 1.0 * (c + 1)), sharex=True,
                             constrained_layout=True)
    ta = np.arange(len(audio)) / audio_sr
    te = np.arange(emg.shape[1]) / emg_sr
    axes[0].plot(ta, audio, lw=0.3, color="k")
    for i in range(c):
        axes[i + 1].plot(te, emg[i], lw=0.3, color=f"C{i}")
    for ax, name in zip(axes, names):
        ax.set_ylabel(name.replace("emg_", ""), rotation=0, ha="right", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def loss_curves(log: Sequence[dict[str, Any]], keys: Sequence[str], title: str = ""):
    """Training curves of the logged losses (``metrics.jsonl`` rows), one panel per loss."""
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in row for row in log)]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 2.2), squeeze=False,
                             constrained_layout=True)
    for ax, key in zip(axes[0], keys):
        pts = [(row["step"], row[key]) for row in log if key in row]
        ax.plot(*zip(*pts), lw=0.8)
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def interleaved(originals: np.ndarray, recons: np.ndarray, labels: Sequence[str],
                channel: int) -> list[tuple[str, np.ndarray]]:
    """``[(label orig, x), (recon, y), ...]`` for one channel of ``[N, C, T]`` arrays: the
    interleaved order of the paper's Appendix A-C spectrograms."""
    out = []
    for i, label in enumerate(labels):
        out += [(f"{label}: original", originals[i, channel]),
                (f"{label}: reconstruction", recons[i, channel])]
    return out


def traces(originals: np.ndarray, recons: np.ndarray, sr: float, names: Sequence[str],
           title: str = ""):
    """Original (grey) and reconstructed (colour) waveforms of every channel of one window."""
    import matplotlib.pyplot as plt

    c = originals.shape[0]
    fig, axes = plt.subplots(c, 1, figsize=(10, 0.9 * c + 0.4), sharex=True, squeeze=False,
                             constrained_layout=True)
    t = np.arange(originals.shape[-1]) / sr
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(t, originals[i], color="0.6", lw=0.5)
        ax.plot(t, recons[i], color=f"C{i}", lw=0.5)
        ax.set_ylabel(names[i].replace("emg_", ""), rotation=0, ha="right", fontsize=7)
        ax.set_yticks([])
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                   floatfmt: str | None = None) -> str:
    """A GitHub/MyST markdown table formatted for people.

    Numbers go through :func:`mlmlmlm.runs.fmt` (``44,100``, ``0.766``: three significant
    figures), or through ``floatfmt`` when given, unless that would print an exponent
    (``4.41e+04``). Missing values print as an em dash, like the paper's tables; a column of
    mappings (a nested config) is left out, and underscores in headers read as spaces.
    """
    from mlmlmlm.runs import fmt

    columns = list(columns or (list(rows[0]) if rows else []))
    columns = [c for c in columns if not rows or not all(isinstance(r.get(c), dict) for r in rows)]

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        if isinstance(v, float) and floatfmt and "e" not in format(v, floatfmt):
            return format(v, floatfmt)
        if isinstance(v, (int, float, np.number)):
            return fmt(v)
        return str(v).replace("|", "\\|")

    head = [str(c).replace("_", " ") for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


METRICS_FILE = "final_metrics.json"

# Named column sets for a phase's results table (``table: codec`` in experiments/<phase>/base.yaml):
# the loss columns of the paper's Tables 2, 4 and 6, then our held-out identifiability and the
# inspection verdict computed from it, beside the paper's own verdict.
TABLES = {
    "codec": [
        # "ours": a column the paper's tables do not have (left out of the paper's rows). The
        # columns the chapters argue from lead: steps, identifiability, pitch, the two verdicts.
        {"key": "metrics.steps", "label": "steps", "ours": True},
        {"key": "metrics.identifiability_audio", "label": "identifiability (audio) ↑", "ours": True},
        {"key": "metrics.identifiability_emg", "label": "identifiability (EMG, mean) ↑",
         "ours": True},
        {"key": "metrics.eval_raw_pitch_accuracy", "label": "raw pitch accuracy ↑", "ours": True},
        {"key": "metrics.eval_median_cents_error", "label": "median pitch error (cents) ↓",
         "ours": True},
        {"key": "metrics.eval_vibrato_depth_correlation", "label": "vibrato depth corr. ↑",
         "ours": True},
        {"key": "metrics.inspection", "label": "inspection"},
        {"key": "metrics.paper_inspection", "label": "paper's inspection", "ours": True},
        {"key": "metrics.train_wall_s", "label": "training (s)", "ours": True},
        {"key": "metrics.epochs", "label": "epochs"},
        *({"key": f"metrics.{k}", "label": f"{label} ↓"} for k, label in LOSS_LABELS.items()),
    ],
}


def save_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Record a run's final metrics where the runbook collects them for the run card."""
    path = Path(run_dir) / METRICS_FILE
    write_json_atomic(path, metrics)
    return path


CONTROL_KEYS = ("bow_force", "bow_velocity", "vibrato_depth", "pitch", "loudness_db")


def control_curves(controls: dict[str, np.ndarray], rate: float, keys=CONTROL_KEYS):
    """The ground-truth control curves of one window, one row per curve ``[T_c]`` at ``rate``
    (those of ``keys`` the window has)."""
    import matplotlib.pyplot as plt

    keys = [k for k in keys if k in controls]
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 0.9 * len(keys)), sharex=True,
                             constrained_layout=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        curve = controls[key]
        ax.plot(np.arange(len(curve)) / rate, curve, lw=0.8)
        ax.set_ylabel(key, rotation=0, ha="right", fontsize=7)
    axes[-1, 0].set_xlabel("time (s)")
    return fig
