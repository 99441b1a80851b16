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
# # EMG + audio codec run
#
# One experiment of phase 2a (the paper's Tables 3–4): the same codec class on seven channels,
# viola audio in channel 0 and the six EMG placements at the audio rate. The audio channel is the
# one we can judge by ear: it tells whether the model still produces varied outputs while it
# learns the EMG. The runbook executes this page once per experiment in
# `experiments/03_emg_audio_codec/`.

# %% tags=["parameters"]
run = "03_emg_audio_codec/ea_vae_3"  # <phase>/<run>: which experiment YAML
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
# ## Capacity for seven channels
#
# What this run changes is capacity and regularisation: convolution width, latent size, KL weight
# and learning rate. The table gives the resulting model's size and time scales.

# %%
desc = codec_page.model_section(S)

# %% [markdown]
# ## Training on seven channels at once
#
# The loss is the MRSTFT of every channel averaged (A-weighting on the audio channel only), plus
# the KL term and the discriminator's terms. Watch whether the KL term is driven to almost
# nothing: the paper's collapsed runs ended with a very small KL.

# %%
trained = codec_page.train_section(S)

# %% [markdown]
# ## Does every channel keep its identity?
#
# The paper judged these runs by whether reconstructions varied as the originals did. Here that
# judgement is a number per channel: identifiability over the held-out windows.

# %%
evaluated = codec_page.metrics_section(S, trained)

# %% [markdown]
# ## Seeing the EMG through the audio
#
# Audio first, then each EMG placement, originals and reconstructions interleaved; then the
# audio players, which are how the paper decided that EA VAE 3 worked.

# %%
names = codec_page.look_and_listen(S, evaluated)

# %% [markdown]
# ### The audio channel as a window onto the EMG
#
# Identifiability of the audio channel beside each EMG channel. A collapsed model fails on every
# channel at once; a healthy one is identifiable on audio and on most placements.

# %%
rows = codec_page.per_channel_table(names, evaluated)
codec_page.finish(S, evaluated)
