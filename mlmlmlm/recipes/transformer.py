"""The translation recipe (phases of ``kind: transformer``): the Transformer trained on the one
loop by teacher forcing over cached codec tokens (codecs frozen), rebuilt from its checkpoint with
the codecs it was trained on, and evaluated on the fixed held-out token windows.

Introduced in notebook 05_transformer (``mlmlmlm train 05_transformer/te2``); the streaming
translator (:mod:`mlmlmlm.stream`) starts from :func:`load_translation`.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mlmlmlm.config import REPO_ROOT, ConfigError, RunConfig, config_from_dict
from mlmlmlm.data.tokens import CodecPair, CodecsConfig, MissingCodecError, load_codecs
from mlmlmlm.train import Task


@dataclass
class GenerateConfig:
    """Generation defaults of a translation run (``mlmlmlm translate`` and the streaming
    translator read them; their flags override them)."""

    temperature: float = 1.0  # 0: argmax
    top_k: int | None = None  # keep the k most likely codes (None: all)
    top_p: float | None = None  # nucleus sampling (None: off)
    guidance: float = 1.0  # classifier-free guidance weight (1: the conditional model alone)
    prompt_s: float = 0.5  # seconds of audio prompt that give the start tokens
    max_cache_s: float | None = 30.0  # sliding window over the caches (None: unbounded)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.prompt_s < 0:
            raise ValueError("temperature and prompt_s must be >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or null, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1] or be null, got {self.top_p}")


class CodecMismatchError(ConfigError):
    """A translation checkpoint met codecs other than the ones it was trained on."""


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP wraps the model while training


class TransformerTask(Task):
    """Translation phases: teacher forcing of ``TranslationTransformer`` on aligned token crops.

    Batches are ``{"audio": LongTensor [B, n_q, T], "emg": LongTensor [B, emg_n_q, T]}``;
    EMG condition dropout (``model.cond_dropout``) is drawn by the model in training mode. The
    codecs are not part of the task: the tokens were encoded once by the frozen codecs, whose
    checkpoint hashes (``codecs``) the checkpoint keeps.
    """

    def __init__(self, model: nn.Module, codecs: dict[str, dict[str, str]],
                 emg_scale: list[float] | None = None) -> None:
        # emg_scale [C]: the corpus's per-channel EMG scale the tokens were made with, kept in
        # the checkpoint so translating raw EMG needs no corpus
        self.model, self.codecs, self.emg_scale = model, codecs, emg_scale

    def step(self, batch: Any, step: int) -> tuple[dict[str, Tensor], Any]:
        out = self.model(batch["audio"], batch["emg"])
        terms = _unwrap(self.model).loss(out)
        losses = {"train": terms.loss}
        for q in range(terms.level_loss.shape[0]):  # per RVQ level: CE and token accuracy
            losses[f"loss_q{q}"] = terms.level_loss[q]
            losses[f"acc_q{q}"] = terms.level_accuracy[q]
        return losses, None

    def state_dict(self) -> dict[str, Any]:
        return {"codecs": self.codecs, "emg_scale": self.emg_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = {k: v.get("sha256") for k, v in (state.get("codecs") or {}).items()}
        now = {k: v["sha256"] for k, v in self.codecs.items()}
        if saved != now:
            raise CodecMismatchError("the checkpoint was trained on other codec checkpoints "
                                     f"({saved} != {now}): start over")


def build_model(cfg: RunConfig):
    from mlmlmlm.models.transformer import TranslationTransformer

    return TranslationTransformer(cfg.model)


def check_codecs(cfg: RunConfig, pair: CodecPair) -> None:
    """``model.n_q``, ``codebook_size`` (audio) and ``emg_n_q``, ``emg_codebook_size`` must be
    the codecs' (one-line ``ConfigError`` naming the phase's base.yaml and the codec run)."""
    m = cfg.model
    wanted = {"n_q": (pair.audio.cfg.n_q, pair.audio_dir),
              "codebook_size": (pair.audio.cfg.codebook_size, pair.audio_dir),
              "emg_n_q": (pair.emg.cfg.n_q, pair.emg_dir),
              "emg_codebook_size": (pair.emg.cfg.codebook_size, pair.emg_dir)}
    for key, (value, run_dir) in wanted.items():
        if getattr(m, key) != value:
            raise ConfigError(f"experiments/{cfg.phase}/base.yaml: model.{key} is "
                              f"{getattr(m, key)} but the codec in {run_dir} has {value} "
                              f"(set model.{key}: {value} at scale {cfg.scale})")


def _supersede_if_other_codecs(run_dir: Path, pair: CodecPair) -> None:
    """A checkpoint trained on other codec checkpoints is not resumed: its run dir moves to
    ``<run>.superseded`` (kept, as :func:`mlmlmlm.checkpoint.supersede_if_changed` does)."""
    from mlmlmlm.checkpoint import load_checkpoint

    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return
    saved = (load_checkpoint(path).get("task") or {}).get("codecs") or {}
    now = pair.record()
    if {k: v.get("sha256") for k, v in saved.items()} == {k: v["sha256"] for k, v in now.items()}:
        return
    old = run_dir.with_name(run_dir.name + ".superseded")
    if old.exists():
        shutil.rmtree(old)
    os.replace(run_dir, old)
    print(f"{run_dir}: trained on other codec checkpoints; moved to {old}, starting over")


def train(cfg: RunConfig, run_dir: Path, data_root: Path, progress: bool = True,
          resume: bool = True):
    """Encode the corpus once (the token cache), then train the run's Transformer into
    ``run_dir`` on the one training loop (resuming a checkpoint there when present).

    Returns
    -------
    mlmlmlm.train.TrainResult
    """
    from mlmlmlm.data.check import require_eval_windows
    from mlmlmlm.data.tokens import TokenDataset, split_tokens
    from mlmlmlm.train import train as train_loop

    run_dir = Path(run_dir)
    pair = load_codecs(cfg.codecs, cfg.scale, data_root, source=cfg.run)
    check_codecs(cfg, pair)
    require_eval_windows(data_root, cfg.eval.split, cfg.eval.window_s, cfg.data.window_hop_s)
    tracks = split_tokens(pair, data_root, "train", cfg.data.time_stretch, progress=progress)
    split_tokens(pair, data_root, cfg.eval.split, progress=progress)  # encoded once, now
    data = TokenDataset(tracks, cfg.data, pair.frame_rate, train=True)
    if resume:
        _supersede_if_other_codecs(run_dir, pair)
    torch.manual_seed(cfg.train.seed)  # the initial weights follow the run's seed
    from mlmlmlm.translate import corpus_emg_scale

    scale, _ = corpus_emg_scale(pair.emg_cfg.data, data_root)  # what the token cache used
    task = TransformerTask(build_model(cfg), pair.record(),
                           None if scale is None else [float(v) for v in scale])
    return train_loop(task, data, cfg.train, run_dir, extra=cfg.to_dict(), resume=resume,
                      progress=progress)


# ---------------------------------------------------------------------------- loading
def _codec_dir(recorded: str) -> Path:
    p = Path(recorded)
    return p if p.is_absolute() else REPO_ROOT / p


def load_pair(run_dir: str | Path, use_ema: bool = True):
    """``(model in eval mode, RunConfig, CodecPair)`` of a translation run: the model rebuilt
    from its checkpoint file alone, the codecs from the run dirs it names, checked against the
    checkpoint hashes recorded at training time (``CodecMismatchError``, one line)."""
    from mlmlmlm.checkpoint import load_checkpoint, load_for_eval

    path = Path(run_dir)
    path = path / "checkpoint.pt" if path.is_dir() or path.suffix != ".pt" else path
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"], source=str(path))
    if cfg.kind != "transformer":
        raise ConfigError(f"{path}: a {cfg.kind} checkpoint, not a translation run")
    rec = (ckpt.get("task") or {}).get("codecs") or {}
    if set(rec) != {"audio", "emg"}:
        raise CodecMismatchError(f"{path}: records no codecs (not written by this recipe)")
    dirs = {k: _codec_dir(v["run_dir"]) for k, v in rec.items()}
    for what, d in dirs.items():
        if not (d / "checkpoint.pt").is_file():
            ref = getattr(cfg.codecs, what)
            raise MissingCodecError(f"{path}: its {what} codec {ref} is missing (no {d / 'checkpoint.pt'})")
    pair = load_codecs(CodecsConfig(audio=str(dirs["audio"]), emg=str(dirs["emg"])), cfg.scale,
                       source=str(path))
    for what, now in (("audio", pair.audio_sha256), ("emg", pair.emg_sha256)):
        was = rec[what]["sha256"]
        if now != was:
            raise CodecMismatchError(
                f"{path}: trained on the {what} codec {dirs[what]} at sha256 {was[:12]}, whose "
                f"checkpoint is now {now[:12]}: retrain with `mlmlmlm train {cfg.run} --scale "
                f"{cfg.scale}`")
    check_codecs(cfg, pair)
    pair.emg_scale = (ckpt.get("task") or {}).get("emg_scale")  # None before stop 14
    model = load_for_eval(path, build_model(cfg), use_ema=use_ema)
    return model, cfg, pair


def load_translation(run_dir: str | Path, use_ema: bool = True):
    """Rebuild a trained translation run: ``(model in eval mode, RunConfig, audio codec, EMG
    codec)``, the codecs frozen (eval mode, no gradients) and checked against the hashes of the
    codec checkpoints it was trained on (a mismatch is a one-line ``CodecMismatchError``)."""
    model, cfg, pair = load_pair(run_dir, use_ema)
    return model, cfg, pair.audio, pair.emg


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def token_metrics(model, items: list[dict], batch_size: int = 8,
                  shuffle_emg: bool = False) -> dict[str, Any]:
    """Teacher-forced held-out metrics over token windows (items as ``TokenDataset``'s): per RVQ
    level token accuracy (argmax == target) and perplexity (exp of the mean cross-entropy), over
    every predicted code; EMG never dropped (eval mode). ``shuffle_emg``: each window is given
    the EMG of the next window of its length instead (what the EMG is worth: the loss rises by
    the information the model takes from it)."""
    model.eval()
    n_q = model.cfg.n_q
    ce, correct, count = torch.zeros(n_q), torch.zeros(n_q), torch.zeros(n_q)
    dev = next(model.parameters()).device
    by_len: dict[int, list[dict]] = {}
    for it in items:
        by_len.setdefault(it["audio"].shape[-1], []).append(it)
    for group in by_len.values():
        emgs = [it["emg"] for it in group]
        if shuffle_emg:
            emgs = emgs[1:] + emgs[:1]
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            a = torch.stack([it["audio"] for it in chunk]).to(dev)  # [B, n_q, T]
            e = torch.stack(emgs[i:i + batch_size]).to(dev)  # [B, emg_n_q, T]
            out = model(a, e)
            terms = model.loss(out)
            k = (out.valid.sum(1) * a.shape[0]).float().cpu()  # [n_q] predicted codes
            ce += terms.level_loss.cpu() * k
            correct += terms.level_accuracy.cpu() * k
            count += k
    acc = (correct / count.clamp(min=1)).tolist()
    mean_ce = (ce / count.clamp(min=1)).tolist()
    return {"token_accuracy": acc, "perplexity": [math.exp(c) for c in mean_ce],
            "loss": float(ce.sum() / count.sum().clamp(min=1)), "n_eval_windows": len(items)}


def eval_items(cfg: RunConfig, pair: CodecPair, data_root: Path | str) -> list[dict]:
    """The fixed held-out token windows of the run's eval split (``eval.window_s`` long)."""
    from mlmlmlm.data.tokens import eval_windows, split_tokens

    tracks = split_tokens(pair, data_root, cfg.eval.split)
    frames = max(2, round(cfg.eval.window_s * pair.frame_rate))
    hop = max(1, round(cfg.data.window_hop_s * pair.frame_rate))
    return eval_windows(tracks, frames, cfg.eval.n_windows, hop)


def summary(cfg: RunConfig, run_dir: Path, data_root: Path) -> dict[str, Any]:
    """Held-out token accuracy and perplexity per level, as ``mlmlmlm train --eval`` prints."""
    model, cfg, pair = load_pair(run_dir)
    return held_out_metrics(model, cfg, pair, data_root)


def held_out_metrics(model, cfg: RunConfig, pair: CodecPair, data_root: Path | str
                     ) -> dict[str, Any]:
    """``eval_loss``, ``eval_loss_shuffled_emg``, ``emg_information_nats`` (what the true EMG
    saves over another window's, nats per code: 0 means it is ignored), ``n_eval_windows`` and
    ``token_accuracy_q<q>``, ``perplexity_q<q>`` per level, on the fixed held-out windows."""
    items = eval_items(cfg, pair, data_root)
    m = token_metrics(model, items)
    shuffled = token_metrics(model, items, shuffle_emg=True)["loss"]
    # nats per code the true EMG saves over another window's: 0 means the EMG is ignored
    out: dict[str, Any] = {"eval_loss": m["loss"], "n_eval_windows": m["n_eval_windows"],
                           "eval_loss_shuffled_emg": shuffled,
                           "emg_information_nats": shuffled - m["loss"]}
    for q, (a, p) in enumerate(zip(m["token_accuracy"], m["perplexity"])):
        out[f"token_accuracy_q{q}"], out[f"perplexity_q{q}"] = a, p
    return out
