"""Checkpoint folders: write to a temp folder, mark ``done`` last, rename, then move the ``latest`` pointer.

Layout of ``<run>/checkpoints/``::

    step_000001000/  state.pt  fingerprint.json  (any extra files)  checksums.json  done
    step_000002000/  ...
    latest           text file holding "step_000002000"

A folder without ``done`` (a kill mid-write) is never loaded and is removed on the next save. ``latest`` is
replaced atomically (``os.replace``), so it always names a complete folder. Resume is re-running the same
command: ``load_latest()`` returns the newest complete checkpoint or ``None`` (one whose files differ from their
recorded checksums or do not load moves to ``damaged/`` and the one before it loads). ``viper.signals.StopSignals``
lets a loop turn Ctrl-C / SIGTERM into "save a checkpoint, then stop" instead of losing the work since the last one.

A ``fingerprint`` (e.g. the stage's config section as a dict) is stored beside every checkpoint; checkpoints
whose fingerprint differs from the current one are never resumed (DVC keeps a stage's persistent outputs when
its params change, and an old run must not continue under new settings). They are not deleted either: the next
save moves them into ``superseded/`` beside the live ones (``stale_message`` says so, with what changed), so a
changed setting never costs a finished run: when the settings change back, ``load_latest`` moves the newest
``superseded/`` checkpoint made with them back into place and resumes it. A setting added to the code after a
checkpoint was written is absent from its fingerprint; with ``defaults`` (the fingerprint of the default config)
such a checkpoint still resumes when the new setting is at its default, which by convention reproduces the
behaviour from before it existed.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viper import file_integrity as integrity
from viper.errors import ViperError
from viper.file_integrity import CHECKSUMS, DONE

LATEST = "latest"
SUPERSEDED = "superseded"
DAMAGED = "damaged"


def rng_state() -> dict[str, Any]:
    """Every RNG a training loop touches: Python, NumPy's global, torch CPU and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # One state per GPU the saving process saw: a run resumed on fewer GPUs (another node, a smaller
        # allocation) restores those it has (set_rng_state_all would raise IndexError on the first missing one).
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


class Checkpointer:
    """Save and load step folders under ``directory``, keeping the newest ``keep`` (and ``protect``)."""

    def __init__(
        self,
        directory: str | Path,
        keep: int = 3,
        fingerprint: dict[str, Any] | None = None,
        defaults: dict[str, Any] | None = None,
        resumable: tuple[str, ...] = (),
    ) -> None:
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self.fingerprint = None if fingerprint is None else _plain(fingerprint)
        self.defaults = _plain(defaults or {})
        self.resumable = resumable
        """Fingerprint keys recorded but not compared: a checkpoint whose only changes are there still resumes."""
        self.loads = 0
        """How many times a checkpoint was loaded by this object (resume tests assert exactly one)."""
        self.damaged_files: list[str] = []
        """Files the last ``load_latest`` found damaged but was told to tolerate."""

    @staticmethod
    def name(step: int) -> str:
        return f"step_{step:09d}"

    def complete(self) -> list[Path]:
        """Complete checkpoint folders this run may resume, oldest first."""
        return [p for p in self._done() if self._matches(p)]

    def stale(self) -> list[Path]:
        """Complete checkpoint folders made with other settings (moved to ``superseded/`` on the next save)."""
        return [p for p in self._done() if not self._matches(p)]

    def stale_message(self, what: str) -> str | None:
        """One line for a log when checkpoints of other settings exist: how many, what changed, where they go."""
        stale = self.stale()
        if not stale:
            return None
        changes = self.changes(stale[-1])
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        match = None if self.complete() else self.superseded_match()
        plan = f"resuming {SUPERSEDED}/{match.name}, made with these settings" if match else "starting anew"
        return (
            f"{what}: {len(stale)} checkpoint(s) in {self.directory} were made with other settings ({shown}); "
            f"{plan}, and they move to {self.directory / SUPERSEDED}"
        )

    def superseded_match(self) -> Path | None:
        """The newest complete checkpoint in ``superseded/`` made with this run's settings, or ``None``."""
        return max(self._superseded_matches(), key=saved_step, default=None)

    def _superseded_matches(self) -> list[Path]:
        """Complete checkpoints in ``superseded/`` made with this run's settings."""
        folder = self.directory / SUPERSEDED
        if self.fingerprint is None or not folder.is_dir():
            return []
        return [p for p in folder.iterdir() if p.is_dir() and (p / DONE).exists() and self._matches(p)]

    def _restore_superseded(self) -> Path | None:
        """Move the ``superseded/`` checkpoints made with this run's settings back beside the live ones (setting
        those of other settings aside; kept ones such as a best checkpoint come back too) and point ``latest``
        at the newest; ``None`` when there is none."""
        found = sorted(self._superseded_matches(), key=saved_step)
        if not found:
            return None
        newest = found[-1]
        newest_name = self.name(saved_step(newest))
        for path in self.stale():
            self._set_aside(path)
        for path in found:
            target = self.directory / self.name(saved_step(path))
            if path != newest and target.exists():
                continue  # two superseded runs of these settings saved this step: the newest keeps its own
            shutil.rmtree(target, ignore_errors=True)
            path.rename(target)
        self._point_latest(newest_name)
        return self.directory / newest_name

    def _point_latest(self, name: str) -> None:
        """Replace the ``latest`` pointer atomically."""
        pointer_tmp = self.directory / f".{LATEST}.tmp"
        pointer_tmp.write_text(name)
        os.replace(pointer_tmp, self.directory / LATEST)
        integrity.fsync_dir(self.directory)

    def changes(self, folder: Path) -> list[str]:
        """``key: stored -> current`` for each setting where ``folder``'s fingerprint differs from this run's."""
        stored = _read_fingerprint(folder)
        return ["no fingerprint stored"] if stored is None else self.changes_from(stored)

    def changes_from(self, stored: dict[str, Any]) -> list[str]:
        """``changes`` against a fingerprint dict (as a checkpoint stores it) rather than a folder."""
        changes = _differences(_plain(stored), self.fingerprint, self.defaults, "")
        return [c for c in changes if c.split(":")[0].split(".")[0] not in self.resumable]

    def _done(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(
            (p for p in self.directory.glob("step_*") if p.is_dir() and (p / DONE).exists()), key=lambda p: p.name
        )

    def _matches(self, folder: Path) -> bool:
        if self.fingerprint is None:
            return True
        stored = _read_fingerprint(folder)
        return stored is not None and not self.changes_from(stored)

    def latest_path(self) -> Path | None:
        """The folder ``latest`` points at, falling back to the newest complete folder."""
        pointer = self.directory / LATEST
        if pointer.exists():
            candidate = self.directory / pointer.read_text().strip()
            if (candidate / DONE).exists() and self._matches(candidate):
                return candidate
        complete = self.complete()
        return complete[-1] if complete else None

    def save(
        self,
        step: int,
        state: dict[str, Any],
        extra: Callable[[Path], None] | None = None,
        protect: tuple[str, ...] = (),
    ) -> Path:
        """Write ``state`` (torch-saveable) as ``state.pt``; ``extra(folder)`` may add files (e.g. replay)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / self.name(step)
        tmp = self.directory / f".tmp_{self.name(step)}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save(state, tmp / "state.pt")
        if self.fingerprint is not None:
            (tmp / "fingerprint.json").write_text(json.dumps(self.fingerprint, sort_keys=True))
        if extra is not None:
            extra(tmp)
        # torch.load checks the archive's structure, not the tensors' bytes, and np.load the replay's even less:
        # a checksum of every file tells a damaged checkpoint from a good one. Files ``extra`` hard-linked from
        # the latest checkpoint (replay blocks) keep the CRC recorded there; a load checks them all the same.
        known = integrity.recorded_checksums(self.latest_path())
        (tmp / CHECKSUMS).write_text(json.dumps(integrity.checksums(tmp, known)))
        # On disk before ``done`` is: after a host crash, a folder with ``done`` must hold whole files (the
        # directory's fsync alone orders the names, not the data).
        integrity.fsync_tree(tmp)
        (tmp / DONE).write_text(str(step))
        integrity.fsync_file(tmp / DONE)
        integrity.fsync_dir(tmp)
        replaced = None
        if final.exists():  # the same step saved again, or another settings' run at this step: keep that one
            if (final / DONE).exists() and not self._matches(final):
                self._set_aside(final)
            else:
                # Renamed, not deleted, before the new folder takes its name: deleting a replay's worth of files
                # first left a long window in which a kill lost this step's checkpoint.
                replaced = self.directory / f".replaced_{final.name}"
                shutil.rmtree(replaced, ignore_errors=True)
                final.rename(replaced)
        tmp.rename(final)
        self._point_latest(final.name)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
        self._prune(protect + (final.name,))
        return final

    def load_latest(
        self,
        map_location: str | torch.device = "cpu",
        set_aside: bool = True,
        tolerate: Callable[[str], bool] | None = None,
    ) -> tuple[dict[str, Any], Path] | None:
        """``(state, folder)`` of the newest complete checkpoint, or ``None`` when there is none. Without one of
        this run's settings beside the live ones, a superseded one made with them is moved back and loaded.
        ``set_aside=False``: an unreadable checkpoint is an error instead of being moved to ``damaged/``.
        ``tolerate(relative path)``: files the caller can do without (replay blocks); when only such files are
        damaged the checkpoint still loads, and ``damaged_files`` lists them."""
        self.damaged_files = []
        self._settle_replaced()
        while (path := self.latest_path() or self._restore_superseded()) is not None:
            try:
                self.damaged_files = integrity.check_files(path, tolerate)
                state = torch.load(path / "state.pt", map_location=map_location, weights_only=False)
            except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
                if not set_aside:  # a DDP rank > 0: rank 0 loaded this very file, so the fault is not the file's
                    raise ViperError(f"{path}: cannot be read on this rank ({exc})") from exc
                # Bytes lost after the ``done`` marker (a crash before the disk flushed, a bad sector): resume from
                # the checkpoint before it, keeping this one for inspection.
                moved = self._set_aside(path, DAMAGED)
                print(f"{path}: cannot be read ({exc}); moved to {moved}", file=sys.stderr)
                continue
            self.loads += 1
            return state, path
        damaged = self.directory / DAMAGED
        # Only this run's own: after a settings change, older damaged checkpoints must not stop a fresh start.
        if damaged.is_dir() and any(p.is_dir() and self._matches(p) for p in damaged.iterdir()):
            raise ViperError(
                f"{self.directory}: no readable checkpoint left; the unreadable ones are in {damaged}. Remove that "
                "folder to start this run anew"
            )
        return None

    def _settle_replaced(self) -> None:
        """A kill between ``save``'s two renames left a step's old folder under ``.replaced_<name>`` and none under
        its name: put it back. Once its successor is in place, it is only a leftover."""
        for old in self.directory.glob(".replaced_step_*") if self.directory.exists() else ():
            target = self.directory / old.name.removeprefix(".replaced_")
            if not target.exists() and (old / DONE).exists():
                old.rename(target)
            else:
                shutil.rmtree(old, ignore_errors=True)

    def _prune(self, protect: tuple[str, ...]) -> None:
        self._settle_replaced()
        for leftover in self.directory.glob(".tmp_step_*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for path in self.directory.glob("step_*"):
            if path.is_dir() and not (path / DONE).exists():  # a kill mid-rename: never complete, never loaded
                shutil.rmtree(path, ignore_errors=True)
        for path in self.stale():
            self._set_aside(path)
        complete = self.complete()
        for path in complete[: max(0, len(complete) - self.keep)]:
            if path.name not in protect:
                shutil.rmtree(path, ignore_errors=True)

    def _set_aside(self, path: Path, into: str = SUPERSEDED) -> Path:
        """Move a checkpoint of other settings into ``superseded/`` (or an unreadable one into ``damaged/``),
        renamed ``.1``, ``.2``... on a clash; returns where it went."""
        target_dir = self.directory / into
        target_dir.mkdir(exist_ok=True)
        target, n = target_dir / path.name, 0
        while target.exists():
            n += 1
            target = target_dir / f"{path.name}.{n}"
        path.rename(target)
        return target


def _plain(value: Any) -> Any:
    """JSON's view of a fingerprint (tuples become lists, paths strings), so stored and live ones compare."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def saved_step(folder: Path) -> int:
    """The step a complete checkpoint folder was saved at (its ``done`` marker holds it)."""
    try:
        return int((folder / DONE).read_text().strip())
    except (OSError, ValueError):
        return -1


def _read_fingerprint(folder: Path) -> Any:
    try:
        return json.loads((folder / "fingerprint.json").read_text())
    except (OSError, ValueError):
        return None


def _differences(stored: Any, current: Any, defaults: Any, prefix: str) -> list[str]:
    """Where ``stored`` and ``current`` differ, as ``key: stored -> current``. A key missing from ``stored`` (a
    setting added later) is no difference when ``current`` holds the value ``defaults`` gives it."""
    if not (isinstance(stored, dict) and isinstance(current, dict)):
        return [] if stored == current else [f"{prefix or 'fingerprint'}: {stored!r} -> {current!r}"]
    defaults = defaults if isinstance(defaults, dict) else {}
    out = []
    for key in sorted(set(stored) | set(current)):
        name = f"{prefix}.{key}" if prefix else key
        if key not in current:
            out.append(f"{name}: {stored[key]!r} -> (no longer a setting)")
        elif key not in stored:
            if key not in defaults or defaults[key] != current[key]:
                out.append(f"{name}: (not recorded) -> {current[key]!r}")
        else:
            out += _differences(stored[key], current[key], defaults.get(key), name)
    return out
