"""The token cache: paired two-rate preparation, frames aligned one to one, encoded once by the
frozen codecs, invalidated by a changed codec checkpoint, and a stale cache never read."""

import shutil

import pytest
import torch

from mlmlmlm.config import ConfigError
from mlmlmlm.data import tokens as T

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pair_of(dirs, scale="smoke"):
    return T.load_codecs(T.CodecsConfig(audio=str(dirs["audio"]), emg=str(dirs["emg"])), scale)


@pytest.fixture
def codec_copies(smoke_codecs, tmp_path):
    """Copies of the smoke codec run dirs this test may change."""
    return {k: shutil.copytree(v, tmp_path / k) for k, v in smoke_codecs.items()}


def perturb(run_dir):
    """Re-save a codec checkpoint with one weight changed (a retrained codec)."""
    path = run_dir / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][key] += 0.5
    torch.save(ckpt, path)


def test_codecs_frozen_and_frames_align(smoke_codecs, smoke_corpus):
    from mlmlmlm.data.dataset import emg_scale, prepare
    from mlmlmlm.data.io import find_recordings, load_recording

    pair = pair_of(smoke_codecs)
    assert not pair.audio.training and not pair.emg.training
    assert not any(p.requires_grad for p in [*pair.audio.parameters(), *pair.emg.parameters()])
    assert pair.frame_rate == pytest.approx(22050 / 256)
    tracks = T.split_tokens(pair, smoke_corpus, "val")
    refs = [r for r in find_recordings(smoke_corpus) if r.split == "val"]
    assert [t.name for t in tracks] == [r.name for r in refs]
    adc, edc = T._data_configs(pair, smoke_corpus)
    scale = emg_scale(edc)
    for t, ref in zip(tracks, refs):
        rec = load_recording(ref)
        a, e = prepare(rec, adc, None), prepare(rec, edc, scale)  # each at its codec's rate
        n = min(a.shape[1] // 256, e.shape[1] // 32)  # whole frames; the partial one dropped
        assert t.audio.shape == (4, n) and t.emg.shape == (4, n)
        assert abs(a.shape[1] // 256 - e.shape[1] // 32) <= 1
        # the chunked (streaming) encode equals the codec's offline encode of the same samples
        with torch.inference_mode():
            want = pair.audio.encode(torch.from_numpy(a[None, :, :n * 256])).codes[0]
        assert torch.equal(t.audio.long(), want)
    # paired_signals serves the same prepared signals (the reference audio of a token window)
    for t, (name, a, e) in zip(tracks, T.paired_signals(pair, smoke_corpus, "val")):
        assert name == t.name and a.shape[0] == 1 and e.shape[0] == 6
        assert torch.equal(T.encode_pair(pair, name, a, e).emg, t.emg)


def test_encoded_once_then_read(smoke_codecs, smoke_corpus, monkeypatch):
    pair = pair_of(smoke_codecs)
    first = T.split_tokens(pair, smoke_corpus, "val")  # may come from an earlier test's cache
    calls = []
    real = T._encode_split
    monkeypatch.setattr(T, "_encode_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = T.split_tokens(pair, smoke_corpus, "val")
    assert not calls and all(torch.equal(x.audio, y.audio) for x, y in zip(first, again))
    assert T.cache_path(pair, smoke_corpus, "val").is_file()


def test_changed_codec_checkpoint_invalidates_the_cache(codec_copies, smoke_corpus, monkeypatch):
    pair = pair_of(codec_copies)
    before = T.split_tokens(pair, smoke_corpus, "val")
    path = T.cache_path(pair, smoke_corpus, "val")
    perturb(codec_copies["emg"])
    pair2 = pair_of(codec_copies)
    assert pair2.emg_sha256 != pair.emg_sha256 and T.cache_path(pair2, smoke_corpus, "val") == path
    calls = []
    real = T._encode_split
    monkeypatch.setattr(T, "_encode_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    after = T.split_tokens(pair2, smoke_corpus, "val")
    assert calls == [1]  # re-encoded, not read
    assert torch.load(path, weights_only=True)["key"]["emg_codec_sha256"] == pair2.emg_sha256
    assert any(not torch.equal(x.emg, y.emg) for x, y in zip(before, after))
    assert all(torch.equal(x.audio, y.audio) for x, y in zip(before, after))


def test_a_stale_cache_is_never_read(smoke_codecs, smoke_corpus):
    pair = pair_of(smoke_codecs)
    real = T.split_tokens(pair, smoke_corpus, "val")
    path = T.cache_path(pair, smoke_corpus, "val")
    key = T.cache_key(pair, smoke_corpus, "val", [1.0])
    bogus = [{"name": t.name, "audio": torch.zeros_like(t.audio), "emg": torch.zeros_like(t.emg)}
             for t in real]
    for field, value in (("audio_codec_sha256", "0" * 64), ("data_signature", "x")):
        torch.save({"key": {**key, field: value}, "tracks": bogus}, path)
        got = T.split_tokens(pair, smoke_corpus, "val")
        assert all(torch.equal(x.audio, y.audio) for x, y in zip(got, real))
    path.write_bytes(b"cut short")  # unreadable: rebuilt too
    assert torch.equal(T.split_tokens(pair, smoke_corpus, "val")[0].emg, real[0].emg)


def test_the_cache_key_does_not_depend_on_how_the_root_is_spelt(smoke_codecs, smoke_corpus,
                                                                monkeypatch):
    import os

    pair = pair_of(smoke_codecs)
    absolute = T.cache_key(pair, smoke_corpus.resolve(), "val", [1.0])
    monkeypatch.chdir(smoke_corpus.parent)
    relative = T.cache_key(pair, smoke_corpus.name, "val", [1.0])
    assert relative == absolute and os.path.isabs(relative["data_root"])
    assert T.cache_path(pair, smoke_corpus.name, "val") == T.cache_path(pair, smoke_corpus, "val")


def test_frame_rates_must_match(codec_copies):
    path = codec_copies["emg"] / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["model"]["sample_rate"] = 3000.0  # 93.75 frames/s against 86.13
    torch.save(ckpt, path)
    with pytest.raises(ConfigError) as err:
        pair_of(codec_copies)
    msg = str(err.value)
    assert "\n" not in msg and str(codec_copies["audio"]) in msg and str(path.parent) in msg
    assert "frames must align" in msg


def test_missing_codec_says_what_to_train(smoke_corpus):
    with pytest.raises(T.MissingCodecError) as err:  # no codec was trained on this data root
        T.load_codecs(T.CodecsConfig(), "smoke", smoke_corpus, source="05_transformer/te2")
    msg = str(err.value)
    assert "\n" not in msg and "`mlmlmlm train 02_audio_codec/audio_codec --scale smoke`" in msg


def test_token_crops_and_held_out_windows(smoke_codecs, smoke_corpus):
    pair = pair_of(smoke_codecs)
    tracks = T.split_tokens(pair, smoke_corpus, "val")
    cfg = T.TokenDataConfig(crop_frames=16, window_s=1.0, window_hop_s=0.5)
    ds = T.TokenDataset(tracks, cfg, pair.frame_rate, train=True)
    item = ds[0]
    assert item["audio"].shape == (4, 16) and item["emg"].shape == (4, 16)
    assert item["audio"].dtype == torch.long
    t = next(t for t in tracks if t.name == item["name"])
    assert torch.equal(item["emg"], t.emg[:, item["start"]:item["start"] + 16].long())
    ds[1]  # draws: the crop sampler's state moves on
    state = ds.state_dict()
    a = [ds[i]["start"] for i in range(len(ds))]
    ds.load_state_dict(state)  # a resumed run draws the same crops
    assert [ds[i]["start"] for i in range(len(ds))] == a
    assert len(set(a)) > 1  # random crops inside the windows
    win = T.eval_windows(tracks, 86, 3)
    assert len(win) == 3 and all(w["audio"].shape == (4, 86) for w in win)
    again = T.eval_windows(tracks, 86, 3)  # a fixed list
    assert [(w["name"], w["start"]) for w in again] == [(w["name"], w["start"]) for w in win]
    with pytest.raises(Exception, match="shorter than one crop"):
        T.TokenDataset(tracks, T.TokenDataConfig(crop_frames=10**6), pair.frame_rate, train=True)


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_production_codec_configs_align_at_every_scale(scale):
    from mlmlmlm.config import load_run_config

    cfg = load_run_config("05_transformer/te2", scale)
    a = load_run_config(cfg.codecs.audio, scale).model
    e = load_run_config(cfg.codecs.emg, scale).model
    assert a.frame_rate == pytest.approx(e.frame_rate, rel=1e-12), (a.frame_rate, e.frame_rate)
    assert (cfg.model.n_q, cfg.model.codebook_size) == (a.n_q, a.codebook_size)
    assert (cfg.model.emg_n_q, cfg.model.emg_codebook_size) == (e.n_q, e.codebook_size)
