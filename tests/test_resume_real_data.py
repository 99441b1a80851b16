"""Exact resume on the real ``WindowDataset`` (random crops of the default corpus), and a run's
time budget counted across resumes."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from torch import nn

from mlmlmlm import checkpoint as C
from mlmlmlm.data.dataset import DataConfig, WindowDataset
from mlmlmlm.recipes.codec import CodecTask
from mlmlmlm.train import TrainConfig, train


class Out:
    def __init__(self, recon):
        self.recon = recon


class TinyAE(nn.Module):
    """wav: Tensor[B x 1 x T] -> Out(recon Tensor[B x 1 x T]); dropout draws from the torch RNG."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc, self.dec = nn.Conv1d(1, 4, 9, padding=4), nn.Conv1d(4, 1, 9, padding=4)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return Out(self.dec(self.drop(torch.tanh(self.enc(x)))))


class L1:
    has_discriminator = False

    def generator(self, x, out, step):
        loss = (out.recon - x).abs().mean()
        return {"mrstft": loss, "train": loss}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def to(self, device):
        return self

    def train(self, mode=True):
        return self


class Task(CodecTask):
    def modules(self):
        return [self.model]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class Crops(WindowDataset):
    """The real dataset; ``stop_at`` sends SIGTERM to this process at that item read, and
    ``starts`` records every crop drawn (which window, where)."""

    stop_at: int | None = None

    def __getitem__(self, i):
        item = super().__getitem__(i)
        self.starts.append((i, item["start_s"]))
        if self.stop_at is not None and len(self.starts) == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return item


def data(root) -> Crops:
    cfg = DataConfig(root=str(root), modality="audio", audio_sr=44100, segment=2048)
    ds = Crops(cfg, "train", train=True)
    ds.starts = []
    return ds


def cfg(**kw) -> TrainConfig:
    base = {"lr": 1e-3, "batch_size": 4, "max_steps": 10, "log_every": 2, "ckpt_every": 100,
            "device": "cpu", "schedule": "onecycle", "warmup_steps": 2, "seed": 3}
    return TrainConfig(**(base | kw))


def weights(run_dir):
    return C.load_checkpoint(run_dir / "checkpoint.pt")["model"]


def test_killed_and_resumed_on_real_crops_equals_uninterrupted(tmp_path, smoke_corpus):
    whole = data(smoke_corpus)
    train(Task(TinyAE(), L1()), whole, cfg(), tmp_path / "a", progress=False)
    cut = data(smoke_corpus)
    cut.stop_at = 4 * 6  # during the batch of the 6th step
    with pytest.raises(SystemExit):
        train(Task(TinyAE(), L1()), cut, cfg(), tmp_path / "b", progress=False)
    assert C.load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 6
    again = data(smoke_corpus)  # a new process would build a new dataset: its sampler is fresh
    result = train(Task(TinyAE(), L1()), again, cfg(), tmp_path / "b", progress=False)
    assert result.resumed_from == 6 and result.steps == 10
    # the resumed run drew exactly the crops the uninterrupted one drew for steps 7..10
    assert again.starts == whole.starts[6 * 4:]
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_crop_state_is_what_makes_resume_exact(smoke_corpus):
    # without the saved sampler state, a fresh dataset repeats the first crops: the property
    # the test above checks would fail
    one, two = data(smoke_corpus), data(smoke_corpus)
    torch.manual_seed(3)
    first = [one[i]["start_s"] for i in range(len(one))]
    state = one.state_dict()
    nxt = [one[i]["start_s"] for i in range(len(one))]
    torch.manual_seed(3)
    fresh = [two[i]["start_s"] for i in range(len(two))]
    assert fresh == first and nxt != first
    two.load_state_dict(state)
    assert [two[i]["start_s"] for i in range(len(two))] == nxt


def test_time_budget_counts_time_before_the_resume(tmp_path, smoke_corpus):
    run = tmp_path / "r"
    const = {"schedule": "constant", "warmup_steps": 0}
    train(Task(TinyAE(), L1()), data(smoke_corpus), cfg(max_steps=3, ckpt_every=1, **const), run,
          progress=False)
    ckpt = C.load_checkpoint(run / "checkpoint.pt")
    ckpt["wall_s"] = 120.0  # as if two minutes had gone into the first three steps
    C.save_atomic(ckpt, run / "checkpoint.pt")
    result = train(Task(TinyAE(), L1()), data(smoke_corpus),
                   cfg(max_steps=1000, max_minutes=1.0, **const), run, progress=False)
    assert result.stopped == "max_minutes" and result.steps == 3  # the budget was spent already
    result = train(Task(TinyAE(), L1()), data(smoke_corpus),
                   cfg(max_steps=5, max_minutes=3.0, **const), run, progress=False)
    assert result.stopped == "max_steps" and result.steps == 5
