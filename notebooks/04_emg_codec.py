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
# numbers carry the weight: identifiability per channel, envelope correlation and median
# frequency error. The runbook executes this page once per experiment in
# `experiments/04_emg_codec/`.

# %% tags=["parameters"]
run = "04_emg_codec/emg_rvq_vae"  # <phase>/<run>: which experiment YAML
scale = "cpu"  # "cpu" (laptop sizes) or "paper" (GPU)
smoke = True  # tiny sizes for tests and `mlmlmlm book --smoke`
config = {}  # resolved config injected by the runbook; empty: resolve `run` here
run_dir = ""  # checkpoints and metrics; empty: runs/<phase>/<run>
data_root = ""  # corpus folder; empty: data/default (data/smoke when smoke)

# %%
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from mlmlmlm import evaluate, experiment, report
from mlmlmlm.notebook import setup
from mlmlmlm.runbook import ensure_corpus

S = setup(run, scale, smoke, config, run_dir, data_root)
ensure_corpus(S.data_root, S.smoke)
cfg = S.cfg
display(Markdown(f"**{cfg.title}** ({cfg.scale} scale). {cfg.description}"))

# %% [markdown]
# ## The model
#
# Parameter count, hop (input samples per token frame) and receptive field of this configuration.

# %%
desc = experiment.build_codec(cfg).describe()
display(Markdown(report.markdown_table([desc])))

# %% [markdown]
# ## Training
#
# The one training loop (`mlmlmlm.train`); a checkpoint already in the run folder is resumed.

# %%
result = experiment.train_codec(cfg, S.run_dir, S.data_root, progress=False)
log = experiment.read_log(S.run_dir)
print(f"{result.steps} steps, stopped by {result.stopped}, {result.samples_per_s:.0f} samples/s")
fig = report.loss_curves(log, experiment.LOSS_KEYS, title=cfg.title)
plt.show()

# %% [markdown]
# ## Held-out metrics
#
# On the fixed list of held-out windows. *Identifiability* is the fraction of windows whose
# reconstruction is nearest (in MRSTFT distance) to its own original; a model that collapses to
# one average output scores about 1/N. The inspection verdict is identifiability against the
# threshold in the run's `eval` settings.

# %%
model, _ = experiment.load_codec(S.run_dir)
ev = experiment.evaluate_codec(cfg, model, S.data_root)
metrics = experiment.codec_metrics(cfg, log, ev, S.data_root, result.wall_s)
rows = [{"metric": k, "value": v} for k, v in metrics.items() if not isinstance(v, list)]
display(Markdown(report.markdown_table(rows)))

# %% [markdown]
# ## Look and listen
#
# Originals and reconstructions interleaved, as in the paper's appendices, for every channel.

# %%
names = experiment.channel_names(cfg, S.data_root)
x = experiment.eval_windows(cfg, S.data_root, cfg.eval.n_examples)
recon, _ = evaluate.reconstruct(model, x)
x, recon = x.numpy(), recon.numpy()
labels = [f"window {i + 1}" for i in range(len(x))]
sr = cfg.model.sample_rate
for c, name in enumerate(names):
    kind = "audio" if c in cfg.loss.audio_channels else "emg"
    report.spectrogram_grid(report.interleaved(x, recon, labels, c), sr, kind, title=name,
                            ncols=4)
    plt.show()

# %%
fig = report.traces(x[0], recon[0], sr, names, title=f"{labels[0]}: original (grey), "
                    "reconstruction (colour)")
plt.show()
audio = list(cfg.loss.audio_channels)
if audio:
    rows = [(labels[i], {"original": x[i, audio[0]], "reconstruction": recon[i, audio[0]]})
            for i in range(len(x))]
    display(report.audio_table(rows, sr))

# %%
report.save_metrics(S.run_dir, metrics)
display(Markdown(f"Codebook perplexity per level: {metrics.get('codebook_perplexity', '—')}"))

# %% [markdown]
# ## Per placement
#
# Identifiability, envelope correlation and median-frequency error for each EMG placement.

# %%
table = [{"channel": n, "identifiability": metrics["identifiability_per_channel"][c],
          "envelope corr.": ev["envelope_correlation"]["per_channel"][c],
          "median freq. error (Hz)": ev["median_frequency_error"]["per_channel"][c]}
         for c, n in enumerate(names)]
display(Markdown(report.markdown_table(table, floatfmt=".3g")))
