"""Surface EMG for the paper's six placements: muscle activations from the playing plan, a
motor-unit model per muscle, the BITalino sensor chain, and its calibration against real PLUX EMG.

Introduced in notebook 01_dataset.

Motor units follow Fuglevand et al. (1993): recruitment thresholds exponentially distributed
(many small low-threshold units, few large ones: Henneman's size principle), firing rates rising
from 8 to 35 Hz with drive, Gaussian discharge jitter, and a Hermite-Rodriguez MUAP per unit
(biphasic/triphasic mix, wider and weaker the deeper the unit). The sum is computed at 2205 Hz
(the sensor band ends at 480 Hz), band-passed 25-480 Hz like the BITalino EMG sensor, given
mains hum, amplifier noise and a drifting electrode offset, upsampled to Bela's 22050 Hz and
quantised on a 10-bit grid over the sensor's ±1.65 mV range. Signals are in millivolts.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
import scipy.ndimage as ndi
import scipy.signal as ss

from mlmlmlm.data.synth import plux
from mlmlmlm.data.synth.plan import MAX_FORCE_N, RATE, Plan

CHANNELS = (
    "emg_lat_dorsi_r",
    "emg_wrist_flex_r",
    "emg_wrist_flex_l",
    "emg_wrist_ext_l",
    "emg_deltoid_r",
    "emg_biceps_l",
)
EMG_SR = 22050
DECIM = 10
FS_INT = EMG_SR // DECIM  # internal rate of the motor-unit sum, 2205 Hz
FULL_SCALE_MV = 1.65  # BITalino EMG output range ±1.64 mV (VCC 3.3 V, gain 1009)
ADC_BITS = 10
BAND_HZ = (25.0, 480.0)
POOL_SEED = 20260  # the electrodes sit on the same muscles in every recording
HUM_RATIO = 0.4  # mains hum amplitude / amplifier noise RMS: a small hum
REF_DRIVE = 0.5  # calibration: a contraction at this drive matches the real contractions
# How close the calibration protocol must come to the real targets: (relative|absolute, tol).
TOLERANCE = {
    "median_freq_hz": ("rel", 0.10),
    "rms_active": ("rel", 0.10),
    "rms_rest": ("rel", 0.25),
    "kurtosis_active": ("abs", 2.0),
    "mains_share": ("abs", 0.03),
}


@dataclass(frozen=True)
class MuscleModel:
    """Motor-unit pool of one muscle: ``n_units``; thresholds from ``recruit_max / rr`` to
    ``recruit_max`` (drive in [0, 1]); MUAP amplitudes spanning ``amp_range``; firing
    ``min_rate_hz``-``max_rate_hz`` with ISI coefficient of variation ``isi_cv``; MUAP width
    (Hermite-Rodriguez λ, ms) ``width_ms`` for a superficial unit."""

    n_units: int = 100
    recruit_max: float = 0.7
    rr: float = 30.0
    amp_range: float = 40.0
    min_rate_hz: float = 8.0
    max_rate_hz: float = 35.0
    isi_cv: float = 0.15
    width_ms: float = 1.6


# Units the electrode picks up (not the muscle's whole pool): few enough, with a wide enough
# amplitude range, that the signal is as peaky as the real recordings (windowed kurtosis ~4-5).
MUSCLES = {
    "emg_lat_dorsi_r": MuscleModel(n_units=70, recruit_max=0.8, amp_range=120.0),
    "emg_wrist_flex_r": MuscleModel(n_units=60, recruit_max=0.6, amp_range=100.0),
    "emg_wrist_flex_l": MuscleModel(n_units=60, recruit_max=0.6, amp_range=100.0),
    "emg_wrist_ext_l": MuscleModel(n_units=60, recruit_max=0.6, amp_range=100.0),
    "emg_deltoid_r": MuscleModel(n_units=70, recruit_max=0.8, amp_range=120.0),
    "emg_biceps_l": MuscleModel(n_units=60, recruit_max=0.75, amp_range=100.0),
}


@dataclass(frozen=True)
class ChannelCalibration:
    """Per-channel result of :func:`calibrate`: MUAP width scale, gain (mV per unit MU sum),
    amplifier noise (mV RMS before the band-pass) and mains hum amplitude (mV)."""

    width_scale: float = 1.0
    gain_mv: float = 1.0
    noise_mv: float = 0.01
    hum_mv: float = 0.004


def _burst(impulses: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Gaussian bursts at impulse positions, peak 1."""
    g = ndi.gaussian_filter1d(impulses.astype(np.float64), sigma_frames, mode="constant")
    return np.clip(g * sigma_frames * np.sqrt(2 * np.pi), 0.0, 1.0)


def activations(plan: Plan, rng: np.random.Generator) -> np.ndarray:
    """Neural drive of the six muscles [6, T_c] in [0, 1] at :data:`RATE` Hz, from the plan.

    Right latissimus dorsi: bow force, down-bows, the lower strings. Right wrist flexors: force and
    a burst at every bow change. Left wrist flexors: finger pressure on stopped notes (more in
    higher positions) and shifts. Left wrist extensors: shifts and the wrist part of vibrato.
    Right deltoid: arm height (lower string = higher arm) and bow speed. Left biceps: holding the
    instrument, elbow flexion for higher positions, and the arm part of vibrato (oscillating at
    the vibrato rate).
    """
    n = len(plan.bow_force)
    f = np.clip(plan.bow_force / MAX_FORCE_N, 0.0, 1.0)
    v = np.clip(np.abs(plan.bow_velocity) / 0.8, 0.0, 1.5)
    down = (plan.bow_velocity > 0).astype(float)
    playing = ndi.uniform_filter1d((plan.note >= 0).astype(float), 9, mode="nearest")
    stopped = playing * (plan.position > 0)
    pos = np.clip(plan.position / 12.0, 0.0, 1.0)
    low = (3.0 - plan.string) / 3.0
    vib = np.clip(plan.vibrato_depth / 35.0, 0.0, 1.0)
    osc = 0.5 + 0.5 * np.sin(plan.vibrato_phase)
    bow = _burst(plan.bow_change, 4.0)
    shift = _burst(plan.shift, 6.0)
    a = np.stack(
        [
            0.04 + 0.40 * f + 0.10 * v * down + 0.08 * low * playing,
            0.05 + 0.25 * f + 0.30 * bow * playing,
            0.06 + (0.18 + 0.15 * pos) * stopped + 0.25 * shift,
            0.05 + 0.12 * stopped + 0.20 * vib * (1 - osc) + 0.20 * shift,
            (0.05 + 0.15 * low + 0.15 * v + 0.08 * f) * (0.6 + 0.4 * playing),
            0.10 + 0.15 * pos * playing + 0.22 * vib * osc + 0.12 * shift,
        ]
    )
    slow = ndi.gaussian_filter1d(rng.standard_normal((6, n)), 50.0, axis=1, mode="wrap")
    slow *= 0.03 / (slow.std(axis=1, keepdims=True) + 1e-12)
    a = ndi.gaussian_filter1d(a + slow, 2.0, axis=1, mode="nearest")
    return np.clip(a, 0.0, 1.0)


@functools.cache
def unit_pool(channel: str) -> dict[str, np.ndarray]:
    """The fixed motor-unit pool of ``channel``: arrays [n_units] ``threshold``, ``amp``,
    ``width`` (λ in s, before the calibrated width scale), ``mix`` (biphasic share),
    ``sign`` and ``phase0`` (initial firing phase)."""
    m = MUSCLES[channel]
    rng = np.random.default_rng([POOL_SEED, CHANNELS.index(channel)])
    i = np.arange(m.n_units) / (m.n_units - 1)
    depth = rng.uniform(0.0, 1.0, m.n_units)
    return {
        "threshold": m.recruit_max * np.exp(np.log(m.rr) * (i - 1.0)),
        "amp": np.exp(np.log(m.amp_range) * i) * np.exp(-depth / 0.4),
        "width": m.width_ms * 1e-3 * (1.0 + 1.2 * depth),
        "mix": rng.uniform(0.3, 1.0, m.n_units),
        "sign": rng.choice([-1.0, 1.0], m.n_units),
        "phase0": rng.uniform(0.0, 1.0, m.n_units),
    }


def spike_times(
    act: np.ndarray, channel: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Discharge times of every unit for drive ``act`` [T_c] at :data:`RATE` Hz.

    Each unit integrates its rate (0 below threshold, then linear from ``min_rate_hz`` up to
    ``max_rate_hz`` at full drive); it fires where the integral crosses an integer, plus
    Gaussian jitter of ``isi_cv`` / rate. Returns ``times`` [S] (s) and ``units`` [S].
    """
    m, pool = MUSCLES[channel], unit_pool(channel)
    th = pool["threshold"][:, None]
    above = act[None, :] - th  # [U, T_c]
    rate = np.where(
        above >= 0,
        np.minimum(
            m.min_rate_hz + (m.max_rate_hz - m.min_rate_hz) * above / (1.0 - th), m.max_rate_hz
        ),
        0.0,
    )
    phase = pool["phase0"][:, None] + np.cumsum(rate, axis=1) / RATE  # [U, T_c], end of frame k
    t_end = (np.arange(act.shape[0]) + 1) / RATE
    times, units = [], []
    for u in range(m.n_units):
        ph = phase[u]
        first, last = int(np.ceil(ph[0])), int(np.floor(ph[-1]))
        if last < first:
            continue
        k = np.arange(first, last + 1, dtype=np.float64)
        # Phase is non-decreasing; interp needs a strictly increasing x: nudge flat stretches.
        t = np.interp(k, ph + np.arange(len(ph)) * 1e-9, t_end)
        r = rate[u, np.minimum((t * RATE).astype(np.int64), act.shape[0] - 1)]
        t = t + rng.normal(0.0, 1.0, len(t)) * m.isi_cv / np.maximum(r, m.min_rate_hz)
        times.append(t)
        units.append(np.full(len(t), u))
    if not times:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(times), np.concatenate(units)


def muap_sum(
    times: np.ndarray, units: np.ndarray, channel: str, n: int, width_scale: float = 1.0
) -> np.ndarray:
    """Sum of every discharge's MUAP on an [n] grid at :data:`FS_INT` Hz (unit gain).

    A MUAP is ``amp * sign * (mix * HR1 + (1 - mix) * HR2)`` of ``(t - t_spike) / width``, where
    HR1 = x·e^(-x²) (biphasic, peak-normalised) and HR2 = (1 - 2x²)·e^(-x²) (triphasic). Each
    spike's waveform is evaluated at its exact sub-sample time and added with one bincount.
    """
    pool = unit_pool(channel)
    if len(times) == 0:
        return np.zeros(n)
    lam = pool["width"][units] * width_scale  # [S]
    half = int(np.ceil(4.0 * pool["width"].max() * width_scale * FS_INT))
    pos = times * FS_INT
    n0 = np.floor(pos).astype(np.int64)
    frac = pos - n0
    j = np.arange(-half, half + 1)  # [L]
    x = (j[None, :] - frac[:, None]) / (lam[:, None] * FS_INT)  # [S, L]
    g = np.exp(-(x**2))
    mix = pool["mix"][units][:, None]
    wave = (mix * x * g / 0.4289 + (1.0 - mix) * (1.0 - 2.0 * x**2) * g) * (
        pool["amp"] * pool["sign"]
    )[units][:, None]
    idx = n0[:, None] + j[None, :]
    ok = (idx >= 0) & (idx < n)
    return np.bincount(idx[ok], weights=wave[ok], minlength=n)


_BAND_SOS = ss.butter(2, BAND_HZ, btype="band", fs=FS_INT, output="sos")


def sensor_chain(mu: np.ndarray, cal: ChannelCalibration, rng: np.random.Generator) -> np.ndarray:
    """BITalino EMG sensor + Bela ADC for one channel.

    ``mu`` [T_int] motor-unit sum at :data:`FS_INT` Hz. Adds amplifier noise and mains hum (50 Hz,
    odd harmonics stronger), band-passes 25-480 Hz (2nd-order Butterworth, causal like the
    analog front end), upsamples ×10 to 22050 Hz, adds a slowly drifting electrode offset and
    quantises on a 10-bit grid over ±:data:`FULL_SCALE_MV`. Returns [T_int * 10] in mV.
    """
    n = len(mu)
    t = np.arange(n) / FS_INT
    x = cal.gain_mv * mu + cal.noise_mv * rng.standard_normal(n)
    f_mains = 50.0 + rng.uniform(-0.05, 0.05)
    # Hum level wanders by ~25 % as the player moves (smoothed noise at 10 Hz, unit std).
    wobble = ndi.gaussian_filter1d(rng.standard_normal(n // 220 + 2), 3.0, mode="wrap")
    wobble = 1.0 + 0.25 * np.interp(t, np.arange(len(wobble)) * 0.1, wobble / wobble.std())
    for h, rel in ((1, 1.0), (2, 0.25), (3, 0.5), (4, 0.1), (5, 0.2)):
        x += (
            cal.hum_mv
            * rel
            * wobble
            * np.sin(2 * np.pi * h * f_mains * t + rng.uniform(0, 2 * np.pi))
        )
    x = ss.sosfilt(_BAND_SOS, x)
    # Electrode offset: a constant plus a mean-reverting drift (AR(1) at 10 Hz, τ = 20 s, 20 µV).
    a = np.exp(-0.1 / 20.0)
    drift = ss.lfilter([0.02 * np.sqrt(1 - a * a)], [1.0, -a], rng.standard_normal(n // 220 + 2))
    y = ss.resample_poly(x, DECIM, 1)
    # (added after upsampling: a DC step would leave images at multiples of 2205 Hz)
    t_out = np.arange(len(y)) / EMG_SR
    y += rng.uniform(-0.04, 0.04) + np.interp(
        t_out, np.arange(len(drift)) * 0.1, ndi.gaussian_filter1d(drift, 5.0)
    )
    lsb = 2 * FULL_SCALE_MV / 2**ADC_BITS
    return np.clip(np.round(y / lsb) * lsb, -FULL_SCALE_MV, FULL_SCALE_MV - lsb)


def synthesize(
    act: np.ndarray,
    cal: dict[str, ChannelCalibration],
    key: tuple[int, ...],
    skip: tuple[str, ...] = (),
) -> np.ndarray:
    """Six EMG channels [6, T_c * 220.5] in mV at :data:`EMG_SR` for drives ``act`` [6, T_c]
    (T_c a multiple of 20). Random streams derive from ``key`` and the channel index, so a
    channel's signal does not depend on the others. Channels named in ``skip`` stay zero (the
    caller fills them with real EMG)."""
    n_int = act.shape[1] * FS_INT // RATE
    out = np.zeros((len(CHANNELS), n_int * DECIM))
    for c, name in enumerate(CHANNELS):
        if name in skip:
            continue
        times, units = spike_times(act[c], name, np.random.default_rng([*key, c, 0]))
        mu = muap_sum(times, units, name, n_int, cal[name].width_scale)
        out[c] = sensor_chain(mu, cal[name], np.random.default_rng([*key, c, 1]))
    return out


# ----------------------------------------------------------------------------- calibration
def protocol_drive(seconds: float = 24.0, level: float = REF_DRIVE) -> np.ndarray:
    """Calibration drive [T_c]: 2 s rest / 2 s contraction at ``level`` with 0.2 s ramps, like the
    cyclic contractions of the PLUX recordings."""
    t = np.arange(int(seconds * RATE)) / RATE
    u = (t % 4.0) - 2.0
    return level * np.clip(np.minimum(u, 2.0 - u) / 0.2, 0.0, 1.0)


def targets(recs: list) -> dict[str, dict[str, float]]:
    """Per-channel target statistics (medians over the matching real recordings at 1 kHz):
    biceps recordings for the left biceps, adductor pollicis (hand) for the forearm channels,
    all recordings for the shoulder/back channels."""
    stats = [(r.muscle, plux.emg_stats(plux.to_rate(r.emg, r.fs), plux.STATS_FS)) for r in recs]
    group = {
        "emg_biceps_l": {"biceps_brachii"},
        "emg_wrist_flex_r": {"adductor_pollicis"},
        "emg_wrist_flex_l": {"adductor_pollicis"},
        "emg_wrist_ext_l": {"adductor_pollicis"},
    }
    out = {}
    for ch in CHANNELS:
        sel = [s for m, s in stats if m in group.get(ch, {"biceps_brachii", "adductor_pollicis"})]
        out[ch] = {
            k: float(np.median([s[k] for s in sel]))
            for k in ("median_freq_hz", "rms_active", "rms_rest", "kurtosis_active", "mains_share")
        }
        out[ch]["n_recordings"] = len(sel)
    return out


def _stats_1k(x: np.ndarray, fs: float) -> dict:
    return plux.emg_stats(plux.to_rate(x, fs), plux.STATS_FS)


@functools.lru_cache(maxsize=1)
def calibrate() -> tuple[dict[str, ChannelCalibration], dict]:
    """Fit each channel to the real PLUX targets on the calibration protocol.

    1. MUAP width scale: median frequency scales as 1/width, so four multiplicative updates
       bring the band-passed MU sum to the target median frequency.
    2. Gain: the band-passed MU sum's active-window RMS equals the target ``rms_active`` (then
       corrected for the noise, together with step 3).
    3. Noise (hum amplitude :data:`HUM_RATIO` × noise): start where the noise-only chain's RMS
       equals the target ``rms_rest``, then scale so the protocol's rest windows (which also
       hold some activity) match it.
    The protocol is then run through the full chain and its statistics recorded as achieved.
    Returns the calibrations and a JSON-able report ``{channel: {target, achieved, params}}``.
    """
    tg = targets(plux.load_plux())
    drive = protocol_drive()
    n_int = len(drive) * FS_INT // RATE
    cals, report = {}, {}
    for c, ch in enumerate(CHANNELS):
        rng = np.random.default_rng([POOL_SEED, 1, c])
        times, units = spike_times(drive, ch, rng)
        w = 1.0
        for _ in range(4):
            bp = ss.sosfilt(_BAND_SOS, muap_sum(times, units, ch, n_int, w))
            mf = _stats_1k(bp, FS_INT)["median_freq_hz"]
            w *= mf / tg[ch]["median_freq_hz"]
        bp = ss.sosfilt(_BAND_SOS, muap_sum(times, units, ch, n_int, w))
        gain = tg[ch]["rms_active"] / _stats_1k(bp, FS_INT)["rms_active"]
        mu = muap_sum(times, units, ch, n_int, w)
        unit = ChannelCalibration(width_scale=w, gain_mv=gain, noise_mv=1.0, hum_mv=HUM_RATIO)
        noise_mv = tg[ch]["rms_rest"] / _stats_1k(sensor_chain(0 * mu, unit, rng), EMG_SR)["rms"]
        floor = 0.3 * noise_mv
        for _ in range(3):  # rest windows also hold the ramps' activity: correct for it
            cal = ChannelCalibration(
                float(w), float(gain), float(noise_mv), float(HUM_RATIO * noise_mv)
            )
            got = _stats_1k(sensor_chain(mu, cal, np.random.default_rng([POOL_SEED, 2, c])), EMG_SR)
            noise_mv = max(noise_mv * tg[ch]["rms_rest"] / got["rms_rest"], floor)
            gain *= tg[ch]["rms_active"] / got["rms_active"]
        cals[ch] = cal
        report[ch] = {
            "target": tg[ch],
            "achieved_protocol": {
                k: got[k]
                for k in (
                    "median_freq_hz",
                    "rms_active",
                    "rms_rest",
                    "kurtosis_active",
                    "mains_share",
                )
            },
            "params": asdict(cal),
            "model": asdict(MUSCLES[ch]),
        }
    return cals, report
