"""Window sampling and frame streams against slow reference loops; filtering and split determinism."""

from __future__ import annotations

import itertools
import pickle
import uuid
from collections import Counter

import numpy as np
import pytest
import torch

from viper.data.filtering import assign_split, select_episodes, trim_episode
from viper.data.store import open_store
from viper.data.windows import (
    ChunkCache,
    ChunkPools,
    FrameWindowDataset,
    WindowSampler,
    combine_order,
    rank_order,
    read_window,
    window_starts,
)
from viper.errors import ViperError


def reference_starts(lengths, seq_len, frame_skip):
    """Slow, obviously correct: every (episode, offset) whose last frame stays inside the episode."""
    out, begin = [], 0
    for length in lengths:
        for offset in range(length):
            if offset + (seq_len - 1) * frame_skip < length:
                out.append(begin + offset)
        begin += length
    return out


@pytest.mark.parametrize(("seq_len", "frame_skip"), [(1, 1), (4, 1), (4, 4), (8, 2), (16, 1)])
def test_window_starts_match_reference(seq_len, frame_skip):
    lengths = np.random.default_rng(seq_len * 7 + frame_skip).integers(1, 40, 30)
    np.testing.assert_array_equal(
        window_starts(lengths, seq_len, frame_skip), reference_starts(lengths, seq_len, frame_skip)
    )


def test_sampler_is_task_balanced_uniform_and_inside_episodes():
    rng = np.random.default_rng(0)
    lengths = {"dmc/b": rng.integers(3, 30, 12), "dmc/a": rng.integers(3, 30, 5)}
    ends = {t: np.cumsum(v) for t, v in lengths.items()}
    chosen = {"dmc/b": np.array([0, 2, 3, 7, 11]), "dmc/a": np.arange(5)}
    sampler = WindowSampler(ends, seq_len=3, frame_skip=2, seed=1, episodes_by_task=chosen)
    counts = {t: Counter() for t in ends}
    for _ in range(400):
        batch = sampler.sample(8)
        assert [tid for tid, _, _ in batch] == [0] * 4 + [1] * 4  # sorted names: dmc/a is task 0
        for tid, episode, start in batch:
            task = sampler.tasks[tid]
            assert episode in chosen[task]
            begin = ends[task][episode] - lengths[task][episode]
            assert begin <= start and start + 4 < ends[task][episode]
            counts[task][start] += 1
    for task in ends:
        # Every window of the chosen episodes, and nothing else, is drawn about equally often.
        inside = [
            s
            for s in reference_starts(lengths[task], 3, 2)
            if np.searchsorted(ends[task], s, side="right") in chosen[task]
        ]
        assert set(counts[task]) == set(inside)
        expected = 1600 / len(inside)
        assert max(abs(c - expected) for c in counts[task].values()) < 5 * np.sqrt(expected) + 3
    # Same seed, same draws.
    a = WindowSampler(ends, 3, 2, seed=5).sample(6)
    assert a == WindowSampler(ends, 3, 2, seed=5).sample(6) and a != WindowSampler(ends, 3, 2, seed=6).sample(6)


def _released_task_order(n_tasks: int, batch_size: int, batches: int) -> list[list[int]]:
    """The released loader's ``combine``, as a loop: groups of batch // n windows per dataset in turn, the
    dataset index carried across batches, each batch cut to batch_size."""
    per, idx, out = max(1, batch_size // n_tasks), 0, []
    for _ in range(batches):
        tasks = []
        for _ in range(-(-batch_size // per)):
            tasks += [idx] * per
            idx = (idx + 1) % n_tasks
        out.append(tasks[:batch_size])
    return out


@pytest.mark.parametrize(("n_tasks", "batch_size"), [(2, 64), (17, 64), (3, 8), (8, 32), (5, 3)])
def test_batches_combine_tasks_as_the_released_loader_does(n_tasks, batch_size):
    ends = {f"dmc/t{i:02d}": np.array([20, 45]) for i in range(n_tasks)}
    sampler = WindowSampler(ends, seq_len=4, frame_skip=1, seed=0)
    got = [[tid for tid, _, _ in sampler.sample(batch_size, k)] for k in range(2 * n_tasks)]
    assert got == _released_task_order(n_tasks, batch_size, 2 * n_tasks)
    assert all(len(b) == batch_size for b in got)  # 17 tasks: 64 windows, not 17 x 3 = 51


def test_sampler_errors_name_the_task_and_where_its_episodes_come_from():
    with pytest.raises(ViperError, match="task dmc/short: no episode.*window of 16 frames"):
        WindowSampler({"dmc/short": np.array([5, 12])}, seq_len=16, frame_skip=1, seed=0)
    with pytest.raises(ViperError, match=r"^data/tokens/dmc.zarr \(train split\): task dmc/short: no episode"):
        WindowSampler({"dmc/short": np.array([5, 12])}, 16, 1, seed=0, where="data/tokens/dmc.zarr (train split)")


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    url = tmp_path_factory.mktemp("win") / "dmc.zarr"
    store = open_store(url, "a", chunk_frames=8, shard_frames=64)
    rng = np.random.default_rng(3)
    for task, n in (("dmc/a", 4), ("dmc/b", 3)):
        for i in range(n):
            length = int(rng.integers(20, 45))
            # Frame content encodes (task, global frame index) so a read can be checked exactly.
            base = store.task(task).num_frames if task.split("/")[1] in [t[4:] for t in store.tasks] else 0
            idx = np.arange(base, base + length)
            frames = np.zeros((length, 64, 64, 3), np.uint8)
            frames[:, 0, 0, 0], frames[:, 0, 0, 1] = idx % 256, idx // 256
            frames[:, 0, 0, 2] = ord(task[-1])
            store.append_episode(task, frames, split="test" if i == 1 else "train")
    return url


def frame_ids(frames):
    frames = np.asarray(frames)
    return (frames[..., 0, 0, 0].astype(int) + 256 * frames[..., 0, 0, 1].astype(int)).tolist()


def test_read_window_with_cache_matches_direct_reads(store_url):
    group = open_store(store_url).task("dmc/a")
    cache = ChunkCache(capacity_chunks=3)
    rng = np.random.default_rng(0)
    for _ in range(60):
        episode = int(rng.integers(0, group.num_episodes))
        begin, end = group.episode_range(episode)
        seq_len, skip = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        span = 1 + (seq_len - 1) * skip
        start = int(rng.integers(begin, end - span + 1))
        window = read_window(group, episode, start, seq_len, skip, cache)
        assert window.shape == (seq_len, 64, 64, 3)
        assert frame_ids(window) == list(range(start, start + span, skip))
    assert len(cache._chunks) <= 3
    begin, end = group.episode_range(1)
    with pytest.raises(ViperError, match=r"window \[.*outside episode 1"):
        read_window(group, 1, end - 2, 4, 1)
    with pytest.raises(ViperError, match="episode 9 out of range"):
        read_window(group, 9, 0, 4, 1)
    with pytest.raises(ViperError, match="out of range"):
        cache.read(group, group.num_frames - 1, group.num_frames + 5)


def test_dataset_with_two_workers(store_url):
    dataset = FrameWindowDataset(store_url, seq_len=4, frame_skip=2, batch_size=4, seed=0, split="train")
    # The dataset holds only a URL and numbers, so spawn-started workers get it too (fork is faster here).
    assert pickle.loads(pickle.dumps(dataset)).store == str(store_url)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)
    batches = []
    for frames, task_ids in loader:
        batches.append((frames, task_ids))
        if len(batches) == 4:
            break
    store = open_store(store_url)
    seen = set()
    for frames, task_ids in batches:
        assert frames.dtype == torch.uint8 and frames.shape == (4, 4, 64, 64, 3)
        assert task_ids.tolist() == [0, 0, 1, 1]
        for window, tid in zip(frames.numpy(), task_ids.tolist(), strict=True):
            group = store.task(["dmc/a", "dmc/b"][tid])
            ids = frame_ids(window)
            assert window[0, 0, 0, 2] == ord("ab"[tid])
            assert np.diff(ids).tolist() == [2, 2, 2]
            episode = int(np.searchsorted(group.episode_ends, ids[0], side="right"))
            assert group.split[episode] == 0 and ids[-1] < group.episode_ends[episode]
            seen.add(tuple(ids))
    # Workers draw from different seeds: the 16 windows are not two copies of the same 8.
    assert len(seen) > 8


def test_dataset_ranks_draw_different_windows(store_url, monkeypatch):
    """DDP: each rank (torchrun's RANK unless given) draws its own windows; the same rank draws the same ones."""

    def first_windows(**kwargs):
        dataset = FrameWindowDataset(store_url, seq_len=4, frame_skip=1, batch_size=4, seed=0, **kwargs)
        return [tuple(frame_ids(frames.numpy())) for frames, _ in itertools.islice(iter(dataset), 12)]

    assert first_windows(rank=0) == first_windows(rank=0)
    assert first_windows(rank=0) != first_windows(rank=1)
    monkeypatch.setenv("RANK", "1")
    assert first_windows() == first_windows(rank=1)


def test_chunk_pools_cover_split_uniformly(store_url):
    """The tokenizer's random frames: pools of whole chunks, drawn one after another, cover every frame of the
    split about equally often."""
    store = open_store(store_url)
    pools = ChunkPools(store, ["dmc/b", "dmc/a"], "test", pool_chunks=4)
    rng = np.random.default_rng([1, 0, 0])
    drawn = []
    while sum(map(len, drawn)) < 3000:
        drawn.append(pools.draw(rng))
    counts = Counter()
    for frame in np.concatenate(drawn)[:3000]:
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
        counts[(chr(frame[0, 0, 2]), frame_ids(frame))] += 1
    expected = set()
    for task in ("dmc/a", "dmc/b"):
        group = store.task(task)
        for e in group.episodes("test"):
            expected |= {(task[-1], i) for i in range(*group.episode_range(int(e)))}
    assert set(counts) == expected
    mean = 3000 / len(expected)
    assert max(counts.values()) < 3 * mean and min(counts.values()) > mean / 4


def test_select_episodes_matches_reference():
    rng = np.random.default_rng(0)
    returns = rng.normal(size=101).round(1)  # rounding creates ties
    for pct, cap in ((90, 500), (50, 10), (0, 7), (0, 1000), (99.5, 3)):
        got = select_episodes(returns, pct, cap)
        thresh = sorted(returns)[0] if pct == 0 else np.percentile(returns, pct)
        ranked = sorted((-r, i) for i, r in enumerate(returns) if r >= thresh)
        assert got.tolist() == sorted(i for _, i in ranked[:cap])
    assert select_episodes(np.zeros(0), 90, 5).size == 0
    with pytest.raises(ViperError, match="keep_return_percentile 120"):
        select_episodes(returns, 120, 5)
    with pytest.raises(ViperError, match="NaN"):
        select_episodes(np.array([1.0, np.nan]), 50, 5)


def test_split_is_deterministic_by_seed_and_sized():
    a = assign_split(100, 0.05, seed=0, task="dmc/a")
    assert a.sum() == 5 and a.dtype == np.uint8
    np.testing.assert_array_equal(a, assign_split(100, 0.05, seed=0, task="dmc/a"))
    assert not np.array_equal(a, assign_split(100, 0.05, seed=1, task="dmc/a"))
    assert not np.array_equal(a, assign_split(100, 0.05, seed=0, task="dmc/b"))
    assert assign_split(4, 0.05, 0, "dmc/a").sum() == 1 and assign_split(1, 0.5, 0, "dmc/a").sum() == 0
    assert assign_split(10, 0.0, 0, "dmc/a").sum() == 0
    with pytest.raises(ViperError, match="test_fraction 1.0"):
        assign_split(10, 1.0, 0, "dmc/a")


def test_trim_episode():
    ep = {"frames": np.arange(10), "rewards": np.arange(10) * 2}
    out = trim_episode(ep, 3)
    assert out["frames"].tolist() == list(range(3, 10)) and out["rewards"][0] == 6
    assert trim_episode(ep, 10) is None and trim_episode(ep, 0)["frames"].size == 10


def test_chunk_cache_on_a_url_store_uses_block_reads():
    url = f"memory://{uuid.uuid4().hex}/dmc.zarr"
    store = open_store(url, "a", chunk_frames=4, shard_frames=16)
    frames = np.zeros((37, 64, 64, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(37)
    store.append_episode("dmc/a", frames)
    group = open_store(url).task("dmc/a")
    assert not group.fast_reads
    cache = ChunkCache(capacity_chunks=2)
    for start, stop in ((0, 3), (2, 11), (30, 37), (5, 6), (1, 37)):
        assert frame_ids(cache.read(group, start, stop)) == list(range(start, stop))
        assert frame_ids(group.read_chunk(start // 4)) == list(range(start // 4 * 4, min(start // 4 * 4 + 4, 37)))
    assert cache.misses > 0 and cache.hits > 0


@pytest.mark.parametrize(("n_tasks", "batch_size", "world_size"), [(17, 64, 8), (17, 64, 4), (3, 8, 2), (2, 32, 4)])
def test_ranks_draw_their_share_of_the_global_batch(n_tasks, batch_size, world_size):
    """Under DDP the ranks' batches together are the one-device batch, place by place (the released code shards
    one global batch): 17 tasks on 8 ranks still see all 17 tasks, not 8 (each rank combining on its own)."""
    per_rank = batch_size // world_size
    for index in range(5):
        whole = [t for t, count in combine_order(n_tasks, batch_size, index) for _ in range(count)]
        shares = [rank_order(n_tasks, per_rank, index, rank, world_size) for rank in range(world_size)]
        assert [t for share in shares for t, count in share for _ in range(count)] == whole
        assert all(sum(count for _, count in share) == per_rank for share in shares)
    assert rank_order(n_tasks, batch_size, 3) == combine_order(n_tasks, batch_size, 3)
