"""Corpus statistics for chapter 1: durations and windows per split, per-channel RMS, median
frequency and mains share, and the fixed list of example windows every chapter shows.

Introduced in notebook 01_dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlmlmlm.data.io import Recording, find_recordings, load_recording, source_name
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
    """``corpus.json`` of ``root`` ({} when the folder has none, e.g. a user's recordings)."""
    path = Path(root) / "corpus.json"
    return json.loads(path.read_text()) if path.exists() else {}


@dataclass
class FolderInfo:
    """What chapter 1 says about a data folder, whether our default corpus or a user's."""

    ours: bool  # the embedded default corpus (with its manifest, controls and test_real split)
    table: dict  # one row: recordings, minutes, rates, source, ...
    channels: list[str]  # "audio", then the six EMG channel names
    splits_note: str  # where the splits come from, in one sentence
    has_controls: bool  # every recording carries ground-truth control curves


def folder_info(root: Path, recs: list[Recording]) -> FolderInfo:
    """Describe ``root`` (its loaded recordings ``recs``) for the dataset page."""
    from mlmlmlm.data.corpus import read_ours

    man = read_ours(Path(root)) or {}
    has_manifest = (Path(root) / "corpus.json").is_file()
    minutes = sum(r.duration_s for r in recs) / 60
    emg_rates = sorted({float(r.emg_sr) for r in recs})
    table = {"recordings": len(recs), "minutes": round(minutes, 2),
             "audio rate (Hz)": ", ".join(f"{sr:g}" for sr in sorted({r.audio_sr for r in recs})),
             "EMG rate (Hz)": ", ".join(f"{sr:g}" for sr in emg_rates),
             "layouts": ", ".join(sorted({r.format for r in recs}))}
    if man:
        table |= {"seed": man["seed"], "sound source": man["sound_source"],
                  "build time (s)": round(man["build"]["seconds"], 1)}
    else:
        table["sound source"] = "your recordings"
    if has_manifest:
        note = "Splits come from the folder's `corpus.json`."
    elif len({source_name(r.name) for r in recs}) < 3:
        note = ("This folder has no `corpus.json` and fewer than three recordings, so each "
                "recording was split by time: its first 80 % for training, then 10 % "
                "validation and the last 10 % test.")
    else:
        note = ("This folder has no `corpus.json`, so the splits were made by recording: names "
                "in sorted order, the last tenth (at least one) test, the tenth before it "
                "validation, the rest training.")
    return FolderInfo(ours=bool(man), table=table, channels=list(recs[0].channel_names),
                      splits_note=note, has_controls=all(r.controls for r in recs))


def compare_to_real(root: Path, recs: list[Recording], info: FolderInfo):
    """EMG statistics of the folder beside the real PLUX recordings (a DataFrame, one row per
    signal, columns ``source``, ``muscle`` and :func:`mlmlmlm.data.synth.plux.emg_stats`).

    The default corpus is compared through its manifest (synthetic channels in mV). A user's
    folder is compared on all its recordings; its amplitudes are in the folder's own units (the
    sensor's scale is not known), so only the shape columns (median frequency, kurtosis, mains
    share) compare directly.
    """
    import pandas as pd

    from mlmlmlm.data.synth import plux

    if info.ours:
        return plux.compare_synthetic_to_real(root)
    rows = []
    for c, name in enumerate(info.channels[1:]):
        x = np.concatenate([plux.to_rate(r.emg[c].astype(np.float64), r.emg_sr) for r in recs])
        rows.append({"source": "this folder", "muscle": name, **plux.emg_stats(x, plux.STATS_FS)})
    index = [f"folder:{name}" for name in info.channels[1:]]
    real = plux.compare_synthetic_to_real(None)
    return pd.concat([pd.DataFrame(rows, index=pd.Index(index, name="signal")), real])


def dataset_metrics(recs: list[Recording], splits: list[dict], cmp, info: FolderInfo) -> dict:
    """The dataset run card's metrics; what a user's folder cannot give is ``None`` with the
    reason under ``not_computed``."""
    ours = "synthetic" if info.ours else "this folder"
    mf = cmp.loc[cmp["source"] == ours, "median_freq_hz"].mean()
    real_mf = cmp.loc[cmp["source"] == "real", "median_freq_hz"].mean()
    out = {"recordings": len({source_name(r.name) for r in recs}),
           "minutes_paired": sum(r["minutes"] for r in splits if r["split"] != "test_real"),
           **{f"windows_{r['split']}": r["windows"] for r in splits},
           ("emg_median_freq_synthetic_hz" if info.ours else "emg_median_freq_folder_hz"):
               float(mf),
           "emg_median_freq_real_hz": float(real_mf),
           "sound_source": info.table["sound source"],
           "build_seconds": info.table.get("build time (s)")}
    if not info.ours:
        out["not_computed"] = {"build_seconds": "a folder of your own: not built by mlmlmlm"}
    return out
