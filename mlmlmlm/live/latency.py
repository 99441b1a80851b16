"""``mlmlmlm bench stream --json``: the live engine's compute, its latency budget, and its end-to-end
latency measured through the Bela emulator and the real pybela client. Introduced in 06_live_demo.

End to end: EMG bursts (onsets at known frames) are replayed through :class:`BelaEmulator` and
``pybela.Streamer`` into the engine, which plays into a clock-paced output; the onset of every
sound burst in the output is found by its envelope, and its play time (on the output clock)
minus the capture time of the EMG onset (the emulator's frame clock) is one latency.

The end-to-end run uses :class:`EnvelopeTranslator`: a stand-in with the production codecs' rates
and hops whose output level follows the EMG level one hop later, so every EMG onset has one sharp
audio onset (a model with random weights has none). Its latency is exactly one frame (like a
causal translator without look-ahead): the measured latency is the engine's (buffers, transport,
scheduling, playout delay) plus that frame. The per-frame compute comes from the real
:class:`mlmlmlm.stream.Translator` (trained with ``--run``; otherwise small random weights).
"""

from __future__ import annotations

import numpy as np

from mlmlmlm.live.emulator import BLOCK


class EnvelopeTranslator:
    """A translator with known timing: output hop ``t`` is a 440 Hz sine whose amplitude is the RMS
    of EMG hop ``t`` (over the six channels). Obeys the engine's :class:`Translator` protocol.

    ``push_emg([6, n] at emg_sr) -> float32 [hops * audio_hop]``, one audio hop per EMG hop.
    """

    def __init__(self, audio_sr: float = 22050.0, emg_sr: float = 2756.25, audio_hop: int = 256,
                 emg_hop: int = 32, gain: float = 1.0) -> None:
        self.audio_sr, self.emg_sr = float(audio_sr), float(emg_sr)
        self.audio_hop, self.emg_hop, self.gain = audio_hop, emg_hop, gain
        self.latency_ms = 1000.0 * audio_hop / audio_sr
        self.starts = 0
        self.reset()

    def reset(self) -> None:
        self._pending = np.zeros((6, 0), np.float32)
        self._n = 0  # output samples so far
        self.started = False

    def start(self, prompt_audio: np.ndarray) -> np.ndarray:
        if np.asarray(prompt_audio).size == 0:
            raise ValueError("empty prompt")
        self.reset()
        self.started, self.starts = True, self.starts + 1
        return np.zeros(0, np.float32)

    def push_emg(self, emg: np.ndarray) -> np.ndarray:
        if not self.started:
            raise RuntimeError("push_emg before start")
        emg = np.asarray(emg, np.float32)
        if not np.isfinite(emg).all():
            raise ValueError("EMG holds NaN")
        x = np.concatenate([self._pending, emg], axis=1)
        k = x.shape[1] // self.emg_hop
        self._pending = x[:, k * self.emg_hop:]
        hops = x[:, : k * self.emg_hop].reshape(6, k, self.emg_hop)
        level = np.sqrt((hops.astype(np.float64) ** 2).mean(axis=(0, 2)))  # [k]
        t = (self._n + np.arange(k * self.audio_hop)) / self.audio_sr
        self._n += k * self.audio_hop
        env = np.repeat(self.gain * level, self.audio_hop)
        return (env * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def onset_emg(n_onsets: int, period_s: float, sr: float, on_s: float = 0.3, level: float = 0.3,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """EMG of ``n_onsets`` noise bursts, one every ``period_s`` (first at ``period_s``), silent in
    between: float32 ``[6, T]`` and the onset frames ``[n_onsets]``. Onsets fall at varying
    places inside Bela's 1024-frame buffers, so the latency spread covers the buffering."""
    rng = np.random.default_rng(seed)
    n = int((n_onsets + 1) * period_s * sr)
    emg = np.zeros((6, n), np.float32)
    onsets = (np.arange(1, n_onsets + 1) * period_s * sr).astype(int)
    onsets += rng.integers(0, BLOCK, n_onsets)  # a different place in the buffer each time
    for f in onsets:
        m = int(on_s * sr)
        emg[:, f:f + m] = level * rng.standard_normal((6, m))
    return emg, onsets


def detect_onsets(y: np.ndarray, sr: float, threshold: float, min_gap_s: float,
                  hop: int = 16) -> np.ndarray:
    """Sample positions where the envelope of ``y [T]`` (peak over ``hop`` samples) first exceeds
    ``threshold`` after at least ``min_gap_s`` below it."""
    k = len(y) // hop
    env = np.abs(y[: k * hop]).reshape(k, hop).max(1)
    above = env > threshold
    out, last = [], -np.inf
    for i in np.flatnonzero(above[1:] & ~above[:-1]) + 1:
        if (i - last) * hop / sr >= min_gap_s:
            j = np.flatnonzero(np.abs(y[i * hop - hop:(i + 1) * hop]) > threshold)
            out.append(i * hop - hop + int(j[0]))
        last = i
    return np.asarray(out, int)
