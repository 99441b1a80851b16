"""What a listener hears of pitch: melody metrics (mir_eval) and vibrato depth, original against
reconstruction (or generated against reference).

Introduced in notebook 02_audio_codec. The tracker is stated once, here: ``librosa.yin`` (viola
range A2..A6, 1024-sample frames, hop 256 at 22.05 kHz: 86 pitch frames per second), with a
frame counted as **voiced** when

* its RMS is within ``gate_db`` (40 dB) of the *original's* loudest frame and above -80 dBFS, and
* it is periodic: the normalised correlation of the frame with itself one tracked period later is
  at least ``min_periodicity`` (0.5). Noise shaped to a note's envelope is not voiced, however
  loud; this is what separates a codec that plays notes from one that plays their envelopes.

(pyin would be the more careful tracker; it costs ~5 s per 6-s window on one core, 40 times yin,
which a 5-minute table row cannot afford.)

The pitch scores are the standard melody metrics of ``mir_eval.melody`` on the original's voicing:
raw pitch accuracy (estimate within 50 cents on frames voiced in the original), raw chroma
accuracy (the same, octave errors forgiven), voicing recall and false alarm, plus the median
absolute cents error on frames voiced in the original: medians, not means, so that the odd octave
slip does not dominate.

**Vibrato depth**: on stretches of frames voiced in the original (at least 0.5 s, split where
either contour jumps by more than 50 cents between frames: a note change or an octave slip), the
cents contour is band-passed to 3-10 Hz; the depth is the amplitude of that modulation,
``sqrt(2) x RMS`` in cents (a sine of depth d cents gives d). The reconstruction's depth is
measured on the same frames. Across windows, the codec's vibrato is judged by the correlation of
its depths with the originals'.
"""

from __future__ import annotations

import warnings

import librosa
import mir_eval
import numpy as np
import scipy.signal

FMIN, FMAX = 110.0, 1760.0  # viola range A2..A6
FRAME_LENGTH = 1024  # 46 ms: a 2048-frame track averages a 6-Hz vibrato down to 60 %
GATE_DB = -40.0
MIN_PERIODICITY = 0.5
VIBRATO_BAND_HZ = (3.0, 10.0)
MIN_STRETCH_S = 0.5
MAX_JUMP_CENTS = 50.0


def _hop(sr: float) -> int:
    # 256 samples at 22.05 kHz (11.6 ms); the same duration at other rates
    return max(1, round(256 * sr / 22050))


def _frames(x: np.ndarray, frame_length: int, hop: int) -> np.ndarray:
    # [T] -> [F, frame_length], centred frames as librosa.yin(center=True) uses
    pad = np.pad(x, frame_length // 2)
    return librosa.util.frame(pad, frame_length=frame_length, hop_length=hop, axis=0)


def periodicity(x: np.ndarray, f0: np.ndarray, sr: float, frame_length: int = FRAME_LENGTH,
                hop: int | None = None) -> np.ndarray:
    """Normalised correlation of each frame with itself one period ``sr / f0`` later.

    ``x``: [T]; ``f0``: [F] Hz (yin's frames) -> [F] in [-1, 1] (1: exactly periodic)."""
    hop = hop or _hop(sr)
    fr = _frames(np.asarray(x, np.float64), frame_length, hop)[: len(f0)]  # [F, L]
    period = np.clip(np.round(sr / np.asarray(f0, np.float64)), 1, frame_length // 2).astype(int)
    w = frame_length - frame_length // 2
    cols = np.arange(w)
    a = fr[:, :w]
    b = np.take_along_axis(fr, cols[None, :] + period[:, None], axis=1)  # [F, w]
    num = (a * b).sum(1)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(den > 1e-12, num / np.maximum(den, 1e-12), 0.0)


def frame_rms_db(x: np.ndarray, frame_length: int = FRAME_LENGTH, hop: int = 256) -> np.ndarray:
    """[T] -> [F] frame RMS in dBFS (centred frames)."""
    rms = librosa.feature.rms(y=np.asarray(x, np.float32), frame_length=frame_length,
                              hop_length=hop)[0]
    return 20 * np.log10(rms + 1e-12)


def track(x: np.ndarray, sr: float, ref_max_db: float | None = None):
    """Pitch track of one signal.

    ``x``: [T] at ``sr``. ``ref_max_db``: the loudest frame of the signal whose loudness gates
    this one (the original's, when ``x`` is a reconstruction); default ``x``'s own.

    Returns ``(f0 [F] Hz, voiced [F] bool)``; F frames at hop :func:`_hop`.
    """
    hop = _hop(sr)
    fmax = min(FMAX, 0.45 * sr)
    f0 = librosa.yin(np.asarray(x, np.float32), fmin=FMIN, fmax=fmax, sr=sr,
                     frame_length=FRAME_LENGTH, hop_length=hop)
    db = frame_rms_db(x, FRAME_LENGTH, hop)[: len(f0)]
    top = db.max() if ref_max_db is None else ref_max_db
    loud = (db > top + GATE_DB) & (db > -80.0)
    voiced = loud & (periodicity(x, f0, sr, FRAME_LENGTH, hop) >= MIN_PERIODICITY)
    return f0, voiced


def _cents(f0: np.ndarray) -> np.ndarray:
    return mir_eval.melody.hz2cents(np.asarray(f0, np.float64))  # base 10 Hz, as mir_eval


def track_pair(recon: np.ndarray, orig: np.ndarray, sr: float):
    """Both pitch tracks of one window, on the same frames, the reconstruction's loudness gated
    by the original's: ``(f_o, v_o, f_r, v_r)``, each [F]. Computed once per window for
    :func:`melody_scores` and :func:`vibrato_depths`."""
    f_o, v_o = track(orig, sr)
    top = frame_rms_db(orig, FRAME_LENGTH, _hop(sr)).max()
    f_r, v_r = track(recon, sr, ref_max_db=top)
    n = min(len(f_o), len(f_r))
    return f_o[:n], v_o[:n], f_r[:n], v_r[:n]


def melody_scores(recon: np.ndarray, orig: np.ndarray, sr: float,
                  tracks=None) -> dict[str, float]:
    """mir_eval's melody metrics and the median cents error of one window (both [T] at ``sr``;
    ``tracks``: :func:`track_pair`'s result, computed when not given).

    Returns ``{raw_pitch_accuracy, raw_chroma_accuracy, voicing_recall, voicing_false_alarm,
    median_cents_error, voiced_fraction}``; NaN where the original has no voiced frame."""
    f_o, v_o, f_r, v_r = tracks or track_pair(recon, orig, sr)
    out = {"voiced_fraction": float(v_o.mean())}
    if not v_o.any():
        return out | dict.fromkeys(("raw_pitch_accuracy", "raw_chroma_accuracy", "voicing_recall",
                                    "voicing_false_alarm", "median_cents_error"), float("nan"))
    ref_v, est_v = v_o.astype(float), v_r.astype(float)
    # the estimate's pitch counts on every frame (mir_eval's convention for an unvoiced estimate
    # that still reports a pitch); the reference's only where voiced
    ref_c, est_c = _cents(np.where(v_o, f_o, 0.0)), _cents(f_r)
    mel = mir_eval.melody
    err = np.abs(1200 * np.log2(f_r[v_o] / f_o[v_o]))
    with warnings.catch_warnings():  # "no voiced frames" is a score of 0 here, not a problem
        warnings.simplefilter("ignore", UserWarning)
        recall, false_alarm = mel.voicing_measures(ref_v, est_v)
        return out | {
            "raw_pitch_accuracy": float(mel.raw_pitch_accuracy(ref_v, ref_c, est_v, est_c)),
            "raw_chroma_accuracy": float(mel.raw_chroma_accuracy(ref_v, ref_c, est_v, est_c)),
            "voicing_recall": float(recall),
            "voicing_false_alarm": float(false_alarm),
            "median_cents_error": float(np.median(err)),
        }


def _stretches(mask: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    # runs of True in mask, as (start, stop), at least min_len long
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_len]


def vibrato_depths(recon: np.ndarray, orig: np.ndarray, sr: float,
                   tracks=None) -> tuple[float, float]:
    """Vibrato depth in cents (module docstring) of ``orig`` and of ``recon`` on the same frames.

    Both ``[T]`` at ``sr`` (``tracks``: :func:`track_pair`'s result, computed when not given).
    Returns ``(depth_orig, depth_recon)``; NaN when the original has no voiced stretch of 0.5 s."""
    rate = sr / _hop(sr)
    f_o, v_o, f_r, _ = tracks or track_pair(recon, orig, sr)
    n = len(f_o)
    c_o, c_r, v_o = 1200 * np.log2(f_o), 1200 * np.log2(f_r), v_o.copy()
    jump = np.zeros(n, bool)
    jump[1:] = (np.abs(np.diff(c_o)) > MAX_JUMP_CENTS) | (np.abs(np.diff(c_r)) > MAX_JUMP_CENTS)
    v_o &= ~jump  # a jump ends a stretch
    sos = scipy.signal.butter(2, VIBRATO_BAND_HZ, btype="band", fs=rate, output="sos")
    res_o, res_r = [], []
    for a, b in _stretches(v_o, int(MIN_STRETCH_S * rate)):
        res_o.append(scipy.signal.sosfiltfilt(sos, c_o[a:b] - c_o[a:b].mean()))
        res_r.append(scipy.signal.sosfiltfilt(sos, c_r[a:b] - c_r[a:b].mean()))
    if not res_o:
        return float("nan"), float("nan")
    depth = [float(np.sqrt(2 * np.mean(np.concatenate(r) ** 2))) for r in (res_o, res_r)]
    return depth[0], depth[1]


def correlation(a, b) -> float:
    """Pearson correlation of two 1-D sequences over their finite pairs (NaN below 3 pairs or
    when either is constant)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or a[keep].std() == 0 or b[keep].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[keep], b[keep])[0, 1])


def pitch_report(recons: np.ndarray, origs: np.ndarray, sr: float,
                 true_depth: np.ndarray | None = None) -> dict:
    """Every pitch and vibrato figure over a set of windows.

    ``recons``, ``origs``: [N x T] at ``sr``. ``true_depth``: [N] ground-truth vibrato depth
    of each window (the corpus's control curve, mean over the window) or None; the vibrato
    correlation is taken over windows whose true depth is non-zero (without controls: whose
    measured depth is at least 5 cents).

    Returns ``{"per_window": {metric: [N]}, "mean": {metric: median or mean}, "vibrato":
    {...}}``; pitch metrics are averaged over windows (NaN-aware), the cents error is the median
    over windows.
    """
    per: dict[str, list[float]] = {}
    depth_o, depth_r = [], []
    for r, o in zip(recons, origs, strict=True):
        tracks = track_pair(r, o, sr)  # yin once per signal
        for k, v in melody_scores(r, o, sr, tracks).items():
            per.setdefault(k, []).append(v)
        d_o, d_r = vibrato_depths(r, o, sr, tracks)
        depth_o.append(d_o)
        depth_r.append(d_r)
    depth_o, depth_r = np.asarray(depth_o), np.asarray(depth_r)
    sel = (np.asarray(true_depth) > 0) if true_depth is not None else (depth_o >= 5.0)
    sel &= np.isfinite(depth_o)
    mean = {k: float(np.nanmedian(v) if k == "median_cents_error" else np.nanmean(v))
            for k, v in per.items() if np.isfinite(v).any()}
    vib = {
        "depth_correlation": correlation(depth_o[sel], depth_r[sel]),
        "depth_orig_cents": float(np.nanmean(depth_o[sel])) if sel.any() else float("nan"),
        "depth_recon_cents": float(np.nanmean(depth_r[sel])) if sel.any() else float("nan"),
        "n_windows": int(sel.sum()),
        "selected_by": "control curve" if true_depth is not None else "measured depth >= 5 cents",
    }
    return {"per_window": {k: list(map(float, v)) for k, v in per.items()}, "mean": mean,
            "vibrato": vib}
