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

import time

import numpy as np

from mlmlmlm.live.emulator import BLOCK, buffer_frames


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
              align: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """EMG of ``n_onsets`` noise bursts, one every ``period_s`` (first at ``period_s``), silent in
    between: float32 ``[6, T]`` and the onset frames ``[n_onsets]`` (multiples of ``align``).
    Onsets fall at varying places inside Bela's 1024-frame buffers."""
    rng = np.random.default_rng(seed)
    n = int((n_onsets + 1) * period_s * sr)
    emg = np.zeros((6, n), np.float32)
    onsets = (np.arange(1, n_onsets + 1) * period_s * sr).astype(int)
    onsets += rng.integers(0, BLOCK, n_onsets)  # a different place in the buffer(s) each time
    onsets = onsets // align * align
    for f in onsets:
        m = int(on_s * sr)
        emg[:, f:f + m] = level * rng.standard_normal((6, m))
    return emg, onsets


# The output level that marks a sound's onset. Silence between the bursts is exact zeros, and the
# first frame of a burst is its quietest: the board's 22.05 kHz EMG keeps 1/8 of its power through
# the 8x anti-alias filter (a 0.3 burst: 0.106 RMS), and the filter's 10-sample delay leaves only
# the frame's last 6 of 16 samples at full level (0.065 RMS, 0.045-0.08 over bursts). A threshold
# of 0.05 missed that frame for a few bursts and found the next one: outliers of exactly one frame
# (5.8 ms) that were the detector's, not the engine's (tests/test_live_engine.py).
ONSET_THRESHOLD = 0.01


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


# ----------------------------------------------------------------------------- translators
def random_translator(seed: int = 0, scale: str = "cpu", layout: str = "frame",
                      compile: bool = False):
    """The default preset (production codecs ``02_audio_codec/audio_codec`` and
    ``04_emg_codec/emg_codec``, transformer ``05_transformer/te2`` in the ``frame`` layout, i.e.
    ``te2_frame``) at ``scale`` with random weights: the compute of the real thing, none of its
    sound. ``layout="flat"`` gives TE2 itself; ``compile``: see :class:`~mlmlmlm.stream.Translator`."""
    import torch

    from mlmlmlm.config import load_run_config
    from mlmlmlm.models.codec import Codec
    from mlmlmlm.models.transformer import TranslationTransformer
    from mlmlmlm.stream import Translator

    torch.manual_seed(seed)
    cfg = load_run_config("05_transformer/te2", scale, overrides={"model.layout": layout})
    codecs = []
    for run in (cfg.codecs.audio, cfg.codecs.emg):
        c = Codec(load_run_config(run, scale).model)
        c(0.1 * torch.randn(4, c.cfg.in_channels, 256 * c.cfg.hop))  # k-means init: 1024 frames
        codecs.append(c.eval())
    return Translator(TranslationTransformer(cfg.model).eval(), *codecs, compile=compile)


def trained_translator(run: str, scale: str = "cpu", compile: bool = False):
    """The translator of a trained run (``<phase>/<run>`` or its folder), or a one-line LiveError."""
    from mlmlmlm.live.app import load_translator

    return load_translator(run, scale, envelope=False, compile=compile)


# ----------------------------------------------------------------------------- measurements
def _stats_ms(x) -> dict:
    x = 1000.0 * np.asarray(x, float)
    return {"p50": float(np.percentile(x, 50)), "p99": float(np.percentile(x, 99)),
            "max": float(x.max()), "mean": float(x.mean()), "n": int(x.size)}


def _spread_ms(x) -> dict | None:
    x = 1000.0 * np.asarray(x, float)
    return {"mean": float(x.mean()), "sd": float(x.std()), "min": float(x.min()),
            "max": float(x.max())} if x.size else None


def compute_per_frame(translator, seconds: float = 10.0, chunk: int | None = None) -> dict:
    """Per-frame compute of ``translator`` on ``seconds`` of random EMG pushed ``chunk`` EMG
    samples at a time (default one EMG hop; the engine pushes a Bela buffer's worth)."""
    rng = np.random.default_rng(0)
    emg = (0.3 * rng.standard_normal((6, int(seconds * translator.emg_sr)))).astype(np.float32)
    prompt = (0.1 * rng.standard_normal(4 * translator.audio_hop)).astype(np.float32)
    r = streaming_rtf(translator, emg, prompt, chunk)
    times = np.asarray(translator.frame_times)
    return {"chunk_emg_samples": chunk or translator.emg_hop, "frame_ms": _stats_ms(times),
            "frame_period_ms": 1000.0 * r["frame_period_s"], "rtf": r["rtf"],
            "rtf_p99": r["p99"] / r["frame_period_s"], "start_ms": 1000.0 * r["start_s"]}


def latency_budget(translator, board_sr: float, playout_ms: float, out_block: int,
                   out_device_ms: float = 0.0, interleaved: bool = False) -> dict:
    """The algorithmic latency from an EMG sample's capture to its sound, by part (ms);
    ``interleaved``: the board's one-variable layout of 128-frame buffers (else 1024)."""
    from mlmlmlm.live.sources import StreamResampler

    frame_ms = 1000.0 * translator.audio_hop / translator.audio_sr
    parts = {
        "bela_buffer_ms": 1000.0 * buffer_frames(interleaved) / board_sr,  # one pybela buffer
        "resampler_ms": 1000.0 * StreamResampler(board_sr, translator.emg_sr, 6).delay
        / translator.emg_sr,
        "emg_hop_ms": 1000.0 * translator.emg_hop / translator.emg_sr,
        "audio_hop_ms": frame_ms,
        "lookahead_ms": max(0.0, translator.latency_ms - frame_ms),
        "playout_ms": playout_ms,
        "output_block_ms": 1000.0 * out_block / translator.audio_sr,
        "output_device_ms": out_device_ms,
    }
    # A Bela buffer is whole frames (1024 = 4 x 256 board frames = 4 x 32 EMG samples; 128 =
    # one frame of the low-latency preset): the frame an onset falls in is complete when its
    # buffer is, so the hops add nothing after it.
    # The output block is where a sample is copied out, not a wait: it is listed, not added.
    total = sum(v for k, v in parts.items() if k not in ("emg_hop_ms", "audio_hop_ms",
                                                         "output_block_ms"))
    return parts | {"total_ms": total, "note": "total = bela_buffer + resampler + lookahead + "
                    "playout + output_device (hops fall inside the buffer)"}


def _instrument(folder, seconds: float, sr: float, start_s: float):
    """Write ``folder/instrument.wav``: silence, then from ``start_s`` a 220-Hz tone at 0.3 (a
    bowed note the trigger fires on), ``seconds`` long in all; returns its path."""
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    audio = np.where(t > start_s, 0.3 * np.sin(2 * np.pi * 220 * t), 0.0).astype(np.float32)
    path = folder / "instrument.wav"
    sf.write(path, audio, int(sr))
    return path


def _engine(translator, src, instrument, sr: float, block: int, playout_ms: float, tap):
    """An engine from ``src`` and the instrument file onto the output clock (``tap``: called
    with each block it copies out, or None), running until stopped, quiet."""
    from mlmlmlm.live.audio_io import ClockOutput, FileInput
    from mlmlmlm.live.engine import Engine, EngineConfig

    cfg = EngineConfig(playout_ms=playout_ms, block=block, end_on_silence=False)
    return Engine(translator, src, FileInput(instrument, sr, block),
                  lambda ring, _tap: ClockOutput(ring, block, tap), cfg, log=lambda m: None)


def end_to_end(translator, seconds: float = 62.0, period_s: float = 1.1, playout_ms: float = 40.0,
               board_sr: float = 22050.0, block: int = 256, lead_s: float = 3.0,
               seed: int = 0, interleaved: bool = False) -> dict:
    """Replay EMG onsets through the emulator and pybela into the engine; onset to sound (ms).
    ``interleaved``: the emulator serves the one-variable layout (128-frame buffers).

    Onsets sit on EMG-frame boundaries at random places in Bela's buffers (a frame model answers
    an onset inside a frame at the frame's start: that quantisation is the model's, not the
    engine's). ``latency_ms``: play time on the output clock (a sound card's steady clock, which
    :class:`ClockOutput` keeps); ``latency_by_read_ms``: by the wall time the output thread
    actually copied the sample out (adds that thread's wake-up jitter on a busy machine).
    """
    import tempfile
    from pathlib import Path

    from mlmlmlm.live.sources import EmulatorEmgSource

    n_onsets = max(1, int(seconds / period_s) - 1)
    frame = round(board_sr / translator.emg_sr) * translator.emg_hop  # board frames per hop
    emg, onsets = onset_emg(n_onsets, period_s, board_sr, align=frame, seed=seed)
    sr = translator.audio_sr
    # As on stage, the board streams a while before the violist plays: the instrument starts
    # at lead_s (the engine has then seen enough buffers to know their earliest arrival), the
    # EMG onsets after it (the EMG clock starts when pybela connects, within lead_s); both go
    # on 2 s past the last onset, silent EMG longer, so the phrase ends with the audio.
    lead = round(lead_s * board_sr / BLOCK) * BLOCK  # whole buffers: the onsets stay on frames
    onsets = onsets + lead
    emg = np.concatenate([np.zeros((6, lead), np.float32), emg,
                          np.zeros((6, int(4.0 * board_sr)), np.float32)], axis=1)
    reads: list[tuple[float, np.ndarray]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = _instrument(Path(tmp), onsets[-1] / board_sr + 2.0, sr, lead_s)
        src = EmulatorEmgSource(emg, board_sr, loop=False, quiet=True, interleaved=interleaved)
        eng = _engine(translator, src, path, sr, block, playout_ms,
                      lambda x: reads.append((time.monotonic(), x)))
        eng.start()
        eng.wait(until_end=True, every_s=0.05)
        summary = eng.stop()
    y = np.concatenate([x for _, x in reads])
    ends = np.cumsum([len(x) for _, x in reads])
    read_t = np.array([t for t, _ in reads])
    got = detect_onsets(y, sr, threshold=ONSET_THRESHOLD, min_gap_s=0.5 * period_s)
    lat, lat_read = [], []
    for f in onsets:
        t_emg = src.emulator.frame_time(f)
        for p in got:
            t_play = eng.clock.time_of(p / sr)  # the output clock (a sound card's steady one)
            if 0 <= t_play - t_emg < 0.5:
                k = int(np.searchsorted(ends, p, side="right"))  # the read that copied p out
                lat.append(t_play - t_emg)
                if k < len(read_t):
                    lat_read.append(read_t[k] - (ends[k] - p) / sr - t_emg)
                break
    return {"onsets": len(onsets), "matched": len(lat), "seconds": eng.clock.seconds(),
            "latency_ms": _spread_ms(lat), "latency_by_read_ms": _spread_ms(lat_read),
            "underrun_blocks": summary["underrun_blocks"],
            "underrun_samples": summary["underrun_samples"], "phrases": summary["phrases"],
            "errors": summary["errors"], "buffer_frames": buffer_frames(interleaved)}


def underruns_real_time(translator, seconds: float = 62.0, playout_ms: float = 40.0,
                        board_sr: float = 22050.0, block: int = 256,
                        interleaved: bool = False) -> dict:
    """The translator in the engine, real time, ``seconds`` long: underruns, phrases, overloads
    and the engine's compute per pushed Bela buffer (ms). EMG bursts come from the emulator
    through pybela, the emulator in **a process of its own** (``python -m mlmlmlm.live.emulator``),
    as a board is a machine of its own: in this process its sending would take the engine's
    interpreter time (run in-process, the engine's compute per buffer doubled). ``translator``
    may be a :class:`~mlmlmlm.live.worker.TranslatorProcess` (as ``mlmlmlm live`` runs one)."""
    import socket
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import soundfile as sf

    from mlmlmlm.live.sources import BelaEmgSource

    emg, _ = onset_emg(max(1, int(seconds / 1.1) - 1), 1.1, board_sr, seed=0)
    sr = translator.audio_sr
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        sf.write(Path(tmp) / "board.emg.wav", emg.T, int(board_sr), subtype="FLOAT")
        instrument = _instrument(Path(tmp), seconds, sr, 1.0)
        board = subprocess.Popen(
            [sys.executable, "-m", "mlmlmlm.live.emulator", "--file", str(Path(tmp) / "board.emg.wav"),
             "--sr", str(board_sr), "--port", str(port), "--duration", str(seconds + 30),
             *(["--interleaved"] if interleaved else [])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            line = board.stdout.readline()  # "Bela emulator: ..." once it listens
            if "Bela emulator" not in line:
                raise RuntimeError(f"the emulator process did not start: {line.strip()}")
            src = BelaEmgSource("127.0.0.1", port, quiet=True)
            eng = _engine(translator, src, instrument, sr, block, playout_ms, None)
            eng.start()
            eng.wait(seconds, every_s=0.05)
            summary = eng.stop()
        finally:
            board.terminate()
            board.wait(10)
    c = np.asarray(list(eng.compute_ms), float)
    return {"seconds": eng.clock.seconds(), "board": "emulator in its own process",
            "buffer_frames": buffer_frames(interleaved),
            "compute_ms_per_buffer": _spread_ms(c / 1000.0) if c.size else None,
            **{k: summary[k] for k in ("underrun_blocks", "underrun_samples", "phrases",
                                       "overloads", "errors")}}


def bench_stream(run: str | None = None, seconds: float = 62.0, playout_ms: float = 40.0,
                 real_time_s: float | None = None, compile: bool = False,
                 interleaved: bool = False) -> dict:
    """Everything ``mlmlmlm bench stream --json`` prints (see the module doc); the underrun run
    lasts ``real_time_s`` (default ``seconds``). With ``compile`` the compiled translator's
    compute is measured beside the eager one's (``compiled``) and the underrun run uses it;
    ``interleaved``: the board's one-variable layout (128-frame buffers) throughout."""
    import os

    import torch

    torch.set_num_threads(1)  # one frame is too small for two threads on a busy machine
    tr = trained_translator(run) if run else random_translator()
    bela_chunk = buffer_frames(interleaved) // 8  # EMG samples in one buffer (22.05 -> 2.76 kHz)
    out = {"translator": run or "random weights, default preset (audio_codec, emg_codec, "
           "te2_frame at the cpu scale)", "threads": 1, "cpu_count": os.cpu_count(),
           "compute": compute_per_frame(tr),
           "compute_bela_chunks": compute_per_frame(tr, chunk=bela_chunk),
           "algorithmic": latency_budget(tr, 22050.0, playout_ms, 256,
                                         interleaved=interleaved)}
    make = (trained_translator, run, "cpu") if run else (random_translator, 0, "cpu", "frame")
    if compile:
        trc = make[0](*make[1:], True)
        out["compiled"] = {"compute": compute_per_frame(trc),
                           "compute_bela_chunks": compute_per_frame(trc, chunk=bela_chunk)}
        make = (*make, True)
    env = EnvelopeTranslator(tr.audio_sr, tr.emg_sr, tr.audio_hop, tr.emg_hop)  # its hops
    out["end_to_end"] = end_to_end(env, seconds, playout_ms=playout_ms,
                                   interleaved=interleaved) | {
        "translator": "EnvelopeTranslator (one frame, no compute): the engine's latency"}
    from mlmlmlm.live.worker import TranslatorProcess

    # as `mlmlmlm live` runs it: the translator in a process of its own (mlmlmlm/live/worker.py)
    with TranslatorProcess(*make) as rt:
        out["real_time"] = underruns_real_time(rt, real_time_s or seconds, playout_ms,
                                               interleaved=interleaved) | {
            "translator": out["translator"] + ", in its own process"
                          + (", compiled" if compile else ""),
            "translator_compute_ms_per_call": 1000.0 * rt.compute_s / max(1, rt.calls)}
    return out


def streaming_rtf(translator, emg: np.ndarray, prompt: np.ndarray | None,
                  chunk: int | None = None) -> dict:
    """Run ``emg`` [C, n] through a translator started from ``prompt`` in chunks of ``chunk``
    EMG samples (default one EMG hop, as a live board delivers) and summarise its compute.

    Returns
    -------
    dict: ``rtf`` (compute over the audio duration produced), ``p50``, ``p99``, ``max``
    (per-frame compute, seconds), ``frames``, ``frame_period_s``, ``wall_rtf`` (the whole push
    loop by the clock), ``cpu_rtf`` (the CPU time this process spent in it: on a machine busy
    with other work, and one torch thread, closer to what an idle core would take) and
    ``start_s`` (encoding and priming the prompt).
    """
    from mlmlmlm.stream import StreamError

    chunk = chunk or translator.emg_hop
    translator.start(prompt)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, emg.shape[1], chunk):
        translator.push_emg(emg[:, i:i + chunk])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    times = np.asarray(translator.frame_times)
    if not times.size:
        raise StreamError("no frame was generated: the EMG is shorter than one frame + lookahead")
    period = 1.0 / translator.frame_rate
    p50, p99 = np.percentile(times, [50, 99])
    return {"rtf": float(times.sum() / (times.size * period)), "p50": float(p50),
            "p99": float(p99), "max": float(times.max()), "frames": int(times.size),
            "frame_period_s": period, "wall_rtf": wall / (times.size * period),
            "cpu_rtf": cpu / (times.size * period), "start_s": translator.start_seconds}
