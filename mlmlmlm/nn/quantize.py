"""Codec bottlenecks: the VAE bottleneck (KL) and residual vector quantization (RVQ), plus code
statistics (usage, perplexity).

Introduced in notebook 02_audio_codec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vector_quantize_pytorch import ResidualVQ


@dataclass
class BottleneckOutput:
    """What a bottleneck hands the decoder and the loss.

    z : Tensor[B x D x T']              latents fed to the decoder
    codes : LongTensor[B x n_q x T']    RVQ indices (``None`` for vae)
    kl : Tensor[]                       KL divergence (``None`` for rvq)
    quantizer_loss : Tensor[]           commitment loss averaged over levels (``None`` for vae)
    perplexity : Tensor[n_q]            code perplexity per level in this batch (``None`` for vae)
    """

    z: Tensor
    codes: Tensor | None = None
    kl: Tensor | None = None
    quantizer_loss: Tensor | None = None
    perplexity: Tensor | None = None


def code_histogram(codes: Tensor, codebook_size: int) -> Tensor:
    """Counts of each code per level.

    Parameters
    ----------
    codes : LongTensor[B x n_q x T']
    codebook_size : int

    Returns
    -------
    Tensor[n_q x codebook_size]
        float counts.
    """
    assert codes.ndim == 3, f"codes must be [B, n_q, T'], got {tuple(codes.shape)}"
    n_q = codes.shape[1]
    flat = codes.transpose(0, 1).reshape(n_q, -1).long()  # [n_q, B*T']
    offsets = torch.arange(n_q, device=codes.device)[:, None] * codebook_size
    counts = torch.bincount((flat + offsets).reshape(-1), minlength=n_q * codebook_size)
    return counts.reshape(n_q, codebook_size).float()


def code_perplexity(codes: Tensor, codebook_size: int) -> Tensor:
    """Perplexity ``exp(H)`` of the empirical code distribution per level: ``codebook_size`` for
    uniform use, 1 for a single code.

    Parameters
    ----------
    codes : LongTensor[B x n_q x T']

    Returns
    -------
    Tensor[n_q]
    """
    p = code_histogram(codes, codebook_size)
    p = p / p.sum(dim=1, keepdim=True).clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1)
    return entropy.exp()


def code_usage(codes: Tensor, codebook_size: int) -> Tensor:
    """Fraction of the codebook used at least once, per level. ``codes``: LongTensor[B x n_q x T'];
    returns Tensor[n_q]."""
    return (code_histogram(codes, codebook_size) > 0).float().mean(dim=1)


class VAEBottleneck(nn.Module):
    """Gaussian bottleneck as Oobleck's: the encoder's ``2D`` channels are mean and a raw scale;
    ``std = softplus(scale) + 1e-4``. Training samples ``mean + std * eps``; eval returns the mean.

    KL to N(0, I) is summed over the latent dimension and averaged over batch and frames (the
    convention behind the paper's KL column).
    """

    def forward(self, h: Tensor) -> BottleneckOutput:
        """``h``: Tensor[B x 2D x T'] -> :class:`BottleneckOutput` with ``z`` Tensor[B x D x T']."""
        assert h.shape[1] % 2 == 0, f"vae bottleneck needs an even channel count, got {h.shape}"
        mean, scale = h.chunk(2, dim=1)
        std = F.softplus(scale) + 1e-4
        var = std * std
        kl = (mean * mean + var - torch.log(var) - 1).sum(dim=1).mean()
        # Reparameterisation: z = mean + std * eps keeps the sample differentiable in mean and std.
        z = mean + std * torch.randn_like(mean) if self.training else mean
        return BottleneckOutput(z=z, kl=kl)


class RVQBottleneck(nn.Module):
    """Residual vector quantization through ``vector_quantize_pytorch.ResidualVQ``.

    Codebooks are learned by EMA (``decay``), dead codes (used fewer than
    ``threshold_ema_dead_code`` times in a batch) are re-seeded from the batch, and the codebooks
    may be initialised by k-means on the first batch. Gradients reach the encoder through the
    straight-through estimator: the quantized output is ``x + (q - x).detach()``, i.e. ``q`` in
    value but the identity in the backward pass (``rotation_trick=True`` swaps in the rotation
    trick of Fifty et al. 2024 instead).

    Parameters
    ----------
    dim : int
        Latent dimension D.
    n_q : int
        Number of residual levels.
    codebook_size : int
    codebook_dim : int, optional
        Codebooks live in this dimension, behind linear projections, when it differs from ``dim``.
    """

    def __init__(
        self,
        dim: int,
        n_q: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        commitment_weight: float = 1.0,
        kmeans_init: bool = True,
        decay: float = 0.99,
        threshold_ema_dead_code: float = 2.0,
        rotation_trick: bool = False,
    ):
        super().__init__()
        self.dim, self.n_q, self.codebook_size = dim, n_q, codebook_size
        self.rvq = ResidualVQ(
            dim=dim,
            num_quantizers=n_q,
            codebook_size=codebook_size,
            codebook_dim=codebook_dim,
            commitment_weight=commitment_weight,
            kmeans_init=kmeans_init,
            decay=decay,
            threshold_ema_dead_code=threshold_ema_dead_code,
            rotation_trick=rotation_trick,
        )

    def forward(self, h: Tensor) -> BottleneckOutput:
        """``h``: Tensor[B x D x T'] -> z Tensor[B x D x T'], codes LongTensor[B x n_q x T']."""
        assert h.ndim == 3 and h.shape[1] == self.dim, (
            f"rvq bottleneck expects [B, {self.dim}, T'], got {tuple(h.shape)}"
        )
        # ResidualVQ works channel-last: [B, D, T'] -> [B, T', D]
        q, indices, commit = self.rvq(h.transpose(1, 2))
        codes = indices.transpose(1, 2).contiguous()  # [B, T', n_q] -> [B, n_q, T']
        with torch.no_grad():
            perplexity = code_perplexity(codes, self.codebook_size)
        return BottleneckOutput(
            z=q.transpose(1, 2),
            codes=codes,
            quantizer_loss=commit.mean(),  # commitment loss per level [n_q] -> averaged
            perplexity=perplexity,
        )

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        """Sum of the codebook vectors of all levels (projected back to ``dim``).

        Parameters
        ----------
        codes : LongTensor[B x n_q x T']

        Returns
        -------
        Tensor[B x D x T']
        """
        assert codes.ndim == 3 and codes.shape[1] == self.n_q, (
            f"codes must be [B, {self.n_q}, T'], got {tuple(codes.shape)}"
        )
        assert 0 <= int(codes.min()) and int(codes.max()) < self.codebook_size, (
            f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, "
            f"{int(codes.max())}]"
        )
        z = self.rvq.get_output_from_indices(codes.transpose(1, 2).long())  # [B, T', D]
        return z.transpose(1, 2)
