"""Convolutional building blocks of the Oobleck codec: Snake, weight-normed convs, encoder/decoder.

Introduced in notebook 02_audio_codec (the same layers serve 03_emg_audio_codec and 04_emg_codec).
Every block takes ``causal``: centred padding inside ``nn.Conv1d`` (False, the paper's), or the
visible left-only, stateful padding of :mod:`mlmlmlm.nn.cached` (True, streamable).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm
from torch.utils.checkpoint import checkpoint

from mlmlmlm.nn.cached import CausalConv1d, CausalConvTranspose1d

SNAKE_EPS = 1e-9


# --------------------------------------------------------------------------------------------
# Snake: x + sin(alpha x)^2 / (beta + eps)
# --------------------------------------------------------------------------------------------


def snake_plain(x: Tensor, alpha: Tensor, beta: Tensor | None = None) -> Tensor:
    """Snake activation written as plain elementwise torch ops (autograd saves every temporary).

    Parameters
    ----------
    x : Tensor[B x C x T]
    alpha : Tensor[1 x C x 1]
        Frequency (already positive, i.e. after ``exp`` for the log-scale parametrisation).
    beta : Tensor[1 x C x 1], optional
        Magnitude divisor; ``None`` means ``beta = alpha`` (DAC's Snake).

    Returns
    -------
    Tensor[B x C x T]
    """
    beta = alpha if beta is None else beta
    return x + (beta + SNAKE_EPS).reciprocal() * torch.sin(alpha * x).pow(2)


class _SnakeFunction(torch.autograd.Function):
    """Snake with a hand-written backward that saves only ``x``, ``alpha``, ``beta``.

    The plain version keeps ``alpha*x``, ``sin``, ``sin^2`` and the product alive for backward
    (four tensors the size of ``x``); this one keeps none of them and recomputes ``sin(2 alpha x)``
    in backward. The forward runs the same ops in the same order as :func:`snake_plain`
    (in place after the first), so values are bitwise equal.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        ctx.save_for_backward(x, alpha, beta)
        inv = (beta + SNAKE_EPS).reciprocal()
        return torch.sin(alpha * x).pow_(2).mul_(inv).add_(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, alpha, beta = ctx.saved_tensors
        inv = (beta + SNAKE_EPS).reciprocal()
        ax = alpha * x
        sin2 = torch.sin(2 * ax)  # d/du sin(u)^2 = sin(2u)
        dx = dalpha = dbeta = None
        if ctx.needs_input_grad[0]:
            dx = grad * (sin2 * (alpha * inv)).add_(1.0)
        if ctx.needs_input_grad[1]:
            dalpha = (grad * sin2 * x).sum(dim=(0, 2), keepdim=True) * inv
        if ctx.needs_input_grad[2]:
            sq = torch.sin(ax).pow_(2)
            dbeta = -(grad * sq).sum(dim=(0, 2), keepdim=True) * inv * inv
        return dx, dalpha, dbeta


def snake_fused(x: Tensor, alpha: Tensor, beta: Tensor | None = None) -> Tensor:
    """Snake activation through :class:`_SnakeFunction` (same values as :func:`snake_plain`).

    Parameters and returns as :func:`snake_plain`. Gradients for ``alpha`` (and ``beta``) are
    reduced over batch and time, so both must have shape ``[1, C, 1]``.
    """
    beta = alpha if beta is None else beta  # autograd adds both gradients when they are one tensor
    return _SnakeFunction.apply(x, alpha, beta)


class Snake(nn.Module):
    """Learnable Snake activation, one ``alpha`` (and optionally ``beta``) per channel.

    Parameters
    ----------
    channels : int
    logscale : bool
        Store ``log alpha`` (init 0, so alpha = 1) as Oobleck's SnakeBeta does; else alpha (init 1).
    separate_beta : bool
        Oobleck's SnakeBeta (an own magnitude ``beta``) when True, DAC's Snake (beta = alpha) else.
    fused : bool
        Use :func:`snake_fused` (less memory, same values) instead of :func:`snake_plain`.
    """

    def __init__(
        self, channels: int, logscale: bool = True, separate_beta: bool = True, fused: bool = True
    ):
        super().__init__()
        init = torch.zeros if logscale else torch.ones
        self.alpha = nn.Parameter(init(1, channels, 1))
        self.beta = nn.Parameter(init(1, channels, 1)) if separate_beta else None
        self.logscale = logscale
        self.fn = snake_fused if fused else snake_plain

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.alpha.exp() if self.logscale else self.alpha
        beta = self.beta
        if beta is not None and self.logscale:
            beta = beta.exp()
        return self.fn(x, alpha, beta)


# --------------------------------------------------------------------------------------------
# Weight-normed convolutions and Oobleck blocks
# --------------------------------------------------------------------------------------------


def wn_conv1d(*args, **kwargs) -> nn.Module:
    """``nn.Conv1d`` with weight norm (the parametrization API)."""
    return weight_norm(nn.Conv1d(*args, **kwargs))


class PointwiseConv1d(nn.Conv1d):
    """A kernel-1 ``nn.Conv1d`` computed as one batched matrix product (same parameters, same
    state dict, same values up to float rounding).

    oneDNN handles narrow kernel-1 convolutions badly on CPU: at 8 channels x 32768 samples a
    forward+backward took 24 ms as a convolution and 2.3 ms as ``baddbmm`` (2 cores; the
    cpu-scale codec has 12 of them at the full sample rate). ``x``: Tensor[B x C_in x T] ->
    Tensor[B x C_out x T]. ``batched_matmul = False`` (class attribute) takes the convolution
    path instead, for the benchmark's side-by-side comparison.
    """

    batched_matmul = True

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not self.batched_matmul:
            return super()._conv_forward(x, weight, bias)
        w = weight[:, :, 0].expand(x.shape[0], -1, -1)  # [B x C_out x C_in], no copy
        if bias is None:
            return torch.bmm(w, x)
        return torch.baddbmm(bias[None, :, None], w, x)


def wn_conv_transpose1d(*args, **kwargs) -> nn.Module:
    """``nn.ConvTranspose1d`` with weight norm (the parametrization API)."""
    return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


def conv(
    c_in: int,
    c_out: int,
    kernel_size: int,
    padding: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    bias: bool = True,
    causal: bool = False,
) -> nn.Module:
    """Weight-normed conv: centred (``padding`` samples on each side, inside ``nn.Conv1d``) or
    causal (:class:`~mlmlmlm.nn.cached.CausalConv1d`, which ignores ``padding`` and pads
    ``(k - 1) * dilation + 1 - stride`` on the left). Same parameters and state-dict keys."""
    if causal:
        return weight_norm(CausalConv1d(c_in, c_out, kernel_size, stride, dilation, bias))
    return wn_conv1d(
        c_in, c_out, kernel_size, stride=stride, dilation=dilation, padding=padding, bias=bias
    )


class ResidualUnit(nn.Module):
    """Snake -> conv k7 (dilated) -> Snake -> conv k1, added to the input. Keeps ``[B x C x T]``.

    "Same" padding keeps the length; the unit sees ``6 * dilation`` extra samples: ``3 * dilation``
    on each side (centred) or all ``6 * dilation`` before (causal).
    """

    def __init__(
        self,
        channels: int,
        dilation: int,
        checkpointing: bool = False,
        causal: bool = False,
        **snake_kw,
    ):
        super().__init__()
        self.layers = nn.Sequential(
            Snake(channels, **snake_kw),
            conv(channels, channels, 7, 3 * dilation, dilation=dilation, causal=causal),
            Snake(channels, **snake_kw),
            weight_norm(PointwiseConv1d(channels, channels)),
        )
        self.checkpointing = checkpointing

    def forward(self, x: Tensor) -> Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return x + checkpoint(self.layers, x, use_reentrant=False)
        return x + self.layers(x)


def _updown_padding(stride: int) -> tuple[int, int]:
    """Padding (and transposed-conv output padding) for a kernel-``2*stride`` resampling conv.

    With kernel 2s, stride s and padding p = ceil(s/2) a strided conv maps T = n*s samples to
    exactly n frames; the transposed conv gives n*s - s - 2p + 2s = n*s + (s - 2p) samples, so an
    output padding of 2p - s (= s mod 2) makes odd strides exact too.
    """
    pad = math.ceil(stride / 2)
    return pad, 2 * pad - stride


class EncoderBlock(nn.Module):
    """Residual units (dilations 1, 3, 9) then Snake + strided conv: ``[B x C_in x T]`` ->
    ``[B x C_out x T/stride]`` (downsampling AFTER the residual units, paper Fig. 5a)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int,
        checkpointing: bool = False,
        causal: bool = False,
        **snake_kw,
    ):
        super().__init__()
        pad, _ = _updown_padding(stride)
        self.layers = nn.Sequential(
            *(ResidualUnit(c_in, d, checkpointing, causal, **snake_kw) for d in (1, 3, 9)),
            Snake(c_in, **snake_kw),
            conv(c_in, c_out, 2 * stride, pad, stride=stride, causal=causal),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class DecoderBlock(nn.Module):
    """Snake + transposed conv then residual units (1, 3, 9): ``[B x C_in x T']`` ->
    ``[B x C_out x T'*stride]`` (upsampling BEFORE the residual units, paper Fig. 5b)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int,
        checkpointing: bool = False,
        causal: bool = False,
        **snake_kw,
    ):
        super().__init__()
        pad, out_pad = _updown_padding(stride)
        if causal:  # no padding: the overlap-add tail waits for the next frame (cached.py)
            up = weight_norm(CausalConvTranspose1d(c_in, c_out, 2 * stride, stride))
        else:
            up = wn_conv_transpose1d(
                c_in, c_out, 2 * stride, stride=stride, padding=pad, output_padding=out_pad
            )
        self.layers = nn.Sequential(
            Snake(c_in, **snake_kw),
            up,
            *(ResidualUnit(c_out, d, checkpointing, causal, **snake_kw) for d in (1, 3, 9)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _widths(channels: int, c_mults: list[int]) -> list[int]:
    # Oobleck prepends 1: the input conv gives `channels`, block i maps widths[i] -> widths[i+1].
    return [channels * m for m in [1, *c_mults]]


class OobleckEncoder(nn.Module):
    """Conv k7 -> EncoderBlocks -> Snake -> conv k3: ``[B x C x T]`` -> ``[B x out_dim x T/hop]``.

    ``T`` must be a multiple of ``hop = prod(strides)`` (the codec pads before calling this).
    Causal: frame ``j`` depends on samples ``< (j + 1) * hop`` only, and streams in chunks of
    whole hops with no delay.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        c_mults: list[int],
        strides: list[int],
        out_dim: int,
        checkpointing: bool = False,
        causal: bool = False,
        **snake_kw,
    ):
        super().__init__()
        w = _widths(channels, c_mults)
        self.layers = nn.Sequential(
            conv(in_channels, w[0], 7, 3, causal=causal),
            *(
                EncoderBlock(w[i], w[i + 1], s, checkpointing, causal, **snake_kw)
                for i, s in enumerate(strides)
            ),
            Snake(w[-1], **snake_kw),
            conv(w[-1], out_dim, 3, 1, causal=causal),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class OobleckDecoder(nn.Module):
    """Conv k7 -> DecoderBlocks (strides reversed) -> Snake -> conv k7 (no bias):
    ``[B x latent_dim x T']`` -> ``[B x out_channels x T'*hop]``. No final tanh (EMG is not
    bounded to [-1, 1]). Causal: samples ``j*hop .. (j+1)*hop - 1`` depend on frames ``<= j``
    only, and stream frame by frame with no delay."""

    def __init__(
        self,
        out_channels: int,
        channels: int,
        c_mults: list[int],
        strides: list[int],
        latent_dim: int,
        checkpointing: bool = False,
        causal: bool = False,
        **snake_kw,
    ):
        super().__init__()
        w = _widths(channels, c_mults)
        n = len(strides)
        self.layers = nn.Sequential(
            conv(latent_dim, w[-1], 7, 3, causal=causal),
            *(
                DecoderBlock(w[i + 1], w[i], strides[i], checkpointing, causal, **snake_kw)
                for i in reversed(range(n))
            ),
            Snake(w[0], **snake_kw),
            conv(w[0], out_channels, 7, 3, bias=False, causal=causal),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _conv_geometry(m: nn.Module) -> tuple[int, int, int] | None:
    if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
        return m.kernel_size[0], m.dilation[0], m.stride[0]
    return None


def encoder_receptive_field(convs: Iterable[nn.Module]) -> int:
    """Receptive field, in input samples, of a chain of (strided, dilated) 1-D convs.

    Walks the convs in forward order: each adds ``(k - 1) * dilation * jump`` samples, where
    ``jump`` is the product of the strides before it. Residual branches only widen the field, so
    summing over every conv of the encoder (identity paths add nothing) is exact.
    """
    rf, jump = 1, 1
    for m in convs:
        geo = _conv_geometry(m)
        if geo is None:
            continue
        k, d, s = geo
        rf += (k - 1) * d * jump
        jump *= s
    return rf


def decoder_receptive_field(convs: Iterable[nn.Module]) -> float:
    """How many latent frames one output sample of a decoder depends on (may be fractional
    before rounding up: a kernel-2s transposed conv reaches 2 input frames, a k7 conv after
    upsampling by a factor u reaches 6/u more)."""
    rf, jump = 1.0, 1.0  # jump: latent frames per sample at the current layer's input
    for m in convs:
        geo = _conv_geometry(m)
        if geo is None:
            continue
        k, d, s = geo
        if isinstance(m, nn.ConvTranspose1d):
            rf += (math.ceil(k / s) - 1) * jump
            jump /= s
        else:
            rf += (k - 1) * d * jump
    return rf


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Right-pad ``[B x C x T]`` with zeros to the next multiple of ``multiple`` samples."""
    extra = (-x.shape[-1]) % multiple
    return F.pad(x, (0, extra)) if extra else x
