"""The one training loop of every phase: audio, EMG+audio and EMG codecs, and the Transformer.

Introduced in notebook 02_audio_codec. What differs between phases is a :class:`TrainConfig` and a
:class:`Task` (how a batch becomes losses); the loop, checkpoints, resume, EMA, logging and data
parallelism are shared. Several GPUs: ``torchrun --nproc_per_node=N -m mlmlmlm.cli train
<phase>/<run>`` (``batch_size`` is then per GPU; the global batch is ``N * batch_size``).
"""

from __future__ import annotations

import copy
import json
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from mlmlmlm import checkpoint as C
from mlmlmlm import distributed as D
from mlmlmlm.checkpoint import load_for_eval
from mlmlmlm.optim import EMA, SCHEDULES
from mlmlmlm.optim import make_optimizer as _optimizer
from mlmlmlm.optim import make_scheduler as _scheduler

__all__ = ["EMA", "Task", "TrainConfig", "TrainResult", "load_for_eval", "train"]


@dataclass
class TrainConfig:
    """Optimisation settings shared by every phase (see the notebooks' ``parameters`` cells)."""

    optimizer: str = "adamw"  # "adam" | "adamw"
    lr: float = 1.5e-4
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" | "onecycle" | "exponential" | "cosine"
    warmup_steps: int = 0  # linear warm-up; for "onecycle" it sets pct_start
    gamma: float = 0.99999  # "exponential": lr factor per step after warm-up
    disc_lr: float | None = None  # discriminator lr; None = lr
    batch_size: int = 4  # per process; global batch = batch_size * world size
    max_steps: int = 1000
    grad_clip: float | None = 1.0  # max gradient norm, generator and discriminator each
    ema_decay: float | None = None  # e.g. 0.999; None = no weight EMA
    ckpt_every: int = 200
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"  # CUDA when present, else CPU
    max_minutes: float | None = None  # wall-time budget of the whole run, across resumes
    find_unused_parameters: bool = False  # DDP only: for models with parameters a step skips
    tensorboard: bool = True  # also log every row to TensorBoard event files in the run dir

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("batch_size", "ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``wall_s`` and ``samples_per_s`` cover this call only; ``metrics`` is the mean of the last
    log window (or the checkpoint's when nothing was left to train). ``stopped`` is
    ``"max_steps"``, ``"max_minutes"`` or the signal name.
    """

    steps: int
    wall_s: float
    samples_per_s: float
    metrics: dict[str, float]
    checkpoint: Path | None
    resumed_from: int | None
    stopped: str = "max_steps"
    model: nn.Module | None = field(default=None, repr=False)
    ema_state: dict[str, Tensor] | None = field(default=None, repr=False)

    @property
    def ema_model(self) -> nn.Module | None:
        """A copy of ``model`` holding the EMA weights, in eval mode (None without EMA)."""
        if self.ema_state is None or self.model is None:
            return None
        ema = copy.deepcopy(self.model)
        ema.load_state_dict(self.ema_state)
        return ema.eval()


class Task:
    """How one phase turns a batch into losses. Subclass it, or pass any object with these names.

    ``model`` is the trained generator (what EMA and checkpoints track). Under DDP the loop
    swaps ``task.model`` for its DDP wrapper while training, so ``step`` must run the forward
    pass as ``self.model(...)`` (gradients are synchronised in that call).
    """

    model: nn.Module

    def step(self, batch: Any, step: int) -> tuple[dict[str, Tensor], Any]:
        """Losses (``"train"`` is the one minimised) and whatever ``disc_step`` needs."""
        raise NotImplementedError

    def disc_step(self, batch: Any, aux: Any, step: int) -> dict[str, Tensor] | None:
        """Adversary losses including ``"disc"``, or None to skip the update this step."""
        return None

    def disc_parameters(self) -> list[nn.Parameter]:
        """Parameters of the adversary, optimised separately ([] when there is none)."""
        return []

    def modules(self) -> list[nn.Module]:
        """Every module the task uses: the loop moves them to the device and to train mode."""
        return [self.model]

    def state_dict(self) -> dict[str, Any]:
        """What, besides ``model``, a checkpoint must hold (e.g. the discriminator)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def train(
    task: Task,
    train_data: Dataset,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    extra: Any = None,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train ``task`` on ``train_data`` into ``run_dir``, resuming from its checkpoint if any.

    Parameters
    ----------
    task
        A :class:`Task` (e.g. :class:`mlmlmlm.recipes.codec.CodecTask`).
    train_data
        Map-style dataset; items are collated by the default collate function.
    cfg
        Optimisation settings.
    run_dir
        Receives ``checkpoint.pt`` (atomic, every ``ckpt_every`` steps and on any stop) and
        ``metrics.jsonl`` (one JSON object per log step).
    extra
        The full resolved run config (plain data or dataclasses), stored in the checkpoint so
        the model can be rebuilt from the file alone.
    resume
        Continue from ``run_dir/checkpoint.pt`` when it exists; False deletes it and starts over.
    progress
        Show a tqdm bar (rank 0 only).

    Returns
    -------
    TrainResult

    Notes
    -----
    Ctrl-C / SIGTERM finish the current step, write the checkpoint, then raise
    KeyboardInterrupt / ``SystemExit(128 + signum)``. Other errors write no checkpoint (the
    state may be bad). A resumed run replays the batches and random draws of an uninterrupted
    one exactly when data loading draws randomness in the main process (``num_workers=0``).
    """
    ctx = D.setup(cfg.device)
    try:
        return _train(task, train_data, cfg, Path(run_dir), ctx, extra, resume, progress)
    finally:
        D.teardown(ctx)


def _train(task, data, cfg, run_dir, ctx, extra, resume, progress) -> TrainResult:
    ckpt_path, metrics_path = run_dir / "checkpoint.pt", run_dir / "metrics.jsonl"
    C.seed_everything(cfg.seed + ctx.rank)
    model = task.model
    if ctx.owns_group and any(
        type(m).__module__.startswith("vector_quantize") for m in model.modules()
    ):
        # ResidualVQ decides at construction whether to all-reduce its codebook statistics.
        warnings.warn(
            "the model was built before the process group existed, so its codebooks update from "
            "rank 0's data only: call mlmlmlm.distributed.setup() before building it",
            stacklevel=3,
        )
    for m in task.modules():
        m.to(ctx.device).train()
    disc_params = [p for p in task.disc_parameters() if p.requires_grad]
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], cfg, cfg.lr)
    sched = _scheduler(opt, cfg, cfg.lr)
    dopt = _optimizer(disc_params, cfg, cfg.disc_lr or cfg.lr) if disc_params else None
    dsched = _scheduler(dopt, cfg, cfg.disc_lr or cfg.lr) if dopt else None
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    optims = {
        "optimizer": opt,
        "scheduler": sched,
        "disc_optimizer": dopt,
        "disc_scheduler": dsched,
    }

    step, resumed_from, wall_before, metrics = 0, None, 0.0, {}
    if resume and ckpt_path.exists():
        ckpt = C.load_checkpoint(ckpt_path, map_location="cpu")
        C.check_resumable(ckpt_path, ckpt, extra)
        C.restore(ckpt, ckpt_path, task, optims, ema, cfg, ctx.rank, ctx.world_size)
        step = resumed_from = ckpt["step"]
        wall_before, metrics = ckpt["wall_s"], ckpt["metrics"]
        _restore_data(data, ckpt, ctx)
        if ctx.is_main:
            C.truncate_metrics(metrics_path, step)
    elif ctx.is_main:  # a fresh start: nothing of an earlier run may be resumed or appended to
        ckpt_path.unlink(missing_ok=True)
        metrics_path.unlink(missing_ok=True)
    if ctx.is_main and run_dir.is_dir():  # temporaries of writes cut short by a kill
        for tmp in run_dir.glob(f".{ckpt_path.name}.tmp-*"):
            tmp.unlink(missing_ok=True)

    batches = D.batch_stream(data, cfg.batch_size, cfg.seed, step, ctx, cfg.num_workers)
    nb = D.ShardedBatchSampler.batches_per_epoch(len(data), cfg.batch_size, ctx.world_size)
    if ctx.distributed:
        ids = [ctx.device] if ctx.device.type == "cuda" else None
        task.model = DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters
        )
    global_batch = cfg.batch_size * ctx.world_size
    t0 = time.perf_counter()
    start, saved, stopped = step, resumed_from, "max_steps"
    window: dict[str, list] = {}  # loss name -> [sum of detached values, count]
    win_t0, win_n = t0, 0

    # `tensorboard --logdir runs` reads these; metrics.jsonl stays the record
    tb = _tensorboard(run_dir) if cfg.tensorboard and ctx.is_main else None

    def log() -> None:
        nonlocal metrics, window, win_t0, win_n
        metrics = D.all_mean({k: (s / n).item() for k, (s, n) in window.items()}, ctx)
        now = time.perf_counter()
        if ctx.is_main:
            row = {"step": step, "epoch": round(step / nb, 4), "lr": sched.get_last_lr()[0]}
            if dsched is not None:
                row["disc_lr"] = dsched.get_last_lr()[0]
            row |= metrics
            row["samples_per_s"] = win_n * global_batch / max(now - win_t0, 1e-9)
            row["wall_s"] = wall_before + now - t0
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if tb is not None:
                for key, value in row.items():
                    if key != "step":
                        tb.add_scalar(f"{'train' if key in metrics else 'run'}/{key}", value, step)
                tb.flush()
            bar.set_postfix(train=f"{metrics.get('train', float('nan')):.4g}", refresh=False)
        window, win_t0, win_n = {}, now, 0

    def save() -> None:
        nonlocal saved
        rngs, crops = [C.rng_state()], [_data_state(data)]
        if ctx.distributed:  # every rank's generators, so that each resumes its own stream
            rngs, crops = [None] * ctx.world_size, [None] * ctx.world_size
            torch.distributed.all_gather_object(rngs, C.rng_state())
            torch.distributed.all_gather_object(crops, _data_state(data))
        saved = step
        if not ctx.is_main:
            return
        ckpt = {"format": C.FORMAT, "step": step, "epoch": step // nb, "batch_in_epoch": step % nb}
        ckpt |= {"model": model.state_dict(), "ema": ema.state if ema else None}
        ckpt |= {k: o.state_dict() if o is not None else None for k, o in optims.items()}
        ckpt |= {"task": task.state_dict(), "rng": rngs, "data": crops,
                 "world_size": ctx.world_size}
        ckpt |= {"wall_s": wall_before + time.perf_counter() - t0, "metrics": metrics}
        ckpt |= {"train_config": asdict(cfg), "config": C.to_plain(extra)}
        C.save_atomic(ckpt | {"versions": C.package_versions()}, ckpt_path)

    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        disable=not (progress and ctx.is_main),
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
    )
    stop = D.StopRequests()
    # the budget is the whole run's: a resumed run counts the time spent before the stop
    budget = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
    try:
        with stop:
            while step < cfg.max_steps:
                late = budget is not None and wall_before + time.perf_counter() - t0 > budget
                if D.any_rank(stop.signum is not None or late, ctx):  # all ranks stop together
                    stopped = "max_minutes" if late else "signal"
                    stopped = signal.Signals(stop.signum).name if stop.signum else stopped
                    break
                batch = D.to_device(next(batches), ctx.device)
                losses = _step(task, batch, step, cfg, optims, disc_params, ctx)
                if ema is not None:
                    ema.update(model)
                step, win_n = step + 1, win_n + 1
                for k, v in losses.items():
                    acc = window.setdefault(k, [0.0, 0])
                    acc[0], acc[1] = acc[0] + v, acc[1] + 1
                bar.update()
                if step % cfg.log_every == 0:
                    log()
                if step % cfg.ckpt_every == 0:
                    save()
            if win_n:
                log()
            if saved != step:
                save()
    finally:
        task.model = model
        for p in disc_params:
            p.requires_grad_(True)
        batches.close()
        bar.close()
        if tb is not None:
            tb.close()
    if stop.signum == signal.SIGINT:
        raise KeyboardInterrupt(f"training stopped at step {step}; checkpoint {ckpt_path}")
    if stop.signum is not None:
        raise SystemExit(128 + stop.signum)
    wall = time.perf_counter() - t0
    return TrainResult(
        steps=step,
        wall_s=wall,
        samples_per_s=(step - start) * global_batch / max(wall, 1e-9),
        metrics=metrics,
        checkpoint=ckpt_path if ckpt_path.exists() else None,
        resumed_from=resumed_from,
        stopped=stopped,
        model=model,
        ema_state=ema.state if ema else None,
    )


def _tensorboard(run_dir: Path):
    """A TensorBoard writer for ``run_dir`` (event files beside metrics.jsonl)."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(run_dir))


def _data_state(data: Dataset) -> Any:
    """The dataset's own random state (e.g. the crop sampler of ``WindowDataset``), or None."""
    return data.state_dict() if callable(getattr(data, "state_dict", None)) else None


def _restore_data(data: Dataset, ckpt: dict, ctx) -> None:
    states = ckpt.get("data") or []
    if len(states) == ctx.world_size and states[ctx.rank] is not None and \
            callable(getattr(data, "load_state_dict", None)):
        data.load_state_dict(states[ctx.rank])


def _step(task, batch, step, cfg, optims, disc_params, ctx) -> dict[str, Tensor]:
    """One generator update, then (GAN ordering) one discriminator update; detached losses."""
    opt, sched, dopt, dsched = optims.values()
    for p in disc_params:  # the generator's loss goes through the discriminator, frozen here
        p.requires_grad_(False)
    losses, aux = task.step(batch, step)
    loss = losses["train"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"train loss is {loss.item()} at step {step}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    logged = {k: torch.as_tensor(v).detach().float().mean() for k, v in losses.items()}
    if cfg.grad_clip is not None:
        params = [p for g in opt.param_groups for p in g["params"]]
        logged["grad_norm"] = nn.utils.clip_grad_norm_(params, cfg.grad_clip).detach()
    opt.step()
    sched.step()
    if dopt is None:
        return logged
    for p in disc_params:
        p.requires_grad_(True)
    dlosses = task.disc_step(batch, aux, step)
    if dlosses is not None:
        dopt.zero_grad(set_to_none=True)
        dlosses["disc"].backward()
        D.average_gradients(disc_params, ctx)  # DDP wraps only the generator
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(disc_params, cfg.grad_clip)
        dopt.step()
        logged |= {k: torch.as_tensor(v).detach().float().mean() for k, v in dlosses.items()}
    with warnings.catch_warnings():  # the lr follows the step even when the update was skipped
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        dsched.step()
    return logged
