"""Viola lines from the music21 corpus (string quartets by Haydn, Mozart and Beethoven) as note
events in seconds, cut into recordings of a chosen length.

Introduced in notebook 01_dataset.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

# Works whose viola parts make the synthetic-driven splits, in build order (the seed rotates the
# start). Each parses in under ~1.5 s; together ~4,800 quarter notes, ~40 min at the tempi below.
WORKS = (
    "haydn/opus74no1/movement1.mxl",
    "mozart/k155/movement1.mxl",
    "haydn/opus1no1/movement3.mxl",
    "mozart/k80/movement1.mxl",
    "haydn/opus74no1/movement2.mxl",
    "mozart/k80/movement2.mxl",
    "haydn/opus74no1/movement4.mxl",
    "mozart/k155/movement2.mxl",
    "haydn/opus1no1/movement1.mxl",
    "mozart/k80/movement4.mxl",
    "haydn/opus74no1/movement3.mxl",
    "mozart/k155/movement3.mxl",
    "haydn/opus1no1/movement2.mxl",
    "mozart/k80/movement3.mxl",
    "haydn/opus1no1/movement5.mxl",
    "haydn/opus1no1/movement4.mxl",
)
# Held out from the synthetic splits: the phrases that real EMG envelopes play (test_real).
REAL_WORKS = ("mozart/k156/movement2.mxl", "mozart/k156/movement1.mxl")

MIN_RECORDING_S = 8.0  # longer than one 6-s training window

# Quarter-note tempo by time signature when the score has no metronome mark.
DEFAULT_BPM = {"2/2": 150.0, "2/4": 96.0, "3/4": 120.0, "4/4": 104.0, "3/8": 132.0, "6/8": 150.0}


@dataclass(frozen=True)
class ViolaLine:
    """The viola part of one movement, in quarter notes.

    Arrays [N]: ``onset_q``, ``dur_q``; ``midi`` top pitch, ``midi2`` second pitch of a double
    stop (0 = none); ``slur`` group id (-1 = not slurred); ``dyn`` score dynamic in [0, 1] at the
    onset (music21 ``volumeScalar``; NaN before the first mark). ``bpm``: quarter-note tempo.
    """

    source: str
    onset_q: np.ndarray
    dur_q: np.ndarray
    midi: np.ndarray
    midi2: np.ndarray
    slur: np.ndarray
    dyn: np.ndarray
    bpm: float


@dataclass(frozen=True)
class NoteEvents:
    """Notes in seconds. Arrays [N]: ``onset``, ``dur``, ``midi``, ``midi2``, ``slur``, ``dyn``
    (as in :class:`ViolaLine`)."""

    onset: np.ndarray
    dur: np.ndarray
    midi: np.ndarray
    midi2: np.ndarray
    slur: np.ndarray
    dyn: np.ndarray

    def __len__(self) -> int:
        return len(self.onset)

    def take(self, idx) -> NoteEvents:
        """Subset by index array or slice."""
        return NoteEvents(*(getattr(self, k)[idx] for k in _EVENT_KEYS))

    def shifted(self, dt: float) -> NoteEvents:
        return replace(self, onset=self.onset + dt)


_EVENT_KEYS = ("onset", "dur", "midi", "midi2", "slur", "dyn")


@dataclass(frozen=True)
class Excerpt:
    """One recording's notes: ``events`` start at ``lead_in`` s; ``duration_s`` covers the last
    release. ``source`` is ``music21:<corpus path>``, ``first_note`` the index in the line."""

    source: str
    events: NoteEvents
    duration_s: float
    bpm: float
    first_note: int


@functools.cache
def viola_line(path: str) -> ViolaLine:
    """Parse one corpus work and return its viola part (cached in memory per work).

    Chords keep their two highest pitches (a double stop); tied notes are merged.
    """
    from music21 import corpus, dynamics, meter, spanner, tempo

    score = corpus.parse(path)
    parts = [
        p
        for p in score.parts
        if "viola" in f"{p.partName} {p.getInstrument(returnDefault=True).instrumentName}".lower()
    ]
    if not parts:
        raise ValueError(f"music21:{path} has no part named Viola")
    flat = parts[0].flatten()
    notes = list(flat.notes)
    slur_of: dict[int, int] = {}
    for k, sl in enumerate(parts[0].spannerBundle.getByClass(spanner.Slur)):
        for el in sl.getSpannedElements():
            slur_of[id(el)] = k
    rows = []  # onset, dur, top, second, slur, tie-continues
    for n in notes:
        pitches = sorted(p.midi for p in n.pitches)
        tie = n.tie.type if n.tie is not None else None
        rows.append(
            [
                float(n.offset),
                float(n.quarterLength),
                pitches[-1],
                pitches[-2] if len(pitches) > 1 else 0,
                slur_of.get(id(n), -1),
                tie in ("start", "continue"),
            ]
        )
    merged: list[list] = []
    for r in rows:  # merge ties: extend the previous note instead of re-bowing
        if merged and merged[-1][5] and merged[-1][2] == r[2] and r[1] > 0:
            merged[-1][1] = r[0] + r[1] - merged[-1][0]
            merged[-1][5] = r[5]
        elif r[1] > 0:
            merged.append(list(r))
    a = np.array([m[:5] for m in merged], dtype=np.float64).reshape(-1, 5)
    marks = sorted(
        (float(d.offset), float(d.volumeScalar)) for d in flat.getElementsByClass(dynamics.Dynamic)
    )
    dyn = np.full(len(a), np.nan)
    for off, vol in marks:
        dyn[a[:, 0] >= off - 1e-9] = vol
    mm = [m.number for m in score.recurse().getElementsByClass(tempo.MetronomeMark) if m.number]
    ts = list(flat.getElementsByClass(meter.TimeSignature))
    bpm = float(mm[0]) if mm else DEFAULT_BPM.get(ts[0].ratioString if ts else "4/4", 108.0)
    return ViolaLine(
        source=path,
        onset_q=a[:, 0],
        dur_q=a[:, 1],
        midi=a[:, 2].astype(np.int64),
        midi2=a[:, 3].astype(np.int64),
        slur=a[:, 4].astype(np.int64),
        dyn=dyn,
        bpm=bpm,
    )


def to_events(
    line: ViolaLine, bpm: float, rng: np.random.Generator, max_rest_s: float = 1.2
) -> NoteEvents:
    """The line in seconds at ``bpm``: rests longer than ``max_rest_s`` are shortened to it (a
    quartet part rests for bars; a player practising the part does not), onsets get ±8 ms jitter
    and durations never overlap the next onset. Returns events starting at 0 s."""
    spq = 60.0 / bpm
    on, du = line.onset_q * spq, line.dur_q * spq
    ends = on + du
    gaps = np.r_[0.0, on[1:] - ends[:-1]]
    cut = np.clip(gaps - max_rest_s, 0.0, None)
    on = on - np.cumsum(cut) - on[0]
    on = on + rng.uniform(-0.008, 0.008, len(on)) * (np.arange(len(on)) > 0)
    on = np.maximum.accumulate(on)
    nxt = np.r_[on[1:], on[-1] + du[-1]]
    du = np.minimum(du, np.maximum(nxt - on, 0.03))
    return NoteEvents(
        on, du, line.midi.copy(), line.midi2.copy(), line.slur.copy(), line.dyn.copy()
    )


def _round_frames(t: float, step: float = 0.2) -> float:
    """Durations are whole multiples of 0.2 s so audio (44.1 kHz), EMG (22.05 kHz), the EMG
    model's internal rate (2.205 kHz) and controls (100 Hz) all have integer lengths."""
    return round(max(step, round(t / step) * step), 6)


def cut_recordings(
    total_s: float,
    rng: np.random.Generator,
    works: tuple[str, ...] = WORKS,
    start: int = 0,
    lead_in: float = 0.4,
    tail: float = 0.8,
) -> list[Excerpt]:
    """Cut the works (from ``works[start]`` on, cycling) into recordings totalling ``total_s``.

    Recordings last 30-90 s (60 s on average; when ``total_s`` < 3 min, three equal recordings of
    at least :data:`MIN_RECORDING_S`, one per split). Each work gets a tempo 0.88-1.12 times its default. A recording ends
    at a note boundary; its duration includes ``lead_in`` before the first note and ``tail``
    after the last release.
    """
    n_rec = max(3, round(total_s / 60.0))
    mean_len = max(total_s / n_rec, MIN_RECORDING_S)
    total_s = max(total_s, n_rec * mean_len)
    out: list[Excerpt] = []
    w, pos, ev, bpm = start - 1, 0, None, 0.0
    remaining = total_s
    while remaining > 0.1:
        if total_s >= 180:
            target = float(np.clip(rng.uniform(0.75, 1.25) * mean_len, 30.0, 90.0))
        else:
            target = mean_len
        if remaining - target < 0.5 * min(mean_len, 30.0):
            target = remaining  # the last recording takes what is left
        target = _round_frames(min(target, remaining))
        if ev is None or pos >= len(ev) or ev.onset[-1] + ev.dur[-1] - ev.onset[pos] < 6.0:
            w += 1  # this work is used up (or only a few seconds are left of it): next work
            line = viola_line(works[w % len(works)])
            bpm = line.bpm * rng.uniform(0.88, 1.12)
            ev, pos = to_events(line, bpm, rng), 0
        body = target - lead_in - tail
        t0 = ev.onset[pos]
        end = ev.onset[pos:] + ev.dur[pos:] - t0
        k = max(int(np.searchsorted(end, body, side="right")), 1)
        stub = pos + k < len(ev) and end[-1] - (ev.onset[pos + k] - t0) < 25.0
        if stub and end[-1] + lead_in + tail <= 100.0 and total_s >= 180:
            k = len(ev) - pos  # take the work's last bars too rather than leave a stub
        if pos + k >= len(ev):  # the work ends inside this recording: fit it to the notes
            target = _round_frames(end[-1] + lead_in + tail)
            body = target - lead_in - tail
        seg = ev.take(slice(pos, pos + k)).shifted(lead_in - t0)
        # Clip anything that would run past the body (a single very long note).
        seg = replace(seg, dur=np.minimum(seg.dur, lead_in + body - seg.onset))
        out.append(Excerpt(f"music21:{works[w % len(works)]}", seg, target, bpm, pos))
        pos += k
        remaining -= target
    return out


def phrase_stream(rng: np.random.Generator, works: tuple[str, ...] = REAL_WORKS) -> NoteEvents:
    """All notes of ``works`` in seconds, one after the other (the test_real phrases)."""
    parts, t = [], 0.0
    for path in works:
        line = viola_line(path)
        ev = to_events(line, line.bpm * rng.uniform(0.9, 1.1), rng)
        parts.append(ev.shifted(t))
        t = float(ev.onset[-1] + ev.dur[-1] + 1.0)
    return NoteEvents(*(np.concatenate([getattr(p, k) for p in parts]) for k in _EVENT_KEYS))


def layout_on_gate(
    stream: NoteEvents, gate: np.ndarray, rate: int, start: int = 0
) -> tuple[NoteEvents, int]:
    """Place successive notes of ``stream`` (from note ``start``) into the spans where ``gate``
    [T_c] (at ``rate`` Hz) is true: each span plays notes at their written durations, the last
    one cut at the span's end; spans shorter than 0.15 s stay silent. Returns the events and the
    index of the next unused note (wrapping around)."""
    g = np.r_[False, gate.astype(bool), False]
    d = np.diff(g.astype(np.int8))
    starts, stops = np.flatnonzero(d == 1) / rate, np.flatnonzero(d == -1) / rate
    idx, on, du = [], [], []
    k = start % len(stream)
    for a, b in zip(starts, stops):
        if b - a < 0.15:
            continue
        t = a
        while t < b - 0.08:
            dur = float(min(stream.dur[k], b - t))
            idx.append(k), on.append(t), du.append(dur)
            t += max(float(stream.dur[k]), 0.08)
            k = (k + 1) % len(stream)
    idx = np.asarray(idx, dtype=np.int64)
    ev = stream.take(idx)
    return replace(
        ev, onset=np.asarray(on, dtype=np.float64), dur=np.asarray(du, dtype=np.float64)
    ), k
