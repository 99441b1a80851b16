"""Frozen codec copies for streaming inference: the trained weights, the same streaming state
(``mlmlmlm.nn.cached``), fewer and cheaper operations per chunk. Used by the streaming translator
(:class:`mlmlmlm.stream.Translator`) and so by ``mlmlmlm translate`` and the live engine.

One frame at a time, a codec's cost is the number of operations, not their arithmetic: oneDNN
takes a slow im2col path for dilated convolutions on short inputs (172 us for one frame at 128
channels, where one matrix product over the unfolded taps takes 24 us) and a transposed
convolution of one frame costs ~50 us. :func:`inference_copy` swaps in :class:`FrozenSnake`,
:class:`FrozenConv1d`, :class:`FrozenConvTranspose1d` and :class:`FrozenRVQ`; each computes what
it replaces to float rounding (tested) and takes the library's own path for long inputs.

Introduced in notebook 05_transformer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from mlmlmlm.models.codec import Codec
from mlmlmlm.nn.cached import CausalConv1d, CausalConvTranspose1d, _Cache
from mlmlmlm.nn.compile import compile_frozen
from mlmlmlm.nn.layers import SNAKE_EPS, Snake
from mlmlmlm.nn.quantize import BottleneckOutput

# a product path up to this many (rows x input channels): one frame of the deepest layers, or a
# hop of the outermost; beyond it the library's convolution is faster (measured on 2 cores:
# 256 samples x 16 channels 55 against 77 us, 256 x 128 channels 540 against 490 us)
MAX_PRODUCT_SIZE = 8192


def inference_copy(codec: Codec) -> Codec:
    """A frozen copy of a causal rvq codec for streaming: eval mode, no gradients, weight norm
    folded into plain weights once (instead of recomputed at every chunk), each Snake a
    :class:`FrozenSnake`, each causal convolution a :class:`FrozenConv1d` or
    :class:`FrozenConvTranspose1d`, the RVQ a :class:`FrozenRVQ` where it agrees. The caller's
    codec is left as it was; the copy's codes are the original's, its outputs equal to float
    rounding."""
    cfg = codec.cfg
    if not cfg.causal or cfg.bottleneck != "rvq":
        raise ValueError(f"streaming translation needs causal rvq codecs (causal={cfg.causal}, "
                          f"bottleneck={cfg.bottleneck!r})")
    copy = Codec(cfg).to(codec_device(codec))
    copy.load_state_dict(codec.state_dict())
    for m in [m for m in copy.modules() if parametrize.is_parametrized(m)]:
        for name in list(m.parametrizations.keys()):
            parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    copy.eval().requires_grad_(False)
    for parent in list(copy.modules()):  # constants computed once, cheaper paths for chunks
        for name, child in list(parent.named_children()):
            frozen = frozen_layer(child)
            if frozen is not None:
                setattr(parent, name, frozen)
    FrozenRVQ.replacing(copy)
    return copy


def frozen_layer(m: nn.Module) -> nn.Module | None:
    """The frozen stand-in for one layer, or None where there is none."""
    if isinstance(m, Snake):
        return FrozenSnake(m)
    if type(m) is CausalConv1d and m.groups == 1:
        return FrozenConv1d(m)
    if type(m) is CausalConvTranspose1d and m.kernel_size[0] == 2 * m.stride[0] and m.groups == 1:
        return FrozenConvTranspose1d(m)
    return None


def codec_device(codec: Codec) -> torch.device:
    return next(codec.parameters()).device


class FrozenSnake(nn.Module):
    """A trained :class:`~mlmlmlm.nn.layers.Snake` for inference: ``alpha`` and ``1 / (beta +
    eps)`` computed once instead of at every call, then the fused forward's ops in its order
    (bitwise the same values). ``x`` [B, C, T] -> [B, C, T]."""

    def __init__(self, snake: Snake):
        super().__init__()
        with torch.no_grad():
            alpha = snake.alpha.exp() if snake.logscale else snake.alpha
            beta = snake.beta  # None: DAC's Snake, beta = alpha
            beta = alpha if beta is None else (beta.exp() if snake.logscale else beta)
            self.register_buffer("alpha", alpha.detach().clone())  # [1, C, 1]
            self.register_buffer("inv", (beta + SNAKE_EPS).reciprocal().detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.alpha * x).pow_(2).mul_(self.inv).add_(x)


class FrozenRVQ(nn.Module):
    """A trained RVQ bottleneck, frozen for streaming: nearest-code search (Euclidean, level by
    level on the residual) and code lookup straight on its codebooks, without the library's
    per-call checks and rearranges (about 1.4 -> 0.25 ms a frame for the cpu EMG codec).
    :meth:`replacing` swaps it into a codec only where it gives the library's codes exactly.

    ``forward``: h [B, D, T] -> BottleneckOutput(z [B, D, T], codes [B, n_q, T]);
    ``codes_to_latents``: codes [B, n_q, T] -> z [B, D, T].
    """

    def __init__(self, bottleneck):
        super().__init__()
        rvq, n_q, K = bottleneck.rvq, bottleneck.n_q, bottleneck.codebook_size
        self.project_in, self.project_out = rvq.project_in, rvq.project_out
        idx = torch.arange(K, device=rvq.codebooks.device).repeat(n_q, 1).T[None]  # [1, K, n_q]
        table = rvq.get_codes_from_indices(idx)[:, 0].clone()  # [n_q, K, d]: level q's vectors
        self.register_buffer("table", table)
        self.register_buffer("sq", (table * table).sum(-1))  # [n_q, K] squared norms
        self.register_buffer("levels", torch.arange(n_q, device=table.device)[:, None, None])

    @classmethod
    def replacing(cls, codec: Codec) -> bool:
        """Swap it in for ``codec.bottleneck`` if it matches the library on the codec's own
        latents (of noise) and code lookups; True when swapped."""
        old = codec.bottleneck
        if any(getattr(layer._codebook, "use_cosine_sim", False) for layer in old.rvq.layers):
            return False
        new, cfg = cls(old), codec.cfg
        g = torch.Generator().manual_seed(0)
        x = 0.1 * torch.randn(2, cfg.in_channels, 64 * cfg.hop, generator=g)
        with torch.inference_mode():
            h = codec.encoder(x.to(new.table.device))  # [2, D, 64]
            want, got = old(h), new(h)
            if not (torch.equal(want.codes, got.codes) and torch.allclose(want.z, got.z, atol=1e-5)
                    and torch.allclose(new.codes_to_latents(want.codes),
                                       old.codes_to_latents(want.codes), atol=1e-5)):
                return False
        codec.bottleneck = new
        return True

    def forward(self, h: Tensor) -> BottleneckOutput:
        r = self.project_in(h.transpose(1, 2))  # [B, T, d], the residual
        total, codes = torch.zeros_like(r), []
        for cb, sq in zip(self.table, self.sq):  # [K, d], [K]
            i = (sq - 2 * r @ cb.T).argmin(-1)  # argmin ||r - c||^2 (||r||^2 is common): [B, T]
            c = cb[i]  # [B, T, d]
            r, total = r - c, total + c
            codes.append(i)
        return BottleneckOutput(z=self.project_out(total).transpose(1, 2),
                                codes=torch.stack(codes, 1))  # [B, D, T], [B, n_q, T]

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        v = self.table[self.levels, codes.transpose(0, 1)]  # [n_q, B, T, d]
        return self.project_out(v.sum(0)).transpose(1, 2)  # [B, T, D] -> [B, D, T]


class FrozenConv1d(nn.Module):
    """A trained :class:`~mlmlmlm.nn.cached.CausalConv1d` for inference: the same ``pad`` (and
    streaming state); a short input as one matrix product over its unfolded taps, a long one
    through the convolution. ``x`` [B, C_in, T] -> [B, C_out, T // stride]."""

    def __init__(self, conv: CausalConv1d):
        super().__init__()
        self.pad = conv.pad
        (self.stride,), (self.dilation,) = conv.stride, conv.dilation
        c_out, c_in, k = conv.weight.shape
        self.span = (k - 1) * self.dilation + 1
        self.register_buffer("weight", conv.weight.detach().clone())  # [C_out, C_in, k]
        bias = conv.bias if conv.bias is not None else torch.zeros(c_out)
        self.register_buffer("bias", bias.detach().clone())  # [C_out]
        # [C_in * k, C_out], taps inner: the row order of the unfolded input below
        self.register_buffer("w_cols", self.weight.reshape(c_out, c_in * k).T.contiguous())

    def forward(self, x: Tensor) -> Tensor:
        if self.pad.streaming and x.shape[-1] % self.stride:
            raise ValueError(f"streaming chunk of {x.shape[-1]} samples: not a multiple of "
                             f"{self.stride}")
        x = self.pad(x)  # [B, C_in, pad + T]
        B, C, L = x.shape
        n = (L - self.span) // self.stride + 1  # output frames
        if B * n * C > MAX_PRODUCT_SIZE:
            return F.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation)
        cols = x.unfold(2, self.span, self.stride)[..., ::self.dilation]  # [B, C_in, n, k]
        cols = cols.permute(0, 2, 1, 3).reshape(B * n, -1)  # [B * n, C_in * k]
        return torch.addmm(self.bias, cols, self.w_cols).view(B, n, -1).transpose(1, 2)


class FrozenConvTranspose1d(nn.Module):
    """A trained :class:`~mlmlmlm.nn.cached.CausalConvTranspose1d` of kernel ``2 * stride`` for
    inference: the same overlap-add ``tail`` (and streaming state); a short input as one matrix
    product, each frame's ``2 s`` outputs added into slots ``j`` and ``j + 1``; a long one through
    the transposed convolution. ``x`` [B, C_in, T'] -> [B, C_out, T' * stride]."""

    def __init__(self, conv: CausalConvTranspose1d):
        super().__init__()
        self.tail, (self.s,) = conv.tail, conv.stride
        c_in, c_out, k = conv.weight.shape
        self.register_buffer("weight", conv.weight.detach().clone())  # [C_in, C_out, 2 s]
        self.register_buffer("w_rows", self.weight.reshape(c_in, c_out * k))
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(),
                                                                requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        B, C, T = x.shape
        s = self.s
        if B * T * C > MAX_PRODUCT_SIZE:
            y = F.conv_transpose1d(x, self.weight, None, stride=s)  # [B, C_out, (T + 1) s]
        else:
            p = (x.transpose(1, 2).reshape(B * T, C) @ self.w_rows).view(B, T, -1, 2, s)
            slots = x.new_zeros(B, T + 1, p.shape[2], s)  # [B, T + 1, C_out, s]
            slots[:, :T] += p[:, :, :, 0]  # a frame's first s samples: its own slot
            slots[:, 1:] += p[:, :, :, 1]  # its other s: the next frame's
            y = slots.permute(0, 2, 1, 3).reshape(B, p.shape[2], (T + 1) * s)
        y = self.tail(y, T * s)  # [B, C_out, T s]: the overlap owed to the next chunk kept
        return y if self.bias is None else y + self.bias[:, None]


class CompiledStream:
    """A frozen codec's streaming step through ``torch.compile``, one frame a call: samples to
    latents and codes (the encoder and the RVQ, one graph), codes to samples (the code lookup
    and the decoder, one graph). Two graphs of one shape each, and the codec's own streaming
    state, written in place inside them, so chunks of any size reuse them. The first chunk of a
    stream (no state yet: one graph fewer to compile), empty chunks and chunks longer than
    ``MAX_COMPILED_FRAMES`` frames take the eager modules, which are fast at length.

    ``encode(x)``: x [B, C, n * hop] (whole hops: the codec's frame buffer is before it)
    -> (z [B, D, n], codes [B, n_q, n]); ``decode_codes(codes)``: codes [B, n_q, n]
    -> [B, C, n * hop]. Needs a :class:`FrozenRVQ` (see :func:`compile_stream`)."""

    MAX_COMPILED_FRAMES = 8

    def __init__(self, codec: Codec):
        self.codec = codec
        # the first cache of each side: its state is None until a stream has begun
        self._enc_state = next(m for m in codec.encoder.modules() if isinstance(m, _Cache))
        self._dec_state = next(m for m in codec.decoder.modules() if isinstance(m, _Cache))
        self._encode = compile_frozen(self._encode_frame, fullgraph=False)
        self._decode = compile_frozen(self._decode_frame, fullgraph=False)

    def _encode_frame(self, x: Tensor) -> tuple[Tensor, Tensor]:  # [B, C, n hop] -> z, codes
        b = self.codec.bottleneck(self.codec.encoder(x))
        return b.z, b.codes

    def _decode_frame(self, codes: Tensor) -> Tensor:  # [B, n_q, 1] -> [B, C, hop]
        return self.codec.decoder(self.codec.bottleneck.codes_to_latents(codes))

    def _compiled(self, state: _Cache, n: int) -> bool:
        return state.streaming and state.state is not None and 0 < n <= self.MAX_COMPILED_FRAMES

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hop = self.codec.cfg.hop
        n = x.shape[-1] // hop
        if not self._compiled(self._enc_state, n):
            return self._encode_frame(x)  # eagerly, all n frames at once
        zs, codes = zip(*(self._encode(frame(x, i, hop)) for i in range(n)))
        return torch.cat(zs, -1), torch.cat(codes, -1)

    def decode_codes(self, codes: Tensor) -> Tensor:
        c, n = self.codec, codes.shape[-1]
        if not self._compiled(self._dec_state, n):
            return c.decode_stream(c.codes_to_latents(codes))
        return torch.cat([self._decode(frame(codes, i, 1)) for i in range(n)], -1)


def frame(x: Tensor, i: int, unit: int) -> Tensor:
    """Frame ``i`` of ``x`` [..., n * unit] in fresh storage: a slice keeps the chunk's strides
    (even of size-1 dimensions), and a graph is guarded on strides, so every chunk length would
    compile again."""
    return x.new_empty((*x.shape[:-1], unit)).copy_(x[..., i * unit:(i + 1) * unit])


def compile_stream(codec: Codec) -> None:
    """Compile a frozen codec's streaming step frame by frame (:class:`CompiledStream`, then
    used by ``encode_stream`` and ``decode_codes_stream``); the first frames of a stream compile
    (tens of seconds). A codec whose RVQ stayed the library's (``FrozenRVQ.replacing`` refused
    it: cosine-similarity codebooks, which no experiment uses) keeps streaming eagerly."""
    if codec.stream_steps is None and isinstance(codec.bottleneck, FrozenRVQ):
        codec.stream_steps = CompiledStream(codec)
