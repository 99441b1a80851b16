"""The phrase trigger of the live instrument: the RMS moving average of the instrument audio, in dB.

Introduced in notebook 06_live_demo. As in the paper, a phrase starts when the level rises by more
than a user threshold; here "rises" is measured against the quietest level of the last
``lookback_s`` seconds, so a fast onset fires at once and a slow crescendo never does.

The condition, evaluated once per hop of ``hop`` samples (``level`` is the RMS of the last
``window_s`` seconds in dBFS)::

    onset    level - min(level over the last lookback_s) > threshold_db
             and level > floor_db and at least refractory_s since the last onset
             (a rise inside the refractory time is absorbed into the last onset)
    silence  level < silence_db for silence_s (once per quiet stretch, after an onset)

Noise whose level wanders by less than ``threshold_db`` never fires; neither does anything below
``floor_db``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class TriggerConfig:
    """Trigger settings (seconds and dB; see the module doc for the condition)."""

    threshold_db: float = 12.0
    window_s: float = 0.05
    lookback_s: float = 0.25
    floor_db: float = -50.0
    refractory_s: float = 0.3
    silence_db: float = -55.0
    silence_s: float = 0.4

    def __post_init__(self) -> None:
        if self.threshold_db <= 0:
            raise ValueError(f"threshold_db must be > 0, got {self.threshold_db}")
        if min(self.window_s, self.lookback_s, self.silence_s) <= 0 or self.refractory_s < 0:
            raise ValueError("window_s, lookback_s, silence_s must be > 0; refractory_s >= 0")


@dataclass
class TriggerEvent:
    """``kind`` "onset" or "silence"; ``sample``: the position (instrument-audio samples since the
    trigger started) at the end of the hop that fired; ``level_db``; ``rise_db`` (onsets)."""

    kind: str
    sample: int
    level_db: float
    rise_db: float = 0.0

    def as_dict(self) -> dict:
        return {"trigger": self.kind, "sample": self.sample, "level_db": round(self.level_db, 2),
                "rise_db": round(self.rise_db, 2)}


def level_db(power: float) -> float:
    """Mean square -> dBFS (a full-scale sine is -3 dB), floored at -120."""
    return 10.0 * float(np.log10(max(power, 1e-12)))


class RmsTrigger:
    """Onset and silence detector over instrument audio fed in chunks of any size.

    Parameters
    ----------
    sr : sample rate of the instrument audio in Hz.
    cfg : :class:`TriggerConfig`.
    hop : samples per level measurement (default ~5 ms).

    ``process(audio float [n]) -> list[TriggerEvent]``; ``level`` holds the latest level in dB;
    ``levels`` every level computed (for plots: one per hop).
    """

    def __init__(self, sr: float, cfg: TriggerConfig | None = None, hop: int | None = None,
                 keep_levels: bool = False) -> None:
        self.sr, self.cfg = float(sr), cfg or TriggerConfig()
        self.hop = hop or max(1, round(0.005 * self.sr))
        self.keep_levels = keep_levels
        self.reset()

    def reset(self) -> None:
        c, h = self.cfg, self.hop
        self._win = deque(maxlen=max(1, round(c.window_s * self.sr / h)))  # mean squares per hop
        self._look = deque(maxlen=max(1, round(c.lookback_s * self.sr / h)))  # past levels
        self._pending = np.zeros(0, np.float32)
        self.position = 0  # samples consumed
        self.level = -120.0
        self.levels: list[float] = []
        self._last_onset: int | None = None
        self._quiet_since: int | None = None
        self._silent = True  # no onset yet, or silence already reported

    @property
    def silent(self) -> bool:
        """True before the first onset and after a silence event, until the next onset."""
        return self._silent

    def process(self, audio: np.ndarray) -> list[TriggerEvent]:
        x = np.concatenate([self._pending, np.asarray(audio, np.float32).reshape(-1)])
        n_hops = len(x) // self.hop
        self._pending = x[n_hops * self.hop:]
        events = []
        for sq in (x[: n_hops * self.hop].astype(np.float64) ** 2).reshape(n_hops, self.hop):
            self.position += self.hop
            events += self._step(float(sq.mean()))
        return events

    def _step(self, power: float) -> list[TriggerEvent]:
        c = self.cfg
        self._win.append(power)
        self.level = lvl = level_db(sum(self._win) / len(self._win))
        if self.keep_levels:
            self.levels.append(lvl)
        base = min(self._look) if self._look else lvl
        self._look.append(lvl)
        out = []
        rise = lvl - base
        since = None if self._last_onset is None else (self.position - self._last_onset) / self.sr
        if rise > c.threshold_db and lvl > c.floor_db:
            self._look.clear()  # the next rise is measured from here on: no double fire
            if since is None or since >= c.refractory_s:
                self._last_onset, self._silent, self._quiet_since = self.position, False, None
                out.append(TriggerEvent("onset", self.position, lvl, rise))
            # (a rise inside the refractory time belongs to the last onset: it is absorbed)
        elif lvl < c.silence_db:
            if self._quiet_since is None:
                self._quiet_since = self.position
            if not self._silent and (self.position - self._quiet_since) / self.sr >= c.silence_s:
                self._silent = True
                out.append(TriggerEvent("silence", self.position, lvl))
        else:
            self._quiet_since = None
        return out


class PromptBuffer:
    """The latest ``size`` samples of instrument audio (the prompt of the next phrase).

    ``push(audio [n])``; ``latest() -> float32 [min(size, pushed)]``, oldest first.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"prompt size must be >= 1 sample, got {size}")
        self.size = int(size)
        self._buf = np.zeros(self.size, np.float32)
        self._n = 0
        self.count = 0  # samples pushed in all: latest() ends there

    def push(self, audio: np.ndarray) -> None:
        x = np.asarray(audio, np.float32).reshape(-1)[-self.size:]
        self._buf = np.roll(self._buf, -len(x))
        self._buf[self.size - len(x):] = x
        self._n = min(self.size, self._n + len(x))
        self.count += np.size(audio)

    def latest(self) -> np.ndarray:
        return self._buf[self.size - self._n:].copy()
