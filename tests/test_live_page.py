"""Chapter 6 (06_live_demo): the low-latency preset's configs go through the same recipes at half
the production hop; the record's helpers (excerpt, aligned input, trigger curve, phrase spans, the
card's figures) and one record played through the engine, the emulator and the real pybela
client; the smoke book's chapter 6 quotes its card."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from mlmlmlm import live_page as page
from mlmlmlm.config import REPO_ROOT, flatten, list_runs, load_run_config, merged_dict, read_yaml
from mlmlmlm.live import record

PHASE = "06_live_demo"


def test_phase_mixes_kinds_in_run_order():
    runs = list_runs(PHASE)
    assert runs == [f"{PHASE}/audio_codec_ll", f"{PHASE}/emg_codec_ll", f"{PHASE}/te2_frame_ll",
                    f"{PHASE}/live"]
    kinds = [load_run_config(r, "smoke").kind for r in runs]
    assert kinds == ["codec", "codec", "transformer", "live"]
    for scale in ("cpu", "paper"):
        for r in runs:
            load_run_config(r, scale)  # every scale resolves (no section of another kind)
    codecs = load_run_config(f"{PHASE}/te2_frame_ll", "cpu").codecs
    assert (codecs.audio, codecs.emg) == (f"{PHASE}/audio_codec_ll", f"{PHASE}/emg_codec_ll")
    assert load_run_config(f"{PHASE}/te2_frame_ll", "cpu").model.layout == "frame"


@pytest.mark.parametrize("scale", ["cpu", "smoke", "paper"])
def test_low_latency_codecs_halve_the_hop_and_align(scale):
    from mlmlmlm.models.codec import CodecConfig

    def hop_s(run):
        m = load_run_config(run, scale).model
        return int(np.prod(m.strides)), m.sample_rate

    (ha, sa), (he, se) = hop_s(f"{PHASE}/audio_codec_ll"), hop_s(f"{PHASE}/emg_codec_ll")
    assert (ha, sa, he, se) == (128, 22050.0, 16, 2756.25)
    assert ha / sa == he / se  # one EMG frame is one audio frame
    assert isinstance(load_run_config(f"{PHASE}/audio_codec_ll", scale).model, CodecConfig)


@pytest.mark.parametrize("ll,prod", [("audio_codec_ll", "02_audio_codec/audio_codec"),
                                     ("emg_codec_ll", "04_emg_codec/emg_codec")])
def test_low_latency_codecs_are_the_production_codecs_but_the_stride(ll, prod):
    """At the cpu and smoke scales the written-out config is the production one but for the
    strides and the step budget (the discriminator's keys do not apply: it has none)."""
    allowed = {"model.strides", "train.max_steps", "train.max_minutes", "eval.also_splits",
               "loss.disc_channels", "loss.disc_fft_sizes", "run", "title", "description"}
    for scale in ("cpu", "smoke"):
        a, b = flatten(merged_dict(f"{PHASE}/{ll}", scale)), flatten(merged_dict(prod, scale))
        differ = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
        assert differ <= allowed, (scale, sorted(differ - allowed))
        assert a["model.strides"][:-1] == b["model.strides"][:-1]
        assert a["model.strides"][-1] * 2 == b["model.strides"][-1]


def test_transformer_ll_is_te2_frame_over_this_phases_codecs():
    allowed = {"codecs.audio", "codecs.emg", "data.crop_frames", "train.max_steps",
               "train.warmup_steps", "train.max_minutes", "run", "title", "description",
               "model.emg_context",  # (cpu: at the hop of 5.8 ms one EMG frame says little)
               # cpu: a lighter trunk and depth head for a frame every 5.8 ms, more token noise
               # so the smaller trunk still leans on the EMG (the yaml's cpu comment)
               "model.n_layers", "model.depth_layers", "model.token_noise"}
    for scale in ("cpu", "smoke"):
        a = flatten(merged_dict(f"{PHASE}/te2_frame_ll", scale))
        b = flatten(merged_dict("05_transformer/te2_frame", scale))
        differ = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
        assert differ <= allowed, (scale, sorted(differ - allowed))
    # the same seconds of crop at twice the frame rate
    assert merged_dict(f"{PHASE}/te2_frame_ll", "cpu")["data"]["crop_frames"] == \
        2 * merged_dict("05_transformer/te2_frame", "cpu")["data"]["crop_frames"]


def test_trigger_levels_find_the_onset_and_not_the_noise():
    sr = 22050.0
    rng = np.random.default_rng(0)
    x = 1e-3 * rng.standard_normal(int(2 * sr)).astype(np.float32)  # -60 dBFS noise
    t = np.arange(int(sr)) / sr
    x[int(sr):] += (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # a note at 1.0 s
    levels, times, onsets = record.trigger_levels(x, sr, threshold_db=9.0)
    assert len(levels) == len(times) and times[-1] == pytest.approx(2.0, abs=0.01)
    assert len(onsets) == 1 and 1.0 <= onsets[0] < 1.06
    assert levels[times < 0.9].max() < -50 and levels[times > 1.1].min() > -15


def test_phrase_spans_are_read_from_the_phrase_end_events():
    r = SimpleNamespace(sr=100.0, events=[
        {"kind": "phrase_start", "phrase": 1},
        {"kind": "phrase_end", "phrase": 1, "start_pos": 150, "samples": 50, "reason": "silence"},
        {"kind": "phrase_end", "phrase": 2, "start_pos": None, "samples": 0, "reason": "stop"}])
    assert record.phrase_spans(r) == [(1.5, 2.0, "silence")]


def test_aligned_input_starts_the_file_on_the_emulators_clock():
    import time

    from mlmlmlm.live.audio_io import Clock

    started = []
    inner = SimpleNamespace(start=lambda sink, clock: started.append(clock), stop=lambda: None)
    src = SimpleNamespace(emulator=None)
    a = record.AlignedInput(inner, src)
    a.start(lambda item: None, Clock(1.0))
    time.sleep(0.05)
    assert started == []  # no EMG clock yet: the audio waits for it
    src.emulator = SimpleNamespace(t0=time.monotonic() + 0.25)
    for _ in range(100):
        if started:
            break
        time.sleep(0.01)
    a.stop()
    assert len(started) == 1 and started[0].t0 == src.emulator.t0


def test_aligned_input_without_an_emg_clock_ends_the_audio():
    from mlmlmlm.live.audio_io import Clock

    got = []
    inner = SimpleNamespace(start=lambda sink, clock: got.append("started"), stop=lambda: None)
    a = record.AlignedInput(inner, SimpleNamespace(emulator=None), timeout_s=0.05)
    a.start(got.append, Clock(1.0))
    a._thread.join(2)
    assert got == [("audio_end",)]


def test_held_out_excerpt_is_aligned_at_the_board_rate(smoke_corpus):
    label, audio, emg = record.held_out_excerpt(smoke_corpus, "test", 1.5, threshold_db=9.0)
    assert audio.dtype == np.float32 and emg.shape == (6, len(audio))
    assert len(audio) == round(1.5 * record.BOARD_SR) and np.isfinite(emg).all()
    assert "@" in label and np.abs(audio).max() > 0


def _lat(frame_ms, p99):
    return {"algorithmic": {"total_ms": 90.0, "bela_buffer_ms": 46.4, "lookahead_ms": 0.0},
            "compute": {"frame_ms": {"p50": 1.0, "p99": p99}, "rtf": 0.5},
            "compute_bela": {"rtf": 0.4},
            "e2e": {"onsets": 3, "matched": 3, "underrun_blocks": 0,
                    "latency_ms": {"mean": 88.0, "sd": 0.3, "min": 87.5, "max": 88.5}},
            "engine": {"push_p99_ms": 9.0, "load": 0.3}}


def test_card_metrics_name_both_presets_and_add_up_the_model_latency():
    def rec(frame_ms):
        return SimpleNamespace(frame_ms=frame_ms, events=[{"kind": "trigger", "trigger": "onset"}],
                               summary={"phrases": 1, "underrun_blocks": 0, "overloads": 0,
                                        "session_s": 4.0})

    m = page.card_metrics({"default": rec(11.6), "low latency": rec(5.8)},
                          {"default": _lat(11.6, 4.0), "low latency": _lat(5.8, 3.0)},
                          "x @ 0.0 s", {"default": 40.0, "low latency": 20.0}, 9.0)
    assert (m["default_playout_ms"], m["ll_playout_ms"]) == (40.0, 20.0)
    assert (m["default_interleaved"], m["ll_interleaved"]) == (False, True)
    assert m["default_model_plus_p99_ms"] == pytest.approx(15.6)
    assert m["ll_model_plus_p99_ms"] == pytest.approx(8.8)
    assert m["ll_e2e_sd_ms"] == 0.3 and m["default_onsets"] == 1 and m["playout_ms"] == 40.0
    base = read_yaml(REPO_ROOT / "experiments" / PHASE / "base.yaml")
    table = {c["key"].split(".")[1] for c in base["table"]}
    live_keys = {k for k in table if k.startswith(("default_", "ll_"))}
    assert live_keys and live_keys <= set(m)  # the results table's columns exist in the card


def test_a_record_through_the_engine_emulator_and_pybela(tmp_path, one_torch_thread):
    """The envelope translator at the low-latency hops plays an EMG burst under a note: the
    trigger fires, one phrase plays where the EMG is, the session files read back whole."""
    from mlmlmlm.live.latency import EnvelopeTranslator

    sr = record.BOARD_SR
    n = int(2.0 * sr)
    rng = np.random.default_rng(1)
    audio = np.zeros(n, np.float32)
    audio[int(0.5 * sr):int(1.7 * sr)] = 0.3 * np.sin(2 * np.pi * 220 * np.arange(
        int(1.2 * sr)) / sr)
    emg = np.zeros((6, n), np.float32)
    emg[:, int(0.6 * sr):int(1.5 * sr)] = 0.3 * rng.standard_normal((6, int(0.9 * sr)))
    tr = EnvelopeTranslator(sr, 2756.25, 128, 16)
    r = record.play(tmp_path, "low latency", f"{PHASE}/te2_frame_ll", tr,
                    ("synthetic @ 0.0 s", audio, emg), threshold_db=9.0, playout_ms=150.0,
                    prompt_s=0.1, lead_s=0.5)  # slack for a loaded machine
    assert r.summary["errors"] == [] and r.summary["phrases"] >= 1
    assert r.summary["underrun_blocks"] == 0
    onsets = [e for e in r.events if e.get("trigger") == "onset"]
    assert len(onsets) == 1 and onsets[0]["sample"] / sr == pytest.approx(1.0, abs=0.06)
    assert len(r.audio_in) == n + int(0.5 * sr)  # the lead, then the excerpt, read back
    spans = record.phrase_spans(r)
    assert spans and r.output.size >= int(spans[-1][1] * sr) - 256
    loud = np.abs(r.output) > 0.05
    # the EMG burst 1.1 s after the EMG clock's start, plus the playout delay, one buffer, a frame
    first = np.flatnonzero(loud)[0] / sr - r.audio_start_s
    assert 1.1 + 0.15 < first < 1.1 + 0.15 + 0.2, (first, r.audio_start_s, r.log)
    assert (tmp_path / "session-ll" / "session.json").is_file()


def test_smoke_chapter_6_quotes_its_card(smoke_book):
    import html as H
    import re

    from mlmlmlm.runs import fmt

    page_html = (smoke_book / "_build/html/book/06_live_demo/index.html").read_text()
    text = re.sub(r"\s+", " ", H.unescape(re.sub(r"<[^>]+>", " ", page_html)))
    assert "{{" not in text
    m = json.loads((smoke_book / "book/06_live_demo/runs/live.json").read_text())["metrics"]
    assert m["ll_frame_ms"] == pytest.approx(m["default_frame_ms"] / 2)
    assert (f"the low-latency preset’s {fmt(m['ll_e2e_mean_ms'])} ms, SD "
            f"{fmt(m['ll_e2e_sd_ms'])} ms") in text
    assert m["default_e2e_matched"] >= 1 and m["ll_e2e_matched"] >= 1


def test_live_mode_reads_the_board_and_stops_cleanly_without_a_sound_card(tmp_path, monkeypatch):
    """``live=True`` (the notebook's ``-p live True``): EMG from the board named by ``board``
    through the real pybela client (the emulator stands in for a Bela board on loopback), audio
    from and to the sound card. This machine has none, so the card's two ends are stood in by a
    file and the clocked output; then a card that fails to open is one line and a stopped engine."""
    import threading

    import soundfile as sf

    from mlmlmlm.live import audio_io as io
    from mlmlmlm.live.emg_files import synthetic_emg
    from mlmlmlm.live.emulator import BelaEmulator
    from mlmlmlm.live.latency import EnvelopeTranslator

    sr = 22050.0
    t = np.arange(int(4 * sr)) / sr
    tone = tmp_path / "instrument.wav"  # a note from 0.5 s: the trigger starts a phrase
    sf.write(tone, (0.3 * (t >= 0.5) * np.sin(2 * np.pi * 220 * t)).astype(np.float32), int(sr))
    monkeypatch.setattr(io, "DeviceInput", lambda sr_, block: io.FileInput(tone, sr_, block))
    monkeypatch.setattr(io, "DeviceOutput", lambda ring, block, tap: io.ClockOutput(ring, block, tap))
    nothing = ("no excerpt", np.zeros(0, np.float32), np.zeros((6, 0), np.float32))
    with BelaEmulator(synthetic_emg(20.0), loop=True) as board:
        r = record.play(tmp_path, "default", "05_transformer/te2_frame", EnvelopeTranslator(),
                        nothing, threshold_db=12.0, playout_ms=40.0, prompt_s=0.1, live=True,
                        seconds=3.0, board=f"bela:127.0.0.1:{board.port}")
    emg, emg_sr = sf.read(r.folder / "emg.wav", dtype="float32")
    assert emg.shape[1] == 6 and emg.shape[0] > 1.5 * emg_sr  # the board's EMG, recorded
    assert np.abs(emg).max() > 0 and r.summary["phrases"] >= 1 and r.summary["disconnects"] == 0
    settings = json.loads((r.folder / "session.json").read_text())["settings"]
    assert settings["live"] is True and settings["run"] == "05_transformer/te2_frame"

    class NoCard(io.FileInput):
        def start(self, sink, clock):
            raise io.AudioDeviceError("no audio device: input: Error querying device -1")

    monkeypatch.setattr(io, "DeviceInput", lambda sr_, block: NoCard(tone, sr_, block))
    with BelaEmulator(synthetic_emg(5.0)) as board, \
            pytest.raises(io.AudioDeviceError, match="^no audio device: input: [^\n]*$"):
        record.play(tmp_path, "low latency", f"{PHASE}/te2_frame_ll", EnvelopeTranslator(),
                    nothing, threshold_db=12.0, playout_ms=40.0, prompt_s=0.1, live=True,
                    seconds=3.0, board=f"bela:127.0.0.1:{board.port}")
    assert not any(th.name == "engine" and th.is_alive() for th in threading.enumerate())
    assert (tmp_path / "session-ll" / "events.jsonl").is_file()  # the session so far, on disk
