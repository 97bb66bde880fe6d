"""Where a Zarr store lives: a local folder or an fsspec URL, with the few file-level operations we need.

Zarr does the array I/O; this module lists task groups (a store's root metadata may be missing because DVC
tracks each task group as its own output), and renames or removes whole groups so that a task is replaced in
one step. Local paths and ``file://`` URLs use zarr's ``LocalStore``, whose every key write is a temp file
plus rename (a killed writer never leaves a half-written chunk, shard or ``zarr.json``). Other URLs
(``memory://``, ``s3://``, ``gs://``) go through ``FsspecStore``; object stores replace an object in one PUT,
so the same guarantee holds per key there, but renaming a group is a copy (not atomic) on object stores:
``Location.rename`` orders that copy so that only a complete group ever has its ``zarr.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import zarr
import zarr.storage

from viper.errors import ViperError

# Files zarr's LocalStore leaves behind when a writer dies between writing its temp file and renaming it.
TEMP_SUFFIX = ".partial"


class Location:
    """A store root (local folder or fsspec URL) and group-level file operations under it."""

    def __init__(self, url: str | Path) -> None:
        text = str(url)
        if text.startswith("file://"):
            text = text[len("file://") :]
        self.url = str(url)
        self.is_local = "://" not in text
        if self.is_local:
            self.path = Path(text)
            self.fs = None
            self.root = str(self.path)
        else:
            import fsspec

            self.path = None
            try:
                self.fs, self.root = fsspec.core.url_to_fs(text)
            except (ValueError, ImportError) as exc:  # an unknown protocol, or its fsspec backend not installed
                raise ViperError(f"store URL {self.url}: {exc}") from None
            self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def _join(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def zarr_store(self, read_only: bool) -> zarr.abc.store.Store:
        """A zarr store object rooted at this location."""
        if self.is_local:
            return zarr.storage.LocalStore(self.path, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, read_only=read_only)

    def exists(self) -> bool:
        """True if the root folder exists (a store may have groups but no root ``zarr.json``)."""
        if self.is_local:
            return self.path.is_dir()
        return self.fs.exists(self.root)

    def has_group(self, name: str) -> bool:
        """True if ``<root>/<name>/zarr.json`` exists."""
        meta = self._join(f"{name}/zarr.json")
        return Path(meta).is_file() if self.is_local else self.fs.exists(meta)

    def read_json(self, key: str) -> dict | None:
        """The parsed JSON document at ``<root>/<key>``, or None if absent."""
        path = self._join(key)
        try:
            text = Path(path).read_text() if self.is_local else self.fs.cat_file(path).decode()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ViperError(f"{self.url}/{key}: corrupt zarr metadata (not JSON: {exc})") from exc

    def children(self) -> list[str]:
        """Names of the immediate sub-folders of the root (sorted); files are skipped."""
        if not self.exists():
            return []
        if self.is_local:
            return sorted(p.name for p in self.path.iterdir() if p.is_dir())
        names = []
        for info in self.fs.ls(self.root, detail=True):
            if info.get("type") == "directory":
                names.append(info["name"].rstrip("/").rsplit("/", 1)[-1])
        return sorted(names)

    def remove(self, name: str) -> None:
        """Delete ``<root>/<name>`` and everything under it (no error if absent).

        The group's ``zarr.json`` goes first: a kill part-way leaves a folder that is no group (``has_group``
        is False; the next ``create_task`` or ``promote`` overwrites it), never a group missing arrays."""
        path = self._join(name)
        if self.is_local:
            Path(path, "zarr.json").unlink(missing_ok=True)
            shutil.rmtree(path, ignore_errors=True)
        elif self.fs.exists(path):
            if self.fs.exists(f"{path}/zarr.json"):
                self.fs.rm_file(f"{path}/zarr.json")
            self.fs.rm(path, recursive=True)

    def rename(self, src: str, dst: str) -> None:
        """Move group ``<root>/<src>`` to ``<root>/<dst>``, which must not be a group (atomic on local disks).

        Elsewhere a rename is a copy: any leftover ``dst`` folder (a copy a kill cut short) is removed first,
        the group's ``zarr.json`` is copied last and deleted from ``src`` first, so at every moment
        ``has_group`` is True only for a complete group (``promote`` and ``recover_swaps`` rely on it).
        """
        if self.has_group(dst):
            raise ViperError(f"{self.url}: cannot move {src} to {dst}: {dst} is a group")
        if self.is_local:
            shutil.rmtree(self._join(dst), ignore_errors=True)  # a folder without zarr.json: a cut-short remove
            os.rename(self._join(src), self._join(dst))
            return
        source, target = self._join(src), self._join(dst)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        meta = f"{source}/zarr.json"
        for path in sorted(self.fs.find(source), key=lambda p: p == meta):  # the group's zarr.json last
            self.fs.copy(path, target + path[len(source) :])
        self.fs.rm_file(meta)
        self.fs.rm(source, recursive=True)

    def remove_temp_files(self, name: str) -> int:
        """Delete zarr's ``*.partial`` temp files under a group left by a killed writer; returns the count."""
        if not self.is_local:
            return 0
        count = 0
        for path in Path(self._join(name)).rglob(f"*{TEMP_SUFFIX}"):
            path.unlink(missing_ok=True)
            count += 1
        return count

    def ensure_root(self, attrs: dict) -> None:
        """Create the root group metadata if it is missing (DVC may track only the task groups)."""
        if self.read_json("zarr.json") is None:
            zarr.open_group(store=self.zarr_store(read_only=False), mode="a", attributes=attrs)


def hidden(name: str, tag: str) -> str:
    """Name of a hidden working group beside ``name`` (skipped by task discovery): ``.<name>.<tag>``."""
    return f".{name}.{tag}"


def belongs(child: str, name: str) -> bool:
    """Whether group ``child`` is group ``name`` or one of its hidden working groups (``hidden(name, tag)``)."""
    return child == name or child.startswith(f".{name}.")


def promote(location: Location, staged: str, name: str) -> None:
    """Make the complete group ``staged`` the task group ``name``, replacing any old one.

    ``staged`` is first renamed to ``.<name>.ready`` (the commit point: from here the new group wins), then
    the old group is renamed aside, the ready one into place and the old one deleted. Readers on a local
    disk see the old or the new group, never a mix; a process killed in between is finished by
    ``recover_swaps`` on the next open for writing.
    """
    ready = hidden(name, "ready")
    if staged != ready:
        location.remove(ready)
        location.rename(staged, ready)
    old = hidden(name, "old")
    location.remove(old)
    if location.has_group(name):
        location.rename(name, old)
    location.rename(ready, name)
    location.remove(old)


def recover_swaps(location: Location, only: str | None = None) -> None:
    """Finish group swaps interrupted by a kill (see ``promote``): every group's, or group ``only``'s."""

    def mine(child: str, tag: str) -> bool:
        return child.startswith(".") and child.endswith(f".{tag}") and (only is None or belongs(child, only))

    for child in location.children():
        if mine(child, "ready") and location.has_group(child):
            promote(location, child, child[1 : -len(".ready")])
    for child in location.children():
        if mine(child, "old"):
            name = child[1 : -len(".old")]
            if location.has_group(name) or not location.has_group(child):  # replaced, or a cut-short remove
                location.remove(child)
            else:
                location.rename(child, name)
