"""The control probe and the band-resynthesis ceiling on signals whose answer is known."""

import numpy as np
import pytest
import torch

from mlmlmlm import probe
from mlmlmlm.evaluate import band_resynthesis, identifiability


def _windows(rng, n, frames=200, k=2):
    # targets: smooth random curves; [frames, k] per window
    out = []
    for _ in range(n):
        y = np.cumsum(rng.standard_normal((frames, k)), axis=0)
        out.append(y - y.mean(0))
    return out


def test_features_that_are_the_controls_score_one():
    rng = np.random.default_rng(0)
    ys_a, ys_b = _windows(rng, 8), _windows(rng, 4)
    mix = rng.standard_normal((2, 5))
    train = [(y @ mix, y) for y in ys_a]
    test = [(y @ mix, y) for y in ys_b]
    r = probe.probe(train, test, ["a", "b"])
    assert r["r2"]["a"] > 0.99 and r["r2"]["b"] > 0.99


def test_a_probe_on_noise_scores_about_zero():
    rng = np.random.default_rng(1)
    ys_a, ys_b = _windows(rng, 8), _windows(rng, 4)
    train = [(rng.standard_normal((len(y), 16)), y) for y in ys_a]
    test = [(rng.standard_normal((len(y), 16)), y) for y in ys_b]
    r = probe.probe(train, test, ["a", "b"])
    assert abs(r["mean"]) < 0.15  # about zero: the test windows' own mean is not known to it


def test_frame_controls_and_envelopes_have_one_row_per_frame():
    c = {"bow_force": np.linspace(0, 1, 600), "loudness_db": np.zeros(600)}
    y = probe.frame_controls(c, control_rate=100.0, frame_rate=86.13, n_frames=516)
    assert y.shape == (516, 2)
    assert y[0, 0] < y[-1, 0]  # the curve's rise is kept, in order
    e = probe.envelope_features(np.random.default_rng(0).standard_normal((6, 6 * 2756)), 2756.25,
                                86.13, 516)
    assert e.shape == (516, 12)


def test_band_resynthesis_keeps_band_energies_and_identifies_windows():
    rng = np.random.default_rng(0)
    sr, t = 2756.25, 2 * 2756
    # noise whose level in two bands rises and falls differently in every window
    windows = []
    for _ in range(6):
        env = np.abs(np.cumsum(rng.standard_normal((2, t)), axis=1)) / 50 + 0.05
        low = np.convolve(rng.standard_normal(t), np.ones(8) / 8, "same")
        windows.append(env[0] * low + env[1] * np.diff(rng.standard_normal(t + 1)))
    x = torch.tensor(np.stack(windows)[:, None], dtype=torch.float32)
    y = band_resynthesis(x, sr, hop=32)
    assert y.shape == x.shape
    ratio = y.pow(2).mean() / x.pow(2).mean()
    assert ratio.item() == pytest.approx(1.0, rel=0.05)  # power kept
    assert not torch.allclose(y, x, atol=1e-3)  # the noise itself is not copied
    assert identifiability(x, y).item() >= 0.75


def test_smooth_keeps_what_is_slow_and_removes_what_is_fast():
    rate = 86.13
    t = np.arange(860) / rate
    slow, fast = np.sin(2 * np.pi * 1.0 * t), np.sin(2 * np.pi * 30.0 * t)
    out = probe.smooth(np.stack([slow, fast], 1), rate)
    assert np.abs(out[100:-100, 0] - slow[100:-100]).max() < 0.02
    assert np.abs(out[100:-100, 1]).max() < 0.02
