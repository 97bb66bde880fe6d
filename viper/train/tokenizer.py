"""Stage ``train-tokenizer``: train the VQ-GAN on single frames of a suite's video store.

One update (as published): the VQ-GAN minimises
``L1 + perceptual_weight * LPIPS + gan_weight * softplus(-D(x_rec)) + VQ loss``; then the discriminator
minimises ``softplus(D(x_rec)) + softplus(-D(x)) + R1``; both with AdamW and a linear warm-up. The GAN terms
start at ``gan_start_grad_steps`` (0 as published). Resume is re-running the same command: the newest
complete checkpoint (model, discriminator, both optimizers, step, RNG states) is loaded.
Outputs under ``viper.paths.tokenizer_dir(data_dir, suite)``: ``checkpoints/``, ``logs/`` (metrics.jsonl,
TensorBoard, dvclive), ``plots/reconstructions.png`` and ``metrics.json`` (final test-split metrics).

Under ``torchrun --nproc_per_node N -m viper.cli train-tokenizer`` every rank trains on
``batch_size / N`` frames with DistributedDataParallel; rank 0 evaluates, logs and writes checkpoints.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viper import paths
from viper.checkpoint import Checkpointer
from viper.config import Config, TokenizerConfig
from viper.errors import Stopped, ViperError
from viper.hashing import file_sha256
from viper.metrics import Logger, write_json
from viper.models.discriminator import MBSTD_GROUP, Discriminator, discriminator_loss, generator_loss, r1_penalty
from viper.models.lpips import LPIPS, build_perceptual
from viper.models.quantizer import code_stats
from viper.models.vqgan import VQGAN, VQGANArch, check_arch, frames_to_model, model_to_frames, weights_hash
from viper.signals import StopSignals
from viper.train import common
from viper.train.adamw import OptaxAdamW
from viper.train.frames import FrameSource, StoreFrames
from viper.train.tokenize import mask_identity

GRID_COLUMNS = 8
EVAL_BATCH = 64


class TokenizerTrainer:
    """VQ-GAN, discriminator and their optimizers on one rank; ``step`` runs one update (no I/O)."""

    def __init__(self, cfg: TokenizerConfig, ctx: common.DistContext, perceptual: LPIPS | None = None):
        if cfg.recon_loss not in ("l1", "mse"):
            raise ViperError(f"tokenizer.recon_loss={cfg.recon_loss!r}: expected 'l1' (published) or 'mse'")
        self.cfg = cfg
        self.ctx = ctx
        common.seed_torch(cfg.seed)
        self.model = VQGAN.from_config(cfg).to(ctx.device)
        self.disc = Discriminator(cfg.disc_base_channels, cfg.disc_max_channels).to(ctx.device)
        kwargs = dict(lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
        self.opt_g = OptaxAdamW(self.model.parameters(), **kwargs)  # optax's decay order (viper.train.adamw)
        self.opt_d = OptaxAdamW(self.disc.parameters(), **kwargs)
        self.g = common.maybe_compile(common.wrap_ddp(self.model, ctx), cfg.compile)
        self.d = common.wrap_ddp(self.disc, ctx)
        self.perceptual = perceptual.to(ctx.device) if perceptual is not None else None
        common.decorrelate_ranks(cfg.seed, ctx)

    def gan_active(self, step: int) -> bool:
        return self.cfg.gan_weight > 0 and step >= self.cfg.gan_start_grad_steps

    def step(self, step: int, frames: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """One update on uint8 (B, 64, 64, 3) frames; detached 0-d loss tensors (model scale [-1, 1])."""
        cfg, dev = self.cfg, self.ctx.device
        lr = common.warmup_lr(step, cfg.lr, cfg.warmup_grad_steps)
        common.set_lr(self.opt_g, lr)
        common.set_lr(self.opt_d, lr)
        x = frames_to_model(frames, dev)
        gan = self.gan_active(step)
        stats: dict[str, torch.Tensor] = {}

        with common.autocast(dev, cfg.bf16):
            out = self.g(x)
            err = out.recon.float() - x
            l1, mse = err.abs().mean(), err.pow(2).mean()
            loss = (l1 if cfg.recon_loss == "l1" else mse) + out.quant.loss
            if self.perceptual is not None:
                p = self.perceptual(x, out.recon).mean()
                loss = loss + cfg.perceptual_weight * p
                stats["loss/perceptual"] = p
            if gan:
                # The discriminator only scores here; its weights must not move with the generator loss.
                with common.frozen(self.disc):
                    g_loss = generator_loss(self.disc(out.recon))
                loss = loss + cfg.gan_weight * g_loss
                stats["loss/gan_g"] = g_loss
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()

        if gan:
            real = x.detach().requires_grad_(True)
            fake = out.recon.detach() if cfg.disc_fake == "reused" else self._reconstruct(x)
            with common.autocast(dev, cfg.bf16):
                # One pass over [real; fake] (minibatch-stddev groups never straddle the two halves).
                logits = self.d(torch.cat([real, fake]))
                real_logits, fake_logits = logits.split(x.shape[0])
                d_loss = discriminator_loss(real_logits, fake_logits)
                r1 = d_loss.new_zeros(())
                if cfg.r1_weight > 0 and step % max(1, cfg.r1_every_grad_steps) == 0:
                    # Lazy regularisation: a penalty every N updates, N times as strong (StyleGAN2).
                    r1 = r1_penalty(real_logits, real, cfg.r1_weight) * max(1, cfg.r1_every_grad_steps)
            self.opt_d.zero_grad(set_to_none=True)
            (d_loss + r1).backward()
            self.opt_d.step()
            stats["loss/disc"] = d_loss
            stats["loss/r1"] = r1
            stats["train/disc_real_logit"] = real_logits.float().mean()
            stats["train/disc_fake_logit"] = fake_logits.float().mean()

        stats.update(
            {
                "loss/total": loss,
                "loss/recon_l1": l1,
                "loss/recon_mse": mse,
                "loss/vq": out.quant.loss,
                "loss/commitment": out.quant.commitment,
                "train/perplexity": out.quant.perplexity,
                "train/codebook_usage": out.quant.usage,
            }
        )
        return {k: v.detach().float() for k, v in stats.items()}

    @torch.no_grad()
    def _reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The current VQ-GAN's reconstruction of ``x``, without training-mode side effects (code statistics)."""
        self.model.eval()
        try:
            with common.autocast(self.ctx.device, self.cfg.bf16):
                return self.model(x).recon
        finally:
            self.model.train()

    @torch.no_grad()
    def evaluate(self, frames: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        """Encode, decode to uint8; L1/MSE/PSNR on [0, 1] pixels, code usage and perplexity."""
        model = self.model.eval()
        recon, codes = [], []
        try:
            for part in np.array_split(frames, max(1, -(-len(frames) // EVAL_BATCH))):
                with common.autocast(self.ctx.device, self.cfg.bf16):
                    c = model.encode(frames_to_model(part, self.ctx.device))
                    recon.append(model_to_frames(model.decode(c)).cpu())
                codes.append(c.cpu())
        finally:
            model.train()
        rec = torch.cat(recon).numpy()
        err = (rec.astype(np.float64) - frames.astype(np.float64)) / 255.0
        mse = float(np.mean(err**2))
        _, perplexity, usage = code_stats(torch.cat(codes), self.model.arch.codebook_size)
        metrics = {
            "recon_l1": float(np.mean(np.abs(err))),
            "recon_mse": mse,
            "psnr_db": float(10.0 * np.log10(1.0 / max(mse, 1e-12))),
            "codebook_usage": float(usage),
            "perplexity": float(perplexity),
        }
        return metrics, rec

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "disc": self.disc.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "arch": asdict(self.model.arch),
            "config": asdict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        saved = VQGANArch(**{**state["arch"], "channel_mult": tuple(state["arch"]["channel_mult"])})
        check_arch(saved, self.model.arch, source)
        try:
            self.model.load_state_dict(state["model"])
            self.disc.load_state_dict(state["disc"])
        except RuntimeError as exc:
            raise ViperError(
                f"{source}: checkpoint does not fit the configured model/discriminator "
                f"(tokenizer.disc_base_channels / disc_max_channels?): {exc}"
            ) from None
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


# Settings that do not change what a resumed run computes: changing them keeps the checkpoints usable.
RESUMABLE_FIELDS = (
    "train_grad_steps",
    "log_every_grad_steps",
    "eval_every_grad_steps",
    "eval_frames",
    "checkpoint_every_grad_steps",
    "keep_checkpoints",
    "compile",
    "tokenize_batch_frames",
)


def fingerprint(
    cfg: TokenizerConfig, data: dict[str, str] | None = None, masks: dict[str, str] | None = None
) -> dict[str, Any]:
    """The config fields a checkpoint must share with the current run to be resumed (viper.checkpoint), the
    training data's identity per task (``StoreFrames.identity``), so replaced or extended videos retrain, and the
    masks its frames pass through (``masks``: task -> ``mask_identity`` of the masked tasks), so an edited
    scoreboard box does too."""
    fp = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_FIELDS}
    if cfg.lpips_weights_path and Path(cfg.lpips_weights_path).is_file():
        # The weights' bytes, not where they lie: moving the file must not restart a run (a missing file is
        # refused before this, by build_perceptual).
        fp["lpips_weights_path"] = "sha256:" + file_sha256(cfg.lpips_weights_path)
    if data is not None:
        fp["videos"] = data  # read in stale messages as "videos.<task>: <old> -> <new>"
    if masks:
        fp["masks"] = masks
    return fp


def recon_grid(originals: np.ndarray, recons: np.ndarray, columns: int = GRID_COLUMNS) -> np.ndarray:
    """uint8 picture: rows alternate originals / reconstructions of up to ``2 * columns`` frames."""
    n = min(len(originals), 2 * columns)
    rows = []
    for start in range(0, n, columns):
        for source in (originals, recons):
            tiles = list(source[start : min(start + columns, n)])
            tiles += [np.zeros_like(source[0])] * (columns - len(tiles))
            rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def save_png(path: Path, image: np.ndarray) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    iio.imwrite(tmp, image)
    tmp.replace(path)


def run(
    cfg: Config,
    suite: str | None = None,
    frames: FrameSource | None = None,
    stop_at_grad_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) the tokenizer of ``suite`` (default ``cfg.collect.suite``); returns final metrics.

    ``frames`` replaces the video store (tests, benchmarks). ``stop_at_grad_steps`` ends the run early after
    that many updates, with a checkpoint, as a kill would (resume tests). The result holds the eval metrics,
    ``step``, ``start_step``, ``checkpoint_loads``, ``tokenizer_hash`` and ``run_dir``.
    """
    suite = suite or cfg.collect.suite
    ctx = common.setup_distributed()
    try:
        store = paths.store(cfg.data_dir, suite)
        run_dir = paths.tokenizer_dir(cfg.data_dir, suite)
        with common.run_lock(cfg.data_dir, run_dir, "viper train-tokenizer", ctx), StopSignals() as stop:
            return _train(cfg.tokenizer, run_dir, ctx, frames, store, stop_at_grad_steps, progress, stop)
    finally:
        common.teardown_distributed(ctx)


def _train(
    tcfg: TokenizerConfig,
    run_dir: Path,
    ctx: common.DistContext,
    frames: FrameSource | None,
    store: Path,
    stop_at: int | None,
    progress: bool,
    stop: StopSignals,
) -> dict[str, Any]:
    say = print if ctx.is_main else (lambda _msg: None)
    per_rank = common.rank_batch("tokenizer.batch_size", tcfg.batch_size, ctx)
    if tcfg.gan_weight > 0 and per_rank % MBSTD_GROUP:
        # The discriminator scores [real; fake] in one pass: its minibatch-stddev groups of 4 consecutive
        # frames would mix real and fake ones (the released code's reshape fails on such batches).
        raise ViperError(
            f"tokenizer.batch_size={tcfg.batch_size}: each of the {ctx.world_size} rank(s) gets {per_rank} frames; "
            f"with the GAN on (tokenizer.gan_weight > 0) a rank's share must be a multiple of {MBSTD_GROUP}"
        )
    source = frames if frames is not None else StoreFrames(store, log=say)
    trainer = TokenizerTrainer(tcfg, ctx, build_perceptual(tcfg.perceptual_weight, tcfg.lpips_weights_path, say))
    data = source.identity() if hasattr(source, "identity") else None
    masks = {task: mask for task in getattr(source, "tasks", ()) if (mask := mask_identity(task))}
    # A run from before masks were recorded resumes under today's masks (defaults): what it trained on is unknown.
    ckpt = Checkpointer(
        run_dir / "checkpoints",
        tcfg.keep_checkpoints,
        fingerprint(tcfg, data, masks),
        defaults=fingerprint(TokenizerConfig(), masks=masks),
    )
    stale = ckpt.stale_message("tokenizer")
    if stale:
        say(stale)
    start = 0
    # On the CPU first: RNG states must stay CPU tensors; load_state_dict moves weights to their device.
    loaded = common.load_latest(ckpt, ctx, map_location="cpu")
    if loaded is not None:
        state, folder = loaded
        trainer.load_state_dict(state, folder)
        common.restore_rng(state, tcfg.seed, ctx)
        start = int(state["step"])
        say(f"tokenizer: resumed from {folder} at update {start}")
    total = tcfg.train_grad_steps
    end = min(total, stop_at) if stop_at is not None else total
    test = source.test_frames(tcfg.eval_frames) if ctx.is_main else None
    logger = Logger(run_dir / "logs", total=total, initial=start, desc="tokenizer", progress=progress) \
        if ctx.is_main else None  # fmt: skip
    metrics: dict[str, float] = {}
    try:
        stream = source.batches(per_rank, tcfg.seed, ctx.rank, start, ctx.world_size)
        tick, tick_step = time.perf_counter(), start
        # Train metrics are means over the updates since the last log (as the prior's); the discriminator's
        # appear once the GAN starts, averaged over the updates that had them. Summed on the device (no sync).
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for step in range(start, end):
            for key, value in trainer.step(step, next(stream)).items():
                sums[key] = sums[key] + value if key in sums else value
                counts[key] = counts.get(key, 0) + 1
            done = step + 1
            if common.every(done, tcfg.log_every_grad_steps) or done == end:
                values = common.all_reduce_mean({k: float(v) / counts[k] for k, v in sums.items()}, ctx)
                sums.clear()
                counts.clear()
                now = time.perf_counter()
                values["images_per_s"] = (done - tick_step) * tcfg.batch_size / max(now - tick, 1e-9)
                values["lr"] = common.warmup_lr(step, tcfg.lr, tcfg.warmup_grad_steps)
                tick, tick_step = now, done
                if logger is not None:
                    logger.scalars({f"tokenizer/{k}": v for k, v in values.items()}, done)
            if logger is not None and (common.every(done, tcfg.eval_every_grad_steps) or done == total):
                metrics = _evaluate(trainer, test, run_dir, logger, done)
            signum = common.stop_signal(stop, ctx, done)  # Ctrl-C / SIGTERM: save this update, then stop
            if common.every(done, tcfg.checkpoint_every_grad_steps) or done == end or signum:
                rngs = common.gather_rng_states(ctx)
                if ctx.is_main:
                    ckpt.save(done, {**trainer.state_dict(), "step": done, "rng": rngs[0], "rng_ranks": rngs})
                common.barrier(ctx)
            if logger is not None:
                logger.advance(done)
            if signum and done < end:
                raise Stopped.saved(signum, f"tokenizer update {done} of {total}", ckpt.directory)
        if logger is not None and end == total and not metrics:
            metrics = _evaluate(trainer, test, run_dir, logger, total)  # resumed at the end: eval only
        final_hash = weights_hash(trainer.model.state_dict())
        if ctx.is_main and end == total:
            write_json(run_dir / "metrics.json", {"step": total, **metrics})
            say(f"tokenizer: done at update {total}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    finally:
        if logger is not None:
            logger.close()
    return {
        **metrics,
        "step": end,
        "start_step": start,
        "checkpoint_loads": ckpt.loads,
        "tokenizer_hash": final_hash,
        "run_dir": str(run_dir),
    }


def _evaluate(trainer: TokenizerTrainer, test: np.ndarray, run_dir: Path, logger: Logger, step: int):
    metrics, recon = trainer.evaluate(test)
    logger.scalars({f"tokenizer/eval/{k}": v for k, v in metrics.items()}, step)
    png = run_dir / "plots" / "reconstructions.png"
    save_png(png, recon_grid(test, recon))
    logger.image("tokenizer/reconstructions", png, step)
    return metrics


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--suite", default=None, help="suite whose store to train on (default: collect.suite)")


def cli(cfg: Config, args: argparse.Namespace, command: str) -> dict[str, float]:
    result = run(cfg, suite=args.suite)
    print(f"tokenizer {result['tokenizer_hash']} in {result['run_dir']}")
    # Only what describes the trained model (not how often it was resumed) goes to DVC's metrics.
    return {
        k: v for k, v in result.items() if k not in ("start_step", "checkpoint_loads") and isinstance(v, (int, float))
    }
