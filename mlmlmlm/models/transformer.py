"""The translation Transformer: decoder-only over audio codec tokens, causal cross-attention to
EMG codec tokens, teacher-forced training and cached incremental generation as EMG streams in.

Introduced in notebook 05_transformer; its attention parts live in mlmlmlm/nn/attention.py, the
depth head of the `frame` layout in mlmlmlm/models/depth_head.py, the outputs, cache and
sampling in mlmlmlm/models/transformer_io.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlmlmlm.models.depth_head import DepthHead
from mlmlmlm.models.generation import CachedGeneration
from mlmlmlm.models.transformer_io import TransformerLoss, TransformerOutput, flat_tokens
from mlmlmlm.nn.attention import Block, may_attend, rope_tables
from mlmlmlm.nn.kv_buffer import KVBuffer

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
    # training only: each audio code the model *reads* (not its targets) is replaced by a random
    # code with this probability, so the audio history alone predicts less and the EMG matters
    # more; the depth head's within-frame codes stay clean (0: the paper's plain teacher forcing)
    token_noise: float = 0.0
    # EMG context: each EMG frame's embedding plus a causal depthwise convolution over the last
    # ``emg_context`` frame embeddings (initialised to their mean), so that cross-attention sees
    # envelope-like summaries and not only one frame's codes, which at a short EMG hop mostly
    # code the noise-like carrier; 0 or 1: none (the paper's)
    emg_context: int = 0
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
        rates = (self.cond_dropout, self.dropout, self.attn_dropout, self.token_noise)
        if self.lookahead < 0 or not all(0 <= r < 1 for r in rates):
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


class TranslationTransformer(CachedGeneration, nn.Module):
    """Decoder-only Transformer over audio tokens with causal cross-attention to EMG tokens:
    teacher-forced ``forward`` and ``loss`` here, cached generation (``new_cache``,
    ``append_emg``, ``prime``/``start``, ``step``, ``generate``) from
    :class:`~mlmlmlm.models.generation.CachedGeneration`."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.audio_emb = nn.Embedding(cfg.vocab_size, d)  # level q's code c at row q * K + c
        self.emg_emb = nn.Embedding(cfg.emg_n_q * cfg.emg_codebook_size, d)  # same for EMG
        if cfg.emg_context > 1:  # causal: left context only, state kept by the cache
            self.emg_ctx = nn.Conv1d(d, d, cfg.emg_context, groups=d, bias=False)
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
        if cfg.emg_context > 1:  # the mean of the last emg_context frames
            nn.init.constant_(self.emg_ctx.weight, 1.0 / cfg.emg_context)

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

    def _emg_context(self, emg: Tensor, past: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """EMG frame embeddings [B, n, d] -> with their causal context [B, n, d], given the
        ``past`` embeddings [B, k - 1, d] before them (None: zeros, the start of a stream);
        also returns the new past. Identity when ``emg_context`` <= 1."""
        k = self.cfg.emg_context
        if k <= 1:
            return emg, None
        if past is None:
            past = emg.new_zeros(emg.shape[0], k - 1, emg.shape[2])
        x = torch.cat([past, emg], dim=1)  # [B, k - 1 + n, d]
        ctx = self.emg_ctx(x.transpose(1, 2)).transpose(1, 2)  # [B, n, d]
        # the past copied out of x with canonical strides: a view carries x's batch stride,
        # (k - 1 + n) * d, into the next call (and .contiguous() keeps it when B is 1), and a
        # compiled one-frame call guards on strides, so each prompt length recompiled it at a
        # phrase's first push (a 3.8-s stall, 614 underruns in a live run)
        return emg + ctx, x[:, x.shape[1] - (k - 1):].clone(memory_format=torch.contiguous_format)

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
        history = audio_codes  # what the positions read; the targets stay audio_codes
        if self.training and cfg.token_noise > 0:  # some read codes replaced by random ones
            hit = torch.rand(audio_codes.shape, device=dev) < cfg.token_noise
            history = torch.where(hit, torch.randint_like(audio_codes, K), audio_codes)
        if cfg.layout == "flat":
            inp, L = flat_tokens(history, K), T * n_q
        else:
            inp, L = history, T
        b = int(cfg.bos)  # with a start token, position -1 holds it
        pos = torch.arange(-b, L, device=dev)
        x = self._embed_audio(inp, pos, bos=cfg.bos)  # [B, b + L, d]
        emg = self._emg_context(self._embed_emg(emg_codes))[0]  # [B, T_e, d]
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
