"""The translation run page's plumbing (mlmlmlm.transformer_page): the conditions' EMG, one
window through a translator, and the run card's conditioning keys."""

import numpy as np
import pytest

from mlmlmlm import transformer_page as page


def windows(n=3, n_a=800, n_e=100):
    rng = np.random.default_rng(0)
    return [page.Window(f"w{i}", rng.standard_normal(n_a).astype(np.float32),
                        rng.standard_normal((6, n_e)).astype(np.float32)) for i in range(n)]


def test_conditions_give_own_other_and_zero_emg():
    ws = windows()
    true, shuf, zero = (page.condition_emg(ws, c) for c in page.CONDITIONS)
    for i, w in enumerate(ws):
        assert true[i] is w.emg
        np.testing.assert_array_equal(shuf[i], ws[(i + 1) % 3].emg)
        assert not np.array_equal(shuf[i], w.emg)
        assert zero[i].shape == w.emg.shape and not zero[i].any()
    short = windows(2)
    short[1].emg = short[1].emg[:, :60]  # another window's EMG is cut or padded to the length
    assert page.condition_emg(short, "shuffled")[0].shape == (6, 100)
    assert page.condition_emg(short, "shuffled")[1].shape == (6, 60)


class FakeTranslator:
    """Records what the page gives it; one audio hop of 8 samples per 1 EMG hop of 1 sample."""

    audio_hop, emg_hop = 8, 1

    def reset(self):
        self.calls = []

    def start(self, audio=None, prompt_emg=None):
        self.calls.append(("start", None if audio is None else len(audio),
                           None if prompt_emg is None else prompt_emg.shape[1]))
        return np.zeros(0 if audio is None else len(audio), np.float32)

    def push_emg(self, emg):
        self.calls.append(("push", emg.shape[1]))
        return np.ones(emg.shape[1] * self.audio_hop, np.float32)

    def flush(self):
        return np.ones(self.audio_hop, np.float32)  # a look-ahead frame past the end


@pytest.mark.parametrize("prompt", [0, 5])
def test_translate_window_prompts_pushes_the_rest_and_keeps_the_length(prompt):
    tr = FakeTranslator()
    audio, emg = np.zeros(800, np.float32), np.zeros((6, 100), np.float32)
    y = page.translate_window(tr, audio, emg, prompt)
    assert y.shape == (800,)
    start = ("start", 40, 5) if prompt else ("start", None, None)
    assert tr.calls == [start, ("push", 100 - prompt)]
    assert not y[:prompt * 8].any() and y[prompt * 8:].all()


def test_card_metrics_name_every_condition_split_and_weight():
    keys = list(page.MEASURES)
    rows = []
    for split in ("test", "test_real"):
        rows.append({"split": split, "guidance": "—", "EMG": "codec ceiling",
                     **dict.fromkeys(keys, 0.9)})
        for w in (1.0, 3.0):
            for c, v in zip(page.CONDITIONS, (0.7, 0.2, 0.1)):
                rows.append({"split": split, "guidance": w, "EMG": c, **dict.fromkeys(keys, v)})
    m = page.card_metrics(rows, "test", (1.0, 3.0))
    assert m["cond_loudness_corr_true"] == 0.7 and m["cond_loudness_corr_shuffled_g3"] == 0.2
    assert m["cond_loudness_corr_zero_real"] == 0.1 and m["cond_onset_f_ceiling_real"] == 0.9
    assert m["cond_loudness_margin"] == pytest.approx(0.5)
    assert m["cond_loudness_margin_real_g3"] == pytest.approx(0.5)
    assert "not_computed" not in m
    held_out_only = page.card_metrics([r for r in rows if r["split"] == "test"], "test",
                                      (1.0, 3.0))
    assert "cond_loudness_corr_true_real" in held_out_only["not_computed"]


def test_a_retrained_codec_makes_the_translation_runs_stale(tmp_path):
    from mlmlmlm.config import REPO_ROOT, load_run_config
    from mlmlmlm.runbook import _config_hash, upstream_checkpoints

    cfg = load_run_config("05_transformer/te2", "smoke")
    run_dir = tmp_path / "runs/smoke/05_transformer/te2.data-1234"
    up = upstream_checkpoints(cfg, run_dir)
    assert up == [tmp_path / "runs/smoke/02_audio_codec/audio_codec.data-1234/checkpoint.pt",
                  tmp_path / "runs/smoke/04_emg_codec/emg_codec.data-1234/checkpoint.pt"]
    nb, data = REPO_ROOT / "notebooks/05_transformer.ipynb", tmp_path / "data"
    data.mkdir()
    missing = _config_hash(cfg, nb, data, up)
    for p in up:
        p.parent.mkdir(parents=True)
        p.write_bytes(b"codec 1")
    trained = _config_hash(cfg, nb, data, up)
    assert trained != missing and _config_hash(cfg, nb, data, up) == trained
    up[0].write_bytes(b"codec 2, retrained")
    assert _config_hash(cfg, nb, data, up) != trained
    codec = load_run_config("02_audio_codec/audio_codec", "smoke")
    assert upstream_checkpoints(codec, tmp_path / "runs/smoke/02_audio_codec/audio_codec") == []
    # the live record is stale once either preset's translation run is retrained
    live = load_run_config("06_live_demo/live", "smoke")
    assert upstream_checkpoints(live, tmp_path / "runs/smoke/06_live_demo/live.data-1234") == [
        tmp_path / "runs/smoke/05_transformer/te2_frame.data-1234/checkpoint.pt",
        tmp_path / "runs/smoke/06_live_demo/te2_frame_ll.data-1234/checkpoint.pt"]


def test_the_page_shows_at_most_max_windows_evenly_spaced(monkeypatch):
    from mlmlmlm import report

    sr, n = 1000.0, 5
    ws = [page.Window(f"w{i}", np.full(100, i, np.float32), np.zeros((6, 10), np.float32))
          for i in range(n)]
    audio = {("test", 1.0, c): [w.audio for w in ws] for c in page.CONDITIONS}
    gen = page.Generated(sr, 10, {"test": ws}, audio, {"test": [w.audio for w in ws]})
    grids, tables = [], []
    monkeypatch.setattr(report, "spectrogram_grid", lambda cols, *a, **k: grids.append(cols))
    monkeypatch.setattr(report, "audio_table", lambda rows, sr: tables.append(rows))
    monkeypatch.setattr(page, "_show", lambda obj: None)
    page.listen_section(None, gen, max_windows=2)
    assert [c[0].split("\n")[0] for c in grids[0][::3]] == ["w0", "w3"]  # evenly spaced
    assert [r[0] for r in tables[0]] == ["w0", "w3"]
    assert tables[0][1][1]["reference"][0] == 3  # each row its own window's audio


def test_translate_window_sets_the_window_seed_before_it_starts():
    class Seeded(FakeTranslator):
        seed = 0

        def start(self, audio=None, prompt_emg=None):
            self.calls.append(("seed", self.seed))
            return super().start(audio, prompt_emg)

    tr = Seeded()
    audio, emg = np.zeros(800, np.float32), np.zeros((6, 100), np.float32)
    page.translate_window(tr, audio, emg, 5, seed=7)
    assert tr.calls[0] == ("seed", 7)
    page.translate_window(tr, audio, emg, 5)  # None leaves the translator's seed as it is
    assert tr.calls[0] == ("seed", 7)
