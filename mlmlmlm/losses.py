"""Codec training losses: per-channel multi-resolution STFT, KL / quantizer terms, and an
EnCodec-style multi-scale STFT discriminator (hinge adversarial + feature matching).

Introduced in notebook 02_audio_codec; 03_emg_audio_codec shows the per-modality settings.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from auraloss.freq import MultiResolutionSTFTLoss
from auraloss.perceptual import FIRFilter
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

# Loss weights of stable-audio-tools' Oobleck recipe, which the paper's runs used. The keys are
# the paper's table columns. With these weights "train" is the column sum of the weighted terms:
# e.g. Table 2, A RVQ-VAE 3: 0.620433 (mrstft) + 0.152697 (quantizer) = 0.773132 (train),
# which also shows the paper's columns are logged AFTER weighting.
DEFAULT_LAMBDAS = {
    "mrstft": 1.0,
    "kl": 1e-4,
    "quantizer": 1.0,
    "adversarial": 0.1,
    "feature_matching": 5.0,
}


@dataclass
class LossConfig:
    """Loss settings; ``lambdas`` keys are the logged metric names (missing keys take defaults).

    ``audio_channels`` lists the input channels that are audio (``[0]`` for audio and EMG+audio
    codecs, ``[]`` for the EMG codec): only they get A-weighting and ``fft_sizes``; every other
    channel is EMG and uses ``emg_fft_sizes`` (``None``: same as ``fft_sizes``) without weighting.
    """

    lambdas: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LAMBDAS))
    fft_sizes: list[int] = field(default_factory=lambda: [2048, 1024, 512, 256, 128, 64, 32])
    perceptual_weighting: bool = True
    audio_channels: list[int] = field(default_factory=lambda: [0])
    emg_fft_sizes: list[int] | None = None
    # EMG channels scored on this many mel bands instead of single FFT bins (auraloss's
    # scale="mel"; below 1 kHz mel bands are nearly linear). None: per-bin, as the paper.
    emg_mel_bins: int | None = None
    discriminator: bool = False
    disc_channels: int = 32
    disc_fft_sizes: list[int] = field(default_factory=lambda: [2048, 1024, 512, 256, 128])
    disc_start_step: int = 0
    # KL weight ramps linearly from 0 to kl_beta over these steps (0 = full weight from step 0).
    # Short runs need it: Adam rescales the small but consistent KL gradient to a full-size
    # step, which shrinks the encoder's means to a constant before the decoder learns to use them.
    kl_warmup_steps: int = 0

    def __post_init__(self):
        unknown = set(self.lambdas) - set(DEFAULT_LAMBDAS)
        if unknown:
            raise ValueError(
                f"unknown loss weights {sorted(unknown)}; known: {list(DEFAULT_LAMBDAS)}"
            )
        self.lambdas = {**DEFAULT_LAMBDAS, **self.lambdas}


def _mrstft(fft_sizes: list[int], mel_bins: int | None = None,
            sample_rate: float | None = None) -> nn.Module:
    # hop = fft/4, window = fft, Hann (paper); auraloss defaults: spectral convergence + log-mag L1
    mel = {"scale": "mel", "n_bins": mel_bins, "sample_rate": sample_rate} if mel_bins else {}
    return MultiResolutionSTFTLoss(
        fft_sizes=list(fft_sizes),
        hop_sizes=[n // 4 for n in fft_sizes],
        win_lengths=list(fft_sizes),
        window="hann_window",
        **mel,
    )


class AWeighting(nn.Module):
    """auraloss's A-weighting pre-filter (101-tap FIR fitted to IEC A-weighting), applied ONCE.

    ``MultiResolutionSTFTLoss(perceptual_weighting=True)`` filters both signals again inside
    every resolution (7 times for the paper's FFT sizes); the filter is linear and the same each
    time, so filtering once and scoring unweighted gives the same loss. On 2 CPU cores the
    repeated 1-channel 101-tap convolution was about a quarter of a cpu-scale training step.
    ``recon, x``: Tensor[B x 1 x T] -> both filtered, same shape (``x`` without autograd).
    """

    def __init__(self, sample_rate: float):
        super().__init__()
        taps = FIRFilter(filter_type="aw", fs=sample_rate).fir.weight.detach().clone()  # [1,1,101]
        self.register_buffer("taps", taps, persistent=False)  # a constant: not in checkpoints

    def forward(self, recon: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        pad = self.taps.shape[-1] // 2  # "same" length, as auraloss
        with torch.no_grad():
            x = F.conv1d(x, self.taps, padding=pad)
        return F.conv1d(recon, self.taps, padding=pad), x


# --------------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------------


class STFTDiscriminator(nn.Module):
    """One scale: complex STFT (real and imaginary part = 2 input planes per signal channel) ->
    weight-normed 2-D conv stack over (time, frequency) -> logits.

    ``x``: Tensor[B x C x T] -> logits Tensor[B x 1 x frames x F'] and the feature maps.
    """

    def __init__(self, in_channels: int, filters: int, n_fft: int, dilations=(1, 2, 4)):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

        def conv(c_in, c_out, kernel, stride=(1, 1), dilation=(1, 1)):
            pad = ((kernel[0] - 1) * dilation[0] // 2, (kernel[1] - 1) * dilation[1] // 2)
            return weight_norm(nn.Conv2d(c_in, c_out, kernel, stride, pad, dilation))

        # kernel (3, 9) = 3 frames x 9 bins; stride 2 halves the frequency axis
        layers = [conv(2 * in_channels, filters, (3, 9))]
        layers += [conv(filters, filters, (3, 9), (1, 2), (d, 1)) for d in dilations]
        layers += [conv(filters, filters, (3, 3))]
        self.convs = nn.ModuleList(layers)
        self.post = conv(filters, 1, (3, 3))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, c, t = x.shape
        spec = torch.stft(
            x.reshape(b * c, t),
            self.n_fft,
            self.n_fft // 4,
            window=self.window,
            normalized=True,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )  # [B*C, F, frames]
        z = torch.view_as_real(spec)  # [B*C, F, frames, 2]
        z = z.reshape(b, c, *z.shape[1:]).permute(0, 1, 4, 3, 2)  # [B, C, 2, frames, F]
        z = z.reshape(b, 2 * c, z.shape[3], z.shape[4])  # [B, 2C, frames, F]
        features = []
        for layer in self.convs:
            z = self.act(layer(z))
            features.append(z)
        return self.post(z), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """EnCodec-style MS-STFT discriminator: one :class:`STFTDiscriminator` per FFT size."""

    def __init__(self, in_channels: int, filters: int, fft_sizes: list[int]):
        super().__init__()
        self.scales = nn.ModuleList(STFTDiscriminator(in_channels, filters, n) for n in fft_sizes)

    def forward(self, x: Tensor) -> list[tuple[Tensor, list[Tensor]]]:
        """``x``: Tensor[B x C x T] -> per scale ``(logits, feature maps)``."""
        return [d(x) for d in self.scales]


@contextmanager
def _frozen(module: nn.Module):
    """Switch off parameter gradients inside the block, so the generator's adversarial terms
    leave no gradient on the discriminator."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


# --------------------------------------------------------------------------------------------
# The codec loss
# --------------------------------------------------------------------------------------------


class CodecLoss(nn.Module):
    """All codec losses of the paper, keyed as its table columns.

    Parameters
    ----------
    cfg : LossConfig
    sample_rate : float
        Rate of the audio channels (for A-weighting).
    in_channels : int
        Channels of the signals (sizes the discriminator input).
    """

    def __init__(self, cfg: LossConfig, sample_rate: float = 44100.0, in_channels: int = 1):
        super().__init__()
        bad = [c for c in cfg.audio_channels if not 0 <= c < in_channels]
        if bad:
            raise ValueError(f"audio_channels {bad} out of range for {in_channels} channels")
        self.cfg, self.in_channels, self.sample_rate = cfg, in_channels, sample_rate
        self.mrstft_audio = _mrstft(cfg.fft_sizes)
        self.a_weighting = AWeighting(sample_rate) if cfg.perceptual_weighting else None
        self.mrstft_emg = _mrstft(cfg.emg_fft_sizes or cfg.fft_sizes, cfg.emg_mel_bins, sample_rate)
        self.disc = (
            MultiScaleSTFTDiscriminator(in_channels, cfg.disc_channels, cfg.disc_fft_sizes)
            if cfg.discriminator
            else None
        )

    @classmethod
    def for_codec(cls, cfg: LossConfig, codec_cfg) -> CodecLoss:
        """Build for a :class:`~mlmlmlm.models.codec.CodecConfig`: its rate and channel count,
        and its ``kl_beta`` as the KL weight (beta is an architecture setting in Tables 1, 3, 5).
        A ``lambdas["kl"]`` that was changed from the default and disagrees with ``kl_beta`` is
        an error, so beta is never set in two places that silently differ."""
        kl = cfg.lambdas["kl"]
        if kl != DEFAULT_LAMBDAS["kl"] and kl != codec_cfg.kl_beta:
            raise ValueError(
                f"loss.lambdas['kl']={kl} disagrees with model.kl_beta={codec_cfg.kl_beta}: "
                "set the KL weight with model.kl_beta"
            )
        cfg = replace(cfg, lambdas={**cfg.lambdas, "kl": codec_cfg.kl_beta})
        return cls(cfg, codec_cfg.sample_rate, codec_cfg.in_channels)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As ``nn.Module``'s, but checkpoints written while auraloss applied the A-weighting
        carry its (constant) FIR taps once per resolution under ``...prefilter.fir.weight``:
        those keys are dropped, so such runs still resume."""
        state_dict = {k: v for k, v in state_dict.items() if ".prefilter." not in k}
        return super().load_state_dict(state_dict, strict, assign)

    @property
    def has_discriminator(self) -> bool:
        return self.disc is not None

    def discriminator_parameters(self):
        """Parameters for the discriminator's optimizer (empty without a discriminator)."""
        return iter(()) if self.disc is None else self.disc.parameters()

    def disc_active(self, step: int) -> bool:
        """Whether the adversarial terms (and the discriminator update) run at ``step``."""
        return self.has_discriminator and step >= self.cfg.disc_start_step

    def mrstft_per_channel(self, recon: Tensor, x: Tensor) -> Tensor:
        """MRSTFT per channel: A-weighted for audio channels, plain (EMG FFT sizes) otherwise.

        Each channel is scored separately (spectral convergence normalises by that channel's
        own energy) so quiet EMG channels count as much as loud audio.

        Parameters
        ----------
        recon, x : Tensor[B x C x T]

        Returns
        -------
        Tensor[C]
        """
        assert recon.shape == x.shape, f"recon {tuple(recon.shape)} != target {tuple(x.shape)}"
        audio = set(self.cfg.audio_channels)
        losses = []
        for c in range(x.shape[1]):
            r, t = recon[:, c : c + 1], x[:, c : c + 1]
            if c not in audio:
                losses.append(self.mrstft_emg(r, t))
                continue
            if self.a_weighting is not None:
                r, t = self.a_weighting(r, t)
            # auraloss takes (input, target); the spectral convergence divides by the target
            losses.append(self.mrstft_audio(r, t))
        return torch.stack(losses)

    def weighted(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """``lambdas[k] * terms[k]`` for every loss term (``train`` and ``disc`` pass through):
        the scale of the paper's table columns, which were logged after weighting."""
        return {
            k: self.cfg.lambdas[k] * v if k in self.cfg.lambdas else v for k, v in terms.items()
        }

    def weighted_total(self, terms: dict[str, Tensor], kl_scale: float = 1.0) -> Tensor:
        """``sum(lambdas[k] * terms[k])`` over the terms present, the KL's weight times
        ``kl_scale`` (the warm-up ramp)."""
        return sum(self.cfg.lambdas[k] * v * (kl_scale if k == "kl" else 1.0)
                   for k, v in terms.items())

    def generator(self, x: Tensor, out, step: int) -> dict[str, Tensor]:
        """Generator (codec) losses.

        Parameters
        ----------
        x : Tensor[B x C x T]
            Target signals.
        out : CodecOutput
        step : int
            Global step (adversarial terms start at ``disc_start_step``; the KL weight ramps up
            over ``kl_warmup_steps``).

        Returns
        -------
        dict[str, Tensor]
            Unweighted scalars ``mrstft``, ``kl`` (vae) or ``quantizer`` (rvq), ``adversarial``
            and ``feature_matching`` (discriminator on and active), and ``train``: the weighted
            sum to backpropagate. Absent terms are absent keys (— in the tables).
        """
        recon = out.recon
        terms = {"mrstft": self.mrstft_per_channel(recon, x).mean()}
        if out.kl is not None:
            terms["kl"] = out.kl
        ramp = min(1.0, step / self.cfg.kl_warmup_steps) if self.cfg.kl_warmup_steps else 1.0
        if out.quantizer_loss is not None:
            terms["quantizer"] = out.quantizer_loss
        if self.disc_active(step):
            with _frozen(self.disc):
                with torch.no_grad():
                    real = self.disc(x)
                fake = self.disc(recon)
            # hinge generator loss -D(x_hat); feature matching: L1 of every feature map,
            # averaged over layers, then over scales (stable-audio-tools' convention)
            terms["adversarial"] = torch.stack([-lf.mean() for lf, _ in fake]).mean()
            fm = [
                torch.stack([(a - b).abs().mean() for a, b in zip(fr, ff)]).mean()
                for (_, fr), (_, ff) in zip(real, fake)
            ]
            terms["feature_matching"] = torch.stack(fm).mean()
        terms["train"] = self.weighted_total(terms, kl_scale=ramp)
        return terms

    def discriminator(self, x: Tensor, recon: Tensor) -> dict[str, Tensor]:
        """Discriminator hinge loss ``relu(1 - D(x)) + relu(1 + D(x_hat))``, mean over scales.

        Parameters
        ----------
        x : Tensor[B x C x T]
        recon : Tensor[B x C x T]
            Detached here as well, so no gradient reaches the codec.

        Returns
        -------
        dict[str, Tensor]
            ``{"disc": Tensor[]}``.
        """
        if self.disc is None:
            raise RuntimeError("discriminator() called but LossConfig.discriminator is False")
        real, fake = self.disc(x), self.disc(recon.detach())
        per_scale = [
            torch.relu(1 - lr).mean() + torch.relu(1 + lf).mean()
            for (lr, _), (lf, _) in zip(real, fake)
        ]
        return {"disc": torch.stack(per_scale).mean()}
