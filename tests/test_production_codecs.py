"""The two production codecs (02_audio_codec/audio_codec, 04_emg_codec/emg_codec): built from
their own configs, their frame grids align one to one, each streams exactly what it computes
offline over chunks of 1 frame, 3 frames and 1 s, and a trained checkpoint reloads from the file
alone with identical codes."""

import pytest
import torch

from mlmlmlm.config import load_run_config
from mlmlmlm.nn.cached import run_chunked
from mlmlmlm.recipes import codec as recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRODUCTION = {"audio": "02_audio_codec/audio_codec", "emg": "04_emg_codec/emg_codec"}


@pytest.mark.parametrize("scale", ["cpu", "paper", "smoke"])
def test_the_production_pair_aligns_frame_for_frame(scale):
    audio, emg = (load_run_config(PRODUCTION[k], scale) for k in ("audio", "emg"))
    a, e = audio.model, emg.model  # the CodecConfig each run builds
    assert a.causal and e.causal
    assert a.frame_rate == e.frame_rate  # one EMG token per audio token
    if scale == "cpu":
        assert (a.sample_rate, a.hop, e.sample_rate, e.hop) == (22050, 256, 2756.25, 32)
        assert (a.n_q, a.codebook_size) == (4, 1024)


@pytest.fixture(scope="module", params=["audio", "emg"])
def production(request):
    """A production codec at the cpu scale (random weights, k-means init off), 2 s of input and
    its offline codes and decoding."""
    torch.manual_seed(0)
    cfg = load_run_config(PRODUCTION[request.param], "cpu")
    cfg.model.kmeans_init = False
    model = recipe.build_codec(cfg).eval()
    hop, sr = model.cfg.hop, model.cfg.sample_rate
    frames = int(2 * sr) // hop
    x = 0.1 * torch.randn(1, model.cfg.in_channels, frames * hop)
    with torch.inference_mode():
        codes = model.encode(x).codes
        wav = model.decode_codes(codes)
    return model, x, codes, wav


@pytest.mark.parametrize("chunk", ["1 frame", "3 frames", "1 s"])
def test_a_production_codec_streams_what_it_computes_offline(production, chunk):
    model, x, codes, wav = production
    hop = model.cfg.hop
    samples = {"1 frame": hop, "3 frames": 3 * hop, "1 s": int(model.cfg.sample_rate)}[chunk]
    with torch.inference_mode():
        model.reset_stream()
        codes_s = run_chunked(lambda c: model.encode_stream(c).codes, x, samples)
        wav_s = run_chunked(model.decode_codes_stream, codes_s, max(1, samples // hop))
    assert len(codes.unique()) > 3
    assert torch.equal(codes_s, codes)
    assert wav_s.shape == wav.shape
    assert (wav_s - wav).abs().max().item() <= 1e-4  # after the reported delay: none
    assert model.latency_samples == hop


@pytest.mark.parametrize("which", ["audio", "emg"])
def test_a_production_checkpoint_reloads_from_the_file_alone(which, smoke_corpus, tmp_path):
    cfg = load_run_config(PRODUCTION[which], "smoke")
    result = recipe.train_codec(cfg, tmp_path, smoke_corpus, progress=False)
    assert result.steps == cfg.train.max_steps
    trained = result.model.eval()
    model, saved_cfg = recipe.load_codec(tmp_path, use_ema=False)
    assert saved_cfg.model.causal
    x = recipe.eval_windows(cfg, smoke_corpus)[:2]
    with torch.no_grad():
        assert torch.equal(model.encode(x).codes, trained.encode(x).codes)
