"""A record of the live engine: an excerpt of a held-out recording (or a Bela board and the
sound card) played through :class:`~mlmlmlm.live.engine.Engine` with one preset's translator,
and its session folder read back.

Introduced in notebook 06_live_demo (its sections: :mod:`mlmlmlm.live_page`).

The excerpt's EMG at the board's rate (22.05 kHz, as the corpus stores it) goes into
:class:`~mlmlmlm.live.emulator.BelaEmulator`, which the real ``pybela.Streamer`` reads
(:class:`~mlmlmlm.live.sources.EmulatorEmgSource`); its instrument audio goes in as a file whose
clock starts with the emulator's frame clock, so the two streams stay as aligned as they were
recorded (:class:`AlignedInput`). Both get ``lead_s`` of rest first (the board streams a while
before the violist plays) and the EMG goes on a second after the audio. The engine triggers on
the audio, translates, plays into a clock-paced output and records the session; a
:class:`Record` is what was read back from that folder.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = {"default": "default", "low latency": "ll"}  # run-card key prefixes
# The board's EMG layout each preset is played through: the low-latency preset's in the
# interleaved one (one variable, 128-frame buffers: 5.8 ms, one of its frames), the default's in
# one variable a channel (1024-frame buffers: 46.4 ms, four of its frames). See bela/README.md.
INTERLEAVED = {"default": False, "low latency": True}
BOARD_SR = 22050.0  # Bela's analog rate for the six EMG channels (the corpus's EMG rate)


def held_out_excerpt(data_root: Path, split: str, seconds: float, threshold_db: float,
                     sr: float = BOARD_SR) -> tuple[str, np.ndarray, np.ndarray]:
    """``(label, audio [n] at sr, EMG [6, n] at sr)``: ``seconds`` of the first recording of
    ``split`` (name order), starting 0.5 s before its first trigger onset (at the start when it
    has none, or when the rest would be shorter than ``seconds``)."""
    from mlmlmlm.data.io import find_recordings, load_recording
    from mlmlmlm.data.preprocess import resample
    from mlmlmlm.live.trigger import RmsTrigger, TriggerConfig

    refs = [r for r in find_recordings(data_root) if r.split == split]
    if not refs:
        raise FileNotFoundError(f"{data_root}: no recordings in split {split!r}")
    rec = load_recording(refs[0])
    audio = resample(rec.audio, rec.audio_sr, sr) if rec.audio_sr != sr else rec.audio
    emg = resample(rec.emg, rec.emg_sr, sr) if rec.emg_sr != sr else rec.emg
    n = min(len(audio), emg.shape[1])
    onsets = [e.sample for e in RmsTrigger(sr, TriggerConfig(threshold_db=threshold_db))
              .process(audio[:n]) if e.kind == "onset"]
    want = round(seconds * sr)
    start = max(0, onsets[0] - round(0.5 * sr)) if onsets else 0
    start = min(start, max(0, n - want))
    stop = min(n, start + want)
    return (f"{rec.name} @ {start / sr:.1f} s", audio[start:stop].astype(np.float32),
            emg[:, start:stop].astype(np.float32))


class AlignedInput:
    """A :class:`~mlmlmlm.live.audio_io.FileInput` whose clock starts with the emulator's frame
    clock (its first ``watch``), so instrument-audio sample ``k`` is handed over when EMG frame
    ``k`` (same rate) is captured: the two replayed streams keep their recorded alignment."""

    def __init__(self, inner, source, timeout_s: float = 20.0) -> None:
        self.inner, self.source, self.timeout_s = inner, source, timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, sink, clock) -> None:
        from mlmlmlm.live.audio_io import Clock

        def run():
            t_end = time.monotonic() + self.timeout_s
            while not self._stop.is_set() and time.monotonic() < t_end:
                emu = getattr(self.source, "emulator", None)
                if emu is not None and emu.t0 is not None:
                    self.inner.start(sink, Clock(clock.speed, t0=emu.t0))
                    return
                time.sleep(0.002)
            sink(("audio_end",))  # no EMG clock came: nothing can be aligned, end cleanly

        self._thread = threading.Thread(target=run, daemon=True, name="audio-in-aligned")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.inner.stop()


@dataclass
class Record:
    """One preset played through the engine, as read back from its session folder."""

    preset: str
    run: str
    label: str
    folder: Path
    sr: float
    audio_in: np.ndarray  # [n] the instrument audio the engine heard
    output: np.ndarray  # [n] what it played, sample for sample on the output clock
    events: list[dict]
    summary: dict  # Engine.summary()
    frame_ms: float
    push_ms: list[float]  # translator compute per push (one Bela buffer of EMG), ms
    translator: Any = None
    log: list[str] = field(default_factory=list)
    audio_start_s: float = 0.0  # session time of audio_in's first sample (the EMG clock's start)


def play(run_dir: Path, preset: str, run: str, tr, excerpt, *, threshold_db: float,
         playout_ms: float, prompt_s: float, lead_s: float = 1.0, live: bool = False,
         seconds: float | None = None, board: str = "bela") -> Record:
    """Run the engine with translator ``tr`` (of preset ``preset``, the translation run
    ``run``) on ``excerpt`` (:func:`held_out_excerpt`), or, with ``live``, on the Bela board
    ``board`` (``bela[:HOST[:PORT]]``, as ``mlmlmlm live --emg``) and the sound card for
    ``seconds``; record into ``<run_dir>/session-<prefix>`` and read the session back. The
    excerpt's emulated board serves the preset's layout (:data:`INTERLEAVED`); a real board, its
    own (the source finds it). No sound card: one-line ``AudioDeviceError``, the engine
    stopped."""
    import soundfile as sf
    import torch

    from mlmlmlm.live import audio_io as io
    from mlmlmlm.live.engine import Engine, EngineConfig
    from mlmlmlm.live.session import SessionRecorder, read_events
    from mlmlmlm.live.sources import EmulatorEmgSource, open_emg_source
    from mlmlmlm.live.trigger import TriggerConfig

    torch.set_num_threads(1)  # one frame is too small for two threads (see bench stream)
    label, audio, emg = excerpt
    sr, block = float(tr.audio_sr), 256
    folder = Path(run_dir) / f"session-{PREFIX[preset]}"
    folder.mkdir(parents=True, exist_ok=True)
    prompt_s = max(prompt_s, getattr(tr, "min_prompt_samples", 1) / sr)
    cfg = EngineConfig(trigger=TriggerConfig(threshold_db=threshold_db), prompt_s=prompt_s,
                       playout_ms=playout_ms, block=block)
    lines: list[str] = []
    rec = SessionRecorder(folder, sr, {"preset": preset, "run": run, "live": live,
                                       "excerpt": label, "playout_ms": playout_ms,
                                       "threshold_db": threshold_db, "prompt_s": prompt_s})
    if live:
        io.import_sounddevice()  # no PortAudio: say so before the board is contacted
        src = open_emg_source(board, quiet=True)
        audio_in = io.DeviceInput(sr, block)
        make = lambda ring, tap: io.DeviceOutput(ring, block, tap)
    else:
        lead = round(lead_s * BOARD_SR)
        wav = folder / "instrument_source.wav"
        x = np.concatenate([np.zeros(lead, np.float32), audio])
        if BOARD_SR != sr:  # (both presets run at the board's rate, 22.05 kHz)
            from mlmlmlm.data.preprocess import resample

            x = resample(x, BOARD_SR, sr)
        sf.write(wav, x, int(sr))
        e = np.concatenate([np.zeros((6, lead), np.float32), emg,
                            np.zeros((6, round(BOARD_SR)), np.float32)], axis=1)
        src = EmulatorEmgSource(e, BOARD_SR, loop=False, quiet=True,
                                interleaved=INTERLEAVED[preset])
        audio_in = AlignedInput(io.FileInput(wav, sr, block), src)
        make = lambda ring, tap: io.ClockOutput(ring, block, tap)
    eng = Engine(tr, src, audio_in, make, cfg, rec, log=lines.append)
    try:
        eng.start()
    except io.AudioDeviceError:
        eng.stop()  # what was recorded stays on disk
        raise
    eng.wait(seconds if live else None, until_end=not live, every_s=0.05)
    summary = eng.stop()
    emu = getattr(src, "emulator", None)
    start_s = eng.clock.seconds(emu.t0) if emu is not None and emu.t0 is not None else 0.0
    a_in = sf.read(folder / "audio_in.wav", dtype="float32")[0] if \
        (folder / "audio_in.wav").exists() else np.zeros(0, np.float32)
    out = sf.read(folder / "output.wav", dtype="float32")[0] if \
        (folder / "output.wav").exists() else np.zeros(0, np.float32)
    return Record(preset, run, label, folder, sr, a_in, out,
                  read_events(folder / "events.jsonl"), summary,
                  1000.0 * tr.audio_hop / sr, list(eng.compute_ms), tr, lines, start_s)


def trigger_levels(audio: np.ndarray, sr: float, threshold_db: float) -> tuple[np.ndarray, ...]:
    """The trigger's RMS level (dBFS) of ``audio`` per hop, its times (s) and its onset times,
    as :class:`~mlmlmlm.live.trigger.RmsTrigger` computes them on stage."""
    from mlmlmlm.live.trigger import RmsTrigger, TriggerConfig

    trig = RmsTrigger(sr, TriggerConfig(threshold_db=threshold_db), keep_levels=True)
    onsets = [e.sample / sr for e in trig.process(audio) if e.kind == "onset"]
    t = (np.arange(len(trig.levels)) + 1) * trig.hop / sr
    return np.asarray(trig.levels), t, np.asarray(onsets)


def phrase_spans(r: Record) -> list[tuple[float, float, str]]:
    """``(start s, end s, reason)`` of every phrase on the output clock (its played samples)."""
    out = []
    for e in r.events:
        if e.get("kind") == "phrase_end" and e.get("start_pos") is not None and e.get("samples"):
            out.append((e["start_pos"] / r.sr, (e["start_pos"] + e["samples"]) / r.sr,
                        e.get("reason", "")))
    return out


def output_on_emg_clock(r: Record) -> np.ndarray:
    """The output from the EMG clock's start on (where the instrument audio starts too), so the
    output lines up with the excerpt sample for sample."""
    return r.output[round(r.audio_start_s * r.sr):]
