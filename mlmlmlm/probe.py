"""Control probe: how much of the performer's controls a set of frame features tells, linearly.

Introduced in notebook 04_emg_codec. A ridge regression maps features, frame by frame, to the
ground-truth control curves the corpus saves beside every synthetic recording (bow force, bow
velocity, vibrato depth and rate, loudness); it is fit on windows of the train split and scored by
R² on held-out windows. Fed a codec's quantized latents it says what the codes carry; fed the
original EMG's envelopes it gives the ceiling of what the EMG itself tells at that frame rate.

Both feature sets are read at the same time resolution: the envelopes are 10-Hz low-passed by
construction, so the latents get the same zero-phase 10-Hz low-pass (:func:`smooth`) before the
probe (the unsmoothed latents' R² is reported beside it). Without it the comparison would pit
instantaneous 11.6-ms codes against a 100-ms average.

Features and targets are standardised with the training statistics; the ridge weight
``alpha = 1.0`` (on standardised features) is fixed, not tuned on the test windows. R² = 1 -
SSE / SST per control on the held-out frames (a probe that predicts the training mean scores 0; a
probe on noise scores about 0, or below).
"""

from __future__ import annotations

import numpy as np
import scipy.signal

PROBE_CONTROLS = ("bow_force", "bow_velocity", "vibrato_depth", "vibrato_rate", "loudness_db")
ALPHA = 1.0


def frame_controls(controls: dict, control_rate: float, frame_rate: float, n_frames: int,
                   keys=PROBE_CONTROLS) -> np.ndarray:
    """Control curves of one window, averaged over each codec frame.

    ``controls``: {name: [T_c] at ``control_rate``} -> [n_frames x K] (K = the keys present)."""
    out = []
    for key in keys:
        if key not in controls:
            continue
        c = np.asarray(controls[key], np.float64)
        t_frame = (np.arange(n_frames) + 0.5) / frame_rate  # frame centres, s
        out.append(np.interp(t_frame * control_rate, np.arange(len(c)), c))
    return np.stack(out, axis=1) if out else np.zeros((n_frames, 0))


def envelope_features(emg: np.ndarray, sr: float, frame_rate: float, n_frames: int,
                      cutoff_hz: float = 10.0) -> np.ndarray:
    """The EMG's linear envelopes (rectified, 10-Hz low-pass) and their logs at the frame centres.

    ``emg``: [C x T] at ``sr`` -> [n_frames x 2C]."""
    sos = scipy.signal.butter(4, cutoff_hz, btype="low", fs=sr, output="sos")
    env = np.maximum(scipy.signal.sosfiltfilt(sos, np.abs(emg), axis=-1), 0.0)  # [C, T]
    idx = np.clip(((np.arange(n_frames) + 0.5) / frame_rate * sr).astype(int), 0, emg.shape[-1] - 1)
    e = env[:, idx].T  # [n_frames, C]
    return np.concatenate([e, np.log(e + 1e-6)], axis=1)


def smooth(features: np.ndarray, frame_rate: float, cutoff_hz: float = 10.0) -> np.ndarray:
    """The envelopes' low-pass (4th-order Butterworth, zero phase) along the frames of
    ``features``: [frames x F] -> [frames x F]."""
    sos = scipy.signal.butter(4, cutoff_hz, btype="low", fs=frame_rate, output="sos")
    return scipy.signal.sosfiltfilt(sos, features, axis=0)


def _standardise(train: np.ndarray, test: np.ndarray):
    mu, sd = train.mean(0), train.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return (train - mu) / sd, (test - mu) / sd


def ridge_r2(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             alpha: float = ALPHA) -> np.ndarray:
    """Fit ridge on (x_train [n x F], y_train [n x K]); R² per target on the test frames -> [K].

    A target constant in the test frames has no R² (NaN)."""
    xa, xb = _standardise(x_train, x_test)
    ya, yb = _standardise(y_train, y_test)
    xa = np.concatenate([xa, np.ones((len(xa), 1))], 1)
    xb = np.concatenate([xb, np.ones((len(xb), 1))], 1)
    reg = alpha * np.eye(xa.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not penalised
    w = np.linalg.solve(xa.T @ xa + reg, xa.T @ ya)  # [F+1, K]
    sse = ((xb @ w - yb) ** 2).sum(0)
    sst = ((yb - yb.mean(0)) ** 2).sum(0)
    return np.where(sst > 1e-12, 1 - sse / np.maximum(sst, 1e-12), np.nan)


def probe(train: list[tuple[np.ndarray, np.ndarray]], test: list[tuple[np.ndarray, np.ndarray]],
          names: list[str], alpha: float = ALPHA) -> dict:
    """R² of each control from features, fit on ``train`` windows and scored on ``test`` windows.

    ``train``, ``test``: lists of ``(features [frames x F], targets [frames x K])`` per window;
    ``names``: the K control names. Returns ``{"r2": {name: R²}, "mean": mean over controls}``."""
    xa, ya = (np.concatenate(a) for a in zip(*train, strict=True))
    xb, yb = (np.concatenate(a) for a in zip(*test, strict=True))
    r2 = ridge_r2(xa, ya, xb, yb, alpha)
    per = {n: float(v) for n, v in zip(names, r2, strict=True)}
    return {"r2": per, "mean": float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan")}
