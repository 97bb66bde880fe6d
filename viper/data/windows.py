"""Training windows and random frames from the video store, read in contiguous blocks with a chunk cache.

A window of ``seq_len`` frames with stride ``frame_skip`` starting at global frame ``start`` is frames
``start + arange(seq_len) * frame_skip``; it spans ``1 + (seq_len - 1) * frame_skip`` raw frames inside one
episode (published clips: a random offset, then subsampling). A window is read as one contiguous block of
raw frames (one zarr call decoding only the chunks it touches, none if they are cached), never a whole
episode. Batches are task-balanced as the released loader combines its per-task streams (``combine_order``:
groups of ``batch_size // n_tasks`` windows from each task in turn, the turn carried from batch to batch, so a
batch of 64 over 17 tasks holds 3 to 6 windows of each and every task's share evens out over consecutive
batches), task id = index in the sorted task names. Windows
are drawn uniformly over all windows of a task (which is uniform over episodes, then offsets, when episodes
have equal lengths, as published expert data does).
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from viper.data.fastread import join_chunks
from viper.data.store import VideoStore, open_store
from viper.data.taskgroup import TaskGroup
from viper.errors import ViperError


def window_span(seq_len: int, frame_skip: int) -> int:
    """Raw frames a window covers: ``1 + (seq_len - 1) * frame_skip``."""
    assert seq_len >= 1 and frame_skip >= 1, f"seq_len {seq_len} and frame_skip {frame_skip} must be >= 1"
    return 1 + (seq_len - 1) * frame_skip


def window_starts(lengths: np.ndarray, seq_len: int, frame_skip: int) -> np.ndarray:
    """Global start index (int64 (n,)) of every window that fits in one episode of the concatenated frames."""
    lengths = np.asarray(lengths, dtype=np.int64)
    begins = np.cumsum(lengths) - lengths
    counts = np.maximum(lengths - window_span(seq_len, frame_skip) + 1, 0)
    # Per window: its episode's begin plus its offset inside the episode.
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(begins, counts) + offsets


def combine_order(n_tasks: int, batch_size: int, batch_index: int) -> list[tuple[int, int]]:
    """(task id, count) groups of batch ``batch_index`` as the released loader combines its per-task streams
    (videos for the prior, frames for the tokenizer): ``max(1, batch_size // n_tasks)`` from each task in turn,
    the last group cut to fill the batch, the turn carried over from batch to batch."""
    per_task = max(1, batch_size // n_tasks)
    groups = -(-batch_size // per_task)
    return [((batch_index * groups + g) % n_tasks, min(per_task, batch_size - g * per_task)) for g in range(groups)]


def rank_order(n_tasks: int, batch_size: int, batch_index: int, rank: int = 0, world_size: int = 1):
    """``rank``'s share of the global batch of ``batch_size * world_size`` (its ``combine_order``, as one device
    would draw it): the ``batch_size`` consecutive places from ``rank * batch_size``, as (task id, count) groups.
    The released code shards one global batch over devices, so its task mix does not depend on their number."""
    assert 0 <= rank < world_size, f"rank {rank} of {world_size}"
    places = [
        task for task, count in combine_order(n_tasks, batch_size * world_size, batch_index) for _ in range(count)
    ]
    share = places[rank * batch_size : (rank + 1) * batch_size]
    return [(task, len(list(run))) for task, run in itertools.groupby(share)]


class WindowSampler:
    """Task-balanced random windows: ``sample(batch_size) -> [(task_id, episode, start), ...]``.

    ``ends_by_task`` maps task name -> episode_ends (E,) of its concatenated frames (or tokens);
    ``episodes_by_task`` optionally restricts each task to some episodes (e.g. the train split).
    ``start`` is a global frame index; the window is ``start + arange(seq_len) * frame_skip``.
    """

    def __init__(
        self,
        ends_by_task: dict[str, np.ndarray],
        seq_len: int,
        frame_skip: int,
        seed: int | Sequence[int],
        episodes_by_task: dict[str, np.ndarray] | None = None,
        where: str = "",
    ) -> None:
        """``where`` (e.g. the store and split) starts the error when a task has no episode long enough."""
        if not ends_by_task:
            raise ViperError("window sampler: no tasks given")
        self.tasks = sorted(ends_by_task)
        self.seq_len, self.frame_skip = seq_len, frame_skip
        span = window_span(seq_len, frame_skip)
        self.rng = np.random.default_rng(seed)
        self._episodes, self._begins, self._cum = [], [], []
        for task in self.tasks:
            ends = np.asarray(ends_by_task[task], dtype=np.int64)
            lengths = np.diff(ends, prepend=0)
            episodes = np.arange(len(ends)) if episodes_by_task is None else np.asarray(episodes_by_task[task])
            counts = np.maximum(lengths[episodes] - span + 1, 0)
            if counts.sum() == 0:
                raise ViperError(
                    f"{where + ': ' if where else ''}task {task}: no episode (of {len(episodes)} chosen) spans a "
                    f"window of {span} frames "
                    f"(seq_len {seq_len}, frame_skip {frame_skip}); longest is {lengths[episodes].max(initial=0)}"
                )
            self._episodes.append(episodes)
            self._begins.append((ends - lengths)[episodes])
            self._cum.append(np.cumsum(counts))

    def sample(
        self, batch_size: int, batch_index: int = 0, rank: int = 0, world_size: int = 1
    ) -> list[tuple[int, int, int]]:
        """``batch_size`` windows (task_id, episode, start), as the released loader combines its per-task
        streams: groups of ``max(1, batch_size // n_tasks)`` windows from consecutive tasks, the last group cut
        to fill the batch, the task order continuing from batch to batch (``batch_index`` = how many batches came
        before). With 2 tasks and batch 64 that is 32 + 32; with 17 tasks, 21 groups of 3 and one of 1, so every
        batch is full and the tasks take turns at the short group. Under DDP (``world_size`` ranks) each rank
        draws its share of that global batch (``rank_order``)."""
        out = []
        for task_id, take in rank_order(len(self.tasks), batch_size, batch_index, rank, world_size):
            episodes, begins, cum = self._episodes[task_id], self._begins[task_id], self._cum[task_id]
            # Uniform over the task's windows: a window number, then the episode holding it.
            u = self.rng.integers(0, cum[-1], take)
            k = np.searchsorted(cum, u, side="right")
            offsets = u - np.concatenate([[0], cum[:-1]])[k]
            for j in range(take):
                out.append((task_id, int(episodes[k[j]]), int(begins[k[j]] + offsets[j])))
        return out


class ChunkCache:
    """Least-recently-used cache of decoded frame chunks (per task), filled by chunk-aligned block reads."""

    def __init__(self, capacity_chunks: int = 256) -> None:
        self.capacity = capacity_chunks
        self._chunks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        # Chunk lookups served from the cache / decoded from the store (for benchmarks and tuning).
        self.hits = self.misses = 0

    def read(self, group: TaskGroup, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` of ``group``: uint8 (stop - start, 64, 64, 3)."""
        if not 0 <= start < stop <= group.num_frames:
            raise ViperError(f"{group.where}: frames [{start}, {stop}) out of range ({group.num_frames} frames)")
        size = group.chunk_frames
        first, last = start // size, (stop - 1) // size
        parts: dict[int, np.ndarray] = {}
        for c in range(first, last + 1):
            if (group.name, c) in self._chunks:
                self._chunks.move_to_end((group.name, c))
                parts[c] = self._chunks[(group.name, c)]
        missing = [c for c in range(first, last + 1) if c not in parts]
        self.hits += len(parts)
        self.misses += len(missing)
        if missing and group.fast_reads:
            # Local stores decode one chunk per call at no extra overhead.
            for c in missing:
                parts[c] = group.read_chunk(c)
                self._put((group.name, c), parts[c])
        elif missing:
            # One zarr call for the whole missing run: decoding cost is per chunk, call overhead per call.
            lo, hi = missing[0] * size, min((missing[-1] + 1) * size, group.num_frames)
            block = group.read_frames(lo, hi)
            for c in range(missing[0], missing[-1] + 1):
                parts[c] = block[c * size - lo : (c + 1) * size - lo]
                self._put((group.name, c), parts[c])
        return join_chunks(parts, size, start, stop)

    def _put(self, key: tuple[str, int], chunk: np.ndarray) -> None:
        self._chunks[key] = chunk
        self._chunks.move_to_end(key)
        while len(self._chunks) > self.capacity:
            self._chunks.popitem(last=False)


def read_window(
    group: TaskGroup, episode: int, start: int, seq_len: int, frame_skip: int, cache: ChunkCache | None = None
) -> np.ndarray:
    """Window frames uint8 (seq_len, 64, 64, 3) at global ``start``; it must lie inside ``episode``."""
    begin, end = group.episode_range(episode)
    stop = start + window_span(seq_len, frame_skip)
    if not begin <= start or stop > end:
        raise ViperError(
            f"{group.where}: window [{start}, {stop}) (seq_len {seq_len}, frame_skip {frame_skip}) is outside "
            f"episode {episode} = frames [{begin}, {end})"
        )
    block = cache.read(group, start, stop) if cache is not None else group.read_frames(start, stop)
    return block[::frame_skip]


def _open(store: VideoStore | str | Path) -> VideoStore:
    return store if isinstance(store, VideoStore) else open_store(store, "r")


class FrameWindowDataset(torch.utils.data.IterableDataset):
    """Endless task-balanced windows ``(frames uint8 (T, 64, 64, 3), task_id)`` from the video store.

    Safe with DataLoader workers and DDP ranks: each worker opens the store itself and draws from its own seed
    ``(seed, rank, worker_id)``; ``rank`` defaults to torchrun's ``RANK`` (0 without torchrun), so the ranks of a
    distributed run draw different windows without code changes. With ``DataLoader(batch_size=batch_size)``
    each batch is one balanced draw.
    """

    def __init__(
        self,
        store: str | Path,
        seq_len: int,
        frame_skip: int,
        batch_size: int,
        seed: int,
        split: str = "train",
        tasks: Sequence[str] | None = None,
        cache_chunks: int = 256,
        rank: int | None = None,
    ) -> None:
        super().__init__()
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.store, self.seq_len, self.frame_skip = str(store), seq_len, frame_skip
        self.batch_size, self.seed, self.split = batch_size, seed, split
        self.tasks = sorted(tasks) if tasks is not None else sorted(open_store(store).tasks)
        self.cache_chunks = cache_chunks

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        store = open_store(self.store, "r")
        groups = [store.task(t) for t in self.tasks]
        sampler = WindowSampler(
            {t: g.episode_ends for t, g in zip(self.tasks, groups, strict=True)},
            self.seq_len,
            self.frame_skip,
            seed=[self.seed, self.rank, worker],
            episodes_by_task={t: g.episodes(self.split) for t, g in zip(self.tasks, groups, strict=True)},
            where=f"{self.store} ({self.split} split)",
        )
        cache = ChunkCache(self.cache_chunks)
        batch_index = 0
        while True:
            picks = sampler.sample(self.batch_size, batch_index)
            batch_index += 1
            for task_id, episode, start in picks:
                frames = read_window(groups[task_id], episode, start, self.seq_len, self.frame_skip, cache)
                yield torch.from_numpy(np.ascontiguousarray(frames)), task_id


class ChunkPools:
    """Pools of random ``split`` frames read whole chunks at a time (one zarr call each, no chunk decoded per frame).

    ``draw(rng)`` picks ``pool_chunks`` chunks uniformly from all ``tasks``' chunks that hold ``split`` frames and
    returns those frames (N, 64, 64, 3) uint8: every frame has the same expected count per pool.
    """

    def __init__(self, store: VideoStore | str | Path, tasks: Sequence[str], split: str, pool_chunks: int) -> None:
        store = _open(store)
        self.pool_chunks = pool_chunks
        self.groups, self.masks, self.chunk_ids = [], [], []
        for task in sorted(tasks):
            group = store.task(task)
            keep = np.zeros(group.episodes("all").size, bool)
            keep[group.episodes(split)] = True
            mask = np.repeat(keep, group.lengths)  # per frame: is its episode in the split
            size = group.chunk_frames
            has = np.add.reduceat(mask, np.arange(0, mask.size, size)) > 0 if mask.size else np.zeros(0, bool)
            self.groups.append(group)
            self.masks.append(mask)
            self.chunk_ids += [(len(self.groups) - 1, int(c)) for c in np.flatnonzero(has)]
        if not self.chunk_ids:
            raise ViperError(f"{getattr(store, 'url', store)}: no {split} frames in tasks {sorted(tasks)}")

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        pool = []
        for i in rng.integers(0, len(self.chunk_ids), self.pool_chunks):
            g, c = self.chunk_ids[i]
            lo = c * self.groups[g].chunk_frames
            chunk = self.groups[g].read_chunk(c)
            pool.append(chunk[self.masks[g][lo : lo + len(chunk)]])
        return np.concatenate(pool)
