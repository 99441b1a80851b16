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
# # Translation run
#
# One experiment of phase 3 (the paper's §7): a decoder-only Transformer predicts the audio
# codec's tokens from the audio tokens before them and the EMG codec's tokens, both codecs
# frozen. The page trains it, scores its token predictions, lets it play from held-out EMG through
# the streaming translator, and asks the question that matters most: does the sound follow the
# EMG? The runbook executes it once per experiment in `experiments/05_transformer/`.

# %% tags=["parameters"]
run = "05_transformer/te2"  # <phase>/<run>: which experiment YAML
scale = "cpu"  # "cpu" (laptop sizes) or "paper" (GPU)
smoke = True  # tiny sizes for tests and `mlmlmlm book --smoke`
config = {}  # resolved config injected by the runbook; empty: resolve `run` here
run_dir = ""  # checkpoints and metrics; empty: runs/<scale>/<phase>/<run>
data_root = ""  # your data folder (only read); empty: the default corpus, built when missing

# %%
from mlmlmlm import transformer_page as page
from mlmlmlm.notebook import setup

S = setup(run, scale, smoke, config, run_dir, data_root)

# %% [markdown]
# ## The model
#
# Causal self-attention over the audio tokens, cross-attention over the EMG tokens, SwiGLU
# feed-forward layers and rotary positions on both sides. In the `flat` layout every frame's RVQ
# levels are predicted one after another; in the `frame` layout a small depth transformer
# produces them in one trunk step.

# %%
desc = page.model_section(S)

# %% [markdown]
# ## Training
#
# The frozen production codecs encode the corpus once into a token cache (rebuilt only when a
# codec checkpoint or a recording changes); the Transformer is then trained by teacher forcing on
# the one training loop, with the EMG dropped from a small share of the crops so that
# classifier-free guidance can be used when generating. Curves per RVQ level: level 0 carries the
# coarse sound, the later levels the residual detail.

# %%
trained = page.train_section(S)

# %% [markdown]
# ## Held-out token metrics
#
# Teacher-forced on the fixed held-out windows: how often the most likely code is the right one,
# and the perplexity (the exponential of the mean cross-entropy; a uniform guess scores the
# codebook size).

# %%
evaluated = page.metrics_section(S, trained)

# %% [markdown]
# ## Generation from held-out EMG
#
# A few fixed held-out windows, on the held-out split and on the real-EMG-driven split when the
# corpus has one. The first part of each window's reference audio is the prompt (a run with a
# learned start token gets none); from there on the translator hears only EMG, pushed as a stream.
# Each window is generated from its own EMG, from another window's EMG and from zero EMG, at
# guidance weight 1 and at a higher weight. The sizes below keep a cpu-scale page to a few minutes.

# %%
n_windows, seconds, prompt_s = (2, 0.3, 0.1) if S.smoke else (16, 3.0, 1.0)
guidances = (1.0, 3.0)
gen = page.generate_section(S, evaluated, n_windows, seconds, prompt_s, guidances)

# %% [markdown]
# ## Look and listen
#
# Reference, generation from the true EMG and from shuffled EMG, side by side (guidance 1), then
# players with the codec's resynthesis of the reference (the best any translation through this
# codec can sound) and the three generations.

# %%
page.listen_section(S, gen)

# %% [markdown]
# ## Does the EMG steer the sound?
#
# Generated against reference audio on the span after the prompt (`mlmlmlm.conditioning`):
# loudness-envelope correlation, vibrato rate and depth errors, and onset F-measure within 50 ms.
# If the model listens to the EMG, the *true* rows beat the *shuffled* and *zero* rows; a model
# that ignores it scores the same in all three. The codec ceiling row is the reference itself
# passed through the audio codec.

# %%
rows = page.conditioning_section(S, evaluated, gen, guidances)

# %%
page.finish(S, evaluated)
