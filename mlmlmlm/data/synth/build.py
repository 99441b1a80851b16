"""The default corpus builder: music21 viola lines -> playing plans -> sampled-viola audio and
six-channel motor-unit EMG, plus the real-EMG-driven ``test_real`` split; deterministic per seed.

Introduced in notebook 01_dataset.

Layout written under ``out``::

    corpus.json                      manifest (see :func:`build_corpus`)
    <split>/<id>.audio.wav           mono 44100 Hz PCM_16, peak -1 dBFS
    <split>/<id>.emg.wav             6 ch 22050 Hz PCM_16, full scale = ±1.65 mV
    <split>/<id>.controls.npz        float32 [T_c] at 100 Hz (see :mod:`plan`)
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import platform
import time
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import scipy.signal as ss
import soundfile as sf

from mlmlmlm.data.corpus import MARKER, check_rebuildable
from mlmlmlm.data.synth import emg, plux, render, score
from mlmlmlm.data.synth.plan import RATE, phrase_dynamics, plan_controls

CONTROL_UNITS = {
    "bow_force": "N",
    "bow_velocity": "m/s, positive = down-bow",
    "vibrato_depth": "cents (peak deviation)",
    "vibrato_rate": "Hz (0 = no vibrato)",
    "string": "0 C, 1 G, 2 D, 3 A",
    "pitch": "MIDI note number incl. vibrato and intonation; 0 = rest",
    "loudness_db": "dBFS RMS of the audio, 1024-sample Hann window per 10 ms frame",
}
REAL_SEGMENT_MAX_S = 90.0


def _slug(source: str) -> str:
    return source.split(":", 1)[-1].removesuffix(".mxl").replace("/", "-")


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with fixed zip timestamps, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key, val in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(val), allow_pickle=False)
            zf.writestr(
                zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue()
            )


def _pcm16(x: np.ndarray) -> np.ndarray:
    """Float in [-1, 1) -> int16 (x * 32768, rounded, clipped)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(
        np.int16
    )


def _make_recording(job: dict) -> dict:
    """Render one recording (runs in a worker): plan, audio, EMG, files. Returns the manifest
    entry and its synthetic EMG at 1 kHz (for the calibration report)."""
    key = job["key"]
    rng_plan = np.random.default_rng([*key, 0])
    ev, dur = job["events"], job["duration_s"]
    n_c = round(dur * RATE)
    if job["driver"] == "real-plux":
        dynamics = job["dynamics"]
    else:
        dynamics = phrase_dynamics(ev, n_c, rng_plan)
    plan = plan_controls(ev, dur, dynamics, rng_plan)
    n_audio = n_c * render.AUDIO_SR // RATE
    wav = render.render(
        plan,
        ev,
        n_audio,
        job["sf2"],
        np.random.default_rng([*key, 1]),
        np.random.default_rng(job["room_key"]),
    )
    act = emg.activations(plan, np.random.default_rng([*key, 3]))
    real = job.get("real_channel")
    x = emg.synthesize(act, job["calibration"], (*key, 2), skip=(real,) if real else ())
    if real:
        r = ss.resample_poly(job["real_emg"], 441, 20)[: x.shape[1]]
        x[emg.CHANNELS.index(real), : len(r)] = np.clip(r, -emg.FULL_SCALE_MV, emg.FULL_SCALE_MV)
    folder = Path(job["out"]) / job["split"]
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / job["id"]
    sf.write(f"{stem}.audio.wav", _pcm16(wav)[:, None], render.AUDIO_SR, subtype="PCM_16")
    sf.write(f"{stem}.emg.wav", _pcm16(x.T / emg.FULL_SCALE_MV), emg.EMG_SR, subtype="PCM_16")
    controls = plan.controls()
    controls["loudness_db"] = render.loudness_db(wav, n_c)
    _write_npz(Path(f"{stem}.controls.npz"), controls)
    entry = {k: job[k] for k in ("id", "split", "duration_s", "driver", "source")}
    entry.update(job.get("extra", {}))
    entry["n_notes"] = len(ev)
    syn_1k = None
    if job["driver"] == "synthetic":
        syn_1k = np.stack([plux.to_rate(c, emg.EMG_SR) for c in x]).astype(np.float32)
    return {"entry": entry, "emg_1k": syn_1k}


def _real_jobs(real_minutes: float | None, seed: int) -> list[dict]:
    """test_real recordings: each PLUX recording (the 8-bit twin of a 16-bit one is skipped) cut
    into segments of at most 90 s; its envelope gates notes of held-out music21 phrases and
    sets the dynamics; its raw EMG replaces the channel of the same muscle."""
    recs = [r for r in plux.load_plux() if not r.name.endswith("_8bit")]
    segs = []
    for r in recs:
        n_seg = int(np.ceil(r.duration_s / REAL_SEGMENT_MAX_S))
        seg_len = r.duration_s / n_seg
        segs += [(r, k * seg_len, seg_len) for k in range(n_seg)]
    if real_minutes is not None:
        budget = real_minutes * 60.0 / max(len(segs), 1)
        segs = (
            [(r, a, min(length, max(budget, score.MIN_RECORDING_S))) for r, a, length in segs]
            if real_minutes > 0
            else []
        )
    rng = np.random.default_rng([seed, 9])
    stream = score.phrase_stream(rng) if segs else None
    cursor, jobs = 0, []
    for j, (r, a, length) in enumerate(segs):
        dur = score._round_frames(np.floor(length / 0.2) * 0.2)
        env_all = plux.envelope(r.emg, r.fs, RATE)
        i0 = round(a * RATE)
        env = env_all[i0 : i0 + round(dur * RATE)]
        # Notes play where the muscle is active (hysteresis: on above 0.2, off below 0.1).
        on = ndi.uniform_filter1d(env, 5) > 0.2
        keep = ndi.binary_dilation(on, iterations=3) & (env > 0.1)
        ev, cursor = score.layout_on_gate(stream, keep, RATE, cursor)
        dynamics = np.clip(0.08 + 0.92 * ndi.uniform_filter1d(env, 9), 0.05, 1.0)
        x = r.emg[round(a * r.fs) : round(a * r.fs) + round(dur * r.fs)]
        channel = plux.REAL_CHANNEL[r.muscle]
        jobs.append(
            {
                "id": f"real{j:02d}-{r.name.replace('_', '-')}",
                "split": "test_real",
                "driver": "real-plux",
                "source": f"music21:{'+'.join(score.REAL_WORKS)}",
                "duration_s": dur,
                "events": ev,
                "dynamics": dynamics,
                "real_emg": np.asarray(x, dtype=np.float64),
                "real_channel": channel,
                "key": (seed, 1, j),
                "extra": {
                    "plux_recording": r.name,
                    "plux_muscle": r.muscle,
                    "plux_segment_s": [round(a, 3), round(a + dur, 3)],
                    "real_channels": [channel],
                    "synthetic_channels": [c for c in emg.CHANNELS if c != channel],
                },
            }
        )
    return jobs


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in (
        "numpy",
        "scipy",
        "music21",
        "tinysoundfont",
        "soundfile",
        "h5py",
        "biosignalsnotebooks",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def build_corpus(
    out: Path,
    minutes: float = 24.0,
    seed: int = 0,
    progress: bool = True,
    *,
    real_minutes: float | None = None,
    sf2: Path | None = render.DEFAULT_SF2,
    workers: int = 2,
) -> dict:
    """Build the default corpus into ``out`` and return its manifest (also ``out/corpus.json``).

    Parameters
    ----------
    out : folder to write (created). It must be missing, empty, or a corpus of ours holding only
        the builder's files (:func:`mlmlmlm.data.corpus.check_rebuildable`); anything else is
        refused with a ``DataError`` before a byte is written.
    minutes : paired minutes of synthetic-driven material, split by recording ~77/8/15 into
        train/val/test (at least one recording each).
    seed : everything random derives from it; the same seed gives byte-identical audio, EMG and
        control files (``corpus.json`` differs only in ``build``).
    progress : show a tqdm bar.
    real_minutes : length of ``test_real``; ``None`` = all the PLUX material (~5 min), 0 = none.
    sf2 : SoundFont with a Viola preset; missing -> the built-in bowed-string model.
    workers : processes (recordings are independent, so the result does not depend on it).
    """
    t0 = time.perf_counter()
    out = Path(out)
    check_rebuildable(out)
    out.mkdir(parents=True, exist_ok=True)
    sf2 = Path(sf2) if sf2 is not None else None
    source = render.sound_source(sf2)
    cals, cal_report = emg.calibrate()
    rng = np.random.default_rng([seed, 7])
    excerpts = score.cut_recordings(minutes * 60.0, rng, start=seed % len(score.WORKS))
    n = len(excerpts)
    # test gets ~15 %: enough 6-s windows (hop 3 s) for N = 64 held-out identifiability windows
    n_test, n_val = max(1, round(0.15 * n)), max(1, round(0.08 * n))
    perm = np.random.default_rng([seed, 8]).permutation(n)
    split = np.array(["train"] * n, dtype=object)
    split[perm[:n_test]] = "test"
    split[perm[n_test : n_test + n_val]] = "val"
    jobs = [
        {
            "id": f"syn{i:03d}-{_slug(e.source)}",
            "split": str(split[i]),
            "driver": "synthetic",
            "source": e.source,
            "duration_s": e.duration_s,
            "events": e.events,
            "key": (seed, 0, i),
            "extra": {"bpm": round(e.bpm, 2), "first_note": e.first_note},
        }
        for i, e in enumerate(excerpts)
    ]
    jobs += _real_jobs(real_minutes, seed)
    for job in jobs:
        job.update(out=str(out), sf2=sf2, calibration=cals, room_key=[seed, 99])
    results = _run(jobs, workers, progress)
    entries = [r["entry"] for r in results]
    syn = [r["emg_1k"] for r in results if r["emg_1k"] is not None]
    for c, ch in enumerate(emg.CHANNELS):
        got = plux.emg_stats(np.concatenate([s[c] for s in syn]).astype(np.float64), plux.STATS_FS)
        cal_report[ch]["achieved_corpus"] = {k: got[k] for k in cal_report[ch]["achieved_protocol"]}
    manifest = {
        "name": "default",
        "built_by": MARKER,  # only folders carrying it may ever be rebuilt (data/corpus.py)
        "seed": int(seed),
        "minutes": float(minutes),
        "audio_sr": render.AUDIO_SR,
        "emg_sr": emg.EMG_SR,
        "channels": ["audio", *emg.CHANNELS],
        "sound_source": source,
        "control_rate": RATE,
        "controls": CONTROL_UNITS,
        "emg_full_scale_mv": emg.FULL_SCALE_MV,
        "emg_units": "WAV value 1.0 = 1.65 mV at the electrodes (BITalino EMG range); raw, "
        "unfiltered: includes electrode offset drift and 50 Hz mains hum",
        "real_channels": "test_real recordings carry real PLUX EMG on the channel named in "
        "their 'real_channels' (biceps -> emg_biceps_l, adductor pollicis -> emg_wrist_flex_l), "
        "resampled 1000 -> 22050 Hz; their other channels are motor-unit EMG driven by the same "
        "envelope. Synthetic recordings carry no real EMG.",
        "recordings": entries,
        "emg_calibration": {
            "method": "Motor-unit model fitted per channel to real PLUX EMG (biosignalsnotebooks, "
            "1 kHz) on a cyclic-contraction protocol (2 s rest / 2 s at drive "
            f"{emg.REF_DRIVE}): MUAP width -> median frequency, gain -> active RMS, noise -> "
            "rest RMS. Statistics at 1 kHz, amplitudes in mV (see plux.emg_stats).",
            "reference_drive": emg.REF_DRIVE,
            "tolerance": {
                k: {"kind": kind, "tol": tol} for k, (kind, tol) in emg.TOLERANCE.items()
            },
            "channels": cal_report,
        },
        "build": {"seconds": round(time.perf_counter() - t0, 2), "versions": _versions()},
    }
    (out / "corpus.json").write_text(json.dumps(_jsonable(manifest), indent=1) + "\n")
    return manifest


def _run(jobs: list[dict], workers: int, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="corpus", unit="rec", disable=not progress)
    if workers > 1 and len(jobs) > 1 and "fork" in mp.get_all_start_methods():
        # Largest first, so two workers finish together; results come back in job order.
        order = sorted(range(len(jobs)), key=lambda i: -jobs[i]["duration_s"])
        results: list = [None] * len(jobs)
        with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            for i, res in zip(order, pool.imap(_make_recording, [jobs[i] for i in order])):
                results[i] = res
                bar.update()
    else:
        results = []
        for job in jobs:
            results.append(_make_recording(job))
            bar.update()
    bar.close()
    return results


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return round(float(x), 6)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x
