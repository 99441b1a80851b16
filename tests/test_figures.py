"""The results pages' comparison figures (mlmlmlm.figures): drawn from run cards and training
logs, the verdicts marked, written by the runbook's results page, byte-stable."""

import json

import pytest

from mlmlmlm import figures


def _card(name, title, ident, f0=None, ours="successful", paper=None, status="ok",
          run_dir=None):
    return {"name": name, "title": title, "status": status, "scale": "cpu", "wall_s": 200.0,
            "device": "cpu", "git_sha": "0" * 40, "differs_from_base": {},
            "run_dir": run_dir or f"runs/cpu/02_audio_codec/{name}",
            "params": {"eval": {"inspection_threshold": 0.5}},
            "metrics": {"steps": 380, "identifiability_audio": ident, "eval_f0_error_cents": f0,
                        "inspection": ours, "paper_inspection": paper, "n_eval_windows": 64},
            "paper": {"inspection": paper}}


CARDS = [_card("a_vae", "A VAE", 0.25, 80.0, "unsuccessful", "unsuccessful"),
         _card("a_rvq_vae_3", "A RVQ-VAE 3", 0.75, float("nan"), "successful", "successful"),
         _card("audio_codec", "audio codec", 0.5, 20.0, "successful", None, status="failed")]


def _log(steps, scale):
    return [{"step": s, "mrstft": scale / s, "train": 2 * scale / s} for s in steps]


def test_rows_carry_values_verdicts_and_chance():
    rows = figures.rows_of(CARDS)
    assert [r.label for r in rows] == ["A VAE", "A RVQ-VAE 3", "audio codec (failed)"]
    assert [r.colour for r in rows] == ["C0", "C1", "C2"]
    assert rows[1].values["eval_f0_error_cents"] is None  # NaN is no value
    assert (rows[0].ours, rows[0].paper, rows[2].paper) == ("unsuccessful", "unsuccessful", None)
    assert rows[0].threshold == 0.5 and rows[0].chance == pytest.approx(1 / 64)
    # only the metrics some run has, identifiability first
    assert [p[0] for p in figures.panels_for(rows)] == ["identifiability_audio",
                                                        "eval_f0_error_cents"]


def test_compare_figure_draws_each_value_and_marks_both_verdicts():
    from matplotlib.colors import to_hex

    fig = figures.compare_figure(CARDS)
    verdicts, ident, f0 = fig.axes[:3]
    assert [t.get_text() for t in verdicts.get_yticklabels()] == [
        "A VAE", "A RVQ-VAE 3", "audio codec (failed)"]
    assert verdicts.yaxis_inverted()  # first run on top, as in the table
    # one marker per verdict given (ours for three runs, the paper's for two), at (column, row)
    marks = sorted(tuple(map(float, c.get_offsets()[0])) for c in verdicts.collections)
    assert marks == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    colours = {tuple(map(float, c.get_offsets()[0])): to_hex(c.get_facecolor()[0])
               for c in verdicts.collections}
    # the paper's unsuccessful A VAE and successful A RVQ-VAE 3; ours the same for both
    assert colours[(1, 0)] == colours[(0, 0)] == figures.VERDICTS["unsuccessful"][1]
    assert colours[(1, 1)] == colours[(0, 1)] == figures.VERDICTS["successful"][1]
    assert "–" in [t.get_text() for t in verdicts.texts]  # no paper verdict for the new codec
    assert [p.get_width() for p in ident.patches] == [0.25, 0.75, 0.5]
    assert [line.get_xdata()[0] for line in ident.lines] == [0.5, pytest.approx(1 / 64)]
    assert [p.get_width() for p in f0.patches] == [80.0, 20.0]
    assert "n/a" in [t.get_text() for t in f0.texts]
    assert ident.get_title() == "identifiability (audio) ↑" and f0.get_title().endswith("↓")


def test_nothing_to_compare_draws_nothing():
    assert figures.compare_figure(CARDS[:1]) is None  # one run
    dataset = {"name": "default", "title": "Default corpus", "status": "ok",
               "metrics": {"recordings": 12, "minutes_paired": 3.0}}
    assert figures.compare_figure([dataset, dict(dataset, name="other")]) is None
    assert figures.curves_figure(CARDS, {"a_vae": _log([1, 2], 1.0)}) is None  # one log


def test_curves_figure_plots_each_loss_of_each_run_against_steps():
    logs = {"a_vae": _log([10, 20, 30], 1.0), "a_rvq_vae_3": _log([10, 20], 3.0)}
    logs["a_rvq_vae_3"][0]["quantizer"] = 0.1
    fig = figures.curves_figure(CARDS, logs)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ["MRSTFT (training)", "quantizer (training)", "train (training)"]
    mrstft = fig.axes[0]
    assert [list(line.get_xdata()) for line in mrstft.lines] == [[10, 20, 30], [10, 20]]
    assert list(mrstft.lines[1].get_ydata()) == pytest.approx([0.3, 0.15])
    assert [line.get_color() for line in mrstft.lines] == ["C0", "C1"]  # as in the bars
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == ["A RVQ-VAE 3", "A VAE"]


def test_long_logs_are_thinned_to_bin_means():
    s, v = figures.thin(range(1000), [float(i % 2) for i in range(1000)], n=100)
    assert len(s) == len(v) == 100
    assert s[0] == pytest.approx(4.5) and v == pytest.approx([0.5] * 100)
    short = figures.thin([1, 2], [3, 4])
    assert list(short[0]) == [1, 2]


def test_results_page_shows_the_figures_and_they_are_byte_stable(tmp_path):
    from mlmlmlm.runbook import write_results

    runs = tmp_path / "book/02_audio_codec/runs"
    runs.mkdir(parents=True)
    for i, card in enumerate(CARDS):
        (runs / f"{card['name']}.json").write_text(json.dumps(card))
        run_dir = tmp_path / card["run_dir"]
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text(
            "\n".join(json.dumps(e) for e in _log([10, 20, 30], i + 1.0)))
    text = write_results("02_audio_codec", tmp_path).read_text()
    ours = text.split("## Runs compared")[0]
    assert "## Our runs" in ours  # the figures follow our table
    assert "```{figure} _figures/runs_compared.svg" in text
    assert "```{figure} _figures/training_curves.svg" in text
    fig_dir = tmp_path / "book/02_audio_codec/_figures"
    svg = (fig_dir / "runs_compared.svg").read_text()
    assert "A RVQ-VAE 3" in svg and "paper" in svg  # text stays text
    assert str(tmp_path) not in svg
    first = {p.name: p.read_bytes() for p in fig_dir.iterdir()}
    write_results("02_audio_codec", tmp_path)
    assert {p.name: p.read_bytes() for p in fig_dir.iterdir()} == first
    # one card left: nothing to compare, and no stale figure stays behind
    for card in CARDS[1:]:
        (runs / f"{card['name']}.json").unlink()
    text = write_results("02_audio_codec", tmp_path).read_text()
    assert "{figure}" not in text and not list(fig_dir.glob("*.svg"))


def test_each_chapter_leads_with_identifiability_then_pitch_or_envelopes():
    audio = {"identifiability_audio": 0.7, "eval_raw_pitch_accuracy": 0.9,
             "eval_median_cents_error": 12.0, "eval_loudness_error_db": 2.0,
             "eval_si_sdr": -3.0}
    emg = {"identifiability_emg": 0.4, "eval_envelope_correlation": -0.2,
           "eval_median_frequency_error": 30.0}

    def panels(metrics):
        cards = [{"name": f"r{i}", "status": "ok", "metrics": metrics} for i in range(2)]
        return [p[0] for p in figures.panels_for(figures.rows_of(cards))]

    assert panels(audio) == ["identifiability_audio", "eval_raw_pitch_accuracy",
                             "eval_median_cents_error", "eval_loudness_error_db"]
    assert panels(emg) == ["identifiability_emg", "eval_envelope_correlation",
                           "eval_median_frequency_error"]
    assert panels(audio | emg) == ["identifiability_audio", "identifiability_emg",
                                   "eval_raw_pitch_accuracy", "eval_envelope_correlation"]
    translation = {"token_accuracy_q0": 0.2, "cond_loudness_corr_true": 0.05,
                   "cond_loudness_margin": -0.01, "emg_information_nats": 0.007}
    assert panels(translation) == ["cond_loudness_corr_true", "cond_loudness_margin",
                                   "emg_information_nats", "token_accuracy_q0"]
    # a correlation below zero stays on its axis, and 0-1 metrics share the 0-1 scale
    cards = [{"name": "a", "status": "ok", "metrics": emg},
             {"name": "b", "status": "ok", "metrics": emg | {"eval_envelope_correlation": 0.5}}]
    _, ident, env, _ = figures.compare_figure(cards).axes[:4]
    assert env.get_xlim() == (-0.2, 1.25) and ident.get_xlim() == (0.0, 1.25)
    assert [p.get_width() for p in env.patches] == [-0.2, 0.5]
