"""Replay: one growing ring buffer per environment stream, uniform over fixed-length sequences.

Each step row holds the observation at t, the action taken at t, the reward received on arriving at t and
the flags of t (``is_first``, ``is_last``, ``is_terminal``): the layout of DreamerV3's replay. A stream is the
concatenation of its env's episodes; sampled sequences may cross an episode boundary (``is_first`` resets
the RSSM there) and always start with ``is_first`` set, as the 2023 replay does. Storage grows by doubling up
to ``capacity_steps / streams`` per stream, then overwrites the oldest steps. The whole buffer (arrays,
counters and the sampling RNG) is saved into and restored from a checkpoint folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

INITIAL_ALLOC = 1024
"""Steps allocated per stream before the first doubling."""


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
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return int(self.sizes().sum())

    def sizes(self) -> np.ndarray:
        """Steps currently stored per stream."""
        return np.minimum(self.count, self.capacity)

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

    def save(self, folder: str | Path) -> None:
        """Write arrays (``<key>.npy``), counters and the RNG state into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for key, array in self.data.items():
            np.save(folder / f"{key}.npy", array)
        meta = {
            "capacity": self.capacity,
            "streams": self.streams,
            "alloc": self.alloc,
            "count": self.count.tolist(),
            "rng": self.rng.bit_generator.state,
        }
        (folder / "replay.json").write_text(json.dumps(meta))

    def load(self, folder: str | Path) -> None:
        """Restore what ``save`` wrote; the stream count and keys must match this buffer's."""
        folder = Path(folder)
        meta = json.loads((folder / "replay.json").read_text())
        assert meta["streams"] == self.streams, f"{folder}: replay of {meta['streams']} streams, not {self.streams}"
        self.capacity, self.alloc = meta["capacity"], meta["alloc"]
        self.count = np.asarray(meta["count"], np.int64)
        self.data = {k: np.load(folder / f"{k}.npy") for k in self.spec}
        self.rng.bit_generator.state = meta["rng"]
