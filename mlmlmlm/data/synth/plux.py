"""Real surface EMG from PLUX sensors (shipped with ``biosignalsnotebooks``), the statistics that
compare EMG signals, and the synthetic-versus-real comparison table.

Introduced in notebook 01_dataset.

The recordings are read from the package's HDF5 files with h5py (the package itself is never
imported: it does not import cleanly). Raw ADC values become millivolts with PLUX's EMG transfer
function ``(ADC / 2**bits - 1/2) * VCC / G`` (VCC 3 V, gain 1000). Only recordings at 1 kHz are
used; the 10 Hz ones carry no EMG band.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.signal as ss

STATS_FS = 1000  # rate at which synthetic and real EMG are compared
WINDOW_S = 0.1  # window of the active/rest split and of the windowed kurtosis
MAINS_HZ = 50.0

# Which corpus channel a real recording's muscle stands in for (test_real split, calibration).
REAL_CHANNEL = {"biceps_brachii": "emg_biceps_l", "adductor_pollicis": "emg_wrist_flex_l"}


@dataclass(frozen=True)
class PluxRecording:
    """One real EMG recording.

    ``emg`` [T] float64 in millivolts at ``fs`` Hz, median removed; ``muscle`` is
    ``"biceps_brachii"`` or ``"adductor_pollicis"``; ``bits`` the ADC resolution.
    """

    name: str
    path: Path
    fs: int
    emg: np.ndarray
    muscle: str
    device: str = ""
    bits: int = 16
    note: str = ""

    @property
    def duration_s(self) -> float:
        return len(self.emg) / self.fs


def signal_samples_dir() -> Path | None:
    """Folder holding ``emg_*.h5`` inside the installed ``biosignalsnotebooks``, or ``None``."""
    spec = importlib.util.find_spec("biosignalsnotebooks")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations)))
    d = d / "notebook_files" / "osf_files" / "signal_samples"
    return d if d.is_dir() else None


def load_plux(min_fs: int = 1000) -> list[PluxRecording]:
    """All real EMG recordings at ``min_fs`` Hz or more, sorted by name.

    A file with two devices gives two recordings named ``<file>_<bits>bit``. Raises
    ``FileNotFoundError`` when ``biosignalsnotebooks`` is not installed.
    """
    return list(_load_plux(min_fs))


@functools.lru_cache(maxsize=2)
def _load_plux(min_fs: int) -> tuple[PluxRecording, ...]:
    import h5py

    d = signal_samples_dir()
    if d is None:
        raise FileNotFoundError(
            "biosignalsnotebooks is not installed: `pip install --no-deps biosignalsnotebooks`"
        )
    out = []
    for path in sorted(d.glob("emg_*.h5")):
        info_path = path.with_name(path.stem + "_info.json")
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        note = str(info.get("Observations", ""))
        muscle = "biceps_brachii" if "biceps" in note.lower() else "adductor_pollicis"
        with h5py.File(path, "r") as h:
            devices = [k for k in sorted(h) if int(h[k].attrs["sampling rate"]) >= min_fs]
            for dev in devices:
                g = h[dev]
                bits = int(g.attrs["resolution"][0])
                chan = min(k for k in g["raw"] if k.startswith("channel"))
                raw = g["raw"][chan][:, 0].astype(np.float64)
                # PLUX EMG transfer function (VCC 3 V, gain 1000), in mV.
                mv = (raw / 2**bits - 0.5) * 3.0
                mv -= np.median(mv)
                mv.flags.writeable = False
                name = path.stem if len(devices) == 1 else f"{path.stem}_{bits}bit"
                out.append(
                    PluxRecording(
                        name=name,
                        path=path,
                        fs=int(g.attrs["sampling rate"]),
                        emg=mv,
                        muscle=muscle,
                        device=str(g.attrs.get("device", "")),
                        bits=bits,
                        note=note,
                    )
                )
    return tuple(sorted(out, key=lambda r: r.name))


def to_rate(x: np.ndarray, fs: float, target: int = STATS_FS) -> np.ndarray:
    """Resample ``x`` [T] from ``fs`` to ``target`` Hz (polyphase, anti-aliased)."""
    fs_i = round(fs)
    if fs_i == target:
        return np.asarray(x, dtype=np.float64)
    g = np.gcd(fs_i, target)
    return ss.resample_poly(np.asarray(x, dtype=np.float64), target // g, fs_i // g)


def psd(x: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Welch power spectral density of ``x`` [T]: 1 s Hann segments (1 Hz bins), half overlap.

    Returns ``f`` [F] in Hz and ``Pxx`` [F] in units²/Hz.
    """
    x = np.asarray(x, dtype=np.float64)
    nperseg = int(min(len(x), round(fs)))
    return ss.welch(x, fs=fs, nperseg=nperseg, detrend="constant")


def _window_moments(x: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Per 100 ms window of ``x`` (mean removed per window: a drifting offset is not EMG): the
    variance [n] and the Pearson kurtosis [n] (NaN for a flat window). Computed from raw moments
    with einsum, so a long signal is not copied per power."""
    w = max(8, round(WINDOW_S * fs))
    n = len(x) // w
    win = x[: n * w].reshape(n, w)
    sq = win * win
    m1 = win.mean(axis=1)
    m2 = sq.mean(axis=1)
    m3 = np.einsum("ij,ij->i", sq, win) / w
    m4 = np.einsum("ij,ij->i", sq, sq) / w
    var = np.maximum(m2 - m1**2, 0.0)
    c4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    with np.errstate(all="ignore"):
        kurt = np.where(var > 1e-30, c4 / var**2, np.nan)
    return var, kurt


def emg_stats(x: np.ndarray, fs: float) -> dict:
    """Amplitude and spectral statistics of one EMG channel ``x`` [T] at ``fs`` Hz.

    Returns
    -------
    dict with ``rms``; ``rms_active``/``rms_rest``: RMS over the 100 ms windows (each with its
    mean removed) above/below the midpoint, in log RMS, between the 10th and 95th percentile
    window, and ``active_fraction``; ``median_freq_hz``/``mean_freq_hz`` of the Welch PSD over
    10 Hz to min(500 Hz, fs/2); ``kurtosis`` (Pearson, a Gaussian has 3) of the whole signal and
    ``kurtosis_active`` (median over active windows, so a changing level does not inflate it);
    ``mains_share``: fraction of the power within ±1 Hz of 50 Hz and its harmonics; ``seconds``.
    Amplitudes in the units of ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean()
    f, p = psd(x, fs)
    band = (f >= 10.0) & (f <= min(500.0, fs / 2))
    pb, fb = p[band], f[band]
    cum = np.cumsum(pb)
    median_f = float(fb[np.searchsorted(cum, 0.5 * cum[-1])]) if cum[-1] > 0 else 0.0
    mean_f = float(np.sum(fb * pb) / np.sum(pb)) if cum[-1] > 0 else 0.0
    harmonics = np.arange(MAINS_HZ, fs / 2, MAINS_HZ)
    near = np.min(np.abs(f[:, None] - harmonics[None, :]), axis=1) <= 1.0
    total = p[f > 0].sum()
    mains = float(p[near].sum() / total) if total > 0 else 0.0
    var, kurt = _window_moments(x, fs)
    lr = 0.5 * np.log(var + 1e-24)
    active = lr > 0.5 * (np.percentile(lr, 10) + np.percentile(lr, 95))
    m2 = float(np.dot(x, x) / len(x))
    sq = x * x
    m4 = float(np.dot(sq, sq) / len(x))
    del sq

    def rms(v: np.ndarray) -> float:
        return float(np.sqrt(v.mean())) if v.size else float("nan")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (flat) windows
        k_act = float(np.nanmedian(kurt[active])) if active.any() else float("nan")
    return {
        "rms": float(np.sqrt(m2)),
        "rms_active": rms(var[active]),
        "rms_rest": rms(var[~active]),
        "active_fraction": float(active.mean()),
        "median_freq_hz": median_f,
        "mean_freq_hz": mean_f,
        "kurtosis": m4 / m2**2 if m2 > 0 else float("nan"),
        "kurtosis_active": k_act,
        "mains_share": mains,
        "seconds": len(x) / fs,
    }


def envelope(x: np.ndarray, fs: float, rate: int = 100, cutoff_hz: float = 4.0) -> np.ndarray:
    """Normalised activation envelope of real EMG ``x`` [T]: rectified, low-passed (zero phase)
    and taken at ``rate`` Hz; the noise floor (5th percentile) maps to 0 and the 99th percentile
    to 1. Returns [T * rate / fs] in [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    sos = ss.butter(2, [20.0, min(450.0, 0.45 * fs)], btype="band", fs=fs, output="sos")
    r = np.abs(ss.sosfiltfilt(sos, x))
    sos = ss.butter(2, cutoff_hz, fs=fs, output="sos")
    e = ss.sosfiltfilt(sos, r)
    n = int(len(x) * rate // fs)
    e = np.interp(np.arange(n) / rate, np.arange(len(e)) / fs, e)
    lo, hi = np.percentile(e, [5, 99])
    return np.clip((e - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def compare_synthetic_to_real(corpus_root) -> pd.DataFrame:
    """Statistics of every synthetic EMG channel and every real PLUX recording, side by side.

    Synthetic channels are taken over all ``driver == "synthetic"`` recordings of the corpus at
    ``corpus_root``, converted to millivolts with the manifest's ``emg_full_scale_mv``; both
    kinds are resampled to 1 kHz before :func:`emg_stats`. Returns one row per synthetic channel
    (index ``synthetic:<channel>``) and per real recording (``real:<name>``) with columns
    ``source`` (``"synthetic"``/``"real"``), ``muscle`` and the :func:`emg_stats` keys (amplitudes
    in mV). ``corpus_root=None`` gives the real rows only.
    """
    import soundfile as sf

    root = Path(corpus_root) if corpus_root is not None else None
    man = json.loads((root / "corpus.json").read_text()) if root else \
        {"channels": [], "recordings": []}
    scale = float(man.get("emg_full_scale_mv", 1.0))
    chans = man["channels"][1:]
    parts: list[list[np.ndarray]] = [[] for _ in chans]
    for rec in man["recordings"]:
        if rec.get("driver") != "synthetic":
            continue
        emg, sr = sf.read(root / rec["split"] / f"{rec['id']}.emg.wav", dtype="float64")
        for c in range(len(chans)):
            parts[c].append(to_rate(emg[:, c] * scale, sr))
    rows, index = [], []
    for c, name in enumerate(chans):
        if parts[c]:
            rows.append(
                {
                    "source": "synthetic",
                    "muscle": name,
                    **emg_stats(np.concatenate(parts[c]), STATS_FS),
                }
            )
            index.append(f"synthetic:{name}")
    for r in load_plux():
        rows.append(
            {"source": "real", "muscle": r.muscle, **emg_stats(to_rate(r.emg, r.fs), STATS_FS)}
        )
        index.append(f"real:{r.name}")
    return pd.DataFrame(rows, index=pd.Index(index, name="signal"))
