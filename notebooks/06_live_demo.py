# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Live instrument run
#
# One run of chapter 6. The runs `audio_codec_ll`, `emg_codec_ll` and `te2_frame_ll` are the
# low-latency preset, trained through the recipes of chapters 2, 4 and 5 at half the production
# hop; the run `live` trains nothing and is the record: held-out EMG and its instrument audio
# replayed through the real engine, via the Bela emulator and the real pybela client, for the
# default preset and the low-latency one. The runbook executes this notebook once per run in
# `experiments/06_live_demo/`; each page shows what its run's kind asks for.

# %%
live = False  # papermill -p live True: EMG from a Bela board, audio in and out on the sound card
board = "bela"  # with live: bela[:HOST[:PORT]], as mlmlmlm live --emg (default 192.168.7.2)

# %% tags=["parameters"]
run = "06_live_demo/live"  # <phase>/<run>: which experiment YAML
scale = "cpu"  # "cpu" (laptop sizes) or "paper" (GPU)
smoke = True  # tiny sizes for tests and `mlmlmlm book --smoke`
config = {}  # resolved config injected by the runbook; empty: resolve `run` here
run_dir = ""  # checkpoints and metrics; empty: runs/<scale>/<phase>/<run>
data_root = ""  # your data folder (only read); empty: the default corpus, built when missing

# %%
from mlmlmlm import live_page as page
from mlmlmlm.live.record import held_out_excerpt
from mlmlmlm.notebook import setup

S = setup(run, scale, smoke, config, run_dir, data_root)

# %% [markdown]
# ## The low-latency preset's runs
#
# A codec run shows its model, its training curves, its held-out metrics and its
# reconstructions, as in chapters 2 and 4; the translation run its model, curves per RVQ level
# and held-out token metrics, as in chapter 5. Each adds its frame period to its card.

# %%
trained = page.preset_run(S)

# %% [markdown]
# ## The record
#
# An excerpt of the first held-out recording, starting just before the instrument's first
# onset. Its EMG streams from the emulator through pybela at the board's pace: for the default
# preset in buffers of 1024 frames a channel, for the low-latency one in the board's interleaved
# layout, buffers of 128 frames of all six channels (`bela/README.md`). Its instrument audio
# arrives on the same clock. The trigger listens to the instrument: a rise of the RMS level by
# more than the threshold starts a phrase, prompted by the latest instrument audio; silence ends
# it. Every sample is scheduled a fixed playout delay after its EMG, the preset's own. The
# translators run their compiled step, as `mlmlmlm live --compile` does (a smoke build skips the
# compile). With `live = True` the EMG comes from a board and the sound card plays instead.

# %%
seconds = 3.0 if S.smoke else 12.0  # the excerpt
threshold_db, prompt_s = 12.0, 0.25
# {preset: ms}, from the record's presets: section (the chapter's other runs record nothing)
playout_ms = S.cfg.presets.playout_ms() if page.is_record(S) else {}
excerpt = held_out_excerpt(S.data_root, S.cfg.eval.split, seconds, threshold_db) \
    if page.is_record(S) and not live else None
records = page.record_section(S, excerpt, threshold_db=threshold_db, playout_ms=playout_ms,
                              prompt_s=prompt_s, live=live, seconds=seconds, board=board,
                              compile=not S.smoke)

# %% [markdown]
# ## Trigger and phrases
#
# For each preset: the instrument's RMS level as the trigger computes it, with the onsets and
# silences the engine recorded, and below it what the engine played, each phrase shaded from
# its first sample to its last (read back from the session's `events.jsonl` and `output.wav`).

# %%
page.trigger_figure(records, threshold_db);

# %% [markdown]
# ## Look and listen
#
# The instrument audio the engine heard and what each preset played, as spectrograms and players.
# The translators are the cpu-scale runs: listen for whether the phrases start and stop with the
# instrument and follow the EMG's dynamics, not yet for a viola.

# %%
page.listen_section(records)

# %% [markdown]
# ## Latency
#
# The budget by part (`mlmlmlm.live.latency.latency_budget`); the trained translator's compute
# per frame on random EMG and the engine's own counters of the record; and the end-to-end
# latency measured by replaying EMG onsets through the emulator and pybela into the engine and
# finding each sound onset in its output, at each preset's hops. Compute does not enter the
# latency: it only has to fit inside the playout delay, or the engine counts underruns.

# %%
e2e_seconds, compute_seconds, lead_s = (4.0, 1.0, 1.0) if S.smoke else (62.0, 10.0, 3.0)
lat = page.measure_latency(records, playout_ms, e2e_seconds, compute_seconds, lead_s)
page.latency_tables(lat)

# %%
page.finish(S, records, lat, excerpt, playout_ms, threshold_db)
