"""Window datasets over a tiny corpus in the default layout (mlmlmlm.data.dataset)."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from mlmlmlm.data.dataset import DataConfig, WindowDataset, emg_scale, fixed_eval_windows
from mlmlmlm.data.io import DataError

SR_A, SR_E, CR = 8000, 4000, 100
SPLITS = {"r0": "train", "r1": "train", "r2": "val", "r3": "test"}


@pytest.fixture
def corpus(tmp_path):
    """Four 2.5-s recordings: audio at 8 kHz, EMG at 4 kHz (channel c has amplitude 0.02 (c+1)),
    controls at 100 Hz where ``t_s`` holds the time in seconds."""
    rng = np.random.default_rng(0)
    n = int(2.5 * SR_A)
    for rid, split in SPLITS.items():
        d = tmp_path / split
        d.mkdir(exist_ok=True)
        sf.write(d / f"{rid}.audio.wav", 0.2 * rng.standard_normal(n), SR_A, subtype="PCM_16")
        emg = 0.02 * np.arange(1, 7) * rng.standard_normal((n // 2, 6))
        sf.write(d / f"{rid}.emg.wav", emg, SR_E, subtype="PCM_16")
        t_c = np.arange(int(2.5 * CR), dtype=np.float32) / CR
        np.savez(d / f"{rid}.controls.npz", t_s=t_c, pitch=np.full_like(t_c, 60.0))
    recs = [{"id": k, "split": v, "duration_s": 2.5} for k, v in SPLITS.items()]
    manifest = {"audio_sr": SR_A, "emg_sr": SR_E, "control_rate": CR, "recordings": recs}
    (tmp_path / "corpus.json").write_text(json.dumps(manifest))
    return tmp_path


def cfg_for(root, **kw):
    base = {
        "root": str(root),
        "modality": "emg_audio",
        "audio_sr": SR_A,
        "emg_sr": float(SR_A),
        "segment": 2048,
        "window_s": 1.0,
        "window_hop_s": 0.5,
    }
    return DataConfig(**{**base, **kw})


def test_config_validation():
    with pytest.raises(ValueError, match="modality must be one of"):
        DataConfig(modality="video")
    with pytest.raises(ValueError, match="emg_sr == audio_sr"):
        DataConfig(modality="emg_audio", emg_sr=2756.25)
    with pytest.raises(ValueError, match="longer than a 6-s window"):
        DataConfig(segment=300_000)
    assert DataConfig(modality="emg", emg_sr=2756.25, segment=8192).sr == 2756.25


@pytest.mark.parametrize(("modality", "channels"), [("audio", 1), ("emg", 6), ("emg_audio", 7)])
def test_items_per_modality(corpus, modality, channels):
    cfg = cfg_for(corpus, modality=modality, emg_sr=float(SR_A if modality != "emg" else SR_E))
    ds = WindowDataset(cfg, "val", train=False)
    assert len(ds) == 4  # 2.5 s: windows at 0, 0.5, 1.0, 1.5 s
    item = ds[1]
    assert item["x"].shape == (channels, 2048) and item["x"].dtype == torch.float32
    assert item["name"] == "r2" and item["start_s"] == 0.5
    n_c = round(2048 / cfg.sr * CR)
    assert item["controls"]["t_s"].shape == (n_c,)
    assert item["controls"]["t_s"][0] == pytest.approx(0.5)  # same time span as x


def test_eval_crop_is_window_start_and_train_crop_is_random_and_seeded(corpus):
    cfg = cfg_for(corpus)
    ev = WindowDataset(cfg, "train", train=False)
    assert [ev[i]["start_s"] for i in range(4)] == [0.0, 0.5, 1.0, 1.5]
    torch.manual_seed(0)
    tr = WindowDataset(cfg, "train", train=True)
    starts = [tr[i]["start_s"] for i in range(len(tr)) for _ in range(3)]
    assert len(set(starts)) > 10
    for i in range(len(tr)):  # every crop stays inside its window
        w0 = tr.windows[i, 1] / cfg.sr
        s = tr[i]["start_s"]
        assert w0 <= s <= w0 + 1.0 - 2048 / cfg.sr
    torch.manual_seed(0)
    again = WindowDataset(cfg, "train", train=True)
    assert [again[i]["start_s"] for i in range(len(again)) for _ in range(3)] == starts
    item = tr[0]
    t0 = item["start_s"]
    assert item["controls"]["t_s"][0] == pytest.approx(round(t0 * CR) / CR)


def test_emg_is_scaled_and_audio_kept(corpus):
    cfg = cfg_for(corpus)
    scale = emg_scale(cfg)
    assert scale.shape == (6,)
    ratios = scale / scale[0]
    np.testing.assert_allclose(ratios, np.arange(1, 7), rtol=0.15)  # follows channel amplitude
    from mlmlmlm.data.dataset import _scale_cache

    assert not (corpus / "emg_scale.json").exists()  # the data folder is only read
    saved = json.loads(_scale_cache(corpus).read_text())
    assert saved["settings"]["recordings"] == ["r0", "r1"]  # train split only
    np.testing.assert_allclose(saved["scale"], scale)
    x = torch.stack([it["x"] for it in WindowDataset(cfg, "train", train=False)])
    q = torch.quantile(x[:, 1:].abs().transpose(0, 1).reshape(6, -1), 0.999, dim=1)
    np.testing.assert_allclose(q.numpy(), 1.0, atol=0.15)
    audio, _ = sf.read(corpus / "train" / "r0.audio.wav", dtype="float32")
    np.testing.assert_allclose(x[0, 0].numpy(), audio[:2048])


def test_time_stretch_copies_in_train_only(corpus):
    cfg = cfg_for(corpus, time_stretch=[0.8, 1.0, 1.25])
    tr = WindowDataset(cfg, "train", train=True)
    names = sorted({t.name for t in tr.tracks})
    assert names == ["r0", "r0@x0.8", "r0@x1.25", "r1", "r1@x0.8", "r1@x1.25"]
    lengths = {t.name: t.x.shape[1] for t in tr.tracks}
    assert lengths["r0@x0.8"] == round(lengths["r0"] / 0.8)
    slow = next(t for t in tr.tracks if t.name == "r0@x0.8")
    assert len(slow.controls["t_s"]) == round(250 / 0.8)
    assert len(WindowDataset(cfg, "train", train=False)) == 8


def test_fixed_eval_windows_are_fixed(corpus):
    cfg = cfg_for(corpus, eval_windows=3)
    a = fixed_eval_windows(cfg)
    b = fixed_eval_windows(cfg)
    assert [(it["name"], it["start_s"]) for it in a] == [("r3", 0.0), ("r3", 1.0), ("r3", 1.5)]
    assert all(torch.equal(x["x"], y["x"]) for x, y in zip(a, b))
    assert len(fixed_eval_windows(cfg, n=100)) == 4


def test_refuses_a_folder_that_fails_the_check(corpus):
    with pytest.raises(DataError, match="split 'nope' has no recordings"):
        WindowDataset(cfg_for(corpus), "nope", train=False)
    sf.write(corpus / "train" / "r0.emg.wav", 0.1 * np.ones((SR_E, 6)), SR_E)
    with pytest.raises(DataError) as err:
        WindowDataset(cfg_for(corpus), "train", train=True)
    msg = str(err.value)
    assert msg.startswith(f"{corpus}: failed the data check with 1 problem(s): ")
    assert msg.endswith(
        "r0.emg.wav: audio lasts 2.500 s but EMG lasts 1.000 s (more than 10 ms apart)"
    )
    assert "\n" not in msg and len(err.value.problems) == 1
