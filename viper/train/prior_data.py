"""Token windows for the prior, held in memory: the token store is small (N x h x w int16 per task).

A window is ``seq_len`` frames ``start + arange(seq_len) * frame_skip`` inside one episode (published
clips: a random offset, ``1 + (seq_len-1)*frame_skip`` raw frames subsampled by ``frame_skip``). Training
batches are task-balanced (batch_size // n_tasks windows per task, task id = index in sorted task names) and
drawn with ``common.batch_rng(seed, rank, step)``, so a resumed run sees the same batches as an
uninterrupted one. Evaluation uses a fixed, evenly spaced set of test-split windows per task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from viper.data.tokens import read_tokens
from viper.data.windows import WindowSampler, window_starts
from viper.errors import ViperError
from viper.train import common


@dataclass(frozen=True)
class SplitTokens:
    """One task's episodes of one split, concatenated: tokens int16 (N, h, w), ends int64 (E,) exclusive."""

    tokens: np.ndarray
    ends: np.ndarray


def load_splits(
    path: str | Path, tasks: tuple[str, ...], tokenizer_hash: str, grid: tuple[int, int]
) -> dict[str, dict[str, SplitTokens]]:
    """``{"train": {task: SplitTokens}, "test": {...}}`` from the token store; stale tokens raise."""
    out: dict[str, dict[str, SplitTokens]] = {"train": {}, "test": {}}
    for task in tasks:
        group = read_tokens(path, task, expected_hash=tokenizer_hash)
        if group.grid != tuple(grid):
            raise ViperError(f"{path}: {task} tokens have grid {group.grid}, the tokenizer makes {grid}")
        size = group.codebook_size
        if size is not None and group.tokens.size and not 0 <= group.tokens.min() <= group.tokens.max() < size:
            # Checked here, on the CPU, once: the prior's own check would stall the GPU at every update.
            raise ViperError(
                f"{path}: {task} token ids must lie in [0, {size}), got [{group.tokens.min()}, "
                f"{group.tokens.max()}]; run `viper tokenize` again"
            )
        starts = group.episode_ends - group.lengths
        for split, code in (("train", 0), ("test", 1)):
            chosen = np.flatnonzero(group.split == code)
            parts = [group.tokens[starts[e] : group.episode_ends[e]] for e in chosen]
            tokens = np.concatenate(parts) if parts else np.zeros((0, *grid), np.int16)
            out[split][task] = SplitTokens(tokens, np.cumsum([len(p) for p in parts], dtype=np.int64))
    return out


def gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int, frame_skip: int) -> torch.Tensor:
    """Windows at ``starts``: long (n, seq_len, h, w)."""
    index = starts[:, None] + np.arange(seq_len)[None] * frame_skip
    return torch.from_numpy(tokens[index].astype(np.int64))


class TrainWindows:
    """Task-balanced random training windows from the train split (``viper.data.windows.WindowSampler``).

    The sampler's generator is replaced by ``common.batch_rng(seed, rank, step)`` before every draw, so the
    batch of update ``step`` does not depend on where a run was resumed.
    """

    def __init__(
        self,
        train: dict[str, SplitTokens],
        seq_len: int,
        frame_skip: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        where: str | Path = "token store",
    ) -> None:
        self.tasks = tuple(sorted(train))
        self.data = [train[t] for t in self.tasks]
        ends = {t: train[t].ends for t in self.tasks}
        self.sampler = WindowSampler(ends, seq_len, frame_skip, seed=[seed, rank], where=f"{where} (train split)")
        self.seq_len, self.frame_skip, self.batch_size = seq_len, frame_skip, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows of update ``step``: tokens long (B, T, h, w), task ids long (B,)."""
        self.sampler.rng = common.batch_rng(self.seed, self.rank, step)
        picks = self.sampler.sample(self.batch_size, step, self.rank, self.world_size)
        windows = [gather(self.data[task_id].tokens, np.array([start]), self.seq_len, self.frame_skip)
                   for task_id, _, start in picks]  # fmt: skip
        return torch.cat(windows), torch.tensor([task_id for task_id, _, _ in picks], dtype=torch.long)


def eval_windows(
    test: dict[str, SplitTokens], seq_len: int, frame_skip: int, per_task: int, where: str | Path = "token store"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evenly spaced test windows, at most ``per_task`` per task: tokens (M, T, h, w), task ids (M,).
    ``where`` (the token store) names the data in the error when no test episode is long enough."""
    windows, ids, skipped = [], [], []
    for task_id, task in enumerate(sorted(test)):
        starts = window_starts(np.diff(test[task].ends, prepend=0), seq_len, frame_skip)
        if starts.size == 0:
            skipped.append(task)
            continue
        pick = starts[np.unique(np.linspace(0, starts.size - 1, min(per_task, starts.size)).round().astype(int))]
        windows.append(gather(test[task].tokens, pick, seq_len, frame_skip))
        ids.append(torch.full((pick.size,), task_id, dtype=torch.long))
    if not windows:
        need = 1 + (seq_len - 1) * frame_skip
        longest = {t: int(np.diff(test[t].ends, prepend=0).max(initial=0)) for t in sorted(test)}
        raise ViperError(
            f"{where}: no test-split episode spans a prior window of {need} frames (1 + (prior.seq_len - 1) * "
            f"prior.frame_skip); the longest test episode per task: {longest} (0: none). Collect test episodes "
            "(collect.test_fraction > 0) at least that long, or shorten the window"
        )
    if skipped:
        print(
            f"prior: note: {where}: no test-split episode of {', '.join(skipped)} spans a prior window; the "
            "evaluation loss (and the best checkpoint chosen by it) leaves those tasks out",
            flush=True,
        )
    return torch.cat(windows), torch.cat(ids)
