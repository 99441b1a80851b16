"""The benchmark functions behind `mlmlmlm bench codec --json` produce the documented fields
(timings themselves are not asserted: the machines are shared and noisy)."""

import json

import pytest

from mlmlmlm.bench import bench_codec_run, bench_snake, bench_speedups, bench_step_speedup


def test_bench_snake_fields():
    out = bench_snake(channels=4, length=2048, reps=3)
    assert set(out) == {"shape", "plain_s", "fused_s", "fused_speedup"}
    assert out["plain_s"] > 0 and out["fused_s"] > 0
    json.dumps(out)


def test_bench_codec_run_fields():
    out = bench_codec_run("04_emg_codec/emg_rvq_vae_native", "smoke", reps=1)
    for key in ("params", "hop", "train_samples_per_s", "encode_rtf", "decode_rtf",
                "encode_gflop_per_s_of_signal"):
        assert out[key] > 0, key
    assert out["hop"] == 128 and out["sample_rate"] == 2756.25
    json.dumps(out)


def test_bench_speedups_fields():
    out = bench_speedups(channels=4, length=4096, batch=1, reps=1)
    for name in ("pointwise_conv", "a_weighted_mrstft"):
        assert out[name]["before_s"] > 0 and out[name]["after_s"] > 0
    json.dumps(out)


def test_real_time_factor_arithmetic_on_a_known_case():
    # a timer that says every call takes 0.25 s: the factors follow from the signal length only
    out = bench_codec_run("04_emg_codec/emg_rvq_vae_native", "smoke", batch=2, seconds=1.0,
                          timer=lambda fn, reps: (fn(), 0.25)[1])
    seconds_of_signal = 2 * out["segment"] / out["sample_rate"]
    assert out["segment"] == 2688  # 1 s at 2756.25 Hz, rounded down to whole hops of 128
    assert out["encode_rtf"] == pytest.approx(0.25 / seconds_of_signal)
    assert out["decode_rtf"] == pytest.approx(0.25 / seconds_of_signal)
    assert out["train_samples_per_s"] == pytest.approx(2 * 2688 / 0.25)


def test_encoder_flops_of_a_known_convolution():
    from torch import nn

    from mlmlmlm.bench import _flops_per_second

    class Cfg:  # the fields _flops_per_second reads
        class model:
            in_channels, hop, sample_rate = 2, 4, 100.0

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Conv1d(2, 3, 5, padding=2),
                                         nn.Conv1d(3, 6, 4, stride=2, padding=1, groups=3))

    # 16 input samples (4 hops) = 0.16 s. Conv 1: 16 outputs x 3 channels x 2 inputs x 5 taps
    # x 2 FLOP = 960. Conv 2: 8 outputs x 6 x (3 / 3 groups) x 4 taps x 2 = 384.
    assert _flops_per_second(Model(), Cfg) == pytest.approx((960 + 384) / 0.16)


def test_side_by_side_alternates_and_takes_medians(monkeypatch):
    from mlmlmlm import bench

    ticks, calls = iter([0, 1, 1, 3, 3, 4, 4, 10, 10, 11, 11, 14]), []
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    out = bench._side_by_side(lambda: calls.append("b"), lambda: calls.append("a"), reps=3)
    assert calls == ["b", "a", "b", "a", "b", "a"]  # interleaved, so noise hits both alike
    # before took 1, 1, 1 s; after 2, 6, 3 s: medians 1 and 3
    assert out == {"before_s": 1, "after_s": 3, "speedup": 1 / 3}


def test_bench_step_speedup_restores_the_fast_paths():
    from mlmlmlm.nn.layers import PointwiseConv1d

    out = bench_step_speedup("02_audio_codec/a_rvq_vae_1", "smoke", reps=1)
    assert out["before_s"] > 0 and out["after_s"] > 0
    assert PointwiseConv1d.batched_matmul  # the reference path is switched off again
    json.dumps(out)


def test_production_stream_fields():
    from mlmlmlm.bench import production_stream

    out = production_stream("04_emg_codec/emg_codec", "smoke", seconds=0.5)
    assert out["run"] == "04_emg_codec/emg_codec" and out["chunk_frames"] == 1
    assert out["chunk_ms"]["p50"] <= out["chunk_ms"]["p99"] <= out["chunk_ms"]["max"]
    assert out["latency"]["algorithmic_samples"] == 32  # one hop of the EMG codec
    assert out["rtf"]["p50"] > 0


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_streaming_loop_times_every_frame_of_the_whole_loop(layout):
    from mlmlmlm.bench import streaming_loop

    out = streaming_loop("smoke", layout, seconds=0.5)
    ms = out["frame_ms"]
    assert out["layout"] == layout and ms["n"] == 43  # 0.5 s at 86.1 frames/s, floored
    assert 0 < ms["p50"] <= ms["p99"] <= ms["max"]
    assert out["rtf"] > 0 and out["rtf_p99"] == pytest.approx(ms["p99"] / out["frame_period_ms"])
