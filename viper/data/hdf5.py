"""HDF5 export and import of one task group (h5py; readable from any language with plain HDF5).

Schema (``format = "viper-task-group"``, ``schema_version = 1``):

    /                 attrs: format, schema_version, task, suite, group_attrs (JSON of the store group's attrs)
    /frames           (N, 64, 64, 3) uint8, chunks (32, 64, 64, 3), gzip level 4
    (every dataset written with a fletcher32 checksum per chunk; files without one import too)
    /episode_ends     (E,) int64  exclusive end frame of each episode
    /lengths          (E,) int64
    /returns          (E,) float32 (NaN when unknown)
    /split            (E,) uint8   0 train, 1 test
    /episode_ids      (E,) int64
    /actions          (N, A) float32   optional
    /rewards          (N,) float32     optional
    /mask             (64, 64) bool    optional (True = pixel kept)

Export writes a temp file and renames it; import checks the schema and consistency, then writes a hidden
group and swaps it in, like every other whole-task write.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from viper.data.store import VideoStore
from viper.data.taskgroup import EPISODE_ARRAYS, FRAME_SHAPE, SPLITS
from viper.errors import ViperError

FORMAT = "viper-task-group"
SCHEMA_VERSION = 1
IMPORTING = "importing-h5"


def export_task(store: VideoStore, task: str, output: str | Path) -> dict[str, int]:
    """Write ``task``'s group to ``output`` (HDF5, schema above); returns episode and frame counts."""
    group = store.task(task)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(format=FORMAT, schema_version=SCHEMA_VERSION, task=group.task, suite=group.attrs["suite"])
            f.attrs["group_attrs"] = json.dumps(group.attrs)
            n = group.num_frames
            # fletcher32: a checksum per chunk, so a flipped byte fails the import instead of changing a frame.
            frames = f.create_dataset(
                "frames",
                (n, *FRAME_SHAPE),
                np.uint8,
                chunks=(min(32, max(n, 1)), *FRAME_SHAPE),
                compression="gzip",
                fletcher32=True,
            )
            for key, dtype in EPISODE_ARRAYS.items():
                f.create_dataset(key, data=np.asarray(getattr(group, key), dtype=dtype), fletcher32=True)
            rows = {}
            for i in range(group.num_episodes):
                # One episode at a time: memory stays at one episode whatever the task size.
                start, stop = group.episode_range(i)
                ep = group.read_episode(i)
                frames[start:stop] = ep["frames"]
                for key in ("actions", "rewards"):
                    if key in ep:
                        if key not in rows:
                            rows[key] = f.create_dataset(key, (n, *ep[key].shape[1:]), np.float32, fletcher32=True)
                        rows[key][start:stop] = ep[key]
            if group.mask is not None:
                f.create_dataset("mask", data=group.mask)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return {"episodes": group.num_episodes, "frames": group.num_frames}


def _check(f: h5py.File, path: Path) -> tuple[str, np.ndarray, np.ndarray, int]:
    """Validate the schema; returns (task, episode_ends, split codes, num_frames)."""
    if f.attrs.get("format") != FORMAT:
        raise ViperError(f"{path}: not a viper task-group HDF5 file (attribute format={f.attrs.get('format')!r})")
    if str(f.attrs.get("schema_version", "")) != str(SCHEMA_VERSION):
        raise ViperError(f"{path}: schema_version {f.attrs.get('schema_version')}, expected {SCHEMA_VERSION}")
    for key in ("frames", *EPISODE_ARRAYS):
        if key not in f:
            raise ViperError(f"{path}: missing dataset /{key}")
    frames = f["frames"]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != FRAME_SHAPE:
        raise ViperError(f"{path}: /frames is {frames.dtype} {frames.shape}; expected uint8 (N, 64, 64, 3)")
    ends, lengths = f["episode_ends"][:].astype(np.int64), f["lengths"][:].astype(np.int64)
    split = f["split"][:]
    n = frames.shape[0]
    sizes = {len(f[k]) for k in EPISODE_ARRAYS}
    if len(sizes) != 1 or (ends[-1] if len(ends) else 0) != n or not np.array_equal(np.diff(ends, prepend=0), lengths):
        raise ViperError(f"{path}: episode_ends/lengths/per-episode arrays disagree with each other or with N={n}")
    if not len(ends):
        raise ViperError(f"{path}: holds no episodes; importing it would replace the task with an empty one")
    if np.any(lengths < 1) or not np.isin(split, (0, 1)).all():
        raise ViperError(f"{path}: episodes must have >= 1 frame and split must be 0 (train) or 1 (test)")
    for key, ndim, form in (("actions", 2, "(N, A)"), ("rewards", 1, "(N,)")):
        data = f.get(key)
        if data is None:
            continue
        if not isinstance(data, h5py.Dataset) or data.ndim != ndim or data.dtype.kind not in "fiu":
            shape = getattr(data, "shape", "a group")
            raise ViperError(f"{path}: /{key} is {getattr(data, 'dtype', '')} {shape}; expected numbers shaped {form}")
        if data.shape[0] != n:
            raise ViperError(f"{path}: /{key} has {data.shape[0]} rows, expected N={n}")
    mask = f.get("mask")
    if mask is not None and (
        not isinstance(mask, h5py.Dataset) or mask.shape != FRAME_SHAPE[:2] or mask.dtype.kind not in "biu"
    ):
        shape = getattr(mask, "shape", "a group")
        raise ViperError(f"{path}: /mask is {getattr(mask, 'dtype', '')} {shape}; expected bool or 0/1 (64, 64)")
    return _task(f, path), ends, split, n


def _task(f: h5py.File, path: Path) -> str:
    """The file's ``task`` attribute, a known ``<suite>/<task>`` name (as the npz import requires)."""
    from viper.envs.suites import check_task

    if "task" not in f.attrs:
        raise ViperError(f"{path}: missing root attribute 'task' (the full task name, e.g. 'dmc/cartpole_balance')")
    task = str(f.attrs["task"])
    try:
        check_task(task)
    except ViperError as exc:
        raise ViperError(f"{path}: attribute task: {exc}") from None
    suite = task.split("/", 1)[0]
    if "suite" in f.attrs and str(f.attrs["suite"]) != suite:
        raise ViperError(f"{path}: attribute suite={f.attrs['suite']!r} disagrees with task={task!r}")
    return task


@contextlib.contextmanager
def _reading(path: Path):
    """HDF5's own errors while reading (a flipped byte in a chunk or a B-tree, a file cut short) become one
    error naming the file; the task's group in the store is untouched until the whole file was read."""
    try:
        yield
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ViperError(
            f"{path}: damaged HDF5 file ({type(exc).__name__}: {exc}); nothing was imported: export it again "
            "(`viper export`) or restore the file"
        ) from exc


def _kept_attrs(group_attrs: str, path: Path) -> dict:
    """The store group attributes an import keeps (``action_repeat``, ``source``) from the ``group_attrs`` JSON."""
    try:
        attrs = json.loads(group_attrs)
    except (TypeError, ValueError) as exc:
        raise ViperError(f"{path}: attribute group_attrs is not a JSON object ({exc})") from exc
    if not isinstance(attrs, dict):
        raise ViperError(f"{path}: attribute group_attrs is not a JSON object, got {type(attrs).__name__}")
    repeat = attrs.get("action_repeat")
    if repeat is not None and (isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1):
        raise ViperError(f"{path}: group_attrs action_repeat={repeat!r}; expected an integer >= 1 (or none)")
    if not isinstance(attrs.get("source", {}), dict):
        raise ViperError(f"{path}: group_attrs source={attrs['source']!r}; expected a JSON object (or none)")
    return {k: attrs[k] for k in ("action_repeat", "source") if k in attrs}


def check_suite(path: Path, task: str, held: list[str], url: str) -> None:
    """Refuse importing ``task`` into a store (at ``url``, holding ``held``) of another suite."""
    suite = task.split("/", 1)[0]
    others = sorted(t for t in held if t.split("/", 1)[0] != suite)
    if others:
        raise ViperError(f"{path}: holds {task}, but {url} holds {others[0]}: a store keeps one suite")


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise ViperError(f"{path}: HDF5 file not found")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ViperError(f"{path}: not a readable HDF5 file ({exc})") from exc


def task_of(path: str | Path) -> str:
    """The task an exported HDF5 file holds (its ``task`` attribute, checked), e.g. to pick the suite's store."""
    with _open(Path(path)) as f, _reading(Path(path)):
        return _task(f, Path(path))


def check_file(path: str | Path, rows_per_read: int = 1024) -> str:
    """Validate an exported file without a store (schema, group attributes, and every dataset read once, so a
    damaged chunk is found); returns its task. ``viper import`` runs it before it opens the store."""
    path = Path(path)
    with _open(path) as f, _reading(path):
        task = _check(f, path)[0]
        _kept_attrs(f.attrs.get("group_attrs", "{}"), path)
        for data in f.values():
            if isinstance(data, h5py.Dataset) and data.ndim:
                for start in range(0, data.shape[0], rows_per_read):
                    data[start : start + rows_per_read]
            elif isinstance(data, h5py.Dataset):
                data[()]
    return task


def import_task(path: str | Path, store: VideoStore, task: str | None = None) -> str:
    """Import an exported task group into ``store`` (replacing that task); returns the task name."""
    path = Path(path)
    with _open(path) as f:
        with _reading(path):
            stored, ends, split, _ = _check(f, path)
            group_attrs = f.attrs.get("group_attrs", "{}")
        if task is not None and task != stored:
            raise ViperError(f"{path}: holds task {stored!r}, not {task!r}")
        check_suite(path, stored, store.tasks, store.url)
        keep = _kept_attrs(group_attrs, path)
        keep["source"] = {**keep.get("source", {}), "imported_from": str(path)}
        names = {v: k for k, v in SPLITS.items()}
        with store.replacing(stored, IMPORTING, attrs=keep) as group:
            for i, stop in enumerate(ends):
                with _reading(path):
                    start = int(stop - (f["lengths"][i]))
                    rows = {k: f[k][start:stop] for k in ("frames", "actions", "rewards") if k in f}
                    task_return, episode_id = float(f["returns"][i]), int(f["episode_ids"][i])
                group.append(
                    rows["frames"],
                    rows.get("actions"),
                    rows.get("rewards"),
                    split=names[int(split[i])],
                    task_return=task_return,
                    episode_id=episode_id,
                )
            with _reading(path):
                mask = f["mask"][:].astype(bool) if "mask" in f else None
            if mask is not None:
                group.set_mask(mask)
    return stored
