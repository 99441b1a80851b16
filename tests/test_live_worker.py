"""The translator in a process of its own answers as it does in this one."""

import numpy as np
import pytest

from mlmlmlm.live.latency import EnvelopeTranslator, compute_per_frame, random_translator
from mlmlmlm.live.worker import TranslatorProcess, WorkerError


def test_a_real_translator_in_its_own_process_gives_the_same_audio(one_torch_thread):
    # one torch thread here as in the child: with two, a matmul's sums may round differently
    rng = np.random.default_rng(0)
    here = random_translator(scale="smoke")
    emg = (0.3 * rng.standard_normal((6, 40 * here.emg_hop))).astype(np.float32)
    prompt = (0.1 * rng.standard_normal(4 * here.audio_hop)).astype(np.float32)
    with TranslatorProcess(random_translator, scale="smoke") as there:
        assert (there.audio_sr, there.emg_hop, there.latency_ms) == (
            here.audio_sr, here.emg_hop, here.latency_ms)
        outs = []
        for tr in (here, there):
            tr.reset()
            tr.start(prompt)
            outs.append(np.concatenate([tr.push_emg(emg[:, i:i + 7 * here.emg_hop])
                                        for i in range(0, emg.shape[1], 7 * here.emg_hop)]))
        assert outs[0].size == 40 * here.audio_hop and np.array_equal(outs[0], outs[1])
        assert there.calls >= 7 and there.compute_s > 0
        there.set("guidance", 1.0)  # an attribute set in the child
        with pytest.raises(type(_stream_error()), match="must be \\[6, n\\]"):
            there.push_emg(np.zeros((5, 32), np.float32))  # raised as itself, the child lives
        assert there.push_emg(emg[:, :here.emg_hop]).size == here.audio_hop
        # a measurement run where the translator lives, one call over the pipe
        calls = there.calls
        lat = there.apply(compute_per_frame, 0.2)
        assert lat["chunk_emg_samples"] == here.emg_hop and lat["rtf"] > 0
        assert lat["frame_ms"]["n"] == round(0.2 * here.frame_rate) and there.calls == calls + 1
        with pytest.raises(TypeError):  # the function's own error comes back as itself
            there.apply(compute_per_frame, 0.2, 1, "extra")
    with pytest.raises(WorkerError, match="closed"):
        there.push_emg(emg)


def _stream_error():
    from mlmlmlm.stream import StreamError

    return StreamError("")


def test_build_errors_and_a_dead_child_are_one_line_errors():
    from mlmlmlm.live.app import LiveError, load_translator

    with pytest.raises(LiveError, match="no trained run at"):  # raised in the child, as itself
        TranslatorProcess(load_translator, "runs/none/05_transformer/missing", "cpu", False)
    tr = TranslatorProcess(EnvelopeTranslator, audio_hop=128, emg_hop=16)
    try:
        assert tr.audio_hop == 128 and tr.latency_ms == pytest.approx(1000 * 128 / 22050)
        with pytest.raises(RuntimeError, match="push_emg before start"):
            tr.push_emg(np.zeros((6, 16), np.float32))
        tr._proc.kill()
        tr._proc.wait(10)
        with pytest.raises(WorkerError, match="ended"):
            tr.start(np.ones(256, np.float32))
    finally:
        tr.close()
