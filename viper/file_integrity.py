"""Files that survive a crash and say when they were damaged: CRC-32C checksums recorded beside a folder's files
and checked on load, and fsync helpers (a file, a folder, a whole tree) for writes that must reach the disk before
the marker that declares them complete. ``viper.checkpoint`` writes its folders with them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from viper.errors import ViperError
from viper.hashing import file_crc32c

DONE = "done"
"""The marker file written last into a complete folder."""
CHECKSUMS = "checksums.json"
"""``{relative path: CRC-32C}`` of a folder's other files."""


def checksums(folder: Path, known: dict[tuple[int, int], int]) -> dict[str, int]:
    """``{relative path: CRC-32C}`` of every file under ``folder`` but the checksum file and ``done``. A file that
    is a hard link of one in ``known`` (``(device, inode) -> CRC``) takes its recorded CRC unread."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (CHECKSUMS, DONE)):
        stat = path.stat()
        crc = known.get((stat.st_dev, stat.st_ino)) if stat.st_nlink > 1 else None
        out[path.relative_to(folder).as_posix()] = file_crc32c(path) if crc is None else crc
    return out


def recorded_checksums(folder: Path | None) -> dict[tuple[int, int], int]:
    """``(device, inode) -> CRC`` of the files a complete checkpoint recorded, for files linked from it."""
    try:
        recorded = json.loads((folder / CHECKSUMS).read_text()) if folder is not None else {}
    except (OSError, ValueError):
        return {}
    out = {}
    for name, crc in recorded.items():
        try:
            stat = (folder / name).stat()
        except OSError:
            continue
        out[(stat.st_dev, stat.st_ino)] = crc
    return out


def check_files(
    folder: Path, tolerate: Callable[[str], bool] | None = None, only: tuple[str, ...] | None = None
) -> list[str]:
    """Raise ``ValueError`` naming the first file whose bytes differ from those ``save`` recorded (checkpoints
    written before the checksums existed have none to check); files ``tolerate`` accepts (by relative path) are
    returned instead, and the caller does without them. ``only``: check just these files (where recorded)."""
    recorded = folder / CHECKSUMS
    if not recorded.exists():
        return []
    bad = []
    for name, crc in json.loads(recorded.read_text()).items():
        if only is not None and name not in only:
            continue
        if not (folder / name).is_file() or file_crc32c(folder / name) != crc:
            if tolerate is None or not tolerate(name):
                raise ValueError(f"{name} is missing or differs from its checksum in {CHECKSUMS}")
            bad.append(name)
    return bad


def verify(folder: str | Path, only: tuple[str, ...] | None = None) -> None:
    """``ViperError`` unless every file of the checkpoint ``folder`` (or those named in ``only``) matches the
    checksum its save recorded (for loaders that read one checkpoint rather than resume a run: ``torch.load``
    reads damaged tensor bytes without a word). Checkpoints from before the checksums, or trimmed copies without
    them, pass."""
    try:
        check_files(Path(folder), only=only)
    except (ValueError, OSError) as exc:
        raise ViperError(
            f"{folder}: {exc}: the checkpoint is damaged; restore it (`dvc checkout`, a backup) or train it again"
        ) from None


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (files hard-linked from an earlier checkpoint cost nothing)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(Path(root))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
