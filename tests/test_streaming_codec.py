"""Streaming == offline for the cached layers and the causal codec (the cached_conv test: the
same weights offline and chunk by chunk; the layers add no delay, so there is nothing to trim),
causality, and the centred codec left as it was."""

import dataclasses
import hashlib

import pytest
import torch
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from mlmlmlm.bench_stream import CPU_STREAM
from mlmlmlm.models.codec import Codec, CodecConfig
from mlmlmlm.nn.cached import CausalConvTranspose1d, caches, reset_state, run_chunked, set_streaming
from mlmlmlm.nn.layers import conv

ATOL = 1e-4
CHUNKS = [1, 2, 3, 5]  # frames (samples for a stride-1 conv): 1, 2, 3 and an odd number


def tiny(**kw) -> CodecConfig:
    base = {"channels": 4, "c_mults": [1, 2], "strides": [2, 4], "latent_dim": 8}
    base |= {"n_q": 3, "codebook_size": 16, "causal": True}
    return CodecConfig(**{**base, **kw})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def streamed(module, x, chunk):
    """Offline and chunk-by-chunk outputs of ``module`` on ``x`` (no grad)."""
    with torch.no_grad():
        set_streaming(module, False)
        offline = module(x)
        set_streaming(module, True)
        online = run_chunked(module, x, chunk)
        set_streaming(module, False)
    return offline, online


def assert_streams(offline, online):
    assert online.shape == offline.shape
    err = (online - offline).abs().max().item()
    print(f"max |stream - offline| = {err:.2e}")
    assert torch.allclose(online, offline, atol=ATOL, rtol=0), err


# --------------------------------------------------------------------------------------------
# each cached layer alone
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", CHUNKS)
def test_causal_dilated_conv_streams(chunk):
    layer = conv(3, 5, 7, 9, dilation=3, causal=True)  # keeps (7-1)*3 = 18 samples of state
    x = torch.randn(2, 3, 61)
    offline, online = streamed(layer, x, chunk)
    assert offline.shape == (2, 5, 61)
    assert_streams(offline, online)


@pytest.mark.parametrize("stride", [3, 4])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_strided_causal_conv_streams(stride, chunk):
    layer = conv(3, 6, 2 * stride, 0, stride=stride, causal=True)
    x = torch.randn(2, 3, 20 * stride)
    offline, online = streamed(layer, x, chunk * stride)
    assert offline.shape == (2, 6, 20)
    assert_streams(offline, online)


@pytest.mark.parametrize("stride", [3, 4])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_causal_transposed_conv_streams(stride, chunk):
    layer = weight_norm(CausalConvTranspose1d(6, 3, 2 * stride, stride))
    with torch.no_grad():
        layer.bias.normal_()  # the overlap-add tail must not carry the bias twice
    x = torch.randn(2, 6, 17)
    offline, online = streamed(layer, x, chunk)
    assert offline.shape == (2, 3, 17 * stride)
    assert_streams(offline, online)


def test_strided_stream_refuses_partial_frames():
    layer = conv(3, 6, 8, 0, stride=4, causal=True)
    set_streaming(layer, True)
    with pytest.raises(ValueError, match="multiple of 4"):
        layer(torch.randn(1, 3, 6))


def test_stream_state_is_per_shape():
    layer = conv(3, 5, 7, 3, causal=True)
    set_streaming(layer, True)
    layer(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="reset_state"):
        layer(torch.randn(1, 3, 4))
    reset_state(layer)
    assert layer(torch.randn(1, 3, 4)).shape == (1, 5, 4)


# --------------------------------------------------------------------------------------------
# the causal encoder, decoder and codec
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strides", [[2, 4], [3, 2]])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_causal_encoder_streams(strides, chunk):
    model = Codec(tiny(strides=strides, bottleneck="vae")).eval()
    hop = model.cfg.hop
    x = torch.randn(2, 1, 64 * hop)  # 64 frames: longer than the encoder's receptive field
    assert model.receptive_field() < 64 * hop
    offline, online = streamed(model.encoder, x, chunk * hop)
    assert offline.shape == (2, 16, 64)
    assert_streams(offline, online)


@pytest.mark.parametrize("strides", [[2, 4], [3, 2]])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_causal_decoder_streams(strides, chunk):
    model = Codec(tiny(strides=strides)).eval()
    z = torch.randn(2, 8, 40)
    offline, online = streamed(model.decoder, z, chunk)
    assert offline.shape == (2, 1, 40 * model.cfg.hop)
    assert_streams(offline, online)


@pytest.fixture(scope="module")
def trained_rvq_codec():
    torch.manual_seed(0)
    model = Codec(tiny())
    for _ in range(3):  # k-means init and a few EMA updates, so codes are spread out
        model(torch.randn(4, 1, 40 * model.cfg.hop))
    return model.eval()


@pytest.mark.parametrize("chunk", CHUNKS)
def test_causal_codec_encode_codes_decode_streams(trained_rvq_codec, chunk):
    model, hop = trained_rvq_codec, trained_rvq_codec.cfg.hop
    x = torch.randn(2, 1, 37 * hop)
    with torch.no_grad():
        codes = model.encode(x).codes
        wav = model.decode_codes(codes)
        model.reset_stream()
        codes_s = run_chunked(lambda c: model.encode_stream(c).codes, x, chunk * hop)
        wav_s = run_chunked(model.decode_codes_stream, codes_s, chunk)
    assert len(codes.unique()) > 3  # not a degenerate single-code stream
    assert torch.equal(codes_s, codes)
    assert_streams(wav, wav_s)


@pytest.mark.parametrize("block", [1, 13, 101])  # samples: never whole hops (hop 8)
def test_encode_stream_takes_blocks_of_any_length(trained_rvq_codec, block):
    model, hop = trained_rvq_codec, trained_rvq_codec.cfg.hop
    x = torch.randn(1, 1, 30 * hop)
    with torch.no_grad():
        codes = model.encode(x).codes
        model.reset_stream()
        outs = [model.encode_stream(x[..., i : i + block]) for i in range(0, x.shape[-1], block)]
        wavs = [model.decode_codes_stream(o.codes) for o in outs if o.codes.shape[-1]]
        wav = model.decode_codes(codes)
    assert sum(o.codes.shape[-1] == 0 for o in outs) == (len(outs) - 30 if block < hop else 0)
    assert torch.equal(torch.cat([o.codes for o in outs], dim=-1), codes)
    assert_streams(wav, torch.cat(wavs, dim=-1))
    assert model.decode_stream(torch.zeros(1, 8, 0)).shape == (1, 1, 0)


@pytest.fixture(scope="module")
def cpu_scale_offline():
    """The cpu-scale starting point (22.05 kHz, hop 256, 16 channels, RVQ 4 x 1024), causal, and
    its offline codes and decoding of 2 s of noise (173 frames, the last one zero-padded)."""
    torch.manual_seed(0)
    model = Codec(dataclasses.replace(CPU_STREAM, kmeans_init=False)).eval()
    x = torch.nn.functional.pad(0.1 * torch.randn(1, 1, 2 * 22050), (0, 173 * 256 - 2 * 22050))
    with torch.inference_mode():
        codes = model.encode(x).codes  # [1, 4, 173]
        wav = model.decode_codes(codes)
    return model, x, codes, wav


@pytest.mark.parametrize("chunk", [256, 3 * 256, 22050])  # 1 frame, 3 frames, 1 s (issue 8)
def test_cpu_scale_causal_codec_streams(cpu_scale_offline, chunk):
    model, x, codes, wav = cpu_scale_offline
    with torch.inference_mode(), parametrize.cached():
        model.reset_stream()
        codes_s = run_chunked(lambda c: model.encode_stream(c).codes, x, chunk)
        wav_s = run_chunked(model.decode_codes_stream, codes_s, max(1, chunk // 256))
    assert len(codes.unique()) > 3
    assert torch.equal(codes_s, codes)
    assert_streams(wav, wav_s)


def test_offline_call_ends_a_stream(trained_rvq_codec):
    model, hop = trained_rvq_codec, trained_rvq_codec.cfg.hop
    x = torch.randn(1, 1, 8 * hop)
    with torch.no_grad():
        model.reset_stream()
        first = model.encode_stream(x[..., : 4 * hop]).z
        whole = model.encode(x).z  # offline: not polluted by the stream's state
        assert not any(c.streaming for c in caches(model))
        again = model.encode_stream(x[..., : 4 * hop]).z  # a fresh stream from zeros
    torch.testing.assert_close(whole[..., :4], first, atol=ATOL, rtol=0)
    torch.testing.assert_close(again, first, atol=0, rtol=0)


def test_stream_errors():
    with pytest.raises(ValueError, match="causal"):
        Codec(tiny(causal=False)).eval().encode_stream(torch.randn(1, 1, 8))
    model = Codec(tiny())
    with pytest.raises(ValueError, match="eval"):
        model.encode_stream(torch.randn(1, 1, 8))
    model.eval().encode_stream(torch.randn(2, 1, 12))
    with pytest.raises(ValueError, match="reset_state"):  # a stream keeps its batch shape
        model.encode_stream(torch.randn(1, 1, 12))


@pytest.mark.parametrize("causal", [True, False])
def test_encoder_and_decoder_causality(causal):
    """Changing the input from sample t0 (frame f0) on changes no earlier frame (sample); the
    centred codec is the control that shows the test can fail."""
    model = Codec(tiny(causal=causal, bottleneck="vae")).eval()
    hop, f0 = model.cfg.hop, 20
    x = torch.randn(1, 1, 40 * hop)
    x2 = x.clone()
    x2[..., f0 * hop :] += torch.randn_like(x2[..., f0 * hop :])
    z = torch.randn(1, 8, 40)
    z2 = z.clone()
    z2[..., f0:] += torch.randn_like(z2[..., f0:])
    with torch.no_grad():
        h, h2 = model.encoder(x), model.encoder(x2)
        y, y2 = model.decoder(z), model.decoder(z2)
    past_unchanged = torch.equal(h[..., :f0], h2[..., :f0]) and torch.equal(
        y[..., : f0 * hop], y2[..., : f0 * hop]
    )
    assert past_unchanged == causal
    assert not torch.equal(h[..., f0:], h2[..., f0:]) and not torch.equal(y[..., f0:], y2[..., f0:])


def test_causal_codec_trains_and_reports_latency():
    model = Codec(tiny())
    x = torch.randn(2, 1, 100)  # not a multiple of the hop: padded, then cropped, as centred
    out = model(x)
    assert out.recon.shape == x.shape
    out.recon.pow(2).mean().backward()
    assert model.encoder.layers[0].parametrizations.weight.original1.grad is not None
    cpu = Codec(tiny(sample_rate=22050.0, strides=[2, 4, 4, 8], c_mults=[1, 2, 4, 8]))
    d = cpu.describe()
    assert d["causal"] and d["latency_samples"] == 256
    assert d["latency_ms"] == pytest.approx(1000 * 256 / 22050)  # 11.61 ms
    assert Codec(tiny(causal=False)).describe()["latency_samples"] is None


# --------------------------------------------------------------------------------------------
# causal=False is the codec as it was
# --------------------------------------------------------------------------------------------


def test_centred_codec_unchanged():
    """Values and state-dict keys recorded from the centred codec before causal layers existed
    (so old checkpoints load strictly); the causal codec has the very same keys."""
    cfg = {"channels": 4, "c_mults": [1, 2], "strides": [2, 3], "latent_dim": 8}
    cfg |= {"n_q": 3, "codebook_size": 16, "bottleneck": "vae"}
    model = Codec(CodecConfig(**cfg)).eval()
    assert not caches(model)
    x = torch.randn(2, 1, 60)
    with torch.no_grad():
        y = model(x).recon
    assert y.sum().item() == pytest.approx(19.329937, rel=1e-4)
    assert y.abs().sum().item() == pytest.approx(20.871470, rel=1e-4)
    expected = [0.169170, 0.120393, -0.076068, 0.195199]
    assert y[0, 0, :4].tolist() == pytest.approx(expected, abs=1e-5)
    keys = list(model.state_dict())
    assert hashlib.sha1(" ".join(keys).encode()).hexdigest() == (
        "bddcb1e4dc6ca9e30f7bd1ef1161d1386cebfd49"
    )
    causal = Codec(CodecConfig(**cfg, causal=True))
    assert list(causal.state_dict()) == keys
    causal.load_state_dict(model.state_dict(), strict=True)
