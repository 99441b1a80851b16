"""The ``frame`` layout's depth head: a small causal transformer over the RVQ levels of one
frame, run once per frame on the trunk's hidden state.

Introduced in notebook 05_transformer (the model: :mod:`mlmlmlm.models.transformer`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlmlmlm.nn.attention import Block, may_attend

if TYPE_CHECKING:
    from mlmlmlm.models.transformer import TransformerConfig


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
        Returns the codes [N, n_q]; equals ``forward`` on them in eval mode, level by level (no
        dropout here, whatever the mode: this is generation)."""
        ctx = self.inp(h)  # [N, dd]
        N, dd = ctx.shape
        H = self.blocks[0].self_attn.n_heads
        kv = [(ctx.new_zeros(N, H, self.n_q, dd // H), ctx.new_zeros(N, H, self.n_q, dd // H))
              for _ in self.blocks]  # per block: K and V slots of the n_q levels
        codes: list[Tensor] = []
        for q in range(self.n_q):
            x = ctx + self.level_emb.weight[q]
            if q:  # code q-1 feeds level q
                x = x + self.code_emb.weight[codes[-1] + (q - 1) * self.K]
            for block, (keys, values) in zip(self.blocks, kv):  # level q sees levels <= q
                x, keys[:, :, q], values[:, :, q] = block.one(x, None, keys[:, :, :q],
                                                              values[:, :, :q], None)
            codes.append(pick(self.norm(x) @ self.head[q].T, q))  # logits [N, K]
        return torch.stack(codes, 1)
