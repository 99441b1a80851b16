"""Process plumbing of the training loop: process group, stop signals, resumable sharded batches.

Introduced in notebook 02_audio_codec (section "Training on several GPUs"). A run becomes data
parallel only by being launched under torchrun, e.g.
``torchrun --nproc_per_node=4 -m mlmlmlm.cli train 02_audio_codec/a_rvq_vae_1``;
:func:`mlmlmlm.train.train` reads ``RANK``/``WORLD_SIZE`` and does the rest.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler


@dataclass
class DistContext:
    """Where this process sits: rank, world size, device, and whether it opened the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, metrics and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistContext:
    """Pick the device and, under torchrun (``WORLD_SIZE`` > 1), join the process group.

    Parameters
    ----------
    device
        ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        Under torchrun with CUDA each process takes ``cuda:LOCAL_RANK``.

    Returns
    -------
    DistContext
        Call :func:`teardown` with it when training ends.

    Notes
    -----
    :func:`mlmlmlm.train.train` calls this itself, but a launcher should call it *before*
    building the model: ``vector_quantize_pytorch`` decides at construction whether to
    all-reduce codebook statistics across ranks. ``train`` then joins the open group and
    leaves closing it to whoever opened it.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(device=dev)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)


def teardown(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup` opened it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_mean(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average a dict of floats over all ranks (identity in a single process)."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / ctx.world_size).tolist()))


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when ``flag`` is true on any rank (so all ranks stop together)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([float(flag)], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def average_gradients(params: list[torch.nn.Parameter], ctx: DistContext) -> None:
    """All-reduce and average ``.grad`` of parameters that DDP does not wrap (discriminator)."""
    if not ctx.distributed:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= ctx.world_size


class StopRequests:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a stop never tears a step.

    A second Ctrl-C raises KeyboardInterrupt at once (no checkpoint).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequests:  # noqa: PYI034
        if threading.current_thread() is threading.main_thread():  # signal() needs it
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


class ShardedBatchSampler(Sampler[list[int]]):
    """Seeded, shuffled batches of one rank's shard of one epoch, starting at any batch.

    The epoch's order is ``randperm(n)`` from a generator seeded with ``seed + epoch`` (as in
    :class:`torch.utils.data.DistributedSampler`); the tail that does not divide by
    ``world_size`` is dropped, rank ``r`` takes ``perm[r::world_size]`` and cuts it into full
    batches. So the ``k``-th batches of all ranks together are exactly the ``k``-th batch of a
    single process with ``world_size`` times the batch size, and a run resumed at batch ``k``
    sees the batches an uninterrupted run would have seen.

    Parameters
    ----------
    n
        Dataset length.
    batch_size
        Per-rank batch size.
    seed, epoch
        Together they fix the order.
    start
        Index of the first batch to yield (the resume position within the epoch).
    rank, world_size
        This process's shard.
    shuffle
        False keeps dataset order (still sharded and batched the same way).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start, self.rank, self.world_size, self.shuffle = start, rank, world_size, shuffle

    @staticmethod
    def batches_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
        """Full batches per rank per epoch (the same on every rank)."""
        return (n // world_size) // batch_size

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch(self.n, self.batch_size, self.world_size) - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        usable = (self.n // self.world_size) * self.world_size
        shard = order[self.rank : usable : self.world_size].tolist()
        b = self.batch_size
        for k in range(self.start, len(shard) // b):
            yield shard[k * b : (k + 1) * b]


def batch_stream(
    data: Dataset,
    batch_size: int,
    seed: int,
    step: int,
    ctx: DistContext,
    num_workers: int = 0,
) -> Iterator[Any]:
    """Endless batches for this rank from global step ``step`` on, epoch after epoch.

    Batch ``k`` of the stream is the same whether the run started at 0 or resumed at ``step``.
    """
    nb = ShardedBatchSampler.batches_per_epoch(len(data), batch_size, ctx.world_size)
    if nb == 0:
        raise ValueError(
            f"{len(data)} items give no full batch of {batch_size} per process "
            f"x {ctx.world_size} processes"
        )
    epoch, offset = divmod(step, nb)
    while True:
        sampler = ShardedBatchSampler(
            len(data), batch_size, seed, epoch, offset, ctx.rank, ctx.world_size
        )
        # Own generator: creating the iterator must not draw from the global RNG.
        gen = torch.Generator().manual_seed(seed + 1_000_003 * (epoch + 1) + 7_919 * ctx.rank)
        yield from DataLoader(
            data,
            batch_sampler=sampler,
            num_workers=num_workers,
            generator=gen,
            worker_init_fn=_seed_worker,
            pin_memory=ctx.device.type == "cuda",
        )
        epoch, offset = epoch + 1, 0


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker's torch and `random`; numpy gets it from the same seed.
    np.random.seed(torch.initial_seed() % 2**32)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested dict/list/tuple) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
