"""The token store: the video store's frames encoded by the tokenizer, one group per task.

Group ``<root>/<name>`` (same names as the video store) holds ``tokens`` (N, h, w) int16, ``episode_ends``
(E,) int64 and ``split`` (E,) uint8 (0 train, 1 test), with attributes ``tokenizer_hash`` (the hash of the
weights that produced them), ``store_identity`` (the video store group's ``TaskGroup.identity`` they encode),
``grid`` ([h, w]), ``codebook_size``, ``task``, ``suite``, ``schema_version``.
A task's tokens are written whole into a hidden group and swapped in, so a reader sees the old tokens or the
new ones. Reading with ``expected_hash`` refuses tokens made by another tokenizer (``StaleTokensError``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from viper.data.location import Location, hidden, promote, recover_swaps
from viper.errors import ViperError

SCHEMA_VERSION = 1


class StaleTokensError(ViperError):
    """Tokens were made by a different tokenizer than the one expected; re-run ``viper tokenize``."""


@dataclass(frozen=True)
class TokenGroup:
    """One task's tokens in memory: tokens int16 (N, h, w), episode_ends int64 (E,), split uint8 (E,)."""

    task: str
    tokens: np.ndarray
    episode_ends: np.ndarray
    split: np.ndarray
    tokenizer_hash: str
    codebook_size: int | None
    store_identity: str = ""
    """``TaskGroup.identity`` of the video store group these tokens encode ("" when not recorded)."""

    @property
    def lengths(self) -> np.ndarray:
        """Frames per episode, int64 (E,)."""
        return np.diff(self.episode_ends, prepend=0)

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.tokens.shape[1]), int(self.tokens.shape[2])


def _name(task: str) -> str:
    if "/" not in task:
        raise ViperError(f"task {task!r}: expected a full name <suite>/<task>, e.g. dmc/cartpole_balance")
    return task.split("/", 1)[1]


def write_tokens(
    path: str | Path,
    task: str,
    tokens: np.ndarray,
    episode_ends: np.ndarray,
    split: np.ndarray,
    tokenizer_hash: str,
    codebook_size: int | None = None,
    chunk_frames: int = 1024,
    store_identity: str = "",
    mask: str = "",
) -> None:
    """Write (or replace) ``task``'s tokens: int16 (N, h, w), episode_ends (E,), split uint8 (E,) 0/1. The
    attributes record what they encode: ``store_identity`` (the video group) and ``mask`` (the frames' mask,
    ``viper.train.tokenize.mask_identity``)."""
    tokens = np.asarray(tokens)
    episode_ends = np.asarray(episode_ends, dtype=np.int64)
    split = np.asarray(split, dtype=np.uint8)
    where = f"{path}/{_name(task)}"
    if tokens.dtype != np.int16 or tokens.ndim != 3:
        raise ViperError(f"{where}: tokens must be int16 (N, h, w), got {tokens.dtype} {tokens.shape}")
    if episode_ends.ndim != 1 or split.shape != episode_ends.shape:
        raise ViperError(f"{where}: episode_ends and split must be (E,), got {episode_ends.shape}, {split.shape}")
    if len(episode_ends) and (episode_ends[-1] != len(tokens) or np.any(np.diff(episode_ends, prepend=0) < 1)):
        raise ViperError(f"{where}: episode_ends must increase and end at N={len(tokens)}, got {episode_ends}")
    if np.any(split > 1):
        raise ViperError(f"{where}: split values must be 0 (train) or 1 (test)")
    if codebook_size is not None and len(tokens) and (tokens.min() < 0 or tokens.max() >= codebook_size):
        raise ViperError(f"{where}: token ids must lie in [0, {codebook_size}), got [{tokens.min()}, {tokens.max()}]")
    location = Location(path)
    location.ensure_root({"schema_version": SCHEMA_VERSION, "kind": "viper-token-store"})
    recover_swaps(location)
    name = _name(task)
    staged = hidden(name, "writing")
    location.remove(staged)
    group = zarr.open_group(store=location.zarr_store(read_only=False), path=staged, mode="w")
    h, w = tokens.shape[1:]
    group.create_array(
        "tokens",
        data=tokens,
        chunks=(chunk_frames, h, w),
        shards=(chunk_frames * max(1, 65536 // chunk_frames), h, w),
        compressors=zarr.codecs.ZstdCodec(level=3),
    )
    group.create_array("episode_ends", data=episode_ends)
    group.create_array("split", data=split)
    group.update_attributes(
        {
            "schema_version": SCHEMA_VERSION,
            "task": task,
            "suite": task.split("/")[0],
            "tokenizer_hash": tokenizer_hash,
            "grid": [int(h), int(w)],
            "codebook_size": codebook_size,
            "store_identity": store_identity,
            "mask": mask,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
    )
    promote(location, staged, name)


def token_tasks(path: str | Path) -> list[str]:
    """Full task names held by the token store at ``path`` (sorted; empty if the store does not exist)."""
    location = Location(path)
    tasks = []
    for child in location.children():
        meta = location.read_json(f"{child}/zarr.json") if not child.startswith(".") else None
        if meta is not None and "task" in meta.get("attributes", {}):
            tasks.append(meta["attributes"]["task"])
    return sorted(tasks)


def token_summary(path: str | Path, task: str) -> tuple[dict, int] | None:
    """``(attributes, frames)`` of ``task``'s tokens from their metadata alone (no token is read); None when the
    store holds no tokens for it."""
    location = Location(path)
    group = location.read_json(f"{_name(task)}/zarr.json")
    array = location.read_json(f"{_name(task)}/tokens/zarr.json")
    if group is None or array is None:
        return None
    return group.get("attributes", {}), int(array["shape"][0])


def store_identities(path: str | Path, tasks: tuple[str, ...]) -> dict[str, str]:
    """``store_identity`` of each task's tokens, from their attributes alone ("" when absent or not recorded)."""
    summaries = {task: token_summary(path, task) for task in tasks}
    return {task: str(s[0].get("store_identity", "")) if s else "" for task, s in summaries.items()}


def read_tokens(path: str | Path, task: str, expected_hash: str | None = None) -> TokenGroup:
    """Load ``task``'s tokens into memory; refuse them if they were made by a tokenizer other than
    ``expected_hash`` (``StaleTokensError`` naming both hashes). ``None`` accepts any tokenizer."""
    location = Location(path)
    name = _name(task)
    if not location.has_group(name):
        known = ", ".join(token_tasks(path)) or "no tasks"
        raise ViperError(
            f"{path}: no tokens for task {task!r} (the token store holds: {known}); run `viper tokenize`, or, if the "
            f"video store has no {task!r} either, name the tasks it holds with -S 'collect.tasks=[...]' (the prior "
            "trains on collect.tasks)"
        )
    # A re-tokenize may swap the group in while it is read (``promote``): keep only a read of one group throughout,
    # and read again after one caught mid-swap (the old group moved aside, the new one not yet in).
    problem = "replaced again and again while being read; retry when `viper tokenize` ends"
    for _ in range(3):
        try:
            group = zarr.open_group(store=location.zarr_store(read_only=True), path=name, mode="r")
            attrs = dict(group.attrs)
            arrays = {key: group[key][:] for key in ("tokens", "episode_ends", "split")}
        except (KeyError, FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.ArrayNotFoundError) as exc:
            problem = f"cannot be read ({type(exc).__name__}: {exc}); run `viper tokenize` to write it again"
            continue
        if (location.read_json(f"{name}/zarr.json") or {}).get("attributes") == attrs:
            break
    else:
        raise ViperError(f"{path}/{name}: {problem}")
    if attrs.get("schema_version") != SCHEMA_VERSION or attrs.get("task") != task:
        raise ViperError(f"{path}/{name}: not a token group for {task!r} (attributes {attrs})")
    found = attrs["tokenizer_hash"]
    if expected_hash is not None and found != expected_hash:
        raise StaleTokensError(
            f"{path}/{name}: tokens were made by tokenizer {found}, expected {expected_hash}; "
            "re-run `viper tokenize` with the current tokenizer"
        )
    return TokenGroup(
        task=task,
        tokens=arrays["tokens"],
        episode_ends=arrays["episode_ends"],
        split=arrays["split"],
        tokenizer_hash=found,
        codebook_size=attrs.get("codebook_size"),
        store_identity=str(attrs.get("store_identity", "")),
    )
