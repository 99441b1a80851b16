"""The codec recipe (phases of ``kind: codec``): build the codec and its loss, train it with the
one training loop, rebuild it from its checkpoint, evaluate it on the fixed held-out windows, and
produce the row of the chapter's results table.

Introduced in notebook 02_audio_codec; 03_emg_audio_codec and 04_emg_codec call the same
functions (the phase differs only by configuration).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mlmlmlm.config import RunConfig, config_from_dict
from mlmlmlm.report import LOSS_LABELS
from mlmlmlm.train import Task

# Loss columns of the paper's Tables 2, 4 and 6, in order (absent terms show as an em dash).
LOSS_KEYS = tuple(LOSS_LABELS)


class CodecTask(Task):
    """Codec phases: ``model`` is a ``Codec``, ``loss`` a ``CodecLoss`` (duck-typed).

    Batches are ``{"x": Tensor[B, C, T], ...}`` (or the tensor itself). The generator step
    returns ``loss.generator(x, out, step)``; the discriminator sees ``out.recon.detach()``.
    """

    def __init__(self, model: nn.Module, loss: nn.Module) -> None:
        self.model, self.loss = model, loss

    def step(self, batch: Any, step: int) -> tuple[dict[str, Tensor], Any]:
        x = batch["x"] if isinstance(batch, dict) else batch
        out = self.model(x)
        return self.loss.generator(x, out, step), out

    def disc_step(self, batch: Any, aux: Any, step: int) -> dict[str, Tensor] | None:
        if not self.loss.has_discriminator:
            return None
        x = batch["x"] if isinstance(batch, dict) else batch
        return self.loss.discriminator(x, aux.recon.detach())

    def disc_parameters(self) -> list[nn.Parameter]:
        return list(self.loss.discriminator_parameters()) if self.loss.has_discriminator else []

    def modules(self) -> list[nn.Module]:
        return [self.model, self.loss]

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.load_state_dict(state["loss"])


def data_config(cfg: RunConfig, data_root: str | Path):
    """The run's data section pointed at ``data_root``."""
    return dataclasses.replace(cfg.data, root=str(data_root))


def build_codec(cfg: RunConfig):
    from mlmlmlm.models.codec import Codec

    return Codec(cfg.model)


def build_loss(cfg: RunConfig):
    from mlmlmlm.losses import CodecLoss

    return CodecLoss.for_codec(cfg.loss, cfg.model)


def channel_names(cfg: RunConfig, data_root: str | Path) -> list[str]:
    """Names of the run's input channels (audio first, then EMG), as the data folder names them
    (``corpus.json`` or ``bela.json``; ``audio, emg1 ... emg6`` otherwise)."""
    from mlmlmlm.data.io import find_recordings

    refs = find_recordings(data_root)
    names = list(refs[0].channel_names) if refs else ["audio"] + [f"emg{i}" for i in range(1, 7)]
    return {"audio": names[:1], "emg": names[1:], "emg_audio": names}[cfg.data.modality]


def check_consistent(cfg: RunConfig) -> None:
    """The data section must feed what the model expects (channels and sample rate)."""
    d, m = cfg.data, cfg.model
    if d.channels != m.in_channels:
        raise ValueError(f"{cfg.run}: data.modality {d.modality!r} gives {d.channels} channels "
                         f"but model.in_channels is {m.in_channels}")
    if float(d.sr) != float(m.sample_rate):
        raise ValueError(f"{cfg.run}: data rate {d.sr} Hz != model.sample_rate {m.sample_rate}")


def train_codec(cfg: RunConfig, run_dir: str | Path, data_root: str | Path,
                progress: bool = True, resume: bool = True):
    """Train the run's codec into ``run_dir`` (resuming a checkpoint there when present).

    Returns
    -------
    mlmlmlm.train.TrainResult
    """
    from mlmlmlm.data.check import require_eval_windows
    from mlmlmlm.data.dataset import WindowDataset
    from mlmlmlm.train import train

    check_consistent(cfg)
    # a folder too small to evaluate fails here, not after the training
    require_eval_windows(data_root, cfg.eval.split, cfg.eval.window_s, cfg.data.window_hop_s)
    data = WindowDataset(data_config(cfg, data_root), "train", train=True)
    task = CodecTask(build_codec(cfg), build_loss(cfg))
    return train(task, data, cfg.train, Path(run_dir), extra=cfg.to_dict(), resume=resume,
                 progress=progress)


def train(cfg: RunConfig, run_dir: Path, data_root: Path, progress: bool = True):
    """The recipe's training entry (:func:`mlmlmlm.recipes.train_run` calls it)."""
    return train_codec(cfg, run_dir, data_root, progress=progress)


def summary(cfg: RunConfig, run_dir: Path, data_root: Path) -> dict[str, Any]:
    """Held-out metrics of the trained checkpoint, as ``mlmlmlm train --eval`` prints them."""
    model, _ = load_codec(run_dir)
    ev = evaluate_codec(cfg, model, data_root)
    out: dict[str, Any] = {"identifiability": ev["identifiability"]}
    out |= {k: v["mean"] for k, v in ev.items()
            if isinstance(v, dict) and "mean" in v and k != "identifiability"}
    # and every figure of the run card (pitch, vibrato, other splits, probe, ceilings)
    card = codec_metrics(cfg, read_log(run_dir), ev, data_root, 0.0)
    out["card"] = {k: v for k, v in card.items() if not isinstance(v, list)}
    return out


def load_codec(run_dir: str | Path, use_ema: bool = True):
    """Rebuild a trained codec from its checkpoint alone (the file carries its config).

    Returns ``(model in eval mode, RunConfig)``.
    """
    from mlmlmlm.checkpoint import load_checkpoint
    from mlmlmlm.train import load_for_eval

    path = Path(run_dir) / "checkpoint.pt"
    cfg = config_from_dict(load_checkpoint(path)["config"], source=str(path))
    return load_for_eval(path, build_codec(cfg), use_ema=use_ema), cfg


def eval_items(cfg: RunConfig, data_root: str | Path, split: str | None = None,
               n: int | None = None) -> list[dict]:
    """The fixed held-out windows of ``split`` (default the run's eval split): dataset items
    ``{"x": [C, T], "controls": {...} (when the corpus has them), "name", "start_s"}``."""
    from mlmlmlm.data.dataset import fixed_eval_windows

    # whole held-out windows (the paper's 6 s), not the shorter training crops
    dc = data_config(cfg, data_root)
    dc = dataclasses.replace(dc, segment=min(int(cfg.eval.window_s * dc.sr), dc.window_samples))
    return fixed_eval_windows(dc, split or cfg.eval.split, n or cfg.eval.n_windows)


def eval_windows(cfg: RunConfig, data_root: str | Path, n: int | None = None,
                 split: str | None = None) -> torch.Tensor:
    """The fixed held-out windows ``[N, C, T]`` of the run's eval split (same list every call)."""
    return torch.stack([it["x"] for it in eval_items(cfg, data_root, split, n)])


def _true_depth(items: list[dict]) -> np.ndarray | None:
    # [N] mean ground-truth vibrato depth per window, or None without control curves
    if not all("vibrato_depth" in it.get("controls", {}) for it in items):
        return None
    return np.array([float(it["controls"]["vibrato_depth"].mean()) for it in items])


def evaluate_codec(cfg: RunConfig, model, data_root: str | Path) -> dict[str, Any]:
    """All held-out metrics of DESIGN §4 for this codec (see :mod:`mlmlmlm.evaluate`), on the
    eval split and on each of ``eval.also_splits`` (under ``"splits"``), plus, for an EMG codec
    on a corpus with control curves, the control probe (:func:`control_probe`)."""
    from mlmlmlm.data.io import DataError
    from mlmlmlm.evaluate import evaluate_codec as _evaluate

    audio = list(cfg.loss.audio_channels)

    def measure(items):
        x = torch.stack([it["x"] for it in items])
        emg = [c for c in range(x.shape[1]) if c not in audio]
        return _evaluate(model, x, cfg.model.sample_rate, audio, emg,
                         threshold=cfg.eval.inspection_threshold, emg_sr=cfg.eval.emg_sr,
                         true_vibrato_depth=_true_depth(items))

    items = eval_items(cfg, data_root)
    result = measure(items)
    for split in cfg.eval.also_splits:
        try:
            result.setdefault("splits", {})[split] = measure(eval_items(cfg, data_root, split))
        except (DataError, ValueError, RuntimeError) as e:  # no such split in this folder
            result.setdefault("splits", {})[split] = {"not_computed": str(e).splitlines()[0]}
    if not audio:
        result["control_probe"] = control_probe(cfg, model, data_root, items)
        result["band_ceiling"] = band_ceiling(cfg, model, items)
    return result


def band_ceiling(cfg: RunConfig, model, items: list[dict]) -> dict:
    """Identifiability of the 16-band random-phase resynthesis of the held-out EMG windows at the
    codec's frame hop, measured at ``eval.emg_sr`` like the codec (chapter 4's ceiling)."""
    from mlmlmlm.data.preprocess import resample
    from mlmlmlm.evaluate import band_resynthesis, identifiability

    x = torch.stack([it["x"] for it in items]).numpy()
    sr, rate = float(cfg.model.sample_rate), float(cfg.eval.emg_sr)
    if rate != sr:
        x = resample(x, sr, rate)
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    hop = max(1, round(rate / model.cfg.frame_rate))
    ident = identifiability(x, band_resynthesis(x, rate, hop))
    return {"identifiability": float(ident.mean()), "per_channel": ident.tolist(), "hop": hop,
            "n_bands": 16}


def control_probe(cfg: RunConfig, model, data_root: str | Path, test_items: list[dict]) -> dict:
    """Ridge probe (:mod:`mlmlmlm.probe`) from the codec's quantized latents, frame by frame, to
    the corpus's control curves, fit on the train split's windows, R² on ``test_items``; beside
    the same probe fed the original EMG's envelopes at the codec's frame rate (the ceiling).

    Returns ``{"latents": {"r2", "mean"}, "envelopes": {...}, "latents_unsmoothed": {...},
    "ratio"}`` or ``{"not_computed":
    reason}`` when the corpus has no control curves."""
    from mlmlmlm import probe

    train_items = eval_items(cfg, data_root, "train")
    if not all(it.get("controls") for it in (*train_items, *test_items)):
        return {"not_computed": "the corpus has no control curves"}
    names = [k for k in probe.PROBE_CONTROLS if k in test_items[0]["controls"]]
    sr, rate = float(cfg.model.sample_rate), float(model.cfg.frame_rate)

    def rows(items):
        x = torch.stack([it["x"] for it in items])
        with torch.no_grad():
            was = model.training
            model.eval()
            z = torch.cat([model.encode(b).z for b in x.split(8)])  # [N, D, frames]
            model.train(was)
        lat, raw, env = [], [], []
        for it, zi in zip(items, z, strict=True):
            n = zi.shape[-1]
            c_rate = len(next(iter(it["controls"].values()))) * sr / it["x"].shape[-1]
            y = probe.frame_controls({k: it["controls"][k].numpy() for k in names}, c_rate,
                                     rate, n, names)
            f = zi.T.numpy().astype(np.float64)  # [frames, D]
            raw.append((f, y))
            lat.append((probe.smooth(f, rate), y))  # the envelopes' 10-Hz resolution
            env.append((probe.envelope_features(it["x"].numpy().astype(np.float64), sr, rate, n), y))
        return lat, raw, env

    (lat_a, raw_a, env_a), (lat_b, raw_b, env_b) = rows(train_items), rows(test_items)
    out = {"latents": probe.probe(lat_a, lat_b, names), "envelopes": probe.probe(env_a, env_b, names),
           "latents_unsmoothed": probe.probe(raw_a, raw_b, names)}
    out["ratio"] = out["latents"]["mean"] / out["envelopes"]["mean"]
    return out


def codec_metrics(cfg: RunConfig, log: list[dict], ev: dict[str, Any], data_root: str | Path,
                  wall_s: float) -> dict[str, Any]:
    """The run card's metrics: the paper's loss columns (averaged over the last logged steps),
    epochs, held-out identifiability per modality, the inspection verdict and every eval mean."""
    steps = int(log[-1]["step"]) if log else 0
    audio = [int(c) for c in cfg.loss.audio_channels]
    ident = {int(c): v for c, v in ev["identifiability"]["per_channel"].items()}
    emg = [v for c, v in ident.items() if c not in audio]
    # wall time of the whole run, across resumes (the log's wall_s is cumulative)
    train_wall_s = float(log[-1].get("wall_s", wall_s)) if log else wall_s
    out: dict[str, Any] = {
        "steps": steps, "epochs": round(epochs_seen(cfg, steps, data_root), 3),
        "train_wall_s": round(train_wall_s, 1), **final_losses(log, loss_weights(cfg)),
        "identifiability_audio": ident[audio[0]] if audio else None,
        "identifiability_emg": float(np.mean(emg)) if emg else None,
        "identifiability_per_channel": [ident[c] for c in sorted(ident)],
        "inspection": ev["inspection"], "paper_inspection": cfg.paper.get("inspection"),
        "n_eval_windows": ev["n_windows"], "max_steps": int(cfg.train.max_steps),
    }
    if steps < cfg.train.max_steps:  # the budget is the step count; the time guard cut it
        out["stopped"] = (f"the time guard (train.max_minutes = {cfg.train.max_minutes:g}) cut "
                          f"the run at step {steps} of {cfg.train.max_steps}")
    out |= _eval_figures(ev)
    for split, sub in ev.get("splits", {}).items():
        if "not_computed" in sub:
            out[f"identifiability_{split}"] = None
            out.setdefault("not_computed", {})[f"identifiability_{split}"] = sub["not_computed"]
            continue
        ident_s = [v for c, v in sub["identifiability"]["per_channel"].items() if c in audio]
        out[f"identifiability_{split}"] = ident_s[0] if ident_s else sub["identifiability"]["mean"]
        out |= {f"{k}_{split}": v for k, v in _eval_figures(sub).items()}
    cp = ev.get("control_probe")
    if cp and "not_computed" not in cp:
        out["probe_r2_latents"] = cp["latents"]["mean"]
        out["probe_r2_envelopes"] = cp["envelopes"]["mean"]
        out["probe_r2_latents_unsmoothed"] = cp["latents_unsmoothed"]["mean"]
        out["probe_ratio"] = cp["ratio"]
        out["probe_r2_per_control"] = cp["latents"]["r2"]
    elif cp:
        out.setdefault("not_computed", {})["probe_r2_latents"] = cp["not_computed"]
    if "band_ceiling" in ev:
        out["band_ceiling_identifiability"] = ev["band_ceiling"]["identifiability"]
        if emg:
            out["identifiability_vs_ceiling"] = float(np.mean(emg)) / max(
                ev["band_ceiling"]["identifiability"], 1e-9)
    if "envelope_correlation" in ev:
        out["envelope_correlation_per_channel"] = [
            ev["envelope_correlation"]["per_channel"][c]
            for c in sorted(ev["envelope_correlation"]["per_channel"])]
    why = out.pop("not_computed", {})
    for key, value in out.items():
        if isinstance(value, float) and not np.isfinite(value):
            silent = out.get("eval_silent_fraction")
            why[key] = ("the reconstructions are silent (below -40 dB of their originals)"
                        if silent is not None and silent > 0.5 else "not a finite number")
    if why:
        out["not_computed"] = why
    if "codebook" in ev:
        out["codebook_usage"] = ev["codebook"]["usage"]
        out["codebook_perplexity"] = ev["codebook"]["perplexity"]
    return out


def _eval_figures(ev: dict[str, Any]) -> dict[str, Any]:
    # the card's eval_* keys: every per-channel metric's mean, pitch and vibrato figures
    out = {f"eval_{k}": v["mean"] for k, v in ev.items()
           if isinstance(v, dict) and "mean" in v and k != "identifiability"}
    out |= {f"eval_{k}": v for k, v in ev.get("pitch", {}).items()}
    vib = ev.get("vibrato", {})
    if vib:
        out["eval_vibrato_depth_correlation"] = vib["depth_correlation"]
        out["eval_vibrato_depth_orig_cents"] = vib["depth_orig_cents"]
        out["eval_vibrato_depth_recon_cents"] = vib["depth_recon_cents"]
    return out


def read_log(run_dir: str | Path) -> list[dict]:
    """The run's ``metrics.jsonl`` as a list of dicts (one per logged step)."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_losses(log: list[dict], weights: dict[str, float] | None = None,
                 fraction: float = 0.1) -> dict[str, float]:
    """Each loss averaged over the last ``fraction`` of logged steps (the paper averages over the
    steps of its last epoch), multiplied by its weight in ``weights``: the paper's columns are
    the weighted terms, so that they add up to the ``train`` column."""
    tail = log[-max(1, int(len(log) * fraction)):]
    out = {}
    for key in LOSS_KEYS:
        vals = [row[key] for row in tail if key in row]
        if vals:
            out[key] = float(np.mean(vals)) * (weights or {}).get(key, 1.0)
    return out


def loss_weights(cfg: RunConfig) -> dict[str, float]:
    """The weight each logged term carries in ``train`` (the KL weight is the model's β)."""
    return {**cfg.loss.lambdas, "kl": cfg.model.kl_beta}


def epochs_seen(cfg: RunConfig, steps: int, data_root: str | Path) -> float:
    """Passes over the training split the run made (samples seen / samples in the split)."""
    from mlmlmlm.data.check import split_seconds

    train_s = split_seconds(data_root, "train")
    train_s *= len(cfg.data.time_stretch)
    seen_s = steps * cfg.train.batch_size * cfg.data.segment / cfg.data.sr
    return seen_s / max(train_s, 1e-9)
