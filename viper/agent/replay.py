"""Replay: one growing ring buffer per environment stream, uniform over fixed-length sequences.

Each step row holds the observation at t, the action taken at t, the reward received on arriving at t and
the flags of t (``is_first``, ``is_last``, ``is_terminal``): the layout of DreamerV3's replay. A stream is the
concatenation of its env's episodes; sampled sequences may cross an episode boundary (``is_first`` resets
the RSSM there) and always start with ``is_first`` set, as the 2023 replay does. Storage grows by doubling up
to ``capacity_steps / streams`` per stream, then overwrites the oldest steps. The whole buffer (stored steps,
counters and the sampling RNG) is saved into and restored from a checkpoint folder.

A checkpoint stores each stream's steps in blocks of ``BLOCK_STEPS`` absolute steps, one ``.npy`` per key
(``s<stream>_b<block>.<key>.npy``).
A step never changes once added, so a block the previous checkpoint of the same buffer saved whole is hard-linked
from it instead of written again: a save writes only the steps added since the previous one (plus each stream's
partial newest block), and the checkpoints kept on disk share their blocks. At the published 1M-step replay a save
then costs seconds and ~0.1 GB rather than a 12 GB copy per checkpoint. Where a link fails (a filesystem
without hard links, a file gone) the block is written from memory.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import numpy as np

INITIAL_ALLOC = 1024
"""Steps allocated per stream before the first doubling."""
BLOCK_STEPS = 1024
"""Absolute steps per saved block file (12.7 MB of 64 x 64 x 3 frames)."""
META = "replay.json"


class Replay:
    """Uniform sequence replay over ``streams`` parallel env streams.

    ``spec`` maps each key to (per-step shape, dtype), e.g. ``{"image": ((64, 64, 3), np.uint8)}``.
    """

    def __init__(self, capacity_steps: int, streams: int, spec: dict[str, tuple[tuple, type]], seed: int):
        assert capacity_steps >= streams, "replay capacity below one step per stream"
        self.capacity = capacity_steps // streams
        self.streams = streams
        self.spec = {k: (tuple(shape), np.dtype(dtype)) for k, (shape, dtype) in spec.items()}
        self.alloc = min(INITIAL_ALLOC, self.capacity)
        self.data = {k: np.zeros((streams, self.alloc, *s), d) for k, (s, d) in self.spec.items()}
        self.count = np.zeros(streams, np.int64)
        """Steps ever added per stream (the absolute index of the next step)."""
        self.floor = np.zeros(streams, np.int64)
        """Per stream, the absolute index below which steps were dropped (a damaged block at resume)."""
        self.rng = np.random.default_rng(seed)
        self.lineage = uuid.uuid4().hex
        """Names this buffer's history across saves and loads: blocks are linked only from a save of the same."""

    def __len__(self) -> int:
        return int(self.sizes().sum())

    def sizes(self) -> np.ndarray:
        """Steps currently stored per stream."""
        return np.minimum(self.count - self.floor, self.capacity)

    def _grow(self) -> None:
        new = min(2 * self.alloc, self.capacity)
        for key, array in self.data.items():
            grown = np.zeros((self.streams, new, *array.shape[2:]), array.dtype)
            grown[:, : self.alloc] = array
            self.data[key] = grown
        self.alloc = new

    def add(self, step: dict[str, np.ndarray], streams: np.ndarray | None = None) -> None:
        """Append one step to each of ``streams`` (default all): every key's array has a leading stream axis."""
        idx = np.arange(self.streams) if streams is None else np.asarray(streams)
        assert set(step) == set(self.spec), f"replay keys {sorted(self.spec)} expected, got {sorted(step)}"
        # Before the first wrap positions equal absolute indices, so grow while any stream fills its block.
        while self.alloc < self.capacity and self.count[idx].max() >= self.alloc:
            self._grow()
        pos = self.count[idx] % self.alloc
        for key, value in step.items():
            self.data[key][idx, pos] = value
        self.count[idx] += 1

    def sample(self, batch: int, length: int) -> dict[str, np.ndarray]:
        """``batch`` sequences of ``length`` consecutive steps, uniform over all stored windows.

        Returns key -> (B, T, ...) copies; ``is_first[:, 0]`` is set (the RSSM starts every sequence fresh).
        """
        windows = np.maximum(self.sizes() - length + 1, 0)
        assert windows.sum() > 0, f"replay holds no sequence of {length} steps yet"
        stream = self.rng.choice(self.streams, size=batch, p=windows / windows.sum())
        offset = (self.rng.random(batch) * windows[stream]).astype(np.int64)
        first = self.count[stream] - self.sizes()[stream] + offset
        # (B, T) absolute step indices -> ring positions.
        pos = (first[:, None] + np.arange(length)[None]) % self.alloc
        out = {k: v[stream[:, None], pos] for k, v in self.data.items()}
        if "is_first" in out:
            out["is_first"][:, 0] = True
        return out

    def save(self, folder: str | Path, previous: str | Path | None = None) -> None:
        """Write the stored steps as blocks, with the counters and the RNG state, into ``folder``. Whole blocks
        that ``previous`` (an earlier save of this buffer, e.g. the last checkpoint's replay folder) holds are
        hard-linked from it rather than written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        reusable = _reusable_blocks(Path(previous), self.lineage) if previous is not None else {}
        blocks = []
        for stream in range(self.streams):
            first, stop = int(self.count[stream] - self.sizes()[stream]), int(self.count[stream])
            for block in range(first // BLOCK_STEPS, -(-stop // BLOCK_STEPS)):
                start, end = max(block * BLOCK_STEPS, first), min((block + 1) * BLOCK_STEPS, stop)
                if end <= start:  # a stream emptied at resume (its newest block was damaged)
                    continue
                name = f"s{stream:03d}_b{block:07d}"
                entry = {"file": name, "stream": stream, "start": start, "stop": end}
                old = reusable.get(name)
                if (
                    old is not None
                    and old["start"] <= start
                    and old["stop"] >= end
                    and _link_all(previous, folder, name, self.data)
                ):
                    entry.update(start=old["start"], stop=old["stop"])
                else:
                    for key, array in self.data.items():
                        np.save(folder / f"{name}.{key}.npy", array[stream, _ring_index(start, end, self.alloc)])
                blocks.append(entry)
        meta = {
            "capacity": self.capacity,
            "streams": self.streams,
            "alloc": self.alloc,
            "count": self.count.tolist(),
            "floor": self.floor.tolist(),
            "rng": self.rng.bit_generator.state,
            "lineage": self.lineage,
            "block_steps": BLOCK_STEPS,
            "blocks": blocks,
        }
        (folder / META).write_text(json.dumps(meta))

    def load(self, folder: str | Path, damaged: tuple[str, ...] = ()) -> int:
        """Restore what ``save`` wrote (or the whole-array ``<key>.npy`` files of checkpoints from before the
        blocks); the stream count and keys must match this buffer's. ``damaged`` names block files (relative to
        ``folder``) whose bytes are bad: each stream keeps only its steps after its last damaged block (the
        sequences stay contiguous). Returns the number of steps so dropped."""
        folder = Path(folder)
        meta = json.loads((folder / META).read_text())
        assert meta["streams"] == self.streams, f"{folder}: replay of {meta['streams']} streams, not {self.streams}"
        self.capacity, self.alloc = meta["capacity"], meta["alloc"]
        self.count = np.asarray(meta["count"], np.int64)
        self.floor = np.asarray(meta.get("floor", [0] * self.streams), np.int64)
        before = len(self)
        bad = {name.split(".", 1)[0] for name in damaged}
        for entry in meta.get("blocks", []):
            if entry["file"] in bad:
                self.floor[entry["stream"]] = max(self.floor[entry["stream"]], entry["stop"])
        meta = {**meta, "floor": self.floor.tolist()}
        self.rng.bit_generator.state = meta["rng"]
        self.lineage = meta.get("lineage", uuid.uuid4().hex)
        if "blocks" not in meta:
            self.data = {k: np.load(folder / f"{k}.npy") for k in self.spec}
            return 0
        self.data = {k: np.zeros((self.streams, self.alloc, *s), d) for k, (s, d) in self.spec.items()}
        for entry, lo, hi in _live_parts(meta):
            pos = _ring_index(entry["start"] + lo, entry["start"] + hi, self.alloc)
            for key in self.spec:
                block = np.load(folder / f"{entry['file']}.{key}.npy")
                self.data[key][entry["stream"], pos] = block[lo:hi]
        return before - len(self)


def _ring_index(start: int, stop: int, alloc: int) -> slice | np.ndarray:
    """Ring positions of absolute steps ``[start, stop)``: a slice unless the run wraps past the ring's end."""
    first = start % alloc
    if first + (stop - start) <= alloc:
        return slice(first, first + stop - start)
    return np.arange(start, stop) % alloc


def is_block_file(name: str) -> bool:
    """Whether ``name`` (relative to a checkpoint folder) is one of a saved replay's block files: a resume can do
    without one (``Replay.load(damaged=...)``), unlike ``replay.json`` or the agent's state."""
    return bool(re.fullmatch(r"replay/s\d+_b\d+\.[A-Za-z0-9_]+\.npy", name))


def read_saved(folder: str | Path) -> dict[int, dict[str, np.ndarray]]:
    """The steps a saved replay holds: stream -> key -> array of its stored steps, oldest first."""
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    parts: dict[int, dict[str, list]] = {s: {} for s in range(meta["streams"])}
    for entry, lo, hi in _live_parts(meta):
        for path in sorted(folder.glob(f"{entry['file']}.*.npy")):
            key = path.name[len(entry["file"]) + 1 : -len(".npy")]
            parts[entry["stream"]].setdefault(key, []).append(np.load(path)[lo:hi])
    return {s: {k: np.concatenate(v) for k, v in keys.items()} for s, keys in parts.items()}


def _live_parts(meta: dict) -> list[tuple[dict, int, int]]:
    """``(block entry, lo, hi)``: the rows ``[lo, hi)`` of each saved block that the buffer still holds (a linked
    oldest block keeps steps the ring has since overwritten), in the order of the listing (oldest first)."""
    count = np.asarray(meta["count"], np.int64)
    floor = np.asarray(meta.get("floor", [0] * len(count)), np.int64)
    first = count - np.minimum(count - floor, meta["capacity"])
    out = []
    for entry in meta["blocks"]:
        stream = entry["stream"]
        lo = max(entry["start"], int(first[stream])) - entry["start"]
        hi = min(entry["stop"], int(count[stream])) - entry["start"]
        if hi > lo:  # blocks wholly below a stream's floor hold no kept step
            out.append((entry, lo, hi))
    return out


def _reusable_blocks(previous: Path, lineage: str) -> dict[str, dict]:
    """The block entries of an earlier save of the same buffer that hold a whole block, by file name."""
    try:
        meta = json.loads((previous / META).read_text())
    except (OSError, ValueError):
        return {}
    if meta.get("lineage") != lineage or "blocks" not in meta:
        return {}
    return {e["file"]: e for e in meta["blocks"] if e["stop"] - e["start"] == meta["block_steps"]}


def _link_all(previous: str | Path, folder: Path, name: str, keys) -> bool:
    """Hard-link every key's file of block ``name`` from ``previous`` into ``folder``; False (nothing linked)
    where that fails: no hard links on this filesystem, or a file gone. The block is then written from memory,
    never copied: a copy would be checksummed anew and so certify bytes damaged since the previous save."""
    linked = []
    try:
        for key in keys:
            os.link(Path(previous) / f"{name}.{key}.npy", folder / f"{name}.{key}.npy")
            linked.append(folder / f"{name}.{key}.npy")
    except OSError:
        for path in linked:
            path.unlink()
        return False
    return True
