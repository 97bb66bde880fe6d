"""Training helpers shared by the tokenizer and prior loops: device, bf16 autocast, DDP, LR warm-up, cadence.

Typical use in a stage (see viper/train/tokenizer.py)::

    ctx = common.setup_distributed()              # torchrun env -> process group; plain run -> single process
    try:
        model = common.wrap_ddp(model.to(ctx.device), ctx)
        for step in range(start, total):
            common.set_lr(opt, common.warmup_lr(step, cfg.lr, cfg.warmup_grad_steps))
            with common.autocast(ctx.device, cfg.bf16):
                loss = ...
            if common.every(step + 1, cfg.eval_every_grad_steps) and ctx.is_main: ...
    finally:
        common.teardown_distributed(ctx)

Batch sampling is made stateless with ``batch_rng(seed, rank, step)``, so a resumed run draws the same
batches as an uninterrupted one without saving sampler state.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from viper import locks, runtime
from viper.checkpoint import rng_state, set_rng_state
from viper.errors import ViperError
from viper.signals import StopSignals


@dataclass(frozen=True)
class DistContext:
    """Where this process runs: rank/world size under torchrun (0/1 otherwise) and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool
    """True when ``setup_distributed`` created the process group (and ``teardown`` must destroy it)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistContext:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) when ``WORLD_SIZE > 1``; else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = runtime.resolve_device(device, "device", local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
        owns = True
    return DistContext(rank, world, local_rank, dev, owns)


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if ``setup_distributed`` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def run_lock(
    data_dir: str | Path, run_dir: str | Path, command: str, ctx: DistContext
) -> contextlib.AbstractContextManager:
    """The run folder's lock (``viper.locks``), taken by rank 0 alone: the ranks of one torchrun job are one writer
    (rank 0 writes the checkpoints), and a refused rank 0 exits with the message, after which torchrun stops the
    other ranks."""
    return locks.folder(data_dir, run_dir, command) if ctx.is_main else contextlib.nullcontext()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def rank_batch(key: str, batch_size: int, ctx: DistContext) -> int:
    """Each rank's share of the global ``batch_size`` (config key ``key``), which the ranks must divide."""
    if batch_size % ctx.world_size:
        raise ViperError(f"{key}={batch_size} must be divisible by {ctx.world_size} ranks")
    return batch_size // ctx.world_size


def load_latest(ckpt, ctx: DistContext, **kwargs):
    """``ckpt.load_latest(**kwargs)`` on every rank, rank 0 first: loading may move folders (settings changed
    back bring a superseded run back; changed ones set the old run aside), which one process must do alone; the
    other ranks then read what it left."""
    loaded = ckpt.load_latest(**kwargs) if ctx.is_main else None
    barrier(ctx)
    return loaded if ctx.is_main else ckpt.load_latest(**kwargs, set_aside=False)


def broadcast_object(value: object, ctx: DistContext) -> object:
    """Rank 0's ``value`` on every rank (pickled); identity in a single process."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel around ``model`` when distributed; ``model`` itself otherwise.

    ``broadcast_buffers=False``: buffers here are bookkeeping (codebook usage windows) that the owning module
    all-reduces itself; GroupNorm has no running statistics to keep in sync.
    """
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers (whose state_dict has clean names)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` when enabled (the state dict stays reachable through ``unwrap``)."""
    return torch.compile(model) if enabled else model


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``bf16``; a no-op elsewhere (CPU runs stay float32)."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def warmup_lr(step: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up from 0 at update 0 to ``base_lr`` at ``warmup_steps``, then constant (optax's
    ``join_schedules([linear_schedule(0, lr, warmup), constant(lr)])`` as in the published code)."""
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, step / warmup_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


STOP_POLL_UPDATES = 10
"""Under DDP, how often (in updates) the ranks agree on a stop: agreeing reads a device value back, which would
make the CPU wait for the GPU at every update."""


def stop_signal(stop: StopSignals, ctx: DistContext, step: int) -> int | None:
    """The stop signal (SIGINT / SIGTERM) any rank received, else None. Under DDP a collective every
    ``STOP_POLL_UPDATES`` updates (every rank calls it after each update ``step``; None in between), so all
    ranks save the same update and stop together even when the signal reached only some of them."""
    signum = stop.signum or 0
    if ctx.distributed:
        if not every(step, STOP_POLL_UPDATES):
            return None
        flag = torch.tensor([signum], dtype=torch.int64, device=ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
    return signum or None


def every(count: int, period: int) -> bool:
    """True when ``count`` (e.g. updates done so far) is a positive multiple of ``period`` (> 0)."""
    return period > 0 and count > 0 and count % period == 0


def batch_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """A fresh generator for (seed, rank, step): batches do not depend on how often the run was resumed."""
    return np.random.default_rng([seed, rank, step])


def seed_torch(seed: int) -> None:
    """Seed torch's CPU and CUDA generators (same seed on every rank, so initial weights agree)."""
    torch.manual_seed(seed)


def decorrelate_ranks(seed: int, ctx: DistContext) -> None:
    """Once the shared initial weights exist, reseed torch on ranks > 0 from ``(seed, rank)``, so ranks draw
    different dropout masks and random picks (a rank's identical masks would repeat rank 0's regularisation
    noise). Rank 0 keeps its stream: a single-process run is unchanged. Random choices that must agree across
    ranks (codebook init and restarts) are broadcast from rank 0 by their owners."""
    if ctx.rank > 0:
        torch.manual_seed(int(np.random.SeedSequence([seed, ctx.rank]).generate_state(1)[0]))


def gather_rng_states(ctx: DistContext) -> list[dict] | None:
    """Every rank's ``rng_state()`` in rank order on rank 0, None on the others; collective, so every rank
    calls it at the same step. A checkpoint saves the list (``rng_ranks``) so each rank resumes its own stream."""
    state = rng_state()
    if not ctx.distributed:
        return [state]
    states: list[dict] | None = [{} for _ in range(ctx.world_size)] if ctx.is_main else None
    dist.gather_object(state, states, dst=0)
    return states


def restore_rng(state: dict, seed: int, ctx: DistContext) -> None:
    """Each rank's own saved RNG state (``rng_ranks``, written by ``gather_rng_states``); a checkpoint from a
    run with another world size, or from before per-rank states were saved, gives every rank rank 0's state,
    then ``decorrelate_ranks``."""
    ranks = state.get("rng_ranks")
    if ranks is not None and len(ranks) == ctx.world_size:
        set_rng_state(ranks[ctx.rank])
    else:
        set_rng_state(state["rng"])
        decorrelate_ranks(seed, ctx)


def all_reduce_mean(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average scalar metrics over ranks (identity in a single process)."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    t /= ctx.world_size
    return dict(zip(keys, t.tolist(), strict=True))


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients into ``module``'s parameters (the discriminator in a generator step)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)
