"""Pitch and vibrato metrics on signals whose answer is known (mlmlmlm.melody)."""

import numpy as np
import pytest

from mlmlmlm import melody

SR = 22050


def tone(f0, depth_cents=0.0, rate_hz=6.0, seconds=3.0, harmonics=5):
    t = np.arange(int(seconds * SR)) / SR
    f = f0 * 2 ** (depth_cents * np.sin(2 * np.pi * rate_hz * t) / 1200)
    phase = 2 * np.pi * np.cumsum(f) / SR
    return (0.2 * sum(np.sin(k * phase) / k for k in range(1, harmonics + 1))).astype(np.float32)


def test_identity_scores_one():
    x = tone(294.0, 30.0)
    s = melody.melody_scores(x, x, SR)
    assert s["raw_pitch_accuracy"] == 1.0 and s["raw_chroma_accuracy"] == 1.0
    assert s["voicing_recall"] == 1.0 and s["voicing_false_alarm"] == 0.0
    assert s["median_cents_error"] == 0.0


def test_an_octave_error_scores_zero_pitch_and_full_chroma():
    s = melody.melody_scores(tone(588.0), tone(294.0), SR)
    assert s["raw_pitch_accuracy"] == 0.0
    assert s["raw_chroma_accuracy"] == 1.0
    assert s["median_cents_error"] == pytest.approx(1200, abs=10)


def test_noise_with_the_notes_envelope_is_not_voiced():
    x = tone(294.0)
    noise = np.random.default_rng(0).standard_normal(len(x)).astype(np.float32) * 0.1
    s = melody.melody_scores(noise, x, SR)
    assert s["voicing_recall"] < 0.05
    assert s["raw_pitch_accuracy"] < 0.1


def test_a_quarter_tone_off_fails_the_50_cent_tolerance():
    s = melody.melody_scores(tone(294.0 * 2 ** (60 / 1200)), tone(294.0), SR)
    assert s["raw_pitch_accuracy"] == 0.0
    assert s["median_cents_error"] == pytest.approx(60, abs=5)


def test_vibrato_depth_is_measured_and_flattening_is_seen():
    x = tone(294.0, 30.0)
    d_o, d_r = melody.vibrato_depths(x, x, SR)
    assert d_o == d_r and 24 < d_o < 32  # the tracker's 46-ms frames smooth it a little
    _, flat = melody.vibrato_depths(tone(294.0), x, SR)
    assert flat < 2
    _, half = melody.vibrato_depths(tone(294.0, 15.0), x, SR)
    assert half == pytest.approx(d_o / 2, rel=0.1)


def test_pitch_report_correlates_depths_across_windows():
    depths = [0, 10, 20, 30, 40]
    origs = np.stack([tone(294.0, d, seconds=2.0) for d in depths])
    same = melody.pitch_report(origs, origs, SR, true_depth=np.array(depths, float))
    assert same["vibrato"]["n_windows"] == 4  # the window with no true vibrato is left out
    assert same["vibrato"]["depth_correlation"] == pytest.approx(1.0)
    flat = np.stack([tone(294.0, 0.0, seconds=2.0)] * 5)
    flattened = melody.pitch_report(flat, origs, SR, true_depth=np.array(depths, float))
    assert flattened["vibrato"]["depth_recon_cents"] < 2
    assert flattened["mean"]["raw_pitch_accuracy"] == 1.0  # pitch right, vibrato gone
