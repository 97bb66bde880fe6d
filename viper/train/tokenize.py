"""Stage ``tokenize``: encode every frame of a suite's video store with the trained tokenizer.

Writes ``viper.paths.tokens(data_dir, suite)``: per task, ``tokens`` int16 (N, h, w) aligned with the store's
frames, its ``episode_ends`` and ``split``, and the tokenizer's weights hash (``viper.data.tokens``), so readers
refuse tokens from another tokenizer. Atari frames are masked first (score area blanked), exactly as the reward
model masks the frames it scores. A task whose tokens already carry the current hash and encode the store
group as it is now (``TaskGroup.identity``) is skipped, so re-running after a kill only encodes what is
missing (each task is swapped in whole), and a replaced or extended task is encoded again.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viper import locks, paths, runtime
from viper.config import Config
from viper.errors import ViperError
from viper.models.vqgan import Tokenizer, load_tokenizer

READ_BLOCK_FRAMES = 4096
"""Frames read from the store per call (many chunks per zarr call; bounded memory)."""


def task_mask(task: str) -> np.ndarray | None:
    """bool (64, 64) pixels kept for ``task`` (viper.envs.atari_mask), or None when every pixel is kept."""
    from viper.envs import atari_mask

    keep = np.asarray(atari_mask(task), dtype=bool)
    return None if keep.all() else keep


def mask_identity(task: str) -> str:
    """16 hex digits naming ``task``'s mask (``task_mask``), "" when it has none: tokens and tokenizer runs record
    it, so an edited scoreboard box (``viper.envs.masks``) re-encodes and retrains instead of reusing old ones."""
    from viper.hashing import json_digest

    keep = task_mask(task)
    return "" if keep is None else json_digest(np.packbits(keep).tolist())


def apply_mask(frames: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """Zero the pixels outside ``keep`` in uint8 (N, 64, 64, 3) frames (a no-op for ``None``)."""
    return frames if keep is None else frames * keep[None, :, :, None].astype(np.uint8)


def encode_task(tokenizer: Tokenizer, group: Any, keep: np.ndarray | None) -> np.ndarray:
    """All frames of one store task group -> int16 (N, h, w) tokens."""
    out = np.empty((group.num_frames, *tokenizer.grid), dtype=np.int16)
    for start in range(0, group.num_frames, READ_BLOCK_FRAMES):
        stop = min(start + READ_BLOCK_FRAMES, group.num_frames)
        frames = apply_mask(group.read_frames(start, stop), keep)
        out[start:stop] = tokenizer.encode(frames).cpu().numpy().astype(np.int16)
    return out


def up_to_date(tokens_path, task: str, tokenizer_hash: str, num_frames: int, store_identity: str) -> bool:
    """Whether ``task``'s tokens exist, carry ``tokenizer_hash``, cover ``num_frames`` frames and encode the
    store group ``store_identity`` through the task's current mask (``mask_identity``; read from their metadata:
    no token is loaded)."""
    from viper.data.tokens import SCHEMA_VERSION, token_summary

    summary = token_summary(tokens_path, task)
    if summary is None:
        return False
    attrs, frames = summary
    recorded = (attrs.get(k) for k in ("schema_version", "task", "tokenizer_hash", "store_identity"))
    current = (SCHEMA_VERSION, task, tokenizer_hash, store_identity)
    # Tokens from before masks were recorded carry none: taken as today's, as the tokenizer's resume takes them.
    mask = mask_identity(task)
    return tuple(recorded) == current and frames == num_frames and attrs.get("mask", mask) == mask


def _note_unfinished(run_dir: Path, total: int) -> None:
    """One line when the newest tokenizer checkpoint is short of ``train_grad_steps`` (a stopped run): its
    tokens work, but finishing the run replaces them and retrains the prior made from them."""
    from viper.checkpoint import Checkpointer, saved_step

    latest = Checkpointer(run_dir / "checkpoints").latest_path()
    step = saved_step(latest) if latest is not None else total
    if step < total:
        print(
            f"tokenize: note: the tokenizer in {run_dir} stopped at update {step} of {total} "
            "(tokenizer.train_grad_steps); tokens made now go stale when it finishes (`viper train-tokenizer` "
            "resumes it), and so does a prior trained on them",
            flush=True,
        )


def run(cfg: Config, suite: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Tokenise every task of ``suite``'s store (default ``cfg.collect.suite``); returns counts and the hash."""
    suite = suite or cfg.collect.suite
    # One writer: every write stages under the same hidden name, which a second writer would delete mid-write.
    with locks.folder(cfg.data_dir, paths.tokens(cfg.data_dir, suite), "viper tokenize"):
        return _run(cfg, suite, device)


def _run(cfg: Config, suite: str, device: str) -> dict[str, Any]:
    from viper.data.store import open_store
    from viper.data.tokens import write_tokens

    store_path = paths.store(cfg.data_dir, suite)
    if not store_path.exists():
        raise ViperError(f"video store {store_path} not found; run `viper collect` first")
    tokenizer = load_tokenizer(
        paths.tokenizer_dir(cfg.data_dir, suite), runtime.resolve_device(device, "--device"), cfg.tokenizer
    )
    tokenizer.batch_size = cfg.tokenizer.tokenize_batch_frames
    _note_unfinished(paths.tokenizer_dir(cfg.data_dir, suite), cfg.tokenizer.train_grad_steps)
    if tokenizer.codebook_size > np.iinfo(np.int16).max + 1:
        raise ViperError(f"tokenizer.codebook_size={tokenizer.codebook_size} does not fit int16 tokens")
    store = open_store(store_path, "r")
    out = paths.tokens(cfg.data_dir, suite)
    encoded = skipped = frames = 0
    for task in store.tasks:
        group = store.task(task)
        frames += group.num_frames
        if up_to_date(out, task, tokenizer.hash, group.num_frames, group.identity):
            skipped += 1
            continue
        with torch.inference_mode():
            tokens = encode_task(tokenizer, group, task_mask(task))
        write_tokens(
            out,
            task,
            tokens,
            group.episode_ends,
            group.split,
            tokenizer.hash,
            tokenizer.codebook_size,
            store_identity=group.identity,
            mask=mask_identity(task),
        )
        encoded += 1
        print(f"tokenize: {task}: {group.num_frames} frames -> {tokens.shape[1]}x{tokens.shape[2]} tokens")
    return {
        "tasks_encoded": encoded,
        "tasks_up_to_date": skipped,
        "frames": frames,
        "tokenizer_hash": tokenizer.hash,
        "tokens_path": str(out),
    }


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--suite", default=None, help="suite whose store to tokenise (default: collect.suite)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, mps or cuda[:i]")


def cli(cfg: Config, args: argparse.Namespace, command: str) -> dict[str, float]:
    result = run(cfg, suite=args.suite, device=args.device)
    print(f"tokenize: {result['tasks_encoded']} task(s) encoded, {result['tasks_up_to_date']} up to date")
    return {k: v for k, v in result.items() if isinstance(v, (int, float))}
