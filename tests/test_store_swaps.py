"""Group swaps and working groups under kills and concurrent readers: a kill while a group is created, removed or
copied (remote stores) never blocks the next writer or loses the old data, and a reader never mixes two groups."""

from __future__ import annotations

import uuid

import fsspec
import numpy as np
import pytest
import zarr

from viper.data import location as location_lib
from viper.data.location import Location, hidden, promote
from viper.data.store import open_store
from viper.errors import ViperError

TASK = "dmc/cartpole_balance"
NAME = "cartpole_balance"


def episode(seed: int, length: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (length, 64, 64, 3), dtype=np.uint8)


def write(url, seeds, tag: str | None = None):
    """A task group (or, with ``tag``, a staging group) of one 20-frame episode per seed; 8-frame chunks in
    32-frame shards, so four episodes span three shard files."""
    store = open_store(url, "a", chunk_frames=8, shard_frames=32)
    group = store.staging(TASK, tag) if tag else None
    for seed in seeds:
        if group is None:
            store.append_episode(TASK, episode(seed))
        else:
            group.append(episode(seed))
    return store


def frames_of(group) -> list[np.ndarray]:
    return [group.read_episode(i)["frames"] for i in range(group.num_episodes)]


def test_a_remove_cut_short_leaves_no_half_group(tmp_path, monkeypatch):
    """rmtree deletes in directory order: the group's zarr.json could outlive its arrays, and every later
    writer failed on the broken group. zarr.json goes first now, so what a kill leaves is no group at all."""
    url = tmp_path / "dmc.zarr"
    write(url, [1, 2], tag="collecting")
    real_rmtree = location_lib.shutil.rmtree

    def killed(path, ignore_errors=False):
        real_rmtree(f"{path}/lengths")  # part of the group gone, then the process dies
        raise SystemExit("killed")

    monkeypatch.setattr(location_lib.shutil, "rmtree", killed)
    with pytest.raises(SystemExit):
        open_store(url, "a").discard_staging(TASK, "collecting")
    monkeypatch.undo()
    assert not Location(url).has_group(hidden(NAME, "collecting"))
    write(url, [3], tag="collecting")  # the next writer starts a fresh staging group
    assert frames_of(open_store(url, "a").staging(TASK, "collecting"))[0].tolist() == episode(3).tolist()


def test_an_incomplete_working_group_is_removed_on_open_not_a_dead_end(tmp_path, capsys):
    """A staging group whose creation was cut short (zarr.json written, arrays and attributes not yet)."""
    url = tmp_path / "dmc.zarr"
    write(url, [1])
    zarr.open_group(store=zarr.storage.LocalStore(url), path=hidden(NAME, "collecting"), mode="w")
    store = open_store(url, "a", task=TASK)
    assert "removing an incomplete working group" in capsys.readouterr().err
    assert not store.has_staging(TASK, "collecting") and store.task(TASK).num_episodes == 1


def test_a_task_group_cut_short_while_created_never_blocks_the_store(tmp_path, monkeypatch):
    """A kill inside create_task (before its attributes are written) used to leave a visible group without a
    schema: every writer of the store then failed on it. The group is built aside and moved into place."""
    url = tmp_path / "dmc.zarr"
    calls = []
    real = zarr.Group.update_attributes

    def killed(self, *args, **kwargs):
        calls.append(1)
        raise SystemExit("killed")

    monkeypatch.setattr(zarr.Group, "update_attributes", killed)
    with pytest.raises(SystemExit):
        open_store(url, "a").append_episode(TASK, episode(1))
    monkeypatch.setattr(zarr.Group, "update_attributes", real)
    assert calls and not Location(url).has_group(NAME)
    write(url, [2])  # the next writer opens the store and creates the task
    assert len(frames_of(open_store(url).task(TASK))) == 1


def test_a_reader_opened_before_a_swap_refuses_to_mix_the_groups(tmp_path):
    """Reads go by path: a handle opened before a re-collect swapped the group read the new group's shards
    through its old index (other frames, or zeros where no shard was). It refuses now, naming the remedy."""
    url = tmp_path / "dmc.zarr"
    write(url, [1, 2, 3, 4])
    reader = open_store(url).task(TASK)
    assert reader.fast_reads
    first = reader.read_episode(0)["frames"]  # opens shard 0: that file's version stays readable
    write(url, [9], tag="building")
    open_store(url, "a").promote(TASK, "building")
    np.testing.assert_array_equal(reader.read_episode(0)["frames"], first)
    with pytest.raises(ViperError, match="replaced .* since this reader opened it; open the store again"):
        reader.read_episode(3)  # shard 2: only the new group's path exists
    assert frames_of(open_store(url).task(TASK))[0].tolist() == episode(9).tolist()


def test_a_remote_reader_refuses_after_a_swap_too():
    url = f"memory://{uuid.uuid4().hex}/dmc.zarr"
    write(url, [1, 2])
    reader = open_store(url).task(TASK)
    write(url, [7, 8], tag="building")
    open_store(url, "a").promote(TASK, "building")
    with pytest.raises(ViperError, match="replaced"):
        reader.read_episode(1)


def test_a_swap_while_the_index_is_read_gives_the_new_group_whole(tmp_path, monkeypatch):
    """The commit record, then the index arrays: a swap between them paired one group's record with the
    other's arrays. The handle notices the uid changed and reads the new group again."""
    from viper.data.taskgroup import TaskGroup

    url = tmp_path / "dmc.zarr"
    write(url, [1, 2, 3])
    write(url, [5], tag="building")
    real = TaskGroup._read_index
    swapped = []

    def swap_first(self):
        if not swapped and self.name == NAME:
            swapped.append(1)
            promote(Location(url), hidden(NAME, "building"), NAME)
        real(self)

    monkeypatch.setattr(TaskGroup, "_read_index", swap_first)
    group = open_store(url).task(TASK)
    assert swapped and group.num_episodes == 1
    assert frames_of(group)[0].tolist() == episode(5).tolist()


def test_a_reader_is_told_of_an_interrupted_swap_instead_of_a_store_without_the_task(tmp_path):
    """A kill between moving the old group aside and the new one in: readers (which finish no swaps) skipped
    the task, so `viper tokenize` succeeded without it and training failed later, pointing elsewhere."""
    url = tmp_path / "dmc.zarr"
    write(url, [1, 2])
    write(url, [3], tag="ready")
    Location(url).rename(NAME, hidden(NAME, "old"))
    with pytest.raises(ViperError, match="cartpole_balance: this task's group is being replaced"):
        assert open_store(url).tasks
    with pytest.raises(ViperError, match="being replaced, or its writer was killed mid-swap"):
        open_store(url).task(TASK)
    assert frames_of(open_store(url, "a").task(TASK))[0].tolist() == episode(3).tolist()  # a writer finishes it


def test_a_remote_swap_cut_short_mid_copy_keeps_the_new_group():
    """On object stores a rename is a copy. A kill while copying `.T.ready` to T used to make recovery delete
    the old group and copy the new one *into* the half-copied T folder: the task vanished."""
    url = f"memory://{uuid.uuid4().hex}/dmc.zarr"
    write(url, [1, 2])
    write(url, [3, 4], tag="ready")
    where = Location(url)
    fs, root = fsspec.core.url_to_fs(url)
    where.rename(NAME, hidden(NAME, "old"))
    ready = f"{root}/{hidden(NAME, 'ready')}"
    for path in fs.find(ready)[:3]:  # the copy cut short: some arrays, no group zarr.json
        if not path.endswith(f"{hidden(NAME, 'ready')}/zarr.json"):
            fs.copy(path, f"{root}/{NAME}" + path[len(ready) :])
    assert fs.exists(f"{root}/{NAME}") and not where.has_group(NAME)
    group = open_store(url, "a").task(TASK)
    assert [f.tolist() for f in frames_of(group)] == [episode(3).tolist(), episode(4).tolist()]
    assert open_store(url).tasks == [TASK]


def test_a_remote_rename_copies_the_group_metadata_last(monkeypatch):
    """Whatever a kill interrupts, the target is a group only once all of it is there."""
    url = f"memory://{uuid.uuid4().hex}/dmc.zarr"
    write(url, [1, 2], tag="building")
    where = Location(url)
    copied = []
    real_copy = where.fs.copy

    def copy(src, dst, **kwargs):
        copied.append(dst)
        real_copy(src, dst, **kwargs)
        assert not where.has_group(hidden(NAME, "ready")) or dst.endswith(f"{hidden(NAME, 'ready')}/zarr.json")

    monkeypatch.setattr(where.fs, "copy", copy)
    where.rename(hidden(NAME, "building"), hidden(NAME, "ready"))
    assert copied[-1].endswith(f"{hidden(NAME, 'ready')}/zarr.json") and len(copied) > 5
    assert where.has_group(hidden(NAME, "ready")) and not where.has_group(hidden(NAME, "building"))


def test_tokens_re_written_while_being_read_are_read_from_one_group(tmp_path, monkeypatch):
    """read_tokens reads the attributes, then the arrays: a re-tokenize between them paired the old tokenizer's
    hash with the new tokens. It reads again until both come from one group."""
    from viper.data import tokens as tokens_lib

    url = tmp_path / "tok.zarr"
    old, new = (np.full((30, 8, 8), value, np.int16) for value in (1, 2))
    tokens_lib.write_tokens(url, TASK, old, np.array([30]), np.array([0]), "hash-old")
    real_open = tokens_lib.zarr.open_group
    calls = []

    def swap_after_open(*args, **kwargs):
        group = real_open(*args, **kwargs)
        if not calls:  # a re-tokenize lands after the attributes were read
            calls.append(dict(group.attrs))
            tokens_lib.write_tokens(url, TASK, new, np.array([30]), np.array([0]), "hash-new")
        return group

    monkeypatch.setattr(tokens_lib.zarr, "open_group", swap_after_open)
    got = tokens_lib.read_tokens(url, TASK)
    assert calls[0]["tokenizer_hash"] == "hash-old"
    assert got.tokenizer_hash == "hash-new" and (got.tokens == 2).all()


def test_tokens_caught_mid_swap_are_read_again_and_a_damaged_group_is_named(tmp_path, monkeypatch):
    """Between the old group moving aside and the new one moving in, the arrays are not there: read again (a
    traceback before). An array that stays missing is damage, said as such, not as a swap."""
    import shutil

    from viper.data import tokens as tokens_lib

    url = tmp_path / "tok.zarr"
    tokens_lib.write_tokens(url, TASK, np.ones((30, 8, 8), np.int16), np.array([30]), np.array([0]), "hash")
    real_open = tokens_lib.zarr.open_group
    calls = []

    def missing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise zarr.errors.GroupNotFoundError("mid-swap")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(tokens_lib.zarr, "open_group", missing_once)
    assert (tokens_lib.read_tokens(url, TASK).tokens == 1).all() and len(calls) == 2
    monkeypatch.undo()
    shutil.rmtree(url / NAME / "split")
    with pytest.raises(ViperError, match=r"cannot be read .*; run `viper tokenize` to write it again"):
        tokens_lib.read_tokens(url, TASK)
