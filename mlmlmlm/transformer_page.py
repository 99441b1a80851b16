"""The sections of a translation run page (notebook 05_transformer): the model, training curves
per RVQ level, held-out token accuracy and perplexity, generation through the streaming
translator for fixed held-out windows (players, spectrograms) and the conditioning table that
shows whether the EMG steers the sound (:mod:`mlmlmlm.conditioning`).

Introduced in notebook 05_transformer.

**Generation.** A listening window is ``seconds`` of a recording of the split, audio [n_a] at the
audio codec's rate and prepared EMG [6, n_e] at the EMG codec's (:func:`mlmlmlm.data.tokens.
paired_signals`). Its first ``prompt_s`` of reference audio (and the EMG that went with it) start
the :class:`~mlmlmlm.stream.Translator`; the rest of the window's EMG is pushed and the
generated audio collected. A run with a learned start token (``bos``) gets no prompt and
generates the whole window from EMG. Every measure is taken on the span after the prompt, the
same span for every run. Conditions: the window's own EMG (*true*), the EMG of the next window
in the list (*shuffled*), and zeros (*zero*); the prompt's EMG is the condition's too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlmlmlm import conditioning, report
from mlmlmlm.notebook import Setup
from mlmlmlm.recipes import transformer as recipe

CONDITIONS = ("true", "shuffled", "zero")
MEASURES = {"loudness_corr": "loudness corr. ↑", "loudness_corr_window": "loudness corr. (per window) ↑",
            "vibrato_rate_error_hz": "vibrato rate error (Hz) ↓",
            "vibrato_depth_error_cents": "vibrato depth error (cents) ↓",
            "onset_f": "onset F (50 ms) ↑", "clicks_per_min": "clicks per minute ↓"}


def _show(obj: Any) -> None:
    from IPython.display import display

    display(obj)


def _md(text: str) -> None:
    from IPython.display import Markdown

    _show(Markdown(text))


def use_sibling_codecs(s: Setup) -> None:
    """Point ``cfg.codecs`` at the codec runs beside this run's folder when they are there
    (``<root>/runs/<scale>/02_audio_codec/audio_codec<tag>``, the same data tag): the book root's
    codecs, which a smoke book keeps outside the repository. Otherwise the names stay as they are
    and the recipe says which codec to train."""
    tag = s.run_dir.name[len(s.cfg.name):]
    for what in ("audio", "emg"):
        ref = getattr(s.cfg.codecs, what)
        if ref.count("/") != 1 or Path(ref).is_dir():
            continue
        phase, name = ref.split("/")
        d = s.run_dir.parent.parent / phase / (name + tag)
        if (d / "checkpoint.pt").is_file():
            setattr(s.cfg.codecs, what, str(d))


def model_section(s: Setup) -> dict:
    """Title, description and the model's design (levels, layout, attention, size)."""
    cfg, m = s.cfg, s.cfg.model
    _md(f"**{cfg.title}** ({cfg.scale} scale). {cfg.description}")
    n_params = sum(p.numel() for p in recipe.build_model(cfg).parameters())
    rows = {"token layout": m.layout, "width d": m.d_model, "layers": m.n_layers,
            "heads": m.n_heads, "audio RVQ levels × codebook": f"{m.n_q} × {m.codebook_size}",
            "EMG RVQ levels × codebook": f"{m.emg_n_q} × {m.emg_codebook_size}",
            "cross-attention in training": "causal" if m.cross_causal else "non-causal (whole crop)",
            "EMG look-ahead (frames)": m.lookahead, "learned start token": bool(m.bos),
            "EMG dropped in training (guidance)": m.cond_dropout, "parameters": n_params}
    _md(report.markdown_table([{"property": k, "value": v} for k, v in rows.items()]))
    return {"params": n_params}


@dataclass
class Trained:
    result: Any  # mlmlmlm.train.TrainResult
    log: list[dict]  # metrics.jsonl rows


def read_log(run_dir: Path) -> list[dict]:
    from mlmlmlm.figures import read_log as read

    return read(Path(run_dir) / "metrics.jsonl")


def train_section(s: Setup) -> Trained:
    """Encode the token cache, train (or resume) and draw loss and accuracy per RVQ level."""
    import matplotlib.pyplot as plt

    use_sibling_codecs(s)
    result = recipe.train(s.cfg, s.run_dir, s.data_root, progress=False)
    log = read_log(s.run_dir)
    print(f"{result.steps} steps, stopped by {result.stopped}, {result.wall_s:.0f} s")
    curves(log, s.cfg.model.n_q, s.cfg.title)
    plt.show()
    return Trained(result, log)


def curves(log: list[dict], n_q: int, title: str = ""):
    """Training token cross-entropy and accuracy against steps, one line per RVQ level."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7.5, 2.4), constrained_layout=True)
    for ax, key, label in ((axes[0], "loss", "cross-entropy (nats)"),
                           (axes[1], "acc", "token accuracy")):
        for q in range(n_q):
            pts = [(r["step"], r[f"{key}_q{q}"]) for r in log if f"{key}_q{q}" in r]
            if pts:
                ax.plot(*zip(*pts), lw=0.8, label=f"level {q}")
        ax.set_title(label)
        ax.set_xlabel("step")
    axes[1].legend(fontsize=6)
    if title:
        fig.suptitle(title)
    return fig


@dataclass
class Evaluated:
    model: Any
    pair: Any  # mlmlmlm.data.tokens.CodecPair
    metrics: dict = field(default_factory=dict)  # the run card's


def metrics_section(s: Setup, trained: Trained) -> Evaluated:
    """Teacher-forced held-out token accuracy and perplexity per level (chance: 1/codebook)."""
    model, _, pair = recipe.load_pair(s.run_dir)
    m = recipe.held_out_metrics(model, s.cfg, pair, s.data_root)
    k, levels = s.cfg.model.codebook_size, range(model.cfg.n_q)
    acc = [m[f"token_accuracy_q{q}"] for q in levels]
    ppl = [m[f"perplexity_q{q}"] for q in levels]
    rows = [{"RVQ level": q, "token accuracy ↑": acc[q], "perplexity ↓": ppl[q],
             "chance accuracy": 1 / k} for q in levels]
    _md(report.markdown_table(rows, floatfmt=".3g"))
    print(f"{m['n_eval_windows']} held-out windows of {s.cfg.eval.window_s:g} s "
          f"({s.cfg.eval.split}); perplexity of a uniform guess: {k}")
    print(f"cross-entropy {m['eval_loss']:.3f} nats per code with the true EMG, "
          f"{m['eval_loss_shuffled_emg']:.3f} with another window's: the EMG is worth "
          f"{m['emg_information_nats']:.3f} nats per code")
    last = trained.log[-max(1, len(trained.log) // 10):]
    metrics = {"steps": trained.result.steps, "train_wall_s": round(trained.result.wall_s, 1),
               "train_loss": float(np.mean([r["train"] for r in last if "train" in r] or [np.nan])),
               **m, "token_accuracy_mean": float(np.mean(acc)),
               "perplexity_mean": float(np.mean(ppl))}
    return Evaluated(model, pair, metrics)


# ---------------------------------------------------------------------------- generation
@dataclass
class Window:
    label: str
    audio: np.ndarray  # [n_a] reference audio at the audio codec's rate
    emg: np.ndarray  # [6, n_e] prepared EMG at the EMG codec's rate, the same span


def listening_windows(pair, data_root: Path, split: str, n: int, seconds: float) -> list[Window]:
    """``n`` windows of ``seconds`` (whole frames), spread evenly over the split's recordings in
    name order (recordings shorter than a window are left out; none long enough: the longest
    recording whole)."""
    from mlmlmlm.data.tokens import paired_signals

    ha, he = pair.audio.cfg.hop, pair.emg.cfg.hop
    frames = max(2, round(seconds * pair.frame_rate))
    recs = sorted(paired_signals(pair, data_root, split), key=lambda r: r[0])
    lens = [min(a.shape[1] // ha, e.shape[1] // he) for _, a, e in recs]
    frames = min(frames, max(lens))
    cands = [(name, a, e, s) for (name, a, e), f in zip(recs, lens)
             for s in range(0, f - frames + 1, frames)]
    idx = np.unique(np.round(np.linspace(0, len(cands) - 1, min(n, len(cands)))).astype(int))
    out = []
    for i in idx:
        name, a, e, s = cands[int(i)]
        out.append(Window(f"{name} @ {s / pair.frame_rate:.1f} s",
                          a[0, s * ha:(s + frames) * ha].astype(np.float32),
                          e[:, s * he:(s + frames) * he].astype(np.float32)))
    return out


def translate_window(tr, audio: np.ndarray, emg: np.ndarray, prompt_frames: int,
                     seed: int | None = None) -> np.ndarray:
    """Generated audio [n_a] for one window: ``prompt_frames`` of ``audio`` [n_a] (with their
    ``emg`` [6, n_e]) start the translator (0: its learned start token), the rest of ``emg`` is
    pushed; the prompt's span holds its codec resynthesis. ``seed``: the translator's sampling
    seed for this window (None: as it is)."""
    ha, he = tr.audio_hop, tr.emg_hop
    tr.reset()
    if seed is not None:
        tr.seed = seed
    if prompt_frames:
        out = [tr.start(audio[:prompt_frames * ha], prompt_emg=emg[:, :prompt_frames * he])]
    else:
        out = [tr.start(None)]
    out += [tr.push_emg(emg[:, prompt_frames * he:]), tr.flush()]
    y = np.concatenate(out)[:len(audio)]
    return np.pad(y, (0, len(audio) - len(y))).astype(np.float32)


@dataclass
class Generated:
    sr: float
    prompt_samples: int  # where every measure starts
    windows: dict[str, list[Window]]  # split -> windows
    audio: dict[tuple[str, float, str], list[np.ndarray]]  # (split, guidance, condition) -> [n_a]
    ceiling: dict[str, list[np.ndarray]]  # split -> codec resynthesis of the references
    compute_s: float = 0.0
    audio_s: float = 0.0


def splits_of(s: Setup) -> list[str]:
    """The run's held-out split, and ``test_real`` (real-EMG-driven) when the corpus has one."""
    from mlmlmlm.data.io import find_recordings

    have = {r.split for r in find_recordings(s.data_root)}
    return [s.cfg.eval.split] + (["test_real"] if "test_real" in have and
                                 s.cfg.eval.split != "test_real" else [])


def condition_emg(windows: list[Window], condition: str) -> list[np.ndarray]:
    """Each window's EMG under ``condition``: its own, the next window's (cut or zero-padded to
    its length), or zeros."""
    out = []
    for i, w in enumerate(windows):
        if condition == "true":
            out.append(w.emg)
        elif condition == "zero":
            out.append(np.zeros_like(w.emg))
        else:
            other = windows[(i + 1) % len(windows)].emg[:, :w.emg.shape[1]]
            out.append(np.pad(other, ((0, 0), (0, w.emg.shape[1] - other.shape[1]))))
    return out


def generate_section(s: Setup, ev: Evaluated, n_windows: int, seconds: float, prompt_s: float,
                     guidances: tuple[float, ...]) -> Generated:
    """Generate every window of every split under every condition and guidance weight through
    the streaming translator (the run's sampling settings; window i seeded with seed + i), and
    resynthesise the references through the audio codec (the ceiling)."""
    import torch

    from mlmlmlm.stream import Translator

    tr = Translator.from_run(s.run_dir, emg_prep=None)  # paired_signals' EMG is prepared
    pair = ev.pair
    prompt_frames = 0 if s.cfg.model.bos else max(1, round(prompt_s * pair.frame_rate))
    gen = Generated(pair.audio.cfg.sample_rate, max(1, round(prompt_s * pair.frame_rate))
                    * pair.audio.cfg.hop, {}, {}, {})
    threads = torch.get_num_threads()
    # one frame per step: tiny tensors gain nothing from a second thread, and on a busy 2-core
    # machine two threads spin against each other (a 0.3-s smoke window: 9 s instead of 0.5)
    torch.set_num_threads(1)
    try:
        _generate_all(s, gen, tr, pair, prompt_frames, n_windows, seconds, guidances)
    finally:
        torch.set_num_threads(threads)
    print(f"generated {gen.audio_s:.1f} s of audio in {gen.compute_s:.1f} s "
          f"({'no prompt: learned start token; ' if not prompt_frames else ''}measured after "
          f"{gen.prompt_samples / gen.sr:.2f} s; splits {', '.join(gen.windows)}; guidance "
          f"{', '.join(f'{w:g}' for w in guidances)})")
    return gen


def _generate_all(s: Setup, gen: Generated, tr, pair, prompt_frames: int, n_windows: int,
                  seconds: float, guidances: tuple[float, ...]) -> None:
    """The loop of :func:`generate_section`: fills ``gen`` (windows, audio, ceiling, times).

    Window i is sampled with seed ``seed + i`` (the run's seed), the same under every condition
    and weight: with one seed for all, every window drew the same random numbers at step t, so
    where the distributions were alike (silence) the same rare code came up at the same time in
    every window; the conditions of a window still differ by their EMG alone."""
    import torch

    from mlmlmlm.evaluate import reconstruct

    t0, seed = time.perf_counter(), tr.seed
    for split in splits_of(s):
        ws = listening_windows(pair, s.data_root, split, n_windows, seconds)
        gen.windows[split] = ws
        x = torch.from_numpy(np.stack([w.audio for w in ws]))[:, None]  # [N, 1, n_a]
        gen.ceiling[split] = list(reconstruct(pair.audio, x)[0][:, 0].numpy())
        for w in guidances:
            tr.reset()  # a weight other than 1 is fixed before start()
            tr.guidance = w
            for cond in CONDITIONS:
                emgs = condition_emg(ws, cond)
                gen.audio[(split, w, cond)] = [
                    translate_window(tr, win.audio, e, prompt_frames, seed + i)
                    for i, (win, e) in enumerate(zip(ws, emgs))]
                gen.audio_s += sum(len(win.audio) for win in ws) / gen.sr
    tr.seed = seed
    gen.compute_s = time.perf_counter() - t0


def listen_section(s: Setup, gen: Generated, guidance: float = 1.0, max_windows: int = 8) -> None:
    """Spectrograms (reference, generated from true EMG, from shuffled EMG) and players, for at
    most ``max_windows`` of each split's windows, evenly spaced (the measures use them all)."""
    import matplotlib.pyplot as plt

    for split, every in gen.windows.items():
        step = max(1, -(-len(every) // max_windows))
        shown = list(range(0, len(every), step))
        ws = [every[i] for i in shown]
        cols = []
        for i, w in zip(shown, ws):
            # the window's name once per row, on two lines: three long titles overlapped
            cols += [(f"{w.label}\nreference", w.audio),
                     ("\ngenerated, true EMG", gen.audio[(split, guidance, "true")][i]),
                     ("\ngenerated, shuffled EMG", gen.audio[(split, guidance, "shuffled")][i])]
        report.spectrogram_grid(cols, gen.sr, "audio", title=f"split {split}", ncols=3)
        plt.show()
        rows = [(w.label, {"reference": w.audio, "codec resynthesis": gen.ceiling[split][i],
                           **{f"{c} EMG": gen.audio[(split, guidance, c)][i] for c in CONDITIONS}})
                for i, w in zip(shown, ws)]
        _show(report.audio_table(rows, gen.sr))


def conditioning_rows(gen: Generated) -> list[dict]:
    """One row per (split, guidance, condition) plus the codec ceiling per split: every measure of
    :func:`mlmlmlm.conditioning.scores` on the span after the prompt."""
    p, rows = gen.prompt_samples, []
    for split, ws in gen.windows.items():
        refs = [w.audio[p:] for w in ws]
        sc = conditioning.scores([c[p:] for c in gen.ceiling[split]], refs, gen.sr)
        rows.append({"split": split, "guidance": "—", "EMG": "codec ceiling", **sc})
        for (sp, w, cond), audio in gen.audio.items():
            if sp == split:
                sc = conditioning.scores([a[p:] for a in audio], refs, gen.sr)
                rows.append({"split": split, "guidance": w, "EMG": cond, **sc})
    return rows


def card_metrics(rows: list[dict], held_out: str, guidances: tuple[float, ...]) -> dict:
    """The run card's conditioning figures: ``cond_<measure>_<condition>`` on the held-out split
    at guidance 1, ``..._g<w>`` at the higher weight, ``..._real`` on test_real, ``_ceiling``
    for the codec resynthesis, and the loudness margins true − shuffled."""
    out: dict[str, Any] = {}
    for r in rows:
        sfx = "" if r["split"] == held_out else "_real"
        if r["EMG"] == "codec ceiling":
            name, g = "ceiling", ""
        else:
            name, g = r["EMG"], "" if r["guidance"] == 1 else f"_g{r['guidance']:g}"
        for key in MEASURES:
            out[f"cond_{key}_{name}{sfx}{g}"] = r[key]
    for sfx in ("", "_real"):
        for g in [""] + [f"_g{w:g}" for w in guidances if w != 1]:
            t, sh = out.get(f"cond_loudness_corr_true{sfx}{g}"), \
                out.get(f"cond_loudness_corr_shuffled{sfx}{g}")
            if t is not None and sh is not None:
                out[f"cond_loudness_margin{sfx}{g}"] = t - sh
    if not any(k.endswith("_real") or "_real_" in k for k in out):
        why = "the corpus has no test_real split"
        out["not_computed"] = {f"cond_{k}_{c}_real": why for k in ("loudness_corr", "onset_f")
                               for c in (*CONDITIONS, "ceiling")} | {"cond_loudness_margin_real": why}
    return out


def conditioning_section(s: Setup, ev: Evaluated, gen: Generated,
                         guidances: tuple[float, ...]) -> list[dict]:
    """The conditioning table, recorded in the run card's metrics."""
    rows = conditioning_rows(gen)
    cols = ["split", "guidance", "EMG", *MEASURES, "n_windows"]
    table = [{MEASURES.get(c, c): r[c] for c in cols} for r in rows]
    _md(report.markdown_table(table, floatfmt=".3g"))
    m = card_metrics(rows, s.cfg.eval.split, guidances)
    why = m.pop("not_computed", {})
    ev.metrics.update(m)
    if why:
        ev.metrics.setdefault("not_computed", {}).update(why)
    ev.metrics |= {"cond_n_windows": len(gen.windows[s.cfg.eval.split]),
                   "cond_window_s": round(len(gen.windows[s.cfg.eval.split][0].audio) / gen.sr, 2),
                   "cond_prompt_s": round(gen.prompt_samples / gen.sr, 2),
                   "generation_rtf": gen.compute_s / max(gen.audio_s, 1e-9)}
    return rows


def finish(s: Setup, ev: Evaluated) -> None:
    """Record the run's metrics for the run card."""
    report.save_metrics(s.run_dir, ev.metrics)
