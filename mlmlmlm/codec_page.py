"""The sections of a codec run page, shared by the three codec chapters: the model, training,
held-out metrics, and look-and-listen (spectrograms, traces, players).

Introduced in notebook 02_audio_codec; 03_emg_audio_codec and 04_emg_codec show the same sections
for their own configuration, each with its own narrative and phase-specific analysis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlmlmlm import evaluate, report
from mlmlmlm.notebook import Setup
from mlmlmlm.recipes import codec as recipe


def _show(obj: Any) -> None:
    from IPython.display import display

    display(obj)


def _md(text: str) -> None:
    from IPython.display import Markdown

    _show(Markdown(text))


# The model table's rows, as a reader names them: the architecture's config keys
# (CodecConfig), then the sizes and timings of Codec.describe(). A key that does not apply to
# this codec (the codebooks of a VAE, the latency of a centred codec) is left out.
MODEL_ROWS = {
    "bottleneck": "bottleneck",
    "in_channels": "input channels",
    "channels": "base channels",
    "c_mults": "channel multipliers",
    "strides": "strides (per encoder block)",
    "latent_dim": "latent dimension",
    "n_q": "RVQ levels",
    "codebook_size": "codebook size",
    "kl_beta": "KL weight β",
    "params": "parameters",
    "sample_rate": "sample rate (Hz)",
    "hop": "hop (samples per latent frame)",
    "frame_rate_hz": "latent frame rate (Hz)",
    "receptive_field_samples": "encoder receptive field (samples)",
    "receptive_field_ms": "encoder receptive field (ms)",
    "decoder_receptive_field_frames": "decoder receptive field (latent frames)",
    "causal": "padding",
    "latency_ms": "algorithmic latency (ms)",
}
_RVQ_ONLY, _VAE_ONLY = ("n_q", "codebook_size"), ("kl_beta",)


def model_rows(desc: dict) -> list[dict]:
    """``[{"property": label, "value": v}]`` for :data:`MODEL_ROWS` from ``Codec.describe()``:
    lists read as ``1, 2, 4``; numbers are left to :func:`mlmlmlm.report.markdown_table`."""
    arch = desc.get("config") or {}
    skip = _RVQ_ONLY if desc.get("bottleneck") != "rvq" else _VAE_ONLY
    rows = []
    for key, label in MODEL_ROWS.items():
        value = desc[key] if key in desc else arch.get(key)
        if value is None or key in skip:
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif key == "causal":
            value = "causal (streams chunk by chunk)" if value else "centred (offline only)"
        rows.append({"property": label, "value": value})
    return rows


def model_section(s: Setup) -> dict:
    """Show the run's title, description and the model's size, hop and receptive field."""
    cfg = s.cfg
    _md(f"**{cfg.title}** ({cfg.scale} scale). {cfg.description}")
    desc = recipe.build_codec(cfg).describe()
    _md(report.markdown_table(model_rows(desc)))
    return desc


@dataclass
class Trained:
    """What the training section leaves for the next ones."""

    result: Any  # mlmlmlm.train.TrainResult
    log: list[dict]  # metrics.jsonl rows


def train_section(s: Setup) -> Trained:
    """Train (or resume) the run's codec and draw its loss curves."""
    import matplotlib.pyplot as plt

    result = recipe.train_codec(s.cfg, s.run_dir, s.data_root, progress=False)
    log = recipe.read_log(s.run_dir)
    print(f"{result.steps} steps, stopped by {result.stopped}, "
          f"{result.samples_per_s:.0f} samples/s, {result.wall_s:.0f} s")
    report.loss_curves(log, recipe.LOSS_KEYS, title=s.cfg.title)
    plt.show()
    return Trained(result, log)


@dataclass
class Evaluated:
    model: Any  # the codec rebuilt from its checkpoint (EMA weights when kept)
    ev: dict  # mlmlmlm.evaluate.evaluate_codec output
    metrics: dict  # the run card's metrics


def metrics_section(s: Setup, trained: Trained) -> Evaluated:
    """Rebuild the codec from its checkpoint, evaluate it on the held-out windows, show the row."""
    model, _ = recipe.load_codec(s.run_dir)
    ev = recipe.evaluate_codec(s.cfg, model, s.data_root)
    metrics = recipe.codec_metrics(s.cfg, trained.log, ev, s.data_root,
                                       trained.result.wall_s)
    why = metrics.get("not_computed", {})
    rows = [{"metric": k, "value": f"not available: {why[k]}" if k in why else v}
            for k, v in metrics.items() if not isinstance(v, (list, dict))]
    _md(report.markdown_table(rows))
    return Evaluated(model, ev, metrics)


def look_and_listen(s: Setup, evaluated: Evaluated) -> list[str]:
    """Interleaved spectrograms per channel, one window's traces, and audio players."""
    import matplotlib.pyplot as plt

    cfg = s.cfg
    names = recipe.channel_names(cfg, s.data_root)
    x = recipe.eval_windows(cfg, s.data_root, cfg.eval.n_examples)
    recon, _ = evaluate.reconstruct(evaluated.model, x)
    x, recon = x.numpy(), recon.numpy()
    labels = [f"window {i + 1}" for i in range(len(x))]
    sr = cfg.model.sample_rate
    audio = [int(c) for c in cfg.loss.audio_channels]
    for c, name in enumerate(names):
        kind = "audio" if c in audio else "emg"
        report.spectrogram_grid(report.interleaved(x, recon, labels, c), sr, kind, title=name,
                                ncols=4)
        plt.show()
    report.traces(x[0], recon[0], sr, names,
                  title=f"{labels[0]}: original (grey), reconstruction (colour)")
    plt.show()
    if audio:
        rows = [(labels[i], {"original": x[i, audio[0]], "reconstruction": recon[i, audio[0]]})
                for i in range(len(x))]
        _show(report.audio_table(rows, sr))
    return names


def per_channel_table(names: list[str], evaluated: Evaluated) -> list[dict]:
    """Identifiability and the modality's own metrics for every channel."""
    ev, rows = evaluated.ev, []
    for c, name in enumerate(names):
        row = {"channel": name, "identifiability": ev["identifiability"]["per_channel"][c]}
        for key, label in (("envelope_correlation", "envelope corr."),
                           ("median_frequency_error", "median freq. error (Hz)"),
                           ("loudness_error_db", "loudness error (dB)")):
            if key in ev:
                row[label] = ev[key]["per_channel"].get(c, np.nan)
        if "pitch" in ev and c == min(ev["loudness_error_db"]["per_channel"]):
            # pitch and vibrato of the audio channel (mlmlmlm.melody: yin, mir_eval metrics)
            for key, label in (("raw_pitch_accuracy", "raw pitch accuracy"),
                               ("raw_chroma_accuracy", "raw chroma accuracy"),
                               ("voicing_recall", "voicing recall"),
                               ("median_cents_error", "median pitch error (cents)")):
                row[label] = ev["pitch"].get(key, np.nan)
            row["vibrato depth corr."] = ev["vibrato"]["depth_correlation"]
        rows.append(row)
    _md(report.markdown_table(rows, floatfmt=".3g"))
    return rows


def finish(s: Setup, evaluated: Evaluated) -> None:
    """Record the run's metrics for the run card and say how the codebooks were used."""
    report.save_metrics(s.run_dir, evaluated.metrics)
    perp = evaluated.metrics.get("codebook_perplexity")
    if perp:
        _md("Codebook perplexity per RVQ level (of "
            f"{s.cfg.model.codebook_size}): " + ", ".join(f"{p:.1f}" for p in perp))
