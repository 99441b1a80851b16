"""The translation recipe: the model's TE1 (non-causal cross) and start-token variants, training
05_transformer runs on the one loop (resume, logs), load_translation and its codec checks."""

import pytest
import torch

from mlmlmlm.models.transformer import TransformerConfig, TranslationTransformer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_Q, K, N_QE, K_E = 3, 16, 2, 8


def tiny(layout="flat", **kw) -> TranslationTransformer:
    torch.manual_seed(0)
    kw = {"n_q": N_Q, "codebook_size": K, "emg_n_q": N_QE, "emg_codebook_size": K_E,
          "d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.0, "depth_layers": 1,
          "layout": layout, **kw}
    return TranslationTransformer(TransformerConfig(**kw)).eval()


def codes(B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, K, (B, N_Q, T), generator=g),
            torch.randint(0, K_E, (B, N_QE, T + 2), generator=g))


def frame_change(m, a, e, k):
    """Max |logit change| per audio frame [T] when EMG frame k changes."""
    e2 = e.clone()
    e2[:, :, k] = (e2[:, :, k] + 1) % K_E
    o, o2 = m(a, e), m(a, e2)
    return ((o2.logits - o.logits).abs() * o.valid[None, :, :, None]).amax(dim=(0, 1, 3))


# ---- te1 against te2: the cross-attention mask -------------------------------------------------

@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_te1_sees_future_emg_te2_does_not(layout):
    """TE1 (cross_causal False): changing EMG frame k changes predictions of frames before k;
    TE2 (causal): never, and frames >= k do change."""
    a, e = codes(2, 10)
    k = 6
    te2 = frame_change(tiny(layout), a, e, k)
    te1 = frame_change(tiny(layout, cross_causal=False), a, e, k)
    assert te2[:k].max() == 0 and te2[k:].max() > 1e-6
    assert te1[1:k].min() > 1e-6  # every predicted frame before k listens to the future


def test_te1_generation_is_causal():
    """A non-causal model run through the cache sees only the EMG appended so far: the same
    tokens whatever EMG follows (what TE1 meets at inference)."""
    m = tiny(cross_causal=False)
    a, e = codes(1, 8)
    e2 = e.clone()
    e2[:, :, 6:] = (e2[:, :, 6:] + 3) % K_E
    g = [m.generate(a[:, :, :2], x, 4, temperature=0) for x in (e, e2)]  # frames 2..5
    assert torch.equal(g[0], g[1])


# ---- te2_bos: a learned start token ------------------------------------------------------------

@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_bos_predicts_the_first_frame_and_cache_matches(layout):
    m = tiny(layout, bos=True)
    a, e = codes(2, 6)
    out = m(a, e)
    assert out.valid.all()  # frame 0 is predicted too, from the start token and EMG frame 0
    assert frame_change(m, a, e, 0)[0] > 1e-6
    cache = m.new_cache(2)
    m.append_emg(cache, e)
    m.start(cache)
    for t in range(6):  # teacher forcing through the cache equals the forward pass
        step = m.step(cache, codes=a[:, :, t])
        assert torch.allclose(step.logits, out.logits[:, :, t], atol=1e-4)


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_bos_generates_without_prompt(layout):
    m = tiny(layout, bos=True)
    _, e = codes(1, 12)
    g = m.generate(None, e, 10, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert g.shape == (1, N_Q, 10) and 0 <= int(g.min()) and int(g.max()) < K
    # with a prompt the start token still comes first: prompt + cache equals the forward pass
    a, _ = codes(1, 12)
    out = m(a[:, :, :6], e)
    cache = m.new_cache(1)
    m.append_emg(cache, e)
    m.prime(cache, a[:, :, :3])
    step = m.step(cache, codes=a[:, :, 3])
    assert torch.allclose(step.logits, out.logits[:, :, 3], atol=1e-4)
    with pytest.raises(ValueError, match="bos=True"):
        tiny(layout).start(tiny(layout).new_cache(1))
