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


# ---- the recipe on the one training loop -------------------------------------------------------

def smoke_cfg(run, codecs, **over):
    from mlmlmlm.config import load_run_config

    over = {"codecs.audio": str(codecs["audio"]), "codecs.emg": str(codecs["emg"]), **over}
    return load_run_config(f"05_transformer/{run}", "smoke", overrides=over)


@pytest.mark.parametrize("run", ["te1", "te2", "te2_frame", "te2_bos"])
def test_every_run_trains_through_train_run(run, smoke_codecs, smoke_corpus, tmp_path):
    from mlmlmlm.recipes import train_run
    from mlmlmlm.recipes.codec import read_log

    over = {"codecs.audio": str(smoke_codecs["audio"]), "codecs.emg": str(smoke_codecs["emg"])}
    out = train_run(f"05_transformer/{run}", "smoke", run_dir=tmp_path, data_root=smoke_corpus,
                    overrides=over, evaluate=True)
    assert out["steps"] == 2
    for q in range(4):  # held-out token accuracy and perplexity per level
        assert 0 <= out[f"token_accuracy_q{q}"] <= 1 and 1 <= out[f"perplexity_q{q}"] < 1e3
    log = read_log(tmp_path)
    assert {"train", "acc_q0", "acc_q3", "loss_q0", "loss_q3"} <= set(log[-1])


def test_two_steps_resume_as_uninterrupted(smoke_codecs, smoke_corpus, tmp_path):
    from mlmlmlm.recipes import transformer as R

    over = {"train.schedule": "constant", "model.dropout": 0.1, "model.cond_dropout": 0.5}
    whole = R.train(smoke_cfg("te2", smoke_codecs, **over), tmp_path / "a", smoke_corpus,
                    progress=False)
    half = R.train(smoke_cfg("te2", smoke_codecs, **over, **{"train.max_steps": 1}),
                   tmp_path / "b", smoke_corpus, progress=False)
    assert half.steps == 1
    rest = R.train(smoke_cfg("te2", smoke_codecs, **over), tmp_path / "b", smoke_corpus,
                   progress=False)
    assert rest.resumed_from == 1 and rest.steps == 2
    for (k, a), b in zip(whole.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_load_translation_round_trip(smoke_codecs, smoke_corpus, tmp_path):
    from mlmlmlm.recipes import transformer as R

    cfg = smoke_cfg("te2_frame", smoke_codecs)
    result = R.train(cfg, tmp_path, smoke_corpus, progress=False)
    model, cfg2, audio, emg = R.load_translation(tmp_path)
    assert cfg2.to_dict() == cfg.to_dict() and not model.training
    assert audio.cfg.n_q == model.cfg.n_q and emg.cfg.codebook_size == model.cfg.emg_codebook_size
    _, _, pair = R.load_pair(tmp_path)
    items = R.eval_items(cfg, pair, smoke_corpus)[:2]
    a, e = torch.stack([i["audio"] for i in items]), torch.stack([i["emg"] for i in items])
    trained = result.model.eval()
    with torch.no_grad():
        assert torch.equal(model(a, e).logits, trained(a, e).logits)


def test_load_translation_checks_its_codecs(smoke_codecs, smoke_corpus, tmp_path):
    import shutil

    from mlmlmlm.recipes import transformer as R

    codecs = {k: shutil.copytree(v, tmp_path / k) for k, v in smoke_codecs.items()}
    R.train(smoke_cfg("te2", codecs, **{"train.max_steps": 1}), tmp_path / "te2", smoke_corpus,
            progress=False)
    R.load_translation(tmp_path / "te2")
    ckpt = torch.load(codecs["audio"] / "checkpoint.pt", weights_only=True)
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][key] += 0.5  # the audio codec was retrained
    torch.save(ckpt, codecs["audio"] / "checkpoint.pt")
    with pytest.raises(R.CodecMismatchError) as err:
        R.load_translation(tmp_path / "te2")
    assert "\n" not in str(err.value) and str(codecs["audio"]) in str(err.value)
    # training again does not resume on other codecs: the old run is moved aside
    R.train(smoke_cfg("te2", codecs, **{"train.max_steps": 1}), tmp_path / "te2", smoke_corpus,
            progress=False)
    assert (tmp_path / "te2.superseded" / "checkpoint.pt").is_file()
    R.load_translation(tmp_path / "te2")
    shutil.rmtree(codecs["emg"])
    with pytest.raises(R.MissingCodecError, match="emg codec"):
        R.load_translation(tmp_path / "te2")


def test_codebook_sizes_are_checked_against_the_codecs(smoke_codecs, smoke_corpus, tmp_path):
    from mlmlmlm.config import ConfigError
    from mlmlmlm.recipes import transformer as R

    with pytest.raises(ConfigError, match="model.codebook_size is 32 but the codec"):
        R.train(smoke_cfg("te2", smoke_codecs, **{"model.codebook_size": 32}), tmp_path,
                smoke_corpus, progress=False)


def test_schedules_warm_up_for_15_percent_and_fit_the_budget():
    from mlmlmlm.config import list_runs, load_run_config

    for run in list_runs("05_transformer"):
        for scale in ("cpu", "paper"):
            cfg = load_run_config(run, scale)
            t = cfg.train
            assert t.optimizer == "adam" and t.lr == 1e-3 and t.schedule == "onecycle"
            assert t.warmup_steps == pytest.approx(0.15 * t.max_steps, abs=1), (run, scale)
        cpu = load_run_config(run, "cpu")
        assert cpu.model.d_model == 128 and cpu.model.codebook_size == 1024


def test_bench_transformer_reports_cached_and_uncached_speed():
    from mlmlmlm.bench import bench_transformer_run
    from mlmlmlm.cli import _parser

    assert _parser().parse_args(["bench", "transformer", "--json"]).what == "transformer"
    for layout, per_forward in (("flat", 1), ("frame", 4)):
        r = bench_transformer_run("smoke", layout, seconds=0.6, context_s=0.3, reps=1)
        ctx = r["context_frames"]
        assert ctx == round(0.3 * r["frame_rate"]) and r["generated_frames"] == round(0.6 * 86.13)
        assert r["uncached_tokens_per_s"] == pytest.approx(per_forward * 1e3 / r["uncached_forward_ms"])
        assert r["cached_tokens_per_s"] == pytest.approx(4e3 / r["step_ms_0.3s"])
        assert r["token_ms_0.6s"] == pytest.approx(r["step_ms_0.6s"] / 4)
        # the sliding window keeps the caches at the context: ctx frames of audio and EMG
        assert r["cache"]["emg"] <= ctx and r["cache"]["self"] <= ctx * (4 if layout == "flat" else 1)
        assert r["compiled"] is False


@pytest.mark.slow  # torch.compile of the smoke trunk's one-position graph
def test_bench_transformer_times_the_compiled_cached_step():
    from mlmlmlm.bench import bench_transformer_run

    r = bench_transformer_run("smoke", "flat", seconds=0.6, context_s=0.3, reps=1, compile=True)
    assert r["compiled"] is True and r["step_ms_0.3s"] > 0 and r["step_ms_0.6s"] > 0
    ctx = r["context_frames"]  # ring caches: the window plus their slack, never more
    assert r["cache"]["emg"] <= ctx and r["cache"]["self"] <= ctx * 4


def test_token_metrics_with_shuffled_emg_measure_what_the_emg_is_worth():
    from mlmlmlm.recipes.transformer import token_metrics

    m = tiny("flat")
    a, e = codes(6, 8)
    items = [{"audio": a[i], "emg": e[i]} for i in range(6)]
    true, shuffled = token_metrics(m, items), token_metrics(m, items, shuffle_emg=True)
    assert abs(shuffled["loss"] - true["loss"]) > 1e-4  # another window's EMG: another loss
    same = [{"audio": a[i], "emg": e[0]} for i in range(6)]  # every window the same EMG
    assert token_metrics(m, same, shuffle_emg=True)["loss"] == pytest.approx(
        token_metrics(m, same)["loss"], abs=1e-6)
