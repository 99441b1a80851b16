"""Streaming translation: EMG chunks of any size in, viola audio out as soon as it is produced.

Introduced in notebook 05_transformer; the live engine (mlmlmlm/live) drives a :class:`Translator`
and ``mlmlmlm translate`` (:mod:`mlmlmlm.translate`) runs files through the same path.

Timeline. EMG frame ``t`` and audio frame ``t`` cover the same time (the production codecs are
aligned one to one: 256 audio samples at 22.05 kHz = 32 EMG samples at 2756.25 Hz). An audio
prompt of ``P`` frames occupies audio frames ``0 .. P-1``; the EMG that went with it (the live
engine's) or, by default, ``P`` frames of rest EMG (zeros) occupy EMG frames ``0 .. P-1``; the
first EMG sample pushed after :meth:`Translator.start` begins frame ``P``, the first generated
one. Audio frame ``t`` is generated as soon as EMG frame ``t + lookahead`` is complete, so the
algorithmic latency is ``1 + lookahead`` frames (11.6 ms at the cpu scale), plus compute.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from mlmlmlm.models.codec import Codec
from mlmlmlm.models.frozen_codec import compile_stream, inference_copy
from mlmlmlm.models.generation import RING_SLACK
from mlmlmlm.models.transformer import TranslationTransformer
from mlmlmlm.models.transformer_io import StepOutput

DEFAULT_WINDOW_S = 6.0  # sliding window over both caches: the paper's 6-s training windows
MIN_PROMPT_FRAMES = 1  # the shortest prompt: one audio frame (the paper's 2048 samples)
MAX_PIECE_FRAMES = RING_SLACK  # a large push is worked through in pieces of this many EMG frames


class StreamError(ValueError):
    """A problem with what a translator was given (one line, no traceback needed)."""


class _Codes:
    """Appended codes [n, k] blocks, compacted now and then: ~n int16 per frame, few objects."""

    def __init__(self, n: int):
        self.n, self.parts = n, []

    def append(self, c: Tensor) -> None:  # [n, k]
        self.parts.append(c.to("cpu", torch.int16).numpy())
        if len(self.parts) > 256:
            self.parts = [np.concatenate(self.parts, axis=1)]

    def array(self) -> np.ndarray:  # [n, frames] int64
        return np.concatenate([np.zeros((self.n, 0), np.int16), *self.parts], axis=1).astype(int)


class Translator:
    """EMG in, audio out, chunk by chunk, for as long as the EMG lasts.

    Parameters
    ----------
    model : TranslationTransformer in eval mode; its levels and codebooks match the codecs'.
    audio_codec, emg_codec : causal rvq codecs with equal frame rates (copied, see
        :func:`~mlmlmlm.models.frozen_codec.inference_copy`; the originals are not touched).
    temperature, top_k, top_p : sampling (:func:`~mlmlmlm.models.transformer.sample_logits`);
        temperature 0 is argmax. Plain attributes: they may change between pushes.
    guidance : classifier-free guidance weight w: logits uncond + w (cond - uncond), the
        unconditional path being the EMG-dropped model. w = 1 (default) runs no extra pass; any
        other weight fixed at :meth:`start` doubles the rows and may then change freely.
    seed : the sampling generator's seed, re-applied at every :meth:`start`: the same EMG gives
        the same audio whatever its chunking.
    max_cache_frames : sliding window W over both caches (self-attention and EMG K/V): memory and
        per-frame time stay bounded for any length. None: 6 s of frames (516 at the cpu scale).
    min_prompt_frames : the shortest accepted prompt, in audio frames (see
        :attr:`min_prompt_samples`).
    emg_prep : called on every pushed chunk [C, n] before the codec (e.g. :class:`EmgPrep`);
        None when the EMG arrives prepared (filtered and scaled as in training).
    compile : run the transformer step (:meth:`~mlmlmlm.models.generation.CachedGeneration.compile_generation`,
        on the model given) and the codec copies' streaming encoder and decoder
        (:func:`~mlmlmlm.models.frozen_codec.compile_stream`) through ``torch.compile``; the
        constructor then streams half a second of rest EMG so the graphs compile here (about a
        minute on 2 cores, less from inductor's cache) and not in the first phrase. The audio is
        the eager path's to float rounding. A new guidance weight or sampling setting compiles
        again at its first frame.
    ring : fixed ring caches of the window (:meth:`~mlmlmlm.models.generation.CachedGeneration.new_cache`),
        every step the same shapes. None (default): with ``compile`` only, which needs them; an
        eager step is cheaper over growing caches while a phrase is shorter than the window
        (a ring attends over all its slots from the first frame).

    Attributes
    ----------
    frame_times : list of float, seconds of compute per generated frame: its transformer step,
        an equal share of the audio decoding of the frames its piece of EMG made ready (decoded
        in one call), and, for the first of them, the EMG encoding and appending before it.
        :attr:`start_seconds` holds the priming.
    on_step : None or a callable given each frame's :class:`StepOutput` (logits, codes).
    """

    def __init__(self, model: TranslationTransformer, audio_codec: Codec, emg_codec: Codec, *,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 guidance: float = 1.0, seed: int = 0, max_cache_frames: int | None = None,
                 min_prompt_frames: int = MIN_PROMPT_FRAMES,
                 emg_prep: Callable[[np.ndarray], np.ndarray] | None = None,
                 compile: bool = False, ring: bool | None = None):
        check_compatible(model, audio_codec, emg_codec)
        if model.training:
            raise StreamError("the translation model must be in eval mode (model.eval())")
        self.model = model
        self.audio_codec, self.emg_codec = inference_copy(audio_codec), inference_copy(emg_codec)
        self.device = next(model.parameters()).device  # each part stays where it was given
        self._audio_device = next(self.audio_codec.parameters()).device
        self._emg_device = next(self.emg_codec.parameters()).device
        self.temperature, self.top_k, self.top_p, self.seed = temperature, top_k, top_p, seed
        self._guidance = float(guidance)
        W = max_cache_frames or round(DEFAULT_WINDOW_S * self.frame_rate)
        if W < 1:
            raise StreamError(f"max_cache_frames must be >= 1, got {max_cache_frames}")
        self.max_cache_frames = W
        if min_prompt_frames < 1:
            raise StreamError("min_prompt_frames must be >= 1")
        self.min_prompt_frames, self.emg_prep = min_prompt_frames, emg_prep
        self.on_step: Callable[[StepOutput], None] | None = None
        self.compiled = bool(compile)
        self.ring = self.compiled if ring is None else bool(ring)
        if self.compiled and not self.ring:
            raise StreamError("a compiled translator needs ring caches (ring=True)")
        self.reset()
        if compile:
            model.compile_generation(True)
            compile_stream(self.audio_codec)
            compile_stream(self.emg_codec)
            self._warm_up()

    def _warm_up(self) -> None:
        """Stream rest EMG a hop at a time and then a few hops at once, so the compiled graphs
        exist before the first phrase; then forget it all."""
        prep, self.emg_prep = self.emg_prep, None
        try:
            self.start(np.zeros(4 * self.audio_hop, np.float32))  # every model takes a prompt
            for n in (1, 1, 1, 4, 4):
                self.push_emg(np.zeros((self.emg_channels, n * self.emg_hop), np.float32))
        finally:
            self.emg_prep = prep
            self.reset()

    @classmethod
    def from_run(cls, run_dir, *, data_root=None, **kw) -> Translator:
        """A translator from a trained 05_transformer run folder: the model and the codecs it
        was trained on (hashes checked), its ``generate`` settings (``kw`` overrides them) and,
        unless ``emg_prep`` is given, an :class:`~mlmlmlm.translate.EmgPrep` with the EMG codec
        run's filter and the scale of the corpus at ``data_root`` (default: the default corpus),
        so raw EMG at :attr:`emg_sr` goes in. See :func:`mlmlmlm.translate.translator_from_run`."""
        from mlmlmlm.translate import translator_from_run

        return translator_from_run(run_dir, data_root=data_root, cls=cls, **kw)

    # ---- rates and sizes ------------------------------------------------------------------------

    @property
    def audio_sr(self) -> float:
        return float(self.audio_codec.cfg.sample_rate)

    @property
    def emg_sr(self) -> float:
        return float(self.emg_codec.cfg.sample_rate)

    @property
    def audio_hop(self) -> int:
        return self.audio_codec.cfg.hop

    @property
    def emg_hop(self) -> int:
        return self.emg_codec.cfg.hop

    @property
    def emg_channels(self) -> int:
        return self.emg_codec.cfg.in_channels

    @property
    def frame_rate(self) -> float:
        return self.audio_codec.cfg.frame_rate

    @property
    def lookahead(self) -> int:
        return self.model.cfg.lookahead

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency: an EMG frame must be complete, and ``lookahead`` more after it,
        before its audio frame is generated: ``(1 + lookahead)`` frames. Compute comes on top
        (:attr:`frame_times`); the causal audio decoder adds no delay."""
        return 1000.0 * (1 + self.lookahead) / self.frame_rate

    @property
    def min_prompt_samples(self) -> int:
        """The shortest prompt at the audio codec's rate: ``min_prompt_frames`` hops. One frame
        by default, the paper's minimum (2048 samples = 46 ms at 44.1 kHz, the paper scale);
        256 samples = 11.6 ms at 22.05 kHz at the cpu and smoke scales. Training crops start
        from a single known frame too; a run's ``generate.prompt_s`` is the length it prefers."""
        return self.min_prompt_frames * self.audio_hop

    @property
    def guidance(self) -> float:
        return self._guidance

    @guidance.setter
    def guidance(self, w: float) -> None:
        if w != 1 and self.cache is not None and not self.cache.guided:
            raise StreamError("this stream started with guidance 1 (no unconditional pass); set "
                              "the guidance weight before start()")
        self._guidance = float(w)

    @property
    def n_frames(self) -> int:
        """Audio frames known so far (prompt + generated)."""
        return 0 if self.cache is None else self.cache.n_frames

    def prompt_codes(self) -> np.ndarray:
        """The start tokens [n_q, P] (int; P = 0 without a prompt)."""
        if self._prompt is None:
            return np.zeros((self.model.cfg.n_q, 0), int)
        return self._prompt[0].cpu().numpy().astype(int)

    def generated_codes(self) -> np.ndarray:
        """Codes of the generated frames [n_q, frames] (int, 0 .. codebook_size - 1)."""
        return self._codes.array()

    def emg_codes(self) -> np.ndarray:
        """EMG codes appended so far [emg_n_q, frames], the prompt's included."""
        return self._emg_codes.array()

    # ---- the stream -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the stream (caches, codec states, codes, times); :meth:`start` begins anew."""
        self.cache = None
        self.prompt_frames = 0
        self._primed = self._finished = False
        self._prompt: Tensor | None = None
        self._carry = 0.0  # compute not yet attributed to a frame
        self._emg_samples = 0  # EMG samples given to the codec, the prompt's included
        self.frame_times: list[float] = []
        self.start_seconds = 0.0
        self._codes = _Codes(self.model.cfg.n_q)
        self._emg_codes = _Codes(self.model.cfg.emg_n_q)
        self.audio_codec.reset_stream()
        self.emg_codec.reset_stream()
        if hasattr(self.emg_prep, "reset"):
            self.emg_prep.reset()

    @torch.inference_mode()
    def start(self, prompt_audio: np.ndarray | None = None,
              prompt_emg: np.ndarray | None = None) -> np.ndarray:
        """Begin a phrase.

        Parameters
        ----------
        prompt_audio : float array [n] (or [1, n]) at :attr:`audio_sr`, n >= :attr:`min_prompt_samples`;
            its last ``P = n // audio_hop`` whole frames (at most ``max_cache_frames``) become the
            start tokens. None: start from EMG alone (only a model trained with a learned start
            token, ``bos``: a te2_bos run).
        prompt_emg : float array [C, m] at :attr:`emg_sr`, the EMG recorded with the prompt,
            m >= P * emg_hop (its last P frames are used, through ``emg_prep``). None: P frames of
            rest EMG (zeros).

        Returns
        -------
        np.ndarray float32 [P * audio_hop]: the prompt as the audio codec resynthesises it (its
        decoding warms the streaming decoder, so the first generated frame joins without a click).
        """
        t0 = time.perf_counter()
        self.reset()
        cfg = self.model.cfg
        self.cache = self.model.new_cache(1, guided=self.guidance != 1,
                                          max_cache_frames=self.max_cache_frames, ring=self.ring)
        self.generator = torch.Generator(self.device).manual_seed(self.seed)
        if prompt_audio is None:
            if not cfg.bos:
                raise StreamError(
                    "this model has no learned start token (bos; a te2_bos run): start() needs an "
                    f"audio prompt of at least {self.min_prompt_samples} samples")
            if prompt_emg is not None:
                raise StreamError("prompt_emg goes with an audio prompt")
            self.model.start(self.cache)
            self._primed = True
            self.start_seconds = time.perf_counter() - t0
            return np.zeros(0, np.float32)
        audio = np.asarray(prompt_audio, np.float32).reshape(-1)
        check_finite(audio, "prompt audio")
        if audio.size < self.min_prompt_samples:
            raise StreamError(
                f"the prompt is {audio.size} samples ({1000 * audio.size / self.audio_sr:.1f} ms); "
                f"the minimum is {self.min_prompt_samples} samples "
                f"({1000 * self.min_prompt_samples / self.audio_sr:.1f} ms, "
                f"{self.min_prompt_frames} frame(s) of {self.audio_hop} at {self.audio_sr:g} Hz)")
        P = min(audio.size // self.audio_hop, self.max_cache_frames)  # the window holds no more
        x = torch.from_numpy(audio[audio.size - P * self.audio_hop:]).to(self._audio_device)
        prompt = self.audio_codec.encode(x[None, None]).codes  # [1, n_q, P], causal: no padding
        prompt = prompt.to(self.device)
        self.audio_codec.reset_stream()
        resynth = self.audio_codec.decode_codes_stream(prompt)  # [1, 1, P * hop]
        if prompt_emg is None:  # rest EMG: already "prepared", so it bypasses emg_prep
            emg = np.zeros((self.emg_channels, P * self.emg_hop), np.float32)
        else:
            emg = self._check_emg(prompt_emg, "prompt EMG")
            if emg.shape[1] < P * self.emg_hop:
                raise StreamError(f"the prompt EMG has {emg.shape[1]} samples; the prompt's {P} "
                                  f"frames need {P * self.emg_hop}")
            emg = emg[:, emg.shape[1] - P * self.emg_hop:]
            emg = self.emg_prep(emg) if self.emg_prep is not None else emg
        self._prompt, self.prompt_frames = prompt, P
        self._append(emg)  # primes as soon as EMG through frame P - 1 + lookahead is there
        self.start_seconds = time.perf_counter() - t0
        return resynth[0, 0].float().cpu().numpy()

    @torch.inference_mode()
    def push_emg(self, emg: np.ndarray) -> np.ndarray:
        """Feed the next EMG samples and return the audio they let the model produce.

        Parameters
        ----------
        emg : float array [C, n] at :attr:`emg_sr`, any n >= 0. Samples wait until they complete
            a frame; each new EMG frame is encoded once through the causal EMG codec and its
            cross-attention keys/values appended (never recomputed).

        Returns
        -------
        np.ndarray float32 [m]: every audio sample decoded during this call (m a multiple of
        :attr:`audio_hop`, often 0 for short chunks).
        """
        if self.cache is None or self._finished:
            raise StreamError("call start() before push_emg()" if self.cache is None else
                              "this stream was flushed; call start() for a new one")
        emg = self._check_emg(emg, "EMG")
        if self.emg_prep is not None and emg.shape[1]:
            emg = self.emg_prep(emg)
        piece, out = MAX_PIECE_FRAMES * self.emg_hop, []
        for i in range(0, emg.shape[1], piece):  # bounded memory for one huge push
            t0 = time.perf_counter()
            self._append(emg[:, i:i + piece])
            self._carry += time.perf_counter() - t0
            out.extend(self._generate())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        """End the stream: complete the last partial EMG frame and the ``lookahead`` frames after
        it with zeros (as the offline codec pads), generate what that allows, return its audio.
        Afterwards the translator takes no more EMG until the next :meth:`start`."""
        if self.cache is None or self._finished:
            return np.zeros(0, np.float32)
        n = -self._emg_samples % self.emg_hop  # samples that complete the waiting frame
        tail = np.zeros((self.emg_channels, n + self.lookahead * self.emg_hop), np.float32)
        with torch.inference_mode():
            t0 = time.perf_counter()
            self._append(tail)  # zeros bypass emg_prep: the end of the prepared signal
            self._carry += time.perf_counter() - t0
            out = self._generate()
        self._finished = True
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def apply(self, fn: Callable, *args):
        """``fn(self, *args)``: the call :class:`~mlmlmlm.live.worker.TranslatorProcess` runs
        in its child, so a measurement of the translator reads the same for either."""
        return fn(self, *args)

    # ---- inside ---------------------------------------------------------------------------------

    def _check_emg(self, emg: np.ndarray, what: str) -> np.ndarray:
        emg = np.asarray(emg, np.float32)
        if emg.ndim != 2 or emg.shape[0] != self.emg_channels:
            raise StreamError(f"{what} must be [{self.emg_channels}, n] at {self.emg_sr:g} Hz, "
                              f"got shape {list(emg.shape)}")
        check_finite(emg, what)
        return emg

    def _append(self, emg: np.ndarray) -> None:
        """Prepared EMG [C, n] -> the frames it completes, encoded and appended to the cache."""
        x = torch.from_numpy(np.ascontiguousarray(emg)).to(self._emg_device)
        self._emg_samples += emg.shape[1]
        codes = self.emg_codec.encode_stream(x[None]).codes.to(self.device)  # [1, emg_n_q, k]
        if codes.shape[2]:
            self.model.append_emg(self.cache, codes)
            self._emg_codes.append(codes[0])
        self._prime_when_ready()

    def _prime_when_ready(self) -> None:
        # the prompt's positions predict frames 1 .. P-1 (+ lookahead): prime waits for that EMG
        if not self._primed and self.cache.n_emg >= self.prompt_frames + self.lookahead:
            t0 = time.perf_counter()
            self.model.prime(self.cache, self._prompt)
            self._primed = True
            self.start_seconds += time.perf_counter() - t0

    def _generate(self) -> list[np.ndarray]:
        """Every frame the appended EMG allows, one step each, then their audio decoded in one
        call (a piece of k frames costs one decoder pass, not k); returns [k * hop] or []."""
        codes, times = [], []
        while self._primed and self.model.frames_ready(self.cache):
            t0 = time.perf_counter()
            step = self.model.step(self.cache, temperature=self.temperature, top_k=self.top_k,
                                   top_p=self.top_p, guidance=self.guidance,
                                   generator=self.generator)
            codes.append(step.codes)  # [1, n_q]
            times.append(time.perf_counter() - t0)
            if self.on_step is not None:
                self.on_step(step)
        if not codes:
            return []
        t0 = time.perf_counter()
        block = torch.stack(codes, 2)  # [1, n_q, k]
        wav = self.audio_codec.decode_codes_stream(block.to(self._audio_device))  # [1, 1, k*hop]
        out = wav[0, 0].float().cpu().numpy()
        self._codes.append(block[0])
        # each frame: its step, an equal share of the decoding; the first also what waited
        share = (time.perf_counter() - t0) / len(codes)
        times[0] += self._carry
        self._carry = 0.0
        self.frame_times.extend(t + share for t in times)
        return [out]


def check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise StreamError(f"{what} holds NaN or Inf (first at index {tuple(int(i) for i in bad)})")


def check_compatible(model: TranslationTransformer, audio_codec: Codec, emg_codec: Codec) -> None:
    """Raise :class:`StreamError` naming the first mismatch between the model and its codecs."""
    m, a, e = model.cfg, audio_codec.cfg, emg_codec.cfg
    for what, c in (("audio", a), ("EMG", e)):
        if not c.causal or c.bottleneck != "rvq":
            raise StreamError(f"streaming needs causal rvq codecs; the {what} codec has "
                              f"causal={c.causal}, bottleneck={c.bottleneck!r}")
    pairs = [("audio levels n_q", m.n_q, a.n_q), ("audio codebook", m.codebook_size, a.codebook_size),
             ("EMG levels n_q", m.emg_n_q, e.n_q), ("EMG codebook", m.emg_codebook_size, e.codebook_size)]
    for what, mine, theirs in pairs:
        if mine != theirs:
            raise StreamError(f"the transformer's {what} is {mine} but the codec's is {theirs}")
    if a.in_channels != 1:
        raise StreamError(f"the audio codec must be mono, it has {a.in_channels} channels")
    if abs(a.frame_rate - e.frame_rate) > 1e-9 * a.frame_rate:
        raise StreamError(f"audio frames ({a.frame_rate:.4f}/s) and EMG frames "
                          f"({e.frame_rate:.4f}/s) do not align one to one")
