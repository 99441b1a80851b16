"""EMG filters, resampling, time-stretch, windowing and splits (mlmlmlm.data.preprocess)."""

import numpy as np
import pytest

from mlmlmlm.data.preprocess import (
    StreamingEmgFilter,
    filter_emg,
    resample,
    resample_ratio,
    split_names,
    stretch_curve,
    time_stretch,
    window,
    window_starts,
)

SR = 2000.0


def sine(freq, sr=SR, seconds=4.0):
    t = np.arange(int(sr * seconds)) / sr
    return np.sin(2 * np.pi * freq * t).astype(np.float32)


def rms_db(x):
    return 20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize("causal", [True, False])
def test_notch_removes_mains_and_passes_100_hz(causal):
    mid = slice(int(SR), int(3 * SR))  # skip the filter's settling time at both ends
    for mains in (50.0, 60.0):
        hum = sine(mains)
        out = filter_emg(hum[None], SR, mains_hz=mains, causal=causal)[0]
        assert rms_db(hum[mid]) - rms_db(out[mid]) > 30
    tone = sine(100.0)
    out = filter_emg(tone[None], SR, mains_hz=50.0, causal=causal)[0]
    assert abs(rms_db(tone[mid]) - rms_db(out[mid])) < 0.5


def test_60_hz_option_leaves_50_hz():
    hum = sine(50.0)
    out = filter_emg(hum, SR, mains_hz=60.0)
    assert abs(rms_db(hum[2000:]) - rms_db(out[2000:])) < 1.0


def test_highpass_removes_offset_and_drift():
    t = np.arange(int(SR * 20)) / SR
    emg = 0.5 + 0.3 * np.sin(2 * np.pi * 0.1 * t) + 0.01 * sine(80.0, seconds=20.0)
    for causal in (True, False):
        out = filter_emg(emg, SR, mains_hz=None, causal=causal)
        assert abs(out[-4000:].mean()) < 2e-3  # offset gone
        assert np.std(out[-4000:]) < 0.02  # drift attenuated from 0.21 to ~the 80 Hz tone
    assert filter_emg(emg, SR).dtype == np.float32


def test_zero_phase_has_no_delay_and_causal_starts_without_transient():
    tone = sine(100.0)
    zp = filter_emg(tone, SR, causal=False)
    assert np.max(np.abs(zp[2000:6000] - tone[2000:6000])) < 0.05
    offset = np.full(
        4000, 0.5, np.float32
    )  # a pure sensor offset: the causal filter starts at rest
    assert np.max(np.abs(filter_emg(offset, SR, causal=True))) < 1e-6


@pytest.mark.parametrize("chunk", [1, 64, 333])
def test_streaming_filter_matches_offline_causal(chunk):
    rng = np.random.default_rng(0)
    x = (0.3 + rng.standard_normal((6, 3000))).astype(np.float32)
    offline = filter_emg(x, SR, causal=True)
    f = StreamingEmgFilter(SR)
    online = np.concatenate([f(x[:, i : i + chunk]) for i in range(0, 3000, chunk)], axis=1)
    np.testing.assert_allclose(online, offline, atol=1e-5)


def test_resample_ratios_and_lengths():
    assert resample_ratio(22050, 44100) == (2, 1)
    assert resample_ratio(22050, 2756.25) == (1, 8)
    assert resample_ratio(44100, 2756.25) == (1, 16)
    assert resample_ratio(44100, 44100) == (1, 1)
    x = np.random.default_rng(0).standard_normal((6, 22050)).astype(np.float32)
    assert resample(x, 22050, 44100).shape == (6, 44100)
    assert resample(x, 22050, 2756.25).shape == (6, 2757)  # ceil(22050 / 8)
    y = resample(sine(100.0, 22050, 1.0), 22050, 2756.25)
    ref = sine(100.0, 2756.25, 1.0)
    np.testing.assert_allclose(y[200:-200], ref[200 : len(y) - 200], atol=0.01)


def _burst_time(x, sr):
    env = np.abs(x)
    return np.argmax(env > 0.5 * env.max()) / sr


def test_time_stretch_keeps_channels_aligned_across_rates():
    # One burst at 1.0 s, held in "audio" at 8 kHz and in "EMG" at 2 kHz.
    def burst(sr):
        t = np.arange(int(3 * sr)) / sr
        return (np.sin(2 * np.pi * 200 * t) * ((t > 1.0) & (t < 1.3))).astype(np.float32)

    for rate in (0.9, 1.1):
        a = time_stretch(np.stack([burst(8000), burst(8000)]), rate, 8000)
        e = time_stretch(burst(2000), rate, 2000)
        assert a.shape == (2, round(24000 / rate)) and e.shape == (round(6000 / rate),)
        np.testing.assert_array_equal(a[0], a[1])  # channels of one array: identical treatment
        ta, te = _burst_time(a[0], 8000), _burst_time(e, 2000)
        assert abs(ta - 1.0 / rate) < 0.03 and abs(te - 1.0 / rate) < 0.03
    x = np.ones((3, 100), np.float32)
    np.testing.assert_array_equal(time_stretch(x, 1.0, 8000), x)


def test_stretch_curve():
    c = np.arange(100, dtype=np.float32)
    s = stretch_curve(c, 0.5)
    assert len(s) == 200 and s[10] == pytest.approx(5.0)
    assert len(stretch_curve(c, 1.1)) == round(100 / 1.1)


def test_window_shapes_and_overlap():
    x = np.arange(2 * 10).reshape(2, 10)
    w = window(x, 4, 2)
    assert w.shape == (4, 2, 4)
    np.testing.assert_array_equal(w[1], x[:, 2:6])
    assert window(np.arange(10), 4, 3).shape == (3, 1, 4)
    assert window(x, 11, 2).shape == (0, 2, 11)
    np.testing.assert_array_equal(window_starts(10, 4, 2), [0, 2, 4, 6])


def test_split_names_is_deterministic_and_contiguous():
    names = [f"rec{i:02d}" for i in range(20)][::-1]
    s = split_names(names)
    assert [s[f"rec{i:02d}"] for i in range(20)] == ["train"] * 16 + ["val"] * 2 + ["test"] * 2
    assert list(split_names(["c", "a", "b"]).values()) == ["train", "val", "test"]
    assert set(split_names(["a", "b"]).values()) == {"train"}
