"""Viola sound from a plan: a sampled viola (SoundFont, via tinysoundfont) under continuous
expression and pitch-bend control, or a built-in bowed-string model when no SoundFont exists;
then bow noise, a small room and a noise floor.

Introduced in notebook 01_dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.signal as ss

from mlmlmlm.data.synth.plan import RATE, Plan
from mlmlmlm.data.synth.score import NoteEvents

AUDIO_SR = 44100
DEFAULT_SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
VIOLA_PRESET = 41  # General MIDI program 42 "Viola", 0-based
BLOCK = 128  # samples between control updates (2.9 ms)
BEND_RANGE = 2.0  # semitones
PEAK_DBFS = -1.0
BUILTIN = "built-in bowed-string model"

_SYNTHS: dict[str, object] = {}  # one loaded SoundFont per process (loading takes ~1 s)


def sound_source(sf2: Path | None) -> str:
    """Human-readable name of the source :func:`render` will use for ``sf2``."""
    if sf2 is None or not Path(sf2).is_file():
        return BUILTIN
    p = Path(sf2)
    if p.name == "FluidR3_GM.sf2":
        return "FluidR3_GM.sf2 Viola (Debian fluid-soundfont-gm)"
    return f"{p.name} preset {VIOLA_PRESET} (Viola)"


def _synth(sf2: Path):
    import tinysoundfont

    key = str(sf2)
    if key not in _SYNTHS:
        synth = tinysoundfont.Synth(samplerate=AUDIO_SR)
        sfid = synth.sfload(key)
        synth.program_select(0, sfid, 0, VIOLA_PRESET)
        _SYNTHS[key] = synth
    return _SYNTHS[key]


def _control_at(curve: np.ndarray, n: int, step: int) -> np.ndarray:
    """Linear interpolation of a [T_c] control curve onto ``n`` points every ``step`` samples."""
    t = (np.arange(n) * step + 0.5 * step) / AUDIO_SR
    return np.interp(t, np.arange(len(curve)) / RATE, curve)


def render_sampled(
    plan: Plan, ev: NoteEvents, n_samples: int, sf2: Path, rng: np.random.Generator
) -> np.ndarray:
    """Play ``ev`` on the SoundFont viola. Expression (CC11 + CC43, 14 bit) follows
    ``plan.expression``; vibrato and intonation are pitch bend; both are updated every
    :data:`BLOCK` samples. Note on/off land on block boundaries. Returns mono float32 [n_samples].

    The synth is shared per process: it is silenced and its controllers reset first, so the
    output does not depend on what was rendered before.
    """
    synth = _synth(Path(sf2))
    synth.sounds_off(0)
    synth.control_change(0, 121, 0)  # reset all controllers
    synth.pitchbend_range(0, BEND_RANGE)
    synth.pitchbend(0, 8192)
    synth.generate_simple(AUDIO_SR // 2)  # let released voices die
    n_blocks = -(-n_samples // BLOCK)
    # Amplitude a -> CC11 value v with a = (v/127)^3 (measured for tinysoundfont's volume curve).
    expr = np.clip(_control_at(plan.expression, n_blocks, BLOCK), 0.0, 1.0)
    cc14 = np.round(16383 * expr ** (1 / 3)).astype(np.int64)
    # Pitch bend = vibrato (interpolated) + the sounding note's intonation offset, in cents.
    vib = _control_at(plan.vibrato_depth * np.sin(plan.vibrato_phase), n_blocks, BLOCK)
    frame = np.minimum((np.arange(n_blocks) * BLOCK) * RATE // AUDIO_SR, len(plan.note) - 1)
    note_at = plan.note[frame]
    intonation = (
        np.where(note_at >= 0, plan.note_cents[np.maximum(note_at, 0)], 0.0) if len(ev) else 0.0
    )
    cents = vib + intonation
    bend = np.clip(np.round(8192 + cents / (100 * BEND_RANGE) * 8192), 0, 16383).astype(np.int64)

    # Note events in block units: (block, is_on, key, velocity)
    events = []
    release = np.where(plan.note_slurred[1:], 0.0, 0.04) if len(ev) > 1 else np.zeros(0)
    for k in range(len(ev)):
        b_on = int(ev.onset[k] * AUDIO_SR) // BLOCK
        end = ev.onset[k] + ev.dur[k] - (release[k] if k < len(release) else 0.0)
        b_off = max(int(end * AUDIO_SR) // BLOCK, b_on + 1)
        a = float(plan.dynamics[min(int(ev.onset[k] * RATE), len(plan.dynamics) - 1)])
        vel = int(
            np.clip(60 + 55 * a + rng.normal(0, 4) - (25 if plan.note_slurred[k] else 0), 20, 127)
        )
        for key in {int(ev.midi[k]), int(ev.midi2[k])} - {0}:
            events.append((b_off, 0, key, 0))
            events.append((b_on, 1, key, vel))
    events.sort()
    out = np.zeros((n_blocks * BLOCK, 2), dtype=np.float32)
    view = memoryview(out).cast("B")
    nb = BLOCK * 8  # bytes per block (stereo float32)
    j = 0
    prev_cc, prev_bend = -1, -1
    for b in range(n_blocks):
        while j < len(events) and events[j][0] <= b:
            _, is_on, key, vel = events[j]
            if is_on:
                synth.noteon(0, key, vel)
            else:
                synth.noteoff(0, key)
            j += 1
        if cc14[b] != prev_cc:
            synth.control_change(0, 11, int(cc14[b] >> 7))
            synth.control_change(0, 43, int(cc14[b] & 127))
            prev_cc = cc14[b]
        if bend[b] != prev_bend:
            synth.pitchbend(0, int(bend[b]))
            prev_bend = bend[b]
        synth.generate_simple(BLOCK, buffer=view[b * nb : (b + 1) * nb])
    synth.sounds_off(0)
    return out[:n_samples].mean(axis=1)


def render_builtin(plan: Plan, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Bowed-string model without samples: a band-limited sawtooth (polyBLEP) following the
    plan's pitch, brightness rising with bow force, through three body resonances; amplitude
    from ``plan.expression``. Returns mono float32 [n_samples]."""
    t = np.arange(n_samples) / AUDIO_SR
    tc = np.arange(len(plan.pitch)) / RATE
    held = plan.pitch.copy()
    for i in range(1, len(held)):  # hold the last pitch through rests (no glides to 0 Hz)
        if held[i] <= 0:
            held[i] = held[i - 1]
    held[held <= 0] = 60.0
    f0 = 440.0 * 2 ** ((np.interp(t, tc, held) - 69) / 12)
    dt = f0 / AUDIO_SR
    phase = np.cumsum(dt) % 1.0
    saw = 2 * phase - 1
    # polyBLEP: remove the aliasing step at each wrap
    m = phase < dt
    x = phase[m] / dt[m]
    saw[m] -= x + x - x * x - 1
    m = phase > 1 - dt
    x = (phase[m] - 1) / dt[m]
    saw[m] -= x * x + x + x + 1
    force = np.interp(t, tc, plan.bow_force) / 2.5
    dark = ss.lfilter(*ss.butter(1, 1200, fs=AUDIO_SR), saw)
    tone = dark + np.clip(force, 0, 1) * (saw - dark)
    body = tone * 0.5
    for fc, q, g in ((280.0, 4.0, 1.0), (450.0, 3.0, 0.8), (2600.0, 2.0, 0.5)):
        b, a = ss.iirpeak(fc, q, fs=AUDIO_SR)
        body = body + g * ss.lfilter(b, a, tone)
    amp = np.interp(t, tc, plan.expression)
    return (body * amp).astype(np.float32)


def finish(
    x: np.ndarray, plan: Plan, rng: np.random.Generator, room_rng: np.random.Generator
) -> np.ndarray:
    """Add rosin/bow noise (band-passed noise following bow speed x force), brightness that
    follows bow force, a small room (0.5 s RT60, mixed at -16 dB) and a noise floor at -72 dBFS,
    then normalise the peak to :data:`PEAK_DBFS`. Returns float32 [T]."""
    n = len(x)
    t = np.arange(n) / AUDIO_SR
    tc = np.arange(len(plan.pitch)) / RATE
    x = x / (np.abs(x).max() + 1e-9)
    force = np.interp(t, tc, plan.bow_force) / 2.5
    bright = ss.sosfilt(ss.butter(2, 2500, "high", fs=AUDIO_SR, output="sos"), x)
    x = x + 0.6 * (np.clip(force, 0, 1) - 0.4) * bright
    bow = np.interp(t, tc, np.abs(plan.bow_velocity) * plan.bow_force)
    hiss = ss.sosfilt(
        ss.butter(2, [1500, 7000], "band", fs=AUDIO_SR, output="sos"), rng.standard_normal(n)
    )
    x = x + 0.006 * np.sqrt(bow) * hiss
    # Room: exponentially decaying noise with a lowpass, same room for the whole corpus.
    rt60 = 0.5
    ir_n = int(0.6 * AUDIO_SR)
    ir = room_rng.standard_normal(ir_n) * np.exp(-6.9 * np.arange(ir_n) / (rt60 * AUDIO_SR))
    ir = ss.sosfilt(ss.butter(1, 5000, fs=AUDIO_SR, output="sos"), ir)
    ir[: int(0.008 * AUDIO_SR)] = 0.0  # first reflections arrive after ~8 ms
    wet = ss.oaconvolve(x, ir)[:n]
    x = x + wet * (10 ** (-16 / 20) * np.std(x) / (np.std(wet) + 1e-12))
    pink = ss.lfilter(
        [0.049922, -0.095993, 0.050612, -0.004408],
        [1, -2.494956, 2.017265, -0.522189],
        rng.standard_normal(n),
    )
    x = x / (np.abs(x).max() + 1e-9)
    x = x + 10 ** (-72 / 20) * pink / (np.std(pink) + 1e-12)
    return (x * (10 ** (PEAK_DBFS / 20) / (np.abs(x).max() + 1e-12))).astype(np.float32)


def loudness_db(x: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS level in dBFS of ``x`` [T] at :data:`RATE` Hz: 1024-sample Hann windows centred on
    each 10 ms frame. Returns float32 [n_frames], floored at -100 dB."""
    hop = AUDIO_SR // RATE
    pad = np.pad(np.asarray(x, dtype=np.float64), (512, 512 + hop * n_frames))
    idx = np.arange(n_frames)[:, None] * hop + np.arange(1024)[None, :]
    w = np.hanning(1024)
    power = (pad[idx] ** 2 * w).sum(axis=1) / w.sum()
    return (10 * np.log10(np.maximum(power, 1e-10))).astype(np.float32)


def render(
    plan: Plan,
    ev: NoteEvents,
    n_samples: int,
    sf2: Path | None,
    rng: np.random.Generator,
    room_rng: np.random.Generator,
) -> np.ndarray:
    """The finished recording's audio [n_samples] float32 at :data:`AUDIO_SR`: sampled viola when
    ``sf2`` exists, else the built-in model (see :func:`sound_source`)."""
    if sound_source(sf2) == BUILTIN:
        dry = render_builtin(plan, n_samples, rng)
    else:
        dry = render_sampled(plan, ev, n_samples, Path(sf2), rng)
    return finish(dry, plan, rng, room_rng)
