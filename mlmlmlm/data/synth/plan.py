"""A violist's plan for a list of notes: bowing (strokes, direction, velocity, force), left hand
(string, position, shifts) and vibrato, as continuous control curves at 100 Hz.

Introduced in notebook 01_dataset.

The curves saved with each recording (``controls.npz``) are the ground truth for evaluation:
``bow_force`` (N), ``bow_velocity`` (m/s, + down-bow), ``vibrato_depth`` (cents, peak),
``vibrato_rate`` (Hz, 0 without vibrato), ``string`` (0 C, 1 G, 2 D, 3 A), ``pitch`` (MIDI, with
vibrato; 0 in rests) and ``loudness_db`` (added after rendering).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from mlmlmlm.data.synth.score import NoteEvents

RATE = 100  # control rate, Hz
OPEN_STRINGS = np.array([48, 55, 62, 69])  # viola C3 G3 D4 A4
BOW_LENGTH_M = 0.64
MAX_FORCE_N = 2.5
SAVED = ("bow_force", "bow_velocity", "vibrato_depth", "vibrato_rate", "string", "pitch")


@dataclass
class Plan:
    """Control curves [T_c] at :data:`RATE` Hz (the saved six, see module docstring) plus what the
    EMG model needs: ``dynamics`` [T_c] in [0, 1], ``note`` [T_c] note index (-1 in rests),
    ``position`` [T_c] semitones above the open string, ``vibrato_phase`` [T_c] radians,
    ``bow_change`` and ``shift`` [T_c] impulse trains (1 at a bow change / position shift),
    ``expression`` [T_c] in [0, 1] (the amplitude the bow draws, for the renderer), and per note
    ``note_string`` [N], ``note_cents`` [N] (intonation), ``note_slurred`` [N] (bool: no re-bow).
    """

    bow_force: np.ndarray
    bow_velocity: np.ndarray
    vibrato_depth: np.ndarray
    vibrato_rate: np.ndarray
    string: np.ndarray
    pitch: np.ndarray
    dynamics: np.ndarray
    note: np.ndarray
    position: np.ndarray
    vibrato_phase: np.ndarray
    bow_change: np.ndarray
    shift: np.ndarray
    expression: np.ndarray
    note_string: np.ndarray
    note_cents: np.ndarray
    note_slurred: np.ndarray

    def controls(self) -> dict[str, np.ndarray]:
        """The saved curves as float32 (``loudness_db`` is added by the builder)."""
        return {k: getattr(self, k).astype(np.float32) for k in SAVED}


def phrase_dynamics(ev: NoteEvents, n: int, rng: np.random.Generator) -> np.ndarray:
    """A dynamics curve [n] in [0, 1] for ``ev``: the score's marks (held until the next one),
    an arch (crescendo-diminuendo) per phrase, phrases split at rests ≥ 0.3 s or every 3-8 s, and
    a little note-to-note variation; smoothed over 150 ms."""
    t = np.arange(n) / RATE
    base = np.full(n, rng.uniform(0.4, 0.6))
    if len(ev):
        marks = np.where(np.isnan(ev.dyn), np.nan, 0.15 + 0.85 * ev.dyn)
        idx = np.clip(np.searchsorted(ev.onset, t, side="right") - 1, 0, len(ev) - 1)
        have = ~np.isnan(marks[idx]) & (t >= ev.onset[0])
        base[have] = marks[idx][have]
    # phrase boundaries
    bounds = [0.0]
    for k in range(1, len(ev)):
        gap = ev.onset[k] - (ev.onset[k - 1] + ev.dur[k - 1])
        if gap >= 0.3 or ev.onset[k] - bounds[-1] > rng.uniform(3.0, 8.0):
            bounds.append(float(ev.onset[k]))
    bounds.append(n / RATE)
    arch = np.zeros(n)
    for a, b in itertools.pairwise(bounds):
        i0, i1 = int(a * RATE), max(int(b * RATE), int(a * RATE) + 1)
        u = np.linspace(0.0, 1.0, i1 - i0)
        peak, height = rng.uniform(0.35, 0.75), rng.uniform(-0.05, 0.25)
        shape = np.where(u < peak, u / peak, (1 - u) / (1 - peak))
        arch[i0:i1] = height * (np.sin(0.5 * np.pi * shape) - 0.4)
    d = base + arch
    if len(ev):
        jitter = rng.normal(0.0, 0.04, len(ev))
        idx = np.clip(np.searchsorted(ev.onset, t, side="right") - 1, 0, len(ev) - 1)
        d = d + jitter[idx]
    return np.clip(ndi.uniform_filter1d(d, 15, mode="nearest"), 0.05, 1.0)


def choose_strings(midi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """String index [N] per note: the lowest position that reaches the note, but stay on the
    current string while the note lies within a fifth above it (fewer crossings, as players do)."""
    out = np.zeros(len(midi), dtype=np.int64)
    cur = 2
    for k, m in enumerate(midi):
        ok = np.flatnonzero((OPEN_STRINGS <= m) & (m - OPEN_STRINGS <= 14))
        if len(ok) == 0:
            cur = 0 if m < OPEN_STRINGS[0] else 3
        elif cur in ok and m - OPEN_STRINGS[cur] <= 7 and rng.random() < 0.85:
            pass
        else:
            cur = int(ok[-1])  # highest string that reaches = lowest position
        out[k] = cur
    return out


def plan_controls(
    ev: NoteEvents, duration_s: float, dynamics: np.ndarray, rng: np.random.Generator
) -> Plan:
    """Turn notes and a dynamics curve into the bowing / left-hand / vibrato plan.

    Parameters
    ----------
    ev : notes in seconds, inside ``[0, duration_s)``.
    duration_s : recording length (a multiple of 0.02 s).
    dynamics : [T_c] in [0, 1] at :data:`RATE` Hz, T_c = duration_s * RATE.
    """
    n = round(duration_s * RATE)
    note = np.full(n, -1, dtype=np.int64)
    on_i = np.clip(np.round(ev.onset * RATE).astype(np.int64), 0, n)
    off_i = np.clip(np.round((ev.onset + ev.dur) * RATE).astype(np.int64), 0, n)
    for k in range(len(ev)):
        note[on_i[k] : max(off_i[k], on_i[k] + 1)] = k
    playing = note >= 0
    strings = choose_strings(ev.midi, rng)
    semis = ev.midi - OPEN_STRINGS[strings]
    cents = rng.normal(0.0, 3.0, len(ev))

    # --- bow strokes: a new stroke per note unless slurred to the previous one
    gap = np.r_[np.inf, ev.onset[1:] - (ev.onset[:-1] + ev.dur[:-1])]
    slurred = np.r_[False, (ev.slur[1:] >= 0) & (ev.slur[1:] == ev.slur[:-1])] & (gap < 0.05)
    stroke = np.cumsum(~slurred) - 1
    vel = np.zeros(n)
    bow_change = np.zeros(n)
    direction = 1.0
    last_end = -np.inf
    for s in range(stroke[-1] + 1 if len(ev) else 0):
        ks = np.flatnonzero(stroke == s)
        a, b = on_i[ks[0]], max(off_i[ks[-1]], on_i[ks[0]] + 1)
        if ev.onset[ks[0]] - last_end > 1.0:
            direction = 1.0  # after a long rest the player retakes and starts down-bow
        dur = (b - a) / RATE
        dyn = float(dynamics[a:b].mean())
        # The speed the player wants (louder = faster), limited by the bow's length.
        want = (0.2 + 0.55 * dyn) * (1.3 if dur < 0.3 else 1.0)
        speed = max(min(want, 0.95 * BOW_LENGTH_M / max(dur, 0.05)), 0.05)
        u = np.arange(b - a) / RATE
        ramp = np.minimum(1.0, np.minimum((u + 0.5 / RATE) / 0.03, (dur - u) / 0.03))
        vel[a:b] = direction * speed * np.clip(ramp, 0.0, 1.0)
        bow_change[a] = 1.0
        direction = -direction
        last_end = ev.onset[ks[-1]] + ev.dur[ks[-1]]

    # --- bow force follows dynamics while the bow is on the string, lifts in rests
    on_string = ndi.uniform_filter1d(playing.astype(float), 5, mode="nearest")
    force = (0.25 + 0.85 * MAX_FORCE_N * dynamics**1.2) * on_string
    force = ndi.uniform_filter1d(force, 3, mode="nearest")
    accent = np.zeros(n)
    accent[on_i[on_i < n]] = rng.uniform(0.0, 0.25, np.count_nonzero(on_i < n))
    force = np.maximum(force + MAX_FORCE_N * ndi.gaussian_filter1d(accent, 2.0) * on_string, 0.0)

    # --- left hand: string, position (semitones above open), shifts
    string = np.full(n, float(strings[0]) if len(ev) else 2.0)
    position = np.zeros(n)
    shift = np.zeros(n)
    hand = np.maximum(semis - 4, 0) // 2  # hand position index: 1st position covers 0-5 semitones
    for k in range(len(ev)):
        a = on_i[k]
        string[a:] = strings[k]
        position[a:] = semis[k]
        if k and hand[k] != hand[k - 1]:
            shift[max(a - 3, 0)] = 1.0  # the shift happens just before the new note
    pitch_nominal = np.where(
        playing, ev.midi[np.maximum(note, 0)] + cents[np.maximum(note, 0)] / 100, 0.0
    )

    # --- vibrato: long stopped notes, depth grows after an onset delay
    depth = np.zeros(n)
    rate = np.zeros(n)
    for k in range(len(ev)):
        a, b = on_i[k], off_i[k]
        if ev.dur[k] < 0.25 or semis[k] == 0 or b <= a:
            continue
        u = np.arange(b - a) / RATE
        delay = rng.uniform(0.1, 0.3)
        target = rng.uniform(8.0, 14.0) + 22.0 * float(dynamics[a:b].mean())
        grow = np.clip((u - delay) / 0.25, 0.0, 1.0)
        fade = np.clip((ev.dur[k] - u) / 0.08, 0.0, 1.0)
        depth[a:b] = target * grow * fade
        r0 = rng.uniform(5.0, 6.5)
        rate[a:b] = r0 + 0.3 * np.sin(2 * np.pi * u / rng.uniform(1.5, 3.0) + rng.uniform(0, 6.3))
    rate[depth <= 0.01] = 0.0
    depth[depth <= 0.01] = 0.0
    phase = 2 * np.pi * np.cumsum(np.where(rate > 0, rate, 5.5)) / RATE
    pitch = np.where(playing, pitch_nominal + depth / 100.0 * np.sin(phase), 0.0)

    # --- what the bow draws: force and speed both raise the amplitude (Schelleng-style)
    vnorm = np.abs(vel) / 0.5
    expression = np.clip((force / MAX_FORCE_N) ** 0.6 * np.minimum(vnorm, 1.6) ** 0.35, 0.0, 1.0)
    return Plan(
        bow_force=force,
        bow_velocity=vel,
        vibrato_depth=depth,
        vibrato_rate=rate,
        string=string,
        pitch=pitch,
        dynamics=np.asarray(dynamics, dtype=np.float64),
        note=note,
        position=position,
        vibrato_phase=phase,
        bow_change=bow_change,
        shift=shift,
        expression=expression,
        note_string=strings,
        note_cents=cents,
        note_slurred=slurred,
    )
