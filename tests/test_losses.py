"""Codec losses: per-channel MRSTFT with A-weighting on audio only, loss keys, discriminator."""

import pytest
import torch
from auraloss.freq import MultiResolutionSTFTLoss

from mlmlmlm.losses import CodecLoss, LossConfig
from mlmlmlm.models.codec import Codec, CodecConfig

FFT = [256, 64]
SR = 8000.0


def small_codec(**kw) -> Codec:
    base = {"channels": 4, "c_mults": [1, 2], "strides": [2, 4], "latent_dim": 8}
    base |= {"n_q": 2, "codebook_size": 16}
    return Codec(CodecConfig(**{**base, **kw}))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _aura(weighting: bool):
    return MultiResolutionSTFTLoss(
        FFT,
        [n // 4 for n in FFT],
        FFT,
        sample_rate=SR if weighting else None,
        perceptual_weighting=weighting,
    )


def test_emg_channels_identical_to_target_contribute_zero():
    loss = CodecLoss(LossConfig(fft_sizes=FFT, audio_channels=[0]), SR, in_channels=7)
    x = torch.randn(2, 7, 1024)
    recon = x.clone()
    recon[:, 0] += 0.3 * torch.randn(2, 1024)  # only the audio channel is wrong
    per = loss.mrstft_per_channel(recon, x)
    assert per.shape == (7,)
    assert per[0] > 0 and torch.all(per[1:] == 0)


def test_a_weighting_only_on_audio_channels():
    loss = CodecLoss(LossConfig(fft_sizes=FFT, audio_channels=[0]), SR, in_channels=2)
    x = torch.randn(2, 2, 1024)
    err = 0.5 * torch.randn(2, 1, 1024)
    recon = x + torch.cat([err, err], dim=1)  # the same error on audio (0) and EMG (1)
    per = loss.mrstft_per_channel(recon, x)
    weighted = _aura(True)(recon[:, :1], x[:, :1])
    plain = _aura(False)(recon[:, 1:], x[:, 1:])
    torch.testing.assert_close(per[0], weighted)
    torch.testing.assert_close(per[1], plain)
    assert not torch.isclose(weighted, _aura(False)(recon[:, :1], x[:, :1]))
    # the EMG codec: no audio channel, nothing weighted
    emg = CodecLoss(LossConfig(fft_sizes=FFT, audio_channels=[]), SR, in_channels=2)
    torch.testing.assert_close(
        emg.mrstft_per_channel(recon, x)[0], _aura(False)(recon[:, :1], x[:, :1])
    )


def test_generator_keys_rvq_without_discriminator():
    model = small_codec()
    loss = CodecLoss(LossConfig(fft_sizes=FFT), SR, in_channels=1)
    assert not loss.has_discriminator and list(loss.discriminator_parameters()) == []
    x = torch.randn(2, 1, 512)
    terms = loss.generator(x, model(x), step=0)
    assert set(terms) == {"mrstft", "quantizer", "train"}
    torch.testing.assert_close(terms["train"], terms["mrstft"] + terms["quantizer"])
    with pytest.raises(RuntimeError, match="discriminator"):
        loss.discriminator(x, x)


def test_kl_warmup_ramps_the_kl_weight():
    model = small_codec(bottleneck="vae", kl_beta=0.5)
    cfg = LossConfig(fft_sizes=FFT, kl_warmup_steps=100)
    loss = CodecLoss.for_codec(cfg, model.cfg)
    x = torch.randn(2, 1, 512)
    out = model.eval()(x)  # eval: the bottleneck returns its mean, so every call is the same
    for step, scale in ((0, 0.0), (50, 0.5), (100, 1.0), (1000, 1.0)):
        terms = loss.generator(x, out, step=step)
        assert terms["kl"].item() > 0  # the logged KL is never scaled
        torch.testing.assert_close(terms["train"], terms["mrstft"] + scale * 0.5 * terms["kl"])


def test_generator_and_discriminator_with_adversary():
    cfg = CodecConfig(
        in_channels=3,
        channels=4,
        c_mults=[1, 2],
        strides=[2, 4],
        latent_dim=8,
        bottleneck="vae",
        kl_beta=1e-5,
        sample_rate=SR,
    )
    model = Codec(cfg)
    lcfg = LossConfig(
        fft_sizes=FFT,
        audio_channels=[0],
        discriminator=True,
        disc_channels=4,
        disc_fft_sizes=[128, 64],
        disc_start_step=10,
    )
    loss = CodecLoss.for_codec(lcfg, cfg)
    assert loss.cfg.lambdas["kl"] == 1e-5  # beta comes from the codec config
    x = torch.randn(2, 3, 512)
    out = model(x)
    assert set(loss.generator(x, out, step=9)) == {"mrstft", "kl", "train"}
    terms = loss.generator(x, out, step=10)
    assert set(terms) == {"mrstft", "kl", "adversarial", "feature_matching", "train"}
    lam = loss.cfg.lambdas
    expected = sum(lam[k] * terms[k] for k in ("mrstft", "kl", "adversarial", "feature_matching"))
    torch.testing.assert_close(terms["train"], expected)
    terms["train"].backward()
    d_params = list(loss.discriminator_parameters())
    assert d_params and all(p.grad is None and p.requires_grad for p in d_params)
    d = loss.discriminator(x, out.recon)
    assert set(d) == {"disc"} and d["disc"].ndim == 0
    d["disc"].backward()
    assert all(p.grad is not None for p in d_params)
    weighted = loss.weighted(terms)
    torch.testing.assert_close(weighted["adversarial"], 0.1 * terms["adversarial"])


def test_discriminator_logits_and_features():
    loss = CodecLoss(
        LossConfig(fft_sizes=FFT, discriminator=True, disc_channels=4, disc_fft_sizes=[128, 64]),
        SR,
        in_channels=2,
    )
    scales = loss.disc(torch.randn(3, 2, 512))
    assert len(scales) == 2
    for logits, feats in scales:
        assert logits.shape[:2] == (3, 1) and len(feats) == 5


def test_loss_config_validation():
    with pytest.raises(ValueError, match="unknown loss weights"):
        LossConfig(lambdas={"mrsftf": 1.0})
    cfg = LossConfig(lambdas={"mrstft": 2.0})
    assert cfg.lambdas["mrstft"] == 2.0 and cfg.lambdas["feature_matching"] == 5.0
    codec_cfg = CodecConfig(bottleneck="vae", kl_beta=1e-5)
    with pytest.raises(ValueError, match="model.kl_beta"):
        CodecLoss.for_codec(LossConfig(lambdas={"kl": 1e-3}), codec_cfg)
    with pytest.raises(ValueError, match="out of range"):
        CodecLoss(LossConfig(audio_channels=[3]), in_channels=1)


def test_a_weighting_once_matches_auraloss_gradient():
    """Filtering once (our speed-up) == auraloss filtering in every resolution, gradients too."""
    loss = CodecLoss(LossConfig(fft_sizes=FFT, audio_channels=[0]), SR, in_channels=1)
    x = torch.randn(2, 1, 1024)
    ours = (x + 0.3 * torch.randn_like(x)).requires_grad_()
    theirs = ours.detach().clone().requires_grad_()
    loss.mrstft_per_channel(ours, x)[0].backward()
    _aura(True)(theirs, x).backward()
    torch.testing.assert_close(ours.grad, theirs.grad)


def test_emg_mel_bins_scores_emg_on_bands_audio_unchanged():
    """``emg_mel_bins``: EMG channels on mel bands (auraloss scale="mel"), audio as before."""
    cfg = LossConfig(fft_sizes=FFT, audio_channels=[0], emg_mel_bins=8)
    loss = CodecLoss(cfg, SR, in_channels=2)
    x = torch.randn(2, 2, 1024)
    recon = x + 0.5 * torch.randn_like(x)
    per = loss.mrstft_per_channel(recon, x)
    banded = MultiResolutionSTFTLoss(FFT, [n // 4 for n in FFT], FFT, sample_rate=SR,
                                     scale="mel", n_bins=8)
    torch.testing.assert_close(per[1], banded(recon[:, 1:], x[:, 1:]))
    torch.testing.assert_close(per[0], _aura(True)(recon[:, :1], x[:, :1]))
    assert not torch.isclose(per[1], _aura(False)(recon[:, 1:], x[:, 1:]))


def test_loss_state_from_before_the_a_weighting_change_still_loads():
    loss = CodecLoss(LossConfig(fft_sizes=FFT, audio_channels=[0]), SR, in_channels=1)
    state = loss.state_dict()
    assert not any("taps" in k or "prefilter" in k for k in state)  # constants stay out
    legacy = dict(state) | {f"mrstft_audio.stft_losses.{i}.prefilter.fir.weight":
                            torch.zeros(1, 1, 101) for i in range(len(FFT))}
    loss.load_state_dict(legacy)  # strict: nothing missing, the legacy keys dropped
