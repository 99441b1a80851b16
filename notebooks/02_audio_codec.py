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
# # Audio codec run
#
# One experiment of phase 1 (the paper's Tables 1–2): the codec learns the viola channel alone.
# This is the modality we can judge by ear, so the page ends with players. The runbook executes
# it once per experiment in `experiments/02_audio_codec/`; the parameters pick which.

# %% tags=["parameters"]
run = "02_audio_codec/a_rvq_vae_3"  # <phase>/<run>: which experiment YAML
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
# ## The model
#
# The Oobleck encoder and decoder with this run's bottleneck. The hop is how many audio samples
# one token frame stands for; the receptive field is how much audio one frame's encoding sees.

# %%
desc = codec_page.model_section(S)

# %% [markdown]
# ## Training
#
# The one training loop (`mlmlmlm.train`) with this run's losses: multi-resolution STFT with
# A-weighting, then KL (VAE) or the quantiser loss (RVQ), and the discriminator's adversarial and
# feature-matching terms where the run has one. A checkpoint in the run folder is resumed.

# %%
trained = codec_page.train_section(S)

# %% [markdown]
# ## Held-out metrics
#
# On the fixed list of held-out 6-s windows. *Identifiability* is the fraction of windows whose
# reconstruction is nearest (in MRSTFT distance) to its own original; a model that collapses to
# one average output scores about 1/N. The verdict compares it with the run's threshold. The loss
# columns are averaged over the last tenth of the logged steps and weighted as in the total, like
# the paper's tables.

# %%
evaluated = codec_page.metrics_section(S, trained)

# %% [markdown]
# ## Look and listen
#
# Originals and reconstructions interleaved, as in the paper's appendices, then the first window
# as waveforms, then the players. Listen for pitch, dynamics and the regular artefacts the paper
# heard with quantisation.

# %%
names = codec_page.look_and_listen(S, evaluated)

# %%
codec_page.finish(S, evaluated)
