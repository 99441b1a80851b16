"""Benchmarks that print JSON: codec training throughput, encode/decode real-time factor, and the
fused Snake against the plain elementwise Snake (and the other CPU speed-ups against what they
replaced) measured side by side in one run.

Introduced in notebook 02_audio_codec (``mlmlmlm bench codec --json``). Numbers are for the
machine they ran on; compare ratios measured in one run, never absolute times across machines.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

from mlmlmlm.config import load_run_config

# (run, scales) measured: the audio codec and both EMG codecs (upsampled and native rate), and
# the two production codecs the later chapters load (causal, streamable).
PRODUCTION_RUNS = ("02_audio_codec/audio_codec", "04_emg_codec/emg_codec")
BENCH_RUNS = ("02_audio_codec/a_rvq_vae_1", "04_emg_codec/emg_rvq_vae",
              "04_emg_codec/emg_rvq_vae_native", *PRODUCTION_RUNS)


def _median_time(fn: Callable[[], None], reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _side_by_side(before: Callable[[], None], after: Callable[[], None], reps: int) -> dict:
    """Median seconds of ``before`` and ``after``, timed alternately so machine noise hits both
    alike: ``{"before_s", "after_s", "speedup"}``."""
    b_t, a_t = [], []
    for _ in range(reps):
        b_t.append(_median_time(before, 1, warmup=0))
        a_t.append(_median_time(after, 1, warmup=0))
    b_s, a_s = sorted(b_t)[reps // 2], sorted(a_t)[reps // 2]
    return {"before_s": b_s, "after_s": a_s, "speedup": b_s / a_s}


def _models(run: str, scale: str):
    from mlmlmlm.recipes.codec import build_codec, build_loss

    cfg = load_run_config(run, scale)
    return cfg, build_codec(cfg), build_loss(cfg)


def bench_codec_run(run: str, scale: str, batch: int | None = None, seconds: float | None = None,
                    reps: int = 3, timer: Callable[[Callable[[], None], int], float] | None = None
                    ) -> dict:
    """Training samples/s (generator step, no discriminator), encode and decode real-time factor.

    ``seconds`` of signal per item (default: the config's training segment), ``batch`` items.
    ``timer(fn, reps)`` returns the seconds one call of ``fn`` takes (default: the median of
    ``reps`` timed calls); the real-time factor is that time over the seconds of signal.
    """
    timer = timer or _median_time
    cfg, model, loss = _models(run, scale)
    sr = cfg.model.sample_rate
    seg = int(seconds * sr) if seconds else cfg.data.segment
    seg = max(cfg.model.hop, seg // cfg.model.hop * cfg.model.hop)
    b = batch or cfg.train.batch_size
    x = torch.randn(b, cfg.model.in_channels, seg) * 0.1
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    model.train()

    def step():
        out = model(x)
        terms = loss.generator(x, out, step=0)
        opt.zero_grad(set_to_none=True)
        terms["train"].backward()
        opt.step()

    t_train = timer(step, reps)
    model.eval()
    with torch.inference_mode():
        t_enc = timer(lambda: model.encode(x), reps)
        z = model.encode(x).z
        t_dec = timer(lambda: model.decode(z), reps)
    dur = b * seg / sr
    return {"run": run, "scale": scale, "params": model.num_params(), "hop": cfg.model.hop,
            "sample_rate": sr, "batch": b, "segment": seg,
            "train_samples_per_s": b * seg / t_train, "train_step_s": t_train,
            "encode_rtf": t_enc / dur, "decode_rtf": t_dec / dur,
            "encode_gflop_per_s_of_signal": _flops_per_second(model, cfg) / 1e9}


def _flops_per_second(model, cfg) -> float:
    """Multiply-accumulates x2 of the encoder's convolutions per second of input (analytic)."""
    total, rate = 0.0, float(cfg.model.sample_rate)
    x = torch.zeros(1, cfg.model.in_channels, cfg.model.hop * 4)
    hooks = []

    def hook(mod, inp, out):
        nonlocal total
        k = mod.kernel_size[0]
        total += 2.0 * out.shape[-1] * out.shape[1] * (inp[0].shape[1] // mod.groups) * k

    for m in model.encoder.modules():
        if isinstance(m, torch.nn.Conv1d):
            hooks.append(m.register_forward_hook(hook))
    with torch.inference_mode():
        model.encoder(x)
    for h in hooks:
        h.remove()
    return total / (x.shape[-1] / rate)


def bench_snake(channels: int = 128, length: int = 65536, reps: int = 7) -> dict:
    """Forward+backward of the fused Snake vs the plain elementwise Snake, interleaved."""
    from mlmlmlm.nn.layers import snake_fused, snake_plain

    x = torch.randn(4, channels, length, requires_grad=True)
    alpha = torch.rand(1, channels, 1, requires_grad=True) + 0.5
    beta = torch.rand(1, channels, 1, requires_grad=True) + 0.5

    def run(fn):
        def go():
            fn(x, alpha, beta).sum().backward()
        return go

    t = _side_by_side(run(snake_plain), run(snake_fused), reps)
    return {"shape": [4, channels, length], "plain_s": t["before_s"], "fused_s": t["after_s"],
            "fused_speedup": t["speedup"]}


@contextmanager
def _before_speedups(loss):
    """The code paths the CPU speed-ups replaced: kernel-1 convolutions through oneDNN and
    auraloss's A-weighting inside every STFT resolution."""
    from auraloss.freq import MultiResolutionSTFTLoss

    from mlmlmlm.nn.layers import PointwiseConv1d

    saved = loss.mrstft_audio, loss.a_weighting
    sizes = loss.cfg.fft_sizes
    if loss.a_weighting is not None:
        loss.mrstft_audio = MultiResolutionSTFTLoss(
            sizes, [n // 4 for n in sizes], sizes, sample_rate=loss.sample_rate,
            perceptual_weighting=True)
        loss.a_weighting = None
    PointwiseConv1d.batched_matmul = False
    try:
        yield
    finally:
        PointwiseConv1d.batched_matmul = True
        loss.mrstft_audio, loss.a_weighting = saved


def _as_before(loss, fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` run on the code paths the speed-ups replaced (:func:`_before_speedups`)."""
    def go():
        with _before_speedups(loss):
            fn()
    return go


def bench_speedups(channels: int = 8, length: int = 32768, batch: int = 4, reps: int = 7) -> dict:
    """Two CPU speed-ups of the codec step, each against what it replaced, interleaved in one run:
    kernel-1 convolutions as ``baddbmm`` (:class:`~mlmlmlm.nn.layers.PointwiseConv1d`) against
    ``nn.Conv1d``, and the A-weighted MRSTFT filtering once
    (:meth:`~mlmlmlm.losses.CodecLoss.mrstft_per_channel`) against auraloss filtering inside
    every resolution. Forward + backward, the cpu-scale audio shapes by default."""
    from mlmlmlm.losses import CodecLoss, LossConfig
    from mlmlmlm.nn.layers import PointwiseConv1d

    conv = PointwiseConv1d(channels, channels)
    x = torch.randn(batch, channels, length, requires_grad=True)
    loss = CodecLoss(LossConfig(), 44100.0, in_channels=1)
    target = torch.randn(batch, 1, length)
    recon = (target + 0.1 * torch.randn_like(target)).requires_grad_()

    def conv_step():
        conv(x).sum().backward()

    def loss_step():
        loss.mrstft_per_channel(recon, target)[0].backward()

    pairs = {"pointwise_conv": conv_step, "a_weighted_mrstft": loss_step}
    return {"shape": [batch, channels, length]} | {
        name: _side_by_side(_as_before(loss, fn), fn, reps) for name, fn in pairs.items()}


def bench_step_speedup(run: str = "02_audio_codec/a_rvq_vae_3", scale: str = "cpu",
                       reps: int = 5) -> dict:
    """One whole generator step (forward, loss, backward, Adam) of ``run`` before and after the
    speed-ups, same weights and batch, interleaved in one run."""
    cfg, model, loss = _models(run, scale)
    x = torch.randn(cfg.train.batch_size, cfg.model.in_channels, cfg.data.segment) * 0.1
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss.generator(x, model(x), 10**6)["train"].backward()
        opt.step()

    step()  # k-means initialisation of the codebooks happens here, outside the timings
    return {"run": run, "scale": scale} | _side_by_side(_as_before(loss, step), step, reps)


def bench_codec(scales: tuple[str, ...] = ("cpu", "paper")) -> dict:
    """Everything ``mlmlmlm bench codec --json`` prints."""
    torch.manual_seed(0)
    out = {"device": "cpu", "threads": torch.get_num_threads(), "cores": os.cpu_count(),
           "snake": bench_snake(), "speedups": bench_speedups(),
           "step_speedup": bench_step_speedup(), "runs": []}
    for scale in scales:
        for run in BENCH_RUNS:
            # paper scale on CPU: one short item, so the benchmark finishes in minutes
            kw = {"batch": 1, "seconds": 0.75, "reps": 1} if scale == "paper" else {}
            out["runs"].append(bench_codec_run(run, scale, **kw))
    # the production codecs chunk by chunk at the cpu scale: 1-frame chunks, as the live engine
    out["production_streaming"] = [production_stream(run) for run in PRODUCTION_RUNS]
    by = {(r["run"], r["scale"]): r for r in out["runs"]}
    for scale in scales:
        up = by.get(("04_emg_codec/emg_rvq_vae", scale))
        nat = by.get(("04_emg_codec/emg_rvq_vae_native", scale))
        if up and nat:  # same seconds of EMG through both codecs: how much cheaper is native?
            out[f"emg_native_saving_{scale}"] = {
                "encoder_flops_ratio": up["encode_gflop_per_s_of_signal"]
                / nat["encode_gflop_per_s_of_signal"],
                "train_time_ratio": (nat["train_samples_per_s"] / nat["sample_rate"])
                / (up["train_samples_per_s"] / up["sample_rate"]),
                "encode_time_ratio": up["encode_rtf"] / nat["encode_rtf"],
            }
    return out


def production_stream(run: str, scale: str = "cpu", chunk_frames: int = 1,
                      seconds: float = 10.0) -> dict:
    """Per-chunk streaming compute (encode + decode, p50/p99/max ms), real-time factor and
    latency of a production codec (:func:`mlmlmlm.bench_stream.bench_stream`)."""
    from mlmlmlm.bench_stream import bench_stream as stream_codec

    cfg = load_run_config(run, scale).model
    out = stream_codec(cfg, chunk_frames=chunk_frames, seconds=seconds)
    return {"run": run, "scale": scale} | {k: v for k, v in out.items() if k != "config"}


def bench_stream(run: str | None = None, seconds: float = 62.0, real_time_s: float | None = None,
                 playout_ms: float = 40.0, compile: bool = False,
                 interleaved: bool = False) -> dict:
    """Everything ``mlmlmlm bench stream --json`` prints: the live engine's per-frame compute,
    latency budget, end-to-end latency through the Bela emulator and pybela, and underruns
    (:func:`mlmlmlm.live.latency.bench_stream`; introduced in 06_live_demo)."""
    from mlmlmlm.live.latency import bench_stream as bench_live

    return bench_live(run, seconds=seconds, real_time_s=real_time_s, playout_ms=playout_ms,
                      compile=compile, interleaved=interleaved)


def bench_transformer_run(scale: str = "cpu", layout: str = "flat", seconds: float = 60.0,
                          context_s: float = 6.0, reps: int = 3, device: str = "cpu",
                          compile: bool = False, dtype: str = "float32") -> dict:
    """Generation speed of the translation Transformer (``05_transformer/te2`` at ``scale``,
    random weights) with ``layout``, at the codecs' frame rate of that scale.

    * uncached: one teacher-forced forward over a ``context_s`` context, what a generator without
      caches pays for each new token (flat) or frame (frame layout);
    * cached: ``seconds`` of generation through the KV caches with a ``context_s`` sliding
      window (the streaming translator's default), EMG appended frame by frame as it would
      arrive; the median per-frame time over the half second before ``context_s`` and over the
      last half second (at ``seconds``): with the window these stay the same.

    Times per frame (``step_ms_*``: every level of one frame) and per token (``token_ms_*``:
    one code of one level); tokens/s count codes. ``compile``: the cached steps through ring
    caches and :meth:`~mlmlmlm.models.generation.Generation.compile_generation` (the first
    steps compile; the medians are taken long after them). ``dtype``: the model's weights and
    caches (``"bfloat16"`` halves the bytes a step reads; the logits are sampled in float32).
    """
    from mlmlmlm.models.transformer import TranslationTransformer

    cfg = load_run_config("05_transformer/te2", scale, overrides={"model.layout": layout})
    rate = load_run_config("02_audio_codec/audio_codec", scale).model.frame_rate
    torch.manual_seed(0)
    dev = torch.device(device)
    model = TranslationTransformer(cfg.model).to(dev, getattr(torch, dtype)).eval()
    m, n_q = cfg.model, cfg.model.n_q
    ctx, total = max(2, round(context_s * rate)), max(2, round(seconds * rate))
    g = torch.Generator(device=dev).manual_seed(0)
    audio = torch.randint(0, m.codebook_size, (1, n_q, ctx), device=dev, generator=g)
    emg = torch.randint(0, m.emg_codebook_size, (1, m.emg_n_q, total + 1), device=dev,
                        generator=g)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def forward():
        model(audio, emg[:, :, :ctx])
        sync()

    with torch.inference_mode():
        t_fwd = _median_time(forward, reps)
        if compile:
            model.compile_generation(True)
        cache = model.new_cache(1, max_cache_frames=ctx, ring=compile)
        model.append_emg(cache, emg[:, :, :1])
        model.prime(cache, audio[:, :, :1])
        times = []
        for t in range(1, total + 1):  # frame t needs EMG frames <= t
            t0 = time.perf_counter()
            model.append_emg(cache, emg[:, :, t:t + 1])
            model.step(cache, generator=g)
            sync()
            times.append(time.perf_counter() - t0)
    k = max(5, round(0.5 * rate))

    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    at_ctx, at_end = median(times[max(0, ctx - k):ctx]), median(times[-k:])
    per_forward = 1 if layout == "flat" else n_q  # codes an uncached forward yields
    return {"scale": scale, "layout": layout, "compiled": compile, "dtype": dtype,
            "device": dev.type,
            "params": model.num_params(),
            "frame_rate": rate, "context_frames": ctx, "generated_frames": total,
            "uncached_forward_ms": 1e3 * t_fwd, "uncached_tokens_per_s": per_forward / t_fwd,
            "cached_tokens_per_s": n_q / at_ctx,
            "cached_speedup": (n_q / at_ctx) / (per_forward / t_fwd),
            f"step_ms_{context_s:g}s": 1e3 * at_ctx, f"step_ms_{seconds:g}s": 1e3 * at_end,
            f"token_ms_{context_s:g}s": 1e3 * at_ctx / n_q,
            f"token_ms_{seconds:g}s": 1e3 * at_end / n_q,
            "step_ratio_end_to_context": at_end / at_ctx,
            "generation_rtf": at_ctx * rate, "cache": cache.size()}


def streaming_loop(scale: str = "cpu", layout: str = "frame", seconds: float = 10.0,
                   compile: bool = False, chunk: int | None = None) -> dict:
    """The whole streaming loop of ``05_transformer/te2`` with ``layout`` at ``scale`` (random
    weights, the production codecs' configs: :func:`mlmlmlm.live.latency.random_translator`,
    ``compile``d or eager), EMG pushed ``chunk`` samples (default one EMG hop) at a time (EMG
    encode, generation, audio decode), one torch thread:
    :func:`mlmlmlm.live.latency.compute_per_frame`'s real-time factor and per-frame ms."""
    from mlmlmlm.live.latency import compute_per_frame, random_translator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            tr = random_translator(scale=scale, layout=layout, compile=compile)
            out = compute_per_frame(tr, seconds, chunk)
    finally:
        torch.set_num_threads(threads)
    return {"scale": scale, "layout": layout, "seconds": seconds, "compiled": compile} | out


def bench_transformer(scales: tuple[str, ...] = ("cpu", "paper"),
                      layouts: tuple[str, ...] = ("flat", "frame"), seconds: float = 60.0,
                      context_s: float = 6.0, device: str = "cpu", compile: bool = False) -> dict:
    """Everything ``mlmlmlm bench transformer --json`` prints (introduced in 05_transformer):
    generation speed per scale and layout, and the cpu scale's whole streaming loop (with
    ``compile``, the frame layout's compiled loop too, a hop and a Bela buffer at a time, and
    the compiled steps again with bfloat16 weights)."""
    loops = [streaming_loop("cpu", lay) for lay in layouts]
    if compile:
        loops += [streaming_loop("cpu", "frame", compile=True, chunk=c) for c in (None, 128)]
        loops.append(streaming_loop("cpu", "frame", chunk=128))  # the eager one, same chunks
        loops.append(streaming_loop("cpu", "flat", compile=True))
    return {"device": device, "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "seconds": seconds, "context_s": context_s,
            "runs": [bench_transformer_run(s, lay, seconds, context_s, device=device, compile=c,
                                           dtype=dt)
                     for c, dt in ([(False, "float32"), (True, "float32"), (True, "bfloat16")]
                                   if compile else [(False, "float32")])
                     for s in scales for lay in layouts],
            "streaming": loops}
