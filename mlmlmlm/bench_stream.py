"""Streaming benchmark of a causal codec, printed as JSON: per-chunk compute p50/p99/max of
encode (samples -> codes) and decode (codes -> samples), the real-time factor, and the
algorithmic latency.

Introduced in notebook 02_audio_codec (causal codecs); run ``python -m mlmlmlm.bench_stream``.
Numbers are for the machine they ran on (say how many cores it had and how busy it was).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict

import torch
from torch.nn.utils import parametrize

from mlmlmlm.models.codec import Codec, CodecConfig

# The cpu-scale starting point of issue 8 (22.05 kHz, hop 256, 16 channels, RVQ 4 x 1024), causal.
CPU_STREAM = CodecConfig(
    sample_rate=22050.0,
    channels=16,
    c_mults=[1, 2, 4, 8],
    strides=[2, 4, 4, 8],
    latent_dim=64,
    n_q=4,
    codebook_size=1024,
    causal=True,
)


def _stats_ms(times: list[float]) -> dict:
    t = sorted(times)

    def q(p: float) -> float:
        return 1000.0 * t[min(len(t) - 1, round(p * (len(t) - 1)))]

    return {"p50": q(0.50), "p99": q(0.99), "max": 1000.0 * t[-1]}


def bench_stream(
    cfg: CodecConfig = CPU_STREAM,
    chunk_frames: int = 1,
    seconds: float = 20.0,
    warmup_chunks: int = 50,
    threads: int | None = 1,
    seed: int = 0,
) -> dict:
    """Stream ``seconds`` of noise through a causal codec in chunks of ``chunk_frames`` frames.

    Each chunk is timed twice over: ``encode_stream`` (chunk -> codes) and
    ``decode_codes_stream`` (codes -> chunk). Weight norm is evaluated once for the whole stream
    (``parametrize.cached``), as a live engine would. The codebooks are k-means-initialised on
    one noise batch so the lookups have a trained codec's cost; the weights are untrained (the
    compute does not depend on them). One thread by default: a 256-sample chunk is too small for
    intra-op parallelism, and a second thread on a busy 2-core machine turns into p99 spikes.

    Returns
    -------
    dict
        ``encode_ms`` / ``decode_ms`` / ``chunk_ms`` (encode + decode) as ``{p50, p99, max}``,
        ``rtf`` (compute over the chunk's duration, at p50 and p99), and ``latency``: the
        algorithmic latency (one hop) and that plus p99 compute.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = Codec(cfg)
    hop, sr = cfg.hop, cfg.sample_rate
    # k-means init of the codebooks on 1024 frames (fewer than codebook_size would duplicate)
    model(0.1 * torch.randn(8, cfg.in_channels, 128 * hop))
    model.eval()
    n = chunk_frames * hop
    n_chunks = warmup_chunks + max(1, round(seconds * sr / n))
    x = 0.1 * torch.randn(1, cfg.in_channels, n_chunks * n)
    enc_t, dec_t = [], []
    with torch.inference_mode(), parametrize.cached():
        model.reset_stream()
        for i in range(n_chunks):
            chunk = x[..., i * n : (i + 1) * n]
            t0 = time.perf_counter()
            codes = model.encode_stream(chunk).codes  # [1, n_q, chunk_frames]
            t1 = time.perf_counter()
            y = model.decode_codes_stream(codes)  # [1, C, n]
            t2 = time.perf_counter()
            assert y.shape[-1] == n
            if i >= warmup_chunks:
                enc_t.append(t1 - t0)
                dec_t.append(t2 - t1)
    total = [a + b for a, b in zip(enc_t, dec_t)]
    chunk_s = n / sr
    both = _stats_ms(total)
    return {
        "config": asdict(cfg),
        "params": model.num_params(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "chunk_frames": chunk_frames,
        "chunk_samples": n,
        "chunk_duration_ms": 1000.0 * chunk_s,
        "chunks_timed": len(total),
        "encode_ms": _stats_ms(enc_t),
        "decode_ms": _stats_ms(dec_t),
        "chunk_ms": both,
        "rtf": {"p50": both["p50"] / (1000.0 * chunk_s), "p99": both["p99"] / (1000.0 * chunk_s)},
        "latency": {
            "algorithmic_samples": model.latency_samples,
            "algorithmic_ms": model.latency_ms,
            "with_p99_compute_ms": model.latency_ms + both["p99"],
        },
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunk-frames", type=int, default=1)
    p.add_argument("--seconds", type=float, default=20.0, help="streamed signal length")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    threads = args.threads or None
    out = bench_stream(chunk_frames=args.chunk_frames, seconds=args.seconds, threads=threads)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
