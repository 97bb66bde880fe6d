"""Content hashes: CRC-32C of files (checkpoint integrity), sha256 of files and of JSON values (identities of
weights, datasets and settings in fingerprints and result keys)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import google_crc32c


def file_crc32c(path: Path) -> int:
    """CRC-32C of a file's bytes (hardware-accelerated: GB/s, so a checkpoint's replay buffer is cheap to check)."""
    checksum = google_crc32c.Checksum()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            checksum.update(block)
    return int.from_bytes(checksum.digest(), "big")


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_digest(value: Any) -> str:
    """16 hex digits of the sha256 of ``value`` as sorted-key JSON: a short key for a record of settings."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def sources_digest(root: Path, entries: tuple[str, ...] | list[str]) -> str:
    """16 hex digits of the sha256 of the ``.py`` files ``entries`` name under ``root`` (files, or folders taken
    whole), each with its relative path: the code a result came from, for keys that must notice a code change."""
    files = set()
    for entry in entries:
        path = root / entry
        files.update(path.rglob("*.py") if path.is_dir() else [path])
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
