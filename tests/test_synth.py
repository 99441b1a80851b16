"""The embedded default corpus builder (mlmlmlm.data.synth): layout, determinism, rates and
shapes, EMG calibration against real PLUX EMG, the real-EMG-driven split, sound sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mlmlmlm.data.synth import emg, plux, render
from mlmlmlm.data.synth.build import build_corpus

MIN = 0.4  # paired minutes per test build: three 8-s recordings
REAL_MIN = 0.1  # test_real: one short (8 s) segment per PLUX recording
CONTROL_KEYS = {
    "bow_force",
    "bow_velocity",
    "vibrato_depth",
    "vibrato_rate",
    "string",
    "pitch",
    "loudness_db",
}
HAVE_SF2 = render.DEFAULT_SF2.is_file()


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _manifest_without_build(root: Path) -> dict:
    m = json.loads((root / "corpus.json").read_text())
    m.pop("build")
    return m


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    base = tmp_path_factory.mktemp("synth")
    kw = {"minutes": MIN, "real_minutes": REAL_MIN, "progress": False}
    a = build_corpus(base / "a", seed=0, **kw)
    build_corpus(base / "b", seed=0, workers=1, **kw)  # same seed, other worker count
    build_corpus(base / "c", seed=1, **kw)
    return base, a


def test_same_seed_is_byte_identical(corpora):
    base, _ = corpora
    fa, fb = _files(base / "a"), _files(base / "b")
    assert fa.keys() == fb.keys()
    for name in fa:
        if name != "corpus.json":
            assert fa[name] == fb[name], name
    assert _manifest_without_build(base / "a") == _manifest_without_build(base / "b")


def test_other_seed_gives_other_material(corpora):
    base, _ = corpora
    wavs_a = {v for k, v in _files(base / "a").items() if k.endswith(".wav")}
    wavs_c = {v for k, v in _files(base / "c").items() if k.endswith(".wav")}
    assert not wavs_a & wavs_c


def test_layout_and_manifest(corpora):
    base, man = corpora
    root = base / "a"
    assert json.loads((root / "corpus.json").read_text())["recordings"] == man["recordings"]
    assert man["name"] == "default" and man["seed"] == 0 and man["minutes"] == MIN
    assert man["audio_sr"] == 44100 and man["emg_sr"] == 22050 and man["control_rate"] == 100
    assert man["channels"] == ["audio", *emg.CHANNELS]
    assert man["sound_source"] == render.sound_source(render.DEFAULT_SF2)
    assert isinstance(man["build"]["seconds"], float) and man["build"]["versions"]["numpy"]
    splits = {r["split"] for r in man["recordings"]}
    assert splits == {"train", "val", "test", "test_real"}
    ids = [r["id"] for r in man["recordings"]]
    assert len(set(ids)) == len(ids)
    expected = {
        f"{r['split']}/{r['id']}.{kind}"
        for r in man["recordings"]
        for kind in ("audio.wav", "emg.wav", "controls.npz")
    }
    assert set(_files(root)) == expected | {"corpus.json"}
    for r in man["recordings"]:
        assert r["driver"] == ("real-plux" if r["split"] == "test_real" else "synthetic")
        assert r["source"].startswith("music21:")
    syn_minutes = sum(r["duration_s"] for r in man["recordings"] if r["driver"] == "synthetic") / 60
    assert syn_minutes == pytest.approx(max(MIN, 0.4), abs=0.01)


def test_rates_channels_and_control_shapes(corpora):
    base, man = corpora
    for r in man["recordings"]:
        stem = base / "a" / r["split"] / r["id"]
        a = sf.info(f"{stem}.audio.wav")
        e = sf.info(f"{stem}.emg.wav")
        assert (a.samplerate, a.channels, a.subtype) == (44100, 1, "PCM_16")
        assert (e.samplerate, e.channels, e.subtype) == (22050, 6, "PCM_16")
        assert a.frames == round(r["duration_s"] * 44100)
        assert e.frames == round(r["duration_s"] * 22050)
        with np.load(f"{stem}.controls.npz") as c:
            assert set(c.files) == CONTROL_KEYS
            for k in CONTROL_KEYS:
                assert c[k].dtype == np.float32 and c[k].shape == (round(r["duration_s"] * 100),), k
                assert np.all(np.isfinite(c[k]))
            assert c["bow_force"].max() > 0.3 and np.abs(c["bow_velocity"]).max() > 0.05
            assert set(np.unique(c["string"])) <= {0.0, 1.0, 2.0, 3.0}
        audio, _ = sf.read(f"{stem}.audio.wav")
        assert 0.8 < np.abs(audio).max() < 0.95  # peak ≈ -1 dBFS, no clipping
        x, _ = sf.read(f"{stem}.emg.wav")
        assert np.all(x.std(axis=0) > 1e-4) and np.abs(x).max() < 1.0


def test_test_real_split_carries_real_plux_emg(corpora):
    base, man = corpora
    real = [r for r in man["recordings"] if r["split"] == "test_real"]
    assert real and all(r["driver"] == "real-plux" for r in real)
    plux_recs = {p.name: p for p in plux.load_plux()}
    for r in real:
        (ch,) = r["real_channels"]
        assert ch == plux.REAL_CHANNEL[r["plux_muscle"]]
        assert set(r["synthetic_channels"]) == set(emg.CHANNELS) - {ch}
        x, sr = sf.read(base / "a" / "test_real" / f"{r['id']}.emg.wav")
        got = plux.to_rate(x[:, emg.CHANNELS.index(ch)] * man["emg_full_scale_mv"], sr)
        src = plux_recs[r["plux_recording"]]
        a, b = (round(t * src.fs) for t in r["plux_segment_s"])
        want = src.emg[a:b]
        n = min(len(got), len(want)) - 50
        assert np.corrcoef(got[25:n], want[25:n])[0, 1] > 0.95  # the real signal, resampled


def test_calibration_matches_real_plux_targets(corpora):
    _, man = corpora
    cal = man["emg_calibration"]["channels"]
    assert set(cal) == set(emg.CHANNELS)
    for ch, rep in cal.items():
        tg, got = rep["target"], rep["achieved_protocol"]
        for key, (kind, tol) in emg.TOLERANCE.items():
            err = abs(got[key] - tg[key]) / (tg[key] if kind == "rel" else 1.0)
            assert err <= tol, (ch, key, got[key], tg[key])
        # The corpus itself (viola playing) keeps the spectrum of real EMG.
        assert abs(rep["achieved_corpus"]["median_freq_hz"] / tg["median_freq_hz"] - 1) < 0.25, ch


def test_compare_synthetic_to_real(corpora):
    base, _ = corpora
    df = plux.compare_synthetic_to_real(base / "a")
    assert set(df["source"]) == {"synthetic", "real"}
    assert (df["source"] == "synthetic").sum() == 6 and (df["source"] == "real").sum() == len(
        plux.load_plux()
    )
    for col in ("rms", "median_freq_hz", "mean_freq_hz", "kurtosis", "mains_share"):
        assert df[col].notna().all(), col
    syn = df[df["source"] == "synthetic"]["median_freq_hz"]
    real = df[df["source"] == "real"]["median_freq_hz"]
    assert abs(syn.median() - real.median()) < 25


def test_plux_loader_and_stats():
    recs = plux.load_plux()
    assert len(recs) >= 5 and all(r.fs == 1000 and r.emg.ndim == 1 for r in recs)
    assert {r.muscle for r in recs} == {"biceps_brachii", "adductor_pollicis"}
    assert 250 < sum(r.duration_s for r in recs) < 400
    rng = np.random.default_rng(0)
    t = np.arange(20000) / 1000
    st = plux.emg_stats(rng.standard_normal(len(t)) + 3 * np.sin(2 * np.pi * 50 * t), 1000)
    assert st["mains_share"] > 0.5 and abs(st["kurtosis"] - 1.5) < 0.5  # sine-dominated
    st = plux.emg_stats(rng.standard_normal(len(t)), 1000)
    assert abs(st["kurtosis"] - 3) < 0.2 and 240 < st["median_freq_hz"] < 260
    f, p = plux.psd(rng.standard_normal(5000), 1000)
    assert f[1] - f[0] == 1.0 and p.shape == f.shape


def test_builtin_fallback_when_soundfont_missing(tmp_path):
    man = build_corpus(
        tmp_path,
        minutes=0.2,
        real_minutes=0,
        progress=False,
        sf2=tmp_path / "missing.sf2",
        workers=1,
    )
    assert man["sound_source"] == render.BUILTIN
    assert {r["split"] for r in man["recordings"]} == {"train", "val", "test"}
    r = man["recordings"][0]
    audio, sr = sf.read(tmp_path / r["split"] / f"{r['id']}.audio.wav")
    assert sr == 44100 and 0.8 < np.abs(audio).max() < 0.95 and audio.std() > 0.01


@pytest.mark.skipif(not HAVE_SF2, reason="fluid-soundfont-gm is not installed")
def test_sampled_viola_used_when_soundfont_exists(corpora):
    _, man = corpora
    assert man["sound_source"].startswith("FluidR3_GM.sf2 Viola")
