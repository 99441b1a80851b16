"""The translation Transformer: mask polarity and causality, flat-level restriction, cached
incremental decoding against teacher forcing, the sliding window, guidance and sampling."""

import pytest
import torch
import torch.nn.functional as F

from mlmlmlm.models.generation import RING_SLACK
from mlmlmlm.models.transformer import (
    TransformerConfig,
    TranslationTransformer,
)
from mlmlmlm.models.transformer_io import flat_tokens, sample_logits, sample_uniform
from mlmlmlm.nn.attention import apply_rope, may_attend, rope_tables
from mlmlmlm.nn.kv_buffer import KVBuffer

N_Q, K, N_QE, K_E = 3, 16, 2, 8
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(layout="flat", lookahead=0, **kw) -> TranslationTransformer:
    torch.manual_seed(0)
    kw = {"n_q": N_Q, "codebook_size": K, "emg_n_q": N_QE, "emg_codebook_size": K_E,
          "d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.0, "depth_layers": 1, **kw}
    cfg = TransformerConfig(layout=layout, lookahead=lookahead, **kw)
    return TranslationTransformer(cfg).eval()


def codes(B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, K, (B, N_Q, T), generator=g),
            torch.randint(0, K_E, (B, N_QE, T + 2), generator=g))


# ---- the mask helper ---------------------------------------------------------------------------

def test_may_attend_means_may_attend():
    pos = torch.arange(5)
    assert torch.equal(may_attend(pos, pos), torch.ones(5, 5).tril().bool())
    assert torch.equal(may_attend(pos, pos, lookahead=1), torch.ones(5, 5).tril(1).bool())
    band = may_attend(pos, pos, window=2)
    assert torch.equal(band, torch.ones(5, 5).tril().bool() & ~torch.ones(5, 5).tril(-2).bool())
    # polarity as F.scaled_dot_product_attention reads it: equal scores, value = key position,
    # so query t must return the mean of the positions it may see, 0..t
    q = k = torch.zeros(1, 1, 5, 4)
    v = pos.float().view(1, 1, 5, 1).expand(1, 1, 5, 4)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=may_attend(pos, pos))
    assert torch.allclose(y[0, 0, :, 0], pos.float() / 2)


def test_rope_is_relative_far_from_zero():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)

    def score(pq, pk):
        rq, rk = rope_tables(torch.tensor([pq]), 16), rope_tables(torch.tensor([pk]), 16)
        return (apply_rope(q, rq) * apply_rope(k, rk)).sum()

    for offset in (10_000, 1_000_000):  # a minute of flat tokens is ~2e4 positions
        assert abs(score(7 + offset, 3 + offset) - score(7, 3)) < 1e-5
    assert abs(score(7, 3) - score(7, 5)) > 1e-3


# ---- what the teacher-forced model may see ----------------------------------------------------

def changed_frames(m, a, e, e2, **kw):
    """Max |logit change| per audio frame [T] when EMG e -> e2 (predicted codes only)."""
    o, o2 = m(a, e, **kw), m(a, e2, **kw)
    diff = (o2.logits - o.logits).abs() * o.valid[None, :, :, None]
    return diff.amax(dim=(0, 1, 3))


@pytest.mark.parametrize("layout", ["flat", "frame"])
@pytest.mark.parametrize("lookahead", [0, 1])
def test_cross_attention_sees_past_emg_only(layout, lookahead):
    m = tiny(layout, lookahead)
    a, e = codes(2, 10)
    for k in (2, 5, 8):
        e2 = e.clone()
        e2[:, :, k] = (e2[:, :, k] + 1) % K_E  # change EMG frame k only
        d = changed_frames(m, a, e, e2)
        first = max(k - lookahead, 1)  # frame 0 is never predicted
        assert torch.all(d[:first] == 0), f"frame < {k - lookahead} saw EMG frame {k}: {d}"
        assert torch.all(d[first:] > 1e-3), f"EMG frame {k} did not reach frames >= {first}: {d}"
        # the same check on the EMG-dropped path finds nothing: it can tell a deaf model
        drop = torch.ones(2, dtype=torch.bool)
        assert torch.all(changed_frames(m, a, e, e2, drop_emg=drop) == 0)


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_emg_changes_the_output(layout):
    m = tiny(layout)
    a, e = codes(2, 10)
    e2 = codes(2, 10, seed=7)[1]
    o, o2 = m(a, e), m(a, e2)
    mask = o.valid[None, :, :, None]
    change = ((o2.logits - o.logits).abs() * mask).sum() / (mask.sum() * K * 2)
    assert change > 0.1 * o.logits[:, o.valid].std()  # a real margin, not rounding


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_emg_keys_carry_their_time(layout):
    # attention over a set of keys without positions is blind to their order: swapping two
    # visible EMG frames would change nothing (the prior implementation's keys had no position).
    # One layer, so frames >= 3 can learn of the swap only through their own cross-attention.
    m = tiny(layout, n_layers=1)
    with torch.no_grad():  # sharper scores than at init, as after training
        m.blocks[0].cross.q.weight.mul_(10)
        m.blocks[0].cross.kv.weight.mul_(10)
    a, e = codes(2, 10)
    e2 = e.clone()
    e2[:, :, [1, 3]] = e[:, :, [3, 1]]
    d = changed_frames(m, a, e, e2)
    assert torch.all(d[3:] > 1e-3), d


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_future_audio_never_changes_past_logits(layout):
    m = tiny(layout)
    a, e = codes(2, 8)
    k = 4
    a2 = a.clone()
    a2[:, N_Q - 1, k] = (a2[:, N_Q - 1, k] + 1) % K  # the last level of frame k
    d = (m(a2, e).logits - m(a, e).logits).abs().amax(dim=(0, 3))  # [n_q, T]
    assert torch.all(d[:, : k + 1] == 0)  # frames <= k, including frame k's own levels
    assert torch.all(d[:, k + 1:].amax(0) > 1e-4)


def test_flat_logits_restricted_to_the_level():
    m = tiny("flat")
    a, e = codes(2, 6)
    out = m(a, e)
    vocab = out.vocab_logits()  # [B, T * n_q, n_q * K]
    for i in range(1, vocab.shape[1]):
        level = i % N_Q
        inside = torch.zeros(N_Q * K, dtype=torch.bool)
        inside[level * K:(level + 1) * K] = True
        assert torch.isfinite(vocab[:, i, inside]).all()
        assert torch.all(vocab[:, i, ~inside] == float("-inf"))
    g = torch.Generator().manual_seed(0)
    drawn = torch.multinomial(vocab[0, 1:].softmax(-1), 50, replacement=True, generator=g)
    assert torch.all(drawn // K == (torch.arange(1, vocab.shape[1]) % N_Q)[:, None])
    gen = m.generate(a[:, :, :2], e, 4, temperature=5.0, generator=g)  # flat ids stay in range
    assert gen.min() >= 0 and gen.max() < K
    tokens = flat_tokens(gen, K)
    assert torch.all(tokens // K == torch.arange(tokens.shape[1]) % N_Q)


def test_loss_is_cross_entropy_and_learns():
    m = tiny("frame")
    a, e = codes(2, 6)
    out = m(a, e)
    ref = F.cross_entropy(out.logits[:, :, 1:].reshape(-1, K), a[:, :, 1:].reshape(-1))
    assert torch.allclose(m.loss(out).loss, ref, atol=1e-6)
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = m.loss(m(a, e, drop_emg=torch.zeros(2, dtype=torch.bool))).loss
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


# ---- incremental decoding ---------------------------------------------------------------------

def run_cached(m, a, e, P, chunks, window=None, guided=False, guidance=1.0):
    """Prime with P frames, step through the rest of ``a`` teacher-forced, appending EMG in
    ``chunks`` (sizes, cycled) whenever the next frame needs it. Returns logits [B, n_q, T', K]."""
    B, _, T = a.shape
    la = m.cfg.lookahead
    cache = m.new_cache(B, guided=guided, max_cache_frames=window)
    sent, c = 0, 0

    def feed_until(n):
        nonlocal sent, c
        while sent < n:
            size = chunks[c % len(chunks)]
            m.append_emg(cache, e[:, :, sent:sent + size])
            sent, c = min(sent + size, e.shape[2]), c + 1

    feed_until(P + la)
    m.prime(cache, a[:, :, :P])
    logits = []
    for t in range(P, T):
        feed_until(t + la + 1)
        logits.append(m.step(cache, codes=a[:, :, t], guidance=guidance).logits)
    return torch.stack(logits, 2), cache


@pytest.mark.parametrize("layout", ["flat", "frame"])
@pytest.mark.parametrize("lookahead", [0, 1])
@pytest.mark.parametrize("chunks", [[1], [3, 1, 5, 2], [64]], ids=["1", "mixed", "ahead"])
def test_incremental_equals_teacher_forced(layout, lookahead, chunks):
    m = tiny(layout, lookahead)
    a, e = codes(2, 12)
    full = m(a, e).logits
    for P in (1, 3):
        step, _ = run_cached(m, a, e, P, chunks)
        err = (step - full[:, :, P:]).abs().max().item()
        print(f"{layout} lookahead {lookahead} chunks {chunks} P {P}: max |err| {err:.2e}")
        assert err < TOL


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_bfloat16_weights_step_like_float32_and_sample_in_float32(layout):
    """A bfloat16 copy (the paper scale's faster step on a CPU) streams through the same caches:
    its logits come back in float32 (sampled there) and stay near the float32 model's."""
    m = tiny(layout)
    a, e = codes(2, 12)
    ref, _ = run_cached(m, a, e, 3, [1])
    half, cache = run_cached(m.to(torch.bfloat16), a, e, 3, [1])
    assert half.dtype == torch.float32 and cache.self_kv[0]._k.dtype == torch.bfloat16
    err = (half - ref).abs().max().item()
    print(f"{layout}: bfloat16 against float32 max |err| {err:.3f}, logits sd {ref.std():.3f}")
    assert 0 < err < 0.1 * ref.std().item()  # rounded, not another model
    cache = m.new_cache(1)
    m.append_emg(cache, e[:1, :, :5])
    m.prime(cache, a[:1, :, :2])
    for _ in range(3):
        out = m.step(cache, top_p=0.9, generator=torch.Generator().manual_seed(0))
        assert ((out.codes >= 0) & (out.codes < K)).all()


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_emg_context_stays_causal_and_streams_exactly(layout):
    m = tiny(layout, 1, emg_context=4)
    a, e = codes(2, 12)
    for k in (3, 7):  # EMG frame k reaches frames >= k - lookahead, never earlier
        e2 = e.clone()
        e2[:, :, k] = (e2[:, :, k] + 1) % K_E
        d = changed_frames(m, a, e, e2)
        assert torch.all(d[:k - 1] == 0) and torch.all(d[k - 1:] > 1e-3), d
    full = m(a, e).logits
    for chunks in ([1], [3, 1, 5, 2]):  # the context's state crosses chunk boundaries
        step, cache = run_cached(m, a, e, 2, chunks)
        assert (step - full[:, :, 2:]).abs().max().item() < TOL
        assert cache.emg_past.shape == (2, 3, 32)
        # a copy, not a view of the last chunk's [2, 3 + n, 32]: the same strides after any
        # chunk, so a compiled one-frame call is not recompiled for each prompt length
        assert cache.emg_past.stride() == (3 * 32, 32, 1)
    _, cache = run_cached(m, a[:1], e[:1], 2, [5])  # batch 1: a size-1 dim's stride counts too
    assert cache.emg_past.stride() == (3 * 32, 32, 1)
    plain = tiny(layout, 1)
    plain.load_state_dict(m.state_dict(), strict=False)  # the same weights, no EMG context
    assert (plain(a, e).logits - full).abs().max() > 1e-3


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_step_waits_for_its_emg(layout):
    m = tiny(layout, lookahead=1)
    a, e = codes(1, 6)
    cache = m.new_cache(1)
    with pytest.raises(ValueError, match="needs EMG"):
        m.append_emg(cache, e[:, :, :2])
        m.prime(cache, a[:, :, :2])  # predicting frame 1 needs EMG through 2
    cache = m.new_cache(1)
    m.append_emg(cache, e[:, :, :3])
    m.prime(cache, a[:, :, :2])
    assert m.frames_ready(cache) == 0
    with pytest.raises(ValueError, match="needs EMG"):
        m.step(cache)
    m.append_emg(cache, e[:, :, 3:5])
    assert m.frames_ready(cache) == 2


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_cross_kv_computed_once_per_emg_frame(layout):
    m = tiny(layout)
    a, e = codes(2, 10)
    rows = []
    hooks = [b.cross.kv.register_forward_hook(lambda mod, i, o: rows.append(i[0].shape[1]))
             for b in m.blocks]
    _, cache = run_cached(m, a, e, 2, [3, 1, 4])
    for h in hooks:
        h.remove()
    assert cache.n_emg >= 10 and sum(rows) == cache.n_emg * len(m.blocks)  # n in, n K/V out


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_prompt_fed_once(layout):
    m = tiny(layout)
    a, e = codes(1, 8)
    P = 3
    per_frame = N_Q if layout == "flat" else 1
    fed = []
    hook = m.blocks[0].self_attn.qkv.register_forward_hook(
        lambda mod, i, o: fed.append(i[0].shape[1]))
    cache = m.new_cache(1)
    m.append_emg(cache, e)
    m.prime(cache, a[:, :, :P])
    # the prompt is P * per_frame positions: all but the last are in the cache, the last waits
    assert cache.n_fed == len(cache.self_kv[0]) == sum(fed) == P * per_frame - 1
    assert cache.n_fed + cache.pending.shape[-1] == P * per_frame
    one = m.blocks[0].one  # a step feeds one position per call of Block.one
    m.blocks[0].one = lambda *args: (fed.append(1), one(*args))[1]
    for t in range(P, P + 2):
        m.step(cache, codes=a[:, :, t])
        assert sum(fed) == len(cache.self_kv[0]) == (t + 1) * per_frame - 1  # never twice
    hook.remove()


@pytest.mark.parametrize("layout", ["flat", "frame"])
@pytest.mark.parametrize("ctx,ring", [(0, False), (4, False), (0, True)],
                         ids=["plain", "emg_context", "ring"])
def test_sliding_window_bounded_and_exact(layout, ctx, ring):
    m = tiny(layout, lookahead=1, emg_context=ctx)
    W, P, n = 3, 2, 30  # 10 W frames past the prompt
    a, e = codes(1, P + n)
    g = torch.Generator().manual_seed(3)
    cache = m.new_cache(1, max_cache_frames=W, ring=ring)
    m.append_emg(cache, e[:, :, :P + 1])
    m.prime(cache, a[:, :, :P])
    frames, logits, sizes = [], [], []
    for t in range(P, P + n):
        m.append_emg(cache, e[:, :, t + 1:t + 2])  # one EMG frame per audio frame
        s = m.step(cache, generator=g)
        frames.append(s.codes)
        logits.append(s.logits)
        sizes.append(cache.size())
    per_frame = N_Q if layout == "flat" else 1
    assert max(s["self"] for s in sizes) <= W * per_frame
    assert max(s["emg"] for s in sizes) <= W + 1
    if ring:  # fixed slots from the first step to the last: every step has the same shapes
        assert sizes[0]["self_capacity"] == sizes[-1]["self_capacity"] == W * per_frame + RING_SLACK
        assert sizes[0]["emg_capacity"] == sizes[-1]["emg_capacity"] == W + 1 + RING_SLACK
    else:
        assert sizes[n // 2]["self_capacity"] == sizes[-1]["self_capacity"] <= max(16, 4 * W * per_frame)
        assert sizes[n // 2]["emg_capacity"] == sizes[-1]["emg_capacity"]
    gen = torch.cat([a[:, :, :P], torch.stack(frames, 2)], dim=2)  # [1, n_q, P + n]
    windowed = m(gen, e[:, :, :P + n + 1], window=W).logits[:, :, P:]  # EMG through t + 1
    err = (torch.stack(logits, 2) - windowed).abs().max().item()
    print(f"{layout} window {W} over {n} frames: max |err| {err:.2e}")
    assert err < TOL
    full = m(gen, e[:, :, :P + n + 1]).logits[:, :, P:]
    assert (full - windowed).abs().max() > 1e-3  # the window does forget


def test_ring_buffer_slots_wrap_and_refuse_overflow():
    buf = KVBuffer(capacity=4)
    kv = torch.arange(6.0).view(1, 1, 6, 1)  # positions 0..5, value = position
    buf.append(kv[:, :, :3], -kv[:, :, :3])
    buf.drop_before(2)
    buf.append(kv[:, :, 3:6], -kv[:, :, 3:6])  # positions 3..5 wrap into slots 3, 0, 1
    k, v, first = buf.span(0, 10)
    assert first == 2 and k.flatten().tolist() == [2.0, 3.0, 4.0, 5.0] and torch.equal(v, -k)
    store, _, pos = buf.ring()
    assert store.shape[2] == 4 and pos.tolist() == [4, 5, 2, 3]
    with pytest.raises(ValueError, match="ring of 4 slots"):
        buf.append(kv[:, :, :1], kv[:, :, :1])  # 4 live entries: no slot is free
    buf.drop_before(4)  # a claimed entry counts as appended: written in place by the caller
    assert buf.claim(1) == 6 and len(buf) == 3 and buf.span(0, 10)[2] == 4
    buf.claim(1)
    with pytest.raises(ValueError, match="ring of 4 slots"):
        buf.claim(1)


def test_ring_cache_with_guidance_equals_growing_cache():
    m = tiny("frame", lookahead=1)
    a, e = codes(1, 24)
    outs = []
    for ring in (False, True):
        cache = m.new_cache(1, guided=True, max_cache_frames=5, ring=ring)
        m.append_emg(cache, e[:, :, :4])
        m.prime(cache, a[:, :, :3])
        g = torch.Generator().manual_seed(0)
        for t in range(3, 24):
            if cache.n_emg < t + 2:
                m.append_emg(cache, e[:, :, cache.n_emg:t + 2])
            outs.append(m.step(cache, guidance=2.5, top_p=0.9, generator=g))
    eager, rings = outs[:21], outs[21:]
    assert all(torch.equal(x.codes, y.codes) for x, y in zip(eager, rings))
    assert max((x.logits - y.logits).abs().max().item() for x, y in zip(eager, rings)) < TOL


@pytest.mark.slow  # torch.compile of the tiny step: ~20-40 s on 2 cores (flat: a graph a level)
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_compiled_step_equals_eager_step(layout):
    m = tiny(layout, lookahead=1)
    a, e = codes(1, 40)
    runs = []
    for compiled in (False, True):
        m.compile_generation(compiled)
        cache = m.new_cache(1, max_cache_frames=6, ring=True)
        m.append_emg(cache, e[:, :, :4])
        m.prime(cache, a[:, :, :3])
        g = torch.Generator().manual_seed(0)
        steps = []
        for t in range(3, 33):  # 5 windows; EMG 2 frames at a time, a frame ahead at times
            if cache.n_emg < t + 2:
                m.append_emg(cache, e[:, :, cache.n_emg:cache.n_emg + 2])
            steps.append(m.step(cache, top_p=0.9, generator=g))
        runs.append(steps)
    m.compile_generation(False)
    assert m._compiled is None
    assert all(torch.equal(x.codes, y.codes) for x, y in zip(*runs))
    assert max((x.logits - y.logits).abs().max().item() for x, y in zip(*runs)) < TOL


@pytest.mark.slow  # two compilations of a depth head (~10 s each)
@pytest.mark.usefixtures("one_torch_thread")
def test_two_compiled_models_of_one_class_keep_their_own_graphs():
    """Two presets in one kernel: depth heads of widths 32 and 16, compiled one after the other
    with nn-module guards skipped, each equal to its eager self (sharing the first's graph, the
    second failed with 'expected size 16==32')."""
    from mlmlmlm.nn.compile import compile_frozen

    h, u = torch.randn(1, 32), torch.rand(N_Q, 1)
    for width in (32, 16):
        m = tiny("frame", depth_d_model=width)
        with torch.inference_mode():
            got = compile_frozen(m._frame_head)(h, u, None, 1.0, None, 0.9, 1.0, 1)
            want = m._frame_head(h, u, None, 1.0, None, 0.9, 1.0, 1)
        assert torch.equal(got[0], want[0]) and (got[1] - want[1]).abs().max() < TOL


# ---- guidance and sampling --------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_guidance_weights(layout):
    m = tiny(layout)
    a, e = codes(2, 8)
    cond = m(a, e).logits[:, :, 2:]
    uncond = m(a, e, drop_emg=torch.ones(2, dtype=torch.bool)).logits[:, :, 2:]
    plain, _ = run_cached(m, a, e, 2, [2])
    one, _ = run_cached(m, a, e, 2, [2], guided=True, guidance=1.0)
    # w = 1: the conditional logits (the guided batch is twice as tall: same up to rounding)
    assert (one - plain).abs().max() < 1e-6 and (one - cond).abs().max() < TOL
    zero, _ = run_cached(m, a, e, 2, [2], guided=True, guidance=0.0)
    assert (zero - uncond).abs().max() < TOL  # w = 0: the EMG-dropped model
    three, _ = run_cached(m, a, e, 2, [2], guided=True, guidance=3.0)
    assert (three - (uncond + 3 * (cond - uncond))).abs().max() < 1e-3
    with pytest.raises(ValueError, match="guided"):
        cache = m.new_cache(2)
        m.append_emg(cache, e)
        m.prime(cache, a[:, :, :2])
        m.step(cache, guidance=2.0)


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_seeded_sampling_reproducible(layout):
    m = tiny(layout)
    a, e = codes(2, 12)

    def gen(seed):
        g = torch.Generator().manual_seed(seed)
        return m.generate(a[:, :, :2], e, 10, guidance=2.0, top_k=8, top_p=0.9, generator=g)

    assert torch.equal(gen(5), gen(5))
    assert not torch.equal(gen(5), gen(6))


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_emg_chunking_does_not_change_sampled_tokens(layout):
    m = tiny(layout, lookahead=1)
    a, e = codes(1, 20)

    def gen(chunk):
        g = torch.Generator().manual_seed(11)
        cache = m.new_cache(1, guided=True)
        sent, out = 0, []
        while sent < 3:
            m.append_emg(cache, e[:, :, sent:sent + chunk])
            sent += chunk
        m.prime(cache, a[:, :, :2])
        while cache.n_frames < 20:
            while m.frames_ready(cache) == 0:
                m.append_emg(cache, e[:, :, sent:sent + chunk])
                sent += chunk
            out.append(m.step(cache, guidance=2.0, top_p=0.95, generator=g).codes)
        return torch.stack(out, 2)

    once = gen(64)
    assert torch.equal(gen(1), once) and torch.equal(gen(7), once)


def test_condition_dropout_in_training():
    m = tiny("flat", cond_dropout=0.5)
    a, e = codes(64, 4)
    dropped = m(a, e, drop_emg=torch.ones(64, dtype=torch.bool)).logits
    m.train()
    torch.manual_seed(0)
    same = (m(a, e).logits - dropped).abs().amax(dim=(1, 2, 3)) < 1e-6  # [B]
    assert 16 < int(same.sum()) < 48  # about half the rows saw only the null key
    m.eval()
    assert not ((m(a, e).logits - dropped).abs().amax(dim=(1, 2, 3)) < 1e-6).any()


@pytest.mark.parametrize("layout", ["flat", "frame"])
def test_token_noise_corrupts_what_is_read_in_training_only(layout):
    clean, noisy = tiny(layout), tiny(layout, token_noise=0.5, cond_dropout=0.0)
    a, e = codes(8, 6)
    assert torch.equal(noisy(a, e).logits, clean(a, e).logits)  # eval: no noise at all
    noisy.train()
    torch.manual_seed(0)
    out = noisy(a, e)
    assert torch.equal(out.targets, a)  # the targets stay the true codes
    assert (out.logits - clean(a, e).logits).abs().amax() > 1e-3  # what was read changed
    with pytest.raises(ValueError):
        TransformerConfig(token_noise=1.0)


def test_sample_logits_filters():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 32, generator=g)
    best = logits.argmax(-1)
    assert torch.equal(sample_logits(logits, temperature=0), best)
    assert torch.equal(sample_logits(logits, top_k=1, generator=g), best)
    assert torch.equal(sample_logits(logits, top_p=1e-6, generator=g), best)
    top4 = logits.topk(4).indices
    for _ in range(20):
        s = sample_logits(logits, top_k=4, generator=g)
        assert (top4 == s[:, None]).any(-1).all()
    # inverse CDF: u at the edges of the mass picks the first and last code of nonzero mass
    lg = torch.tensor([[float("-inf"), 0.0, float("-inf"), 0.0, float("-inf")]])
    assert sample_uniform(lg, torch.tensor([0.0])).item() == 1
    assert sample_uniform(lg, torch.tensor([0.4999])).item() == 1
    assert sample_uniform(lg, torch.tensor([0.5001])).item() == 3
    assert sample_uniform(lg, torch.tensor([1.0 - 1e-7])).item() == 3
    freq = torch.bincount(sample_logits(torch.log(torch.tensor([[0.1, 0.2, 0.7]])).expand(
        20000, 3), generator=g), minlength=3) / 20000  # the distribution itself
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.7]), atol=0.015)


# ---- scales -----------------------------------------------------------------------------------

def count_by_formula(cfg: TransformerConfig) -> int:
    """Parameters of the flat layout, derived by hand (no biases):
    audio embedding + output head 2 V d, level embedding n_q d, EMG embedding n_qe K_e d,
    per layer: self-attention 4 d^2 (qkv, out), cross-attention 4 d^2 (q, kv, out) + d (null
    value), SwiGLU 3 d h, four RMSNorms 4 d; final RMSNorm d."""
    d, h, V = cfg.d_model, cfg.ffn_width, cfg.vocab_size
    layer = 4 * d * d + 4 * d * d + d + 3 * d * h + 4 * d
    return 2 * V * d + cfg.n_q * d + cfg.emg_n_q * cfg.emg_codebook_size * d + \
        cfg.n_layers * layer + d


def test_paper_and_cpu_parameter_counts():
    paper, cpu = TransformerConfig.paper(), TransformerConfig.cpu()
    assert (paper.d_model, paper.n_layers, paper.n_heads, paper.head_dim) == (384, 6, 6, 64)
    assert paper.vocab_size == 8192 and paper.ffn_width == 1536
    with torch.device("meta"):
        n_paper = TranslationTransformer(paper).num_params()
        n_cpu = TranslationTransformer(cpu).num_params()
    print(f"paper preset: {n_paper:,} parameters; cpu preset: {n_cpu:,}")
    # 2*8192*384 + 4*384 + 4*2048*384 + 6*(20*384^2 + 5*384) + 384
    assert count_by_formula(paper) == 27_145_344 == n_paper
    # 2*4096*128 + 4*128 + 4*1024*128 + 4*(20*128^2 + 5*128) + 128
    assert count_by_formula(cpu) == 2_886_784 == n_cpu
