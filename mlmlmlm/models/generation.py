"""Cached incremental generation of the translation Transformer: a KV cache for the audio
self-attention, EMG cross-attention keys/values appended once as EMG frames arrive, a sliding
window over both, classifier-free guidance and sampling, one frame per ``step``.

``TranslationTransformer`` (:mod:`mlmlmlm.models.transformer`) inherits these methods. A prompt's
positions go through its trunk (``_feed`` -> ``_trunk`` with the cache's buffers); a step's one
position goes through :meth:`~mlmlmlm.nn.attention.Block.one` (``_feed_one``), over growing
buffers or fixed rings, eager or compiled (:meth:`CachedGeneration.compile_generation`); every
path equals the teacher-forced forward (tested). Introduced in notebook 05_transformer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mlmlmlm.models.transformer_io import GenerationCache, StepOutput, flat_tokens, sample_uniform
from mlmlmlm.nn.attention import may_attend
from mlmlmlm.nn.compile import compile_frozen
from mlmlmlm.nn.kv_buffer import KVBuffer, write_ring

RING_SLACK = 16  # ring caches: entries beyond the window (EMG ahead, a prompt piece)


class CachedGeneration:
    """Mixin of :class:`~mlmlmlm.models.transformer.TranslationTransformer`: generation through
    caches. Needs the model's ``cfg``, ``blocks``, ``head``/``depth`` and its ``_embed_*``,
    ``_trunk``, ``_rope``, ``_query_frames``, ``_self_window`` and ``_check``."""

    def new_cache(self, batch_size: int = 1, guided: bool = False,
                  max_cache_frames: int | None = None, ring: bool = False) -> GenerationCache:
        """An empty cache. ``guided`` carries the EMG-dropped path so ``step`` can take a guidance
        weight other than 1. ``max_cache_frames`` W bounds memory: each position then attends
        to the last W frames of audio (flat: W * n_q tokens, itself included) and to the EMG
        frames (t + lookahead - W, t + lookahead]; older entries are forgotten. This equals
        ``forward(..., window=W)`` (sliding-window attention), not a forward over the last W
        frames alone: deeper layers still carry what entered before the window.

        ``ring``: fixed ring buffers (:class:`~mlmlmlm.nn.kv_buffer.KVBuffer` with a capacity)
        of the window plus ``RING_SLACK`` entries, so every step has the same tensor shapes (a
        compiled step, :meth:`compile_generation`, needs this); EMG may then run at most
        ``RING_SLACK`` frames ahead of generation. Needs ``max_cache_frames``."""
        if max_cache_frames is not None and max_cache_frames < 1:
            raise ValueError("max_cache_frames must be >= 1 or None")
        if ring and max_cache_frames is None:
            raise ValueError("a ring cache needs max_cache_frames")
        n, b, W = self.cfg.n_layers, int(self.cfg.bos), max_cache_frames
        self_cap = emg_cap = None
        if ring:  # prime feeds a prompt in pieces of RING_SLACK positions
            self_cap, emg_cap = self._self_window(W) + RING_SLACK, W + RING_SLACK + self.cfg.lookahead
        cache = GenerationCache(batch_size, guided, max_cache_frames,
                                [KVBuffer(self_cap) for _ in range(n)],
                                [KVBuffer(emg_cap) for _ in range(n)],
                                n_fed=-b, bos_pending=bool(b))
        for buffer in cache.self_kv:  # self-attention positions start at the start token's -1
            buffer.start = -b
        if ring:
            w = self.audio_emb.weight
            rows, H, hd = batch_size * (2 if guided else 1), self.cfg.n_heads, self.cfg.head_dim
            for buffer in cache.self_kv:
                buffer.reserve(rows, H, hd, w.dtype, w.device)
            for buffer in cache.emg_kv:
                buffer.reserve(batch_size, H, hd, w.dtype, w.device)
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
        n = emg_codes.shape[2]
        pos = torch.arange(cache.n_emg, cache.n_emg + n, device=emg_codes.device)
        # one frame (a stream's usual push) through the compiled graph, written into the rings
        # there; pieces of other lengths (a prompt's EMG, a burst) eager and appended: a graph
        # per length would compile each
        if n == 1 and cache.emg_kv[0].ring_capacity:
            rings = [b.ring() for b in cache.emg_kv]
            for b in cache.emg_kv:
                b.claim(1)
            _, cache.emg_past = self._compiled_or("emg", cache)(
                emg_codes, cache.emg_past, pos, rings, pos % cache.emg_kv[0].ring_capacity)
        else:
            kv, cache.emg_past = self._emg_kv(emg_codes, cache.emg_past, pos)
            for (k, v), buffer in zip(kv, cache.emg_kv):
                buffer.append(k, v)
        cache.n_emg += n
        self._forget(cache)

    def _emg_kv(self, emg_codes: Tensor, past: Tensor | None, pos: Tensor,
                rings: list[tuple[Tensor, Tensor, Tensor]] | None = None,
                slots: Tensor | None = None
                ) -> tuple[list[tuple[Tensor, Tensor]], Tensor | None]:
        """EMG codes [B, emg_n_q, n] at positions ``pos`` [n], after the context ``past``
        (see ``_emg_context``) -> every layer's cross k, v [B, H, n, hd] and the new past.
        ``rings``, ``slots`` [n]: each layer's ring (k, v, positions) and where these frames go;
        they are written there in place (the compiled one-frame call)."""
        emg, past = self._emg_context(self._embed_emg(emg_codes), past)
        rope = self._rope(pos, emg.dtype)
        kv = [block.emg_kv(emg, rope) for block in self.blocks]
        for (k, v), ring in zip(kv, rings or []):
            write_ring(ring, slots, k, v, pos)
        return kv, past

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
        if inp.shape[-1] > 1 or cache.bos_pending:  # the start token first, if the model has one
            for i in range(0, max(inp.shape[-1] - 1, 1), RING_SLACK):  # a ring's slack at a time
                self._feed(cache, inp[..., i:min(i + RING_SLACK, inp.shape[-1] - 1)])
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
        w = 0 is the EMG-dropped model alone. Sampling: ``sample_uniform`` per level, with n_q x B
        uniforms drawn from ``generator`` at the start of the step (level-major).
        """
        cfg, B = self.cfg, cache.batch_size
        if cache.pending is None:
            raise ValueError("prime the cache with a prompt before step")
        if guidance != 1 and not cache.guided:
            raise ValueError("a guidance weight other than 1 needs new_cache(guided=True)")
        if codes is not None and tuple(codes.shape) != (B, cfg.n_q):
            raise ValueError(f"codes must be [{B}, {cfg.n_q}], got {list(codes.shape)}")
        dev = cache.pending.device
        u = torch.rand(cfg.n_q, B, generator=generator, device=dev) if codes is None else None
        sampling = (temperature, top_k, top_p, float(guidance), B)
        if cfg.layout == "flat":  # a trunk position per level, each with its head in its call
            K, levels, logits = cfg.codebook_size, [], []
            for q in range(cfg.n_q):
                _, c, lg = self._feed_one(cache, cache.pending, (q, u, codes, *sampling))
                levels.append(c[:B])
                logits.append(lg)
                cache.pending = (c + q * K)[:, None]  # [rows, 1]
            out, lg = torch.stack(levels, 1), torch.stack(logits, 1)
        else:  # the trunk's position and the depth head in one call (one graph, compiled)
            h, out, lg = self._feed_one(cache, cache.pending, (u, codes, *sampling))
            cache.pending = out.repeat(h.shape[0] // B, 1)[:, :, None]  # [rows, n_q, 1]
        cache.n_frames += 1
        return StepOutput(codes=out, logits=lg, frame=cache.n_frames - 1)

    def _feed_one(self, cache: GenerationCache, inp: Tensor, head: tuple):
        """The step's path: one new audio position (flat token [rows, 1], frame codes
        [rows, n_q, 1], or the start token while it is pending) through the trunk with
        :meth:`~mlmlmlm.nn.attention.Block.one` and the layout's head in the same call
        (:meth:`_trunk_and_head`; ``head``: the arguments of :meth:`_frame_head` or
        :meth:`_flat_head` after the hidden state), its keys/values stored afterwards. A ring
        cache passes whole rings and position masks (the same shapes every step); growing
        buffers pass exactly the visible spans. Returns (h [rows, d], codes, logits): frame
        [B, n_q], [B, n_q, K]; flat [rows], [B, K]."""
        cfg, W = self.cfg, cache.max_cache_frames
        pos = cache.n_fed
        newest = self._query_frames(pos) + cfg.lookahead
        if cache.n_emg <= newest:
            raise ValueError(f"predicting frame {newest - cfg.lookahead} needs EMG frames through "
                             f"{newest}; {cache.n_emg} appended (see frames_ready)")
        p = torch.tensor([pos], device=inp.device)
        if cache.bos_pending:  # the start token, at position -1
            cache.bos_pending = False
            x = self.bos.expand(inp.shape[0], -1)
        else:
            x = self._embed_audio(inp, p)[:, 0]  # [rows, d]
        slot = None
        if cache.self_kv[0].ring_capacity:
            selfs = [b.ring() for b in cache.self_kv]  # (k, v, positions): written in the graph
            emgs = [b.ring()[:2] for b in cache.emg_kv]
            s_pos, e_pos = selfs[0][2], cache.emg_kv[0].ring()[2]  # every layer: the same slots
            s_mask = s_pos > pos - self._self_window(W)  # [C]: the window's older positions
            e_mask = (e_pos > newest - W) & (e_pos <= newest)  # [C_e]: EMG may run ahead
            # this position's slot (it holds pos - C, outside the window: masked above)
            slot = p % cache.self_kv[0].ring_capacity
            for b in cache.self_kv:
                b.claim(1)
        else:
            none = x.new_zeros(x.shape[0], cfg.n_heads, 0, cfg.head_dim)  # before any position
            selfs = [b.span(b.start, b.end)[:2] if len(b) else (none, none) for b in cache.self_kv]
            emgs = [b.span(0 if W is None else newest - W + 1, newest + 1)[:2]
                    for b in cache.emg_kv]
            s_mask = e_mask = None
        h, new, *chosen = self._compiled_or("step", cache)(x, p, selfs, s_mask, emgs, e_mask,
                                                           slot, *head)
        if slot is None:  # growing buffers (a ring's entries were written in the graph)
            for buffer, (k, v) in zip(cache.self_kv, new):
                buffer.append(k[:, :, None], v[:, :, None])
        cache.n_fed += 1
        self._forget(cache)
        return (h, *chosen)

    def _trunk_and_head(self, x: Tensor, p: Tensor, selfs: list[tuple[Tensor, ...]],
                        s_mask: Tensor | None, emgs: list[tuple[Tensor, Tensor]],
                        e_mask: Tensor | None, slot: Tensor | None, *head) -> tuple:
        """A step's position with its head: :meth:`_trunk_one`, then the layout's head on its
        hidden state (``head``: that method's arguments after it; :meth:`_frame_head` or
        :meth:`_flat_head`) -> h [rows, d], the new k, v, and the head's codes and logits: one
        compiled graph, not two (each call of a compiled graph costs its own entry, tens of
        microseconds, and an eager head its own kernels: at the paper scale the flat head's
        product over 2048 codes is a sixth of the step)."""
        h, new = self._trunk_one(x, p, selfs, s_mask, emgs, e_mask, slot)
        head_fn = self._frame_head if self.cfg.layout == "frame" else self._flat_head
        return (h, new, *head_fn(h, *head))

    def _trunk_one(self, x: Tensor, p: Tensor, selfs: list[tuple[Tensor, ...]],
                   s_mask: Tensor | None, emgs: list[tuple[Tensor, Tensor]],
                   e_mask: Tensor | None, slot: Tensor | None = None
                   ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """x [rows, d] at position ``p`` [1] through every block (one position); per layer the
        cached self k, v [rows, H, S, hd] and EMG k, v [B, H, n, hd] with their masks [S], [n]
        (None: all visible) -> hidden state [rows, d] and each layer's new k, v [rows, H, hd].
        ``slot`` [1] (ring caches): ``selfs`` are each ring's (k, v, positions [S]), and this
        position's k, v and ``p`` are written into that slot here, in place (in the compiled
        graph: no Python per layer). The rotary tables are made here too."""
        rope, cross_rope = self._rope(p, x.dtype), self._rope(self._query_frames(p), x.dtype)
        new = []
        for block, ring, (ek, ev) in zip(self.blocks, selfs, emgs):
            k, v = ring[0], ring[1]
            x, k_new, v_new = block.one(x, rope, k, v, s_mask, (cross_rope, ek, ev, e_mask))
            if slot is not None:  # after the attention read it (the slot is masked there)
                write_ring(ring, slot, k_new[:, :, None], v_new[:, :, None], p)
            new.append((k_new, v_new))
        return self.norm_out(x), new

    def _frame_head(self, h: Tensor, u: Tensor | None, codes: Tensor | None, temperature: float,
                    top_k: int | None, top_p: float | None, guidance: float, B: int
                    ) -> tuple[Tensor, Tensor]:
        """The frame layout's depth head, guidance and sampling for one frame: hidden state
        [rows, d], uniforms [n_q, B] (or the given ``codes`` [B, n_q]) -> codes [B, n_q] and
        the guided logits [B, n_q, K]."""
        logits: list[Tensor] = []
        out = self.depth.sample(h, lambda lg, q: self._choose(
            lg, q, logits, u, codes, temperature, top_k, top_p, guidance, B))  # [rows, n_q]
        return out[:B], torch.stack(logits, 1)

    def _flat_head(self, h: Tensor, q: int, u: Tensor | None, codes: Tensor | None,
                   temperature: float, top_k: int | None, top_p: float | None, guidance: float,
                   B: int) -> tuple[Tensor, Tensor]:
        """The flat layout's head for level ``q``: hidden state [rows, d] -> logits over that
        level's K codes only (the head's rows of its range), guided and sampled as in
        :meth:`_choose` -> the code for every row [rows] and the guided logits [B, K]. (A
        compiled step holds one graph per level: ``q`` is a constant in it.)"""
        K, logits = self.cfg.codebook_size, []
        c = self._choose(h @ self.head.weight[q * K:(q + 1) * K].T, q, logits, u, codes,
                         temperature, top_k, top_p, guidance, B)
        return c, logits[0]

    def _choose(self, lg: Tensor, q: int, logits: list[Tensor], u: Tensor | None,
                codes: Tensor | None, temperature: float, top_k: int | None,
                top_p: float | None, guidance: float, B: int) -> Tensor:
        """Level q's code from its logits [rows, K] (in float32: a cumulative sum over K codes in
        bfloat16 would lose the tail): guided to [B, K] (appended to ``logits``),
        then the given ``codes[:, q]`` or a draw with the uniforms ``u[q]``; returned for every
        row [rows] (both paths of a guided batch are fed the same code)."""
        copies = lg.shape[0] // B
        lg = self._guide(lg.float(), B, guidance)  # sampled in float32 whatever the weights
        logits.append(lg)
        c = codes[:, q] if codes is not None else sample_uniform(lg, u[q], temperature, top_k,
                                                                 top_p)
        return c.repeat(copies)

    def _compiled_or(self, part: str, cache: GenerationCache):
        """The compiled ``part`` ("step" or "emg") for a ring cache once
        :meth:`compile_generation` ran, else the eager method."""
        compiled = getattr(self, "_compiled", None)
        if compiled and cache.self_kv[0].ring_capacity:
            return compiled[part]
        return {"step": self._trunk_and_head, "emg": self._emg_kv}[part]

    def compile_generation(self, on: bool = True) -> None:
        """Run the steps of ring caches (``new_cache(..., ring=True)``) through
        ``torch.compile``: one frame of EMG keys/values, and the trunk's one position with its
        head, guidance and sampling (frame: the depth head over every level; flat: the current
        level's head, a graph per level), each one graph of fixed shapes (C++ wrapper, no Python between kernels;
        :func:`~mlmlmlm.nn.compile.compile_frozen`). The first step of each new shape compiles
        (tens of seconds on 2 cores); the results equal the eager step's to float rounding
        (tested). ``on=False`` goes back to eager."""
        if not on:
            self._compiled = None
            return
        self._compiled = {"step": compile_frozen(self._trunk_and_head),
                          "emg": compile_frozen(self._emg_kv)}

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
