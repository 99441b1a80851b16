"""Finding and reading EMG+audio recordings in the three accepted layouts.

Introduced in notebook 01_dataset.

A dataset folder is searched recursively (hidden files and folders are ignored). Accepted:

1. **Paper windows**: ``<name>.wav`` with 7 channels at one rate, channel 0 audio, 1-6 EMG.
2. **Pairs**: ``<name>.audio.wav`` (1 channel) + ``<name>.emg.wav`` (6 channels), each at its
   own rate; durations agree within 10 ms.
3. **Bela logger folders**: a folder holding pybela ``Logger`` files ``*.bin`` (one per watched
   variable, i.e. one per EMG channel: 6 files) and exactly one audio ``*.wav`` (1 channel).
   The recording's name is the folder's. Optional ``bela.json``:
   ``{"emg_sr": 22050, "channels": ["emg1", ..., "emg6"]}`` (rate of the logged variable,
   default 22050 Hz, Bela's analog rate with 8 inputs; channel order by variable name, default
   the files' names in natural order, so ``emg2`` precedes ``emg10``). The EMG is cut to the
   audio's duration (the last logger buffer is zero-padded): each log must cover the audio
   within 10 ms and may exceed it by at most one buffer (+10 ms).

   The logger file layout is in :func:`mlmlmlm.data.bela.read_bela_log`.

Any recording may carry ``<name>.controls.npz`` (``controls.npz`` inside a Bela folder): float
arrays at ``control_rate`` Hz (default 100), each ``[T_c]``. A ``corpus.json`` at the root
(see :func:`read_manifest`) fixes splits, declared rates and channel names; without it, splits
come from :func:`mlmlmlm.data.preprocess.split_names`; a folder of fewer than three recordings
is split by time instead (:data:`TIME_SPLITS`: each recording's first 80 % train, 10 % val, last
10 % test, as ``<name>#train`` ...).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from mlmlmlm.data.bela import (  # noqa: F401 (moved there; old import paths keep working)
    BELA_BUFFER_BYTES,
    BELA_TYPES,
    DEFAULT_BELA_EMG_SR,
    BelaLog,
    read_bela_log,
)
from mlmlmlm.data.preprocess import SPLITS, split_names
from mlmlmlm.data.records import (  # moved there from this module; still importable here
    DEFAULT_CHANNELS,
    DEFAULT_CONTROL_RATE,
    N_EMG,
    DataError,
    Problem,
    Recording,
    RecordingRef,
)

LENGTH_TOLERANCE_S = 0.010
# Files that look like data: reported when they belong to no recording.
DATA_SUFFIXES = {".wav", ".bin", ".npz", ".flac", ".ogg", ".mp3", ".aiff", ".npy", ".h5", ".csv"}
PAIR_SUFFIXES = (".audio.wav", ".emg.wav", ".controls.npz")


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


# ----------------------------------------------------------------------------- manifest, scan
def read_manifest(path) -> dict:
    """Read ``corpus.json``: ``{"recordings": [{"id", "split", ...}], "audio_sr", "emg_sr",
    "channels", "control_rate", ...}``; only ``recordings`` (ids and splits) is required."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
        entries = manifest["recordings"]
        ids = [str(e["id"]) for e in entries]
        [e["split"] for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(path, f"corpus.json cannot be read: {err!r}") from None
    if len(set(ids)) != len(ids):
        raise DataError(path, "corpus.json lists a recording id twice")
    return manifest


def _list_files(root: Path) -> list[Path]:
    """Data-looking files under a folder (hidden ones skipped), or a file and its partners."""
    if root.is_file():
        stem = root.name
        for suffix in PAIR_SUFFIXES + (".wav",):
            stem = stem.removesuffix(suffix) if stem.endswith(suffix) else stem
        names = [stem + s for s in PAIR_SUFFIXES + (".wav",)]
        return [root.parent / n for n in names if (root.parent / n).is_file()]
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)
    )


def _bela_folders(files: list[Path]) -> list[Path]:
    return sorted({p.parent for p in files if p.suffix == ".bin"})


def _scan_bela(files: list[Path], problems: list[Problem]) -> list[RecordingRef]:
    """Every folder holding ``*.bin`` files is one Bela recording."""
    refs = []
    for folder in _bela_folders(files):
        inside = [p for p in files if p.parent == folder]
        wavs = [p for p in inside if p.suffix == ".wav"]
        bins, meta, info = [p for p in inside if p.suffix == ".bin"], folder / "bela.json", {}
        controls = folder / "controls.npz"
        for p in inside:
            if p.suffix in DATA_SUFFIXES - {".wav", ".bin"} and p != controls:
                problems.append(Problem(p, "unexpected file in a Bela folder"))
        if len(wavs) != 1:
            msg = f"Bela folder holds {len(wavs)} WAV files, expected 1 (the audio)"
            problems.append(Problem(folder, msg))
            continue
        try:
            info = json.loads(meta.read_text()) if meta.is_file() else {}
            order = info.get("channels")
        except (OSError, ValueError, AttributeError) as err:
            problems.append(Problem(meta, f"bela.json cannot be read: {err!r}"))
            continue
        by_var = {p.stem: p for p in bins}
        if order and any(v not in by_var for v in order):
            missing = [v for v in order if v not in by_var]
            problems.append(Problem(meta, f"channels {missing} have no logger file"))
            continue
        bins = [by_var[v] for v in order] if order else sorted(bins, key=_natural_key)
        refs.append(
            RecordingRef(
                folder.name,
                "bela",
                folder,
                bin_paths=tuple(bins),
                emg_sr_hint=info.get("emg_sr"),
                controls_path=controls if controls in inside else None,
            )
        )
    return refs


def _scan_wavs(files: list[Path], problems: list[Problem]) -> list[RecordingRef]:
    """Pairs and 7-channel windows; orphans and unsupported files become problems."""
    refs, stems = [], set()
    for p in files:
        stem, kind = _split_name(p)
        if kind == "audio":
            partner = p.with_name(stem + ".emg.wav")
            if partner.is_file():
                refs.append(RecordingRef(stem, "pair", p, emg_path=partner))
                stems.add(p.with_name(stem))
            else:
                problems.append(Problem(p, f"audio file has no EMG partner {partner.name}"))
        elif kind == "emg" and not p.with_name(stem + ".audio.wav").is_file():
            problems.append(Problem(p, f"EMG file has no audio partner {stem}.audio.wav"))
        elif kind == "windows":
            refs.append(RecordingRef(stem, "windows", p))
            stems.add(p.with_name(stem))
    for p in files:
        stem, kind = _split_name(p)
        if kind == "controls" and p.with_name(stem) not in stems:
            problems.append(Problem(p, "controls file has no recording partner"))
        elif kind is None and p.suffix in DATA_SUFFIXES:
            msg = "unsupported file type (expected .wav, .bin or .controls.npz)"
            problems.append(Problem(p, msg))
    return refs


def _split_name(p: Path) -> tuple[str, str | None]:
    """``("take1", "audio")`` for ``take1.audio.wav``; kinds audio, emg, controls, windows."""
    for suffix, kind in zip(PAIR_SUFFIXES, ("audio", "emg", "controls")):
        if p.name.endswith(suffix):
            return p.name[: -len(suffix)], kind
    return (p.stem, "windows") if p.suffix == ".wav" else (p.stem, None)


def scan(root) -> tuple[list[RecordingRef], list[Problem]]:
    """Find recordings under ``root`` and the files that cannot be used (no data is read).

    Returns
    -------
    refs : recordings sorted by name.
    problems : files that look like data but belong to no recording, and manifest mismatches.
    """
    root = Path(root)
    if not root.exists():
        return [], [Problem(root, "path does not exist")]
    files, manifest, problems = _list_files(root), None, []
    manifest_path = (root if root.is_dir() else root.parent) / "corpus.json"
    if manifest_path.is_file():
        try:
            manifest = read_manifest(manifest_path)
        except DataError as err:
            problems.append(Problem(err.path, err.message))
    refs = _scan_bela(files, problems)
    bela_dirs = set(_bela_folders(files))
    refs += _scan_wavs([p for p in files if p.parent not in bela_dirs], problems)
    refs = [_with_controls(r) for r in refs]
    seen: dict[str, Path] = {}
    for r in sorted(refs, key=lambda r: str(r.path)):
        if r.name in seen:
            msg = f"duplicate recording name {r.name!r} (also {seen[r.name]})"
            problems.append(Problem(r.path, msg))
        seen.setdefault(r.name, r.path)
    refs = _assign_splits(refs, manifest, manifest_path, problems)
    return sorted(refs, key=lambda r: r.name), problems


def _with_controls(ref: RecordingRef) -> RecordingRef:
    if ref.format == "bela":
        return ref
    controls = ref.path.with_name(ref.name + ".controls.npz")
    return _replace(ref, controls_path=controls if controls.is_file() else None)


def _replace(ref: RecordingRef, **changes) -> RecordingRef:
    return RecordingRef(**{**ref.__dict__, **changes})


# A folder of one or two recordings and no corpus.json is split by time, within each recording.
TIME_SPLITS = (("train", 0.0, 0.8), ("val", 0.8, 0.9), ("test", 0.9, 1.0))


def time_split(refs: list[RecordingRef]) -> list[RecordingRef]:
    """Each recording as three parts, ``<name>#train`` / ``#val`` / ``#test`` (:data:`TIME_SPLITS`)."""
    return [_replace(r, name=f"{r.name}#{split}", split=split, span=(a, b))
            for r in refs for split, a, b in TIME_SPLITS]


def source_name(name: str) -> str:
    """The recording a (possibly time-split) name belongs to: ``take1#test`` -> ``take1``."""
    return name.split("#", 1)[0]


def _assign_splits(refs, manifest, manifest_path, problems) -> list[RecordingRef]:
    if manifest is None:
        splits = split_names([r.name for r in refs])
        return [_replace(r, split=splits[r.name]) for r in refs]
    entries = {str(e["id"]): e for e in manifest["recordings"]}
    names = tuple(manifest.get("channels", DEFAULT_CHANNELS))
    out = []
    for r in refs:
        entry = entries.get(r.name)
        if entry is None:
            problems.append(Problem(r.path, "not listed in corpus.json"))
            continue
        if entry["split"] not in SPLITS:
            problems.append(
                Problem(manifest_path, f"recording {r.name!r} has unknown split {entry['split']!r}")
            )
            continue
        out.append(
            _replace(
                r,
                split=entry["split"],
                declared_audio_sr=manifest.get("audio_sr"),
                declared_emg_sr=manifest.get("emg_sr"),
                channel_names=names,
                control_rate=float(manifest.get("control_rate", DEFAULT_CONTROL_RATE)),
            )
        )
    found = {r.name for r in refs}
    for name in entries:
        if name not in found:
            problems.append(
                Problem(manifest_path, f"recording {name!r} is listed but has no files")
            )
    return out


def find_recordings(root) -> list[RecordingRef]:
    """Recordings under ``root`` (a folder or one file), sorted by name; nothing is loaded.

    Files that cannot be used are not returned; :func:`mlmlmlm.data.check.check_path` lists them.
    A folder of one or two recordings without ``corpus.json`` is split by time
    (:func:`time_split`); the data check itself looks at whole files.

    Raises
    ------
    DataError : ``"<root>: path does not exist"``.
    """
    refs, problems = scan(root)
    if problems and problems[0].message == "path does not exist":
        raise DataError(problems[0].path, problems[0].message)
    root = Path(root)
    manifest = (root if root.is_dir() else root.parent) / "corpus.json"
    if not manifest.is_file() and 0 < len(refs) < 3:  # too few to split by recording
        refs = sorted(time_split(refs), key=lambda r: r.name)
    return refs


# ----------------------------------------------------------------------------- loading
def sound_info(path):
    """``soundfile.info`` with a :class:`DataError` ``"cannot be read as audio: ..."``."""
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise DataError(path, f"cannot be read as audio: {err}") from None


def _read(path) -> tuple[np.ndarray, int]:
    """Read a WAV as float32 [C, T]."""
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise DataError(path, f"cannot be read as audio: {err}") from None
    return np.ascontiguousarray(x.T), sr


def structure_problems(ref: RecordingRef, expected_emg_channels: int = N_EMG) -> list[Problem]:
    """Channel counts, sample rates and lengths of ``ref`` from file headers only."""
    out: list[Problem] = []

    def count(path, found, expected):
        if found != expected:
            out.append(Problem(path, f"found {found} channels, expected {expected}"))

    def rate(path, sr, declared):
        if declared is not None and abs(sr - float(declared)) > 1e-6:
            out.append(
                Problem(path, f"sample rate {sr:g} Hz, corpus.json declares {float(declared):g} Hz")
            )

    try:
        if ref.format == "windows":
            info = sound_info(ref.path)
            count(ref.path, info.channels, 1 + expected_emg_channels)
            rate(ref.path, info.samplerate, ref.declared_audio_sr)
        elif ref.format == "pair":
            a, e = sound_info(ref.path), sound_info(ref.emg_path)
            count(ref.path, a.channels, 1)
            count(ref.emg_path, e.channels, expected_emg_channels)
            rate(ref.path, a.samplerate, ref.declared_audio_sr)
            rate(ref.emg_path, e.samplerate, ref.declared_emg_sr)
            da, de = a.frames / a.samplerate, e.frames / e.samplerate
            if abs(da - de) > LENGTH_TOLERANCE_S:
                out.append(Problem(ref.emg_path, _length_message(da, de)))
        else:
            a = sound_info(audio_path(ref))
            count(audio_path(ref), a.channels, 1)
            n_bins = len(ref.bin_paths)
            if n_bins != expected_emg_channels:
                msg = f"found {n_bins} EMG logger files, expected {expected_emg_channels}"
                out.append(Problem(ref.path, msg))
            emg_sr = float(ref.emg_sr_hint or DEFAULT_BELA_EMG_SR)
            for p in ref.bin_paths:
                log = read_bela_log(p)
                da, de = a.frames / a.samplerate, len(log.values) / emg_sr
                padding = len(log.values) / len(log.timestamps) / emg_sr  # one buffer
                if not da - LENGTH_TOLERANCE_S <= de <= da + padding + LENGTH_TOLERANCE_S:
                    out.append(Problem(p, _length_message(da, de)))
    except DataError as err:
        out.append(Problem(err.path, err.message))
    return out


def _length_message(audio_s: float, emg_s: float) -> str:
    return f"audio lasts {audio_s:.3f} s but EMG lasts {emg_s:.3f} s (more than 10 ms apart)"


def audio_path(ref: RecordingRef) -> Path:
    """The file holding the recording's audio (the window WAV itself for ``"windows"``)."""
    return min(ref.path.glob("*.wav")) if ref.format == "bela" else ref.path


def load_controls(path) -> dict[str, np.ndarray]:
    """Read a ``*.controls.npz``: name -> float32 [T_c]; all curves must share one length."""
    try:
        with np.load(path) as z:
            controls = {k: np.asarray(z[k], dtype=np.float32) for k in z.files}
    except (OSError, ValueError) as err:
        raise DataError(path, f"controls file cannot be read: {err}") from None
    if any(c.ndim != 1 for c in controls.values()) or len({len(c) for c in controls.values()}) > 1:
        raise DataError(path, "control curves must be 1-D arrays of one length")
    return controls


def load_recording(ref: RecordingRef, expected_emg_channels: int = N_EMG) -> Recording:
    """Load a recording's audio, EMG and controls (raw values, no filtering).

    Raises
    ------
    DataError : the first problem of :func:`structure_problems`, or an unreadable file.
    """
    problems = structure_problems(ref, expected_emg_channels)
    if problems:
        raise DataError(problems[0].path, problems[0].message)
    if ref.format == "windows":
        x, sr = _read(ref.path)
        audio, audio_sr, emg, emg_sr = x[0], sr, x[1:], float(sr)
    elif ref.format == "pair":
        a, audio_sr = _read(ref.path)
        emg, emg_sr = _read(ref.emg_path)
        audio, emg_sr = a[0], float(emg_sr)
    else:
        a, audio_sr = _read(audio_path(ref))
        audio, emg_sr = a[0], float(ref.emg_sr_hint or DEFAULT_BELA_EMG_SR)
        n = round(len(audio) / audio_sr * emg_sr)
        emg = np.stack([read_bela_log(p).values[:n].astype(np.float32) for p in ref.bin_paths])
    controls = load_controls(ref.controls_path) if ref.controls_path else None
    if ref.span != (0.0, 1.0):  # one part of a recording split by time
        a, b = ref.span
        dur = len(audio) / audio_sr

        def cut(x, sr):
            return x[..., round(a * dur * sr) : round(b * dur * sr)]

        audio, emg = cut(audio, audio_sr), cut(emg, emg_sr)
        if controls:
            controls = {k: cut(v, ref.control_rate) for k, v in controls.items()}
    return Recording(
        name=ref.name,
        path=ref.path,
        audio=np.ascontiguousarray(audio),
        audio_sr=int(audio_sr),
        emg=np.ascontiguousarray(emg),
        emg_sr=emg_sr,
        controls=controls,
        control_rate=ref.control_rate,
        split=ref.split,
        format=ref.format,
        channel_names=ref.channel_names,
    )
