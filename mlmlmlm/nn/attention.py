"""Attention parts of the translation Transformer: rotary positions, the one mask helper, a
key/value buffer for incremental decoding, self- and cross-attention, SwiGLU and the block.

Introduced with the model (mlmlmlm/models/transformer.py) in notebook 05_transformer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


class KVBuffer:
    """Keys and values of one attention layer for a contiguous run of positions.

    Entries are appended in position order and forgotten from the front (``drop_before``), so the
    live positions are always ``start .. end - 1``. Storage is preallocated and reused: when it
    runs out, the live entries move to the front (or into storage twice their size), which costs
    O(1) per appended entry amortised and keeps memory at most ~4x the live entries.
    """

    def __init__(self) -> None:
        self._k: Tensor | None = None  # [B, H, capacity, hd]
        self._v: Tensor | None = None
        self._lo = self._hi = 0  # live storage slots [lo, hi)
        self.start = 0  # absolute position of slot lo

    def __len__(self) -> int:
        return self._hi - self._lo

    @property
    def end(self) -> int:
        """One past the newest live position."""
        return self.start + len(self)

    @property
    def capacity(self) -> int:
        return 0 if self._k is None else self._k.shape[2]

    def append(self, k: Tensor, v: Tensor) -> None:
        """Append ``k``, ``v`` [B, H, n, hd] at positions ``end .. end + n - 1``."""
        n = k.shape[2]
        if self._hi + n > self.capacity:
            live, need = len(self), len(self) + n
            if 2 * need > self.capacity:  # grow: fresh storage, twice what is needed
                shape = (k.shape[0], k.shape[1], max(2 * need, 16), k.shape[3])
                new_k, new_v = k.new_empty(shape), v.new_empty(shape)
            else:  # compact in place: live entries to the front
                new_k, new_v = self._k, self._v
            if live:
                new_k[:, :, :live] = self._k[:, :, self._lo:self._hi].clone()
                new_v[:, :, :live] = self._v[:, :, self._lo:self._hi].clone()
            self._k, self._v, self._lo, self._hi = new_k, new_v, 0, live
        self._k[:, :, self._hi:self._hi + n] = k
        self._v[:, :, self._hi:self._hi + n] = v
        self._hi += n

    def drop_before(self, pos: int) -> None:
        """Forget the entries at positions < ``pos``."""
        d = min(max(pos - self.start, 0), len(self))
        self._lo += d
        self.start += d

    def span(self, p0: int, p1: int) -> tuple[Tensor, Tensor, int]:
        """Views of the live entries at positions [p0, p1) (clipped): k, v [B, H, n, hd], first."""
        p0 = max(p0, self.start)
        p1 = max(min(p1, self.end), p0)
        a, b = self._lo + p0 - self.start, self._lo + p1 - self.start
        return self._k[:, :, a:b], self._v[:, :, a:b], p0


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
        if 4 * L < n:  # a few queries (a generation step): copying K/V would cost more
            y = self._few_queries(q[:Bk], k, v, null_v, mask)
        else:
            # the null key (zeros: score 0) and its learned value go first: [Bk, H, 1 + n, hd]
            k = torch.cat([k.new_zeros(Bk, self.n_heads, 1, hd), k], dim=2)
            v = torch.cat([null_v.expand(Bk, -1, -1, -1), v], dim=2)
            if mask is not None:  # the null column is always visible
                mask = mask.expand(Bk, 1, L, n)  # [L, n] or [Bk, 1, L, n]
                mask = torch.cat([mask.new_ones(Bk, 1, L, 1), mask], dim=-1)  # [Bk,1,L,1+n]
            # one fused kernel (scores, softmax, weighted sum), not four [Bk, H, L, n] tensors
            y = F.scaled_dot_product_attention(q[:Bk], k, v, attn_mask=mask,
                                               dropout_p=self.dropout if self.training else 0.0)
        if Bk < B:  # EMG-dropped rows: softmax over the null key alone is exactly 1
            y = torch.cat([y, null_v.expand(B - Bk, -1, L, -1)], dim=0)
        return self.out(y.transpose(1, 2).reshape(B, L, d))  # [B, H, L, hd] -> [B, L, d]


    def _few_queries(self, q: Tensor, k: Tensor, v: Tensor, null_v: Tensor,
                     mask: Tensor | None) -> Tensor:
        """The same attention, scores first: q [Bk, H, L, hd] over k, v [Bk, H, n, hd] and the
        null key (score 0, value ``null_v``) without copying K/V; returns [Bk, H, L, hd]."""
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [Bk, H, L, n]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        w = torch.softmax(torch.cat([scores.new_zeros(*scores.shape[:-1], 1), scores], -1), -1)
        w = F.dropout(w, self.dropout, self.training)
        return w[..., :1] * null_v + w[..., 1:] @ v


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

    def step_one(self, x: Tensor, keys: Tensor, values: Tensor, i: int) -> Tensor:
        """Generation fast path of a block without cross-attention or rotation (the depth
        head's): one new position ``x`` [N, d] writes its key/value to slot ``i`` of ``keys``,
        ``values`` [N, H, S, hd] and attends to slots 0..i. Equals ``forward`` with a
        :class:`KVBuffer` holding those slots, in eval mode (tested through
        ``DepthHead.sample``); the same operations without the module calls, ~20 % less time
        for a level of the cpu depth head."""
        N, d = x.shape
        H = self.self_attn.n_heads
        a = F.rms_norm(x, (d,), self.norm_self.weight, self.norm_self.eps)
        qkv = F.linear(a, self.self_attn.qkv.weight).view(N, 3, H, d // H)
        keys[:, :, i], values[:, :, i] = qkv[:, 1], qkv[:, 2]
        y = F.scaled_dot_product_attention(qkv[:, 0, :, None], keys[:, :, :i + 1],
                                           values[:, :, :i + 1])  # [N, H, 1, hd]
        x = x + F.linear(y.reshape(N, d), self.self_attn.out.weight)
        a = F.rms_norm(x, (d,), self.norm_ffn.weight, self.norm_ffn.eps)
        ffn = self.ffn
        return x + F.linear(F.silu(F.linear(a, ffn.w1.weight)) * F.linear(a, ffn.w3.weight),
                            ffn.w2.weight)

    def forward(self, x: Tensor, rope: Rope | None, mask: Tensor | None = None,
                buffer: KVBuffer | None = None, cross_rope: Rope | None = None,
                emg_kv: tuple[Tensor, Tensor] | None = None,
                cross_mask: Tensor | None = None) -> Tensor:
        """``x`` [B, L, d] -> [B, L, d]; arguments as in ``SelfAttention`` / ``CrossAttention``."""
        x = x + self.drop(self.self_attn(self.norm_self(x), rope, mask, buffer))
        if emg_kv is not None:
            x = x + self.drop(self.cross(self.norm_cross(x), cross_rope, *emg_kv, cross_mask))
        return x + self.drop(self.ffn(self.norm_ffn(x)))
