"""The one codec class (Oobleck encoder/decoder + vae or rvq bottleneck) and its config.

Introduced in notebook 02_audio_codec; 03_emg_audio_codec and 04_emg_codec use the same class
with another configuration (7 or 6 channels, 196 conv channels, its own sample rate).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from mlmlmlm.nn.cached import FrameBuffer1d, caches, reset_state, set_streaming
from mlmlmlm.nn.layers import (
    OobleckDecoder,
    OobleckEncoder,
    decoder_receptive_field,
    encoder_receptive_field,
    pad_to_multiple,
)
from mlmlmlm.nn.quantize import BottleneckOutput, RVQBottleneck, VAEBottleneck

BOTTLENECKS = ("vae", "rvq")


@dataclass
class CodecConfig:
    """Codec hyperparameters. Defaults are the paper's audio codec (Table 1, A RVQ-VAE 1/3).

    ``kl_beta`` is read by the loss (:meth:`mlmlmlm.losses.CodecLoss.for_codec`), not the model.
    The ``snake_*`` and ``checkpointing`` keys change speed or memory, never the architecture
    of the paper (Oobleck's SnakeBeta in log scale); ``rotation_trick`` swaps the RVQ gradient
    estimator (off = straight-through, as the paper's library version did).

    ``threshold_ema_dead_code``: a code whose EMA use count (codes per batch, decay ``decay``)
    falls below it is re-seeded from the batch. With few latent frames per batch and a large
    codebook (our ``cpu`` scale: 64 frames, 128 codes) the mean count is below 1 and about 40% of
    the codes are re-seeded at every step; a lower threshold (0.2) made the cpu-scale A RVQ-VAE 3
    worse (identifiability 0.48 against 0.75), so the paper's 2 stays.

    ``causal``: left-only, cached padding in every conv (:mod:`mlmlmlm.nn.cached`), so the codec
    streams chunk by chunk (:meth:`Codec.encode_stream`, :meth:`Codec.decode_stream`) with an
    algorithmic latency of one hop. Off (the paper's centred padding) by default; both variants
    have the same parameters and state-dict keys.
    """

    in_channels: int = 1
    channels: int = 128
    c_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    strides: list[int] = field(default_factory=lambda: [2, 4, 4, 8, 8])
    latent_dim: int = 64
    bottleneck: str = "rvq"
    n_q: int = 4
    codebook_size: int = 2048
    codebook_dim: int | None = None
    kl_beta: float = 1e-4
    commitment_weight: float = 1.0
    kmeans_init: bool = True
    decay: float = 0.99
    threshold_ema_dead_code: float = 2.0
    rotation_trick: bool = False
    sample_rate: float = 44100.0
    snake_logscale: bool = True
    snake_beta: bool = True
    fused_snake: bool = True
    checkpointing: bool = False
    causal: bool = False

    def __post_init__(self):
        if self.bottleneck not in BOTTLENECKS:
            raise ValueError(f"bottleneck must be one of {BOTTLENECKS}, got {self.bottleneck!r}")
        if len(self.c_mults) != len(self.strides):
            raise ValueError(
                f"c_mults {self.c_mults} and strides {self.strides} must have the same length"
            )
        if any(s < 2 for s in self.strides):
            raise ValueError(f"every stride must be >= 2 (kernel 2*stride), got {self.strides}")

    @property
    def hop(self) -> int:
        """Input samples per latent frame, ``prod(strides)`` (2048 for the paper)."""
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        """Latent frames per second (21.53 Hz for the paper at 44.1 kHz)."""
        return self.sample_rate / self.hop

    @property
    def encoder_out_dim(self) -> int:
        return 2 * self.latent_dim if self.bottleneck == "vae" else self.latent_dim


@dataclass
class EncodeResult:
    """z : Tensor[B x D x T'] (quantized for rvq; the mean in eval for vae);
    codes : LongTensor[B x n_q x T'] or ``None`` (vae)."""

    z: Tensor
    codes: Tensor | None


@dataclass
class CodecOutput:
    """Everything one forward pass gives the loss and the logs.

    recon : Tensor[B x C x T]          reconstruction, cropped to the input length
    z : Tensor[B x D x T']             latents the decoder saw
    codes : LongTensor[B x n_q x T']   rvq only
    kl : Tensor[]                      vae only
    quantizer_loss : Tensor[]          rvq only
    perplexity : Tensor[n_q]           rvq only
    """

    recon: Tensor
    z: Tensor
    codes: Tensor | None = None
    kl: Tensor | None = None
    quantizer_loss: Tensor | None = None
    perplexity: Tensor | None = None


class Codec(nn.Module):
    """Oobleck autoencoder with a ``vae`` or ``rvq`` bottleneck, for any channel count.

    Lengths: the input ``[B x C x T]`` is right-padded with zeros to ``T_pad = hop * ceil(T/hop)``,
    encoded to ``T' = T_pad / hop`` frames, decoded to ``T_pad`` samples and cropped back to ``T``.
    The zero tail is part of what the encoder sees, so the last frame of a length that is not a
    multiple of ``hop`` differs from that of the longer signal.

    A ``causal`` codec also streams: :meth:`encode_stream` takes chunks of any length and emits
    the frames they complete, :meth:`decode_stream` / :meth:`decode_codes_stream` take frames,
    and the concatenated chunks equal the offline :meth:`encode` / :meth:`decode` (no delay).
    Frame ``j`` needs input samples up to ``(j + 1) * hop - 1`` and decodes to output samples
    ``j*hop .. (j+1)*hop - 1``, so the algorithmic latency is one hop (:attr:`latency_samples`)
    plus compute. Stream in eval mode under ``torch.inference_mode()`` and
    ``torch.nn.utils.parametrize.cached()`` (weight norm computed once, not per chunk); see
    :mod:`mlmlmlm.bench_stream`.

    Parameters
    ----------
    cfg : CodecConfig
    """

    # a frozen copy's compiled one-frame streaming graphs
    # (:class:`~mlmlmlm.models.frozen_codec.CompiledStream`); None: the modules, eagerly
    stream_steps = None

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        snake_kw = {
            "logscale": cfg.snake_logscale,
            "separate_beta": cfg.snake_beta,
            "fused": cfg.fused_snake,
        }
        self.encoder = OobleckEncoder(
            cfg.in_channels,
            cfg.channels,
            cfg.c_mults,
            cfg.strides,
            cfg.encoder_out_dim,
            cfg.checkpointing,
            cfg.causal,
            **snake_kw,
        )
        if cfg.bottleneck == "vae":
            self.bottleneck = VAEBottleneck()
        else:
            self.bottleneck = RVQBottleneck(
                cfg.latent_dim,
                cfg.n_q,
                cfg.codebook_size,
                cfg.codebook_dim,
                cfg.commitment_weight,
                cfg.kmeans_init,
                cfg.decay,
                cfg.threshold_ema_dead_code,
                cfg.rotation_trick,
            )
        self.decoder = OobleckDecoder(
            cfg.in_channels,
            cfg.channels,
            cfg.c_mults,
            cfg.strides,
            cfg.latent_dim,
            cfg.checkpointing,
            cfg.causal,
            **snake_kw,
        )
        if cfg.causal:  # encode_stream's input: samples wait here until they make whole hops
            self.frames = FrameBuffer1d(cfg.hop)
        self._caches = caches(self)  # the stateful streaming layers (none when centred)

    # ---------------------------------------------------------------- shape checks
    def _check_input(self, x: Tensor) -> None:
        c = self.cfg.in_channels
        assert x.ndim == 3 and x.shape[1] == c, (
            f"codec expects [B, {c}, T] (in_channels={c}), got {tuple(x.shape)}"
        )

    def _check_latents(self, z: Tensor) -> None:
        d = self.cfg.latent_dim
        assert z.ndim == 3 and z.shape[1] == d, (
            f"latents must be [B, {d}, T'] (latent_dim={d}), got {tuple(z.shape)}"
        )

    # ---------------------------------------------------------------- API
    def _bottleneck(self, x: Tensor) -> BottleneckOutput:
        self._check_input(x)
        self._stream_mode(False)
        x = pad_to_multiple(x, self.cfg.hop)  # [B, C, T] -> [B, C, T_pad]
        h = self.encoder(x)  # [B, encoder_out_dim, T_pad / hop]
        return self.bottleneck(h)

    def encode(self, x: Tensor) -> EncodeResult:
        """``x``: Tensor[B x C x T] -> :class:`EncodeResult` with ``T' = ceil(T / hop)``.

        Call it in eval mode to pre-encode tokens: in training mode the rvq bottleneck updates
        its EMA codebooks and the vae one samples.
        """
        b = self._bottleneck(x)
        return EncodeResult(z=b.z, codes=b.codes)

    def decode(self, z: Tensor, length: int | None = None) -> Tensor:
        """``z``: Tensor[B x D x T'] -> Tensor[B x C x T'*hop], cropped to ``length`` if given."""
        self._check_latents(z)
        self._stream_mode(False)
        y = self.decoder(z)
        return y if length is None else y[..., :length]

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        """``codes``: LongTensor[B x n_q x T'] -> Tensor[B x D x T'] (rvq only)."""
        if self.cfg.bottleneck != "rvq":
            raise ValueError("codes_to_latents needs bottleneck='rvq'")
        return self.bottleneck.codes_to_latents(codes)

    def decode_codes(self, codes: Tensor, length: int | None = None) -> Tensor:
        """``codes``: LongTensor[B x n_q x T'] -> Tensor[B x C x T'*hop] (or ``length``)."""
        return self.decode(self.codes_to_latents(codes), length)

    def forward(self, x: Tensor) -> CodecOutput:
        """``x``: Tensor[B x C x T] -> :class:`CodecOutput` with ``recon`` Tensor[B x C x T]."""
        length = x.shape[-1]
        b = self._bottleneck(x)
        recon = self.decode(b.z, length)
        assert recon.shape == x.shape, f"recon {tuple(recon.shape)} != input {tuple(x.shape)}"
        return CodecOutput(
            recon=recon,
            z=b.z,
            codes=b.codes,
            kl=b.kl,
            quantizer_loss=b.quantizer_loss,
            perplexity=b.perplexity,
        )

    # ---------------------------------------------------------------- streaming (causal only)
    def _stream_mode(self, on: bool) -> None:
        # Entering or leaving streaming mode starts every cached layer from zeros: an offline
        # call in the middle of a stream ends that stream.
        if on and not self.cfg.causal:
            raise ValueError("streaming needs a causal codec (CodecConfig.causal=True)")
        if on and self.training:
            raise ValueError("stream in eval mode (codec.eval()): training updates the codebooks")
        if any(c.streaming != on for c in self._caches):
            set_streaming(self, on)

    def reset_stream(self) -> None:
        """Start a new stream: the next chunk is the beginning of a signal (zero history)."""
        reset_state(self)

    def encode_stream(self, x: Tensor) -> EncodeResult:
        """Encode the next chunk of a stream.

        Parameters
        ----------
        x : Tensor[B x C x T]
            The next ``T`` samples, any ``T``: samples that do not yet complete a frame wait in
            :attr:`frames` (a :class:`~mlmlmlm.nn.cached.FrameBuffer1d`) for the next chunk, and
            the encoder keeps what later frames still see.

        Returns
        -------
        EncodeResult
            ``z`` Tensor[B x D x n] and ``codes`` LongTensor[B x n_q x n] (rvq) for the ``n``
            frames completed by this chunk (``n`` may be 0; ``n = T / hop`` when every chunk is
            whole hops), the same frames :meth:`encode` gives for the whole signal.
        """
        self._check_input(x)
        self._stream_mode(True)
        x = self.frames(x)  # [B, C, n*hop]
        if x.shape[-1] == 0:  # no frame completed yet: empty z (and codes)
            b, rvq = x.shape[0], self.cfg.bottleneck == "rvq"
            codes = x.new_zeros(b, self.cfg.n_q, 0, dtype=torch.long) if rvq else None
            return EncodeResult(z=x.new_zeros(b, self.cfg.latent_dim, 0), codes=codes)
        if self.stream_steps is not None:  # a compiled frozen copy's one-frame graphs
            z, codes = self.stream_steps.encode(x)
            return EncodeResult(z=z, codes=codes)
        b = self.bottleneck(self.encoder(x))  # per frame: the RVQ streams as it is
        return EncodeResult(z=b.z, codes=b.codes)

    def decode_stream(self, z: Tensor) -> Tensor:
        """``z``: Tensor[B x D x n] (the next ``n`` frames) -> Tensor[B x C x n*hop], the samples
        :meth:`decode` gives for those frames of the whole signal."""
        self._check_latents(z)
        self._stream_mode(True)
        if z.shape[-1] == 0:  # nothing to decode (encode_stream completed no frame)
            return z.new_zeros(z.shape[0], self.cfg.in_channels, 0)
        return self.decoder(z)

    def decode_codes_stream(self, codes: Tensor) -> Tensor:
        """``codes``: LongTensor[B x n_q x n] -> Tensor[B x C x n*hop] (rvq only)."""
        if self.stream_steps is not None:
            self._stream_mode(True)
            return self.stream_steps.decode_codes(codes)
        return self.decode_stream(self.codes_to_latents(codes))

    @property
    def latency_samples(self) -> int | None:
        """Algorithmic latency of streaming, in input samples: one hop for a causal codec (a frame
        is encoded when its last sample has arrived, and decodes to the hop it covers; the
        layers add no delay of their own). ``None`` for a centred codec, which cannot stream."""
        return self.cfg.hop if self.cfg.causal else None

    @property
    def latency_ms(self) -> float | None:
        """:attr:`latency_samples` in milliseconds (11.6 ms for hop 256 at 22.05 kHz)."""
        n = self.latency_samples
        return None if n is None else 1000.0 * n / self.cfg.sample_rate

    # ---------------------------------------------------------------- description
    def num_params(self) -> int:
        """Trainable parameters (RVQ codebooks are EMA buffers and are not counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def receptive_field(self) -> int:
        """Encoder receptive field in input samples: how many samples one latent frame sees
        (centred: about half of it lies after the frame; causal: all of it ends with the frame)."""
        return encoder_receptive_field(self.encoder.modules())

    def decoder_receptive_field(self) -> int:
        """Latent frames that one output sample depends on (rounded up)."""
        return math.ceil(decoder_receptive_field(self.decoder.modules()))

    def describe(self) -> dict:
        """Size and timing summary for run cards (JSON-friendly)."""
        cfg = self.cfg
        rf = self.receptive_field()
        return {
            "params": self.num_params(),
            "hop": cfg.hop,
            "sample_rate": cfg.sample_rate,
            "frame_rate_hz": cfg.frame_rate,
            "receptive_field_samples": rf,
            "receptive_field_ms": 1000.0 * rf / cfg.sample_rate,
            "decoder_receptive_field_frames": self.decoder_receptive_field(),
            "bottleneck": cfg.bottleneck,
            "causal": cfg.causal,
            "latency_samples": self.latency_samples,
            "latency_ms": self.latency_ms,
            "config": asdict(cfg),
        }


def build_on_meta(cfg: CodecConfig) -> Codec:
    """Build a codec without allocating weights (for counting paper-scale parameters)."""
    with torch.device("meta"):
        return Codec(cfg)
