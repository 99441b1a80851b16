"""Attention parts of the translation Transformer: rotary positions, the one mask helper, the
one-query attention of a generation step, self- and cross-attention, SwiGLU and the block
(the key/value cache is :class:`mlmlmlm.nn.kv_buffer.KVBuffer`).

Introduced with the model (mlmlmlm/models/transformer.py) in notebook 05_transformer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlmlmlm.nn.kv_buffer import KVBuffer

Rope = tuple[Tensor, Tensor]  # (cos, sin), each [L, head_dim // 2]


def rope_tables(pos: Tensor, head_dim: int, base: float = 10000.0,
                dtype: torch.dtype = torch.float32) -> Rope:
    """Rotary tables for absolute integer positions.

    Angles are formed in float64 and reduced modulo 2π before the cast, so position 10⁶ (tens of
    minutes of tokens) rotates as precisely as position 0: a score depends only on the difference
    of two positions, and that stays true far beyond any training length.

    Parameters
    ----------
    pos : LongTensor [L]
    head_dim : int, even

    Returns
    -------
    cos, sin : Tensor [L, head_dim // 2]
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float64, device=pos.device) / head_dim
    angle = pos.to(torch.float64)[:, None] * base ** -exponent[None, :]  # [L, hd/2]
    angle = torch.remainder(angle, 2 * math.pi)
    return angle.cos().to(dtype), angle.sin().to(dtype)


def apply_rope(x: Tensor, rope: Rope) -> Tensor:
    """Rotate pairs (x[i], x[i + hd/2]) of ``x`` [B, H, L, hd] by the angles of ``rope``."""
    cos, sin = rope  # [L, hd/2], broadcast over B and H
    x1, x2 = x.chunk(2, dim=-1)  # each [B, H, L, hd/2]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def may_attend(query_pos: Tensor, key_pos: Tensor, lookahead: int = 0,
               window: int | None = None) -> Tensor:
    """Which keys each query may attend to: the one place that fixes the mask's meaning.

    The result is a boolean mask in the polarity of ``F.scaled_dot_product_attention``:
    **True means "may attend"**, False means masked out (the prior public implementation had it
    inverted, so its audio saw only future EMG). Key ``k`` is visible to query ``q`` iff

        key_pos[k] <= query_pos[q] + lookahead                 (the past, plus a look-ahead)
        key_pos[k] >  query_pos[q] + lookahead - window        (only with a window W)

    Self-attention passes token positions with lookahead 0 (causal); cross-attention passes the
    audio frame each query predicts and the EMG frame index of each key.

    Parameters
    ----------
    query_pos : LongTensor [Lq]
    key_pos : LongTensor [Lk]

    Returns
    -------
    Tensor [Lq, Lk] bool
    """
    newest = query_pos[:, None] + lookahead  # [Lq, 1]: the newest visible key position
    mask = key_pos[None, :] <= newest  # [Lq, Lk]
    if window is not None:
        mask = mask & (key_pos[None, :] > newest - window)
    return mask


def attend_one(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
               extra_k: Tensor | None, extra_v: Tensor) -> Tensor:
    """Attention of one query per row over S keys plus one extra key that is always visible:
    the generation step's path (a new position attends to the cache and to itself; a cross
    query to the EMG and to the null key). Plain products, no copies of the cache, the same
    shapes at every step.

    Parameters
    ----------
    q : [N, H, hd]
    k, v : [N, H, S, hd] (S may be 0)
    mask : [S] bool (True = may attend) or None (all visible)
    extra_k : [N, H, hd], or None for the null key (a zero key: score 0)
    extra_v : [N, H, hd] or [H, hd] (broadcast over N)

    Returns
    -------
    [N, H, hd]
    """
    scale = q.shape[-1] ** -0.5
    scores = (q[:, :, None, :] @ k.transpose(-2, -1))[:, :, 0] * scale  # [N, H, S]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    first = (q * extra_k).sum(-1, keepdim=True) * scale if extra_k is not None \
        else scores.new_zeros(*scores.shape[:2], 1)  # [N, H, 1]
    w = torch.softmax(torch.cat([first, scores], -1), -1)  # [N, H, 1 + S]
    return w[..., :1] * extra_v + (w[:, :, None, 1:] @ v)[:, :, 0]


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions, optionally through a ``KVBuffer``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, rope: Rope | None, mask: Tensor | None = None,
                buffer: KVBuffer | None = None) -> Tensor:
        """Attend ``x`` [B, L, d] to itself (or to the buffer's keys after appending its own).

        ``rope``: tables at the L query positions (None: no rotation). ``mask`` [L, S] bool (True =
        may attend, from ``may_attend``) over the S keys: these L positions, or the buffer's live
        positions after the append; None means every key is visible. Returns [B, L, d].
        """
        B, L, d = x.shape
        # [B, L, 3d] -> [B, L, 3, H, hd] -> 3 x [B, H, L, hd]
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        if buffer is not None:
            buffer.append(k, v)
            k, v, _ = buffer.span(buffer.start, buffer.end)  # [B, H, S, hd]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, L, d))  # [B, H, L, hd] -> [B, L, d]


class CrossAttention(nn.Module):
    """Audio queries attend to EMG keys, plus one null key that every query always sees.

    The null key is a zero vector (its score is 0 at every position, whatever the rotation) with a
    learned value: a query may put its weight there instead of on EMG, no mask row is ever empty,
    and an EMG-dropped row (classifier-free guidance) sees the null key alone, so its output is
    exactly the null value.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.null_value = nn.Parameter(torch.zeros(n_heads, d_model // n_heads))

    def project_kv(self, emg: Tensor, rope: Rope) -> tuple[Tensor, Tensor]:
        """EMG frame embeddings ``emg`` [B, n, d] -> k, v [B, H, n, hd]; k rotated by frame index."""
        B, n, d = emg.shape
        # [B, n, 2d] -> [B, n, 2, H, hd] -> 2 x [B, H, n, hd]
        k, v = self.kv(emg).view(B, n, 2, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        return apply_rope(k, rope), v

    def forward(self, x: Tensor, rope: Rope, k: Tensor, v: Tensor,
                mask: Tensor | None = None) -> Tensor:
        """Cross-attend the audio stream ``x`` [B, L, d] to EMG keys/values ``k``, ``v``.

        ``rope``: tables at the frame each query predicts. ``k``, ``v`` [Bk, H, n, hd] belong to
        the first Bk <= B rows of ``x``; rows Bk: are the EMG-dropped copy of a guided batch and
        see the null key alone. ``mask`` [L, n] or [Bk, 1, L, n] bool (True = may attend, from
        ``may_attend``); None means every key is visible. Returns [B, L, d].
        """
        B, L, d = x.shape
        Bk, hd = k.shape[0], d // self.n_heads
        q = apply_rope(self.q(x).view(B, L, self.n_heads, hd).transpose(1, 2), rope)  # [B,H,L,hd]
        n = k.shape[2]
        null_v = self.null_value[None, :, None, :].to(v.dtype)  # [1, H, 1, hd]
        # the null key (zeros: score 0) and its learned value go first: [Bk, H, 1 + n, hd]
        k = torch.cat([k.new_zeros(Bk, self.n_heads, 1, hd), k], dim=2)
        v = torch.cat([null_v.expand(Bk, -1, -1, -1), v], dim=2)
        if mask is not None:  # the null column is always visible
            mask = mask.expand(Bk, 1, L, n)  # [L, n] or [Bk, 1, L, n]
            mask = torch.cat([mask.new_ones(Bk, 1, L, 1), mask], dim=-1)  # [Bk, 1, L, 1 + n]
        # one fused kernel (scores, softmax, weighted sum), not four [Bk, H, L, n] tensors
        y = F.scaled_dot_product_attention(q[:Bk], k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        if Bk < B:  # EMG-dropped rows: softmax over the null key alone is exactly 1
            y = torch.cat([y, null_v.expand(B - Bk, -1, L, -1)], dim=0)
        return self.out(y.transpose(1, 2).reshape(B, L, d))  # [B, H, L, hd] -> [B, L, d]


class SwiGLU(nn.Module):
    """Feed-forward ``w2(silu(w1 x) * w3 x)``: [B, L, d] -> [B, L, d] through ``hidden``."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm block: self-attention, cross-attention to EMG (if ``cross``), SwiGLU; residuals.

    ``dropout`` acts on each residual branch, ``attn_dropout`` on the attention weights."""

    def __init__(self, d_model: int, n_heads: int, ffn_hidden: int, dropout: float = 0.0,
                 cross: bool = True, attn_dropout: float = 0.0):
        super().__init__()
        self.norm_self = nn.RMSNorm(d_model)
        self.self_attn = SelfAttention(d_model, n_heads, attn_dropout)
        if cross:
            self.norm_emg = nn.RMSNorm(d_model)  # EMG embeddings, before this layer's K/V
            self.norm_cross = nn.RMSNorm(d_model)
            self.cross = CrossAttention(d_model, n_heads, attn_dropout)
        self.norm_ffn = nn.RMSNorm(d_model)
        self.ffn = SwiGLU(d_model, ffn_hidden)
        self.drop = nn.Dropout(dropout)

    def emg_kv(self, emg: Tensor, rope: Rope) -> tuple[Tensor, Tensor]:
        """This layer's cross keys/values of EMG embeddings [B, n, d] -> 2 x [B, H, n, hd]."""
        return self.cross.project_kv(self.norm_emg(emg), rope)

    def one(self, x: Tensor, rope: Rope | None, keys: Tensor, values: Tensor,
            mask: Tensor | None, cross: tuple | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """One new position per row, the generation step (eval mode: no dropout): ``x`` [N, d]
        attends to the cached ``keys``, ``values`` [N, H, S, hd] where ``mask`` [S] (True = may
        attend; None: all) and to its own key, then, with ``cross`` = (rope, k, v, mask) of the
        EMG ([Bk, H, n, hd], mask [n]), to the EMG of its first Bk rows and the null key (rows
        Bk: see the null key alone). Equals ``forward`` with a :class:`KVBuffer` holding the
        visible keys (tested through the cached generation). Returns the new ``x`` [N, d] and
        this position's key and value [N, H, hd], for the caller to store."""
        N, d = x.shape
        att = self.self_attn
        H = att.n_heads
        a = F.rms_norm(x, (d,), self.norm_self.weight, self.norm_self.eps)
        q, k, v = F.linear(a, att.qkv.weight).view(N, 3, H, d // H).unbind(1)  # [N, H, hd]
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        x = x + F.linear(attend_one(q, keys, values, mask, k, v).reshape(N, d), att.out.weight)
        if cross is not None:
            c_rope, ek, ev, e_mask = cross
            ca, Bk = self.cross, ek.shape[0]
            a = F.rms_norm(x, (d,), self.norm_cross.weight, self.norm_cross.eps)
            qc = apply_rope(F.linear(a, ca.q.weight).view(N, H, d // H), c_rope)
            null_v = ca.null_value.to(ev.dtype)  # [H, hd]
            y = attend_one(qc[:Bk], ek, ev, e_mask, None, null_v)  # [Bk, H, hd]
            if Bk < N:  # EMG-dropped rows: the null value alone
                y = torch.cat([y, null_v.expand(N - Bk, -1, -1)])
            x = x + F.linear(y.reshape(N, d), ca.out.weight)
        a = F.rms_norm(x, (d,), self.norm_ffn.weight, self.norm_ffn.eps)
        ffn = self.ffn
        x = x + F.linear(F.silu(F.linear(a, ffn.w1.weight)) * F.linear(a, ffn.w3.weight),
                         ffn.w2.weight)
        return x, k, v

    def forward(self, x: Tensor, rope: Rope | None, mask: Tensor | None = None,
                buffer: KVBuffer | None = None, cross_rope: Rope | None = None,
                emg_kv: tuple[Tensor, Tensor] | None = None,
                cross_mask: Tensor | None = None) -> Tensor:
        """``x`` [B, L, d] -> [B, L, d]; arguments as in ``SelfAttention`` / ``CrossAttention``."""
        x = x + self.drop(self.self_attn(self.norm_self(x), rope, mask, buffer))
        if emg_kv is not None:
            x = x + self.drop(self.cross(self.norm_cross(x), cross_rope, *emg_kv, cross_mask))
        return x + self.drop(self.ffn(self.norm_ffn(x)))
