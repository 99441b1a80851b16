"""The live phrase trigger (06_live_demo): fires on an RMS rise above the threshold, not on noise."""

import numpy as np
import pytest

from mlmlmlm.live.trigger import PromptBuffer, RmsTrigger, TriggerConfig

SR = 22050.0


def tone(seconds: float, db: float, f: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (np.sqrt(2) * 10 ** (db / 20) * np.sin(2 * np.pi * f * t)).astype(np.float32)


def noise(seconds: float, db: float, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(int(seconds * SR))
    return (10 ** (db / 20) * x).astype(np.float32)


def feed(trig: RmsTrigger, x: np.ndarray, chunk: int = 300) -> list:
    events = []
    for i in range(0, len(x), chunk):
        events += trig.process(x[i:i + chunk])
    return events


def test_onset_fires_once_at_a_rise_above_the_threshold():
    trig = RmsTrigger(SR, TriggerConfig(threshold_db=12.0))
    x = np.concatenate([noise(1.0, -60), tone(1.0, -20) + noise(1.0, -60, 1)])
    events = feed(trig, x)
    onsets = [e for e in events if e.kind == "onset"]
    assert len(onsets) == 1
    delay = (onsets[0].sample - SR) / SR  # seconds after the tone began
    assert 0 < delay < 0.03 and onsets[0].rise_db > 12.0
    assert onsets[0].level_db > TriggerConfig().floor_db


@pytest.mark.parametrize("chunk", [1, 64, 4096])
def test_chunking_does_not_change_the_events(chunk):
    x = np.concatenate([noise(0.5, -60), tone(0.5, -20), noise(0.6, -70), tone(0.4, -25)])
    ref = [(e.kind, e.sample) for e in feed(RmsTrigger(SR), x, 300)]
    assert [(e.kind, e.sample) for e in feed(RmsTrigger(SR), x, chunk)] == ref
    assert [k for k, _ in ref] == ["onset", "silence", "onset"]


def test_noise_and_rises_below_the_threshold_never_fire():
    rng = np.random.default_rng(3)
    # noise whose level steps up and down by up to 9 dB every 0.2 s, around -30 dBFS
    steps = [noise(0.2, -30 + rng.uniform(-4.5, 4.5), seed=i) for i in range(40)]
    trig = RmsTrigger(SR, TriggerConfig(threshold_db=10.0))
    events = feed(trig, np.concatenate([noise(0.3, -34)] + steps))
    assert [e for e in events if e.kind == "onset"] == []
    # the same stepping but a 12 dB jump fires (the test can fail)
    jump = np.concatenate([noise(0.5, -34), noise(0.5, -22, 9)])
    assert [e.kind for e in feed(RmsTrigger(SR, TriggerConfig(threshold_db=10.0)), jump)] == [
        "onset"]


def test_a_loud_rise_below_the_floor_does_not_fire():
    quiet = np.concatenate([noise(0.5, -110), noise(0.5, -70)])  # +40 dB, but below -50 dBFS
    assert feed(RmsTrigger(SR), quiet) == []


def test_retrigger_after_refractory_and_silence_ends():
    cfg = TriggerConfig(threshold_db=12.0, refractory_s=0.3, silence_s=0.3)
    # a note, a dip of 20 dB for 0.1 s (re-bow), the note again, then silence
    x = np.concatenate([noise(0.5, -80), tone(0.6, -20), tone(0.1, -40), tone(0.5, -20),
                        noise(0.8, -90)])
    events = feed(RmsTrigger(SR, cfg), x)
    kinds = [e.kind for e in events]
    assert kinds == ["onset", "onset", "silence"]
    assert abs(events[1].sample / SR - 1.2) < 0.03
    assert abs(events[2].sample / SR - (1.7 + 0.3)) < 0.1


def test_a_quick_second_onset_inside_the_refractory_time_is_ignored():
    cfg = TriggerConfig(threshold_db=12.0, refractory_s=0.5)
    x = np.concatenate([noise(0.5, -80), tone(0.2, -20), tone(0.1, -45), tone(0.5, -20)])
    assert [e.kind for e in feed(RmsTrigger(SR, cfg), x)] == ["onset"]


def test_prompt_buffer_holds_the_latest_samples():
    p = PromptBuffer(5)
    assert p.latest().size == 0
    p.push(np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(p.latest(), [0, 1, 2])
    p.push(np.arange(3, 10, dtype=np.float32))
    np.testing.assert_array_equal(p.latest(), [5, 6, 7, 8, 9])


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="threshold_db"):
        TriggerConfig(threshold_db=0)
