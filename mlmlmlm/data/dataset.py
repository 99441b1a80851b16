"""Training windows: ``DataConfig`` and ``WindowDataset`` (audio, EMG or EMG+audio segments).

Introduced in notebook 01_dataset.

A dataset checks its root with :func:`mlmlmlm.data.check.check_path` first and refuses a folder
that fails (``DataError`` listing the problems). It then loads the split's recordings once and
keeps them preprocessed in memory: EMG filtered at its own rate (causal high-pass 1 Hz + mains
notch by default, as the live path can do it), resampled to ``emg_sr`` and divided by a fixed
per-channel scale; audio resampled to ``audio_sr`` and kept as is. In train mode each recording
is also time-stretched by every rate in ``time_stretch`` (all channels and the control curves
together). Recordings are cut into ``window_s`` windows every ``window_hop_s`` (a recording
shorter than one window, e.g. a sped-up 6-s window, is one window); an item is a ``segment``
crop of a window: random in train mode, at the window start in eval mode.

**EMG scale.** Channel ``c`` is divided by the 99.9th percentile of ``|emg[c]|`` over the train
split (after filtering, at the recording rate, on at most 2 M evenly strided samples per
channel), so most values fall in [-1, 1]. It is computed once and saved in the cache
(``.cache/emg_scale/<hash of the root>.json``, see :func:`mlmlmlm.paths.cache_dir`; never in the
data folder, which is only read) with the settings and recordings it came from; a file that
does not match the current settings is recomputed (kept in memory when the cache is read-only).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mlmlmlm.atomic import write_text_atomic
from mlmlmlm.data.check import check_path
from mlmlmlm.data.io import DataError, Recording, RecordingRef, find_recordings, load_recording
from mlmlmlm.data.preprocess import filter_emg, resample, stretch_curve, time_stretch, window_starts

MODALITIES = {"audio": 1, "emg": 6, "emg_audio": 7}
SCALE_PERCENTILE = 99.9
SCALE_MAX_SAMPLES = 2_000_000
_CHECKED: dict[tuple, list] = {}  # (root signature, window_s) -> problems
_SCALES: dict[tuple, list[float]] = {}  # (root, settings json) -> scale, read-only roots
_EVAL: dict[tuple, list[dict]] = {}  # fixed_eval_windows results


@dataclass
class DataConfig:
    """Which signals a dataset serves and how they are prepared."""

    root: str = "data/default"  # dataset folder (checked before use)
    modality: str = "audio"  # "audio" (1 ch) | "emg" (6 ch) | "emg_audio" (7 ch, ch 0 audio)
    audio_sr: int = 44100  # audio is resampled to this rate
    emg_sr: float = 44100.0  # EMG is resampled to this rate; "emg_audio" needs emg_sr == audio_sr
    segment: int = 32768  # samples per item at the modality's rate (emg_sr for "emg")
    window_s: float = 6.0  # the paper's 6-s windows
    window_hop_s: float = 3.0  # hop between window starts (50 % overlap)
    highpass_hz: float = 1.0  # EMG high-pass cut-off (0 disables)
    mains_hz: float = 50.0  # mains notch, 50 or 60 Hz (0 disables)
    causal_filter: bool = True  # causal EMG filter as live; False: zero-phase
    time_stretch: list[float] = field(default_factory=lambda: [1.0])  # train augmentation rates
    eval_windows: int = 64  # size of the fixed held-out window list
    seed: int = 0  # seeds the random crops

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {sorted(MODALITIES)}, got {self.modality!r}")
        if self.modality == "emg_audio" and float(self.emg_sr) != float(self.audio_sr):
            raise ValueError(
                f"modality 'emg_audio' needs emg_sr == audio_sr, got {self.emg_sr} and {self.audio_sr}"
            )
        if self.segment > self.window_samples:
            raise ValueError(
                f"segment of {self.segment} samples is longer than a {self.window_s:g}-s window "
                f"at {self.sr:g} Hz"
            )

    @property
    def sr(self) -> float:
        """Sample rate of the items: ``emg_sr`` for "emg", ``audio_sr`` otherwise."""
        return float(self.emg_sr) if self.modality == "emg" else float(self.audio_sr)

    @property
    def channels(self) -> int:
        return MODALITIES[self.modality]

    @property
    def window_samples(self) -> int:
        """Samples per window at ``sr`` (rounded down: 16537 for 6 s at 2756.25 Hz)."""
        return int(self.window_s * self.sr + 1e-6)


@dataclass
class Track:
    """One preprocessed (and possibly time-stretched) recording held in memory."""

    name: str  # recording name, with "@x<rate>" for stretched copies
    x: np.ndarray  # [C, T] float32 at cfg.sr
    controls: dict[str, np.ndarray] | None  # name -> [T_c] at control_rate
    control_rate: float


# ----------------------------------------------------------------------------- root check
def _signature(root: Path) -> tuple:
    """Every file under ``root`` as (path relative to root, size, mtime): the same however the
    root is spelt (``data/default`` or its absolute path: the book's runs and ``mlmlmlm train``
    used to key one token cache two ways and re-encode it in turn)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "emg_scale.json")
    return tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in files)


def require_clean(root, window_s: float = 6.0) -> None:
    """Run the data check on ``root`` (cached while no file changes); raise if it fails.

    Raises
    ------
    DataError : ``"<root>: failed the data check with <n> problem(s): <p1>; <p2>; ..."``;
        ``.problems`` holds the list.
    """
    root = Path(root)
    key = (str(root.resolve()), _signature(root) if root.is_dir() else (), float(window_s))
    if key not in _CHECKED:
        _CHECKED[key] = check_path(root, window_s=window_s)
    problems = _CHECKED[key]
    if problems:
        shown = "; ".join(str(p) for p in problems[:10])
        more = f"; ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        err = DataError(
            root, f"failed the data check with {len(problems)} problem(s): {shown}{more}"
        )
        err.problems = problems
        raise err


# ----------------------------------------------------------------------------- EMG scale
def _filtered_emg(rec: Recording, cfg: DataConfig) -> np.ndarray:
    return filter_emg(
        rec.emg,
        rec.emg_sr,
        highpass_hz=cfg.highpass_hz,
        mains_hz=cfg.mains_hz,
        causal=cfg.causal_filter,
    )


def emg_scale(cfg: DataConfig, refs: list[RecordingRef] | None = None) -> np.ndarray:
    """Per-channel EMG scale [6]: 99.9th percentile of ``|emg|`` over the train split.

    Read from the cache when it matches the settings, else computed and saved there (kept in
    memory when the cache is read-only). All recordings count when there is no train split.
    """
    root = Path(cfg.root)
    refs = find_recordings(root) if refs is None else refs
    source = [r for r in refs if r.split == "train"] or refs
    key = {
        "percentile": SCALE_PERCENTILE,
        "highpass_hz": cfg.highpass_hz,
        "mains_hz": cfg.mains_hz,
        "causal_filter": cfg.causal_filter,
        "recordings": sorted(r.name for r in source),
        "bytes": sum(_nbytes(r) for r in source),  # notices replaced files of the same name
    }
    key_text = json.dumps(key, sort_keys=True)
    path = _scale_cache(root)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if json.dumps(saved.get("settings"), sort_keys=True) == key_text:
                return np.asarray(saved["scale"], dtype=np.float32)
        except (OSError, ValueError, KeyError):
            pass  # unreadable or stale: recompute and overwrite
    memo = (str(root.resolve()), key_text)
    if memo in _SCALES:
        return np.asarray(_SCALES[memo], dtype=np.float32)
    per_rec = max(1, SCALE_MAX_SAMPLES // max(1, len(source)))
    parts = []
    for ref in source:
        emg = np.abs(_filtered_emg(load_recording(ref), cfg))
        parts.append(emg[:, :: max(1, math.ceil(emg.shape[1] / per_rec))])
    scale = np.percentile(np.concatenate(parts, axis=1), SCALE_PERCENTILE, axis=1)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    try:
        write_text_atomic(path, json.dumps({"root": str(root.resolve()), "settings": key,
                                            "scale": scale.tolist()}, indent=1) + "\n")
    except OSError:
        _SCALES[memo] = scale.tolist()  # read-only cache: keep it in memory
    return scale


def _scale_cache(root: Path) -> Path:
    from mlmlmlm.paths import cache_dir

    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir("emg_scale", f"{digest}.json")


def _nbytes(ref: RecordingRef) -> int:
    paths = [ref.path, ref.emg_path, *ref.bin_paths] if ref.format != "bela" else ref.bin_paths
    return sum(p.stat().st_size for p in paths if p is not None)


# ----------------------------------------------------------------------------- preparation
def prepare(rec: Recording, cfg: DataConfig, scale: np.ndarray | None) -> np.ndarray:
    """A recording as the model sees it: ``[C, T]`` float32 at ``cfg.sr`` (see module doc)."""
    parts = []
    if cfg.modality in ("audio", "emg_audio"):
        parts.append(resample(rec.audio[None], rec.audio_sr, cfg.audio_sr))
    if cfg.modality in ("emg", "emg_audio"):
        emg = resample(_filtered_emg(rec, cfg), rec.emg_sr, cfg.emg_sr)
        parts.append(emg / scale[:, None])
    n = min(p.shape[1] for p in parts)  # pairs agree within 10 ms; resampling rounds up
    return np.ascontiguousarray(np.concatenate([p[:, :n] for p in parts]), dtype=np.float32)


class SeededCrops:
    """The crop sampler of a training dataset, shared by :class:`WindowDataset` and
    :class:`mlmlmlm.data.tokens.TokenDataset`. A subclass has ``self.cfg.seed`` and sets
    ``self._gen = self._gen_seed = None`` in ``__init__``."""

    def _generator(self) -> torch.Generator:
        # Re-seeded whenever torch's initial seed changes: DataLoader workers get a distinct
        # base seed per worker and per epoch, so crops differ across workers and epochs.
        seed = torch.initial_seed()
        if self._gen is None or self._gen_seed != seed:
            self._gen = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + seed) % 2**63)
            self._gen_seed = seed
        return self._gen

    def state_dict(self) -> dict:
        """The crop sampler's state, for the checkpoint: with it a resumed run draws the same
        crops as an uninterrupted one (the training loop saves and restores it)."""
        gen = None if self._gen is None else self._gen.get_state()
        return {"generator": gen, "seed": self._gen_seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("generator") is None:
            self._gen, self._gen_seed = None, None
            return
        self._gen = torch.Generator()
        self._gen.set_state(state["generator"])
        self._gen_seed = state["seed"]


class WindowDataset(SeededCrops, Dataset):
    """Segments of the ``split``'s recordings, one item per window.

    Parameters
    ----------
    cfg : DataConfig.
    split : "train" | "val" | "test" | "test_real".
    train : random crops and time-stretch copies (``True``) or window-start crops (``False``).

    Items
    -----
    ``{"x": FloatTensor [C, segment], "controls": {name: FloatTensor [T_c]} (absent without
    controls), "name": str, "start_s": float}``; C = 1 (audio), 6 (emg), 7 (emg_audio, ch 0
    audio). ``start_s`` is where the segment starts in the (stretched) recording.
    """

    def __init__(self, cfg: DataConfig, split: str, *, train: bool) -> None:
        self.cfg, self.split, self.train = cfg, split, train
        require_clean(cfg.root, cfg.window_s)
        refs = find_recordings(cfg.root)
        chosen = [r for r in refs if r.split == split]
        if not chosen:
            raise DataError(cfg.root, f"split {split!r} has no recordings")
        uses_emg = cfg.modality != "audio"
        self.emg_scale = emg_scale(cfg, refs) if uses_emg else None
        rates = cfg.time_stretch if train else [1.0]
        self.tracks: list[Track] = []
        for ref in chosen:
            rec = load_recording(ref)
            x = prepare(rec, cfg, self.emg_scale)
            controls, control_rate = rec.controls, rec.control_rate
            del rec  # keep only the prepared signal
            for rate in rates:
                name = ref.name if rate == 1.0 else f"{ref.name}@x{rate:g}"
                ctrl = (
                    {k: stretch_curve(v, rate) for k, v in controls.items()} if controls else None
                )
                self.tracks.append(Track(name, time_stretch(x, rate, cfg.sr), ctrl, control_rate))
        size, hop = cfg.window_samples, int(cfg.window_hop_s * cfg.sr + 1e-6)
        index = []  # (track, start, window length); a track shorter than a window is one window
        for i, t in enumerate(self.tracks):
            n = t.x.shape[1]
            if n < cfg.segment:
                raise DataError(
                    cfg.root,
                    f"{t.name} lasts {n} samples, shorter than one segment of {cfg.segment}",
                )
            index += [(i, s, min(size, n)) for s in window_starts(n, min(size, n), hop)]
        self.windows = np.asarray(index, dtype=np.int64).reshape(-1, 3)  # [N, 3]
        self._gen: torch.Generator | None = None
        self._gen_seed: int | None = None

    def __len__(self) -> int:
        return len(self.windows)



    def __getitem__(self, i: int) -> dict:
        track_i, start, length = (int(v) for v in self.windows[i])
        t, seg = self.tracks[track_i], self.cfg.segment
        if self.train and length > seg:
            start += int(torch.randint(0, length - seg + 1, (1,), generator=self._generator()))
        item = {
            "x": torch.from_numpy(t.x[:, start : start + seg].copy()),
            "name": t.name,
            "start_s": start / self.cfg.sr,
        }
        if t.controls:
            c0 = round(start / self.cfg.sr * t.control_rate)
            n_c = round(seg / self.cfg.sr * t.control_rate)
            item["controls"] = {k: _crop(v, c0, n_c) for k, v in t.controls.items()}
        return item


def _crop(c: np.ndarray, c0: int, n: int) -> torch.Tensor:
    """``c[c0 : c0 + n]`` as a tensor, padded with the last value when the curve ends early."""
    out = c[c0 : c0 + n]
    if len(out) < n:
        out = np.concatenate([out, np.full(n - len(out), c[-1] if len(c) else 0.0, np.float32)])
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def fixed_eval_windows(cfg: DataConfig, split: str = "test", n: int | None = None) -> list[dict]:
    """The fixed list of held-out windows reports and identifiability metrics use.

    ``n`` (default ``cfg.eval_windows``) window-start crops evenly spread over the split's
    windows in name order (all windows when there are fewer). The same call returns the same
    list (cached while the files and settings stay the same).
    """
    n = cfg.eval_windows if n is None else n
    root = Path(cfg.root)
    key = (json.dumps(asdict(cfg), sort_keys=True), split, n, _signature(root))
    if key not in _EVAL:
        ds = WindowDataset(cfg, split, train=False)
        idx = np.unique(np.round(np.linspace(0, len(ds) - 1, min(n, len(ds)))).astype(int))
        _EVAL[key] = [ds[int(i)] for i in idx]
    return list(_EVAL[key])
