"""Signal preprocessing for the EMG+audio corpus: EMG filters, resampling, time-stretch, windows, splits.

Introduced in notebook 01_dataset.

The EMG filter is a 2nd-order Butterworth high-pass (1 Hz, removes the sensor offset and drift)
followed by an IIR notch at the mains frequency (50 Hz, or 60 Hz with ``mains_hz=60``). It runs
either **causal** (``scipy.signal.sosfilt``, the only choice for live streaming; see
:class:`StreamingEmgFilter`, whose chunked output equals the offline causal output) or
**zero-phase** (``sosfiltfilt``, forward and backward: no phase shift, twice the attenuation).
The dataset uses the causal filter by default so that training sees exactly what the live path
can compute.
"""

from __future__ import annotations

from fractions import Fraction

import librosa
import numpy as np
from scipy import signal

SPLITS = ("train", "val", "test", "test_real")


# ----------------------------------------------------------------------------- EMG filters
def emg_filter_sos(
    sr: float,
    *,
    highpass_hz: float | None = 1.0,
    mains_hz: float | None = 50.0,
    notch_q: float = 30.0,
    highpass_order: int = 2,
) -> np.ndarray:
    """Second-order sections of the EMG filter: high-pass then mains notch.

    Parameters
    ----------
    sr : sample rate of the EMG in Hz.
    highpass_hz : high-pass cut-off in Hz; ``None`` or 0 disables it.
    mains_hz : mains frequency to notch out (50 or 60); ``None`` or 0 disables it. A notch at
        or above Nyquist is skipped.
    notch_q : quality factor of the notch (bandwidth = mains_hz / notch_q, 1.7 Hz at 50 Hz).
    highpass_order : Butterworth order of the high-pass.

    Returns
    -------
    sos : np.ndarray [n_sections, 6]; an identity section when both stages are disabled.
    """
    sections = []
    if highpass_hz:
        sections.append(signal.butter(highpass_order, highpass_hz, "highpass", fs=sr, output="sos"))
    if mains_hz and mains_hz < sr / 2:
        b, a = signal.iirnotch(mains_hz, notch_q, fs=sr)
        sections.append(signal.tf2sos(b, a))
    if not sections:
        return np.array([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    return np.concatenate(sections, axis=0)


def filter_emg(
    emg: np.ndarray,
    sr: float,
    *,
    highpass_hz: float | None = 1.0,
    mains_hz: float | None = 50.0,
    causal: bool = True,
) -> np.ndarray:
    """High-pass and notch-filter EMG along its last axis.

    Parameters
    ----------
    emg : np.ndarray [C, T] (or [T]).
    sr : sample rate in Hz.
    highpass_hz, mains_hz : see :func:`emg_filter_sos`.
    causal : ``True`` filters forward only, starting from the steady state of the first sample
        (no start-up transient from the sensor offset), exactly as :class:`StreamingEmgFilter`;
        ``False`` filters zero-phase (``sosfiltfilt``).

    Returns
    -------
    np.ndarray float32, same shape as ``emg``.
    """
    x = np.asarray(emg, dtype=np.float64)
    sos = emg_filter_sos(sr, highpass_hz=highpass_hz, mains_hz=mains_hz)
    if causal:
        zi = signal.sosfilt_zi(sos)  # [n_sections, 2], steady state for a unit step
        zi = zi.reshape(zi.shape[:1] + (1,) * (x.ndim - 1) + (2,)) * x[..., :1][None]
        y, _ = signal.sosfilt(sos, x, axis=-1, zi=zi)
    else:
        y = signal.sosfiltfilt(sos, x, axis=-1)
    return y.astype(np.float32)


class StreamingEmgFilter:
    """Causal EMG filter with state, for live EMG arriving in chunks.

    Feeding a signal chunk by chunk gives the same output as ``filter_emg(x, causal=True)``
    on the whole signal (up to float rounding).

    Parameters
    ----------
    sr, highpass_hz, mains_hz : see :func:`emg_filter_sos`.
    """

    def __init__(self, sr: float, *, highpass_hz: float | None = 1.0, mains_hz=50.0) -> None:
        self.sos = emg_filter_sos(sr, highpass_hz=highpass_hz, mains_hz=mains_hz)
        self.zi: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the state; the next chunk starts from its own first sample."""
        self.zi = None

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """Filter one chunk ``[C, n]`` (or ``[n]``) and return it as float32, same shape."""
        x = np.asarray(chunk, dtype=np.float64)
        if x.shape[-1] == 0:
            return x.astype(np.float32)
        if self.zi is None:
            zi = signal.sosfilt_zi(self.sos)
            self.zi = zi.reshape(zi.shape[:1] + (1,) * (x.ndim - 1) + (2,)) * x[..., :1][None]
        y, self.zi = signal.sosfilt(self.sos, x, axis=-1, zi=self.zi)
        return y.astype(np.float32)


# ----------------------------------------------------------------------------- resampling
def resample_ratio(sr_from: float, sr_to: float, max_denominator: int = 1000) -> tuple[int, int]:
    """Integer ``(up, down)`` with ``up / down == sr_to / sr_from`` (rational approximation).

    Rates are read through their decimal text, so 2756.25 is exact: 22050 -> 2756.25 is (1, 8),
    44100 -> 2756.25 is (1, 16), 22050 -> 44100 is (2, 1).
    """
    if sr_from <= 0 or sr_to <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_from} and {sr_to}")
    ratio = (Fraction(str(float(sr_to))) / Fraction(str(float(sr_from)))).limit_denominator(
        max_denominator
    )
    return ratio.numerator, ratio.denominator


def resample(x: np.ndarray, sr_from: float, sr_to: float) -> np.ndarray:
    """Resample along the last axis with a polyphase filter (``scipy.signal.resample_poly``).

    Parameters
    ----------
    x : np.ndarray [..., T] at ``sr_from``.
    sr_from, sr_to : sample rates in Hz (fractional rates such as 2756.25 are fine).

    Returns
    -------
    np.ndarray float32 [..., ceil(T * up / down)].
    """
    up, down = resample_ratio(sr_from, sr_to)
    if up == down:
        return np.asarray(x, dtype=np.float32).copy()
    return signal.resample_poly(x, up, down, axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------- time-stretch
def stretch_fft_size(sr: float, seconds: float = 0.046) -> int:
    """Power-of-two FFT size of about ``seconds`` at ``sr`` (2048 at 44.1 kHz, 128 at 2756 Hz)."""
    return int(2 ** max(4, round(np.log2(seconds * sr))))


def time_stretch(x: np.ndarray, rate: float, sr: float) -> np.ndarray:
    """Phase-vocoder time-stretch of all channels together (``librosa.effects.time_stretch``).

    Every channel gets the same rate and the same STFT frames, so channels that were aligned
    stay aligned. Stretch audio and EMG held at different sample rates with the same ``rate``:
    both come out ``1 / rate`` times as long in seconds.

    Parameters
    ----------
    x : np.ndarray [C, T] (or [T]).
    rate : > 1 speeds up (shorter), < 1 slows down (longer); 1 returns a copy.
    sr : sample rate of ``x``; sets the FFT size to about 46 ms (:func:`stretch_fft_size`).

    Returns
    -------
    np.ndarray float32 [C, round(T / rate)].
    """
    x = np.asarray(x, dtype=np.float32)
    if rate == 1.0:
        return x.copy()
    n_fft = stretch_fft_size(sr)
    y = librosa.effects.time_stretch(x, rate=rate, n_fft=n_fft, hop_length=n_fft // 4)
    return y.astype(np.float32)


def stretch_curve(c: np.ndarray, rate: float) -> np.ndarray:
    """Stretch a control curve ``[T_c]`` in time by linear interpolation: ``[round(T_c / rate)]``."""
    c = np.asarray(c, dtype=np.float32)
    n = round(len(c) / rate)
    if rate == 1.0 or len(c) < 2:
        return c.copy()
    t_new = np.arange(n) * rate
    return np.interp(t_new, np.arange(len(c)), c).astype(np.float32)


# ----------------------------------------------------------------------------- windows, splits
def window_starts(n_samples: int, size: int, hop: int) -> np.ndarray:
    """Start indices of the windows of ``size`` samples every ``hop`` that fit in ``n_samples``."""
    if size <= 0 or hop <= 0:
        raise ValueError(f"window size and hop must be positive, got {size} and {hop}")
    if n_samples < size:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n_samples - size + 1, hop, dtype=np.int64)


def window(x: np.ndarray, size: int, hop: int) -> np.ndarray:
    """Cut ``x`` into overlapping windows.

    Parameters
    ----------
    x : np.ndarray [C, T] (or [T], read as C = 1).
    size : window length in samples.
    hop : step between window starts in samples (``hop < size`` overlaps).

    Returns
    -------
    np.ndarray [N, C, size], a read-only view; N = 1 + (T - size) // hop (0 when T < size).
    """
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None]
    starts = window_starts(x.shape[-1], size, hop)
    if len(starts) == 0:
        return np.zeros((0, x.shape[0], size), dtype=x.dtype)
    views = np.lib.stride_tricks.sliding_window_view(x, size, axis=-1)  # [C, T - size + 1, size]
    return views[:, starts].transpose(1, 0, 2)  # [N, C, size]


def split_names(names: list[str], fractions=(0.8, 0.1, 0.1)) -> dict[str, str]:
    """Deterministic train/val/test split of recordings by name.

    Names are sorted; the last ``round(0.1 n)`` go to ``test``, the ``round(0.1 n)`` before them
    to ``val``, the rest to ``train``, with at least one recording in each split when there are
    3 or more (fewer: all ``train``). Contiguous blocks, not interleaving, keep neighbouring
    windows of one session out of different splits.

    Returns
    -------
    dict name -> "train" | "val" | "test".
    """
    ordered = sorted(names)
    n = len(ordered)
    if n < 3:
        return {name: "train" for name in ordered}
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n))
    n_train = n - n_val - n_test
    out = {}
    for i, name in enumerate(ordered):
        out[name] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out
