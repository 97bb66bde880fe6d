"""Where the tokenizer's single training frames come from: the Zarr video store, or arrays held in memory.

A ``FrameSource`` gives an endless stream of uint8 ``(B, 64, 64, 3)`` training batches for one rank, starting
at a given update, and a fixed set of test frames for evaluation. Batch ``s`` depends only on ``(seed, rank,
s)``, so a resumed run draws the batches an uninterrupted one would, without saving sampler state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from viper.errors import ViperError
from viper.train import common
from viper.train.tokenize import apply_mask


class FrameSource(Protocol):
    def batches(
        self, batch_size: int, seed: int, rank: int, start_step: int, world_size: int = 1
    ) -> Iterator[np.ndarray]:
        """Endless uint8 (batch_size, 64, 64, 3) training batches for ``rank`` (of ``world_size``) from update
        ``start_step``."""
        ...

    def test_frames(self, n: int) -> np.ndarray:
        """Up to ``n`` uint8 (n, 64, 64, 3) held-out frames spread evenly over the test split."""
        ...


def evenly_spaced(total: int, n: int) -> np.ndarray:
    """``min(n, total)`` sorted distinct indices in ``[0, total)`` spread evenly (deterministic)."""
    n = min(n, total)
    return np.unique(np.linspace(0, total - 1, n).round().astype(np.int64)) if n > 0 else np.zeros(0, np.int64)


class ArrayFrames:
    """Frames held in memory: ``train`` and ``test`` uint8 (N, 64, 64, 3) arrays (tests, benchmarks)."""

    def __init__(self, train: np.ndarray, test: np.ndarray | None = None) -> None:
        for name, arr in (("train", train), ("test", test)):
            if arr is not None:
                assert arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3, (
                    f"{name} frames: expected uint8 (N, H, W, 3), got {arr.shape} {arr.dtype}"
                )
        assert len(train) > 0, "train frames are empty"
        self.train = train
        self.test = test if test is not None and len(test) else train

    def batches(
        self, batch_size: int, seed: int, rank: int, start_step: int, world_size: int = 1
    ) -> Iterator[np.ndarray]:
        step = start_step
        while True:
            rng = common.batch_rng(seed, rank, step)
            yield self.train[np.sort(rng.integers(0, len(self.train), batch_size))]
            step += 1

    def test_frames(self, n: int) -> np.ndarray:
        return self.test[evenly_spaced(len(self.test), n)]


class StoreFrames:
    """Random frames of every task's train episodes in the video store (``viper.data``), task-balanced as
    released (``batches``); test frames from the test episodes (train episodes, with a log line, when the store
    has no test split). Atari frames are masked (score area blanked) as the reward model masks what it scores."""

    def __init__(self, store_path: str | Path, log=print) -> None:
        from viper.data.store import open_store
        from viper.train.tokenize import task_mask

        self.path = Path(store_path)
        if not self.path.exists():
            raise ViperError(f"video store {self.path} not found; run `viper collect` (or `viper import`) first")
        self.store = open_store(self.path, "r")
        self.tasks = sorted(self.store.tasks)
        if not self.tasks:
            raise ViperError(f"video store {self.path} has no task groups; run `viper collect` first")
        self.masks = {task: task_mask(task) for task in self.tasks}
        self.log = log

    def identity(self) -> dict[str, str]:
        """``TaskGroup.identity`` per task: the tokenizer's checkpoints record it to notice replaced data."""
        return {task: self.store.task(task).identity for task in self.tasks}

    POOL_CHUNKS = 8
    """Chunks read per task and pool: a pool serves the batches of ``pool_steps`` updates."""

    def batches(
        self, batch_size: int, seed: int, rank: int, start_step: int, world_size: int = 1
    ) -> Iterator[np.ndarray]:
        """Task-balanced batches, as the released image loader builds them: random train frames of each task
        (masked as its task's), combined in groups of ``batch_size // n_tasks`` from each task in turn
        (``viper.data.windows.combine_order``), so tasks with longer videos do not dominate; under DDP each
        rank draws its share of the global batch (``rank_order``).

        Frames come from per-task pools of whole chunks (``ChunkPools``), one pool per task for every
        ``pool_steps`` updates, about as many frames as those updates draw; the pools of update ``s`` are drawn
        from ``(seed, rank, s // pool_steps)`` and its frames from ``(seed, rank, s)``, so a resumed run rebuilds
        the pools it was using and continues exactly."""
        from viper.data.windows import ChunkPools, rank_order

        tasks = [t for t in self.tasks if self._train_frames(t) > 0]
        if not tasks:
            raise ViperError(f"video store {self.path}: no train frames in tasks {self.tasks}")
        if len(tasks) < len(self.tasks):
            self.log(f"tokenizer: no train episodes in {sorted(set(self.tasks) - set(tasks))}; training without them")
        sources = [ChunkPools(self.store, [t], "train", self.POOL_CHUNKS) for t in tasks]
        chunk = self.store.task(tasks[0]).chunk_frames
        pool_steps = max(1, self.POOL_CHUNKS * chunk * len(tasks) // (batch_size * world_size))
        epoch, pools = None, []
        step = start_step
        while True:
            if step // pool_steps != epoch:
                epoch = step // pool_steps
                pools = [src.draw(np.random.default_rng([seed, rank, epoch, i, 1])) for i, src in enumerate(sources)]
            rng = common.batch_rng(seed, rank, step)
            frames = [
                apply_mask(pools[i][rng.integers(0, len(pools[i]), count)], self.masks[tasks[i]])
                for i, count in rank_order(len(tasks), batch_size, step, rank, world_size)
            ]
            step += 1
            yield np.concatenate(frames)

    def _train_frames(self, task: str) -> int:
        group = self.store.task(task)
        return int(group.lengths[group.episodes("train")].sum())

    def test_frames(self, n: int) -> np.ndarray:
        spans = []
        for split in ("test", "train"):
            for task in self.tasks:
                group = self.store.task(task)
                spans += [(task, *group.episode_range(int(e))) for e in group.episodes(split)]
            if spans:
                if split == "train":
                    self.log(f"tokenizer: {self.path} has no test episodes; evaluating on train frames")
                elif missing := sorted(set(self.tasks) - {task for task, *_ in spans}):
                    self.log(f"tokenizer: no test episodes in {missing}; evaluating on the other tasks' only")
                break
        lengths = np.array([stop - start for _, start, stop in spans], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        picks = evenly_spaced(int(offsets[-1]), n)
        out = []
        for i, (task, start, _) in enumerate(spans):
            local = picks[(picks >= offsets[i]) & (picks < offsets[i + 1])] - offsets[i]
            if len(local):
                block = self.store.task(task).read_frames(start + int(local[0]), start + int(local[-1]) + 1)
                out.append(apply_mask(block[local - local[0]], self.masks[task]))
        return np.concatenate(out) if out else np.zeros((0, 64, 64, 3), np.uint8)
