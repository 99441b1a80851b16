"""The sections of the live chapter's run pages (notebook 06_live_demo): the low-latency preset's
runs, trained through the recipes of chapters 2, 4 and 5, and the live record, where held-out EMG
and its instrument audio are replayed through the real engine (:mod:`mlmlmlm.live`) via the Bela
emulator and the real pybela client, for both presets.

Introduced in notebook 06_live_demo.

**Presets.** ``default``: the production codecs with ``05_transformer/te2_frame``; ``low
latency``: this chapter's ``audio_codec_ll`` / ``emg_codec_ll`` (hop 128 / 16) with
``te2_frame_ll``. Each translation run is looked up beside the record's own run folder (same
scale and data tag), as the runbook lays them out.

**The record.** One excerpt of a held-out recording: its EMG at the board's rate (22.05 kHz, as
the corpus stores it) goes into :class:`~mlmlmlm.live.emulator.BelaEmulator`, which the real
``pybela.Streamer`` reads (:class:`~mlmlmlm.live.sources.EmulatorEmgSource`); its instrument audio
goes in as a file whose clock starts with the emulator's frame clock, so the two streams stay as
aligned as they were recorded (:class:`AlignedInput`). Both get ``lead_s`` of rest first (the
board streams a while before the violist plays) and the EMG goes on a second after the audio.
The engine triggers on the audio, translates, plays into a clock-paced output and records the
session; everything shown is read back from that session folder. With ``live=True`` the EMG
comes from a Bela board through pybela and audio in and out from the sound card instead.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlmlmlm import report
from mlmlmlm.notebook import Setup

PREFIX = {"default": "default", "low latency": "ll"}  # run-card key prefixes
BOARD_SR = 22050.0  # Bela's analog rate for the six EMG channels (the corpus's EMG rate)


def _show(obj: Any) -> None:
    from IPython.display import display

    display(obj)


def _md(text: str) -> None:
    from IPython.display import Markdown

    _show(Markdown(text))


def is_record(s: Setup) -> bool:
    """The record run trains nothing (``kind: live``); the others are the preset's runs."""
    return s.cfg.kind == "live"


def presets(s: Setup) -> dict[str, str]:
    """``{preset: <phase>/<run>}`` of the record's ``presets:`` section."""
    return s.cfg.presets.runs()


# ----------------------------------------------------------------------------- preset runs
def preset_run(s: Setup) -> dict | None:
    """A codec or translation run of the low-latency preset: the sections of its chapter (model,
    training, held-out metrics; for a codec, spectrograms and players too), its frame period
    added to the card. The record run: one line, ``None``."""
    if is_record(s):
        _md("This run trains nothing: it plays the trained runs of both presets (below).")
        return None
    if s.cfg.kind == "codec":
        from mlmlmlm import codec_page as page

        desc = page.model_section(s)
        ev = page.metrics_section(s, page.train_section(s))
        page.look_and_listen(s, ev)
        ev.metrics["frame_ms"] = 1000.0 * desc["hop"] / s.cfg.model.sample_rate
        page.finish(s, ev)
        return ev.metrics
    from mlmlmlm import transformer_page as page

    page.model_section(s)
    ev = page.metrics_section(s, page.train_section(s))
    a = ev.pair.audio.cfg
    ev.metrics["frame_ms"] = 1000.0 * a.hop / a.sample_rate
    page.finish(s, ev)
    return ev.metrics


# ----------------------------------------------------------------------------- the record
def preset_dirs(s: Setup) -> dict[str, Path]:
    """``{preset: run folder}`` of each preset's translation run beside this run's folder."""
    tag = s.run_dir.name[len(s.cfg.name):]
    out = {}
    for preset, run in presets(s).items():
        phase, name = run.split("/")
        out[preset] = s.run_dir.parent.parent / phase / (name + tag)
    return out


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


def load_preset(s: Setup, preset: str, in_process: bool = False):
    """The trained translator of ``preset`` (EMG prepared with the corpus's scale), or ``None``
    with one line saying which run to train. As ``mlmlmlm live`` builds it: a sliding window of
    the training crop, and, unless ``in_process``, in a process of its own
    (:class:`~mlmlmlm.live.worker.TranslatorProcess`; close it when done)."""
    from mlmlmlm.live.app import load_translator

    d = preset_dirs(s)[preset]
    if not (d / "checkpoint.pt").is_file():
        _md(f"*{preset}*: no trained run at `{d.name}` yet (train it: `mlmlmlm run "
            f"{presets(s)[preset]}`).")
        return None
    return load_translator(str(d), s.cfg.scale, False, in_process, "crop", str(s.data_root))


def play(s: Setup, preset: str, tr, excerpt, *, threshold_db: float, playout_ms: float,
         prompt_s: float, lead_s: float = 1.0, live: bool = False,
         seconds: float | None = None, board: str = "bela") -> Record:
    """Run the engine for one preset on ``excerpt`` (:func:`held_out_excerpt`), or, with
    ``live``, on the Bela board ``board`` (``bela[:HOST[:PORT]]``, as ``mlmlmlm live --emg``)
    and the sound card for ``seconds``; record into ``<run_dir>/session-<prefix>`` and read the
    session back. No sound card: one-line ``AudioDeviceError``, the engine stopped."""
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
    folder = Path(s.run_dir) / f"session-{PREFIX[preset]}"
    folder.mkdir(parents=True, exist_ok=True)
    prompt_s = max(prompt_s, getattr(tr, "min_prompt_samples", 1) / sr)
    cfg = EngineConfig(trigger=TriggerConfig(threshold_db=threshold_db), prompt_s=prompt_s,
                       playout_ms=playout_ms, block=block)
    lines: list[str] = []
    rec = SessionRecorder(folder, sr, {"preset": preset, "run": presets(s)[preset], "live": live,
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
        src = EmulatorEmgSource(e, BOARD_SR, loop=False, quiet=True)
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
    return Record(preset, presets(s)[preset], label, folder, sr, a_in, out,
                  read_events(folder / "events.jsonl"), summary,
                  1000.0 * tr.audio_hop / sr, list(eng.compute_ms), tr, lines, start_s)


def record_section(s: Setup, excerpt, *, threshold_db: float, playout_ms: float,
                   prompt_s: float, live: bool = False, seconds: float | None = None,
                   board: str = "bela") -> dict[str, Record]:
    """Play both presets (those trained) through the engine, each translator in a process of
    its own as ``mlmlmlm live`` runs it; one status line each. The record keeps an in-process
    copy of the translator (same run, same window) for the offline compute figures of
    :func:`measure_latency`: the process is closed first, so its spinning core is free."""
    if not is_record(s):
        _md("The live record is the run `live` of this chapter.")
        return {}
    out = {}
    for preset in presets(s):
        tr = load_preset(s, preset)
        if tr is None:
            continue
        try:
            r = play(s, preset, tr, excerpt, threshold_db=threshold_db, playout_ms=playout_ms,
                     prompt_s=prompt_s, live=live, seconds=seconds, board=board)
        finally:
            tr.close()
        r.translator = load_preset(s, preset, in_process=True)
        m = r.summary
        # prose, not a printed stream: a reader's page opens with results, not console output
        _md(f"*{preset}*: EMG streaming from {r.audio_start_s:.2f} s of session time; "
            f"{m['phrases']} phrases, {m['frames']} frames in {m['session_s']:.1f} s, compute "
            f"{m['compute_s']:.1f} s, {m['underrun_blocks']} underruns, {m['overloads']} "
            f"overloads, {len(m['errors'])} errors"
            + "".join(f"\n- `{line}`" for line in r.log[:5]))
        out[preset] = r
    return out


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


def trigger_figure(records: dict[str, Record], threshold_db: float):
    """Per preset: the instrument's RMS level with the engine's trigger onsets (the events it
    recorded), and below it the output with the phrases it played shaded; time runs from the
    EMG clock's start, where the instrument audio starts too."""
    import matplotlib.pyplot as plt

    if not records:
        return None
    fig, axes = plt.subplots(2 * len(records), 1, figsize=(7.5, 1.5 * 2 * len(records)),
                             sharex=True, constrained_layout=True, squeeze=False)
    for i, (preset, r) in enumerate(records.items()):
        ax, bx = axes[2 * i, 0], axes[2 * i + 1, 0]
        lv, t, _ = trigger_levels(r.audio_in, r.sr, threshold_db)
        ax.plot(t, lv, lw=0.7, color="0.3")
        for e in r.events:
            if e.get("kind") == "trigger" and e.get("trigger") == "onset":
                ax.axvline(e["sample"] / r.sr, color="C3", lw=0.8)
            elif e.get("kind") == "trigger" and e.get("trigger") == "silence":
                ax.axvline(e["sample"] / r.sr, color="C0", lw=0.8, ls=":")
        ax.set_ylabel("RMS (dBFS)")
        ax.set_ylim(max(-100, np.min(lv) - 3) if len(lv) else -100, 0)
        ax.set_title(f"{preset}: instrument level, onsets (red), silences (blue, dotted)")
        y = output_on_emg_clock(r)
        bx.plot(np.arange(len(y)) / r.sr, y, lw=0.3, color="C2")
        for a, b, _ in phrase_spans(r):
            bx.axvspan(a - r.audio_start_s, b - r.audio_start_s, color="C1", alpha=0.15, lw=0)
        bx.set_ylabel("output")
        bx.set_title(f"{preset}: generated audio, phrases shaded")
    axes[-1, 0].set_xlabel("time from the start of the EMG stream (s)")
    return fig


def listen_section(records: dict[str, Record]) -> None:
    """Spectrograms of the instrument audio and each preset's output, then players."""
    import matplotlib.pyplot as plt

    if not records:
        return
    first = next(iter(records.values()))
    cols = [("instrument (trigger and prompt)", first.audio_in)]
    cols += [(f"{p} preset: generated", output_on_emg_clock(r)) for p, r in records.items()]
    n = max(1024, *(len(x) for _, x in cols))
    cols = [(label, np.pad(x, (0, n - len(x)))[:n]) for label, x in cols]
    report.spectrogram_grid(cols, first.sr, "audio", title=first.label)
    plt.show()
    _show(report.audio_table([(first.label, dict(cols))], first.sr))


def measure_latency(records: dict[str, Record], playout_ms: float, e2e_seconds: float,
                    compute_seconds: float, lead_s: float = 3.0) -> dict[str, dict]:
    """Per preset, from :mod:`mlmlmlm.live.latency`: the algorithmic budget by part; per-frame
    compute of the trained translator on random EMG (one EMG hop a push, and one Bela buffer a
    push, as the engine pushes); the end-to-end latency measured through the emulator and pybela
    with an :class:`~mlmlmlm.live.latency.EnvelopeTranslator` at the preset's hops (a sharp
    onset per EMG onset; its latency is one frame, as the preset's causal model without
    look-ahead); and the engine's own counters of the record."""
    import torch

    from mlmlmlm.live import latency as L
    from mlmlmlm.live.emulator import BLOCK

    torch.set_num_threads(1)
    out = {}
    for preset, r in records.items():
        tr = r.translator
        env = L.EnvelopeTranslator(tr.audio_sr, tr.emg_sr, tr.audio_hop, tr.emg_hop)
        push = np.asarray(r.push_ms or [0.0])
        out[preset] = {
            "algorithmic": L.latency_budget(tr, BOARD_SR, playout_ms, 256),
            "compute": L.compute_per_frame(tr, compute_seconds),
            "compute_bela": L.compute_per_frame(tr, compute_seconds, chunk=BLOCK // 8),
            "e2e": L.end_to_end(env, e2e_seconds, playout_ms=playout_ms, lead_s=lead_s),
            "engine": {"push_p50_ms": float(np.percentile(push, 50)),
                       "push_p99_ms": float(np.percentile(push, 99)),
                       "buffer_ms": 1000.0 * BLOCK / BOARD_SR,
                       "load": r.summary["compute_s"] / max(r.summary["session_s"], 1e-9)}}
    return out


ALGO_ROWS = {"bela_buffer_ms": "Bela buffer (1024 frames at 22.05 kHz)",
             "resampler_ms": "EMG resampler to the codec's rate", "emg_hop_ms": "EMG hop",
             "audio_hop_ms": "audio hop (one frame)", "lookahead_ms": "EMG look-ahead",
             "playout_ms": "playout delay", "output_block_ms": "output block (copied, not waited)",
             "total_ms": "total (hops fall inside the buffer)"}


def latency_tables(lat: dict[str, dict]) -> None:
    """Three tables, one column per preset: the algorithmic budget, compute, end to end."""
    if not lat:
        return
    names = list(lat)
    rows = [{"part (ms)": label} | {p: lat[p]["algorithmic"][k] for p in names}
            for k, label in ALGO_ROWS.items()]
    _md("**Algorithmic latency** (from an EMG sample's capture to its sound)\n\n"
        + report.markdown_table(rows, floatfmt=".3g"))
    comp = {"frame period (ms)": lambda m: m["compute"]["frame_period_ms"],
            "compute per frame p50 (ms)": lambda m: m["compute"]["frame_ms"]["p50"],
            "compute per frame p99 (ms)": lambda m: m["compute"]["frame_ms"]["p99"],
            "compute per frame max (ms)": lambda m: m["compute"]["frame_ms"]["max"],
            "real-time factor (1-hop pushes)": lambda m: m["compute"]["rtf"],
            "real-time factor (Bela-buffer pushes)": lambda m: m["compute_bela"]["rtf"],
            "record: compute per push p50 (ms)": lambda m: m["engine"]["push_p50_ms"],
            "record: compute per push p99 (ms)": lambda m: m["engine"]["push_p99_ms"],
            "record: push period, one Bela buffer (ms)": lambda m: m["engine"]["buffer_ms"],
            "record: translator load": lambda m: m["engine"]["load"]}
    rows = [{"compute": k} | {p: f(lat[p]) for p in names} for k, f in comp.items()]
    _md("**Compute** (trained translator, one torch thread)\n\n"
        + report.markdown_table(rows, floatfmt=".3g"))
    e2e = {"EMG onsets replayed": lambda e: e["onsets"], "onsets matched": lambda e: e["matched"],
           "mean (ms)": lambda e: (e["latency_ms"] or {}).get("mean"),
           "SD (ms)": lambda e: (e["latency_ms"] or {}).get("sd"),
           "min (ms)": lambda e: (e["latency_ms"] or {}).get("min"),
           "max (ms)": lambda e: (e["latency_ms"] or {}).get("max"),
           "SD by the output thread's reads (ms)": lambda e: (e["latency_by_read_ms"] or {}).get("sd"),
           "session (s)": lambda e: e["seconds"], "underrun blocks": lambda e: e["underrun_blocks"]}
    rows = [{"end to end": k} | {p: f(lat[p]["e2e"]) for p in names} for k, f in e2e.items()]
    _md("**End to end**, EMG onset captured by the emulator to its sound on the output clock, "
        "through pybela and the engine\n\n" + report.markdown_table(rows, floatfmt=".3g"))


def card_metrics(records: dict[str, Record], lat: dict[str, dict], excerpt_label: str,
                 playout_ms: float, threshold_db: float) -> dict:
    """The record's figures for the run card, ``<prefix>_<name>`` per preset."""
    m: dict[str, Any] = {"excerpt": excerpt_label, "playout_ms": playout_ms,
                         "threshold_db": threshold_db}
    for preset, r in records.items():
        p, L = PREFIX[preset], lat[preset]
        e = L["e2e"]["latency_ms"] or {}
        s = r.summary
        lookahead = L["algorithmic"]["lookahead_ms"]
        p99 = L["compute"]["frame_ms"]["p99"]
        m |= {f"{p}_frame_ms": r.frame_ms, f"{p}_algorithmic_ms": L["algorithmic"]["total_ms"],
              f"{p}_bela_buffer_ms": L["algorithmic"]["bela_buffer_ms"],
              f"{p}_model_latency_ms": r.frame_ms + lookahead,
              f"{p}_model_plus_p99_ms": r.frame_ms + lookahead + p99,
              f"{p}_compute_p50_ms": L["compute"]["frame_ms"]["p50"],
              f"{p}_compute_p99_ms": p99, f"{p}_rtf": L["compute"]["rtf"],
              f"{p}_rtf_bela": L["compute_bela"]["rtf"],
              f"{p}_push_p99_ms": L["engine"]["push_p99_ms"], f"{p}_load": L["engine"]["load"],
              f"{p}_phrases": s["phrases"], f"{p}_underrun_blocks": s["underrun_blocks"],
              f"{p}_overloads": s["overloads"], f"{p}_record_s": s["session_s"],
              f"{p}_onsets": sum(1 for ev in r.events if ev.get("trigger") == "onset"),
              f"{p}_e2e_onsets": L["e2e"]["onsets"], f"{p}_e2e_matched": L["e2e"]["matched"],
              f"{p}_e2e_mean_ms": e.get("mean"), f"{p}_e2e_sd_ms": e.get("sd"),
              f"{p}_e2e_min_ms": e.get("min"), f"{p}_e2e_max_ms": e.get("max"),
              f"{p}_e2e_underruns": L["e2e"]["underrun_blocks"]}
    return m


def finish(s: Setup, records: dict[str, Record], lat: dict[str, dict], excerpt,
           playout_ms: float, threshold_db: float) -> None:
    """Record the figures for the run card: the record's (the preset runs wrote theirs)."""
    if not is_record(s):
        return
    label = excerpt[0] if excerpt else ""
    report.save_metrics(s.run_dir, card_metrics(records, lat, label, playout_ms, threshold_db))
