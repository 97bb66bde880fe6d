"""Stage ``train-videogpt``: train the task-conditioned VideoGPT prior on the token store.

Reads the tokenizer run (codebook, grid, hash) and the suite's token store; trains with AdamW at a constant
learning rate (published), keeps an EMA of the weights (the weights that score rewards), evaluates bits per token
on fixed test-split windows, draws open-loop predictions next to the truth, and checkpoints into
``<prior_dir>/checkpoints`` (resume = re-run the same command). Two more are kept besides the newest ones: the
best by EMA eval NLL (``checkpoints/best``) and the one the released training script would have kept
(``checkpoints/released``: it saves only at checkpoint steps where its raw weights' latest eval loss is the best
so far, keeps one, and the reward model loads that file's EMA weights; ``reward.checkpoint`` picks among them).
Under torchrun each rank draws its own share of the batch and gradients are averaged by DDP; rank 0 evaluates,
draws and writes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from viper import paths
from viper.checkpoint import Checkpointer
from viper.config import Config, PriorConfig
from viper.data.tokens import store_identities
from viper.errors import Stopped
from viper.metrics import Logger, write_json
from viper.models.prior_checkpoint import BEST, CHECKPOINT_FORMAT, MARKS, RELEASED
from viper.models.videogpt import PriorSpec, VideoGPT
from viper.signals import StopSignals
from viper.train import common
from viper.train.adamw import OptaxAdamW
from viper.train.prior_data import TrainWindows, eval_windows, load_splits

LN2 = math.log(2.0)


def spec_for(cfg: PriorConfig, grid: tuple[int, int], codebook: torch.Tensor, num_tasks: int) -> PriorSpec:
    """Model shape from the config and the tokenizer (grid, codebook (K, D)); one LN class per task."""
    return PriorSpec(
        d_model=cfg.d_model,
        layers=cfg.layers,
        heads=cfg.heads,
        mlp_dim=cfg.mlp_dim,
        dropout=cfg.dropout,
        seq_len=cfg.seq_len,
        grid=tuple(grid),
        codebook_size=int(codebook.shape[0]),
        embed_dim=int(codebook.shape[1]),
        num_classes=num_tasks if cfg.class_conditional else 0,
    )


class EMA:
    """EMA of a model's parameters, ``ema <- decay * ema + (1 - decay) * p``; buffers are copied. As released,
    the first update copies the weights (decay 0 at step 0), so the EMA never holds the initialisation."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, first: bool = False) -> None:
        ema = list(self.model.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1.0 if first else 1.0 - self.decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)


class PriorLoss(torch.nn.Module):
    """The training loss as ``forward`` (what DDP wraps, so its gradients are all-reduced)."""

    def __init__(self, prior: VideoGPT) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, tokens: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        return self.prior.loss(tokens, task_ids)


def train_step(
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tokens: torch.Tensor,
    task_ids: torch.Tensor,
    bf16: bool = True,
) -> torch.Tensor:
    """One AdamW update on windows (B, T, h, w) through ``PriorLoss`` (maybe DDP-wrapped); its NLL, nats per
    token, as a detached scalar tensor on the device (reading it here would make the CPU wait for each update)."""
    loss_fn.train()
    with common.autocast(tokens.device, bf16):
        loss = loss_fn(tokens, task_ids)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate(
    model: VideoGPT, tokens: torch.Tensor, task_ids: torch.Tensor, batch_size: int, bf16: bool = True
) -> float:
    """Mean NLL in bits per token over windows (M, T, h, w), evaluated in batches (eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, tokens.shape[0], batch_size):
        part = tokens[i : i + batch_size].to(device)
        with common.autocast(device, bf16):
            total += float(model.loss(part, task_ids[i : i + batch_size].to(device))) * part.numel()
        count += part.numel()
    return total / count / LN2


def save_open_loop(
    model: VideoGPT,
    tokenizer,
    windows: torch.Tensor,
    task_ids: torch.Tensor,
    context_frames: int,
    path: Path,
    seed: int,
) -> Path:
    """PNG: per window, the decoded true frames (row 1) and the prior's open-loop continuation of the first
    ``context_frames`` frames (row 2, context copied); windows (M, T, h, w) long."""
    import imageio.v3 as iio
    from einops import rearrange

    device = next(model.parameters()).device
    steps = windows.shape[1]
    k = max(1, min(context_frames, steps - 1))
    generator = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    sampled = model.sample(windows[:, :k].to(device), task_ids.to(device), steps - k, generator=generator)
    both = torch.stack([windows.to(device), sampled], dim=1)  # (M, 2, T, h, w)
    pixels = tokenizer.decode(rearrange(both, "m r t h w -> (m r t) h w")).cpu()
    # (M*2*T, 64, 64, 3) -> one picture: rows (window, truth|prediction), columns time, 2-px white gaps
    pixels = torch.nn.functional.pad(pixels, (0, 0, 0, 2, 0, 2), value=255)
    grid = rearrange(pixels, "(m r t) y x c -> (m r y) (t x) c", m=windows.shape[0], r=2, t=steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    iio.imwrite(tmp, grid.numpy())
    tmp.replace(path)
    return path


# Config fields that may change between a checkpoint and its resumption: training length and cadences.
RESUMABLE_FIELDS = (
    "train_grad_steps",
    "log_every_grad_steps",
    "eval_every_grad_steps",
    "checkpoint_every_grad_steps",
    "keep_checkpoints",
    "eval_windows_per_task",
    "picture_context_frames",
    "picture_windows_per_task",
    "compile",
)


def fingerprint(
    pc: PriorConfig, tasks: tuple[str, ...], tokenizer_hash: str, world_size: int, data: dict[str, str] | None = None
) -> dict:
    """What a checkpoint must share with this run to be resumed (``Checkpointer`` drops the others): every
    setting that shapes the weights' trajectory, the task map, the tokenizer whose tokens it models and the video
    store groups those tokens encode (``data``: ``TaskGroup.identity`` per task), so replaced videos retrain."""
    fields = {k: v for k, v in dataclasses.asdict(pc).items() if k not in RESUMABLE_FIELDS}
    fp = {"prior": fields, "tasks": list(tasks), "tokenizer_hash": tokenizer_hash, "world_size": world_size}
    if data is not None:
        fp["videos"] = data  # read in stale messages as "videos.<task>: <old> -> <new>"
    return fp


@dataclass
class Progress:
    """The mutable part of a run that checkpoints carry besides the weights."""

    step: int = 0
    best_nll: float = math.inf
    """Lowest EMA eval bits per token at a checkpointed step."""
    best_step: int = -1
    last_eval: float = math.nan
    best_raw_nll: float = math.inf
    """Lowest eval bits per token of the raw (not EMA) weights so far."""
    raw_is_best: bool = False
    """Whether the latest eval of the raw weights was a new best (the released script's ``is_best``)."""
    released_step: int = -1
    """The checkpoint the released script would have kept: the last saved while ``raw_is_best``."""
    eval_windows: int = -1
    """``eval_windows_per_task`` of the evaluations the best values come from (-1: not recorded)."""


def _state(prior, ema, optimizer, spec, tasks, tokenizer_hash, pc, progress, rngs) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "spec": spec.to_dict(),
        "model": prior.state_dict(),
        "ema": ema.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "tasks": list(tasks),
        "tokenizer_hash": tokenizer_hash,
        "seq_len": pc.seq_len,
        "frame_skip": pc.frame_skip,
        "config": dataclasses.asdict(pc),
        "progress": dataclasses.asdict(progress),
        "step": progress.step,
        "rng": rngs[0],
        "rng_ranks": rngs,
    }


def _save(ckpt: Checkpointer, state: dict, progress: Progress) -> None:
    """Save, keeping the best and the released folders besides the newest ones; ``checkpoints/best`` and
    ``checkpoints/released`` name them (atomic)."""
    marked = {BEST: progress.best_step, RELEASED: progress.released_step}
    names = {pointer: Checkpointer.name(step) for pointer, step in marked.items() if step >= 0}
    # The marks travel inside the step folder too: a run set aside and brought back (settings changed and
    # changed back) keeps its own, while the pointer files name the steps of whichever run saved last.
    ckpt.save(
        progress.step, state, extra=lambda f: (f / MARKS).write_text(json.dumps(names)), protect=tuple(names.values())
    )
    for pointer, name in names.items():
        if (ckpt.directory / name).exists():
            tmp = ckpt.directory / f".{pointer}.tmp"
            tmp.write_text(name)
            os.replace(tmp, ckpt.directory / pointer)


def _evaluate(ema, prior, tokenizer, test, pc, run_dir, log, step) -> tuple[float, float]:
    """EMA and raw eval bits per token; the open-loop picture."""
    tokens, ids = test
    value = evaluate(ema.model, tokens, ids, pc.batch_size, pc.bf16)
    raw = evaluate(prior, tokens, ids, pc.batch_size, pc.bf16)
    log.scalars({"prior/eval_bits_per_token": value, "prior/eval_bits_per_token_raw": raw}, step)
    pick = torch.cat([torch.nonzero(ids == t)[: pc.picture_windows_per_task, 0] for t in torch.unique(ids)])
    png = run_dir / "plots" / "open_loop.png"
    save_open_loop(ema.model, tokenizer, tokens[pick], ids[pick], pc.picture_context_frames, png, pc.seed)
    log.image("prior/open_loop", png, step)
    return value, raw


def run(cfg: Config) -> dict[str, float]:
    """Train (or resume) the suite's prior; returns the summary metrics, also in ``<prior_dir>/metrics.json``.

    Rank 0 holds the run folder's lock (``viper.locks``) throughout: a second run for the suite is refused."""
    run_dir = paths.prior_dir(cfg.data_dir, cfg.collect.suite)
    ctx = common.setup_distributed()
    try:
        with common.run_lock(cfg.data_dir, run_dir, "viper train-videogpt", ctx), StopSignals() as stop:
            return _train(cfg, run_dir, ctx, stop)
    finally:
        common.teardown_distributed(ctx)


def _train(cfg: Config, run_dir: Path, ctx: common.DistContext, stop: StopSignals) -> dict[str, float]:
    from viper.models.vqgan import load_tokenizer

    pc = cfg.prior
    suite = cfg.collect.suite
    tasks = tuple(sorted(cfg.collect.tasks))
    tokenizer = load_tokenizer(paths.tokenizer_dir(cfg.data_dir, suite), device=ctx.device)
    tokens_path = paths.tokens(cfg.data_dir, suite)
    splits = load_splits(tokens_path, tasks, tokenizer.hash, tokenizer.grid)
    codebook = tokenizer.codebook.cpu()
    spec = spec_for(pc, tokenizer.grid, codebook, len(tasks))
    common.seed_torch(pc.seed)
    prior = VideoGPT(spec, codebook).to(ctx.device)
    ema = EMA(prior, pc.ema_decay)
    common.decorrelate_ranks(pc.seed, ctx)  # dropout differs across ranks; a resume restores each rank's
    optimizer = OptaxAdamW(prior.parameters(), lr=pc.lr, weight_decay=pc.weight_decay)  # optax's decay order
    per_rank = common.rank_batch("prior.batch_size", pc.batch_size, ctx)
    ckpt = Checkpointer(
        run_dir / "checkpoints",
        pc.keep_checkpoints,
        fingerprint(pc, tasks, tokenizer.hash, ctx.world_size, store_identities(tokens_path, tasks)),
        defaults={"prior": fingerprint(PriorConfig(), tasks, tokenizer.hash, ctx.world_size)["prior"]},
        resumable=("world_size",),  # more or fewer GPUs continue the run (see below)
    )
    stale = ckpt.stale_message("prior")
    if stale and ctx.is_main:
        print(stale, flush=True)
    progress = Progress(eval_windows=pc.eval_windows_per_task)
    loaded = common.load_latest(ckpt, ctx, map_location="cpu")
    if loaded is not None:
        state = loaded[0]
        prior.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        common.restore_rng(state, pc.seed, ctx)
        progress = Progress(**state["progress"])
        # A finished run keeps its values: no evaluation follows to set new ones.
        if progress.eval_windows not in (-1, pc.eval_windows_per_task) and progress.step < pc.train_grad_steps:
            # Bits per token on another evaluation set are not comparable: the best values restart from here, so
            # which checkpoint is released (reward.checkpoint) depends on the settings, not the run's history.
            if ctx.is_main:
                print(
                    f"prior: eval_windows_per_task {progress.eval_windows} -> {pc.eval_windows_per_task}: the best "
                    "eval bits per token (best and released checkpoints) restart from the next evaluation",
                    flush=True,
                )
            progress.best_nll = progress.best_raw_nll = math.inf
            progress.raw_is_best = False
        progress.eval_windows = pc.eval_windows_per_task
        saved_world = len(state.get("rng_ranks") or [None])
        if saved_world != ctx.world_size and ctx.is_main:
            # The global batch keeps its size and task mix (each rank draws batch_size / world_size windows);
            # which windows are drawn from here on differs from a run that kept its GPU count.
            print(
                f"prior: resuming a run of {saved_world} process(es) on {ctx.world_size}: same global batch, "
                "other window draws than the run would have made on its old GPU count",
                flush=True,
            )
    windows = TrainWindows(
        splits["train"], pc.seq_len, pc.frame_skip, per_rank, pc.seed, ctx.rank, ctx.world_size, tokens_path
    )
    test = eval_windows(splits["test"], pc.seq_len, pc.frame_skip, pc.eval_windows_per_task, tokens_path)
    trained = common.maybe_compile(common.wrap_ddp(PriorLoss(prior), ctx), pc.compile)
    log = None
    if ctx.is_main:
        log = Logger(run_dir / "logs", total=pc.train_grad_steps, desc="prior", initial=progress.step)
    train_nats: list[torch.Tensor] = []
    try:
        while progress.step < pc.train_grad_steps:
            tokens, ids = windows.batch(progress.step)
            nats = train_step(trained, optimizer, tokens.to(ctx.device), ids.to(ctx.device), pc.bf16)
            train_nats.append(nats)
            ema.update(prior, first=progress.step == 0)
            progress.step = step = progress.step + 1
            final = step == pc.train_grad_steps
            if common.every(step, pc.log_every_grad_steps) or final:
                # Every rank joins the all-reduce; rank 0 logs.
                # Read once per log: the updates since the last one were queued without waiting for the device.
                mean_nats = float(torch.stack(train_nats).double().mean())
                bits = common.all_reduce_mean({"b": mean_nats}, ctx)["b"] / LN2
                train_nats.clear()
                if log is not None:
                    log.scalars({"prior/train_bits_per_token": bits}, step)
            evaluated = common.every(step, pc.eval_every_grad_steps) or final
            if evaluated and log is not None:
                progress.last_eval, raw = _evaluate(ema, prior, tokenizer, test, pc, run_dir, log, step)
                progress.raw_is_best = raw < progress.best_raw_nll
                progress.best_raw_nll = min(progress.best_raw_nll, raw)
            signum = common.stop_signal(stop, ctx, step)  # Ctrl-C / SIGTERM: save this update, then stop
            periodic = common.every(step, pc.checkpoint_every_grad_steps) or final
            if periodic or signum:
                rngs = common.gather_rng_states(ctx)
                if ctx.is_main and periodic:  # a stop's extra save marks nothing: resumed = uninterrupted
                    # Only checkpointed steps can be "best"; eval and checkpoint cadences usually agree.
                    if evaluated and progress.last_eval < progress.best_nll:
                        progress.best_nll, progress.best_step = progress.last_eval, step
                    if progress.raw_is_best:
                        progress.released_step = step
                if ctx.is_main:
                    state = _state(prior, ema, optimizer, spec, tasks, tokenizer.hash, pc, progress, rngs)
                    _save(ckpt, state, progress)
                common.barrier(ctx)
            if log is not None:
                log.advance(step)
            if signum and not final:
                raise Stopped.saved(signum, f"prior update {step} of {pc.train_grad_steps}", ckpt.directory)
    finally:
        if log is not None:
            log.close()
    metrics = {
        "prior/eval_bits_per_token": progress.last_eval,
        "prior/best_eval_bits_per_token": progress.best_nll,
        "prior/best_step": progress.best_step,
        "prior/released_step": progress.released_step,
        "prior/grad_steps": progress.step,
    }
    if ctx.is_main:
        write_json(run_dir / "metrics.json", metrics)
    return metrics


def cli(cfg: Config, args: argparse.Namespace, command: str) -> dict[str, float]:
    metrics = run(cfg)
    print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return metrics
