"""The sections of the live chapter's run pages (notebook 06_live_demo): the low-latency preset's
runs, trained through the recipes of chapters 2, 4 and 5, and the live record, where held-out EMG
and its instrument audio are replayed through the real engine (:mod:`mlmlmlm.live`) via the Bela
emulator and the real pybela client, for both presets.

Introduced in notebook 06_live_demo.

**Presets.** ``default``: the production codecs with ``05_transformer/te2_frame``; ``low
latency``: this chapter's ``audio_codec_ll`` / ``emg_codec_ll`` (hop 128 / 16) with
``te2_frame_ll``. Each translation run is looked up beside the record's own run folder (same
scale and data tag), as the runbook lays them out.

**The record.** One excerpt of a held-out recording replayed through the engine via the Bela
emulator and the real pybela client, its instrument audio aligned with its EMG
(:mod:`mlmlmlm.live.record`); everything shown is read back from the session folder. With
``live=True`` the EMG comes from a Bela board through pybela and audio in and out from the
sound card instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlmlmlm import report
from mlmlmlm.live.record import (
    BOARD_SR,
    INTERLEAVED,
    PREFIX,
    Record,
    output_on_emg_clock,
    phrase_spans,
    play,
    trigger_levels,
)
from mlmlmlm.notebook import Setup


def _show(obj: Any) -> None:
    from IPython.display import display

    display(obj)


def _md(text: str) -> None:
    from IPython.display import Markdown

    _show(Markdown(text))


def is_record(s: Setup) -> bool:
    """The record run trains nothing (``kind: live``); the others are the preset's runs."""
    return s.cfg.kind == "live"


def presets(s: Setup) -> dict[str, str]:
    """``{preset: <phase>/<run>}`` of the record's ``presets:`` section."""
    return s.cfg.presets.runs()


# ----------------------------------------------------------------------------- preset runs
def preset_run(s: Setup) -> dict | None:
    """A codec or translation run of the low-latency preset: the sections of its chapter (model,
    training, held-out metrics; for a codec, spectrograms and players too), its frame period
    added to the card. The record run: one line, ``None``."""
    if is_record(s):
        _md("This run trains nothing: it plays the trained runs of both presets (below).")
        return None
    if s.cfg.kind == "codec":
        from mlmlmlm import codec_page as page

        desc = page.model_section(s)
        ev = page.metrics_section(s, page.train_section(s))
        page.look_and_listen(s, ev)
        ev.metrics["frame_ms"] = 1000.0 * desc["hop"] / s.cfg.model.sample_rate
        page.finish(s, ev)
        return ev.metrics
    from mlmlmlm import transformer_page as page

    page.model_section(s)
    ev = page.metrics_section(s, page.train_section(s))
    a = ev.pair.audio.cfg
    ev.metrics["frame_ms"] = 1000.0 * a.hop / a.sample_rate
    page.finish(s, ev)
    return ev.metrics


# ----------------------------------------------------------------------------- the record
def preset_dirs(s: Setup) -> dict[str, Path]:
    """``{preset: run folder}`` of each preset's translation run beside this run's folder."""
    tag = s.run_dir.name[len(s.cfg.name):]
    out = {}
    for preset, run in presets(s).items():
        phase, name = run.split("/")
        out[preset] = s.run_dir.parent.parent / phase / (name + tag)
    return out


def per_preset(value, preset: str) -> float:
    """``value[preset]`` for a ``{preset: value}`` dict, else ``value`` (one for both)."""
    return value[preset] if isinstance(value, dict) else value


def load_preset(s: Setup, preset: str, in_process: bool = False, compile: bool = False):
    """The trained translator of ``preset`` (EMG prepared with the corpus's scale), or ``None``
    with one line saying which run to train. As ``mlmlmlm live`` builds it: a sliding window of
    the training crop, and, unless ``in_process``, in a process of its own
    (:class:`~mlmlmlm.live.worker.TranslatorProcess`; close it when done); ``compile``: the
    compiled step (:class:`~mlmlmlm.stream.Translator`; its graphs compile as it loads)."""
    from mlmlmlm.live.app import load_translator

    d = preset_dirs(s)[preset]
    if not (d / "checkpoint.pt").is_file():
        _md(f"*{preset}*: no trained run at `{d.name}` yet (train it: `mlmlmlm run "
            f"{presets(s)[preset]}`).")
        return None
    return load_translator(str(d), s.cfg.scale, False, in_process, "crop", str(s.data_root),
                           compile)


def record_section(s: Setup, excerpt, *, threshold_db: float, playout_ms,
                   prompt_s: float, live: bool = False, seconds: float | None = None,
                   board: str = "bela", compile: bool = False) -> dict[str, Record]:
    """Play both presets (those trained) through the engine, each translator in a process of
    its own as ``mlmlmlm live`` runs it (``compile``: the compiled step, as ``--compile``),
    each with its playout delay (``playout_ms``: ms, or ``{preset: ms}``) and its board layout
    (:data:`~mlmlmlm.live.record.INTERLEAVED`); one status line each. The record keeps the process
    open: :func:`measure_latency` measures the same translator's compute there, then closes it
    (it spins only for a moment after each call, so it leaves the other core free between)."""
    if not is_record(s):
        _md("The live record is the run `live` of this chapter.")
        return {}
    out = {}
    for preset in presets(s):
        tr = load_preset(s, preset, compile=compile)
        if tr is None:
            continue
        try:
            r = play(s.run_dir, preset, presets(s)[preset], tr, excerpt,
                     threshold_db=threshold_db, playout_ms=per_preset(playout_ms, preset),
                     prompt_s=prompt_s, live=live, seconds=seconds, board=board)
        except BaseException:
            tr.close()
            raise
        r.translator = tr
        m = r.summary
        # prose, not a printed stream: a reader's page opens with results, not console output
        _md(f"*{preset}*: EMG streaming from {r.audio_start_s:.2f} s of session time; "
            f"{m['phrases']} phrases, {m['frames']} frames in {m['session_s']:.1f} s, compute "
            f"{m['compute_s']:.1f} s, {m['underrun_blocks']} underruns, {m['overloads']} "
            f"overloads, {len(m['errors'])} errors"
            + "".join(f"\n- `{line}`" for line in r.log[:5]))
        out[preset] = r
    return out


def trigger_figure(records: dict[str, Record], threshold_db: float):
    """Per preset: the instrument's RMS level with the engine's trigger onsets (the events it
    recorded), and below it the output with the phrases it played shaded; time runs from the
    EMG clock's start, where the instrument audio starts too."""
    import matplotlib.pyplot as plt

    if not records:
        return None
    fig, axes = plt.subplots(2 * len(records), 1, figsize=(7.5, 1.5 * 2 * len(records)),
                             sharex=True, constrained_layout=True, squeeze=False)
    for i, (preset, r) in enumerate(records.items()):
        ax, bx = axes[2 * i, 0], axes[2 * i + 1, 0]
        lv, t, _ = trigger_levels(r.audio_in, r.sr, threshold_db)
        ax.plot(t, lv, lw=0.7, color="0.3")
        for e in r.events:
            if e.get("kind") == "trigger" and e.get("trigger") == "onset":
                ax.axvline(e["sample"] / r.sr, color="C3", lw=0.8)
            elif e.get("kind") == "trigger" and e.get("trigger") == "silence":
                ax.axvline(e["sample"] / r.sr, color="C0", lw=0.8, ls=":")
        ax.set_ylabel("RMS (dBFS)")
        ax.set_ylim(max(-100, np.min(lv) - 3) if len(lv) else -100, 0)
        ax.set_title(f"{preset}: instrument level, onsets (red), silences (blue, dotted)")
        y = output_on_emg_clock(r)
        bx.plot(np.arange(len(y)) / r.sr, y, lw=0.3, color="C2")
        for a, b, _ in phrase_spans(r):
            bx.axvspan(a - r.audio_start_s, b - r.audio_start_s, color="C1", alpha=0.15, lw=0)
        bx.set_ylabel("output")
        bx.set_title(f"{preset}: generated audio, phrases shaded")
    axes[-1, 0].set_xlabel("time from the start of the EMG stream (s)")
    return fig


def listen_section(records: dict[str, Record]) -> None:
    """Spectrograms of the instrument audio and each preset's output, then players."""
    import matplotlib.pyplot as plt

    if not records:
        return
    first = next(iter(records.values()))
    cols = [("instrument (trigger and prompt)", first.audio_in)]
    cols += [(f"{p} preset: generated", output_on_emg_clock(r)) for p, r in records.items()]
    n = max(1024, *(len(x) for _, x in cols))
    cols = [(label, np.pad(x, (0, n - len(x)))[:n]) for label, x in cols]
    report.spectrogram_grid(cols, first.sr, "audio", title=first.label)
    plt.show()
    _show(report.audio_table([(first.label, dict(cols))], first.sr))


def measure_latency(records: dict[str, Record], playout_ms, e2e_seconds: float,
                    compute_seconds: float, lead_s: float = 3.0) -> dict[str, dict]:
    """Per preset, from :mod:`mlmlmlm.live.latency`: the algorithmic budget by part; per-frame
    compute of the trained translator, in the record's translator process (closed afterwards),
    on random EMG (one EMG hop a push, and one Bela buffer a
    push, as the engine pushes); the end-to-end latency measured through the emulator and pybela
    with an :class:`~mlmlmlm.live.latency.EnvelopeTranslator` at the preset's hops (a sharp
    onset per EMG onset; its latency is one frame, as the preset's causal model without
    look-ahead); and the engine's own counters of the record. Each preset with its playout
    delay (``playout_ms``: ms, or ``{preset: ms}``) and its board layout."""
    import torch

    from mlmlmlm.live import latency as L
    torch.set_num_threads(1)
    out = {}
    for preset, r in records.items():
        tr = r.translator  # the record's translator process (an in-process one works alike)
        env = L.EnvelopeTranslator(tr.audio_sr, tr.emg_sr, tr.audio_hop, tr.emg_hop)
        push = np.asarray(r.push_ms or [0.0])
        inter, pl = INTERLEAVED[preset], per_preset(playout_ms, preset)
        frames = L.buffer_frames(inter)  # board frames in one buffer
        compute = {"compute": tr.apply(L.compute_per_frame, compute_seconds),  # where it runs
                   "compute_bela": tr.apply(L.compute_per_frame, compute_seconds, frames // 8)}
        if hasattr(tr, "close"):
            tr.close()  # its core is free for the end-to-end run
        out[preset] = {
            "algorithmic": L.latency_budget(tr, BOARD_SR, pl, 256, interleaved=inter), **compute,
            "e2e": L.end_to_end(env, e2e_seconds, playout_ms=pl, lead_s=lead_s,
                                interleaved=inter),
            "engine": {"push_p50_ms": float(np.percentile(push, 50)),
                       "push_p99_ms": float(np.percentile(push, 99)),
                       "buffer_ms": 1000.0 * frames / BOARD_SR,
                       "load": r.summary["compute_s"] / max(r.summary["session_s"], 1e-9)}}
    return out


ALGO_ROWS = {"bela_buffer_ms": "Bela buffer (1024 frames at 22.05 kHz; interleaved: 128)",
             "resampler_ms": "EMG resampler to the codec's rate", "emg_hop_ms": "EMG hop",
             "audio_hop_ms": "audio hop (one frame)", "lookahead_ms": "EMG look-ahead",
             "playout_ms": "playout delay", "output_block_ms": "output block (copied, not waited)",
             "total_ms": "total (hops fall inside the buffer)"}


def latency_tables(lat: dict[str, dict]) -> None:
    """Three tables, one column per preset: the algorithmic budget, compute, end to end."""
    if not lat:
        return
    names = list(lat)
    rows = [{"part (ms)": label} | {p: lat[p]["algorithmic"][k] for p in names}
            for k, label in ALGO_ROWS.items()]
    _md("**Algorithmic latency** (from an EMG sample's capture to its sound)\n\n"
        + report.markdown_table(rows, floatfmt=".3g"))
    comp = {"frame period (ms)": lambda m: m["compute"]["frame_period_ms"],
            "compute per frame p50 (ms)": lambda m: m["compute"]["frame_ms"]["p50"],
            "compute per frame p99 (ms)": lambda m: m["compute"]["frame_ms"]["p99"],
            "compute per frame max (ms)": lambda m: m["compute"]["frame_ms"]["max"],
            "real-time factor (1-hop pushes)": lambda m: m["compute"]["rtf"],
            "real-time factor (Bela-buffer pushes)": lambda m: m["compute_bela"]["rtf"],
            "record: compute per push p50 (ms)": lambda m: m["engine"]["push_p50_ms"],
            "record: compute per push p99 (ms)": lambda m: m["engine"]["push_p99_ms"],
            "record: push period, one Bela buffer (ms)": lambda m: m["engine"]["buffer_ms"],
            "record: translator load": lambda m: m["engine"]["load"]}
    rows = [{"compute": k} | {p: f(lat[p]) for p in names} for k, f in comp.items()]
    _md("**Compute** (trained translator, one torch thread)\n\n"
        + report.markdown_table(rows, floatfmt=".3g"))
    e2e = {"EMG onsets replayed": lambda e: e["onsets"], "onsets matched": lambda e: e["matched"],
           "mean (ms)": lambda e: (e["latency_ms"] or {}).get("mean"),
           "SD (ms)": lambda e: (e["latency_ms"] or {}).get("sd"),
           "min (ms)": lambda e: (e["latency_ms"] or {}).get("min"),
           "max (ms)": lambda e: (e["latency_ms"] or {}).get("max"),
           "SD by the output thread's reads (ms)": lambda e: (e["latency_by_read_ms"] or {}).get("sd"),
           "session (s)": lambda e: e["seconds"], "underrun blocks": lambda e: e["underrun_blocks"]}
    rows = [{"end to end": k} | {p: f(lat[p]["e2e"]) for p in names} for k, f in e2e.items()]
    _md("**End to end**, EMG onset captured by the emulator to its sound on the output clock, "
        "through pybela and the engine\n\n" + report.markdown_table(rows, floatfmt=".3g"))


def card_metrics(records: dict[str, Record], lat: dict[str, dict], excerpt_label: str,
                 playout_ms, threshold_db: float) -> dict:
    """The record's figures for the run card, ``<prefix>_<name>`` per preset (``playout_ms``:
    the default preset's delay, with each preset's own as ``<prefix>_playout_ms``)."""
    m: dict[str, Any] = {"excerpt": excerpt_label,
                         "playout_ms": per_preset(playout_ms, "default"),
                         "threshold_db": threshold_db}
    for preset, r in records.items():
        p, L = PREFIX[preset], lat[preset]
        e = L["e2e"]["latency_ms"] or {}
        s = r.summary
        lookahead = L["algorithmic"]["lookahead_ms"]
        p99 = L["compute"]["frame_ms"]["p99"]
        m |= {f"{p}_frame_ms": r.frame_ms, f"{p}_algorithmic_ms": L["algorithmic"]["total_ms"],
              f"{p}_playout_ms": per_preset(playout_ms, preset),
              f"{p}_interleaved": INTERLEAVED[preset],
              f"{p}_bela_buffer_ms": L["algorithmic"]["bela_buffer_ms"],
              f"{p}_model_latency_ms": r.frame_ms + lookahead,
              f"{p}_model_plus_p99_ms": r.frame_ms + lookahead + p99,
              f"{p}_compute_p50_ms": L["compute"]["frame_ms"]["p50"],
              f"{p}_compute_p99_ms": p99, f"{p}_rtf": L["compute"]["rtf"],
              f"{p}_rtf_bela": L["compute_bela"]["rtf"],
              f"{p}_push_p99_ms": L["engine"]["push_p99_ms"], f"{p}_load": L["engine"]["load"],
              f"{p}_phrases": s["phrases"], f"{p}_underrun_blocks": s["underrun_blocks"],
              f"{p}_overloads": s["overloads"], f"{p}_record_s": s["session_s"],
              f"{p}_onsets": sum(1 for ev in r.events if ev.get("trigger") == "onset"),
              f"{p}_e2e_onsets": L["e2e"]["onsets"], f"{p}_e2e_matched": L["e2e"]["matched"],
              f"{p}_e2e_mean_ms": e.get("mean"), f"{p}_e2e_sd_ms": e.get("sd"),
              f"{p}_e2e_min_ms": e.get("min"), f"{p}_e2e_max_ms": e.get("max"),
              f"{p}_e2e_underruns": L["e2e"]["underrun_blocks"]}
    return m


def finish(s: Setup, records: dict[str, Record], lat: dict[str, dict], excerpt,
           playout_ms, threshold_db: float) -> None:
    """Record the figures for the run card: the record's (the preset runs wrote theirs)."""
    if not is_record(s):
        return
    label = excerpt[0] if excerpt else ""
    report.save_metrics(s.run_dir, card_metrics(records, lat, label, playout_ms, threshold_db))
