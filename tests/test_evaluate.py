"""Evaluation metrics: identifiability, code statistics, SI-SDR, pitch, loudness, EMG."""

import json
import math

import numpy as np
import pytest
import torch

from mlmlmlm import evaluate as E
from mlmlmlm.models.codec import Codec, CodecConfig

SR = 8000.0


def sine(freq, seconds=0.5, sr=SR, amp=0.5):
    t = torch.arange(int(seconds * sr)) / sr
    return amp * torch.sin(2 * math.pi * freq * t)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def windows(n=16, c=2, t=2048):
    # distinct windows: noise with a different envelope and tone per window
    env = torch.linspace(0, 1, t) ** torch.rand(n, c, 1) * 3
    tone = torch.sin(torch.arange(t) * torch.rand(n, c, 1))
    return 0.3 * torch.randn(n, c, t) * env + 0.2 * tone


def test_identifiability_identity_and_collapse():
    x = windows()
    n = x.shape[0]
    assert torch.equal(E.identifiability(x, x), torch.ones(2))
    collapsed = x.mean(dim=0, keepdim=True).expand_as(x)  # one average output for every window
    ident = E.identifiability(x, collapsed)
    torch.testing.assert_close(ident, torch.full((2,), 1 / n))
    assert E.inspection(ident) == "unsuccessful" and E.inspection(torch.ones(2)) == "successful"


def test_identifiability_ties_count_as_failures():
    x = windows(n=4, c=1)
    x[1] = x[0]  # two identical originals: reconstruction 0 is as near to 1 as to 0
    ident = E.identifiability(x, x)
    assert ident.item() == pytest.approx(0.5)


def test_distance_matrix_diagonal_is_pairwise_distance():
    x, y = windows(n=5, c=1), windows(n=5, c=1)
    d = E.mrstft_distance_matrix(y[:, 0], x[:, 0])
    torch.testing.assert_close(
        d.diagonal().float(), E.mrstft_distance(y, x)[:, 0], rtol=1e-4, atol=1e-4
    )
    assert torch.all(E.mrstft_distance(x, x) == 0)


def test_codebook_usage_and_perplexity():
    uniform = torch.randint(0, 64, (8, 2, 4000))
    stats = E.codebook_usage(uniform, 64)
    assert torch.all(stats.usage == 1)
    assert torch.all((stats.perplexity > 63) & (stats.perplexity <= 64))
    single = E.codebook_usage(torch.zeros(2, 3, 10, dtype=torch.long), 64)
    torch.testing.assert_close(single.perplexity, torch.ones(3))
    torch.testing.assert_close(single.usage, torch.full((3,), 1 / 64))


def test_si_sdr():
    x = torch.randn(3, 2, 4000)
    assert torch.all(E.si_sdr(x, x) > 60)
    assert torch.all(E.si_sdr(torch.randn(3, 2, 4000), x) < -10)
    noisy = x + 0.1 * torch.randn_like(x)
    torch.testing.assert_close(E.si_sdr(0.5 * noisy, x), E.si_sdr(noisy, x))  # scale-invariant
    assert torch.all((E.si_sdr(noisy, x) - 20).abs() < 1)  # 10 dB of noise power below: 20 dB


def test_loudness_and_mel():
    x = (sine(440) * (1 + torch.linspace(0, 1, 4000)))[None, None]
    err = E.loudness_error_db(0.5 * x, x, SR)
    assert err.item() == pytest.approx(20 * math.log10(2), abs=0.05)
    assert E.loudness_error_db(x, x, SR).item() == 0
    assert E.mel_distance(x, x, SR).item() == 0 and E.mel_distance(0.5 * x, x, SR).item() > 0


def test_emg_metrics():
    sr = 1000.0
    burst = torch.randn(2, 3, 4000) * torch.sin(torch.linspace(0, 6, 4000)).abs()
    torch.testing.assert_close(E.envelope_correlation(burst, burst, sr), torch.ones(2, 3))
    flat = torch.zeros_like(burst)
    assert torch.all(E.envelope_correlation(flat, burst, sr) == 0)
    low, high = sine(80, 4, sr)[None, None], sine(160, 4, sr)[None, None]
    assert E.median_frequency_error(low, low, sr).item() == 0
    assert E.median_frequency_error(high, low, sr).item() == pytest.approx(80, abs=5)


def test_evaluate_codec_bundle():
    cfg = CodecConfig(
        in_channels=3,
        channels=4,
        c_mults=[1, 2],
        strides=[2, 4],
        latent_dim=8,
        n_q=2,
        codebook_size=16,
        sample_rate=SR,
    )
    model = Codec(cfg)
    x = windows(n=6, c=3, t=2048)
    result = E.evaluate_codec(model, x, SR, audio_channels=[0], emg_channels=[1, 2], batch_size=4)
    for key in ("mrstft", "si_sdr", "identifiability"):
        assert set(result[key]["per_channel"]) == {0, 1, 2}
    for key in ("mel_distance", "loudness_error_db"):
        assert set(result[key]["per_channel"]) == {0}
    assert {"raw_pitch_accuracy", "voicing_recall", "median_cents_error"} <= set(result["pitch"])
    assert "depth_correlation" in result["vibrato"]
    for key in ("envelope_correlation", "median_frequency_error"):
        assert set(result[key]["per_channel"]) == {1, 2}
    assert result["inspection"] in {"successful", "unsuccessful"}
    assert len(result["codebook"]["perplexity"]) == 2
    assert model.training  # restored
    json.dumps(result)


class _AddsOutOfBand(torch.nn.Module):
    """A 'codec' that returns its input plus a 3.5 kHz tone on the EMG channels (1, 2)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, x):
        tone = sine(3500, x.shape[-1] / SR)[: x.shape[-1]]
        recon = x.clone()
        recon[:, 1:] += tone
        return type("Out", (), {"recon": recon, "codes": None})()


def test_evaluate_codec_measures_emg_at_its_analysis_rate():
    x = windows(n=8, c=3, t=4000)
    # keep the EMG channels in band for a 2 kHz analysis rate, as real EMG is
    x[:, 1:] = torch.from_numpy(E.resample(E.resample(x[:, 1:].numpy(), SR, 2000.0), 2000.0, SR))
    model = _AddsOutOfBand()
    at_sr = E.evaluate_codec(model, x, SR, [0], [1, 2])
    at_emg = E.evaluate_codec(model, x, SR, [0], [1, 2], emg_sr=2000.0)
    assert at_sr["emg_sr"] == SR and at_emg["emg_sr"] == 2000.0
    # the 3.5 kHz error is outside the EMG analysis band: it is seen at 8 kHz, not at 2 kHz
    for c in (1, 2):
        assert at_sr["mrstft"]["per_channel"][c] > 0.5
        assert at_emg["mrstft"]["per_channel"][c] < 0.05
        assert at_emg["si_sdr"]["per_channel"][c] > 30
    # the audio channel is untouched and measured at the audio rate in both cases
    assert at_emg["mrstft"]["per_channel"][0] == at_sr["mrstft"]["per_channel"][0] == 0
    assert at_emg["identifiability"]["per_channel"] == {0: 1.0, 1: 1.0, 2: 1.0}


class _Silent(torch.nn.Module):
    """A 'codec' whose every reconstruction is silence (what a dead decoder produces)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return type("Out", (), {"recon": torch.zeros_like(x), "codes": None})()


def test_a_silent_reconstruction_is_flagged_by_the_emg_metrics():
    x = windows(n=6, c=3, t=2048)
    silent = E.evaluate_codec(_Silent(), x, SR, audio_channels=[0], emg_channels=[1, 2])
    assert silent["silent_fraction"]["mean"] == 1.0
    assert silent["envelope_correlation"]["mean"] == 0.0
    assert np.isnan(silent["median_frequency_error"]["mean"])  # not the band edge's 10 Hz
    assert silent["identifiability"]["mean"] == pytest.approx(1 / 6)  # all alike: chance
    assert silent["inspection"] == "unsuccessful"
    same = E.evaluate_codec(_AddsOutOfBand(), x, SR, audio_channels=[0], emg_channels=[1, 2])
    assert same["silent_fraction"]["mean"] == 0.0


def test_card_says_why_a_metric_of_a_silent_codec_is_missing(tmp_path, smoke_corpus):
    from mlmlmlm.atomic import write_json_atomic
    from mlmlmlm.config import load_run_config
    from mlmlmlm.recipes.codec import codec_metrics

    cfg = load_run_config("04_emg_codec/emg_rvq_vae_native", "smoke")
    ev = E.evaluate_codec(_Silent(), windows(n=4, c=6, t=2048), SR, [], list(range(6)))
    log = [{"step": 5, "mrstft": 1.0, "quantizer": 0.1, "train": 1.1, "wall_s": 2.0}]
    m = codec_metrics(cfg, log, ev, smoke_corpus, 2.0)
    assert m["eval_silent_fraction"] == 1.0
    assert m["not_computed"] == {"eval_median_frequency_error": (
        "the reconstructions are silent (below -40 dB of their originals)")}
    # the budget is the step count: a run the time guard cut short says so on its card
    short = codec_metrics(cfg, [{**log[0], "step": 1}], ev, smoke_corpus, 2.0)
    assert short["max_steps"] == 2 and "stopped" not in m
    assert short["stopped"].startswith("the time guard") and "step 1 of 2" in short["stopped"]
    write_json_atomic(tmp_path / "m.json", m)  # strict JSON: null, and the reason beside it
    back = json.loads((tmp_path / "m.json").read_text())
    assert back["eval_median_frequency_error"] is None
    assert back["not_computed"]["eval_median_frequency_error"].startswith("the reconstructions")
