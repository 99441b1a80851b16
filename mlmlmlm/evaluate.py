"""Codec evaluation on held-out windows: spectral, waveform, pitch, loudness and EMG metrics,
codebook statistics and reconstruction identifiability (DESIGN §4).

Introduced in notebook 02_audio_codec; 03_emg_audio_codec and 04_emg_codec add the EMG metrics.
Every metric takes ``recon`` and ``orig`` as Tensor[N x C x T] (or numpy arrays) and returns
Tensor[N x C]: one value per window and channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import librosa
import numpy as np
import scipy.signal
import torch
from torch import Tensor

from mlmlmlm.data.preprocess import resample
from mlmlmlm.melody import pitch_report
from mlmlmlm.nn.quantize import code_perplexity, code_usage

# Fixed STFT resolutions of the evaluation distances (hop = fft/4, Hann). Fewer than the 7 of the
# training loss, so the N x N identifiability matrix stays cheap; no A-weighting.
EVAL_FFT_SIZES = (2048, 512, 128)
MAG_EPS = 1e-8  # power floor, as auraloss: |S| >= 1e-4


def _nct(x) -> Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    assert x.ndim == 3, f"expected [N, C, T], got {tuple(x.shape)}"
    return x.detach().cpu()


def _pair(recon, orig) -> tuple[Tensor, Tensor]:
    recon, orig = _nct(recon), _nct(orig)
    assert recon.shape == orig.shape, f"recon {tuple(recon.shape)} != orig {tuple(orig.shape)}"
    return recon, orig


def _mag(x: Tensor, n_fft: int) -> Tensor:
    """``x``: Tensor[M x T] -> magnitudes Tensor[M x (F*frames)] (flattened, floored)."""
    spec = torch.stft(
        x,
        n_fft,
        n_fft // 4,
        window=torch.hann_window(n_fft),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    return spec.abs().pow(2).clamp_min(MAG_EPS).sqrt().flatten(1)


# ------------------------------------------------------------------ Spectral and waveform distances
def mrstft_distance(recon, orig, fft_sizes=EVAL_FFT_SIZES) -> Tensor:
    """Multi-resolution STFT distance per window and channel: spectral convergence
    ``||S_o - S_r|| / ||S_o||`` plus mean ``|log S_o - log S_r|``, averaged over resolutions.

    Parameters
    ----------
    recon, orig : Tensor[N x C x T]
    fft_sizes : sequence of int

    Returns
    -------
    Tensor[N x C]
    """
    recon, orig = _pair(recon, orig)
    n, c, t = orig.shape
    r, o = recon.reshape(n * c, t), orig.reshape(n * c, t)
    total = torch.zeros(n * c)
    for n_fft in fft_sizes:
        mr, mo = _mag(r, n_fft), _mag(o, n_fft)
        sc = (mo - mr).norm(dim=1) / mo.norm(dim=1)
        total += sc + (mo.log() - mr.log()).abs().mean(dim=1)
    return (total / len(fft_sizes)).reshape(n, c)


def mel_distance(recon, orig, sr: float, n_fft: int = 2048, n_mels: int = 80) -> Tensor:
    """Mean absolute difference of log10 mel spectrograms (hop n_fft/4). Returns Tensor[N x C]."""
    recon, orig = _pair(recon, orig)
    n, c, t = orig.shape
    fb = torch.as_tensor(librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels))  # [mels, F]

    def logmel(x):
        spec = torch.stft(
            x.reshape(n * c, t),
            n_fft,
            n_fft // 4,
            window=torch.hann_window(n_fft),
            return_complex=True,
            pad_mode="constant",
        )
        return torch.log10(fb @ spec.abs().pow(2) + 1e-5)  # [N*C, mels, frames]

    return (logmel(recon) - logmel(orig)).abs().mean(dim=(1, 2)).reshape(n, c)


def si_sdr(recon, orig, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SDR in dB (zero-mean signals). Returns Tensor[N x C]."""
    recon, orig = _pair(recon, orig)
    r = recon - recon.mean(-1, keepdim=True)
    o = orig - orig.mean(-1, keepdim=True)
    scale = (r * o).sum(-1, keepdim=True) / (o.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * o  # projection of the reconstruction onto the original
    noise = r - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


def loudness_envelope_db(
    x, sr: float, n_fft: int = 2048, a_weighting: bool = True, floor_db: float = -100.0
) -> Tensor:
    """Frame loudness in dB (mean A-weighted power per frame, hop n_fft/4).

    Parameters
    ----------
    x : Tensor[N x C x T]

    Returns
    -------
    Tensor[N x C x frames]
    """
    x = _nct(x)
    n, c, t = x.shape
    window = torch.hann_window(n_fft)
    spec = torch.stft(
        x.reshape(n * c, t),
        n_fft,
        n_fft // 4,
        window=window,
        return_complex=True,
        pad_mode="constant",
    )
    power = spec.abs().pow(2)  # [N*C, F, frames]
    if a_weighting:
        freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
        with np.errstate(divide="ignore"):  # 0 Hz: log of 0, clipped to min_db
            gain = 10 ** (librosa.A_weighting(freqs, min_db=-80.0) / 10)
        power = power * torch.as_tensor(gain, dtype=power.dtype)[:, None]
    # Parseval: sum over bins / (n_fft * sum(w^2)) is the mean square of the windowed frame
    ms = power.sum(dim=1) * 2 / (n_fft * window.pow(2).sum())
    return (10 * torch.log10(ms + 1e-12)).clamp_min(floor_db).reshape(n, c, -1)


def loudness_error_db(recon, orig, sr: float, a_weighting: bool = True) -> Tensor:
    """Mean absolute difference of the loudness envelopes (dB). Returns Tensor[N x C]."""
    recon, orig = _pair(recon, orig)
    lr = loudness_envelope_db(recon, sr, a_weighting=a_weighting)
    lo = loudness_envelope_db(orig, sr, a_weighting=a_weighting)
    return (lr - lo).abs().mean(-1)


# -------------------------------------------------------------------------------------- EMG metrics
def emg_envelope(x, sr: float, cutoff_hz: float = 10.0) -> np.ndarray:
    """Linear envelope: full-wave rectification then a zero-phase 4th-order Butterworth low-pass.
    ``x``: Tensor[N x C x T] -> ndarray[N x C x T]."""
    sos = scipy.signal.butter(4, cutoff_hz, btype="low", fs=sr, output="sos")
    return scipy.signal.sosfiltfilt(sos, np.abs(_nct(x).numpy()), axis=-1)


def envelope_correlation(recon, orig, sr: float, cutoff_hz: float = 10.0) -> Tensor:
    """Pearson correlation of the EMG envelopes (0 where either envelope is flat).
    Returns Tensor[N x C]."""
    recon, orig = _pair(recon, orig)
    er = emg_envelope(recon, sr, cutoff_hz)
    eo = emg_envelope(orig, sr, cutoff_hz)
    er = er - er.mean(-1, keepdims=True)
    eo = eo - eo.mean(-1, keepdims=True)
    denom = np.sqrt((er**2).sum(-1) * (eo**2).sum(-1))
    corr = np.where(denom > 1e-12, (er * eo).sum(-1) / np.maximum(denom, 1e-12), 0.0)
    return torch.as_tensor(corr, dtype=torch.float32)


def median_frequency(x, sr: float, band: tuple[float, float] = (10.0, 500.0)) -> Tensor:
    """Median frequency (Hz) of the Welch power spectrum inside ``band``: the frequency below
    which half of the band's power lies. ``x``: Tensor[N x C x T] -> Tensor[N x C]."""
    x = _nct(x).numpy()
    nperseg = min(x.shape[-1], 2 ** round(math.log2(sr / 4)))  # ~4 Hz resolution
    freqs, psd = scipy.signal.welch(x, fs=sr, nperseg=nperseg, axis=-1)
    keep = (freqs >= band[0]) & (freqs <= min(band[1], sr / 2))
    freqs, psd = freqs[keep], psd[..., keep]
    cum = np.cumsum(psd, axis=-1)
    idx = (cum >= 0.5 * cum[..., -1:]).argmax(-1)
    # a signal with no power in the band has no median frequency (NaN, not the band's edge)
    mf = np.where(cum[..., -1] > 0, freqs[idx], np.nan)
    return torch.as_tensor(mf, dtype=torch.float32)


def silent_fraction(recon, orig, floor_db: float = -40.0) -> Tensor:
    """1 where a reconstruction's RMS is more than ``-floor_db`` dB below its original's (a
    silent output, whatever its other metrics say), else 0. Returns Tensor[N x C]."""
    recon, orig = _pair(recon, orig)
    rms_r = recon.double().pow(2).mean(-1).sqrt()
    rms_o = orig.double().pow(2).mean(-1).sqrt()
    return (rms_r < rms_o * 10 ** (floor_db / 20)).float()


def median_frequency_error(recon, orig, sr: float, band=(10.0, 500.0)) -> Tensor:
    """Absolute median-frequency difference in Hz. Returns Tensor[N x C]."""
    recon, orig = _pair(recon, orig)
    return (median_frequency(recon, sr, band) - median_frequency(orig, sr, band)).abs()


# ------------------------------------------------------------------------ Codes and identifiability
@dataclass
class CodebookUsage:
    """usage : Tensor[n_q] fraction of codes used; perplexity : Tensor[n_q] exp(entropy)."""

    usage: Tensor
    perplexity: Tensor


def codebook_usage(codes: Tensor, codebook_size: int) -> CodebookUsage:
    """Usage fraction and perplexity per RVQ level of ``codes`` LongTensor[N x n_q x T']."""
    codes = torch.as_tensor(codes).long()
    return CodebookUsage(code_usage(codes, codebook_size), code_perplexity(codes, codebook_size))


def mrstft_distance_matrix(recons: Tensor, origs: Tensor, fft_sizes=EVAL_FFT_SIZES) -> Tensor:
    """All-pairs :func:`mrstft_distance` of one channel: ``D[i, j] = d(recon_i, orig_j)``.

    Spectral convergence through the Gram matrix (float64, so identical signals give 0) and the
    log-magnitude L1 through ``torch.cdist(p=1)``: one batched STFT per set and resolution.

    Parameters
    ----------
    recons, origs : Tensor[N x T]

    Returns
    -------
    Tensor[N x N]
    """
    total = torch.zeros(recons.shape[0], origs.shape[0], dtype=torch.float64)
    for n_fft in fft_sizes:
        mr, mo = _mag(recons, n_fft), _mag(origs, n_fft)
        mr64, mo64 = mr.double(), mo.double()
        sq_o = mo64.pow(2).sum(1)
        # ||o_j - r_i||^2 = |o_j|^2 + |r_i|^2 - 2 r_i.o_j
        sq = mr64.pow(2).sum(1)[:, None] + sq_o[None, :] - 2 * mr64 @ mo64.T
        total += sq.clamp_min(0).sqrt() / sq_o.sqrt()[None, :]
        total += torch.cdist(mr.log(), mo.log(), p=1).double() / mr.shape[1]
    return total / len(fft_sizes)


def identifiability(originals, recons, fft_sizes=EVAL_FFT_SIZES) -> Tensor:
    """Fraction of windows whose reconstruction is nearest to its own original, per channel.

    For channel c, window i counts when ``d(recon_i, orig_i) < d(recon_i, orig_j)`` for every
    ``j != i`` (MRSTFT distance, :func:`mrstft_distance_matrix`). An exact tie counts as a
    failure, so the diagonal is never favoured: a collapsed model (same output for every window)
    scores 1/N (only the window whose original happens to be nearest that output), a perfect one 1.

    Parameters
    ----------
    originals, recons : Tensor[N x C x T]

    Returns
    -------
    Tensor[C]
    """
    recons, originals = _pair(recons, originals)
    n = originals.shape[0]
    assert n >= 2, "identifiability needs at least 2 windows"
    out = []
    eye = torch.eye(n, dtype=torch.bool)
    for c in range(originals.shape[1]):
        d = mrstft_distance_matrix(recons[:, c], originals[:, c], fft_sizes)
        own = d.diagonal()
        others = d.masked_fill(eye, math.inf).min(dim=1).values
        out.append((own < others).double().mean())
    return torch.stack(out).float()


def band_resynthesis(x, sr: float, hop: int, n_bands: int = 16, n_fft: int = 256,
                     seed: int = 0) -> Tensor:
    """What a codec could at best keep of a noise-like signal: each window resynthesised from its
    own energy in ``n_bands`` mel bands (nearly linear below 1 kHz) every ``hop`` samples, with
    random phase. Its identifiability is the ceiling chapter 4 compares EMG codecs with.

    ``x``: Tensor[N x C x T] -> Tensor[N x C x T]."""
    x = _nct(x)
    n, c, t = x.shape
    window = torch.hann_window(n_fft)
    spec = torch.stft(x.reshape(n * c, t), n_fft, hop, window=window, return_complex=True)
    power = spec.abs().pow(2)  # [N*C, F, frames]
    fb = torch.as_tensor(librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_bands, fmin=0.0,
                                             fmax=sr / 2, htk=True, norm=None))  # [B, F]
    mean_power = (fb @ power) / fb.sum(1, keepdim=True)[None]  # [N*C, B, frames]
    share = fb / fb.sum(0, keepdim=True).clamp_min(1e-12)  # each bin's split over the bands
    flat = share.T @ mean_power  # [N*C, F, frames]: each bin at its bands' mean power
    gen = torch.Generator().manual_seed(seed)
    phase = torch.rand(flat.shape, generator=gen) * 2 * math.pi
    y = torch.istft(torch.polar(flat.sqrt(), phase), n_fft, hop, window=window, length=t)
    # overlapping frames of random phase add in power, not in amplitude: restore the level
    y = y * (x.reshape(n * c, t).pow(2).mean(-1, keepdim=True)
             / y.pow(2).mean(-1, keepdim=True).clamp_min(1e-20)).sqrt()
    return y.reshape(n, c, t)


def inspection(ident, threshold: float = 0.5) -> str:
    """Numeric stand-in for the paper's inspection column: ``"successful"`` when the mean
    identifiability over channels is at least ``threshold`` (default 0.5, i.e. at least half of
    the held-out windows are recognisable from their reconstruction), else ``"unsuccessful"``."""
    value = float(torch.as_tensor(ident, dtype=torch.float32).mean())
    return "successful" if value >= threshold else "unsuccessful"


# ------------------------------------------------------------------------------------------- Bundle
@torch.no_grad()
def reconstruct(model, windows: Tensor, batch_size: int = 8) -> tuple[Tensor, Tensor | None]:
    """Run ``model`` in eval mode over ``windows`` Tensor[N x C x T] in batches on the model's
    device; returns the reconstructions Tensor[N x C x T] (CPU) and codes (or ``None``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    recons, codes = [], []
    try:
        for start in range(0, windows.shape[0], batch_size):
            out = model(windows[start : start + batch_size].to(device))
            recons.append(out.recon.float().cpu())
            if out.codes is not None:
                codes.append(out.codes.cpu())
    finally:
        model.train(was_training)
    return torch.cat(recons), (torch.cat(codes) if codes else None)


def _summary(values: Tensor, channels: list[int]) -> dict:
    # values [N, len(channels)], column k belongs to input channel channels[k]
    # -> mean over windows per channel (NaN-aware) and the mean over those channels
    per = {c: float(np.nanmean(values[:, k].numpy())) for k, c in enumerate(channels)}
    return {"per_channel": per, "mean": float(np.nanmean(list(per.values())))}


def evaluate_codec(
    model,
    windows,
    sr: float,
    audio_channels: list[int],
    emg_channels: list[int],
    batch_size: int = 8,
    threshold: float = 0.5,
    emg_sr: float | None = None,
    true_vibrato_depth=None,
) -> dict:
    """All codec metrics on held-out windows, as plain Python numbers (JSON-ready).

    Parameters
    ----------
    model : Codec
        Anything whose ``forward(x)`` returns an object with ``recon`` (and ``codes``).
    windows : Tensor[N x C x T]
    sr : float
        Sample rate of ``windows``.
    audio_channels, emg_channels : list[int]
        Which channels get the audio metrics (mel, loudness, f0) and which the EMG ones
        (envelope correlation, median frequency); MRSTFT, SI-SDR and identifiability go to all.
    threshold : float
        Identifiability threshold of :func:`inspection`.
    emg_sr : float, optional
        Analysis rate of the EMG channels: originals and reconstructions are resampled to it
        (polyphase, anti-aliased) before any EMG metric, so that codecs running at different
        rates (the upsampled 44.1 kHz one, the native one) are measured on the same band and the
        same time-frequency grid. ``None``: measure at ``sr``.
    true_vibrato_depth : array [N], optional
        Ground-truth vibrato depth of each window (its control curve's mean): the vibrato
        correlation of :func:`mlmlmlm.melody.pitch_report` is taken over windows where it is > 0.

    Returns
    -------
    dict
        ``{metric: {"per_channel": {c: mean over windows}, "mean": mean over channels}}`` for
        every metric, plus ``"inspection"``, ``"n_windows"``, ``"sr"``, ``"emg_sr"``, with audio
        ``"pitch": {metric: value}`` and ``"vibrato": {...}`` (:mod:`mlmlmlm.melody`) and, for
        rvq, ``"codebook": {"usage": [n_q], "perplexity": [n_q]}``.
    """
    windows = _nct(windows)
    recons, codes = reconstruct(model, windows, batch_size)
    a, e = list(audio_channels), list(emg_channels)
    emg_sr = float(emg_sr or sr)
    result = {"n_windows": int(windows.shape[0]), "sr": float(sr), "emg_sr": emg_sr}
    # (modality, channels, rate, originals, reconstructions)
    groups = []
    if a:
        groups.append(("audio", a, float(sr), windows[:, a], recons[:, a]))
    if e:
        o, r = windows[:, e], recons[:, e]
        if emg_sr != float(sr):
            o, r = (torch.from_numpy(resample(t.numpy(), sr, emg_sr)) for t in (o, r))
        groups.append(("emg", e, emg_sr, o, r))
    per: dict[str, dict[int, float]] = {"mrstft": {}, "si_sdr": {}, "identifiability": {}}
    for modality, chans, rate, o, r in groups:
        for key, values in (("mrstft", mrstft_distance(r, o)), ("si_sdr", si_sdr(r, o))):
            per[key] |= _summary(values, chans)["per_channel"]
        per["identifiability"] |= dict(zip(chans, identifiability(o, r).tolist(), strict=True))
        if modality == "audio":
            result["mel_distance"] = _summary(mel_distance(r, o, rate), a)
            result["loudness_error_db"] = _summary(loudness_error_db(r, o, rate), a)
            # pitch and vibrato of the first audio channel (mlmlmlm.melody states the tracker)
            rep = pitch_report(r[:, 0].numpy(), o[:, 0].numpy(), rate, true_vibrato_depth)
            result["pitch"] = rep["mean"]
            result["vibrato"] = rep["vibrato"]
        else:
            result["envelope_correlation"] = _summary(envelope_correlation(r, o, rate), e)
            result["median_frequency_error"] = _summary(median_frequency_error(r, o, rate), e)
            result["silent_fraction"] = _summary(silent_fraction(r, o), e)
    for key, values in per.items():
        ordered = {c: float(values[c]) for c in sorted(values)}
        result[key] = {"per_channel": ordered, "mean": float(np.nanmean(list(ordered.values())))}
    result["inspection"] = inspection(list(per["identifiability"].values()), threshold)
    if codes is not None:
        usage = codebook_usage(codes, model.cfg.codebook_size)
        result["codebook"] = {
            "usage": usage.usage.tolist(),
            "perplexity": usage.perplexity.tolist(),
        }
    return result
