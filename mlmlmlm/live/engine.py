"""The real-time engine of the live instrument: EMG source, instrument audio, the streaming
translator and the audio output, running together. Introduced in notebook 06_live_demo.

Threads: each source and input hands its blocks to one inbox; one worker takes them in arrival
order (trigger, conditioning, translation, scheduling); the output callback only copies from the
:class:`~mlmlmlm.live.audio_io.OutputRing`; a recorder thread writes the session.

Timing. Every EMG block is stamped with the source's frame clock. The engine keeps the offset
between that clock and the output clock as the smallest seen over the last ``offset_window_s``
(the least-delayed arrival), and at a phrase start fixes where its first sample plays: where the
last frame of its first EMG chunk lies on the output clock, plus the translator's look-ahead and
``playout_ms``. So every sound follows its EMG by one chunk (a 1024-frame Bela buffer, 46 ms at
22.05 kHz) plus the playout delay, and each generated sample has a fixed position: compute
jitter and late EMG never move the sound in time; a sample missing when due is an underrun
(silence, counted), one that comes later is dropped (counted).

Phrases. An onset of the :class:`~mlmlmlm.live.trigger.RmsTrigger` starts one (also while one
plays: a retrigger): the translator is reset and started from the latest ``prompt_s`` of
instrument audio. Its first chunk is the first EMG block that arrives after that start is done:
blocks that waited in the inbox meanwhile (a start primes the prompt's frames, tens of ms) would
be due before they could be translated, so they are recorded but not translated, and the
phrase's sound begins that much later, at the usual latency. It ends after ``phrase_s`` (None:
open-ended), at the next onset, when the instrument falls silent (``end_on_silence``), when the
EMG is lost (board disconnected, or an EMG dropout; see :mod:`mlmlmlm.live.sources`), or on
*overload*, when compute has fallen ``overload_s`` behind the output (a translator slower than
real time). Where a phrase is cut, its last ``fade_ms`` fade out (no click). After a reconnect or
an overload a phrase resumes by itself if the instrument is still sounding.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from mlmlmlm.live.audio_io import Clock, OutputRing
from mlmlmlm.live.sources import EmgBlock, EmgConditioner, SourceEvent
from mlmlmlm.live.trigger import PromptBuffer, RmsTrigger, TriggerConfig, level_db


class Translator(Protocol):
    """What the engine needs of :class:`mlmlmlm.stream.Translator`."""

    audio_sr: float
    emg_sr: float
    latency_ms: float

    def start(self, prompt_audio: np.ndarray): ...  # float32 [n] at audio_sr

    def push_emg(self, emg: np.ndarray) -> np.ndarray: ...  # [6, n] at emg_sr -> audio [m]

    def reset(self) -> None: ...


@dataclass
class EngineConfig:
    """Engine settings (seconds unless named otherwise; see the module doc)."""

    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    phrase_s: float | None = None
    prompt_s: float = 0.1
    playout_ms: float = 40.0
    end_on_silence: bool = True
    max_gap_s: float = 0.25
    block: int = 256
    ring_s: float = 8.0
    offset_window_s: float = 10.0
    overload_s: float = 0.5
    fade_ms: float = 5.0
    speed: float = 1.0

    def __post_init__(self) -> None:
        if self.playout_ms < 0 or self.prompt_s <= 0 or (self.phrase_s or 1) <= 0:
            raise ValueError("playout_ms must be >= 0; prompt_s and phrase_s > 0")


@dataclass
class Phrase:
    index: int
    reason: str
    start_pos: int | None = None  # output position of its first sample (set by the first EMG)
    produced: int = 0
    length: int | None = None  # samples, or None (open-ended)
    emg_index: int | None = None  # its first EMG sample: index in the conditioned stream ...
    emg_origin: int | None = None  # ... that started at this source frame
    fresh_after: float = 0.0  # time.monotonic() its translator was ready: older EMG is not its


@dataclass
class EngineStats:
    """Counters since the start (read by the status line and written into session.json)."""

    emg_blocks: int = 0
    emg_level_db: list[float] = field(default_factory=lambda: [-120.0] * 6)
    nan_samples: int = 0
    gap_samples: int = 0
    dropped_samples: int = 0
    dropouts: int = 0
    overloads: int = 0  # phrases cut because compute fell overload_s behind
    connects: int = 0
    disconnects: int = 0
    phrases: int = 0
    compute_s: float = 0.0  # translator time (start + pushes)
    frames: int = 0
    errors: list[str] = field(default_factory=list)


class Engine:
    """One live session. ``emg_source`` (sources.py), ``audio_in`` (a FileInput/DeviceInput) and
    ``make_output(ring) -> port`` (audio_io.py); ``recorder``: a SessionRecorder or None.

    ``start()``, then ``wait(...)`` or your own loop reading :meth:`status_line`, then ``stop()``.
    """

    def __init__(self, translator: Translator, emg_source, audio_in, make_output,
                 cfg: EngineConfig | None = None, recorder=None, log=print) -> None:
        self.tr, self.src, self.audio_in = translator, emg_source, audio_in
        self.cfg, self.rec, self.log = cfg or EngineConfig(), recorder, log
        self.sr = float(translator.audio_sr)
        self.clock: Clock | None = None
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.trigger = RmsTrigger(self.sr, self.cfg.trigger)
        self.prompt = PromptBuffer(max(1, round(self.cfg.prompt_s * self.sr)))
        self.stats = EngineStats()
        self.fade = max(1, round(self.cfg.fade_ms * self.sr / 1e3))  # samples, at cuts
        self.cond: EmgConditioner | None = None
        self.phrase: Phrase | None = None
        self.events: list[dict] = []
        self.compute_ms: deque = deque(maxlen=20000)  # per translator push
        self._make_output, self.out = make_output, None
        self._offsets: deque = deque()  # (arrival, offset in output samples)
        self._resume = self._resume_pending = False
        self.audio_ended = self.emg_ended = False
        self._busy = deque(maxlen=200)  # (t, seconds of compute) for the load meter
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Engine:
        self.clock = Clock(self.cfg.speed)
        self.ring = OutputRing(round(self.cfg.ring_s * self.sr), self.sr, self.clock)
        tap = self.rec.output if self.rec is not None else None
        self.out = self._make_output(self.ring, tap)
        self._worker = threading.Thread(target=self._work, daemon=True, name="engine")
        self._worker.start()
        self.out.start()
        self.src.start(self.inbox.put, self.clock)
        self.audio_in.start(self.inbox.put, self.clock)
        self._event("engine_start", playout_ms=self.cfg.playout_ms, speed=self.cfg.speed)
        return self

    def stop(self) -> dict:
        """Stop inputs, let the worker finish what it holds, stop the output; the summary."""
        for part in (self.audio_in, self.src):
            try:
                part.stop()
            except Exception as err:  # noqa: BLE001 (a failing device must not lose the session)
                self.stats.errors.append(f"stop {type(part).__name__}: {err}")
        self.inbox.put(("stop",))
        if self._worker is not None:
            self._worker.join(10)
        if self.out is not None:
            self.out.stop()
        summary = self.summary()
        if self.rec is not None:
            self.rec.close(summary)
        return summary

    def wait(self, seconds: float | None = None, until_end: bool = True, status=None,
             every_s: float = 0.25) -> None:
        """Run for ``seconds`` of session time, or until the inputs ended and the output played
        out (``until_end``); ``status(line)`` every ``every_s`` wall seconds."""
        while True:
            now_s = self.clock.seconds()
            if seconds is not None and now_s >= seconds:
                return
            if until_end and self.audio_ended and self.phrase is None and \
                    self.ring.read_pos >= self.ring.written_until + self.sr * self.cfg.playout_ms / 1e3:
                return
            if status is not None:
                status(self.status_line())
            time.sleep(every_s)

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            item = self.inbox.get()
            try:
                if isinstance(item, EmgBlock):
                    self._on_emg(item)
                elif isinstance(item, SourceEvent):
                    self._on_source(item)
                elif item[0] == "audio":
                    self._on_audio(item[1])
                elif item[0] == "audio_end":
                    self.audio_ended = True
                    self._end_phrase("end of input")
                elif item[0] == "stop":
                    self._end_phrase("stop")
                    return
            except Exception as err:  # noqa: BLE001 (one bad block must not end the session)
                msg = f"engine: {type(err).__name__}: {' '.join(str(err).split())}"
                self.stats.errors.append(msg)
                self._event("error", message=msg)
                self.log(msg)
                self._end_phrase("error")

    def _on_audio(self, x: np.ndarray) -> None:
        if self.rec is not None:
            self.rec.audio_in(x)
        self.prompt.push(x)
        for ev in self.trigger.process(x):
            self._event("trigger", **ev.as_dict())
            if ev.kind == "onset":
                self._begin_phrase("onset")
            elif self.cfg.end_on_silence:
                self._end_phrase("silence")

    def _on_emg(self, b: EmgBlock) -> None:
        src_sr = float(self.src.sr)
        if self.cond is None:
            self.cond = EmgConditioner(src_sr, self.tr.emg_sr, b.emg.shape[0], self.cfg.max_gap_s)
        c = self.cond(b)
        st = self.stats
        st.emg_blocks += 1
        st.nan_samples += c.nan
        st.gap_samples += c.gap
        st.dropped_samples += c.dropped
        if c.nan or c.gap or c.dropped:
            self._event("emg_repair", frame=c.origin, nan=c.nan, gap=c.gap, dropped=c.dropped)
        if c.dropout:
            st.dropouts += 1
            self._offsets.clear()
            self._event("emg_dropout", frame=int(b.start))
            self._end_phrase("emg dropout")
        if not c.repaired.shape[1]:
            return
        if self._resume_pending and self.inbox.empty():  # (no backlog left to catch up on)
            self._resume_pending = False
            if not self.trigger.silent:
                self._begin_phrase("resume")
        if self.rec is not None:
            self.rec.emg(c.repaired, src_sr)
        st.emg_level_db = [level_db(p) for p in np.mean(c.repaired.astype(np.float64) ** 2, 1)]
        ratio = self.sr / src_sr
        self._offsets.append((b.arrival, self.ring.position_at(b.arrival)
                              - (c.origin + c.repaired.shape[1]) * ratio))
        while self._offsets[0][0] < b.arrival - self.cfg.offset_window_s:
            self._offsets.popleft()
        p = self.phrase
        if p is None or not c.emg.shape[1]:
            return
        if p.start_pos is None and b.arrival < p.fresh_after:
            return  # it waited while the translator started: its sound would already be due
        if p.start_pos is None:  # the phrase's first sample plays when its first chunk is
            # complete (the chunk's last frame on the output clock), plus look-ahead and playout
            frame = self.cond.origin + self.cond.out_count * src_sr / self.tr.emg_sr
            offset = min(o for _, o in self._offsets)
            p.start_pos = round(frame * ratio + offset + self.schedule_ms() * self.sr / 1e3)
            p.emg_index = self.cond.out_count - c.emg.shape[1]
            p.emg_origin = self.cond.origin
            if self.ring.written_until > p.start_pos:  # an earlier phrase went on past here
                self.ring.fade_out(p.start_pos, self.fade)
            self.ring.expect(p.start_pos)
        behind = self.ring.read_pos - (p.start_pos + p.produced)
        if behind > self.cfg.overload_s * self.sr:  # compute cannot keep up: stop, catch up
            self.stats.overloads += 1
            self._end_phrase("overload")
            self._resume_pending = True  # with the next block, if the instrument still sounds
            return
        t0 = time.perf_counter()
        y = np.asarray(self.tr.push_emg(c.emg), np.float32).reshape(-1)
        self._spent(time.perf_counter() - t0)
        st.frames += len(y) // max(1, getattr(self.tr, "audio_hop", 1))
        if p.length is not None:
            y = y[: max(0, p.length - p.produced)]
        self.ring.write(p.start_pos + p.produced, y)
        p.produced += len(y)
        if p.length is not None and p.produced >= p.length:
            self._end_phrase("length")

    def _on_source(self, ev: SourceEvent) -> None:
        self._event(f"emg_{ev.kind}", message=ev.message)
        if ev.kind == "connected":
            self.stats.connects += 1
            # the phrase resumes with the first block after the reconnect (which shows the gap)
            self._resume_pending = self._resume
            self._resume = False
        elif ev.kind == "disconnected":
            self.stats.disconnects += 1
            self._resume = self.phrase is not None
            self._end_phrase("emg lost")
            self.log(f"EMG lost: {ev.message}; reconnecting")
        elif ev.kind == "ended":
            self.emg_ended = True
            self._end_phrase("end of EMG")
        elif ev.kind == "error":
            self.stats.errors.append(ev.message)
            self.log(ev.message)

    # ------------------------------------------------------------------ phrases
    def _begin_phrase(self, reason: str) -> None:
        if self.phrase is not None:
            self._end_phrase("retrigger")
        t0 = time.perf_counter()
        self.tr.reset()
        self.tr.start(self.prompt.latest())
        self._spent(time.perf_counter() - t0)
        self.stats.phrases += 1
        n = None if self.cfg.phrase_s is None else round(self.cfg.phrase_s * self.sr)
        self.phrase = Phrase(self.stats.phrases, reason, length=n, fresh_after=time.monotonic())
        self._event("phrase_start", phrase=self.phrase.index, reason=reason,
                    prompt_end=self.prompt.count)  # the prompt: audio_in up to this sample

    def _end_phrase(self, reason: str) -> None:
        p, self.phrase = self.phrase, None
        if p is None:
            return
        if p.start_pos is not None:
            self.ring.fade_out(p.start_pos + p.produced, min(self.fade, p.produced))
            self.ring.close_span(p.start_pos + p.produced)
        self._event("phrase_end", phrase=p.index, reason=reason, start_pos=p.start_pos,
                    samples=p.produced, emg_index=p.emg_index, emg_origin=p.emg_origin)

    # ------------------------------------------------------------------ reporting
    def schedule_ms(self) -> float:
        """From a chunk's last EMG frame to its first sound: the translator's look-ahead (its
        latency beyond the one frame every chunk waits for anyway) plus the playout delay."""
        hop = getattr(self.tr, "audio_hop", None)
        frame_ms = 1000.0 * hop / self.sr if hop else 0.0
        return max(0.0, float(self.tr.latency_ms) - frame_ms) + self.cfg.playout_ms

    def _spent(self, seconds: float) -> None:
        self.stats.compute_s += seconds
        self.compute_ms.append(1000.0 * seconds)
        self._busy.append((time.monotonic(), seconds))

    def _event(self, kind: str, **fields) -> None:
        t = self.clock.seconds() if self.clock is not None else 0.0
        ev = {"kind": kind, "session_s": round(t, 4)} | fields
        self.events.append(ev)
        if self.rec is not None:
            self.rec.event(kind, **{k: v for k, v in ev.items() if k != "kind"})

    def load(self, window_s: float = 2.0) -> float:
        """Fraction of the last ``window_s`` wall seconds the translator computed."""
        now = time.monotonic()
        return sum(s for t, s in list(self._busy) if t > now - window_s) / window_s

    def summary(self) -> dict:
        ms = np.asarray(self.compute_ms) if self.compute_ms else np.zeros(1)
        r = self.ring
        return asdict(self.stats) | {
            "underrun_samples": r.underrun_samples, "underrun_blocks": r.underrun_blocks,
            "late_samples": r.late_samples, "overflow_samples": r.overflow_samples,
            "played_samples": r.read_pos, "session_s": self.clock.seconds(),
            "push_ms": {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                        "max": float(ms.max())}}

    def status_line(self) -> str:
        levels = " ".join(f"{max(-99, round(v)):3d}" for v in self.stats.emg_level_db)
        p = self.phrase
        state = "idle" if p is None else f"phrase {p.index} {p.produced / self.sr:5.1f}s"
        link = "EMG ok" if self.stats.connects > self.stats.disconnects else "EMG --"
        return (f"{link} [{levels}] dB | {state:<16} | in {self.trigger.level:5.0f} dB | "
                f"load {100 * self.load():3.0f}% | underruns {self.ring.underrun_blocks} | "
                f"NaN {self.stats.nan_samples} | reconnects {max(0, self.stats.connects - 1)}")
