"""One task's group of a video store (``viper.data.store`` documents the on-disk schema): reading committed
episodes and appending new ones atomically.

The append order is what makes a kill harmless: frame rows first, then the per-episode rows, then the commit
record (``num_episodes`` / ``num_frames`` in the group's ``zarr.json``, one atomic file replace). Readers trust
only the commit record; ``repair`` trims rows a killed writer left past it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from viper.data.fastread import DAMAGED, ShardedFrames
from viper.errors import ViperError

SCHEMA_VERSION = 1
FRAME_SHAPE = (64, 64, 3)
SPLITS = {"train": 0, "test": 1}
EPISODE_ARRAYS = {
    "episode_ends": np.int64,
    "lengths": np.int64,
    "returns": np.float32,
    "split": np.uint8,
    "episode_ids": np.int64,
}
FRAME_ARRAYS = ("frames", "actions", "rewards")
INDEX_CHUNK = 4096


@contextlib.contextmanager
def _damage(where: str, what: str):
    """Stored bytes that do not decode (flipped bytes: the codec's RuntimeError or ValueError) or a shard cut short
    (a read at a negative offset: EINVAL) become an error naming the group and the way out. Other OS errors (too
    many open files, timeouts of a remote store) pass unchanged: they say nothing about the stored data."""
    try:
        yield
    except (OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.EINVAL:
            raise
        raise ViperError(f"{where}: {what} cannot be read ({exc}); {DAMAGED}") from exc


class TaskGroup:
    """One task's episodes; only committed episodes are visible (call ``refresh`` to see newer ones)."""

    def __init__(
        self, zstore: zarr.abc.store.Store, name: str, mode: str, where: str, local_dir: Path | None = None
    ) -> None:
        self._zstore = zstore
        self._mode = mode
        self._local_dir = local_dir
        self._fast: ShardedFrames | None = None
        self.name = name
        self.where = where
        self.refresh()

    def refresh(self) -> None:
        """Re-read the commit record and the per-episode index (sees episodes committed since opening)."""
        for _ in range(3):
            self._group = zarr.open_group(store=self._zstore, path=self.name, mode=self._mode)
            self.uid = self._group.attrs.get("uid")
            try:
                self._sync()
            except ViperError:
                if self._current_uid() == self.uid:
                    raise
                continue  # replaced while its index was read (a swap, see ``promote``): read the new group
            if self._current_uid() == self.uid:
                return
        raise self._replaced()

    def _current_uid(self) -> str | None:
        """The ``uid`` in the group's ``zarr.json`` now (None where no group is, e.g. mid-swap)."""
        if self._local_dir is not None:
            try:
                return json.loads((self._local_dir / "zarr.json").read_text()).get("attributes", {}).get("uid")
            except FileNotFoundError:
                return None
        try:
            return zarr.open_group(store=self._zstore, path=self.name, mode="r").attrs.get("uid")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return None

    def _replaced(self) -> ViperError:
        return ViperError(
            f"{self.where}: the task was replaced (re-collected or re-imported) since this reader opened it; "
            "open the store again to read the new episodes"
        )

    def _check_same(self) -> None:
        """Reads go by path, so after a swap they would reach the new group's bytes through this handle's old
        index (other frames, or zeros where the new group has no shard): refuse instead."""
        if self._current_uid() != self.uid:
            raise self._replaced()

    def _sync(self) -> None:
        try:
            self._read_index()
        except KeyError as exc:  # a deleted array or attribute
            raise ViperError(f"{self.where}: damaged task group, {exc} is missing; {DAMAGED}") from None

    def _read_index(self) -> None:
        attrs = dict(self._group.attrs)
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise ViperError(
                f"{self.where}: not a viper task group (schema_version {attrs.get('schema_version')!r}, "
                f"expected {SCHEMA_VERSION})"
            )
        self.attrs: dict[str, Any] = attrs
        self.task: str = attrs["task"]
        self.num_episodes = int(attrs["num_episodes"])
        self.num_frames = int(attrs["num_frames"])
        self._frames = self._group["frames"]
        if self._fast is not None:
            self._fast.close()
        # Local stores read frames without zarr's per-call thread hops (viper/data/fastread.py).
        # An open shard file keeps the version indexed here; opening one checks the group is still this one
        # (through a weak reference: the reader's open files close when this handle is dropped, not at a gc).
        handle = weakref.ref(self)

        def check() -> None:
            if (group := handle()) is not None:
                group._check_same()

        local = self._local_dir
        self._fast = ShardedFrames.open(local / "frames", on_open=check) if local is not None else None
        index = {k: self._group[k][: self.num_episodes] for k in EPISODE_ARRAYS}
        if self._frames.shape[0] < self.num_frames or any(len(v) < self.num_episodes for v in index.values()):
            raise ViperError(f"{self.where}: corrupt store, arrays are shorter than the commit record")
        self.episode_ends: np.ndarray = index["episode_ends"]
        self.lengths: np.ndarray = index["lengths"]
        self.returns: np.ndarray = index["returns"]
        self.split: np.ndarray = index["split"]
        self.episode_ids: np.ndarray = index["episode_ids"]
        ends_ok = self.num_episodes == 0 or self.episode_ends[-1] == self.num_frames
        if not ends_ok or not np.array_equal(np.diff(self.episode_ends, prepend=0), self.lengths):
            raise ViperError(f"{self.where}: corrupt store, episode_ends disagree with lengths/num_frames")

    @property
    def identity(self) -> str:
        """16 hex digits naming the committed content: changes when episodes are appended or the task is
        replaced (re-collected, re-imported), not when the store is only read or repaired."""
        record = {k: self.attrs.get(k) for k in ("task", "uid", "created", "num_episodes", "num_frames", "source")}
        digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode())
        for array in (self.episode_ends, self.split, self.episode_ids):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]

    @property
    def has_actions(self) -> bool:
        return "actions" in self._group

    @property
    def has_rewards(self) -> bool:
        return "rewards" in self._group

    @property
    def chunk_frames(self) -> int:
        """Frames per compressed chunk (the unit of decoding)."""
        return int(self._frames.chunks[0])

    def episode_range(self, i: int) -> tuple[int, int]:
        """Frame range ``[start, stop)`` of episode ``i`` in the concatenated arrays."""
        if not 0 <= i < self.num_episodes:
            raise ViperError(f"{self.where}: episode {i} out of range (task has {self.num_episodes} episodes)")
        stop = int(self.episode_ends[i])
        return stop - int(self.lengths[i]), stop

    def read_frames(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` of the concatenated array: uint8 (stop - start, 64, 64, 3)."""
        if not 0 <= start <= stop <= self.num_frames:
            raise ViperError(f"{self.where}: frames [{start}, {stop}) out of range (task has {self.num_frames} frames)")
        with _damage(self.where, f"frames [{start}, {stop})"):
            if self._fast is not None:
                return self._fast.read(start, stop)
            frames = self._frames[start:stop]
        self._check_same()
        return frames

    @property
    def fast_reads(self) -> bool:
        """True when frames are read by the direct shard reader (local stores)."""
        return self._fast is not None

    def read_chunk(self, c: int) -> np.ndarray:
        """Decoded chunk ``c``: frames ``[c * chunk_frames, min((c + 1) * chunk_frames, num_frames))``."""
        lo, hi = c * self.chunk_frames, min((c + 1) * self.chunk_frames, self.num_frames)
        if not 0 <= lo < hi:
            raise ViperError(f"{self.where}: chunk {c} out of range (task has {self.num_frames} frames)")
        with _damage(self.where, f"chunk {c}"):
            if self._fast is not None:
                return self._fast.chunk(c)[: hi - lo]
            frames = self._frames[lo:hi]
        self._check_same()
        return frames

    def read_episode(self, i: int) -> dict[str, np.ndarray]:
        """``frames`` uint8 (L, 64, 64, 3) and, when stored, ``actions`` float32 (L, A), ``rewards`` (L,)."""
        start, stop = self.episode_range(i)
        out = {"frames": self.read_frames(start, stop)}
        for key in ("actions", "rewards"):
            if key in self._group:
                with _damage(self.where, f"{key} [{start}, {stop})"):
                    out[key] = self._group[key][start:stop]
        if len(out) > 1:
            self._check_same()
        return out

    def episodes(self, split: str = "all") -> np.ndarray:
        """Indices (int64) of the episodes in ``split``: ``train``, ``test`` or ``all``."""
        if split == "all":
            return np.arange(self.num_episodes, dtype=np.int64)
        if split not in SPLITS:
            raise ViperError(f"split {split!r}: expected one of train, test, all")
        return np.flatnonzero(self.split == SPLITS[split]).astype(np.int64)

    # -- writing ---------------------------------------------------------------------------------------

    def append(
        self,
        frames: np.ndarray,
        actions: np.ndarray | None = None,
        rewards: np.ndarray | None = None,
        split: str = "train",
        task_return: float | None = None,
        episode_id: int | None = None,
    ) -> int:
        """Append one episode atomically; returns its index. Shapes: frames uint8 (L, 64, 64, 3), actions
        float32 (L, A), rewards float32 (L,). ``task_return`` defaults to ``rewards.sum()`` (else NaN)."""
        frames, actions, rewards = self._check_episode(frames, actions, rewards, split)
        n, e, length = self.num_frames, self.num_episodes, len(frames)
        # 1. Frame rows past the committed end; a kill here leaves rows that repair trims.
        _write_rows(self._frames, n, frames)
        for key, value in (("actions", actions), ("rewards", rewards)):
            if value is not None:
                if key not in self._group:
                    self._create_rows(key, value)
                _write_rows(self._group[key], n, value)
        # 2. The episode's index rows.
        if task_return is None:
            task_return = float(rewards.sum(dtype=np.float64)) if rewards is not None else float("nan")
        row = {
            "episode_ends": n + length,
            "lengths": length,
            "returns": task_return,
            "split": SPLITS[split],
            "episode_ids": e if episode_id is None else episode_id,
        }
        for key, dtype in EPISODE_ARRAYS.items():
            _write_rows(self._group[key], e, np.asarray([row[key]], dtype=dtype))
        # 3. Commit: one atomic rewrite of the group's zarr.json.
        # (update_attributes writes once; attrs.update would write once per key)
        self._group.update_attributes({"num_episodes": e + 1, "num_frames": n + length})
        self._sync()
        return e

    def _check_episode(self, frames, actions, rewards, split):
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != FRAME_SHAPE or not len(frames):
            raise ViperError(f"{self.where}: frames must be uint8 (L>=1, 64, 64, 3), got {frames.dtype} {frames.shape}")
        if split not in SPLITS:
            raise ViperError(f"{self.where}: split {split!r}, expected 'train' or 'test'")
        length = len(frames)
        if self.num_episodes and (actions is None) == self.has_actions:
            raise ViperError(f"{self.where}: every episode must have actions, or none (has_actions={self.has_actions})")
        if self.num_episodes and (rewards is None) == self.has_rewards:
            raise ViperError(f"{self.where}: every episode must have rewards, or none")
        if actions is not None:
            actions = np.asarray(actions, dtype=np.float32)
            if actions.ndim != 2 or len(actions) != length:
                raise ViperError(f"{self.where}: actions must be (L={length}, A), got {actions.shape}")
            if self.has_actions and actions.shape[1] != self._group["actions"].shape[1]:
                raise ViperError(
                    f"{self.where}: actions have {actions.shape[1]} dims, store has {self._group['actions'].shape[1]}"
                )
        if rewards is not None:
            rewards = np.asarray(rewards, dtype=np.float32)
            if rewards.shape != (length,):
                raise ViperError(f"{self.where}: rewards must be (L={length},), got {rewards.shape}")
        return frames, actions, rewards

    def _create_rows(self, key: str, like: np.ndarray) -> None:
        # Small rows: one chunk per shard's worth of frames keeps the file count as low as the frames'.
        rows = int(self._frames.shards[0]) if self._frames.shards else self.chunk_frames
        self._group.create_array(
            key,
            shape=(0, *like.shape[1:]),
            dtype=np.float32,
            chunks=(rows, *like.shape[1:]),
            compressors=zarr.codecs.ZstdCodec(level=3),
        )

    def repair(self) -> None:
        """Trim every array back to the commit record (rows a killed writer left past it)."""
        for key in self._group.array_keys():
            if key not in EPISODE_ARRAYS and key not in FRAME_ARRAYS:
                continue
            arr = self._group[key]
            keep = self.num_episodes if key in EPISODE_ARRAYS else self.num_frames
            if arr.shape[0] > keep:
                arr.resize((keep, *arr.shape[1:]))

    @property
    def mask(self) -> np.ndarray | None:
        """bool (64, 64) pixel mask (True = kept; Atari scoreboards False) if the group has one, else None."""
        return self._group["mask"][:] if "mask" in self._group else None

    def set_mask(self, mask: np.ndarray) -> None:
        """Keep the published Atari pixel mask, bool (64, 64), with the task's videos (the HDF5 export carries
        it). Training and scoring mask frames with ``viper.envs.atari_mask`` instead (scoreboard masks measured
        on this code's frames), so that agents' frames, which never pass through the store, are masked alike."""
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != FRAME_SHAPE[:2]:
            raise ViperError(f"{self.where}: mask must be bool {FRAME_SHAPE[:2]}, got {mask.dtype} {mask.shape}")
        self._group.create_array("mask", data=mask, overwrite=True)


def _write_rows(arr: zarr.Array, start: int, rows: np.ndarray) -> None:
    """Write ``rows`` at ``[start, start + len(rows))``, growing (or trimming stale rows of) the array."""
    stop = start + len(rows)
    if arr.shape[0] != stop:
        arr.resize((stop, *arr.shape[1:]))
    arr[start:stop] = rows
