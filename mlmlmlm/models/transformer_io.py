"""What the translation Transformer hands in and out: teacher-forced outputs and losses, one
generated frame, the generation cache, the flat token layout and sampling from logits.

Introduced in notebook 05_transformer (the model: :mod:`mlmlmlm.models.transformer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mlmlmlm.nn.kv_buffer import KVBuffer


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
    emg_past: Tensor | None = None  # [B, emg_context - 1, d]: the EMG context's state
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
    """Draw one code per row from ``logits`` [B, K] -> LongTensor [B]; temperature 0 is argmax.
    One uniform per row from ``generator``, then :func:`sample_uniform`."""
    u = torch.rand(logits.shape[0], generator=generator, device=logits.device)
    return sample_uniform(logits, u, temperature, top_k, top_p)


def sample_uniform(logits: Tensor, u: Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> Tensor:
    """The code whose cumulative probability first exceeds ``u`` [B] in [0, 1): inverse-CDF
    sampling from ``logits`` [B, K] / temperature, restricted to the ``top_k`` largest and to the
    smallest set of codes whose mass reaches ``top_p`` (the top code always stays); temperature
    0 is argmax. The random numbers come in as a tensor, so a compiled generation step draws
    exactly what the eager one draws. Returns LongTensor [B]."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    order = None
    if top_p is not None and top_p < 1:  # in descending order: the nucleus is a prefix
        logits, order = logits.sort(dim=-1, descending=True)
        probs = logits.softmax(-1)
        beyond = probs.cumsum(-1) - probs > top_p  # mass before it already exceeds p
        logits = logits.masked_fill(beyond, float("-inf"))
    cdf = logits.softmax(-1).cumsum(-1)  # [B, K]
    # codes whose cdf is <= u * total lie before the pick (zero-mass codes never win)
    i = (cdf <= (u * cdf[:, -1])[:, None]).sum(-1).clamp(max=logits.shape[-1] - 1)  # [B]
    return i if order is None else order.gather(-1, i[:, None])[:, 0]
