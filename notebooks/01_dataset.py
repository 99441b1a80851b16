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
# # The default corpus
#
# This page shows the corpus every later chapter trains on: seven time-aligned channels (viola
# audio and six surface-EMG placements), how they were made, what they look and sound like, and
# how the synthetic EMG compares with real surface EMG. The runbook executes it with the
# parameters below; in JupyterLab, run it top to bottom as it is. Pointed at your own recordings
# (`data_root`), it shows the same for them, and only reads the folder.

# %% tags=["parameters"]
run = "01_dataset/default"  # <phase>/<run>: the experiment this page shows
scale = "cpu"  # "cpu" (laptop sizes) or "paper"
smoke = True  # tiny sizes for tests and `mlmlmlm book --smoke`
config = {}  # resolved config injected by the runbook; empty: resolve `run` here
run_dir = ""  # checkpoints and metrics; empty: runs/<scale>/<phase>/<run>
data_root = ""  # your data folder (only read); empty: the default corpus, built when missing

# %%
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from mlmlmlm import report
from mlmlmlm.data import stats
from mlmlmlm.data.synth import plux
from mlmlmlm.notebook import setup

S = setup(run, scale, smoke, config, run_dir, data_root)
recs = stats.load_all(S.data_root)
info = stats.folder_info(S.data_root, recs)

# %% [markdown]
# ## How this corpus was made
#
# For the default corpus the manifest records the seed, the size, the sound source and how long
# the build took; building it again with the same seed gives byte-identical files. For a folder
# of your own, the table counts what is there.

# %%
display(Markdown(report.markdown_table([info.table])))
display(Markdown("**Channels:** " + ", ".join(f"`{c}`" for c in info.channels)))
display(Markdown(info.splits_note))

# %% [markdown]
# ## Size of each split
#
# Splits are by recording. Windows are the paper's six-second windows with a three-second hop;
# `test_real` is the held-out split whose dynamics follow real PLUX EMG.

# %%
w = S.cfg.data
splits = stats.split_table(recs, w.window_s, w.window_hop_s)
display(Markdown(report.markdown_table(splits)))

# %% [markdown]
# ## Seven channels, time-aligned
#
# One held-out window, drawn like the paper's Figure 2: the viola on top, the six EMG placements
# below on the same time axis.

# %%
examples = stats.example_windows(recs, S.cfg.eval.split, S.cfg.eval.n_examples, w.window_s)
ex = examples[0]
fig = report.multichannel_view(ex.audio, ex.audio_sr, ex.emg, ex.emg_sr, info.channels,
                               title=ex.label)
plt.show()

# %% [markdown]
# The ground-truth control curves that drove this window (kept with every recording of the
# default corpus; a folder of your own may carry them as `<name>.controls.npz`):

# %%
if ex.controls:
    report.control_curves(ex.controls, ex.control_rate)
    plt.show()
else:
    display(Markdown("*Not available: this folder has no control curves.*"))

# %% [markdown]
# ## Spectrograms of every channel
#
# Same window, one fixed dB range and colour map for the whole book. EMG is shown up to 500 Hz:
# the BITalino sensor band ends around 480 Hz.

# %%
fig = report.spectrogram_grid([("audio", ex.audio)], ex.audio_sr, "audio", title=ex.label)
plt.show()
fig = report.spectrogram_grid(list(zip(info.channels[1:], ex.emg)), ex.emg_sr, "emg",
                              ncols=3)
plt.show()

# %% [markdown]
# ## Listen
#
# The fixed list of held-out windows used by every chapter, and windows of the real-EMG-driven
# split (the default corpus only).

# %%
real = stats.example_windows(recs, "test_real", 2, w.window_s)
rows = [(e.label, {"audio": e.audio}) for e in examples + real]
display(report.audio_table(rows, ex.audio_sr))

# %% [markdown]
# ## Channel statistics
#
# Over the synthetic-driven splits: RMS in dB re full scale, the median frequency of the power
# spectrum, and the share of power at 50 Hz and its harmonics (mains hum, before the notch filter
# that the data layer applies when training).

# %%
chans = stats.channel_table(recs, info.channels)
display(Markdown(report.markdown_table(chans)))

# %% [markdown]
# ## Synthetic EMG against real surface EMG
#
# The PLUX recordings shipped with `biosignalsnotebooks` are real surface EMG (adductor pollicis
# and biceps brachii, 1 kHz). Both are compared at 1 kHz: spectra, median frequency, RMS and the
# shape of the amplitude distribution (kurtosis; a Gaussian has 3). A folder of your own is
# compared the same way; its amplitudes are in its own units, so compare shapes, not RMS.

# %%
cmp = stats.compare_to_real(S.data_root, recs, info)
display(Markdown(report.markdown_table(cmp.reset_index().to_dict("records"))))

# %%
real_recs = plux.load_plux()
syn = np.concatenate([r.emg for r in recs if r.split != "test_real"], axis=1)
label = "synthetic" if info.ours else "this folder"
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.2), constrained_layout=True)
for c in range(syn.shape[0]):
    f, p = plux.psd(syn[c], recs[0].emg_sr)
    a1.semilogy(f, p / p.sum(), lw=0.8, label=info.channels[c + 1].replace("emg_", ""))
for r in real_recs:
    f, p = plux.psd(r.emg, r.fs)
    a1.semilogy(f, p / p.sum(), "k--", lw=0.8, alpha=0.6)
a1.set(xlim=(0, 500), xlabel="Hz", ylabel="normalised PSD",
       title=f"{label} spectra (dashed: real PLUX)")
a1.legend(fontsize=6)
for x, style in [(syn[0], "C0"), (real_recs[0].emg, "k")]:
    z = (x - x.mean()) / x.std()
    a2.hist(z, bins=120, range=(-6, 6), density=True, histtype="step", color=style, log=True)
a2.set(xlabel="amplitude / std", title="amplitude distribution (black: real)")
plt.show()

# %% [markdown]
# ## What this corpus cannot show
#
# It is not a violist's body: the link from muscles to sound here is the plan we wrote, simpler
# and more regular than a player's, and the EMG model only approximates placement, skin, fatigue
# and cross-talk. Read the later chapters' numbers as tests of the machinery on a known ground
# truth, and bring real recordings (see the README) to test the music.

# %%
metrics = stats.dataset_metrics(recs, splits, cmp, info)
report.save_metrics(S.run_dir, metrics)
rows = [{"metric": k, "value": v} for k, v in metrics.items() if k != "not_computed"]
display(Markdown(report.markdown_table(rows)))
