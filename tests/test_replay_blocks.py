"""Replay checkpoints as blocks: a save links the whole blocks of the previous save, a load restores exactly the
buffer that was saved, and the checkpoint's checksums of linked blocks are carried over unread."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import viper.file_integrity as integrity
from viper.agent import replay as replay_lib
from viper.agent.replay import Replay, is_block_file, read_saved
from viper.checkpoint import Checkpointer
from viper.errors import ViperError

SPEC = {"image": ((2, 2, 3), np.uint8), "step": ((), np.int64), "is_first": ((), bool)}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(replay_lib, "BLOCK_STEPS", 100)


class Recorded:
    """A replay and, beside it, every step ever added to each stream in a plain list (the reference)."""

    def __init__(self, capacity: int, streams: int, seed: int = 0):
        self.replay = Replay(capacity, streams, SPEC, seed)
        self.steps: list[list[int]] = [[] for _ in range(streams)]

    def add(self, n: int, streams: list[int] | None = None) -> None:
        for _ in range(n):
            idx = list(range(self.replay.streams)) if streams is None else streams
            values = [1000 * s + len(self.steps[s]) for s in idx]
            self.replay.add(
                {
                    "image": np.broadcast_to(
                        (np.asarray(values) % 256).astype(np.uint8)[:, None, None, None], (len(idx), 2, 2, 3)
                    ),
                    "step": np.asarray(values, np.int64),
                    "is_first": np.asarray([v % 37 == 0 for v in values]),
                },
                np.asarray(idx),
            )
            for s, v in zip(idx, values, strict=True):
                self.steps[s].append(v)

    def expected(self, stream: int) -> list[int]:
        """The steps the ring still holds: the newest ``capacity`` ones."""
        return self.steps[stream][-self.replay.capacity :]


def test_incremental_saves_link_whole_blocks_and_round_trip_through_the_ring(tmp_path):
    rec = Recorded(capacity=2 * 550, streams=2)  # 550 steps per stream: not a multiple of the block size
    rec.add(230)
    rec.add(45, streams=[1])
    saves = []
    for n in range(6):  # past the ring's first wrap (550 steps) and the buffer's growth
        saves.append(tmp_path / f"save{n}")
        rec.replay.save(saves[-1], saves[-2] if n else None)
        for stream, steps in read_saved(saves[-1]).items():
            assert steps["step"].tolist() == rec.expected(stream)
            assert (steps["image"][:, 0, 0, 0] == np.asarray(rec.expected(stream)) % 256).all()
        rec.add(130)

    # Whole blocks are the previous save's files (one inode); each stream's partial newest block is written anew.
    meta = json.loads((saves[-1] / "replay.json").read_text())
    blocks = json.loads((saves[-2] / "replay.json").read_text())["blocks"]
    whole_before = {e["file"] for e in blocks if e["stop"] - e["start"] == replay_lib.BLOCK_STEPS}
    assert len(whole_before) >= 4
    for entry in meta["blocks"]:
        for key in SPEC:  # every key's file of a block is linked, or none
            name = f"{entry['file']}.{key}.npy"
            shared = (saves[-2] / name).exists() and os.path.samefile(saves[-1] / name, saves[-2] / name)
            assert shared == (entry["file"] in whole_before), (entry, key)
    # The oldest block's first steps were overwritten in memory, yet its linked file still holds them.
    oldest = min(meta["blocks"], key=lambda e: (e["stream"], e["start"]))
    assert oldest["start"] < meta["count"][oldest["stream"]] - rec.replay.capacity

    # A load restores the very buffer: same layout, counters and sampling RNG, so the same draws follow.
    rec.replay.save(tmp_path / "last", saves[-1])
    loaded = Replay(1100, 2, SPEC, seed=9)
    loaded.load(tmp_path / "last")
    assert loaded.alloc == rec.replay.alloc and loaded.count.tolist() == rec.replay.count.tolist()
    a, b = rec.replay.sample(64, 20), loaded.sample(64, 20)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_a_save_of_another_buffer_is_never_linked(tmp_path):
    """Blocks carry no content check of their own: only a save of the same buffer's history may be linked."""
    first, other = Recorded(400, 1), Recorded(400, 1, seed=1)
    first.add(250)
    other.add(250)
    other.replay.save(tmp_path / "other")
    first.replay.save(tmp_path / "first", previous=tmp_path / "other")
    assert not any(os.path.samefile(p, tmp_path / "other" / p.name) for p in (tmp_path / "first").glob("*.npy"))
    # A loaded buffer continues its lineage: its next save links the blocks of the save it came from.
    resumed = Replay(400, 1, SPEC, seed=0)
    resumed.load(tmp_path / "first")
    resumed.save(tmp_path / "next", previous=tmp_path / "first")
    name = "s000_b0000000.image.npy"
    assert os.path.samefile(tmp_path / "next" / name, tmp_path / "first" / name)


def test_checkpoints_from_before_the_blocks_still_load(tmp_path):
    rec = Recorded(600, 2)
    rec.add(350)
    folder = tmp_path / "old"
    folder.mkdir()
    for key, array in rec.replay.data.items():  # the whole-array layout of earlier saves
        np.save(folder / f"{key}.npy", array)
    meta = {
        "capacity": 300,
        "streams": 2,
        "alloc": rec.replay.alloc,
        "count": rec.replay.count.tolist(),
        "rng": rec.replay.rng.bit_generator.state,
    }
    (folder / "replay.json").write_text(json.dumps(meta))
    loaded = Replay(600, 2, SPEC, seed=5)
    loaded.load(folder)
    a, b = rec.replay.sample(16, 10), loaded.sample(16, 10)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    loaded.save(tmp_path / "new")
    assert read_saved(tmp_path / "new")[1]["step"].tolist() == rec.expected(1)


def checkpoint_saver(ckpt: Checkpointer, replay: Replay):
    """``save(step)`` as ``viper train-agent`` saves: the replay linked from the latest checkpoint's."""

    def save(step: int) -> None:
        previous = ckpt.latest_path()
        ckpt.save(step, {"step": step}, extra=lambda f: replay.save(f / "replay", previous and previous / "replay"))

    return save


def test_checkpoints_carry_linked_blocks_checksums_and_a_damaged_block_is_found(tmp_path, monkeypatch):
    rec = Recorded(4000, 1)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    save = checkpoint_saver(ckpt, rec.replay)

    rec.add(450)
    save(1)
    read = []
    real = integrity.file_crc32c
    monkeypatch.setattr(integrity, "file_crc32c", lambda path: read.append(path.name) or real(path))
    rec.add(300)
    save(2)
    # Blocks 0-3 were whole at step 1: linked, not read again. Block 4 (partial then) and the new ones are read.
    read_blocks = sorted(n for n in read if n.endswith(".image.npy"))
    assert read_blocks == [f"s000_b000000{b}.image.npy" for b in (4, 5, 6, 7)]
    assert len([n for n in read if n.startswith("s000_b")]) == 4 * len(SPEC)
    recorded = json.loads((tmp_path / "ckpt" / "step_000000002" / "checksums.json").read_text())
    for name, crc in recorded.items():
        assert crc == real(tmp_path / "ckpt" / "step_000000002" / name), name
    state, path = ckpt.load_latest()
    assert state["step"] == 2
    # A damaged linked block damages both checkpoints that share it: none resumes silently with wrong steps.
    block = path / "replay" / "s000_b0000001.image.npy"
    data = bytearray(block.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(block, "r+b") as handle:  # in place, as a bad sector would: the inode stays shared
        handle.write(bytes(data))
    with pytest.raises(ViperError, match="no readable checkpoint left"):
        ckpt.load_latest()


def test_a_block_that_cannot_be_linked_is_written_from_memory(tmp_path):
    """A previous block file gone (or a filesystem without hard links): the block is saved from the buffer, not
    copied (a copy would be checksummed anew and certify whatever the old file holds now)."""
    rec = Recorded(1000, 1)
    rec.add(350)
    rec.replay.save(tmp_path / "a")
    (tmp_path / "a" / "s000_b0000001.step.npy").unlink()
    rec.add(10)
    rec.replay.save(tmp_path / "b", previous=tmp_path / "a")
    assert read_saved(tmp_path / "b")[0]["step"].tolist() == rec.expected(0)
    assert not os.path.samefile(tmp_path / "b" / "s000_b0000001.image.npy", tmp_path / "a" / "s000_b0000001.image.npy")
    assert os.path.samefile(tmp_path / "b" / "s000_b0000000.image.npy", tmp_path / "a" / "s000_b0000000.image.npy")


def test_a_damaged_block_costs_the_steps_up_to_it_not_the_run(tmp_path):
    """Kept checkpoints share blocks, so one bad block damaged all of them and the run started anew. Told to
    tolerate block files, the latest loads: each stream keeps only its steps after its last damaged block (the
    sequences stay contiguous), and the next save holds no damaged byte."""
    rec = Recorded(4000, 2)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    save = checkpoint_saver(ckpt, rec.replay)

    rec.add(450)
    save(1)
    rec.add(300)
    save(2)
    block = ckpt.latest_path() / "replay" / "s001_b0000002.step.npy"  # stream 1, steps 200-299
    data = bytearray(block.read_bytes())
    data[-3] ^= 0xFF
    with open(block, "r+b") as handle:
        handle.write(bytes(data))
    state, folder = ckpt.load_latest(tolerate=is_block_file)
    assert state["step"] == 2 and ckpt.damaged_files == ["replay/s001_b0000002.step.npy"]
    resumed = Replay(4000, 2, SPEC, seed=0)
    assert resumed.load(folder / "replay", damaged=("s001_b0000002.step.npy",)) == 300
    assert resumed.sizes().tolist() == [750, 450]
    batch = resumed.sample(200, 20)["step"]
    assert (batch % 1000 >= 300)[batch >= 1000].all() and (np.diff(batch, axis=1) == 1).all()
    resumed.add({k: np.zeros((2, *s), d) for k, (s, d) in SPEC.items()})
    resumed.save(tmp_path / "next", previous=folder / "replay")
    kept = read_saved(tmp_path / "next")
    assert kept[1]["step"][:-1].tolist() == rec.expected(1)[300:] and len(kept[0]["step"]) == 751
    assert not (tmp_path / "next" / "s001_b0000002.step.npy").exists()
    # Not told to tolerate (or a file that is not a block), the checkpoint is unreadable as before.
    assert not is_block_file("replay/replay.json") and not is_block_file("state.pt")


def test_a_stream_emptied_by_a_damaged_newest_block_saves_no_empty_block(tmp_path):
    rec = Recorded(1000, 1)
    rec.add(250)  # blocks 0, 1 whole; block 2 partial (200-249)
    rec.replay.save(tmp_path / "a")
    resumed = Replay(1000, 1, SPEC, seed=0)
    assert resumed.load(tmp_path / "a", damaged=("s000_b0000002.image.npy",)) == 250 and len(resumed) == 0
    resumed.save(tmp_path / "b", previous=tmp_path / "a")
    assert json.loads((tmp_path / "b" / "replay.json").read_text())["blocks"] == []
    resumed.add({k: np.ones((1, *s), d) for k, (s, d) in SPEC.items()})
    resumed.save(tmp_path / "c", previous=tmp_path / "b")
    assert read_saved(tmp_path / "c")[0]["step"].tolist() == [1]
