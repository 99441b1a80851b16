"""Optimisers, per-step learning-rate schedules and the weight EMA of the training loop.

Introduced in notebook 02_audio_codec.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from mlmlmlm.train import TrainConfig

SCHEDULES = ("constant", "onecycle", "exponential", "cosine")


class EMA:
    """Exponential moving average of a model's weights: ``ema = decay * ema + (1 - decay) * w``.

    Kept as a state dict (not a module copy), so it works with any module; buffers and
    integer entries are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.averaged = {n for n, p in model.named_parameters() if p.requires_grad}
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.averaged and v.is_floating_point():
                self.state[k].lerp_(v, 1.0 - self.decay)
            else:
                self.state[k].copy_(v)


def make_optimizer(
    params: list[nn.Parameter], cfg: TrainConfig, lr: float
) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (Adam or AdamW) over ``params`` with ``cfg.betas`` and ``weight_decay``."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, lr: float):
    """Per-step lr schedule. All but "onecycle" are a linear warm-up times a decay."""
    warm = cfg.warmup_steps
    if cfg.schedule == "onecycle":
        # lr peaks at update index warm - 1 (pct_start = warm / total); cycle_momentum (the
        # PyTorch default) moves Adam's beta1 between 0.85 and 0.95, overriding betas[0].
        total = max(cfg.max_steps, 2)
        # at least 2 warm-up steps: with pct_start * total == 1 PyTorch's first phase is empty
        # (a division by zero at the first step)
        pct = min(max(warm, 2) / total, 0.99)
        return torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=total, pct_start=pct)

    peak = max(warm - 1, 0)  # index of the first update at the full lr

    def factor(s: int) -> float:  # s = index of the update this lr is used for
        f = min(1.0, (s + 1) / warm) if warm > 0 else 1.0
        after = max(0, s - peak)
        if cfg.schedule == "exponential":
            f *= cfg.gamma**after
        elif cfg.schedule == "cosine":
            f *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, after / max(1, cfg.max_steps - peak))))
        return f

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
