"""Video store and token store: round trips, atomic append with repair, URLs, group swaps, bad input."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from viper.data import location as location_lib
from viper.data.store import open_store
from viper.data.tokens import StaleTokensError, read_tokens, token_tasks, write_tokens
from viper.errors import ViperError

TASK = "dmc/cartpole_balance"


def episode(seed: int, length: int | None = None, actions: int = 2):
    rng = np.random.default_rng(seed)
    length = length or int(rng.integers(5, 60))
    frames = rng.integers(0, 255, (length, 64, 64, 3), dtype=np.uint8)
    act = rng.normal(size=(length, actions)).astype(np.float32)
    rew = rng.normal(size=length).astype(np.float32)
    return frames, act, rew


def fill(url, n=4, task=TASK, **kwargs):
    store = open_store(url, "a", chunk_frames=8, shard_frames=32)
    eps = [episode(i) for i in range(n)]
    for i, (f, a, r) in enumerate(eps):
        split = "test" if i % 3 == 2 else "train"
        store.append_episode(task, f, a, r, split=split, attrs={"action_repeat": 2, "source": {"policy": "x"}})
    return eps


def check(group, eps):
    assert group.num_episodes == len(eps)
    lengths = [len(e[0]) for e in eps]
    np.testing.assert_array_equal(group.lengths, lengths)
    np.testing.assert_array_equal(group.episode_ends, np.cumsum(lengths))
    assert group.num_frames == sum(lengths)
    for i, (f, a, r) in enumerate(eps):
        got = group.read_episode(i)
        np.testing.assert_array_equal(got["frames"], f)
        np.testing.assert_array_equal(got["actions"], a)
        np.testing.assert_array_equal(got["rewards"], r)
        start, stop = group.episode_range(i)
        np.testing.assert_array_equal(group.read_frames(start + 1, stop), f[1:])
        assert group.returns[i] == pytest.approx(float(r.sum(dtype=np.float64)), rel=1e-5)


@pytest.mark.parametrize("kind", ["local", "file", "memory"])
def test_round_trip(tmp_path, kind):
    url = {
        "local": tmp_path / "dmc.zarr",
        "file": f"file://{tmp_path}/dmc.zarr",
        "memory": f"memory://{uuid.uuid4().hex}/dmc.zarr",
    }[kind]
    eps = fill(url, 5)
    store = open_store(url)
    assert store.tasks == [TASK]
    group = store.task(TASK)
    check(group, eps)
    assert group.attrs["action_repeat"] == 2 and group.attrs["source"] == {"policy": "x"}
    assert group.attrs["suite"] == "dmc" and group.chunk_frames == 8
    np.testing.assert_array_equal(group.episodes("test"), [2])
    np.testing.assert_array_equal(group.episodes("train"), [0, 1, 3, 4])
    np.testing.assert_array_equal(group.episodes("all"), np.arange(5))
    assert store.task("cartpole_balance").num_episodes == 5


def test_missing_root_metadata_and_several_groups(tmp_path):
    url = tmp_path / "dmc.zarr"
    fill(url, 2)
    fill(url, 3, task="dmc/cartpole_swingup")
    (url / "zarr.json").unlink()  # DVC tracks each task group; the root metadata may be absent
    (url / ".gitignore").write_text("/cartpole_balance\n")
    store = open_store(url)
    assert store.tasks == ["dmc/cartpole_balance", "dmc/cartpole_swingup"]
    assert store.task("dmc/cartpole_swingup").num_episodes == 3
    open_store(url, "a")
    assert (url / "zarr.json").is_file()


def test_uncommitted_rows_are_invisible_then_repaired(tmp_path):
    url = tmp_path / "dmc.zarr"
    eps = fill(url, 3)
    # A writer killed after writing frames and index rows but before the commit record.
    store = open_store(url, "a", chunk_frames=8, shard_frames=32)
    group = store.task(TASK)
    raw = group._group
    junk = np.full((20, 64, 64, 3), 7, np.uint8)
    raw["frames"].resize((group.num_frames + 20, 64, 64, 3))
    raw["frames"][group.num_frames :] = junk
    for key in ("episode_ends", "lengths", "returns", "split", "episode_ids"):
        raw[key].resize((4,))
    (url / "cartpole_balance" / "frames" / "zarr.abc.partial").write_bytes(b"half")
    reader = open_store(url).task(TASK)
    check(reader, eps)
    with pytest.raises(ViperError, match="out of range"):
        reader.read_frames(0, reader.num_frames + 1)
    repaired = open_store(url, "a", chunk_frames=8, shard_frames=32).task(TASK)
    assert repaired._group["frames"].shape[0] == repaired.num_frames
    assert repaired._group["lengths"].shape == (3,)
    assert not list(url.rglob("*.partial"))
    extra = episode(99)
    open_store(url, "a").append_episode(TASK, *extra)
    check(open_store(url).task(TASK), [*eps, extra])


def test_reader_sees_only_committed_until_refresh(tmp_path):
    url = tmp_path / "dmc.zarr"
    eps = fill(url, 2)
    reader = open_store(url).task(TASK)
    extra = episode(7)
    open_store(url, "a").append_episode(TASK, *extra)
    check(reader, eps)
    reader.refresh()
    check(reader, [*eps, extra])


def test_returns_without_rewards_and_explicit(tmp_path):
    store = open_store(tmp_path / "s.zarr", "a")
    frames = episode(0)[0]
    store.append_episode(TASK, frames)
    store.append_episode(TASK, frames, task_return=12.5, episode_id=40)
    group = store.task(TASK)
    assert np.isnan(group.returns[0]) and group.returns[1] == 12.5
    np.testing.assert_array_equal(group.episode_ids, [0, 40])
    assert not group.has_actions and set(group.read_episode(0)) == {"frames"}


def test_bad_input_errors(tmp_path):
    url = tmp_path / "dmc.zarr"
    with pytest.raises(ViperError, match="no video store"):
        open_store(url)
    with pytest.raises(ViperError, match="store URL foo://bucket/dmc.zarr: Protocol not known"):
        open_store("foo://bucket/dmc.zarr")
    store = open_store(url, "a")
    f, a, r = episode(0)
    with pytest.raises(ViperError, match=r"uint8 \(L>=1, 64, 64, 3\).*float64"):
        store.append_episode(TASK, f.astype(np.float64))
    with pytest.raises(ViperError, match=r"uint8 \(L>=1, 64, 64, 3\).*\(3, 32, 32, 3\)"):
        store.append_episode(TASK, f[:3, :32, :32])
    with pytest.raises(ViperError, match="split 'val'"):
        store.append_episode(TASK, f, split="val")
    with pytest.raises(ViperError, match="actions must be"):
        store.append_episode(TASK, f, a[:-1])
    with pytest.raises(ViperError, match="full name"):
        store.append_episode("cartpole_balance", f)
    store.append_episode(TASK, f, a, r)
    with pytest.raises(ViperError, match="actions, or none"):
        store.append_episode(TASK, f, None, r)
    with pytest.raises(ViperError, match="unknown task 'dmc/walker_walk'.*dmc/cartpole_balance"):
        store.task("dmc/walker_walk")
    # The folder above a suite's store (data/videos) names the stores it holds.
    parent = Path(store.url).parent
    for mode in ("r", "a"):  # neither read as an empty store nor made into one
        with pytest.raises(ViperError, match=rf"a folder of stores \(dmc.zarr\), not a store: pass e.g. {parent}/"):
            open_store(parent, mode)
    group = store.task(TASK)
    with pytest.raises(ViperError, match="episode 1 out of range.*1 episodes"):
        group.episode_range(1)
    with pytest.raises(ViperError, match="split 'dev'"):
        group.episodes("dev")
    with pytest.raises(ViperError, match="read-only"):
        open_store(url).append_episode(TASK, f)
    with pytest.raises(ViperError, match="multiple of chunk_frames"):
        open_store(url, "a", chunk_frames=10, shard_frames=32)


def test_staging_promote_and_interrupted_swap(tmp_path):
    url = tmp_path / "dmc.zarr"
    fill(url, 2)
    store = open_store(url, "a")
    staged = store.staging(TASK, "building", attrs={"action_repeat": 2})
    new = [episode(50), episode(51), episode(52)]
    for f, a, r in new:
        staged.append(f, a, r)
    assert open_store(url).task(TASK).num_episodes == 2  # hidden groups are not tasks
    assert open_store(url).tasks == [TASK]
    store.promote(TASK, "building")
    check(open_store(url).task(TASK), new)
    assert sorted(p.name for p in url.iterdir() if p.is_dir()) == ["cartpole_balance"]
    # Killed after moving the old group aside, before moving the ready one in: the next writer finishes it.
    newer = open_store(url, "a").staging(TASK, "ready")
    newer.append(*episode(60))
    location = location_lib.Location(url)
    location.rename("cartpole_balance", ".cartpole_balance.old")
    open_store(url, "a")
    check(open_store(url).task(TASK), [episode(60)])
    assert not (url / ".cartpole_balance.old").exists()


@pytest.mark.parametrize("url_kind", ["local", "memory"])
def test_tokens_round_trip_and_stale_hash(tmp_path, url_kind):
    url = tmp_path / "tok.zarr" if url_kind == "local" else f"memory://{uuid.uuid4().hex}/tok.zarr"
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (90, 8, 8)).astype(np.int16)
    write_tokens(url, TASK, tokens, np.array([30, 90]), np.array([0, 1]), "hash-a", codebook_size=64)
    got = read_tokens(url, TASK, "hash-a")
    np.testing.assert_array_equal(got.tokens, tokens)
    np.testing.assert_array_equal(got.lengths, [30, 60])
    assert got.grid == (8, 8) and got.codebook_size == 64 and got.split.tolist() == [0, 1]
    assert token_tasks(url) == [TASK]
    write_tokens(url, TASK, tokens[:30], np.array([30]), np.array([0]), "hash-b")
    assert read_tokens(url, TASK).tokens.shape == (30, 8, 8)
    with pytest.raises(StaleTokensError, match="hash-b.*expected hash-a"):
        read_tokens(url, TASK, "hash-a")
    with pytest.raises(ViperError, match=r"no tokens for task 'dmc/walker_walk'.*-S 'collect.tasks=\[...\]'"):
        read_tokens(url, "dmc/walker_walk")


def test_tokens_bad_input(tmp_path):
    url = tmp_path / "tok.zarr"
    good = np.zeros((10, 4, 4), np.int16)
    with pytest.raises(ViperError, match="int16"):
        write_tokens(url, TASK, good.astype(np.int64), [10], [0], "h")
    with pytest.raises(ViperError, match="end at N=10"):
        write_tokens(url, TASK, good, [4, 9], [0, 0], "h")
    with pytest.raises(ViperError, match=r"\[0, 4\)"):
        write_tokens(url, TASK, good + 5, [10], [0], "h", codebook_size=4)


def test_fast_local_reads_match_zarr(tmp_path):
    """The direct shard reader (local stores) returns exactly what zarr returns, incl. unwritten chunks."""
    store = open_store(tmp_path / "s.zarr", "a", chunk_frames=4, shard_frames=16)
    rng = np.random.default_rng(0)
    for i in range(6):
        frames = rng.integers(0, 3, (int(rng.integers(3, 15)), 64, 64, 3), dtype=np.uint8)
        if i == 2:
            frames[:] = 0  # whole zero chunks are not written by zarr: the reader must give zeros
        store.append_episode(TASK, frames)
    group = open_store(tmp_path / "s.zarr").task(TASK)
    assert group._fast is not None and open_store(f"memory://{uuid.uuid4().hex}", "a")._names() == []
    for _ in range(80):
        start = int(rng.integers(0, group.num_frames))
        stop = int(rng.integers(start, group.num_frames + 1))
        np.testing.assert_array_equal(group.read_frames(start, stop), group._frames[start:stop])
    assert group.read_frames(0, group.num_frames).flags.writeable
    # A corrupt shard index is reported, not decoded into garbage.
    shard = tmp_path / "s.zarr" / "cartpole_balance" / "frames" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ViperError, match="corrupt shard index"):
        open_store(tmp_path / "s.zarr").task(TASK).read_frames(16, 20)


def test_damaged_or_wrong_stores_are_errors_naming_them(tmp_path):
    """Flipped chunk bytes, a shard cut short, a deleted array, a token store, an empty folder: each a ViperError
    naming the path and the way out (they were codec / OS / KeyError tracebacks, or "0 task(s)")."""
    url = tmp_path / "dmc.zarr"
    fill(url, n=3)
    frames_dir = url / "cartpole_balance" / "frames" / "c"
    shard = sorted(p for p in frames_dir.rglob("*") if p.is_file())[0]
    data = bytearray(shard.read_bytes())
    data[0:16] = bytes(16)  # the first chunk's compressed frame header (chunks come first, the index last)
    shard.write_bytes(bytes(data))
    group = open_store(url).task(TASK)
    with pytest.raises(ViperError, match=r"cartpole_balance: (frames \[0, 8\)|chunk 0) cannot be read .* damaged"):
        group.read_chunk(0) if group.fast_reads else group.read_frames(0, 8)
    with pytest.raises(ViperError, match=r"cannot be read .*re-collect or re-import the task"):
        group.read_episode(0)
    shard.write_bytes(bytes(data[:20]))  # shorter than its index
    with pytest.raises(ViperError, match="damaged|corrupt shard index"):
        open_store(url).task(TASK).read_frames(0, 8)
    shutil.rmtree(url / "cartpole_balance" / "episode_ends")
    with pytest.raises(ViperError, match=r"cartpole_balance: damaged task group, 'episode_ends' is missing"):
        open_store(url).task(TASK)
    tokens = tmp_path / "tokens.zarr"
    write_tokens(tokens, TASK, np.zeros((4, 2, 2), np.int16), np.array([4]), np.array([0]), "hash-a")
    with pytest.raises(ViperError, match="kind 'viper-token-store'; expected a video store"):
        open_store(tokens)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ViperError, match="empty: not a video store .* e.g. data/videos/dmc.zarr"):
        open_store(tmp_path / "empty")


def test_only_damage_reads_as_damage():
    """A read error that says nothing about the stored bytes (too many open files, a remote timeout) passes
    unchanged: "the store is damaged, re-collect" would send users to throw away intact data."""
    import errno

    from viper.data.taskgroup import _damage

    for error in (OSError(errno.EMFILE, "Too many open files"), TimeoutError("read timed out")):
        with pytest.raises(type(error)), _damage("s.zarr/t", "chunk 0"):
            raise error
    for error in (OSError(errno.EINVAL, "Invalid argument"), RuntimeError("Zstd decompression error")):
        damaged = pytest.raises(ViperError, match="s.zarr/t: chunk 0 cannot be read .*`dvc checkout` restores")
        with damaged, _damage("s.zarr/t", "chunk 0"):
            raise error


def test_hidden_staging_groups_are_repaired_too(tmp_path):
    url = tmp_path / "dmc.zarr"
    staged = open_store(url, "a", chunk_frames=8, shard_frames=32).staging(TASK, "collecting")
    staged.append(*episode(1))
    raw = staged._group
    raw["frames"].resize((staged.num_frames + 9, 64, 64, 3))
    raw["lengths"].resize((2,))
    (url / ".cartpole_balance.collecting" / "frames" / "zarr.x.partial").write_bytes(b"")
    reopened = open_store(url, "a").staging(TASK, "collecting")
    assert reopened._group["frames"].shape[0] == reopened.num_frames and reopened._group["lengths"].shape == (1,)
    assert not list(url.rglob("*.partial"))
    reopened.append(*episode(2))
    check(open_store(url, "a").staging(TASK, "collecting"), [episode(1), episode(2)])


def test_a_writer_of_one_task_leaves_the_other_tasks_groups_alone(tmp_path):
    """The Prefect collect flow runs one `viper collect --task` per task into one store at once: a writer opened
    for one task must not trim, clean or swap the groups another task's writer is in the middle of."""
    url = tmp_path / "dmc.zarr"
    other = "dmc/cartpole_swingup"
    writer = open_store(url, "a", chunk_frames=8, shard_frames=32, task=other)
    writer.staging(other, "ready").append(*episode(2))  # a swap it is about to finish
    staged = writer.staging(other, "collecting")
    staged.append(*episode(1))
    # The other writer is mid-append: rows past its commit record and a temp file it is about to rename.
    staged._group["frames"].resize((staged.num_frames + 9, 64, 64, 3))
    temp = url / ".cartpole_swingup.collecting" / "frames" / "zarr.x.partial"
    temp.write_bytes(b"")
    open_store(url, "a", task=TASK).staging(TASK, "collecting").append(*episode(3))
    assert temp.exists() and staged._group["frames"].shape[0] == staged.num_frames + 9
    assert (url / ".cartpole_swingup.ready").exists()
    with pytest.raises(ViperError, match="cartpole_swingup: this task's group is being replaced"):
        assert open_store(url).tasks  # a reader is told, not shown a store without the task
    # Its own writer (or a whole-store one) repairs and finishes them.
    reopened = open_store(url, "a", task=other)
    assert not temp.exists() and reopened.staging(other, "collecting")._group["frames"].shape[0] == staged.num_frames
    check(open_store(url).task(other), [episode(2)])
