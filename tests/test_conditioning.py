"""Conditioning metrics (mlmlmlm.conditioning) on synthetic signals whose answers are known."""

import numpy as np
import pytest

from mlmlmlm import conditioning as C

SR = 22050


def tone(seconds=3.0, f0=440.0, rate=0.0, depth_cents=0.0, env=None, seed=0):
    """A viola-like harmonic tone [T] with an optional vibrato and loudness envelope."""
    t = np.arange(int(seconds * SR)) / SR
    cents = depth_cents * np.sin(2 * np.pi * rate * t)
    phase = 2 * np.pi * np.cumsum(f0 * 2 ** (cents / 1200)) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 5))
    if env is not None:
        x = x * env(t)
    return (0.2 * x).astype(np.float32)


def notes(seconds, starts, seed):
    """Plucked notes (fast attack, exponential decay) starting at ``starts`` (s)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = np.zeros_like(t)
    for s in starts:
        f = rng.uniform(200, 600)
        on = t >= s
        x += on * np.exp(-(t - s) * 8) * np.sin(2 * np.pi * f * (t - s))
    return (0.3 * x).astype(np.float32)


def swell(period, phase=0.0):
    return lambda t: 0.05 + 0.95 * (0.5 + 0.5 * np.sin(2 * np.pi * t / period + phase))


def test_identical_audio_agrees_perfectly():
    x = notes(3.0, [0.3, 0.9, 1.6, 2.2], seed=1)
    pooled, per = C.loudness_correlation([x], [x], SR)
    assert pooled == pytest.approx(1.0) and per == pytest.approx(1.0)
    assert C.onset_f_measure(x, x, SR) == pytest.approx(1.0)
    s = C.scores([x, x[::-1].copy()], [x, x[::-1].copy()], SR)
    assert s["loudness_corr"] == pytest.approx(1.0) and s["onset_f"] == pytest.approx(1.0)


def test_unrelated_audio_does_not_agree():
    rng = np.random.default_rng(0)
    gens, refs = [], []
    for i in range(8):  # envelopes at unrelated periods and phases, notes at unrelated times
        refs.append(tone(2.0, env=swell(rng.uniform(0.3, 1.0), rng.uniform(0, 6))))
        gens.append(tone(2.0, env=swell(rng.uniform(0.3, 1.0), rng.uniform(0, 6))))
    pooled, _ = C.loudness_correlation(gens, refs, SR)
    assert abs(pooled) < 0.3
    a = notes(4.0, [0.2, 1.0, 1.8, 2.6, 3.4], seed=2)
    b = notes(4.0, [0.55, 1.4, 2.2, 3.0, 3.75], seed=3)  # every onset > 50 ms from a's
    assert C.onset_f_measure(b, a, SR) < 0.25
    assert C.onset_f_measure(a, a, SR) > 0.9  # the same detector does find a's onsets


def test_loudness_correlation_follows_the_envelope_not_the_pitch():
    ref = tone(3.0, 440.0, env=swell(1.0))
    gen = tone(3.0, 300.0, env=swell(1.0), seed=5)  # another note, the same dynamics
    anti = tone(3.0, 440.0, env=swell(1.0, np.pi))  # the same note, opposite dynamics
    assert C.loudness_correlation([gen], [ref], SR)[0] > 0.9
    assert C.loudness_correlation([anti], [ref], SR)[0] < -0.5


@pytest.mark.parametrize("rate", [4.5, 6.0, 7.5])
def test_vibrato_rate_and_depth_of_a_known_vibrato(rate):
    r, d = C.vibrato(tone(3.0, 440.0, rate=rate, depth_cents=30.0), SR)
    assert r == pytest.approx(rate, abs=0.3)
    assert d == pytest.approx(30.0, rel=0.25)


def test_vibrato_agreement_in_scores():
    refs = [tone(2.0, 440.0, rate=6.0, depth_cents=d) for d in (15, 30, 45)]
    same = C.scores(refs, refs, SR)
    assert same["vibrato_rate_error_hz"] == pytest.approx(0.0, abs=1e-9)
    assert same["vibrato_depth_corr"] == pytest.approx(1.0)
    flat = C.scores([tone(2.0, 440.0) for _ in refs], refs, SR)
    assert flat["n_vibrato_windows"] == 3
    assert flat["vibrato_depth_error_cents"] > 10  # a flat tone misses every depth
    off = C.scores([tone(2.0, 440.0, rate=4.0, depth_cents=d) for d in (15, 30, 45)], refs, SR)
    assert off["vibrato_rate_error_hz"] == pytest.approx(2.0, abs=0.4)


def test_silent_reference_has_nothing_to_score():
    z = np.zeros(SR, np.float32)
    assert np.isnan(C.onset_f_measure(z, z, SR))
    assert np.isnan(C.vibrato(z, SR)[0])
    assert np.isnan(C.loudness_correlation([z], [z], SR)[0])


def test_clicks_count_each_broadband_impulse_once_and_none_in_a_clean_tone():
    x = tone(4.0, f0=330.0, rate=5.5, depth_cents=30.0, env=swell(2.0))
    assert C.clicks(x, SR) == 0
    clicked = x.copy()
    at = [0.5, 1.3, 2.2, 3.1, 3.7]
    for t in at:  # a few samples of broadband energy, like a decoded tail code
        i = int(t * SR)
        clicked[i:i + 3] += np.array([0.3, -0.3, 0.2], np.float32)
    assert C.clicks(clicked, SR) == len(at)
    sc = C.scores([clicked], [x], SR)
    assert sc["clicks_per_min"] == pytest.approx(len(at) / (4.0 / 60))
    assert C.scores([x], [x], SR)["clicks_per_min"] == 0
    assert np.isnan(C.clicks(clicked, 8000))  # nothing above the band edge to measure
