"""The training loop: resume after a stop or a kill, DDP equivalence, EMA, checkpoint files.

Uses a tiny stand-in codec (one-layer conv autoencoder + tiny conv discriminator) so these tests
need neither the real codec nor more than a few seconds each. Run as a script, this file is the
child process of the kill and torchrun tests: ``python tests/test_train.py run|ddp RUN_DIR ...``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from mlmlmlm import checkpoint as C
from mlmlmlm.distributed import ShardedBatchSampler
from mlmlmlm.recipes.codec import CodecTask
from mlmlmlm.train import TrainConfig, _scheduler, load_for_eval, train

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
CH, T = 2, 64


@dataclass
class Out:
    recon: torch.Tensor


class TinyAE(nn.Module):
    """x: Tensor[B x CH x T] -> Out(recon). Dropout makes the run draw from the torch RNG."""

    def __init__(self, dropout: float = 0.1):
        super().__init__()
        self.enc = nn.Conv1d(CH, 4, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.dec = nn.Conv1d(4, CH, 3, padding=1)

    def forward(self, x):
        return Out(self.dec(self.drop(torch.tanh(self.enc(x)))))


class TinyLoss(nn.Module):
    """CodecLoss stand-in: L1 + hinge adversarial term from a one-conv discriminator."""

    def __init__(self):
        super().__init__()
        self.disc = nn.Conv1d(CH, 1, 5, stride=2)
        self.has_discriminator = True

    def discriminator_parameters(self):
        return self.disc.parameters()

    def generator(self, x, out, step):
        l1 = (out.recon - x).abs().mean()
        adv = -self.disc(out.recon).mean()
        return {"l1": l1, "adversarial": adv, "train": l1 + 0.1 * adv}

    def discriminator(self, x, recon):
        d = torch.relu(1 - self.disc(x)).mean() + torch.relu(1 + self.disc(recon.detach())).mean()
        return {"disc": d}


class Windows(Dataset):
    """n fixed random windows ``{"x": Tensor[CH x T]}``; ``hook(i)`` runs on each item read."""

    def __init__(self, n: int = 16, hook=None, sleep: float = 0.0):
        self.x = torch.randn(n, CH, T, generator=torch.Generator().manual_seed(123))
        self.hook, self.sleep = hook, sleep

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.hook is not None:
            self.hook(i)
        time.sleep(self.sleep)
        return {"x": self.x[i]}


def make_task(dropout: float = 0.1) -> CodecTask:
    torch.manual_seed(0)  # same initial weights in every process
    return CodecTask(TinyAE(dropout), TinyLoss())


def config(**kw) -> TrainConfig:
    base = {"lr": 1e-2, "batch_size": 4, "max_steps": 8, "log_every": 2, "ckpt_every": 3}
    base |= {"ema_decay": 0.9, "schedule": "onecycle", "warmup_steps": 2, "device": "cpu"}
    return TrainConfig(**(base | kw))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = C.load_checkpoint(Path(run_dir) / "checkpoint.pt")
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    out |= {f"ema.{k}": v for k, v in ckpt["ema"].items()}
    out |= {f"task.{k}": v for k, v in ckpt["task"]["loss"].items()}
    return out


def assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k, x in a.items():
        ok = torch.equal(x, b[k]) if atol == 0 else torch.allclose(x, b[k], atol=atol, rtol=0)
        assert ok, f"{k} differs: max |diff| {(x - b[k]).abs().max().item():.3g}"


def metric_steps(run_dir: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_single(run_dir: Path, data: Dataset | None = None, **kw):
    """One process, one torch thread (the same in the pytest process and in children)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(
            make_task(),
            data or Windows(),
            config(**kw),
            run_dir,
            progress=False,
            extra={"model": {"channels": 4}, "path": Path("x")},
        )
    finally:
        torch.set_num_threads(threads)


def child(args: list[str]) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# ------------------------------------------------------------------------------------------------


def test_rank_batches_together_are_the_single_process_batch():
    one = list(ShardedBatchSampler(18, 4, seed=3, epoch=1))
    ranks = [
        list(ShardedBatchSampler(18, 2, seed=3, epoch=1, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 4
    for k, batch in enumerate(one):
        assert sorted(batch) == sorted(ranks[0][k] + ranks[1][k])
    assert list(ShardedBatchSampler(18, 4, seed=3, epoch=1, start=2)) == one[2:]
    assert one != list(ShardedBatchSampler(18, 4, seed=3, epoch=2))


def test_schedules_warm_up_and_decay():
    def lrs(**kw):
        cfg = TrainConfig(lr=1.0, max_steps=10, warmup_steps=2, **kw)
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched, out = _scheduler(opt, cfg, cfg.lr), []
        for _ in range(10):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    assert lrs(schedule="constant") == [0.5] + [1.0] * 9
    cos = lrs(schedule="cosine")
    assert (
        cos[1] == 1.0 and cos[-1] < 0.05 and cos == sorted(cos[:2]) + sorted(cos[2:], reverse=True)
    )
    one = lrs(schedule="onecycle")
    assert max(one) == pytest.approx(1.0) and one[0] < 0.1 and one[-1] < 1e-3
    assert lrs(schedule="exponential", gamma=0.5)[4] == 0.125
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")


def test_checkpoint_atomic_save_and_clear_errors(tmp_path):
    path = C.save_atomic({"format": C.FORMAT, "w": torch.arange(3)}, tmp_path / "a" / "ckpt.pt")
    assert torch.equal(C.load_checkpoint(path)["w"], torch.arange(3))
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary left behind
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:100])
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    torch.save({"w": 1}, tmp_path / "other.pt")
    for name in ("trunc.pt", "junk.pt", "other.pt"):
        with pytest.raises(C.CheckpointError) as err:
            C.load_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        C.load_checkpoint(tmp_path / "missing.pt")


def test_train_logs_checkpoints_and_keeps_ema(tmp_path):
    result = run_single(tmp_path, max_steps=6, log_every=2, ckpt_every=4)
    assert (result.steps, result.resumed_from, result.stopped) == (6, None, "max_steps")
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert {
        "epoch",
        "lr",
        "disc_lr",
        "l1",
        "adversarial",
        "train",
        "disc",
        "grad_norm",
        "samples_per_s",
        "wall_s",
    } <= rows[0].keys()
    assert result.metrics["train"] == rows[-1]["train"] and result.samples_per_s > 0
    # the same rows go to TensorBoard (`tensorboard --logdir runs`)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path)).Reload()
    assert [e.step for e in events.Scalars("train/train")] == [2, 4, 6]
    assert [e.value for e in events.Scalars("train/train")] == pytest.approx(
        [r["train"] for r in rows])
    assert "run/samples_per_s" in events.Tags()["scalars"]
    ckpt = C.load_checkpoint(result.checkpoint)
    assert ckpt["step"] == 6 and ckpt["config"] == {"model": {"channels": 4}, "path": "x"}
    assert ckpt["train_config"]["ema_decay"] == 0.9 and "torch" in ckpt["versions"]
    for key in ("optimizer", "scheduler", "disc_optimizer", "disc_scheduler", "rng", "task"):
        assert ckpt[key] is not None
    ema = load_for_eval(tmp_path, TinyAE())
    assert not ema.training
    assert_same(ema.state_dict(), result.ema_model.state_dict())
    assert not torch.equal(ema.enc.weight, result.model.enc.weight)
    # Calling again on a finished run trains nothing and reports the run.
    again = run_single(tmp_path, max_steps=6, log_every=2, ckpt_every=4)
    assert (again.steps, again.resumed_from) == (6, 6) and metric_steps(tmp_path) == [2, 4, 6]
    # resume=False starts over; a spent time budget stops at once, with a checkpoint.
    fresh = train(
        make_task(), Windows(), config(max_steps=2), tmp_path, resume=False, progress=False
    )
    assert (fresh.steps, fresh.resumed_from) == (2, None) and metric_steps(tmp_path) == [2]
    late = run_single(tmp_path / "late", max_minutes=0.0)
    assert (late.steps, late.stopped) == (0, "max_minutes") and late.checkpoint.exists()


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    run_single(tmp_path, max_steps=2, ckpt_every=2)
    assert C.config_changes({"model": {"channels": 4}, "path": "x"},
                            {"model": {"channels": 4}, "path": "x"}) == []
    assert C.config_changes({"model": {"channels": 4}, "train": {"lr": 1}},
                            {"model": {"channels": 8}, "train": {"lr": 2}, "new": 1}) == [
        "model.channels", "new", "train.lr"]
    with pytest.raises(ValueError, match=r"checkpoint\.pt: written with another configuration "
                                         r"\(model\.channels\)"):
        train(make_task(), Windows(), config(max_steps=4), tmp_path, progress=False,
              extra={"model": {"channels": 8}, "path": "x"})
    # a change of training settings only (here how often to checkpoint) still resumes
    same = run_single(tmp_path, max_steps=2, ckpt_every=1)
    assert (same.resumed_from, same.steps) == (2, 2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_by_signal_then_resume_equals_uninterrupted(tmp_path, sig):
    run_single(tmp_path / "a")
    sent = []

    def hook(i):  # raise the signal while the batch of step index 4 (the 5th step) is read
        if len(sent) == 0 and hook.reads == 4 * 4:
            sent.append(sig)
            os.kill(os.getpid(), sig)
        hook.reads += 1

    hook.reads = 0
    expected = KeyboardInterrupt if sig == signal.SIGINT else SystemExit
    with pytest.raises(expected):
        run_single(tmp_path / "b", Windows(hook=hook))
    assert sent and C.load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 5
    result = run_single(tmp_path / "b")
    assert result.resumed_from == 5 and result.steps == 8
    assert_same(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert metric_steps(tmp_path / "b") == [2, 4, 5, 6, 8]  # 5: the partial window at the stop


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    run_single(tmp_path / "a", max_steps=12)
    # Slow child (25 ms per item): it is killed right after its first checkpoint (step 3).
    proc = child([str(HERE), "run", str(tmp_path / "b"), "12", "0.025"])
    ckpt = tmp_path / "b" / "checkpoint.pt"
    deadline = time.time() + 60
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, out
    killed_at = C.load_checkpoint(ckpt)["step"]
    assert 3 <= killed_at < 12
    result = run_single(tmp_path / "b", max_steps=12)
    assert result.resumed_from == killed_at and result.steps == 12
    assert_same(weights(tmp_path / "a"), weights(tmp_path / "b"))
    steps = metric_steps(tmp_path / "b")
    assert steps == sorted(set(steps)) and steps[-1] == 12


def test_ddp_two_processes_equal_one_process_on_the_combined_batch(tmp_path):
    # torchrun, 2 CPU processes (gloo) x batch 2  vs  1 process x batch 4, same seed and data.
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HERE)]
    proc = child([*args, "ddp", str(tmp_path / "ddp")])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(
            make_task(dropout=0.0),
            Windows(),
            ddp_config(batch_size=4),
            tmp_path / "one",
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    assert_same(weights(tmp_path / "one"), weights(tmp_path / "ddp"), atol=1e-6)
    ckpt = C.load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert metric_steps(tmp_path / "ddp") == [1, 2, 3]  # rank 0 alone writes


def ddp_config(batch_size: int) -> TrainConfig:
    return config(batch_size=batch_size, max_steps=3, log_every=1, ckpt_every=100, lr=1e-3)


def test_codec_task_trains_the_real_codec(tmp_path):
    from mlmlmlm import losses
    from mlmlmlm.models import codec

    torch.manual_seed(0)
    cfg = codec.CodecConfig(
        channels=4,
        c_mults=[1, 2],
        strides=[2, 2],
        latent_dim=4,
        bottleneck="rvq",
        n_q=2,
        codebook_size=16,
        kmeans_init=False,
    )
    loss_cfg = losses.LossConfig(
        fft_sizes=[64, 32], discriminator=True, disc_channels=4, disc_fft_sizes=[64]
    )
    task = CodecTask(codec.Codec(cfg), losses.CodecLoss.for_codec(loss_cfg, cfg))
    data = [{"x": torch.randn(1, 256)} for _ in range(4)]
    result = train(
        task,
        data,
        config(batch_size=2, max_steps=2, log_every=1),
        tmp_path,
        progress=False,
        extra={"model": cfg},
    )
    assert result.steps == 2 and {"mrstft", "quantizer", "disc", "train"} <= result.metrics.keys()
    model = load_for_eval(
        tmp_path,
        codec.Codec(codec.CodecConfig(**C.load_checkpoint(result.checkpoint)["config"]["model"])),
    )
    assert model(torch.randn(1, 1, 256)).recon.shape == (1, 1, 256)
    assert_same(model.state_dict(), result.ema_model.state_dict())


if __name__ == "__main__":  # child process of the kill and torchrun tests
    mode, run_dir = sys.argv[1], Path(sys.argv[2])
    if mode == "run":  # python tests/test_train.py run RUN_DIR MAX_STEPS SLEEP
        run_single(run_dir, Windows(sleep=float(sys.argv[4])), max_steps=int(sys.argv[3]))
    elif mode == "ddp":  # under torchrun
        torch.set_num_threads(1)
        train(make_task(dropout=0.0), Windows(), ddp_config(batch_size=2), run_dir, progress=False)
