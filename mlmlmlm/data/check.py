"""The data check: every problem of a dataset folder as one line ``"<path>: <message>"``.

Introduced in notebook 01_dataset.

``check_path`` reads every recording once (one at a time) and reports, never skipping a file
silently. The messages (``{...}`` are filled in):

* ``path does not exist``
* ``no recordings found (expected 7-channel *.wav windows, <name>.audio.wav + <name>.emg.wav
  pairs or Bela logger folders)`` (also beside the problems of a folder whose every
  recording-like file is unusable)
* ``found {n} channels, expected {m}`` (a window WAV holds 1 + 6, a pair's audio 1, its EMG 6)
* ``found {n} EMG logger files, expected 6`` (a Bela folder)
* ``Bela folder holds {n} WAV files, expected 1 (the audio)``
* ``sample rate {sr} Hz, corpus.json declares {sr} Hz``
* ``sample rate {sr} Hz differs from the other windows' {sr} Hz``
* ``audio lasts {a} s but EMG lasts {e} s (more than 10 ms apart)``
* ``channel {i} ({name}) contains NaN or Inf``
* ``channel {i} ({name}) is all zeros``
* ``channel {i} ({name}) is clipped: {p} % of samples at full scale`` (more than 0.1 % at
  ``|x| >= 32767/32768``; a Bela log, whose full scale is unknown, counts samples equal to the
  channel's own minimum or maximum and says ``at its extreme value``)
* ``lasts {d} s, shorter than one {w}-s window``
* ``controls last {c} s but audio lasts {a} s``
* ``cannot be read as audio: {reason}``; ``not a Bela logger file: {reason}``;
  ``logger buffers are not contiguous (a buffer was dropped?)``;
  ``controls file cannot be read: {reason}``; ``control curves must be 1-D arrays of one length``
* ``audio file has no EMG partner {name}``; ``EMG file has no audio partner {name}``;
  ``controls file has no recording partner``; ``unexpected file in a Bela folder``;
  ``unsupported file type (expected .wav, .bin or .controls.npz)``
* ``not listed in corpus.json``; ``recording {id} is listed but has no files``;
  ``recording {id} has unknown split {split}``; ``corpus.json cannot be read: {reason}``;
  ``corpus.json lists a recording id twice``; ``duplicate recording name {name} (also {path})``

Files with other suffixes (``.json``, ``.md``, ``.txt`` ...) are not data and are ignored.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np

from mlmlmlm.data.io import (
    DataError,
    Problem,
    Recording,
    RecordingRef,
    audio_path,
    load_recording,
    scan,
    sound_info,
)

__all__ = ["Problem", "check_path", "check_recording", "run_check"]

CLIP_FRACTION = 0.001  # more than 0.1 % of samples at full scale
FULL_SCALE = 1.0 - 1.0 / 32768  # int16 +32767 read as float; -32768 reads as -1.0
NO_RECORDINGS = (
    "no recordings found (expected 7-channel *.wav windows, <name>.audio.wav + <name>.emg.wav "
    "pairs or Bela logger folders)"
)


def _channel_problems(path, x: np.ndarray, names, bela: bool = False) -> list[Problem]:
    """NaN/Inf, all-zero and clipped channels of ``x`` [C, T] (channel ``i`` named ``names[i]``)."""
    out = []
    for i, ch in enumerate(x):
        label = f"channel {i} ({names[i] if i < len(names) else '?'})"
        if not np.all(np.isfinite(ch)):
            out.append(Problem(path, f"{label} contains NaN or Inf"))
            continue
        if not np.any(ch):
            out.append(Problem(path, f"{label} is all zeros"))
            continue
        if bela:
            n_clip = max(np.count_nonzero(ch == ch.max()), np.count_nonzero(ch == ch.min()))
            where = "at its extreme value"
        else:
            n_clip = np.count_nonzero(np.abs(ch) >= FULL_SCALE)
            where = "at full scale"
        if n_clip > max(1, CLIP_FRACTION * len(ch)):
            out.append(
                Problem(
                    path, f"{label} is clipped: {100 * n_clip / len(ch):.2f} % of samples {where}"
                )
            )
    return out


def check_recording(rec: Recording, ref: RecordingRef, *, window_s: float = 6.0) -> list[Problem]:
    """Content problems of a loaded recording: NaN/Inf, all-zero or clipped channels, too short,
    controls of the wrong duration."""
    names = list(rec.channel_names)  # "audio", then one name per EMG channel
    if ref.format == "windows":
        x = np.concatenate([rec.audio[None], rec.emg])
        out = _channel_problems(ref.path, x, names)
    elif ref.format == "pair":
        out = _channel_problems(ref.path, rec.audio[None], names[:1])
        out += _channel_problems(ref.emg_path, rec.emg, names[1:])
    else:
        out = _channel_problems(audio_path(ref), rec.audio[None], names[:1])
        for p, ch in zip(ref.bin_paths, rec.emg):
            out += _channel_problems(p, ch[None], [p.stem], bela=True)
    if rec.duration_s < window_s:
        out.append(
            Problem(
                ref.path, f"lasts {rec.duration_s:.2f} s, shorter than one {window_s:g}-s window"
            )
        )
    if rec.controls:
        n = len(next(iter(rec.controls.values())))
        dur_c = n / rec.control_rate
        if abs(dur_c - rec.duration_s) > 2.0 / rec.control_rate + 0.010:
            out.append(
                Problem(
                    ref.controls_path,
                    f"controls last {dur_c:.3f} s but audio lasts {rec.duration_s:.3f} s",
                )
            )
    return out


def _window_rate_problems(refs: list[RecordingRef]) -> list[Problem]:
    """Window WAVs without a declared rate must share one rate (the most common one)."""
    rates = {}
    for r in refs:
        if r.format == "windows" and r.declared_audio_sr is None:
            try:
                rates[r.path] = sound_info(r.path).samplerate
            except DataError:
                pass  # reported when the file is loaded
    if not rates:
        return []
    common = Counter(rates.values()).most_common(1)[0][0]
    return [
        Problem(p, f"sample rate {sr:g} Hz differs from the other windows' {common:g} Hz")
        for p, sr in rates.items()
        if sr != common
    ]


def check_path(path, *, window_s: float = 6.0, expected_emg_channels: int = 6) -> list[Problem]:
    """Check a dataset folder (or one file) and list everything that keeps it from being used.

    Parameters
    ----------
    path : folder searched recursively, or one recording file.
    window_s : training window length; shorter recordings are reported.
    expected_emg_channels : EMG channels per recording.

    Returns
    -------
    list of :class:`Problem`, empty when the folder is fine; sorted by path.
    """
    refs, problems = scan(path)
    if problems and problems[0].message == "path does not exist":
        return problems
    if not refs:
        problems.append(Problem(Path(path), NO_RECORDINGS))
    problems += _window_rate_problems(refs)
    for ref in refs:
        try:
            rec = load_recording(ref, expected_emg_channels)
        except DataError as err:
            problems.append(Problem(err.path, err.message))
            continue
        problems += check_recording(rec, ref, window_s=window_s)
        del rec  # one recording in memory at a time
    return sorted(problems, key=lambda p: (str(p.path), p.message))


def summary(path) -> tuple[int, float]:
    """Number of recordings and their total audio duration in minutes (from headers)."""
    refs = scan(path)[0]
    seconds = 0.0
    for r in refs:
        info = sound_info(audio_path(r))
        seconds += info.frames / info.samplerate
    return len(refs), seconds / 60


def split_durations(path, split: str) -> list[float]:
    """Seconds of audio of every recording in ``split`` under ``path`` (from file headers;
    parts of recordings split by time count their part)."""
    from mlmlmlm.data.io import find_recordings

    out = []
    for r in find_recordings(path):
        if r.split == split:
            info = sound_info(audio_path(r))
            out.append(info.frames / info.samplerate * (r.span[1] - r.span[0]))
    return out


def split_seconds(path, split: str) -> float:
    return sum(split_durations(path, split))


def require_eval_windows(path, split: str, window_s: float, hop_s: float, need: int = 2) -> int:
    """Number of ``window_s`` held-out windows in ``split``; a ``DataError`` before any training
    when there are fewer than ``need`` (identifiability compares each window with the others)."""
    from mlmlmlm.data.io import find_recordings

    n = 0
    for d in split_durations(path, split):
        n += 0 if d < window_s else int((d - window_s) // hop_s + 1e-9) + 1
    if n < need:
        few = " (a folder of fewer than three recordings holds out the last 10 % of each by " \
            "time)" if any(r.span != (0.0, 1.0) for r in find_recordings(path)) else ""
        raise DataError(path, f"the held-out split {split!r} has {n} window(s) of {window_s:g} s"
                              f"{few}; the evaluation needs at least {need}: bring more or longer "
                              "recordings, or a corpus.json that puts more of them in that split")
    return n


def run_check(path, out=sys.stdout, *, window_s: float = 6.0) -> int:
    """Print one line per problem (or ``OK: <n> recordings, <m> min``); return 0 if clean, else 2."""
    problems = check_path(path, window_s=window_s)
    for p in problems:
        print(p, file=out)
    if problems:
        return 2
    n, minutes = summary(path)
    print(f"OK: {n} recordings, {minutes:.1f} min", file=out)
    return 0
