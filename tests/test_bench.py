"""The benchmark functions behind `mlmlmlm bench codec --json` produce the documented fields
(timings themselves are not asserted: the machines are shared and noisy)."""

import json

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
        assert out[name]["speedup"] == out[name]["before_s"] / out[name]["after_s"]
    json.dumps(out)


def test_bench_step_speedup_restores_the_fast_paths():
    from mlmlmlm.nn.layers import PointwiseConv1d

    out = bench_step_speedup("02_audio_codec/a_rvq_vae_1", "smoke", reps=1)
    assert out["before_s"] > 0 and out["after_s"] > 0
    assert PointwiseConv1d.batched_matmul  # the reference path is switched off again
    json.dumps(out)
