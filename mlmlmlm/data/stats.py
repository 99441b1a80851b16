"""Corpus statistics for chapter 1: durations and windows per split, per-channel RMS, median
frequency and mains share, and the fixed list of example windows every chapter shows.

Introduced in notebook 01_dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlmlmlm.data.io import Recording, find_recordings, load_recording
from mlmlmlm.data.synth.plux import emg_stats


def n_windows(duration_s: float, window_s: float, hop_s: float) -> int:
    """Number of ``window_s`` windows at ``hop_s`` that fit in ``duration_s`` (0 if too short)."""
    if duration_s < window_s:
        return 0
    return int(np.floor((duration_s - window_s) / hop_s + 1e-9)) + 1


def load_all(root: Path) -> list[Recording]:
    """Every recording under ``root``, loaded (the default corpus is ~25 min: fits in memory)."""
    return [load_recording(ref) for ref in find_recordings(root)]


def split_table(recs: list[Recording], window_s: float = 6.0, hop_s: float = 3.0) -> list[dict]:
    """One row per split: recordings, minutes and windows."""
    rows = []
    for split in ("train", "val", "test", "test_real"):
        sel = [r for r in recs if r.split == split]
        if not sel:
            continue
        durs = [len(r.audio) / r.audio_sr for r in sel]
        rows.append(
            {
                "split": split,
                "recordings": len(sel),
                "minutes": sum(durs) / 60,
                "windows": sum(n_windows(d, window_s, hop_s) for d in durs),
            }
        )
    return rows


def channel_table(recs: list[Recording], names: list[str]) -> list[dict]:
    """One row per channel over the synthetic-driven splits: RMS (dBFS), median frequency, mains
    share of power (50 Hz and harmonics), computed on the concatenated signal."""
    synth = [r for r in recs if r.split != "test_real"]
    audio = np.concatenate([r.audio for r in synth])
    rows = [{"channel": names[0], "rate_hz": synth[0].audio_sr, **_row(audio, synth[0].audio_sr)}]
    emg = np.concatenate([r.emg for r in synth], axis=1)
    for c in range(emg.shape[0]):
        rows.append(
            {"channel": names[c + 1], "rate_hz": synth[0].emg_sr, **_row(emg[c], synth[0].emg_sr)}
        )
    return rows


def _row(x: np.ndarray, sr: float) -> dict:
    st = emg_stats(x, sr)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return {
        "rms_dbfs": 20 * np.log10(max(rms, 1e-12)),
        "median_freq_hz": float(st["median_freq_hz"]),
        "mains_share": float(st["mains_share"]),
    }


@dataclass
class Example:
    """One fixed example window: which recording, where, and its signals."""

    label: str
    audio: np.ndarray  # [T_a]
    audio_sr: float
    emg: np.ndarray  # [6, T_e]
    emg_sr: float
    controls: dict | None
    control_rate: float


def example_windows(
    recs: list[Recording],
    split: str,
    n: int,
    window_s: float = 6.0,
) -> list[Example]:
    """A fixed, deterministic list of ``n`` windows from ``split``: the recordings in name order,
    the window taken from the middle of each (cycling through recordings)."""
    sel = sorted((r for r in recs if r.split == split), key=lambda r: r.name)
    out = []
    for i in range(min(n, len(sel) * 4)):
        r = sel[i % len(sel)]
        dur = len(r.audio) / r.audio_sr
        if dur < window_s:
            continue
        k = i // len(sel)  # k-th window of this recording: middle, then quarter points
        frac = [0.5, 0.25, 0.75, 0.0][k % 4]
        t0 = round(frac * (dur - window_s), 1)
        a0, e0 = int(t0 * r.audio_sr), int(t0 * r.emg_sr)
        ctrl = None
        if r.controls:
            c0, c1 = int(t0 * r.control_rate), int((t0 + window_s) * r.control_rate)
            ctrl = {k2: v[c0:c1] for k2, v in r.controls.items()}
        out.append(
            Example(
                label=f"{r.split}/{r.name} @ {t0:.1f} s",
                audio=r.audio[a0 : a0 + int(window_s * r.audio_sr)],
                audio_sr=r.audio_sr,
                emg=r.emg[:, e0 : e0 + int(window_s * r.emg_sr)],
                emg_sr=r.emg_sr,
                controls=ctrl,
                control_rate=r.control_rate,
            )
        )
    return out


def manifest(root: Path) -> dict:
    path = Path(root) / "corpus.json"
    return json.loads(path.read_text()) if path.exists() else {}
