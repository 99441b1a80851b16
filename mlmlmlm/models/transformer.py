"""The translation Transformer: decoder-only over audio codec tokens, causal cross-attention to
EMG codec tokens, teacher-forced training and cached incremental generation as EMG streams in.

Introduced in notebook 05_transformer; its attention parts live in mlmlmlm/nn/attention.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlmlmlm.nn.attention import Block, KVBuffer, may_attend, rope_tables

LAYOUTS = ("flat", "frame")


@dataclass
class TransformerConfig:
    """Transformer hyperparameters. Defaults are the paper's: d 384, 6 layers, 6 heads of 64,
    SwiGLU, 4 levels x 2048 codes (flat vocabulary 8192), EMG 4 x 2048.

    Positions are rotary (RoPE) on both sides, from absolute indices: no table, no hard limit.
    Audio self-attention rotates queries and keys by the position's sequence index (``flat``:
    frame * n_q + level; ``frame``: the frame index). Cross-attention rotates each audio query by
    the frame it predicts and each EMG key by its EMG frame index, so the EMG keys carry their
    time and a score sees only "how many frames back". Scores depend only on differences of
    positions, which is what lets a sliding window over the caches (``max_cache_frames``) run for
    minutes: a windowed step sees the same relative offsets as training did.

    ``layout``: ``flat`` (the paper's: one token per step, frame-major, level offsets, logits of
    the current level only) or ``frame`` (one step per frame; a small depth transformer produces
    the frame's n_q levels in that step). ``lookahead``: EMG frames past t that the prediction of
    frame t may see. ``cond_dropout``: probability that a training example's EMG is dropped (its
    queries see only the null key), so classifier-free guidance works at inference.

    ``cross_causal`` False (the paper's TE1): in teacher forcing every audio position sees every
    EMG frame of the crop, future ones included. Generation can only ever see the EMG appended so
    far, so such a model is trained non-causally and run causally. ``bos``: a learned start
    embedding at position -1 precedes every sequence and predicts the first frame, so generation
    can start from EMG alone (``start``), without an audio prompt.
    """

    n_q: int = 4
    codebook_size: int = 2048
    emg_n_q: int = 4
    emg_codebook_size: int = 2048
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 6
    ffn_hidden: int | None = None  # SwiGLU width; None: 4 * d_model (stable-audio-tools' GLU ff)
    layout: str = "flat"
    lookahead: int = 0
    dropout: float = 0.1  # on each residual branch and the embeddings
    # on the attention weights: [B, H, L, L] Bernoulli draws were 39 % of a cpu-scale CPU step
    # (d 128, 512 flat tokens, batch 8: 1.16 s a step with 0.1, see the closing note of stop 14)
    attn_dropout: float = 0.0
    cond_dropout: float = 0.1
    rope_base: float = 10000.0
    depth_layers: int = 2  # frame layout: depth transformer over the levels
    depth_d_model: int | None = None  # None: d_model
    cross_causal: bool = True  # False: teacher forcing sees all EMG of the crop (TE1)
    bos: bool = False  # learned start token at position -1 (generation without a prompt)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        for name in ("d_model", "depth_width"):
            if getattr(self, name) % (2 * self.n_heads):
                raise ValueError(f"{name} must split into {self.n_heads} heads of even width")
        if self.lookahead < 0 or not (0 <= self.cond_dropout < 1 and 0 <= self.dropout < 1
                                          and 0 <= self.attn_dropout < 1):
            raise ValueError("lookahead must be >= 0 and dropouts in [0, 1)")

    @property
    def vocab_size(self) -> int:
        return self.n_q * self.codebook_size

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_width(self) -> int:
        return self.ffn_hidden or 4 * self.d_model

    @property
    def depth_width(self) -> int:
        return self.depth_d_model or self.d_model

    @classmethod
    def paper(cls, **overrides) -> TransformerConfig:
        """The paper's scale (the defaults)."""
        return cls(**{**PRESETS["paper"], **overrides})

    @classmethod
    def cpu(cls, **overrides) -> TransformerConfig:
        """The same design at 2-core size: d 128, 4 layers, 4 heads, the cpu codecs' 4 x 1024."""
        return cls(**{**PRESETS["cpu"], **overrides})


PRESETS: dict[str, dict] = {
    "paper": {},
    "cpu": {"d_model": 128, "n_layers": 4, "n_heads": 4, "codebook_size": 1024,
            "emg_codebook_size": 1024},
}


@dataclass
class TransformerOutput:
    """Teacher-forced predictions, one per audio code.

    logits : Tensor [B, n_q, T, K], logits of code (level q, frame t) over level q's K codes, from
        what precedes it in the layout's order (flat: all earlier tokens; frame: frames < t and
        levels < q of frame t) and EMG frames <= t + lookahead.
    valid : Tensor [n_q, T] bool, which codes are predicted (the first token or frame only
        conditions).
    targets : LongTensor [B, n_q, T], the audio codes.
    """

    logits: Tensor
    valid: Tensor
    targets: Tensor

    def vocab_logits(self) -> Tensor:
        """The paper's flat view [B, T * n_q, n_q * K]: row frame * n_q + level holds that token's
        logits over the whole vocabulary, -inf outside its level's range."""
        B, n_q, T, K = self.logits.shape
        out = self.logits.new_full((B, T, n_q, n_q * K), float("-inf"))
        for q in range(n_q):
            out[:, :, q, q * K:(q + 1) * K] = self.logits[:, q]  # [B, T, K]
        return out.view(B, T * n_q, n_q * K)


@dataclass
class TransformerLoss:
    """Cross-entropy over the predicted codes: ``loss`` (scalar, the mean over all of them) and
    per level ``level_loss``, ``level_accuracy`` [n_q] (argmax == target)."""

    loss: Tensor
    level_loss: Tensor
    level_accuracy: Tensor


@dataclass
class StepOutput:
    """One generated frame: ``codes`` [B, n_q] (each level's code, 0..K-1), ``logits`` [B, n_q, K]
    the (guided) logits they were drawn from, before temperature/top-k/top-p, and its ``frame``."""

    codes: Tensor
    logits: Tensor
    frame: int


@dataclass
class GenerationCache:
    """What incremental generation carries between calls (make it with ``new_cache``).

    Rows are the B conditional rows, then, if ``guided``, B EMG-dropped rows that are fed the same
    tokens (the unconditional path of classifier-free guidance). ``self_kv`` holds each layer's
    audio keys/values (positions: tokens for flat, frames for frame), ``emg_kv`` each layer's EMG
    keys/values (conditional rows only), appended once per EMG frame as it arrives.
    ``pending`` is the last known audio input [rows, 1] (flat token) or [rows, n_q, 1] (frame),
    not yet fed: the position it occupies predicts the next frame, so it runs when that frame's
    EMG is there, inside the next ``step``.
    """

    batch_size: int
    guided: bool
    max_cache_frames: int | None
    self_kv: list[KVBuffer]
    emg_kv: list[KVBuffer]
    n_emg: int = 0  # EMG frames appended
    n_fed: int = 0  # audio positions fed
    n_frames: int = 0  # audio frames known (prompt + generated)
    pending: Tensor | None = None
    bos_pending: bool = False  # the start token is fed (before ``pending``) by the next step

    def size(self) -> dict[str, int]:
        """Live entries and allocated slots of layer 0's buffers (every layer holds the same)."""
        s, e = self.self_kv[0], self.emg_kv[0]
        return {"self": len(s), "self_capacity": s.capacity, "emg": len(e),
                "emg_capacity": e.capacity}


def flat_tokens(codes: Tensor, codebook_size: int) -> Tensor:
    """Codes [B, n_q, T] -> flat tokens [B, T * n_q]: index frame * n_q + level, id level * K + code."""
    B, n_q, T = codes.shape
    offsets = torch.arange(n_q, device=codes.device)[:, None] * codebook_size  # [n_q, 1]
    return (codes + offsets).transpose(1, 2).reshape(B, T * n_q)  # [B, T, n_q] -> [B, T*n_q]


def sample_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Draw one code per row from ``logits`` [B, K] -> LongTensor [B]; temperature 0 is argmax."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        beyond = probs.cumsum(-1) - probs > top_p  # mass before it already exceeds p; top stays
        logits = logits.masked_fill(beyond.scatter(-1, order, beyond), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


class DepthHead(nn.Module):
    """The ``frame`` layout's small causal transformer over the n_q levels of one frame.

    Input at level q: the frame's context (the trunk's hidden state, projected) + a level
    embedding + the embedding of code q - 1 of the same frame (the target in training, the sampled
    code in generation). Output: logits over level q's K codes.
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        dd, self.n_q, self.K = cfg.depth_width, cfg.n_q, cfg.codebook_size
        self.inp = nn.Linear(cfg.d_model, dd, bias=False)
        self.level_emb = nn.Embedding(cfg.n_q, dd)
        self.code_emb = nn.Embedding(cfg.n_q * cfg.codebook_size, dd)
        self.blocks = nn.ModuleList(Block(dd, cfg.n_heads, 4 * dd, cfg.dropout, cross=False,
                                          attn_dropout=cfg.attn_dropout)
                                    for _ in range(cfg.depth_layers))
        self.norm = nn.RMSNorm(dd)
        self.head = nn.Parameter(torch.empty(cfg.n_q, cfg.codebook_size, dd))  # level q's rows

    def forward(self, h: Tensor, prev: Tensor) -> Tensor:
        """Context ``h`` [N, d], codes of levels 0..m-1 ``prev`` [N, m] -> logits [N, m + 1, K]
        of levels 0..m."""
        m = prev.shape[1]
        levels = torch.arange(m + 1, device=h.device)
        x = self.inp(h)[:, None, :] + self.level_emb(levels)  # [N, m+1, dd]
        if m:  # code q-1 feeds level q
            codes = self.code_emb(prev + levels[:m] * self.K)  # [N, m, dd]
            x = x + F.pad(codes, (0, 0, 1, 0))  # level 0 gets no code
        mask = may_attend(levels, levels)  # causal over levels
        for block in self.blocks:
            x = block(x, None, mask)
        return torch.einsum("nld,lkd->nlk", self.norm(x), self.head[: m + 1])  # [N, m+1, K]

    def sample(self, h: Tensor, pick) -> Tensor:
        """Generation: the levels of one frame from its context ``h`` [N, d], one level at a time
        through per-block K/V buffers, so level q costs one position (``forward`` would rerun
        levels 0..q-1). ``pick(logits [N, K], q) -> codes [N]`` chooses each level's code.
        Returns the codes [N, n_q]; equals ``forward`` on them, level by level."""
        buffers = [KVBuffer() for _ in self.blocks]
        ctx = self.inp(h)[:, None, :]  # [N, 1, dd]
        codes: list[Tensor] = []
        for q in range(self.n_q):
            x = ctx + self.level_emb.weight[q]
            if q:  # code q-1 feeds level q
                x = x + self.code_emb(codes[-1] + (q - 1) * self.K)[:, None, :]
            for block, buf in zip(self.blocks, buffers):
                x = block(x, None, None, buf)  # one new position: it sees levels <= q
            codes.append(pick(self.norm(x[:, 0]) @ self.head[q].T, q))  # logits [N, K]
        return torch.stack(codes, 1)


class TranslationTransformer(nn.Module):
    """Decoder-only Transformer over audio tokens with causal cross-attention to EMG tokens."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.audio_emb = nn.Embedding(cfg.vocab_size, d)  # level q's code c at row q * K + c
        self.emg_emb = nn.Embedding(cfg.emg_n_q * cfg.emg_codebook_size, d)  # same for EMG
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.ffn_width, cfg.dropout,
                                          attn_dropout=cfg.attn_dropout)
                                    for _ in range(cfg.n_layers))
        self.norm_out = nn.RMSNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.bos:
            self.bos = nn.Parameter(torch.zeros(d))  # the start token's embedding (position -1)
        if cfg.layout == "flat":
            self.level_emb = nn.Embedding(cfg.n_q, d)
            self.head = nn.Linear(d, cfg.vocab_size, bias=False)  # rows q*K .. (q+1)*K-1: level q
        else:
            self.depth = DepthHead(cfg)
        self.apply(self._init_weights)
        if cfg.layout == "frame":
            nn.init.normal_(self.depth.head, std=0.02)
        if cfg.bos:
            nn.init.normal_(self.bos, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> dict:
        return {**asdict(self.cfg), "params": self.num_params(),
                "positions": "RoPE: audio by sequence index, cross by frame (queries: the frame "
                             "they predict; EMG keys: their frame)"}

    # ---- positions and embeddings -------------------------------------------------------------

    def _query_frames(self, pos):
        """The audio frame that position ``pos`` (int or LongTensor) predicts."""
        return (pos + 1) // self.cfg.n_q if self.cfg.layout == "flat" else pos + 1

    def _self_window(self, frames: int | None) -> int | None:
        """A window of ``frames`` frames in self-attention positions."""
        return None if frames is None else frames * (self.cfg.n_q if self.cfg.layout == "flat" else 1)

    def _embed_audio(self, inp: Tensor, pos: Tensor, bos: bool = False) -> Tensor:
        """Flat tokens [B, L] or frame codes [B, n_q, L] at positions ``pos`` [L] -> [B, L, d];
        with ``bos`` the start embedding comes first: [B, 1 + L, d] (``pos`` then [1 + L])."""
        tpos = pos[1:] if bos else pos
        if self.cfg.layout == "flat":
            x = self.audio_emb(inp) + self.level_emb(tpos % self.cfg.n_q)
        else:
            offsets = torch.arange(self.cfg.n_q, device=inp.device)[:, None] * self.cfg.codebook_size
            x = self.audio_emb(inp + offsets).sum(1)  # [B, n_q, L, d] -> [B, L, d]: sum of levels
        if bos:
            x = torch.cat([self.bos.expand(x.shape[0], 1, -1), x], dim=1)
        return x

    def _embed_emg(self, emg_codes: Tensor) -> Tensor:
        """EMG codes [B, n_qe, n] -> one embedding per EMG frame [B, n, d] (sum of its levels)."""
        n_qe = self.cfg.emg_n_q
        offsets = torch.arange(n_qe, device=emg_codes.device)[:, None] * self.cfg.emg_codebook_size
        return self.emg_emb(emg_codes + offsets).sum(1)  # [B, n_qe, n, d] -> [B, n, d]

    def _rope(self, pos: Tensor, dtype: torch.dtype):
        return rope_tables(pos, self.cfg.head_dim, self.cfg.rope_base, dtype)

    def _trunk(self, x: Tensor, pos: Tensor, mask: Tensor | None, cross_mask: Tensor | None,
               emg_kv: list[tuple[Tensor, Tensor]], buffers: list[KVBuffer] | None = None
               ) -> Tensor:
        """Embedded audio ``x`` [B, L, d] at positions ``pos`` [L] -> hidden states [B, L, d]."""
        rope = self._rope(pos, x.dtype)
        cross_rope = self._rope(self._query_frames(pos), x.dtype)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            buffer = None if buffers is None else buffers[i]
            x = block(x, rope, mask, buffer, cross_rope, emg_kv[i], cross_mask)
        return self.norm_out(x)

    # ---- teacher forcing ----------------------------------------------------------------------

    def _check(self, codes: Tensor, n_q: int, size: int, what: str) -> None:
        if codes.dim() != 3 or codes.shape[1] != n_q:
            raise ValueError(f"{what} codes must be [B, {n_q}, T], got {list(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= size):
            raise ValueError(f"{what} codes must lie in 0..{size - 1}")

    def forward(self, audio_codes: Tensor, emg_codes: Tensor, drop_emg: Tensor | None = None,
                window: int | None = None) -> TransformerOutput:
        """Teacher-forced logits of every audio code.

        Parameters
        ----------
        audio_codes : LongTensor [B, n_q, T], T >= 2
        emg_codes : LongTensor [B, emg_n_q, T_e], T_e >= T, frames aligned one to one with audio
        drop_emg : BoolTensor [B] or None; rows whose EMG is dropped (see only the null key).
            None: drawn with probability ``cond_dropout`` in training, none in eval.
        window : int or None; attend only to the last ``window`` frames (self and cross), exactly
            what generation with ``max_cache_frames=window`` computes.
        """
        cfg = self.cfg
        self._check(audio_codes, cfg.n_q, cfg.codebook_size, "audio")
        self._check(emg_codes, cfg.emg_n_q, cfg.emg_codebook_size, "EMG")
        (B, n_q, T), T_e, K = audio_codes.shape, emg_codes.shape[2], cfg.codebook_size
        if T < 2 or T_e < T or emg_codes.shape[0] != B:
            raise ValueError(f"need T >= 2 audio frames and as many EMG frames for the same batch,"
                             f" got audio {list(audio_codes.shape)}, EMG {list(emg_codes.shape)}")
        dev = audio_codes.device
        if drop_emg is None:
            p = cfg.cond_dropout if self.training else 0.0
            drop_emg = torch.rand(B, device=dev) < p
        if cfg.layout == "flat":
            inp, L = flat_tokens(audio_codes, K), T * n_q
        else:
            inp, L = audio_codes, T
        b = int(cfg.bos)  # with a start token, position -1 holds it
        pos = torch.arange(-b, L, device=dev)
        x = self._embed_audio(inp, pos, bos=cfg.bos)  # [B, b + L, d]
        emg = self._embed_emg(emg_codes)  # [B, T_e, d]
        emg_pos = torch.arange(T_e, device=dev)
        emg_rope = self._rope(emg_pos, x.dtype)
        emg_kv = [block.emg_kv(emg, emg_rope) for block in self.blocks]
        mask = may_attend(pos, pos, 0, self._self_window(window))  # [L, L] causal
        if cfg.cross_causal:
            cross = may_attend(self._query_frames(pos), emg_pos, cfg.lookahead, window)  # [L, T_e]
        else:  # TE1: every EMG frame of the crop, the future included
            cross = torch.ones(len(pos), T_e, dtype=torch.bool, device=dev)
        cross = cross[None, None] & ~drop_emg[:, None, None, None]  # [B, 1, b + L, T_e]
        h = self._trunk(x, pos, mask, cross, emg_kv)  # [B, b + L, d]
        h_bos, h = h[:, :b], h[:, b:]  # the start position predicts frame 0 (level 0 for flat)

        if cfg.layout == "flat":
            weight = self.head.weight.view(n_q, K, -1)  # [n_q, K, d]: level q's rows
            # position t * n_q + q predicts the next token, level (q + 1) % n_q
            pos_logits = torch.einsum("btqd,qkd->btqk", h.reshape(B, T, n_q, -1),
                                      weight.roll(-1, dims=0))  # [B, T, n_q, K]
            # shift by one so row i holds the logits *of* token i; token 0 is not predicted
            first = h_bos @ weight[0].T if b else pos_logits.new_zeros(B, 1, K)  # [B, 1, K]
            logits = torch.cat([first, pos_logits.reshape(B, T * n_q, K)[:, :-1]], dim=1)
            logits = logits.view(B, T, n_q, K).permute(0, 2, 1, 3)  # [B, n_q, T, K]
            valid = torch.ones(n_q, T, dtype=torch.bool, device=dev)
            valid[0, 0] = bool(b)
        else:
            # position s predicts frame s + 1 (the start position -1: frame 0); the predicted
            # frame's levels 0..n_q-2 feed the depth head
            ctx = torch.cat([h_bos, h[:, :-1]], dim=1)  # [B, T - 1 + b, d]
            F_ = T - 1 + b  # predicted frames: 1..T-1, or 0..T-1 with a start token
            prev = audio_codes[:, :-1, 1 - b:].permute(0, 2, 1).reshape(B * F_, n_q - 1)
            depth = self.depth(ctx.reshape(B * F_, -1), prev)  # [B*F_, n_q, K]
            depth = depth.view(B, F_, n_q, K).permute(0, 2, 1, 3)  # [B, n_q, F_, K]
            logits = F.pad(depth, (0, 0, 1 - b, 0))  # [B, n_q, T, K]; frame 0 only with bos
            valid = torch.ones(n_q, T, dtype=torch.bool, device=dev)
            valid[:, 0] = bool(b)
        return TransformerOutput(logits=logits, valid=valid, targets=audio_codes)

    def loss(self, out: TransformerOutput) -> TransformerLoss:
        """Mean cross-entropy of the predicted codes (next-token for flat; for frame, all levels
        of frame t from frames < t, levels autoregressive inside the depth head)."""
        B, n_q, T, K = out.logits.shape
        ce = F.cross_entropy(out.logits.reshape(-1, K), out.targets.reshape(-1), reduction="none")
        ce = ce.view(B, n_q, T) * out.valid  # [B, n_q, T], zero where nothing is predicted
        count = out.valid.sum(1) * B  # [n_q]
        correct = (out.logits.argmax(-1) == out.targets) & out.valid
        return TransformerLoss(loss=ce.sum() / count.sum(), level_loss=ce.sum((0, 2)) / count,
                               level_accuracy=correct.sum((0, 2)) / count)

    # ---- incremental generation ---------------------------------------------------------------

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
        emg = self._embed_emg(emg_codes)  # [B, n, d]
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
