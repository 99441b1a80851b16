"""Six EMG channels for the live engine's stand-ins: a recording read from a WAV file, or
synthetic bursts (a demo source).

Introduced in notebook 06_live_demo: the Bela emulator (:mod:`mlmlmlm.live.emulator`) and the
file source (:class:`~mlmlmlm.live.sources.FileEmgSource`) read their EMG through it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from mlmlmlm.data.bela import DEFAULT_BELA_EMG_SR
from mlmlmlm.data.records import N_EMG, DataError


def load_emg(path) -> tuple[np.ndarray, float]:
    """Six EMG channels from a WAV: a 6-channel ``.emg.wav`` or a 7-channel window (ch 1..6).

    Returns
    -------
    emg : float32 ``[6, T]``; sr : the file's sample rate in Hz.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "does not exist")
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise DataError(path, f"cannot be read as audio: {err}") from None
    if x.shape[1] == N_EMG + 1:
        x = x[:, 1:]  # a paper window: channel 0 is the instrument audio
    elif x.shape[1] != N_EMG:
        raise DataError(path, f"has {x.shape[1]} channels; expected 6 (EMG) or 7 (audio + EMG)")
    if len(x) == 0:
        raise DataError(path, "holds no samples")
    if not np.isfinite(x).all():
        raise DataError(path, "holds NaN or Inf samples")
    return np.ascontiguousarray(x.T), float(sr)


def synthetic_emg(seconds: float = 10.0, sr: float = DEFAULT_BELA_EMG_SR, seed: int = 0):
    """Noise bursts under slow raised-cosine envelopes, float32 ``[6, T]`` (a demo source)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    rate = rng.uniform(0.3, 1.5, size=(N_EMG, 1))  # activations per second, per muscle
    env = 0.5 - 0.5 * np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi, (N_EMG, 1)))
    return (0.3 * env**2 * rng.standard_normal((N_EMG, t.size))).astype(np.float32)
