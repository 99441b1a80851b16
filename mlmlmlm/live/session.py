"""The live session's recorder: everything the engine sees and plays, written to disk as it runs.

Introduced in notebook 06_live_demo. A session folder holds::

    emg.wav        6 ch float32 at the source's rate, NaN repaired and gaps filled (as translated)
    audio_in.wav   the instrument audio, mono float32
    output.wav     what was played, mono float32, sample for sample on the output clock
    events.jsonl   one JSON object a line: session start, triggers, phrases, faults, the end
    session.json   the settings (written at the start) and the final counters (at the end)

A recorder thread appends to the files and flushes them (libsndfile rewrites the WAV header on
flush), at least every ``flush_s``; a killed session therefore leaves WAVs readable up to the
last flush and every event line but the one being written.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from mlmlmlm.atomic import write_text_atomic


class WavAppender:
    """A float32 WAV written block by block; ``write(x [C, n] or [n])``, ``flush()``, ``close()``."""

    def __init__(self, path, sr: float, channels: int) -> None:
        self.path, self.channels, self.frames = Path(path), channels, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # libsndfile takes an integer rate; a fractional EMG rate (2756.25) is kept in session.json
        self._f = sf.SoundFile(str(self.path), "w", samplerate=max(1, round(sr)),
                               channels=channels, subtype="FLOAT", format="WAV")

    def write(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32)
        x = x[:, None] if x.ndim == 1 else x.T  # soundfile wants [n, C]
        if x.shape[1] != self.channels:
            raise ValueError(f"{self.path.name}: {x.shape[1]} channels, expected {self.channels}")
        self._f.write(x)
        self.frames += len(x)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class SessionRecorder:
    """Writes a session folder from a background thread (see the module doc).

    ``emg(x [6, n], sr)``, ``audio_in(x [n])``, ``output(x [n])`` and ``event(kind, **fields)``
    only enqueue (safe from an audio callback); ``close(summary)`` drains, writes the end and
    stops the thread.
    """

    def __init__(self, folder, audio_sr: float, settings: dict | None = None,
                 flush_s: float = 0.05) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.audio_sr, self.flush_s = float(audio_sr), flush_s
        self.settings = dict(settings or {}) | {"audio_sr": self.audio_sr}
        self.t0 = time.monotonic()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._wavs: dict[str, WavAppender] = {}
        self._events = open(self.folder / "events.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        self._write_json({"settings": self.settings, "started": time.strftime("%FT%T%z")})
        self._thread = threading.Thread(target=self._run, daemon=True, name="recorder")
        self._thread.start()
        self.event("session_start")

    # ------------------------------------------------------------------ producers
    def emg(self, x: np.ndarray, sr: float) -> None:
        self._q.put(("emg", x, sr))

    def audio_in(self, x: np.ndarray) -> None:
        self._q.put(("audio_in", x, self.audio_sr))

    def output(self, x: np.ndarray) -> None:
        self._q.put(("output", x, self.audio_sr))

    def event(self, kind: str, **fields) -> None:
        self._q.put(("event", {"t": round(time.monotonic() - self.t0, 4), "kind": kind} | fields))

    def close(self, summary: dict | None = None) -> None:
        self.event("session_end")
        self._q.put(("close", summary or {}))
        self._thread.join(10)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        last_flush, closing = time.monotonic(), None
        while closing is None:
            try:
                item = self._q.get(timeout=self.flush_s)
            except queue.Empty:
                item = None
            if item is not None:
                closing = self._handle(item)
            if closing is not None or time.monotonic() - last_flush >= self.flush_s:
                for w in self._wavs.values():
                    w.flush()
                self._events.flush()
                last_flush = time.monotonic()
        for w in self._wavs.values():
            w.close()
        self._events.close()
        files = {name: {"file": w.path.name, "frames": w.frames} for name, w in self._wavs.items()}
        self._write_json({"settings": self.settings, "files": files, "summary": closing})

    def _handle(self, item) -> dict | None:
        kind = item[0]
        if kind == "close":
            return item[1]
        if kind == "event":
            self._events.write(json.dumps(item[1], default=_jsonable) + "\n")
            return None
        _, x, sr = item
        w = self._wavs.get(kind)
        if w is None:
            channels = 1 if np.ndim(x) == 1 else np.shape(x)[0]
            w = self._wavs[kind] = WavAppender(self.folder / f"{kind}.wav", sr, channels)
            self.settings[f"{kind}_sr"] = float(sr)
            self._write_json({"settings": self.settings})
        w.write(x)
        return None

    def _write_json(self, obj: dict) -> None:
        write_text_atomic(self.folder / "session.json",
                          json.dumps(obj, indent=1, default=_jsonable) + "\n")


def _jsonable(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def read_events(path) -> list[dict]:
    """The events of a session (``events.jsonl``); a torn last line (a killed session) is skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
