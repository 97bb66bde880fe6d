"""The Zarr video store: one store per suite, one group per task, ragged episodes concatenated along time.

Group ``<root>/<name>`` (``name`` = task without the suite prefix, e.g. ``cartpole_balance``) holds:

    frames        (N, 64, 64, 3) uint8   zstd(3) chunks of chunk_frames frames in shards of shard_frames
    actions       (N, A) float32         optional; row i is the action that led to frame i (an episode's first
                                         row: zeros, or after collect.drop_first_frames the action that led to
                                         its first kept frame)
    rewards       (N,) float32           optional; row i is the reward received on reaching frame i
    episode_ends  (E,) int64             exclusive end frame: episode i is frames [ends[i-1], ends[i])
    lengths       (E,) int64             frames per episode
    returns       (E,) float32           task return of the episode as rolled out, before drop_first_frames
                                         trimmed it (NaN if unknown, e.g. imported videos)
    split         (E,) uint8             0 train, 1 test
    episode_ids   (E,) int64             provenance: rollout index (collect) or file order (import)

Group attributes: ``schema_version``, ``suite``, ``task``, ``action_repeat``, ``source`` (policy, seed,
checksums, ...), ``created`` (UTC ISO time), ``uid`` (random, per created group) and the commit record
``num_episodes`` / ``num_frames``. A group is append-only, so ``uid`` plus the commit record and the episode
index identify its content (``TaskGroup.identity``: what trained models record to notice replaced data).

Atomic append: the frame rows (and actions/rewards) are written first, then the per-episode rows, and last the
commit record in the group's ``zarr.json`` (one atomic file replace). Readers trust only the commit record, so
they never see a half-written episode; opening with mode ``"a"`` trims arrays back to it ("repair on open").
Any number of readers may run beside the writers, one per task: a writer that opens the store for one task
(``open_store(url, "a", task=...)``, as ``collect`` does) repairs and finishes swaps of that task's groups only,
so writers of other tasks may run beside it; one that opens it for every task must be the only writer.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr

from viper.data.location import Location, belongs, hidden, promote, recover_swaps
from viper.data.taskgroup import EPISODE_ARRAYS, FRAME_SHAPE, INDEX_CHUNK, SCHEMA_VERSION, TaskGroup
from viper.errors import ViperError


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _check_full(task: str) -> None:
    if "/" not in task:
        raise ViperError(f"task {task!r}: expected a full name <suite>/<task>, e.g. dmc/cartpole_balance")


def _short(task: str) -> str:
    return task.split("/", 1)[1] if "/" in task else task


STORE_KIND = "viper-video-store"
"""The ``kind`` attribute of a video store's root group (the token store's is ``viper-token-store``)."""


class VideoStore:
    """A suite's store: ``open_store(url, mode)``; ``tasks`` lists committed task groups by full name."""

    def __init__(
        self,
        url: str | Path,
        mode: str = "r",
        chunk_frames: int = 32,
        shard_frames: int = 4096,
        task: str | None = None,
    ):
        if mode not in ("r", "a"):
            raise ViperError(f"open_store mode {mode!r}: expected 'r' (read) or 'a' (append/create)")
        if shard_frames % chunk_frames:
            raise ViperError(f"shard_frames {shard_frames} must be a multiple of chunk_frames {chunk_frames}")
        self.location = Location(url)
        self.url = str(url)
        self.mode = mode
        self.chunk_frames = chunk_frames
        self.shard_frames = shard_frames
        if mode == "r" and not self.location.exists():
            raise ViperError(f"no video store at {self.url} (create one with `viper collect` or `viper import`)")
        root = self.location.read_json("zarr.json")
        kind = None if root is None else root.get("attributes", {}).get("kind") if isinstance(root, dict) else "?"
        if kind not in (None, STORE_KIND):
            raise ViperError(f"{self.url}: its zarr.json says kind {kind!r}; expected a video store ({STORE_KIND!r})")
        self._zstore = self.location.zarr_store(read_only=mode == "r")
        if kind is None and not self.tasks:
            # No root metadata (DVC may track only the task groups) and no task group: not a store (yet).
            stores = [c for c in self.location.children() if c.endswith(".zarr")]
            if stores:  # the folder above the stores (e.g. data/videos): not made into a store by a writer either
                held, first = ", ".join(stores), f"{self.url}/{stores[0]}"
                raise ViperError(f"{self.url}: a folder of stores ({held}), not a store: pass e.g. {first}")
            if mode == "r":
                raise ViperError(
                    f"{self.url}: not a video store (no {STORE_KIND} zarr.json, no task groups); stores are the "
                    "folders `viper collect` / `viper import` write, e.g. data/videos/dmc.zarr"
                )
        if mode == "a":
            self.location.ensure_root({"schema_version": SCHEMA_VERSION, "kind": STORE_KIND})
            only = None if task is None else _short(task)
            recover_swaps(self.location, only)
            # Hidden working groups (collect/import staging) are repaired too: they resume appending.
            for name in self._names(hidden=True):
                if only is None or belongs(name, only):
                    self.location.remove_temp_files(name)
                    self._repair(name)

    def __repr__(self) -> str:
        return f"VideoStore({self.url!r}, mode={self.mode!r})"

    def _repair(self, name: str) -> None:
        if name.endswith(".creating"):  # always scratch: ``create_task`` moves a finished one into place
            self.location.remove(name)
            return
        try:
            self._open(name).repair()
        except ViperError as exc:
            if not name.startswith("."):
                raise
            # A working group cut short while being created or removed (arrays missing, no attributes yet):
            # scratch that the command that made it rebuilds (rollouts are seeded, imports re-read their files).
            print(f"{self.url}/{name}: removing an incomplete working group ({exc})", file=sys.stderr)
            self.location.remove(name)

    def _interrupted_swap(self, name: str, wait_s: float = 2.0) -> bool:
        """Whether group ``name`` is absent mid-swap (see ``promote``) for longer than a live swap takes: its
        writer was killed, or is copying a remote group."""
        deadline = time.monotonic() + wait_s
        while not self.location.has_group(name) and any(
            self.location.has_group(hidden(name, tag)) for tag in ("ready", "old")
        ):
            if time.monotonic() > deadline:
                return True
            time.sleep(0.1)
        return False

    def _swap_error(self, name: str) -> ViperError:
        return ViperError(
            f"{self.url}/{name}: this task's group is being replaced, or its writer was killed mid-swap; the next "
            f"write finishes the swap: run the command that wrote it again (`viper collect --task <suite>/{name}` "
            "or `viper import`)"
        )

    def _names(self, hidden: bool = False) -> list[str]:
        names = self.location.children()
        return [n for n in names if (hidden or not n.startswith(".")) and self.location.has_group(n)]

    def _open(self, name: str) -> TaskGroup:
        local = self.location.path / name if self.location.is_local else None
        return TaskGroup(self._zstore, name, "r" if self.mode == "r" else "r+", f"{self.url}/{name}", local)

    @property
    def tasks(self) -> list[str]:
        """Full task names (``dmc/cartpole_balance``) of the task groups, sorted."""
        names, groups = [], self._names(hidden=True)
        if self.mode == "r":  # a writer finishes interrupted swaps on open; a reader must not skip their tasks
            for child in groups:
                for tag in ("ready", "old"):
                    name = child[1 : -len(tag) - 1]
                    if child == hidden(name, tag) and self._interrupted_swap(name):
                        raise self._swap_error(name)
        for name in (group for group in groups if not group.startswith(".")):
            meta = self.location.read_json(f"{name}/zarr.json") or {}
            task = meta.get("attributes", {}).get("task")
            if task is not None:
                names.append(task)
        return sorted(names)

    def task(self, task: str) -> TaskGroup:
        """The group of ``task`` (full name, or the group name without the suite prefix)."""
        name = _short(task)
        if name.startswith(".") or not self.location.has_group(name):
            if self._interrupted_swap(name):
                raise self._swap_error(name)
            held = ", ".join(self.tasks) or "no tasks"
            raise ViperError(f"{self.url}: unknown task {task!r}; the store holds: {held}")
        group = self._open(name)
        if "/" in task and group.task != task:
            raise ViperError(f"{self.url}/{name}: holds task {group.task!r}, not {task!r}")
        return group

    def create_task(self, task: str, attrs: dict | None = None, name: str | None = None) -> TaskGroup:
        """Create an empty task group (``name`` overrides the group name, e.g. a hidden staging group)."""
        self._writable()
        _check_full(task)
        if name is None:  # built aside and moved into place: a kill mid-way leaves no half-made task group
            self.create_task(task, attrs, name=hidden(_short(task), "creating"))
            promote(self.location, hidden(_short(task), "creating"), _short(task))
            return self._open(_short(task))
        group = zarr.open_group(store=self._zstore, path=name, mode="w")
        for key, dtype in EPISODE_ARRAYS.items():
            group.create_array(key, shape=(0,), dtype=dtype, chunks=(INDEX_CHUNK,))
        group.create_array(
            "frames",
            shape=(0, *FRAME_SHAPE),
            dtype=np.uint8,
            chunks=(self.chunk_frames, *FRAME_SHAPE),
            shards=(self.shard_frames, *FRAME_SHAPE),
            compressors=zarr.codecs.ZstdCodec(level=3),
        )
        meta = {"action_repeat": None, "source": {}, **(attrs or {})}
        meta.update(schema_version=SCHEMA_VERSION, suite=task.split("/")[0], task=task, created=_now())
        meta["uid"] = uuid.uuid4().hex
        group.update_attributes({**meta, "num_episodes": 0, "num_frames": 0})
        return self._open(name)

    def append_episode(
        self,
        task: str,
        frames: np.ndarray,
        actions: np.ndarray | None = None,
        rewards: np.ndarray | None = None,
        split: str = "train",
        attrs: dict | None = None,
        task_return: float | None = None,
        episode_id: int | None = None,
    ) -> int:
        """Append one episode to ``task`` atomically (creating its group with ``attrs``); returns its index"""
        self._writable()
        _check_full(task)
        name = _short(task)
        group = self.task(task) if self.location.has_group(name) else self.create_task(task, attrs)
        return group.append(frames, actions, rewards, split, task_return, episode_id)

    def staging(self, task: str, tag: str, attrs: dict | None = None) -> TaskGroup:
        """A hidden working group ``.<name>.<tag>`` for ``task``: opened if present (read-only in a read-only
        store), else created."""
        name = hidden(_short(task), tag)
        if self.location.has_group(name):
            return self._open(name)
        return self.create_task(task, attrs, name=name)

    def has_staging(self, task: str, tag: str) -> bool:
        return self.location.has_group(hidden(_short(task), tag))

    def discard_staging(self, task: str, tag: str) -> None:
        self._writable()
        self.location.remove(hidden(_short(task), tag))

    @contextlib.contextmanager
    def replacing(self, task: str, tag: str, attrs: dict | None = None) -> Iterator[TaskGroup]:
        """A fresh staging group ``tag`` for ``task`` to fill in the ``with`` block: promoted over the task's group
        when the block ends, discarded when it raises (a refused import leaves no hidden group behind)."""
        self.discard_staging(task, tag)
        group = self.staging(task, tag, attrs=attrs)
        try:
            yield group
        except BaseException:
            with contextlib.suppress(Exception):
                self.discard_staging(task, tag)
            raise
        self.promote(task, tag)

    def promote(self, task: str, tag: str) -> None:
        """Replace ``task``'s group by its complete staging group ``tag`` in one swap."""
        self._writable()
        promote(self.location, hidden(_short(task), tag), _short(task))

    def _writable(self) -> None:
        if self.mode != "a":
            raise ViperError(f"{self.url}: opened read-only; open_store(url, mode='a') to write")


def open_store(
    url: str | Path, mode: str = "r", chunk_frames: int = 32, shard_frames: int = 4096, task: str | None = None
) -> VideoStore:
    """Open the video store at a local path or fsspec URL; ``mode`` ``"r"`` (read) or ``"a"`` (append/create).

    ``chunk_frames``/``shard_frames`` apply to task groups created through this handle. ``task``: this writer
    writes only that task's groups, so only they are repaired on open (writers of other tasks may be running).
    """
    return VideoStore(url, mode, chunk_frames, shard_frames, task)
