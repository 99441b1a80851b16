"""Does the EMG steer the sound? Agreement between generated and reference audio on what the
performer's muscles control: the loudness envelope, the vibrato (rate and depth) and the note
onsets.

Introduced in notebook 05_transformer: its conditioning table scores generation from the true
EMG against generation from other windows' EMG (shuffled) and from zero EMG. A model that ignores
its condition scores the same in all three rows; the prior public implementation did (DESIGN.md
§1).

The measures, each of a generated signal ``gen`` against its reference ``ref`` (both ``[T]`` at
``sr``, the same span of time):

* **loudness-envelope correlation**: frame RMS in dBFS (1024-sample frames, the pitch tracker's
  hop, :mod:`mlmlmlm.melody`), floored at -80 dBFS so that digital silence does not decide it,
  then the Pearson correlation over *all frames of all windows pooled* (a window-level swell
  counts as much as a crescendo inside a window). The per-window mean is kept beside it.
* **vibrato rate and depth**: on the stretches of at least 0.5 s that :func:`mlmlmlm.melody.track`
  calls voiced, the cents contour is detrended and band-passed to 3-10 Hz; the rate is the peak
  of its (zero-padded, Hann-windowed) power spectrum in that band, refined by a parabola through
  the peak's bins, and the depth is ``sqrt(2) x RMS`` in cents, as :func:`mlmlmlm.melody.
  vibrato_depths`. Each signal is tracked on its own voicing. Agreement: the mean absolute rate
  difference (Hz) and depth difference (cents) over windows whose reference has a vibrato of at
  least :data:`MIN_VIBRATO_CENTS`, and the correlation of the depths over the windows.
* **onset F-measure**: ``librosa.onset.onset_detect`` on each signal, scored by
  ``mir_eval.onset.f_measure`` within :data:`ONSET_WINDOW_S` (50 ms); NaN for a window whose
  reference has no onset; the mean over windows.
* **clicks per minute**: not an agreement but a fault a listener hears at once. The signal above
  :data:`CLICK_BAND_HZ` (a 4th-order Butterworth high-pass) is cut into 64-sample frames; a click
  is a run of frames whose band energy rises more than :data:`CLICK_RISE_DB` above its running
  median over :data:`CLICK_MEDIAN_FRAMES` frames. The cpu TE2's tail draws decoded as such
  broadband lines (7 in 8 held-out 4-s windows when sampling from the whole distribution, none
  in the references: chapter 5).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from mlmlmlm import melody

FLOOR_DB = -80.0
MIN_VIBRATO_CENTS = 5.0  # a reference window with less modulation has no vibrato to agree with
ONSET_WINDOW_S = 0.05
CLICK_BAND_HZ = 6000.0
CLICK_FRAME = 64  # samples: 2.9 ms at 22.05 kHz
CLICK_RISE_DB = 12.0
CLICK_MEDIAN_FRAMES = 31
_NFFT = 1024  # zero padding of the contour spectrum: 0.08 Hz bins at 86 contour frames/s


def loudness_envelope(x: np.ndarray, sr: float) -> np.ndarray:
    """``x`` [T] -> frame RMS in dBFS [F], floored at :data:`FLOOR_DB` (hop ``melody._hop``)."""
    db = melody.frame_rms_db(np.asarray(x, np.float32), melody.FRAME_LENGTH, melody._hop(sr))
    return np.maximum(db, FLOOR_DB)


def loudness_correlation(gens: Sequence[np.ndarray], refs: Sequence[np.ndarray], sr: float
                         ) -> tuple[float, float]:
    """``(pooled, per-window mean)`` Pearson correlation of the loudness envelopes of each
    ``gens[i]`` [T_i] with ``refs[i]`` [T_i]; NaN where an envelope is constant."""
    pooled_g, pooled_r, per = [], [], []
    for g, r in zip(gens, refs, strict=True):
        eg, er = loudness_envelope(g, sr), loudness_envelope(r, sr)
        n = min(len(eg), len(er))
        pooled_g.append(eg[:n])
        pooled_r.append(er[:n])
        per.append(melody.correlation(eg[:n], er[:n]))
    pooled = melody.correlation(np.concatenate(pooled_g), np.concatenate(pooled_r)) \
        if pooled_g else float("nan")
    per = np.asarray(per, float)
    return pooled, float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")


def vibrato(x: np.ndarray, sr: float) -> tuple[float, float]:
    """``(rate Hz, depth cents)`` of the vibrato of ``x`` [T] (module docstring); NaN, NaN when
    no voiced stretch of 0.5 s is found."""
    import scipy.signal

    hop = melody._hop(sr)
    rate = sr / hop  # contour frames per second
    f0, voiced = melody.track(x, sr)
    cents = 1200 * np.log2(np.maximum(f0, 1e-6))
    jump = np.zeros(len(f0), bool)
    jump[1:] = np.abs(np.diff(cents)) > melody.MAX_JUMP_CENTS
    sos = scipy.signal.butter(2, melody.VIBRATO_BAND_HZ, btype="band", fs=rate, output="sos")
    power, residues = np.zeros(_NFFT // 2 + 1), []
    for a, b in melody._stretches(voiced & ~jump, int(melody.MIN_STRETCH_S * rate)):
        c = scipy.signal.detrend(cents[a:b])
        res = scipy.signal.sosfiltfilt(sos, c)
        residues.append(res)
        n = max(_NFFT, len(res))
        spec = np.abs(np.fft.rfft(res * np.hanning(len(res)), n)) ** 2
        # onto the common grid of _NFFT bins (a stretch longer than _NFFT frames is rare)
        power += np.interp(np.fft.rfftfreq(_NFFT, 1 / rate), np.fft.rfftfreq(n, 1 / rate), spec)
    if not residues:
        return float("nan"), float("nan")
    depth = float(np.sqrt(2 * np.mean(np.concatenate(residues) ** 2)))
    freqs = np.fft.rfftfreq(_NFFT, 1 / rate)
    band = np.flatnonzero((freqs >= melody.VIBRATO_BAND_HZ[0]) & (freqs <= melody.VIBRATO_BAND_HZ[1]))
    k = band[np.argmax(power[band])]
    shift = 0.0
    if 0 < k < len(power) - 1:  # parabolic interpolation through the peak and its neighbours
        y0, y1, y2 = power[k - 1], power[k], power[k + 1]
        den = y0 - 2 * y1 + y2
        shift = 0.5 * (y0 - y2) / den if den != 0 else 0.0
    return float(freqs[k] + shift * (freqs[1] - freqs[0])), depth


def onsets(x: np.ndarray, sr: float) -> np.ndarray:
    """Onset times (s) of ``x`` [T] by ``librosa.onset.onset_detect`` (its default settings)."""
    import librosa

    return librosa.onset.onset_detect(y=np.asarray(x, np.float32), sr=sr, units="time")


def onset_f_measure(gen: np.ndarray, ref: np.ndarray, sr: float) -> float:
    """F-measure of ``gen``'s onsets against ``ref``'s within 50 ms; NaN when ``ref`` has none."""
    import mir_eval

    ro, go = onsets(ref, sr), onsets(gen, sr)
    if len(ro) == 0:
        return float("nan")
    if len(go) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        f, _, _ = mir_eval.onset.f_measure(ro, go, window=ONSET_WINDOW_S)
    return float(f)


def clicks(x: np.ndarray, sr: float) -> float:
    """How many clicks ``x`` [T] holds (module docstring); NaN when ``sr`` / 2 does not reach
    1.2 x :data:`CLICK_BAND_HZ` (nothing to measure above the band edge)."""
    import scipy.ndimage
    import scipy.signal

    if sr / 2 < 1.2 * CLICK_BAND_HZ:
        return float("nan")
    sos = scipy.signal.butter(4, CLICK_BAND_HZ, btype="highpass", fs=sr, output="sos")
    high = scipy.signal.sosfilt(sos, np.asarray(x, np.float64))
    if len(high) < 3 * CLICK_FRAME:
        return 0.0
    db = np.maximum(melody.frame_rms_db(high, CLICK_FRAME, CLICK_FRAME), FLOOR_DB)
    base = scipy.ndimage.median_filter(db, CLICK_MEDIAN_FRAMES, mode="nearest")
    hit = db - base > CLICK_RISE_DB
    return float(np.count_nonzero(hit[1:] & ~hit[:-1]) + int(hit[0]))  # runs, not frames


def _nanmean(v) -> float:
    v = np.asarray(v, float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def scores(gens: Sequence[np.ndarray], refs: Sequence[np.ndarray], sr: float) -> dict[str, float]:
    """Every conditioning measure of generated windows ``gens`` against ``refs`` (lists of [T_i]
    at ``sr``, pairwise the same length).

    Returns ``{loudness_corr, loudness_corr_window, vibrato_rate_error_hz,
    vibrato_depth_error_cents, vibrato_depth_corr, vibrato_rate_gen_hz, vibrato_rate_ref_hz,
    onset_f, clicks_per_min, n_windows, n_vibrato_windows}`` (NaN where nothing could be
    measured; ``clicks_per_min`` counts the clicks of ``gens`` only)."""
    pooled, per = loudness_correlation(gens, refs, sr)
    vib_g = np.array([vibrato(g, sr) for g in gens], float).reshape(-1, 2)  # [N, (rate, depth)]
    vib_r = np.array([vibrato(r, sr) for r in refs], float).reshape(-1, 2)
    sel = np.isfinite(vib_r[:, 1]) & (vib_r[:, 1] >= MIN_VIBRATO_CENTS)
    return {
        "loudness_corr": pooled,
        "loudness_corr_window": per,
        "vibrato_rate_error_hz": _nanmean(np.abs(vib_g[sel, 0] - vib_r[sel, 0])),
        "vibrato_depth_error_cents": _nanmean(np.abs(vib_g[sel, 1] - vib_r[sel, 1])),
        "vibrato_depth_corr": melody.correlation(vib_g[sel, 1], vib_r[sel, 1]),
        "vibrato_rate_gen_hz": _nanmean(vib_g[sel, 0]),
        "vibrato_rate_ref_hz": _nanmean(vib_r[sel, 0]),
        "onset_f": _nanmean([onset_f_measure(g, r, sr) for g, r in zip(gens, refs, strict=True)]),
        "clicks_per_min": float(np.sum([clicks(g, sr) for g in gens]))
        / max(sum(len(g) for g in gens) / sr / 60, 1e-9),
        "n_windows": len(gens),
        "n_vibrato_windows": int(sel.sum()),
    }
