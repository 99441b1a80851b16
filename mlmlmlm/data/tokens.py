"""Token cache of the translation phase: every recording of a split, audio and EMG each prepared
at its own codec's rate and encoded once by the frozen production codecs, frames aligned one to
one; token crops for training and the fixed held-out token windows.

Introduced in notebook 05_transformer (``mlmlmlm train 05_transformer/<run>`` builds the cache).

**Cache.** ``<cache>/tokens/<slot>/<split>.pt`` (:func:`mlmlmlm.paths.cache_dir`; never in the
data folder), one slot per (data root, codec run dirs). Each file carries the key it was built
with: the sha256 of both codec checkpoint files, the data root's signature (every file's path,
size and mtime), the time-stretch rates and the format. A file whose key differs from the current
one (a retrained codec, a changed recording) is never read: it is rebuilt and replaced,
atomically (:func:`mlmlmlm.atomic.write_bytes_atomic`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mlmlmlm.config import ConfigError
from mlmlmlm.data.dataset import SeededCrops

FORMAT = "mlmlmlm-tokens/1"
ENCODE_CHUNK_FRAMES = 512  # causal codecs encode long recordings in chunks (same codes, less memory)
_SHA: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256


@dataclass
class CodecsConfig:
    """The frozen codecs a translation run reads: ``<phase>/<run>`` names, resolved to run dirs
    at the run's scale and data root (:func:`codec_run_dir`), or run dir paths."""

    audio: str = "02_audio_codec/audio_codec"
    emg: str = "04_emg_codec/emg_codec"

    def upstream_runs(self) -> list[str]:
        """The runs whose checkpoints a translation run is built on."""
        return [self.audio, self.emg]


@dataclass
class TokenDataConfig:
    """Token crops of the translation phase (frames are codec frames, both streams alike)."""

    crop_frames: int = 256  # frames per training crop (and per teacher-forced sequence)
    window_s: float = 6.0  # recordings are cut into windows of this length, as for the codecs
    window_hop_s: float = 3.0  # hop between window starts; a crop is drawn inside a window
    time_stretch: list[float] = field(default_factory=lambda: [1.0])  # train-split copies
    seed: int = 0  # seeds the random crops

    def __post_init__(self) -> None:
        if self.crop_frames < 2:
            raise ValueError(f"crop_frames must be >= 2, got {self.crop_frames}")
        if self.window_s <= 0 or self.window_hop_s <= 0:
            raise ValueError("window_s and window_hop_s must be positive")


class MissingCodecError(ConfigError):
    """A codec run a translation run names has no checkpoint (one line: how to train it)."""


@dataclass
class CodecPair:
    """The frozen codecs (eval mode, no gradients) with their run configs, dirs and hashes."""

    audio: Any  # mlmlmlm.models.codec.Codec
    emg: Any
    audio_cfg: Any  # RunConfig of the codec run
    emg_cfg: Any
    audio_dir: Path
    emg_dir: Path
    audio_sha256: str
    emg_sha256: str
    # a translation run's checkpoint: the corpus's EMG scale [C] its tokens were made with
    emg_scale: list[float] | None = None

    @property
    def frame_rate(self) -> float:
        return self.audio.cfg.frame_rate

    def record(self) -> dict[str, dict[str, str]]:
        """What a translation checkpoint stores about its codecs."""
        from mlmlmlm.paths import relative

        return {"audio": {"run_dir": relative(self.audio_dir), "sha256": self.audio_sha256},
                "emg": {"run_dir": relative(self.emg_dir), "sha256": self.emg_sha256}}


@dataclass
class TokenTrack:
    """One recording (or a time-stretched copy) as aligned codes: ``audio`` [n_q, T],
    ``emg`` [emg_n_q, T] (int16; the same T frames at the same frame rate)."""

    name: str
    audio: Tensor
    emg: Tensor


# ---------------------------------------------------------------------------- codecs
def codec_run_dir(ref: str, scale: str, data_root: Path | str | None = None) -> Path:
    """A codec's run dir: ``ref`` as a path when it is an existing folder (or has more than one
    ``/``), else ``runs/<scale>/<phase>/<run>`` with the data root's tag (codecs trained on the
    same folder, see :func:`mlmlmlm.paths.data_tag`)."""
    from mlmlmlm import paths

    if Path(ref).is_dir() or ref.count("/") != 1:
        return Path(ref)
    tag = paths.data_tag(data_root, smoke=scale == "smoke") if data_root is not None else ""
    return paths.run_dir(ref, scale, tag=tag)


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes (memoised while its size and mtime stay the same)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA[key] = h.hexdigest()
    return _SHA[key]


def load_codecs(codecs: CodecsConfig, scale: str, data_root: Path | str | None = None,
                source: str = "codecs") -> CodecPair:
    """Both frozen codecs of ``codecs`` (eval mode, ``requires_grad`` off), checked: RVQ
    bottlenecks, an audio and an EMG modality, and the same frame rate (one-line errors)."""
    from mlmlmlm.recipes.codec import load_codec

    loaded = {}
    for what, ref in (("audio", codecs.audio), ("emg", codecs.emg)):
        run_dir = codec_run_dir(ref, scale, data_root)
        if not (run_dir / "checkpoint.pt").is_file():
            how = f"`mlmlmlm train {ref} --scale {scale}`" if ref.count("/") == 1 else "train it"
            raise MissingCodecError(f"{source}: the {what} codec {ref} has no checkpoint in "
                                    f"{run_dir} ({how} first)")
        model, cfg = load_codec(run_dir)
        if cfg.model.bottleneck != "rvq":
            raise ConfigError(f"{run_dir}: the {what} codec must have an rvq bottleneck (tokens)")
        modality = cfg.data.modality
        if modality != what:
            raise ConfigError(f"{run_dir}: codecs.{what} must be a codec of {what} "
                              f"(its modality is {modality!r})")
        for p in model.parameters():
            p.requires_grad_(False)
        loaded[what] = (model.eval(), cfg, run_dir, file_sha256(run_dir / "checkpoint.pt"))
    (a, acfg, adir, asha), (e, ecfg, edir, esha) = loaded["audio"], loaded["emg"]
    fa, fe = a.cfg.frame_rate, e.cfg.frame_rate
    if not math.isclose(fa, fe, rel_tol=1e-9):
        raise ConfigError(f"{source}: the audio codec {adir} runs at {fa:.4f} frames/s "
                          f"({a.cfg.sample_rate:g} Hz / hop {a.cfg.hop}) but the EMG codec {edir} "
                          f"at {fe:.4f} ({e.cfg.sample_rate:g} Hz / hop {e.cfg.hop}): their "
                          "frames must align one to one")
    return CodecPair(a, e, acfg, ecfg, adir, edir, asha, esha)


# ---------------------------------------------------------------------------- encoding
def _data_configs(pair: CodecPair, data_root: Path | str):
    """The codec runs' own data sections pointed at ``data_root``: recordings are prepared
    exactly as each codec was trained on them."""
    return (dataclasses.replace(pair.audio_cfg.data, root=str(data_root)),
            dataclasses.replace(pair.emg_cfg.data, root=str(data_root)))


@torch.inference_mode()
def _encode(codec, x: np.ndarray) -> Tensor:
    """Prepared signal ``x`` [C, n * hop] -> codes [n_q, n] (int16)."""
    t = torch.from_numpy(x)[None]  # [1, C, T]
    if not codec.cfg.causal:
        return codec.encode(t).codes[0].to(torch.int16)
    step = ENCODE_CHUNK_FRAMES * codec.cfg.hop
    codec.reset_stream()
    with torch.nn.utils.parametrize.cached():
        parts = [codec.encode_stream(t[..., i:i + step]).codes for i in range(0, t.shape[-1], step)]
    codec.reset_stream()
    return torch.cat(parts, dim=-1)[0].to(torch.int16)


def encode_pair(pair: CodecPair, name: str, audio: np.ndarray, emg: np.ndarray) -> TokenTrack:
    """Prepared ``audio`` [1, n_a] (audio codec rate) and ``emg`` [6, n_e] (EMG codec rate) of
    one recording -> aligned codes. The last partial frame is dropped; the two signals must last
    the same to within one frame (else a ``DataError`` naming the recording)."""
    from mlmlmlm.data.io import DataError

    ha, he = pair.audio.cfg.hop, pair.emg.cfg.hop
    na, ne = audio.shape[1] // ha, emg.shape[1] // he  # whole frames of each stream
    if abs(na - ne) > 1:
        raise DataError(name, f"audio gives {na} frames of the audio codec but EMG {ne} of the "
                              "EMG codec: the two signals must last the same")
    n = min(na, ne)
    a = _encode(pair.audio, np.ascontiguousarray(audio[:, :n * ha]))
    e = _encode(pair.emg, np.ascontiguousarray(emg[:, :n * he]))
    assert a.shape[-1] == e.shape[-1] == n, (a.shape, e.shape, n)
    return TokenTrack(name, a, e)


def paired_signals(pair: CodecPair, data_root: Path | str, split: str,
                   rates: list[float] | None = None):
    """Each recording of ``split`` (and its time-stretched copies at ``rates``) as the codecs see
    it: yields ``(name, audio [1, n_a], emg [6, n_e])``, audio at the audio codec's rate and EMG
    at the EMG codec's, prepared exactly as each codec run prepared its training data (EMG filter
    and the corpus's EMG scale included). ``encode_pair`` turns them into aligned tokens; the
    reference audio of a token window is ``audio[:, start * hop : (start + T) * hop]``."""
    from mlmlmlm.data.dataset import emg_scale, prepare, require_clean
    from mlmlmlm.data.io import DataError, find_recordings, load_recording
    from mlmlmlm.data.preprocess import time_stretch

    adc, edc = _data_configs(pair, data_root)
    require_clean(data_root, adc.window_s)
    refs = find_recordings(data_root)
    chosen = [r for r in refs if r.split == split]
    if not chosen:
        raise DataError(data_root, f"split {split!r} has no recordings")
    scale = emg_scale(edc, refs)
    for ref in chosen:
        rec = load_recording(ref)
        audio, emg = prepare(rec, adc, None), prepare(rec, edc, scale)  # [1, n_a], [6, n_e]
        for rate in rates or [1.0]:
            name = ref.name if rate == 1.0 else f"{ref.name}@x{rate:g}"
            yield (name, audio if rate == 1.0 else time_stretch(audio, rate, adc.sr),
                   emg if rate == 1.0 else time_stretch(emg, rate, edc.sr))


def _encode_split(pair: CodecPair, data_root: Path, split: str, rates: list[float],
                  progress: bool) -> list[TokenTrack]:
    from tqdm import tqdm

    signals = paired_signals(pair, data_root, split, rates)
    return [encode_pair(pair, name, a, e)
            for name, a, e in tqdm(signals, desc=f"tokens {split}", disable=not progress)]


def cache_key(pair: CodecPair, data_root: Path | str, split: str, rates: list[float]) -> dict:
    """Everything the cached tokens of a split depend on."""
    from mlmlmlm.data.dataset import _signature

    root = Path(data_root)
    sig = hashlib.sha256(json.dumps(_signature(root)).encode()).hexdigest()
    return {"format": FORMAT, "audio_codec_sha256": pair.audio_sha256,
            "emg_codec_sha256": pair.emg_sha256, "data_root": str(root.resolve()),
            "data_signature": sig, "split": split, "time_stretch": [float(r) for r in rates]}


def cache_path(pair: CodecPair, data_root: Path | str, split: str) -> Path:
    from mlmlmlm.paths import cache_dir

    slot = json.dumps([str(Path(data_root).resolve()), str(pair.audio_dir.resolve()),
                       str(pair.emg_dir.resolve())])
    return cache_dir("tokens", hashlib.sha256(slot.encode()).hexdigest()[:16], f"{split}.pt")


def split_tokens(pair: CodecPair, data_root: Path | str, split: str,
                 rates: list[float] | None = None, progress: bool = False) -> list[TokenTrack]:
    """The split's recordings as aligned codes, from the cache when its key matches, else encoded
    now and written to it (kept in memory only when the cache cannot be written)."""
    from mlmlmlm.atomic import write_bytes_atomic

    rates = list(rates or [1.0])
    key, path = cache_key(pair, data_root, split, rates), cache_path(pair, data_root, split)
    saved = _read_cache(path)
    if saved is not None and saved.get("key") == key:  # a stale key is never read further
        return [TokenTrack(t["name"], t["audio"], t["emg"]) for t in saved["tracks"]]
    tracks = _encode_split(pair, Path(data_root), split, rates, progress)
    buf = io.BytesIO()
    torch.save({"key": key, "tracks": [dataclasses.asdict(t) for t in tracks]}, buf)
    try:
        write_bytes_atomic(path, buf.getvalue())
    except OSError:
        pass
    return tracks


def _read_cache(path: Path) -> dict | None:
    """The cache file's contents, or None when it is absent, unreadable or cut short."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is rebuilt
        return None
    return saved if isinstance(saved, dict) else None


# ---------------------------------------------------------------------------- datasets
def _windows(n: int, size: int, hop: int) -> list[tuple[int, int]]:
    """(start, length) of the windows of a track of n frames (one short window if n < size)."""
    from mlmlmlm.data.preprocess import window_starts

    size = min(size, n)
    return [(int(s), size) for s in window_starts(n, size, hop)]


class TokenDataset(SeededCrops, Dataset):
    """Crops of ``crop_frames`` aligned frames, one item per window of the tracks.

    Items: ``{"audio": LongTensor [n_q, crop], "emg": LongTensor [emg_n_q, crop], "name": str,
    "start": int}`` (start frame). ``train``: a random crop inside the window (seeded, state in
    the checkpoint); otherwise the window's first frames.
    """

    def __init__(self, tracks: list[TokenTrack], cfg: TokenDataConfig, frame_rate: float,
                 train: bool) -> None:
        from mlmlmlm.data.io import DataError

        self.tracks, self.cfg, self.train = tracks, cfg, train
        size, hop = round(cfg.window_s * frame_rate), max(1, round(cfg.window_hop_s * frame_rate))
        index = []
        for i, t in enumerate(tracks):
            n = t.audio.shape[-1]
            if n < cfg.crop_frames:
                raise DataError(t.name, f"lasts {n} frames, shorter than one crop of "
                                        f"{cfg.crop_frames} (data.crop_frames)")
            index += [(i, s, length) for s, length in _windows(n, size, hop)]
        self.windows = np.asarray(index, dtype=np.int64).reshape(-1, 3)  # [N, 3]
        self._gen: torch.Generator | None = None
        self._gen_seed: int | None = None

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        ti, start, length = (int(v) for v in self.windows[i])
        crop = self.cfg.crop_frames
        if self.train and length > crop:
            start += int(torch.randint(0, length - crop + 1, (1,), generator=self._generator()))
        t = self.tracks[ti]
        return {"audio": t.audio[:, start:start + crop].long(),
                "emg": t.emg[:, start:start + crop].long(), "name": t.name, "start": start}


def eval_windows(tracks: list[TokenTrack], frames: int, n: int, hop: int | None = None
                 ) -> list[dict]:
    """The fixed held-out token windows: ``n`` whole windows of ``frames`` frames (``hop``
    between starts, default half a window) evenly spread over the tracks in name order; items
    as :class:`TokenDataset`'s. Tracks shorter than ``frames`` give one window of their length."""
    hop = hop or max(1, frames // 2)
    items = []
    for t in sorted(tracks, key=lambda t: t.name):
        for s, length in _windows(t.audio.shape[-1], frames, hop):
            items.append({"audio": t.audio[:, s:s + length].long(),
                          "emg": t.emg[:, s:s + length].long(), "name": t.name, "start": s})
    if not items:
        return []
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, min(n, len(items)))).astype(int))
    return [items[int(i)] for i in idx]
