"""Codec: shapes and hop, bottlenecks, straight-through gradients, code round trip, Snake."""

import pytest
import torch

from mlmlmlm.models.codec import Codec, CodecConfig, build_on_meta
from mlmlmlm.nn.layers import PointwiseConv1d, Snake, snake_fused, snake_plain


def tiny(**kw) -> CodecConfig:
    base = {"channels": 4, "c_mults": [1, 2], "strides": [2, 4], "latent_dim": 8}
    base |= {"n_q": 3, "codebook_size": 16}
    return CodecConfig(**{**base, **kw})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_paper_audio_config_forward_on_tiny_input():
    cfg = CodecConfig()  # the paper's audio codec
    assert cfg.hop == 2048 and cfg.frame_rate == pytest.approx(44100 / 2048)
    model = Codec(cfg).eval()
    d = model.describe()
    assert d["params"] == pytest.approx(156e6, rel=0.01)  # DESIGN: ~156 M
    assert d["receptive_field_samples"] == 31818
    x = 0.1 * torch.randn(1, 1, 3000)  # not a multiple of the hop: padded, then cropped
    with torch.no_grad():
        out = model(x)
    assert out.recon.shape == (1, 1, 3000)
    assert out.z.shape == (1, 64, 2) and out.codes.shape == (1, 4, 2)


def test_paper_emg_config_on_meta():
    model = build_on_meta(CodecConfig(in_channels=6, channels=196))
    assert model.num_params() == pytest.approx(364e6, rel=0.01)  # DESIGN: ~364 M
    assert model.cfg.hop == 2048


@pytest.mark.parametrize("bottleneck", ["vae", "rvq"])
@pytest.mark.parametrize("strides", [[2, 4], [3, 2]])
@pytest.mark.parametrize("length", [64, 100])
def test_small_shapes(bottleneck, strides, length):
    cfg = tiny(in_channels=7, bottleneck=bottleneck, strides=strides)
    model = Codec(cfg)
    frames = -(-length // cfg.hop)
    out = model(torch.randn(2, 7, length))
    assert out.recon.shape == (2, 7, length)
    assert out.z.shape == (2, 8, frames)
    assert model.decode(out.z).shape == (2, 7, frames * cfg.hop)
    if bottleneck == "rvq":
        assert out.codes.shape == (2, 3, frames) and out.codes.dtype == torch.long
        assert out.quantizer_loss.ndim == 0 and out.kl is None
        assert out.perplexity.shape == (3,)
    else:
        assert out.codes is None and out.quantizer_loss is None and out.perplexity is None
        assert out.kl.ndim == 0


def test_shape_checks_and_config_errors():
    model = Codec(tiny())
    with pytest.raises(AssertionError, match="in_channels=1"):
        model(torch.randn(2, 3, 64))
    with pytest.raises(AssertionError, match="latent_dim=8"):
        model.decode(torch.randn(2, 5, 4))
    with pytest.raises(AssertionError, match=r"codes must lie in \[0, 16\)"):
        model.decode_codes(torch.full((1, 3, 2), 16))
    with pytest.raises(ValueError, match="bottleneck"):
        tiny(bottleneck="vq")
    with pytest.raises(ValueError, match="same length"):
        tiny(strides=[2, 2, 2])
    with pytest.raises(ValueError, match="rvq"):
        Codec(tiny(bottleneck="vae")).codes_to_latents(torch.zeros(1, 3, 2, dtype=torch.long))


def test_straight_through_gradient_reaches_encoder():
    model = Codec(tiny())
    model(torch.randn(4, 1, 64))  # first batch: k-means init of the codebooks
    x = torch.randn(4, 1, 64)
    out = model(x)
    # reconstruction loss only: any encoder gradient must pass through the quantizer
    (out.recon - x).pow(2).mean().backward()
    first = model.encoder.layers[0]
    grads = [p.grad for p in first.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_eval_decode_codes_equals_forward():
    model = Codec(tiny())
    model(torch.randn(4, 1, 64))
    model.eval()
    x = torch.randn(2, 1, 100)
    with torch.no_grad():
        enc = model.encode(x)
        out = model(x)
        recon = model.decode_codes(enc.codes, length=100)
        z = model.codes_to_latents(enc.codes)
    assert torch.equal(enc.codes, out.codes)
    torch.testing.assert_close(z, enc.z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recon, out.recon, atol=1e-5, rtol=1e-5)


def test_vae_kl_nonnegative_and_eval_uses_mean():
    model = Codec(tiny(bottleneck="vae"))
    x = torch.randn(2, 1, 64)
    out = model(x)
    assert out.kl.item() >= 0
    assert not torch.equal(out.z, model(x).z)  # training: a fresh sample each call
    model.eval()
    with torch.no_grad():
        mean = model.encoder(x).chunk(2, dim=1)[0]
        a, b = model(x), model(x)
    assert torch.equal(a.z, mean) and torch.equal(a.recon, b.recon)


def test_receptive_field_matches_gradient_support():
    model = Codec(tiny(bottleneck="vae", strides=[2, 3])).eval()
    rf = model.receptive_field()
    x = torch.zeros(1, 1, 6 * 100, requires_grad=True)  # longer than the field: no edge effects
    z = model.encoder(x)  # [1, 16, 100]
    z[0, :, 50].sum().backward()
    support = (x.grad[0, 0] != 0).nonzero().squeeze(1)
    assert support.max() - support.min() + 1 == rf


@pytest.mark.parametrize("separate_beta", [True, False])
def test_fused_snake_equals_plain(separate_beta):
    x = torch.randn(2, 5, 300, requires_grad=True)
    alpha = (torch.rand(1, 5, 1) + 0.3).requires_grad_()
    beta = (torch.rand(1, 5, 1) + 0.3).requires_grad_() if separate_beta else None
    g = torch.randn(2, 5, 300)
    results = []
    for fn in (snake_plain, snake_fused):
        y = fn(x, alpha, beta)
        leaves = [x, alpha] + ([beta] if separate_beta else [])
        grads = torch.autograd.grad(y, leaves, g)
        results.append((y.detach(), *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_snake_module_fused_and_plain_agree():
    fused, plain = Snake(6, fused=True), Snake(6, fused=False)
    with torch.no_grad():
        fused.alpha.normal_(0, 0.3), fused.beta.normal_(0, 0.3)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 6, 50)
    torch.testing.assert_close(fused(x), plain(x), atol=1e-6, rtol=0)


def test_pointwise_conv_equals_conv1d_values_and_gradients():
    torch.manual_seed(0)
    fast = PointwiseConv1d(8, 5)
    ref = torch.nn.Conv1d(8, 5, kernel_size=1)
    ref.load_state_dict(fast.state_dict())  # same parameters, same state-dict keys and shapes
    x1 = torch.randn(3, 8, 100, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = fast(x1), ref(x2)
    torch.testing.assert_close(y1, y2)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad)
    torch.testing.assert_close(fast.bias.grad, ref.bias.grad)
