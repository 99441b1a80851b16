"""``mlmlmlm translate`` on a smoke-trained te2 run: a good run writes a WAV as long as the EMG
(same seed, same bytes); each bad input is one line naming its file, exit 2, no output file;
the run-side parts (generation settings, EMG preparation, Translator.from_run)."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mlmlmlm.cli import main
from mlmlmlm.data.preprocess import filter_emg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EMG_SR, PROMPT_SR = 4000, 44100


def _train_codecs(corpus: Path, root: Path) -> dict[str, Path]:
    from mlmlmlm.config import load_run_config
    from mlmlmlm.recipes.codec import train_codec

    out = {}
    for what, run in (("audio", "02_audio_codec/audio_codec"), ("emg", "04_emg_codec/emg_codec")):
        out[what] = root / what
        train_codec(load_run_config(run, "smoke"), out[what], corpus, progress=False)
    return out


@pytest.fixture(scope="module")
def te2(request, smoke_corpus, tmp_path_factory) -> Path:
    """A te2 run trained for 2 smoke steps on the smoke codecs (conftest's when it has them)."""
    from mlmlmlm.config import load_run_config
    from mlmlmlm.recipes import transformer as R

    try:
        codecs = request.getfixturevalue("smoke_codecs")
    except pytest.FixtureLookupError:
        codecs = _train_codecs(smoke_corpus, tmp_path_factory.mktemp("codecs"))
    over = {"codecs.audio": str(codecs["audio"]), "codecs.emg": str(codecs["emg"])}
    run_dir = tmp_path_factory.mktemp("te2")
    R.train(load_run_config("05_transformer/te2", "smoke", overrides=over), run_dir,
            smoke_corpus, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d, rng = tmp_path_factory.mktemp("inputs"), np.random.default_rng(0)

    def wav(name, x, sr):
        sf.write(d / name, x.astype(np.float32), sr, subtype="FLOAT")  # keeps NaN and Inf
        return d / name

    emg = 0.1 * rng.standard_normal((round(1.5 * EMG_SR), 6)) + 0.5  # a sensor offset too
    nan = emg.copy()
    nan[100, 3] = np.nan
    prompt = 0.1 * rng.standard_normal(PROMPT_SR // 4)
    inf = prompt.copy()
    inf[7] = np.inf
    return {"emg": wav("take.emg.wav", emg, EMG_SR),
            "emg5": wav("five.emg.wav", emg[:, :5], EMG_SR),
            "slow": wav("slow.emg.wav", emg, 800),
            "nan": wav("nan.emg.wav", nan, EMG_SR),
            "prompt": wav("prompt.wav", prompt, PROMPT_SR),
            "stereo": wav("stereo.wav", np.stack([prompt, prompt], 1), PROMPT_SR),
            "inf": wav("inf.wav", inf, PROMPT_SR),
            "short": wav("short.wav", prompt[:200], PROMPT_SR),  # 4.5 ms: under one frame
            "dir": d}


def translate(capsys, te2, smoke_corpus, out, emg, prompt, *extra, run=None):
    code = main(["translate", "--emg", str(emg), "--prompt", str(prompt), "--out", str(out),
                 "--run", str(run or te2), "--scale", "smoke", "--data-root", str(smoke_corpus),
                 *extra])
    return code, capsys.readouterr()


def test_a_good_run_writes_a_wav_as_long_as_the_emg(capsys, te2, smoke_corpus, files, tmp_path):
    import json

    out = tmp_path / "viola.wav"
    code, io = translate(capsys, te2, smoke_corpus, out, files["emg"], files["stereo"],
                         "--seed", "3", "--temperature", "0.8", "--guidance", "2")
    assert code == 0, io.err
    y, sr = sf.read(out, dtype="float32")
    assert sr == 22050 and y.shape == (round(1.5 * 22050),)  # 1.5 s of EMG -> 1.5 s of audio
    assert np.isfinite(y).all() and np.abs(y).max() > 0
    summary = json.loads(io.out)
    assert summary["frames"] == 130 and "the corpus" in summary["emg_scale"]  # ceil(129.2)
    again = tmp_path / "again.wav"
    assert translate(capsys, te2, smoke_corpus, again, files["emg"], files["stereo"],
                     "--seed", "3", "--temperature", "0.8", "--guidance", "2")[0] == 0
    assert np.array_equal(sf.read(again, dtype="float32")[0], y)  # the seed fixes every sample
    short = tmp_path / "short.wav"
    assert translate(capsys, te2, smoke_corpus, short, files["emg"], files["prompt"],
                     "--seconds", "0.5", "--seed", "4")[0] == 0
    assert sf.info(short).frames == round(0.5 * 22050)
    assert not np.array_equal(sf.read(short, dtype="float32")[0], y[:round(0.5 * 22050)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.wav", "short.wav", "viola.wav"]


@pytest.mark.parametrize("emg,prompt,needle", [
    ("emg5", "prompt", "five.emg.wav: 5 channel(s); the EMG codec takes 6"),
    ("slow", "prompt", "slow.emg.wav: 800 Hz is below the 1000 Hz minimum for EMG"),
    ("nan", "prompt", "nan.emg.wav: NaN or Inf in the EMG (channel 3, sample 100"),
    ("emg", "inf", "inf.wav: NaN or Inf in the prompt (channel 0, sample 7"),
    ("emg", "short", "short.wav: the prompt lasts 4.5 ms; the minimum is 11.6 ms (256 samples"),
    ("missing", "prompt", "missing.wav: no such EMG file"),
])
def test_bad_inputs_one_line_exit_2_no_file(capsys, te2, smoke_corpus, files, tmp_path, emg,
                                            prompt, needle):
    out = tmp_path / "out.wav"
    emg_path = files.get(emg, files["dir"] / "missing.wav")
    code, io = translate(capsys, te2, smoke_corpus, out, emg_path, files[prompt])
    assert code == 2
    lines = io.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], io.err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_checkpoints_one_line_exit_2_no_file(capsys, te2, smoke_corpus, files, tmp_path):
    import shutil

    from mlmlmlm.checkpoint import load_checkpoint, save_atomic

    out, empty = tmp_path / "out" / "viola.wav", tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    shutil.copytree(te2, broken)
    data = (broken / "checkpoint.pt").read_bytes()
    (broken / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # truncated
    ckpt = load_checkpoint(te2 / "checkpoint.pt")
    codec_dir = Path(ckpt["task"]["codecs"]["audio"]["run_dir"])
    other = tmp_path / "other"  # trained, it says, on another audio codec checkpoint
    other.mkdir()
    ckpt["task"]["codecs"]["audio"]["sha256"] = "0" * 64
    save_atomic(ckpt, other / "checkpoint.pt")
    code, io = translate(capsys, te2, smoke_corpus, out, files["emg"], files["prompt"],
                         "--data-root", str(empty))  # the last --data-root wins
    assert code == 2 and f"{empty}: --data-root gives no EMG scale" in io.err
    assert len(io.err.strip().splitlines()) == 1 and not out.parent.exists()
    for run, needle in ((empty, f"{empty / 'checkpoint.pt'}: no checkpoint"),
                        (broken, f"{broken / 'checkpoint.pt'}: not a readable checkpoint"),
                        (codec_dir, "a codec checkpoint, not a translation run"),
                        (other, f"{other / 'checkpoint.pt'}: trained on the audio codec")):
        code, io = translate(capsys, te2, smoke_corpus, out, files["emg"], files["prompt"],
                             run=run)
        lines = io.err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0], io.err
        assert not out.parent.exists()


def test_a_failure_mid_run_leaves_no_file(capsys, te2, smoke_corpus, files, tmp_path,
                                          monkeypatch):
    from mlmlmlm.stream import Translator

    calls = []

    def failing(self, emg):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return np.zeros(0, np.float32)

    monkeypatch.setattr(Translator, "push_emg", failing)
    out = tmp_path / "out.wav"
    code, _ = translate(capsys, te2, smoke_corpus, out, files["emg"], files["prompt"])
    assert code == 130 and len(calls) == 3  # interrupted in the third chunk
    assert list(tmp_path.iterdir()) == []


def test_from_run_prepares_raw_emg_as_the_training_data(te2, smoke_corpus, tmp_path):
    from mlmlmlm.data.dataset import emg_scale
    from mlmlmlm.data.io import find_recordings
    from mlmlmlm.recipes.transformer import load_pair
    from mlmlmlm.stream import StreamError, Translator
    from mlmlmlm.translate import generation_kwargs

    tr = Translator.from_run(te2, data_root=smoke_corpus, guidance=2.0)
    _, cfg, pair = load_pair(te2)
    kw = generation_kwargs(cfg, pair.frame_rate)
    assert tr.guidance == 2.0 and tr.temperature == kw["temperature"] == cfg.generate.temperature
    assert tr.max_cache_frames == round(cfg.generate.max_cache_s * tr.frame_rate)
    edc = pair.emg_cfg.data
    import dataclasses

    scale = emg_scale(dataclasses.replace(edc, root=str(smoke_corpus)), find_recordings(smoke_corpus))
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((6, 3000)) + 2.0).astype(np.float32)
    chunked = np.concatenate([tr.emg_prep(x[:, i:i + 100]) for i in range(0, 3000, 100)], axis=1)
    offline = filter_emg(x, tr.emg_sr, highpass_hz=edc.highpass_hz, mains_hz=edc.mains_hz)
    assert np.abs(chunked - offline / scale[:, None]).max() < 1e-4
    with pytest.raises(StreamError, match="no corpus at"):
        Translator.from_run(te2, data_root=tmp_path / "nowhere")
    # no corpus named: the scale the checkpoint recorded at training time, the corpus's
    from mlmlmlm.translate import run_emg_scale

    saved, source = run_emg_scale(pair)
    assert "checkpoint" in source and np.allclose(saved, scale, rtol=1e-6)
    assert np.allclose(Translator.from_run(te2).emg_prep.scale[:, 0], scale, rtol=1e-6)
    tr.start(np.zeros(512, np.float32))
    with torch.inference_mode():
        assert tr.push_emg(x[:, :32 * 5]).size == 5 * tr.audio_hop  # raw EMG in, audio out


def test_emg_at_any_rate_is_prepared_for_the_codec(tmp_path):
    from mlmlmlm.data.dataset import DataConfig
    from mlmlmlm.translate import TranslateError, prepare_emg

    edc = DataConfig(modality="emg", emg_sr=2756.25, segment=512)
    rng = np.random.default_rng(0)
    for sr in (1000.0, 22050.0):
        n = round(4 * sr)
        x = (0.2 * rng.standard_normal((6, n)) + 3.0 * np.arange(1, 7)[:, None]).astype(np.float32)
        y = prepare_emg(x, sr, edc, None, tmp_path / "x.wav", 6, 2756.25)  # the file's own scale
        assert y.shape == (6, int(np.ceil(n * 2756.25 / sr)))
        assert np.abs(y[:, y.shape[1] // 2:].mean(1)).max() < 0.05  # the offsets are filtered out
        assert np.allclose(np.percentile(np.abs(y), 99.9, axis=1), 1.0, atol=1e-3)
        scaled = prepare_emg(x, sr, edc, np.full(6, 2.0), tmp_path / "x.wav", 6, 2756.25)
        assert np.allclose(scaled * 2.0, prepare_emg(x, sr, edc, np.ones(6), tmp_path / "x.wav",
                                                     6, 2756.25), atol=1e-6)
    with pytest.raises(TranslateError, match="999 Hz is below"):
        prepare_emg(x, 999.0, edc, None, tmp_path / "x.wav", 6, 2756.25)


def test_generation_settings_come_from_the_experiment_file_as_it_is_now():
    from dataclasses import replace

    from mlmlmlm.config import load_run_config
    from mlmlmlm.translate import current_generate

    cfg = load_run_config("05_transformer/te2", "smoke")
    old = replace(cfg, sections={**cfg.sections, "generate": replace(cfg.generate, top_p=None)})
    assert old.generate.top_p is None and cfg.generate.top_p == 0.9
    assert current_generate(old).generate == cfg.generate  # what the file says now
    assert current_generate(old).model == old.model  # nothing else changes
    gone = replace(old, run="05_transformer/no_such_run")
    assert current_generate(gone) is gone  # the checkpoint's record
