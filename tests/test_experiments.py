"""Every experiment YAML builds its codec and trains one step at smoke size on the real smoke
corpus; a trained codec rebuilds identically from its checkpoint file alone; the config tables
match the paper's Tables 1, 3 and 5 at the `paper` scale."""

import dataclasses

import pytest
import torch

from mlmlmlm.config import list_runs, load_run_config, merged_dict
from mlmlmlm.recipes import codec as recipe

CODEC_RUNS = [r for r in list_runs() if merged_dict(r, "smoke").get("kind") == "codec"]


@pytest.mark.parametrize("run", CODEC_RUNS)
def test_experiment_trains_one_step_at_smoke_size(run, smoke_corpus, tmp_path):
    cfg = load_run_config(run, "smoke", overrides={"train.max_steps": 1})
    result = recipe.train_codec(cfg, tmp_path, smoke_corpus, progress=False)
    assert result.steps == 1
    log = recipe.read_log(tmp_path)
    assert log and "train" in log[-1] and "mrstft" in log[-1]
    assert ("kl" in log[-1]) == (cfg.model.bottleneck == "vae")
    assert ("quantizer" in log[-1]) == (cfg.model.bottleneck == "rvq")
    assert ("disc" in log[-1]) == cfg.loss.discriminator


def test_checkpoint_round_trip_rebuilds_identical_model(smoke_corpus, tmp_path):
    cfg = load_run_config("02_audio_codec/a_rvq_vae_3", "smoke")
    result = recipe.train_codec(cfg, tmp_path, smoke_corpus, progress=False)
    model, cfg2 = recipe.load_codec(tmp_path, use_ema=False)
    assert cfg2.to_dict() == cfg.to_dict()
    x = recipe.eval_windows(cfg, smoke_corpus, 2)
    trained = result.model.eval()
    with torch.inference_mode():
        assert torch.equal(model(x).recon, trained(x).recon)
        assert torch.equal(model.encode(x).codes, trained.encode(x).codes)
    for (k, a), (_, b) in zip(model.state_dict().items(), trained.state_dict().items()):
        assert torch.equal(a, b), k


def test_codec_metrics_row(smoke_corpus, tmp_path):
    cfg = load_run_config("03_emg_audio_codec/ea_vae_3", "smoke")
    result = recipe.train_codec(cfg, tmp_path, smoke_corpus, progress=False)
    model, _ = recipe.load_codec(tmp_path)
    ev = recipe.evaluate_codec(cfg, model, smoke_corpus)
    m = recipe.codec_metrics(cfg, recipe.read_log(tmp_path), ev, smoke_corpus,
                                 result.wall_s)
    per = m["identifiability_per_channel"]
    assert len(per) == 7 and m["identifiability_audio"] == per[0]
    assert m["identifiability_emg"] == pytest.approx(sum(per[1:]) / 6)
    # each value is a fraction of the held-out windows: a whole number of them
    n = m["n_eval_windows"]
    assert n == len(recipe.eval_windows(cfg, smoke_corpus)) and n >= 2
    assert all(abs(v * n - round(v * n)) < 1e-4 for v in per)
    assert m["inspection"] in ("successful", "unsuccessful")
    assert m["paper_inspection"] == "successful"
    # the columns are the weighted terms, so they add up to "train" as in the paper's tables
    parts = sum(m[k] for k in ("mrstft", "kl", "adversarial", "feature_matching"))
    assert parts == pytest.approx(m["train"], rel=1e-4)


PAPER = {  # Tables 1, 3, 5: conv channels, latent, KL beta, lr, sequence, codebook
    "02_audio_codec/a_vae": (128, 64, 1e-4, 1.5e-4, 65536, None),
    "02_audio_codec/a_rvq_vae_1": (128, 64, None, 1.5e-4, 32768, 2048),
    "02_audio_codec/a_rvq_vae_2": (128, 128, None, 1.5e-4, 32768, 2048),
    "02_audio_codec/a_rvq_vae_3": (128, 64, None, 1.5e-4, 196608, 2048),
    "03_emg_audio_codec/ea_vae_1": (128, 128, 1e-4, 1.5e-4, 32768, None),
    "03_emg_audio_codec/ea_vae_2": (196, 128, 1e-4, 1.5e-4, 32768, None),
    "03_emg_audio_codec/ea_vae_3": (196, 64, 1e-5, 1.5e-5, 32768, None),
    "03_emg_audio_codec/ea_vae_4": (196, 64, 1e-4, 1.5e-4, 32768, None),
    "04_emg_codec/emg_vae": (196, 64, 1e-5, 1.5e-5, 32768, None),
    "04_emg_codec/emg_rvq_vae": (196, 64, None, 1.5e-4, 65536, 2048),
}


@pytest.mark.parametrize("run", sorted(PAPER))
def test_paper_scale_matches_the_papers_tables(run):
    cfg = load_run_config(run, "paper")
    ch, latent, beta, lr, seq, codebook = PAPER[run]
    assert (cfg.model.channels, cfg.model.latent_dim, cfg.train.lr, cfg.data.segment) == \
        (ch, latent, lr, seq)
    assert cfg.model.strides == [2, 4, 4, 8, 8] and cfg.model.c_mults == [1, 2, 4, 8, 16]
    assert cfg.train.batch_size == 4
    if beta is None:
        assert cfg.model.bottleneck == "rvq" and cfg.model.codebook_size == codebook
        assert cfg.model.n_q == 4
    else:
        assert cfg.model.bottleneck == "vae" and cfg.model.kl_beta == beta


def test_native_emg_frames_align_with_audio_frames():
    audio = load_run_config("02_audio_codec/a_rvq_vae_3", "paper").model
    for scale in ("cpu", "paper"):
        emg = load_run_config("04_emg_codec/emg_rvq_vae_native", scale).model
        assert emg.hop / emg.sample_rate == pytest.approx(audio.hop / audio.sample_rate)
        assert emg.sample_rate == 22050 / 8


def test_native_long_is_the_native_codec_trained_longer():
    # the equal-time row must differ from the equal-steps row in training length only
    for scale in ("cpu", "paper"):
        short = load_run_config("04_emg_codec/emg_rvq_vae_native", scale)
        long = load_run_config("04_emg_codec/emg_rvq_vae_native_long", scale)
        assert long.model == short.model and long.data == short.data and long.loss == short.loss
        assert long.train.batch_size == short.train.batch_size
    cpu_short = load_run_config("04_emg_codec/emg_rvq_vae_native", "cpu").train.max_steps
    cpu_long = load_run_config("04_emg_codec/emg_rvq_vae_native_long", "cpu").train.max_steps
    upsampled = load_run_config("04_emg_codec/emg_rvq_vae", "cpu").train.max_steps
    assert cpu_short == upsampled and cpu_long >= 5 * upsampled


def test_native_bands_differs_from_native_long_in_the_emg_loss_only():
    for scale in ("cpu", "paper"):
        long = load_run_config("04_emg_codec/emg_rvq_vae_native_long", scale)
        bands = load_run_config("04_emg_codec/emg_rvq_vae_native_bands", scale)
        assert bands.model == long.model and bands.data == long.data
        assert bands.train == long.train
        assert long.loss.emg_mel_bins is None and bands.loss.emg_mel_bins == 16
        assert dataclasses.replace(bands.loss, emg_mel_bins=None,
                                   fft_sizes=long.loss.fft_sizes) == long.loss


def test_cli_train_with_overrides_and_eval(smoke_corpus, tmp_path):
    import json
    import subprocess
    import sys

    from mlmlmlm.config import REPO_ROOT, ConfigError, parse_overrides

    assert parse_overrides(["train.lr=3e-3", "loss.fft_sizes=[512, 128]"]) == {
        "train.lr": 0.003, "loss.fft_sizes": [512, 128]}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["train.lr"])
    cmd = [sys.executable, "-m", "mlmlmlm.cli", "train", "02_audio_codec/a_rvq_vae_3",
           "--scale", "smoke", "--data-root", str(smoke_corpus), "--run-dir", str(tmp_path),
           "--set", "train.max_steps=1", "--set", "model.latent_dim=4", "--eval"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["steps"] == 1 and out["overrides"] == {"train.max_steps": 1, "model.latent_dim": 4}
    # the override reached the model that was trained and saved
    from mlmlmlm.recipes.codec import evaluate_codec, load_codec

    model, cfg = load_codec(tmp_path)
    assert cfg.model.latent_dim == 4 and model.cfg.latent_dim == 4
    # and the printed metrics are that checkpoint's, on the fixed held-out windows
    ev = evaluate_codec(cfg, model, smoke_corpus)
    assert out["identifiability"]["mean"] == pytest.approx(ev["identifiability"]["mean"])
    assert out["mrstft"] == pytest.approx(ev["mrstft"]["mean"], rel=1e-5)
    assert out["card"]["eval_raw_pitch_accuracy"] == pytest.approx(ev["pitch"]["raw_pitch_accuracy"])
    assert out["card"]["steps"] == 1 and "eval_vibrato_depth_correlation" in out["card"]
