"""What the streaming translator (:class:`mlmlmlm.stream.Translator`) is built from, and the
command that runs files through it: EMG prepared as the training data was (:class:`EmgPrep`, the
corpus's EMG scale), a run's generation settings and ``Translator.from_run``; ``mlmlmlm
translate``, an EMG recording and an audio prompt in, a viola WAV out, offline but chunk by
chunk. The frozen codec copies it streams through are in :mod:`mlmlmlm.models.frozen_codec`.

Introduced in notebook 05_transformer.

    mlmlmlm translate --emg take.emg.wav --prompt phrase_start.wav --out take.viola.wav
        [--run 05_transformer/te2] [--scale cpu] [--seconds N] [--temperature T]
        [--guidance W] [--seed S] [--data-root DIR]

The EMG file (6 channels, any rate >= 1 kHz) is prepared exactly as the codecs' training data
was (:func:`mlmlmlm.data.dataset.prepare`): the EMG codec run's causal high-pass and mains notch
at the file's own rate, resampling to the codec's rate, division by the corpus's per-channel EMG
scale (``--data-root``, default the default corpus; without a readable corpus the file's own
99.9th percentile of |EMG| stands in, and a note says so). The prompt (any rate, mixed to mono)
gives the start tokens, and its time precedes the EMG's: the output starts where the EMG starts
and lasts as long (see :mod:`mlmlmlm.stream` for the timeline). Every input problem is one line
naming its file (:class:`TranslateError`), raised before anything is written; the output is
written whole or not at all (:mod:`mlmlmlm.atomic`).
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mlmlmlm.data.preprocess import StreamingEmgFilter

MIN_EMG_SR = 1000.0  # Hz: below this the EMG's band (about 25-480 Hz) does not fit
CHUNK_S = 0.25  # EMG pushed per call (the translator is chunk-size invariant)


class EmgPrep:
    """Raw EMG chunks ``[C, n]`` at the EMG codec's rate -> what the codec was trained on: the
    causal EMG filter (:class:`~mlmlmlm.data.preprocess.StreamingEmgFilter`, high-pass and mains
    notch, state kept across chunks) and division by the corpus's per-channel ``scale`` [C]
    (:func:`mlmlmlm.data.dataset.emg_scale`). The dataset filters at the recording's rate before
    resampling; here the filter runs at the codec's rate (both stages lie far below its Nyquist)."""

    def __init__(self, sr: float, scale: np.ndarray | None = None, *, highpass_hz: float = 1.0,
                 mains_hz: float = 50.0):
        self.filter = StreamingEmgFilter(sr, highpass_hz=highpass_hz, mains_hz=mains_hz)
        self.scale = None if scale is None else np.asarray(scale, np.float32)[:, None]  # [C, 1]

    def reset(self) -> None:
        self.filter.reset()

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        y = self.filter(chunk)
        return y if self.scale is None else y / self.scale


def generation_kwargs(cfg, frame_rate: float) -> dict:
    """A translation run's ``generate`` section as it is now in its experiment file
    (:func:`current_generate`) as :class:`Translator` keywords (its sliding window
    ``max_cache_s`` in frames; null keeps the translator's 6-s default)."""
    g = current_generate(cfg).generate
    window = None if not g.max_cache_s else max(1, round(g.max_cache_s * frame_rate))
    return {"temperature": g.temperature, "top_k": g.top_k, "top_p": g.top_p,
            "guidance": g.guidance, "seed": g.seed, "max_cache_frames": window}


def corpus_emg_scale(edc, data_root=None, smoke: bool = False) -> tuple[np.ndarray | None, str]:
    """The per-channel EMG scale [C] of the corpus at ``data_root`` (default: the default
    corpus) under the EMG codec run's data settings ``edc``, as the token cache computed it
    (:func:`mlmlmlm.data.dataset.emg_scale`), and where it came from; ``(None, why)`` when the
    corpus cannot be read."""
    import dataclasses

    from mlmlmlm import paths
    from mlmlmlm.data.dataset import emg_scale
    from mlmlmlm.data.io import DataError, find_recordings

    root = Path(data_root) if data_root is not None else paths.default_data_root(smoke=smoke)
    if not root.is_dir():
        return None, f"there is no corpus at {root}"
    try:
        return emg_scale(dataclasses.replace(edc, root=str(root)), find_recordings(root)), \
            f"the corpus {root}"
    except (DataError, OSError, ValueError) as err:
        return None, f"the corpus {root} is not readable ({err})"


def run_emg_scale(pair, data_root=None, smoke: bool = False) -> tuple[np.ndarray | None, str]:
    """The EMG scale a translation run was trained with: the one its checkpoint records
    (``pair.emg_scale``, from :func:`~mlmlmlm.recipes.transformer.load_pair`; no corpus needed),
    unless ``data_root`` names a corpus; else :func:`corpus_emg_scale` of the EMG codec's data."""
    if data_root is None and pair.emg_scale is not None:
        return np.asarray(pair.emg_scale, np.float32), "the run's checkpoint"
    return corpus_emg_scale(pair.emg_cfg.data, data_root, smoke=smoke)


def current_generate(cfg):
    """A run's config with the ``generate`` section of its experiment file as it is now (the
    checkpoint's record when the file is gone): sampling settings are not weights, so a changed
    ``top_p`` needs no retraining (and the run card's config hash, which holds the section,
    makes the runbook evaluate the run again)."""
    from dataclasses import replace

    from mlmlmlm.config import ConfigError, load_run_config

    try:
        now = load_run_config(cfg.run, cfg.scale)
    except (ConfigError, FileNotFoundError, ValueError):
        return cfg
    return replace(cfg, sections={**cfg.sections, "generate": now.generate})


def translator_from_run(run_dir, *, data_root=None, cls=None, window_s: float | str | None = None,
                        **kw):
    """:meth:`mlmlmlm.stream.Translator.from_run`: the run's model and codecs
    (:func:`mlmlmlm.recipes.transformer.load_pair`), its generation settings
    (:func:`generation_kwargs`: its experiment file's), its EMG preparation (a ``StreamError``
    when no corpus gives the EMG scale and no ``emg_prep`` is given). ``window_s``: the sliding window over the caches in seconds, ``"crop"`` for the
    run's training crop (what every position saw in training, and a steady per-frame cost:
    the live engine's default), None for the run's ``generate.max_cache_s``."""
    from mlmlmlm.recipes.transformer import load_pair
    from mlmlmlm.stream import StreamError, Translator

    cls = cls or Translator
    model, cfg, pair = load_pair(run_dir)
    kw = generation_kwargs(cfg, pair.frame_rate) | kw
    if window_s == "crop":
        kw["max_cache_frames"] = cfg.data.crop_frames
    elif window_s is not None:
        kw["max_cache_frames"] = max(1, round(float(window_s) * pair.frame_rate))
    if "emg_prep" not in kw:
        edc = pair.emg_cfg.data
        scale, source = run_emg_scale(pair, data_root, smoke=cfg.scale == "smoke")
        if scale is None:
            raise StreamError(f"{run_dir}: raw EMG must be scaled as in training, but "
                              f"{source}; pass data_root= (the corpus the run was trained "
                              "on) or emg_prep=")
        kw["emg_prep"] = EmgPrep(pair.emg.cfg.sample_rate, scale,
                                 highpass_hz=edc.highpass_hz, mains_hz=edc.mains_hz)
    return cls(model, pair.audio, pair.emg, **kw)


class TranslateError(ValueError):
    """An input or run that cannot be translated; one line naming the file."""


def read_wav(path: Path, what: str) -> tuple[np.ndarray, float]:
    """A WAV (or any soundfile format) as ``[C, n]`` float32 and its rate; finite values only."""
    import soundfile as sf

    if not path.is_file():
        raise TranslateError(f"{path}: no such {what} file")
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [n, C]
    except Exception as err:  # noqa: BLE001 (soundfile raises LibsndfileError, RuntimeError...)
        raise TranslateError(f"{path}: not a readable audio file ({err})") from None
    x = np.ascontiguousarray(x.T)
    if x.shape[1] == 0:
        raise TranslateError(f"{path}: the {what} file is empty")
    bad = ~np.isfinite(x)
    if bad.any():
        c, i = np.argwhere(bad)[0]
        raise TranslateError(f"{path}: NaN or Inf in the {what} (channel {c}, sample {i}, "
                             f"{i / sr:.3f} s)")
    return x, float(sr)


def prepare_emg(x: np.ndarray, sr: float, edc, scale: np.ndarray | None, path: Path,
                channels: int, emg_sr: float) -> np.ndarray:
    """Raw EMG [C, n] at ``sr`` -> [channels, m] at the codec's ``emg_sr``, as the training data
    (``edc``: the EMG codec run's data settings, ``scale`` [C] or None for the file's own)."""
    from mlmlmlm.data.preprocess import filter_emg, resample

    if x.shape[0] != channels:
        raise TranslateError(f"{path}: {x.shape[0]} channel(s); the EMG codec takes {channels} "
                             "(one per EMG channel, no audio channel)")
    if sr < MIN_EMG_SR:
        raise TranslateError(f"{path}: {sr:g} Hz is below the {MIN_EMG_SR:g} Hz minimum for EMG")
    y = filter_emg(x, sr, highpass_hz=edc.highpass_hz, mains_hz=edc.mains_hz,
                   causal=edc.causal_filter)
    y = resample(y, sr, emg_sr)
    if scale is None:  # the file's own scale, as emg_scale computes a corpus's
        scale = np.percentile(np.abs(y), 99.9, axis=1)
        scale = np.where(scale > 0, scale, 1.0)
    return np.ascontiguousarray(y / np.asarray(scale, np.float32)[:, None], dtype=np.float32)


def prepare_prompt(x: np.ndarray, sr: float, audio_sr: float, path: Path,
                   min_samples: int) -> np.ndarray:
    """Prompt [C, n] at ``sr`` -> mono [m] at ``audio_sr``, at least ``min_samples`` long."""
    from mlmlmlm.data.preprocess import resample

    y = resample(x.mean(0), sr, audio_sr)  # mixed to mono
    if y.size < min_samples:
        raise TranslateError(
            f"{path}: the prompt lasts {1000 * y.size / audio_sr:.1f} ms; the minimum is "
            f"{1000 * min_samples / audio_sr:.1f} ms ({min_samples} samples at {audio_sr:g} Hz)")
    return y


def resolve_run(run: str, scale: str) -> Path:
    """``run`` as a folder when it is one, else ``runs/<scale>/<phase>/<run>``."""
    from mlmlmlm import paths

    if Path(run).is_dir() or run.count("/") != 1:
        return Path(run)
    return paths.run_dir(run, scale)


def translate_files(emg: Path, prompt: Path, out: Path, run: str = "05_transformer/te2",
                    scale: str = "cpu", seconds: float | None = None,
                    temperature: float | None = None, guidance: float | None = None,
                    seed: int | None = None, data_root: Path | None = None,
                    progress: bool = True, log=None) -> dict:
    """Translate the EMG file ``emg`` into ``out`` (float WAV at the audio codec's rate).

    Returns a summary: ``out``, ``seconds`` written, ``frames`` generated, ``rtf`` (compute over
    the audio's duration), ``emg_scale`` (where the EMG scale came from), ``run``.
    """
    from tqdm import tqdm

    from mlmlmlm.atomic import write_bytes_atomic
    from mlmlmlm.recipes.transformer import load_pair
    from mlmlmlm.stream import StreamError, Translator

    t0 = time.perf_counter()
    log = log or (lambda m: print(m, file=sys.stderr))
    emg, prompt, out = Path(emg), Path(prompt), Path(out)
    if seconds is not None and seconds <= 0:
        raise TranslateError(f"--seconds must be positive, got {seconds:g}")
    run_dir = resolve_run(run, scale)
    ckpt = run_dir if run_dir.suffix == ".pt" else run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        raise TranslateError(f"{ckpt}: no checkpoint (train it: mlmlmlm train {run} --scale "
                             f"{scale})")
    model, cfg, pair = load_pair(run_dir)
    kw = generation_kwargs(cfg, pair.frame_rate)
    kw |= {k: v for k, v in (("temperature", temperature), ("guidance", guidance),
                             ("seed", seed)) if v is not None}
    try:
        tr = Translator(model, pair.audio, pair.emg, **kw)
    except StreamError as err:
        raise TranslateError(f"{ckpt}: {err}") from None

    edc = pair.emg_cfg.data
    x, sr = read_wav(emg, "EMG")
    if seconds is not None:
        x = x[:, : max(1, round(seconds * sr))]
    emg_scale, source = run_emg_scale(pair, data_root, smoke=cfg.scale == "smoke")
    if emg_scale is None and data_root is not None:  # named, so it must be there
        raise TranslateError(f"{data_root}: --data-root gives no EMG scale: {source}")
    if emg_scale is None:
        log(f"note: {source}; the EMG is scaled by its own 99.9th percentile instead "
            "(--data-root names the corpus the run was trained on)")
        source = f"{emg} itself"
    e = prepare_emg(x, sr, edc, emg_scale, emg, tr.emg_channels, tr.emg_sr)
    p, psr = read_wav(prompt, "prompt")
    p = prepare_prompt(p, psr, tr.audio_sr, prompt, tr.min_prompt_samples)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # frame-sized work: a second thread only spins (see conftest)
    try:
        tr.start(p)
        step, parts = max(tr.emg_hop, round(CHUNK_S * tr.emg_sr)), []
        with tqdm(total=round(e.shape[1] / tr.emg_sr, 2), unit="s", desc=f"translate {emg.name}",
                  disable=not progress, file=sys.stderr) as bar:
            for i in range(0, e.shape[1], step):
                parts.append(tr.push_emg(e[:, i:i + step]))
                bar.update(round(min(step, e.shape[1] - i) / tr.emg_sr, 2))
        parts.append(tr.flush())
    finally:
        torch.set_num_threads(threads)
    n = round(x.shape[1] / sr * tr.audio_sr)  # as long as the EMG file (or --seconds)
    y = np.concatenate(parts)[:n]
    write_bytes_atomic(out, wav_bytes(y, tr.audio_sr))
    compute = sum(tr.frame_times)
    return {"out": str(out), "seconds": round(y.size / tr.audio_sr, 3),
            "frames": len(tr.frame_times), "rtf": round(compute * tr.frame_rate /
                                                       max(1, len(tr.frame_times)), 4),
            "emg_scale": source, "run": str(run_dir), "wall_s": round(time.perf_counter() - t0, 2)}


def wav_bytes(y: np.ndarray, sr: float) -> bytes:
    """Mono float32 ``y`` [n] as the bytes of a 32-bit float WAV (no clipping)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, y, round(sr), format="WAV", subtype="FLOAT")
    return buf.getvalue()


def run_translate(args) -> int:
    """``mlmlmlm translate``: prints the summary as JSON; exit 2 with one line on bad input."""
    from mlmlmlm.checkpoint import CheckpointError
    from mlmlmlm.config import ConfigError
    from mlmlmlm.data.io import DataError

    try:
        out = translate_files(args.emg, args.prompt, args.out, args.run, args.scale,
                              args.seconds, args.temperature, args.guidance, args.seed,
                              args.data_root)
    except (TranslateError, ConfigError, CheckpointError, DataError) as err:
        print(f"mlmlmlm translate: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0
