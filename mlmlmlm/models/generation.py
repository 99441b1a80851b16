"""Cached incremental generation of the translation Transformer: a KV cache for the audio
self-attention, EMG cross-attention keys/values appended once as EMG frames arrive, a sliding
window over both, classifier-free guidance and sampling, one frame per ``step``.

``TranslationTransformer`` (:mod:`mlmlmlm.models.transformer`) inherits these methods; they use
its trunk (``_feed`` runs new positions through ``_trunk`` with the cache's buffers), so a cached
step equals the teacher-forced forward (tested). Introduced in notebook 05_transformer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mlmlmlm.models.transformer_io import GenerationCache, StepOutput, flat_tokens, sample_logits
from mlmlmlm.nn.attention import KVBuffer, may_attend


class CachedGeneration:
    """Mixin of :class:`~mlmlmlm.models.transformer.TranslationTransformer`: generation through
    caches. Needs the model's ``cfg``, ``blocks``, ``head``/``depth`` and its ``_embed_*``,
    ``_trunk``, ``_rope``, ``_query_frames``, ``_self_window`` and ``_check``."""

    def new_cache(self, batch_size: int = 1, guided: bool = False,
                  max_cache_frames: int | None = None) -> GenerationCache:
        """An empty cache. ``guided`` carries the EMG-dropped path so ``step`` can take a guidance
        weight other than 1. ``max_cache_frames`` W bounds memory: each position then attends
        to the last W frames of audio (flat: W * n_q tokens, itself included) and to the EMG
        frames (t + lookahead - W, t + lookahead]; older entries are forgotten. This equals
        ``forward(..., window=W)`` (sliding-window attention), not a forward over the last W
        frames alone: deeper layers still carry what entered before the window."""
        if max_cache_frames is not None and max_cache_frames < 1:
            raise ValueError("max_cache_frames must be >= 1 or None")
        n, b = self.cfg.n_layers, int(self.cfg.bos)
        cache = GenerationCache(batch_size, guided, max_cache_frames,
                                [KVBuffer() for _ in range(n)], [KVBuffer() for _ in range(n)],
                                n_fed=-b, bos_pending=bool(b))
        for buffer in cache.self_kv:  # self-attention positions start at the start token's -1
            buffer.start = -b
        return cache

    def frames_ready(self, cache: GenerationCache) -> int:
        """How many more frames ``step`` can produce with the EMG appended so far."""
        return max(cache.n_emg - self.cfg.lookahead - cache.n_frames, 0)

    @torch.inference_mode()
    def append_emg(self, cache: GenerationCache, emg_codes: Tensor) -> None:
        """Append EMG frames [B, emg_n_q, n] as they arrive: their cross K/V are computed once,
        here, for every layer, and never again."""
        self._check(emg_codes, self.cfg.emg_n_q, self.cfg.emg_codebook_size, "EMG")
        if emg_codes.shape[0] != cache.batch_size:
            raise ValueError(f"EMG batch {emg_codes.shape[0]} != cache batch {cache.batch_size}")
        emg, cache.emg_past = self._emg_context(self._embed_emg(emg_codes), cache.emg_past)
        pos = torch.arange(cache.n_emg, cache.n_emg + emg.shape[1], device=emg.device)
        rope = self._rope(pos, emg.dtype)
        for block, buffer in zip(self.blocks, cache.emg_kv):
            buffer.append(*block.emg_kv(emg, rope))
        cache.n_emg += emg.shape[1]
        self._forget(cache)

    def _forget(self, cache: GenerationCache) -> None:
        """Sliding window: drop what no later position may attend to."""
        W = cache.max_cache_frames
        if W is None:
            return
        for buffer in cache.self_kv:  # the next position n_fed sees (n_fed - W', n_fed]
            buffer.drop_before(cache.n_fed - self._self_window(W) + 1)
        newest = self._query_frames(cache.n_fed) + self.cfg.lookahead
        for buffer in cache.emg_kv:  # ... and EMG frames (newest - W, newest]
            buffer.drop_before(newest - W + 1)

    def _feed(self, cache: GenerationCache, inp: Tensor) -> Tensor:
        """Run L new audio positions (flat tokens [rows, L] or frame codes [rows, n_q, L], and
        first the start token while it is pending) through the cached trunk; return the last
        position's hidden state [rows, d]."""
        cfg, W = self.cfg, cache.max_cache_frames
        bos, cache.bos_pending = cache.bos_pending, False
        L = inp.shape[-1] + int(bos)
        pos = torch.arange(cache.n_fed, cache.n_fed + L, device=inp.device)
        frames = self._query_frames(pos)  # [L]
        oldest, newest = int(frames[0]) + cfg.lookahead, int(frames[-1]) + cfg.lookahead
        if cache.n_emg <= newest:
            raise ValueError(f"predicting frame {newest - cfg.lookahead} needs EMG frames through "
                             f"{newest}; {cache.n_emg} appended (see frames_ready)")
        spans = [buf.span(0 if W is None else oldest - W + 1, newest + 1) for buf in cache.emg_kv]
        mask = cross = None  # one position: the buffers hold exactly what it may see
        if L > 1:
            keys = torch.arange(cache.self_kv[0].start, cache.n_fed + L, device=inp.device)
            mask = may_attend(pos, keys, 0, self._self_window(W))  # [L, S]
            first, n = spans[0][2], spans[0][0].shape[2]
            emg_pos = torch.arange(first, first + n, device=inp.device)
            cross = may_attend(frames, emg_pos, cfg.lookahead, W)  # [L, n]
        x = self._embed_audio(inp, pos, bos=bos)  # [rows, L, d]
        h = self._trunk(x, pos, mask, cross, [(k, v) for k, v, _ in spans], cache.self_kv)
        cache.n_fed += L
        self._forget(cache)
        return h[:, -1]

    @torch.inference_mode()
    def prime(self, cache: GenerationCache, prompt_codes: Tensor) -> None:
        """Start from an audio prompt [B, n_q, P] (start tokens, P >= 1 frames).

        Every prompt token is fed exactly once: all but the last here, the last by the first
        ``step``, because the position it occupies predicts frame P and so needs EMG through
        P + lookahead; here EMG through P - 1 + lookahead must already be appended. (The prior
        public implementation fed the last prompt token twice.)
        """
        cfg = self.cfg
        self._check(prompt_codes, cfg.n_q, cfg.codebook_size, "prompt")
        if cache.n_frames or cache.pending is not None:
            raise ValueError("prime needs a fresh cache")
        if prompt_codes.shape[0] != cache.batch_size or prompt_codes.shape[2] < 1:
            raise ValueError(f"prompt must be [{cache.batch_size}, {cfg.n_q}, P >= 1]")
        rows = torch.cat([prompt_codes, prompt_codes]) if cache.guided else prompt_codes
        inp = flat_tokens(rows, cfg.codebook_size) if cfg.layout == "flat" else rows
        if inp.shape[-1] > 1 or cache.bos_pending:
            self._feed(cache, inp[..., :-1])  # the start token first, when the model has one
        cache.pending = inp[..., -1:]  # [rows, 1] or [rows, n_q, 1]
        cache.n_frames = prompt_codes.shape[2]

    def start(self, cache: GenerationCache) -> None:
        """Start without a prompt (``bos`` models only): the first ``step`` feeds the start token
        and draws frame 0, which needs EMG through frame ``lookahead``."""
        if not self.cfg.bos:
            raise ValueError("starting without a prompt needs a model trained with bos=True")
        if cache.n_frames or cache.pending is not None or not cache.bos_pending:
            raise ValueError("start needs a fresh cache")
        rows = cache.batch_size * (2 if cache.guided else 1)
        shape = (rows, 0) if self.cfg.layout == "flat" else (rows, self.cfg.n_q, 0)
        cache.pending = torch.zeros(shape, dtype=torch.long, device=self.audio_emb.weight.device)

    def _guide(self, logits: Tensor, B: int, guidance: float) -> Tensor:
        """Rows [cond; uncond] [2B, K] -> uncond + w (cond - uncond) [B, K]; w = 1 is cond."""
        if guidance == 1 or logits.shape[0] == B:
            return logits[:B]
        cond, uncond = logits[:B], logits[B:]
        return uncond + guidance * (cond - uncond)

    @torch.inference_mode()
    def step(self, cache: GenerationCache, codes: Tensor | None = None, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, guidance: float = 1.0,
             generator: torch.Generator | None = None) -> StepOutput:
        """Produce the next frame (both layouts: every level of it) and feed it to the cache.

        ``codes`` [B, n_q]: use these instead of sampling (teacher forcing through the cache).
        ``guidance`` w: logits uncond + w (cond - uncond); needs a ``guided`` cache unless w = 1;
        w = 0 is the EMG-dropped model alone. Sampling: ``sample_logits``, per level.
        """
        cfg, B = self.cfg, cache.batch_size
        if cache.pending is None:
            raise ValueError("prime the cache with a prompt before step")
        if guidance != 1 and not cache.guided:
            raise ValueError("a guidance weight other than 1 needs new_cache(guided=True)")
        if codes is not None and tuple(codes.shape) != (B, cfg.n_q):
            raise ValueError(f"codes must be [{B}, {cfg.n_q}], got {list(codes.shape)}")
        copies = 2 if cache.guided else 1
        K, levels, logits = cfg.codebook_size, [], []

        def pick(lg: Tensor, q: int) -> Tensor:  # [rows, K] -> chosen codes [B]
            lg = self._guide(lg, B, guidance)
            logits.append(lg)
            c = codes[:, q] if codes is not None else sample_logits(
                lg, temperature, top_k, top_p, generator)
            levels.append(c)
            return c.repeat(copies)  # [rows]: both paths are fed the same code

        if cfg.layout == "flat":
            for q in range(cfg.n_q):
                h = self._feed(cache, cache.pending)  # [rows, d], predicts level q
                c = pick(h @ self.head.weight[q * K:(q + 1) * K].T, q)  # [rows, K] logits
                cache.pending = (c + q * K)[:, None]  # [rows, 1] flat token
        else:
            h = self._feed(cache, cache.pending)  # [rows, d], predicts the whole frame
            cache.pending = self.depth.sample(h, pick)[:, :, None]  # [rows, n_q, 1]
        cache.n_frames += 1
        return StepOutput(codes=torch.stack(levels, 1), logits=torch.stack(logits, 1),
                          frame=cache.n_frames - 1)

    @torch.inference_mode()
    def generate(self, prompt_codes: Tensor | None, emg_codes: Tensor, n_frames: int,
                 max_cache_frames: int | None = None, guidance: float = 1.0,
                 **sampling) -> Tensor:
        """Offline convenience: prompt [B, n_q, P] + EMG [B, emg_n_q, >= P + n_frames + lookahead]
        -> codes [B, n_q, P + n_frames]; prompt None (``bos`` models): [B, n_q, n_frames] from
        EMG alone. ``sampling``: temperature, top_k, top_p, generator."""
        B = emg_codes.shape[0] if prompt_codes is None else prompt_codes.shape[0]
        cache = self.new_cache(B, guidance != 1, max_cache_frames)
        self.append_emg(cache, emg_codes)
        if prompt_codes is None:
            self.start(cache)
        else:
            self.prime(cache, prompt_codes)
        frames = [self.step(cache, guidance=guidance, **sampling).codes for _ in range(n_frames)]
        known = [] if prompt_codes is None else [prompt_codes]
        return torch.cat([*known, *[f[:, :, None] for f in frames]], dim=2)
