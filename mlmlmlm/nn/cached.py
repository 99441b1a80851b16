"""Streaming layers (the cached_conv pattern of RAVE): visible padding that keeps state, causal
convolutions, strided and transposed, whose chunk-by-chunk output equals their offline output.

Introduced in notebook 02_audio_codec (causal codecs, ``CodecConfig.causal``); the live engine
streams the codecs through them.

Every layer here is causal and adds **no delay**: output sample ``t`` (or frame ``j``) depends
only on inputs up to ``t`` (up to the last sample of frame ``j``), so the streamed output equals
the offline output sample for sample, with nothing to trim. Offline, the state is zeros (the
same left zero-padding a causal conv uses); in streaming mode it is the end of the previous chunk.

    model = Codec(CodecConfig(causal=True, ...)).eval()
    set_streaming(model, True)     # every CachedPad1d / CachedOverlapAdd1d keeps state
    ...                            # feed chunks (multiples of the hop)
    reset_state(model)             # a new stream: zeros again
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Cache(nn.Module):
    """A stateful piece of a streaming layer. ``state`` is a plain attribute, not a buffer, so it
    never enters a state dict (causal and centred codecs share their keys)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.streaming = False
        self.state: Tensor | None = None

    def reset_state(self) -> None:
        self.state = None

    def _state_for(self, x: Tensor) -> Tensor:
        # Zeros at the start of a stream, i.e. the offline left padding. The fixed-size states
        # (pad, overlap-add) are then written in place (``_keep``): the same tensor for the whole
        # stream, so a compiled frame's graph updates it itself, with no attribute to set after.
        b, c = x.shape[:2]
        if self.state is None:
            self.state = x.new_zeros(b, c, self.size)
        if self.state.shape[:2] != (b, c):
            raise ValueError(
                f"{type(self).__name__}: stream state is {tuple(self.state.shape)} but the chunk "
                f"is {tuple(x.shape)}; call reset_state() before a stream of another shape"
            )
        return self.state

    def _keep(self, y: Tensor) -> None:
        """``state[:] = y`` [B, C, size], in place (``_state_for`` allocated it)."""
        with torch.no_grad():
            self.state.copy_(y)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class CachedPad1d(_Cache):
    """Left padding by ``size`` samples: zeros offline, the previous chunk's last ``size`` input
    samples in streaming mode. ``x``: Tensor[B x C x T] -> Tensor[B x C x size + T].

    Any chunk length works, even shorter than ``size`` (the state then holds samples from more
    than one earlier chunk). Delay: none.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.size == 0:
            return x
        if not self.streaming:
            return F.pad(x, (self.size, 0))
        y = torch.cat([self._state_for(x), x], dim=-1)  # [B, C, size + T]
        self._keep(y[..., -self.size :])
        return y


class CachedOverlapAdd1d(_Cache):
    """The overlap-add tail of a transposed conv.

    A transposed conv with kernel ``k`` and stride ``s`` turns ``T'`` frames into
    ``T'*s + (k - s)`` samples; the last ``k - s`` (= ``size``) are the beginning of what the next
    frames add to. Offline, the signal ends there (no more frames) and the tail is dropped; in
    streaming mode the tail is kept and added to the head of the next chunk, so the chunks sum to
    the offline output. ``y``: Tensor[B x C x n + size] -> Tensor[B x C x n]. Delay: none.
    """

    def forward(self, y: Tensor, n: int) -> Tensor:
        assert y.shape[-1] == n + self.size, f"expected {n} + {self.size} samples, got {y.shape}"
        if self.size == 0:
            return y
        if not self.streaming:
            return y[..., :n]
        head = y[..., : self.size] + self._state_for(y)  # what the previous chunk still owed
        y = torch.cat([head, y[..., self.size :]], dim=-1)
        self._keep(y[..., n:])  # [B, C, size]: owed to the next chunk
        return y[..., :n]


class FrameBuffer1d(_Cache):
    """Holds samples back until they make whole frames of ``size`` samples, so a stream may
    arrive in blocks of any length (an audio callback's 64, a second's 22050).

    ``x``: Tensor[B x C x T] -> Tensor[B x C x n*size], the whole frames among the held samples
    and ``x`` (``n`` may be 0); the rest (fewer than ``size`` samples) waits for the next block.
    Offline it passes ``x`` through. Delay: none beyond waiting for a frame's last sample.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.streaming:
            return x
        if self.state is not None and self.state.shape[:2] != x.shape[:2]:
            self._state_for(x)  # raises: a stream of another shape
        y = x if self.state is None else torch.cat([self.state, x], dim=-1)
        n = y.shape[-1] - y.shape[-1] % self.size  # samples in whole frames
        self.state = y[..., n:].detach().clone()  # [B, C, < size]
        return y[..., :n]


class CausalConv1d(nn.Conv1d):
    """``nn.Conv1d`` with left-only padding through a visible :class:`CachedPad1d` (``.pad``).

    ``x``: Tensor[B x C_in x T] -> Tensor[B x C_out x T // stride] (``T`` a multiple of
    ``stride`` in streaming mode).

    The conv spans ``span = (k - 1) * dilation + 1`` input samples; padding ``span - stride`` on
    the left makes output ``j`` end exactly at input sample ``(j + 1) * stride - 1``:

    * ``stride = 1``: pad ``(k - 1) * dilation``, the last ``(k - 1) * dilation`` inputs are the
      streaming state; output ``t`` sees inputs ``t - (k-1)*dilation .. t``.
    * ``stride = s`` with kernel ``2s`` (the encoder's downsampling): pad ``s``; frame ``j`` sees
      samples ``(j-1)*s .. (j+1)*s - 1`` and is ready as soon as its own ``s`` samples arrived.
      Streaming chunks must be multiples of ``s`` so every chunk starts on a frame boundary.

    Delay: none. Parameters and state-dict keys are those of ``nn.Conv1d`` (``weight``,
    ``bias``; under weight norm ``parametrizations.weight.original0/1``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = True,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, bias=bias
        )
        span = (kernel_size - 1) * dilation + 1
        if span < stride:
            raise ValueError(f"kernel span {span} < stride {stride}: samples would be skipped")
        # padded length L = T + span - s -> (L - span) / s + 1 = T / s outputs
        self.pad = CachedPad1d(span - stride)

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride[0]
        if self.pad.streaming and x.shape[-1] % s:
            raise ValueError(f"streaming chunk of {x.shape[-1]} samples: not a multiple of {s}")
        return self._conv_forward(self.pad(x), self.weight, self.bias)


class CausalConvTranspose1d(nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` without padding whose overlap-add tail goes to a visible
    :class:`CachedOverlapAdd1d` (``.tail``).

    ``x``: Tensor[B x C_in x T'] -> Tensor[B x C_out x T'*stride]. Output samples
    ``j*s .. (j+1)*s - 1`` depend on frames ``<= j`` only: frame ``j`` writes ``k`` samples from
    ``j*s``; the first ``s`` are complete once it is in, the other ``k - s`` wait for frame
    ``j + 1`` (streaming state). Delay: none. Any chunk of whole frames streams.

    Parameters and state-dict keys are those of ``nn.ConvTranspose1d``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool = True
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        if kernel_size < stride:
            raise ValueError(f"kernel {kernel_size} < stride {stride}: the output would have gaps")
        self.tail = CachedOverlapAdd1d(kernel_size - stride)

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride[0]
        n = x.shape[-1] * s
        # no bias here: the tail is added twice over (once per chunk) and must not carry it twice
        y = F.conv_transpose1d(x, self.weight, None, stride=s)  # [B, C_out, T'*s + k - s]
        y = self.tail(y, n)  # [B, C_out, T'*s]
        return y if self.bias is None else y + self.bias[:, None]


# --------------------------------------------------------------------------------------------
# Whole models
# --------------------------------------------------------------------------------------------


def caches(model: nn.Module) -> list[_Cache]:
    """Every stateful streaming piece inside ``model`` (empty for a centred codec)."""
    return [m for m in model.modules() if isinstance(m, _Cache)]


def set_streaming(model: nn.Module, streaming: bool = True) -> None:
    """Switch every cached layer in ``model`` to streaming (stateful) or offline mode; either way
    the state starts from zeros."""
    for m in caches(model):
        m.streaming = streaming
        m.reset_state()


def reset_state(model: nn.Module) -> None:
    """Forget the stream: the next chunk is treated as the start of a signal."""
    for m in caches(model):
        m.reset_state()


def run_chunked(fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int) -> Tensor:
    """Feed ``x`` Tensor[B x C x T] to ``fn`` in chunks of ``chunk`` steps along the last axis
    (the last may be shorter) and concatenate the outputs along their last axis.

    ``fn`` is a module already in streaming mode, or a streaming entry point such as
    :meth:`mlmlmlm.models.codec.Codec.encode_stream` reduced to a tensor.
    """
    return torch.cat([fn(x[..., i : i + chunk]) for i in range(0, x.shape[-1], chunk)], dim=-1)
