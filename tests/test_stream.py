"""Streaming translation (mlmlmlm.stream): chunking never changes tokens or audio, the cached
steps equal the teacher-forced forward (prompt fed once, across the sliding window too), codes in
range, bounded caches over a minute, streaming decode equals offline decode, input checks."""

import numpy as np
import pytest
import torch

from mlmlmlm.data.preprocess import filter_emg
from mlmlmlm.live.latency import streaming_rtf
from mlmlmlm.models.codec import Codec, CodecConfig
from mlmlmlm.models.frozen_codec import (
    CompiledStream,
    compile_stream,
    inference_copy,
)
from mlmlmlm.models.generation import RING_SLACK
from mlmlmlm.models.transformer import TransformerConfig, TranslationTransformer
from mlmlmlm.stream import StreamError, Translator
from mlmlmlm.translate import EmgPrep

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_Q, K, N_QE, K_E, HOP = 3, 16, 2, 8, 8
SR = 22050 / 32  # hop 8 at 689 Hz: the production codecs' 86.13 frames/s, at toy size
TOL = 1e-4


def tiny_codec(channels: int, n_q: int, size: int, seed: int) -> Codec:
    torch.manual_seed(seed)
    c = Codec(CodecConfig(in_channels=channels, channels=4, c_mults=[1, 2], strides=[2, 4],
                          latent_dim=8, n_q=n_q, codebook_size=size, causal=True, sample_rate=SR))
    c(0.3 * torch.randn(4, channels, HOP * 64))  # k-means init of the codebooks on noise
    return c.eval()


@pytest.fixture(scope="module")
def codecs():
    return tiny_codec(1, N_Q, K, 0), tiny_codec(6, N_QE, K_E, 1)


def tiny_model(layout="flat", lookahead=0, **kw) -> TranslationTransformer:
    torch.manual_seed(2)
    cfg = TransformerConfig(n_q=N_Q, codebook_size=K, emg_n_q=N_QE, emg_codebook_size=K_E,
                            d_model=32, n_layers=2, n_heads=2, dropout=0.0, depth_layers=1,
                            layout=layout, lookahead=lookahead, **kw)
    return TranslationTransformer(cfg).eval()


def signals(emg_frames=40, prompt_frames=3, seed=0):
    rng = np.random.default_rng(seed)
    emg = (0.3 * rng.standard_normal((6, HOP * emg_frames))).astype(np.float32)
    prompt = (0.3 * rng.standard_normal(HOP * prompt_frames + 5)).astype(np.float32)
    return emg, prompt  # the prompt's first 5 samples make no whole frame: they are dropped


def translate(t: Translator, emg, prompt, chunk, flush=True):
    """Push ``emg`` in chunks of ``chunk`` samples; the prompt's resynthesis and the audio."""
    head = t.start(prompt)
    out = [t.push_emg(emg[:, i:i + chunk]) for i in range(0, emg.shape[1], chunk)]
    if flush:
        out.append(t.flush())
    return head, np.concatenate(out)


def with_logits(t: Translator) -> list:
    logits = []
    t.on_step = lambda step: logits.append(step.logits)  # [1, n_q, K] per frame
    return logits


# ---- chunking -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout,lookahead", [("flat", 1), ("frame", 0)])
def test_chunk_size_changes_nothing(codecs, layout, lookahead):
    m, (emg, prompt) = tiny_model(layout, lookahead), signals()
    runs = {}
    for chunk in (1, 7, 64, emg.shape[1]):
        t = Translator(m, *codecs, seed=5, guidance=2.0, top_p=0.95)
        runs[chunk] = (translate(t, emg, prompt, chunk)[1], t.generated_codes())
    audio, tokens = runs[emg.shape[1]]
    assert tokens.shape == (N_Q, 40) and len(np.unique(tokens)) > 4  # sampled, not constant
    assert audio.shape == (40 * HOP,) and np.abs(audio).max() > 0
    for chunk in (1, 7, 64):
        assert np.array_equal(runs[chunk][1], tokens), chunk
        assert np.allclose(runs[chunk][0], audio, atol=1e-5, rtol=0), chunk  # decoded in
        # other blocks (one per push): the same samples up to float rounding
    other = Translator(m, *codecs, seed=6, guidance=2.0, top_p=0.95)
    translate(other, emg, prompt, 64)
    assert not np.array_equal(other.generated_codes(), tokens)  # the seed does matter


def test_audio_comes_as_soon_as_its_emg_frame_is_complete(codecs):
    emg, prompt = signals()
    t = Translator(tiny_model(lookahead=0), *codecs)
    t.start(prompt)
    assert t.push_emg(emg[:, :HOP - 1]).size == 0  # frame P is not complete yet
    assert t.push_emg(emg[:, HOP - 1:HOP]).size == HOP  # its last sample: one audio frame
    assert t.push_emg(emg[:, HOP:5 * HOP + 3]).size == 4 * HOP
    assert t.n_frames == t.prompt_frames + 5 and len(t.frame_times) == 5
    t1 = Translator(tiny_model(lookahead=1), *codecs)
    t1.start(prompt)
    assert t1.push_emg(emg[:, :5 * HOP]).size == 4 * HOP  # one frame waits for its lookahead
    assert t1.flush().size == HOP and t1.latency_ms == pytest.approx(2000 / t1.frame_rate)
    with pytest.raises(StreamError, match="flushed"):
        t1.push_emg(emg[:, :HOP])


# ---- cached steps against the teacher-forced forward -------------------------------------------

def forward_logits(t: Translator, window=None):
    """The model's teacher-forced logits of the generated frames [1, n_q, n, K], on the prompt
    + generated codes with the EMG codes the translator appended."""
    codes = np.concatenate([t.prompt_codes(), t.generated_codes()], axis=1)
    a, e = torch.from_numpy(codes)[None], torch.from_numpy(t.emg_codes())[None]
    with torch.no_grad():
        return t.model(a, e, window=window).logits[:, :, t.prompt_frames:]


@pytest.mark.parametrize("layout", ["flat", "frame"])
@pytest.mark.parametrize("prompt_frames", [1, 3])
def test_prompt_fed_once_steps_equal_forward(codecs, layout, prompt_frames):
    emg, prompt = signals(20, prompt_frames)
    t = Translator(tiny_model(layout, lookahead=1), *codecs, temperature=0)
    logits = with_logits(t)
    translate(t, emg, prompt, 7)
    assert t.prompt_frames == prompt_frames and len(logits) == 20
    err = (torch.stack(logits, 2) - forward_logits(t)).abs().max().item()
    print(f"{layout} P {prompt_frames}: max |step - forward| {err:.2e}")
    assert err < TOL  # a last prompt token fed twice would shift every position after it


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_sliding_window_equals_windowed_forward(codecs, layout):
    W = 5
    emg, prompt = signals(30, 3)
    t = Translator(tiny_model(layout, lookahead=1), *codecs, max_cache_frames=W, seed=1)
    logits = with_logits(t)
    translate(t, emg, prompt, 3)
    step = torch.stack(logits, 2)  # [1, n_q, 30, K], 6 windows past the prompt
    err = (step - forward_logits(t, window=W)).abs().max().item()
    print(f"{layout} window {W}: max |step - windowed forward| {err:.2e}")
    assert err < TOL
    assert (step - forward_logits(t)).abs().max() > 1e-3  # the window was crossed: it forgets


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_generated_codes_in_each_levels_range(codecs, layout):
    emg, prompt = signals(30)
    t = Translator(tiny_model(layout), *codecs, temperature=5.0, seed=0)
    translate(t, emg, prompt, 64)
    codes = t.generated_codes()  # [n_q, frames]: code c of level q, 0 <= c < K
    assert codes.shape == (N_Q, 30) and codes.min() >= 0 and codes.max() < K
    assert all(len(np.unique(codes[q])) > K // 3 for q in range(N_Q))  # hot sampling spreads


# ---- a long stream, bounded ---------------------------------------------------------------------

@pytest.mark.slow  # ~8 s: 1722 frames of Python-level steps
def test_a_long_stream_keeps_the_caches_bounded(codecs):
    """20 s (1722 frames, 27 windows of 64): the caches stop growing at the window."""
    W, la = 64, 1
    m = tiny_model("frame", lookahead=la)
    t = Translator(m, *codecs, max_cache_frames=W)
    sizes = []
    t.on_step = lambda step: sizes.append(t.cache.size())
    rng = np.random.default_rng(0)
    emg = (0.3 * rng.standard_normal((6, round(20 * SR) // HOP * HOP))).astype(np.float32)
    _, audio = translate(t, emg, signals()[1], 41 * HOP)
    n = len(sizes)
    assert n == len(emg[0]) // HOP and audio.size == n * HOP  # 1722 frames = 20.0 s
    assert max(s["self"] for s in sizes) <= W and max(s["emg"] for s in sizes) <= W + la + 41
    for key in ("self_capacity", "emg_capacity"):  # storage reached its size and stayed there
        assert sizes[n // 4][key] == sizes[-1][key] <= 4 * (W + 41)
    times = np.asarray(t.frame_times)
    print(f"20 s: {n} frames, per-frame median first/last quarter "
          f"{np.median(times[:n // 4]) * 1e3:.2f} / {np.median(times[-n // 4:]) * 1e3:.2f} ms")


def test_ring_caches_change_nothing(codecs):
    """The compiled translator's caches (rings of fixed shape), eager: the same codes, logits
    and audio as growing caches, in chunks that run ahead of generation and wrap the window."""
    emg, prompt = signals(60)
    runs = []
    for ring in (False, True):
        t = Translator(tiny_model("frame", lookahead=1), *codecs, top_p=0.9, max_cache_frames=9,
                       ring=ring)
        logits = with_logits(t)
        head, audio = translate(t, emg, prompt, 5 * HOP + 3)
        runs.append((head, audio, logits, t.generated_codes(), t.cache.size()))
    (h0, a0, l0, c0, _), (h1, a1, l1, c1, s1) = runs
    assert np.array_equal(c0, c1) and c0.shape[1] == 60
    assert max((x - y).abs().max().item() for x, y in zip(l0, l1)) < TOL
    assert np.abs(h0 - h1).max() < TOL and np.abs(a0 - a1).max() < TOL
    assert s1["self_capacity"] == 9 + RING_SLACK and s1["emg_capacity"] == 9 + 1 + RING_SLACK


@pytest.mark.slow  # torch.compile of the toy audio decoder's one-frame graph (~15 s)
def test_compiled_frames_equal_the_eager_stream(codecs):
    """What Translator(compile=True) does to its codec copies, on the audio decoder: chunks of
    any size through the one-frame graph, the first chunk and offline calls eager."""
    eager, compiled = inference_copy(codecs[0]), inference_copy(codecs[0])
    compile_stream(compiled)
    assert isinstance(compiled.stream_steps, CompiledStream)  # the toy codec's RVQ froze
    z = torch.randint(0, K, (2, N_Q, 16), generator=torch.Generator().manual_seed(0))
    outs = []
    with torch.inference_mode():
        for c in (eager, compiled):
            for b in (0, 1):  # two streams: the second's state is a new tensor (after a reset)
                c.reset_stream()
                parts = [c.decode_codes_stream(z[b:b + 1, :, i:j]) for i, j in
                         [(0, 1), (1, 5), (5, 8), (8, 9), (9, 13), (13, 16)]]
                outs.append(torch.cat(parts, -1))
            outs.append(c.decode_codes(z[:1, :, :5]))  # then offline
    s0, t0, o0, s1, t1, o1 = outs
    assert s0.shape[-1] == 16 * HOP and o0.shape[-1] == 5 * HOP
    assert (s0 - t0).abs().max() > 1e-3  # two different streams
    assert max((a - b).abs().max() for a, b in [(s0, s1), (t0, t1), (o0, o1)]) < 1e-5
    # encoding: the one-frame graph of encoder and RVQ gives the same latents and codes
    x = 0.3 * torch.randn(1, 1, 7 * HOP, generator=torch.Generator().manual_seed(1))
    got = []
    with torch.inference_mode():
        for c in (eager, compiled):
            c.reset_stream()
            parts = [c.encode_stream(x[..., i * HOP:j * HOP])
                     for i, j in [(0, 1), (1, 2), (2, 5), (5, 6), (6, 7)]]
            got.append((torch.cat([p.codes for p in parts], -1),
                        torch.cat([p.z for p in parts], -1)))
    (c0, z0), (c1, z1) = got
    assert c0.shape[-1] == 7 and torch.equal(c0, c1) and (z0 - z1).abs().max() < 1e-5


# ---- decoding -----------------------------------------------------------------------------------

def test_streaming_decode_equals_offline_decode(codecs):
    emg, prompt = signals(40)
    t = Translator(tiny_model("flat"), *codecs, seed=2)
    head, audio = translate(t, emg, prompt, 7)
    codes = np.concatenate([t.prompt_codes(), t.generated_codes()], axis=1)
    with torch.no_grad():  # the caller's codec, offline: one pass over every frame
        offline = codecs[0].decode_codes(torch.from_numpy(codes)[None])[0, 0].numpy()
    streamed = np.concatenate([head, audio])
    assert streamed.shape == offline.shape == (43 * HOP,)
    err = np.abs(streamed - offline).max()
    print(f"max |streamed - offline| {err:.2e}, peak {np.abs(offline).max():.2f}")
    assert err < TOL * max(1.0, np.abs(offline).max())
    # the prompt's tokens are the offline encoding of its last whole frames
    with torch.no_grad():
        enc = codecs[0].encode(torch.from_numpy(prompt[5:])[None, None]).codes[0].numpy()
    assert np.array_equal(t.prompt_codes(), enc)


# ---- starts and checks --------------------------------------------------------------------------

def test_prompt_minimum_and_start_token(codecs):
    emg, _ = signals(10)
    t = Translator(tiny_model(), *codecs, min_prompt_frames=2)
    assert t.min_prompt_samples == 2 * HOP
    with pytest.raises(StreamError, match=f"minimum is {2 * HOP} samples"):
        t.start(np.zeros(2 * HOP - 1, np.float32))
    with pytest.raises(StreamError, match="no learned start token"):
        t.start(None)
    with pytest.raises(StreamError, match="start"):
        Translator(tiny_model(), *codecs).push_emg(emg)
    w = Translator(tiny_model(), *codecs, max_cache_frames=5)
    assert w.start(np.zeros(9 * HOP, np.float32)).size == 5 * HOP  # the window holds 5 frames
    assert w.prompt_frames == 5 and w.prompt_codes().shape == (N_Q, 5)
    b = Translator(tiny_model("frame", bos=True), *codecs, seed=0)
    assert b.start(None).size == 0
    assert b.push_emg(emg).size == 10 * HOP  # pushed EMG frame j is audio frame j
    assert b.generated_codes().shape == (N_Q, 10) and b.prompt_frames == 0


def test_prompt_emg_is_the_emg_of_the_prompt(codecs):
    emg, prompt = signals(10, 3)
    with_emg = Translator(tiny_model(), *codecs)
    with_emg.start(prompt, prompt_emg=emg[:, :5 * HOP])  # its last 3 frames go with the prompt
    with torch.no_grad():
        enc = codecs[1].encode(torch.from_numpy(emg[:, 2 * HOP:5 * HOP])[None]).codes[0].numpy()
    assert np.array_equal(with_emg.emg_codes(), enc)
    with pytest.raises(StreamError, match="need 24"):
        with_emg.start(prompt, prompt_emg=emg[:, :2 * HOP])


def test_bad_inputs_are_named(codecs):
    emg, prompt = signals(10)
    t = Translator(tiny_model(), *codecs)
    t.start(prompt)
    with pytest.raises(StreamError, match=r"must be \[6, n\]"):
        t.push_emg(emg[:5])
    bad = emg.copy()
    bad[2, 17] = np.nan
    with pytest.raises(StreamError, match=r"NaN or Inf \(first at index \(2, 17\)\)"):
        t.push_emg(bad)
    with pytest.raises(StreamError, match="NaN or Inf"):
        t.start(np.full(64, np.inf, np.float32))
    with pytest.raises(StreamError, match="guidance"):
        t.guidance = 2.0  # this stream has no unconditional pass
    with pytest.raises(StreamError, match="audio codebook is 16 but the codec's is 8"):
        Translator(tiny_model(), tiny_codec(1, N_Q, 8, 0), codecs[1])
    with pytest.raises(StreamError, match="eval mode"):
        Translator(tiny_model().train(), *codecs)


def test_emg_prep_streams_the_training_filter_and_scale():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 2000)) + 3.0).astype(np.float32)  # an offset the filter removes
    scale = np.arange(1, 7, dtype=np.float32)
    prep = EmgPrep(SR * 4, scale)
    chunked = np.concatenate([prep(x[:, i:i + 37]) for i in range(0, 2000, 37)], axis=1)
    offline = filter_emg(x, SR * 4) / scale[:, None]
    assert np.abs(chunked - offline).max() < 1e-4


def test_streaming_rtf_reports_every_frame(codecs):
    emg, prompt = signals(50)
    t = Translator(tiny_model(lookahead=1), *codecs)
    out = streaming_rtf(t, emg, prompt)
    assert out["frames"] == 49 == len(t.frame_times)  # the last frame waits for its lookahead
    assert 0 < out["p50"] <= out["p99"] <= out["max"]
    assert out["rtf"] == pytest.approx(sum(t.frame_times) / (49 * out["frame_period_s"]))
    print({k: round(v, 5) for k, v in out.items()})


def test_frozen_codec_copies_give_the_library_codes(codecs):
    from torch.nn.utils import parametrize

    from mlmlmlm.models.frozen_codec import FrozenRVQ, FrozenSnake
    from mlmlmlm.nn.layers import Snake

    t = Translator(tiny_model(), *codecs)
    x = {1: 0.3 * torch.randn(1, 1, 40 * HOP), 6: 0.3 * torch.randn(1, 6, 40 * HOP)}
    for copy, orig in ((t.audio_codec, codecs[0]), (t.emg_codec, codecs[1])):
        assert copy is not orig and isinstance(copy.bottleneck, FrozenRVQ)  # the fast search
        assert not any(parametrize.is_parametrized(m) for m in copy.modules())  # norm folded
        snakes = sum(isinstance(m, Snake) for m in orig.modules())
        assert snakes > 0 and sum(isinstance(m, FrozenSnake) for m in copy.modules()) == snakes
        with torch.no_grad():
            a, b = copy.encode(x[copy.cfg.in_channels]), orig.encode(x[orig.cfg.in_channels])
        assert torch.equal(a.codes, b.codes) and torch.allclose(a.z, b.z, atol=1e-5)
        with torch.no_grad():
            y, want = copy.decode_codes(a.codes), orig.decode_codes(a.codes)
        assert torch.allclose(y, want, atol=1e-6, rtol=0)
    assert parametrize.is_parametrized(codecs[0].encoder.layers[0])  # the caller's untouched
    centred = Codec(CodecConfig(in_channels=1, channels=4, c_mults=[1, 2], strides=[2, 4],
                                latent_dim=8, n_q=N_Q, codebook_size=K, sample_rate=SR))
    with pytest.raises(StreamError, match="audio codec has causal=False"):
        Translator(tiny_model(), centred.eval(), codecs[1])
