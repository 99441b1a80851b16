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
# # EMG codec run
#
# One experiment of phase 2b (the paper's Tables 5–6): the six EMG channels alone, with the
# settings found through the audio channel in phase 2a. Nothing here can be judged by ear, so the
# numbers carry the weight. The runbook executes this page once per experiment in
# `experiments/04_emg_codec/`.

# %% tags=["parameters"]
run = "04_emg_codec/emg_rvq_vae"  # <phase>/<run>: which experiment YAML
scale = "cpu"  # "cpu" (laptop sizes) or "paper" (GPU)
smoke = True  # tiny sizes for tests and `mlmlmlm book --smoke`
config = {}  # resolved config injected by the runbook; empty: resolve `run` here
run_dir = ""  # checkpoints and metrics; empty: runs/<scale>/<phase>/<run>
data_root = ""  # your data folder (only read); empty: the default corpus, built when missing

# %%
from mlmlmlm import codec_page
from mlmlmlm.notebook import setup

S = setup(run, scale, smoke, config, run_dir, data_root)

# %% [markdown]
# ## The EMG codec
#
# The codec that will feed the Transformer's cross-attention. Its sample rate decides its cost:
# the paper's runs use EMG upsampled to 44.1 kHz, our native-rate run 2756.25 Hz, both with one
# token frame per 46.4 ms.

# %%
desc = codec_page.model_section(S)

# %% [markdown]
# ## Training without the audio channel
#
# MRSTFT on the six EMG channels without A-weighting, plus KL or the quantiser loss; the EMG VAE
# keeps the discriminator, the RVQ runs drop it as the paper did.

# %%
trained = codec_page.train_section(S)

# %% [markdown]
# ## Metrics a listener cannot give
#
# Identifiability per placement, envelope correlation of the rectified, smoothed signals (how well
# muscle activity over time is kept) and median-frequency error (how well the spectral shape of
# the motor-unit activity is kept).

# %%
evaluated = codec_page.metrics_section(S, trained)

# %% [markdown]
# ## Looking at EMG reconstructions
#
# Spectrograms up to 500 Hz per placement, originals and reconstructions interleaved, and the
# first window's traces. There is no audio channel, so there are no players.

# %%
names = codec_page.look_and_listen(S, evaluated)

# %% [markdown]
# ### Per placement

# %%
rows = codec_page.per_channel_table(names, evaluated)
codec_page.finish(S, evaluated)
