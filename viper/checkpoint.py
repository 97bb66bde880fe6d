"""Checkpoint folders: write to a temp folder, mark ``done`` last, rename, then move the ``latest`` pointer.

Layout of ``<run>/checkpoints/``::

    step_000001000/  state.pt  (any extra files)  done
    step_000002000/  ...
    latest           text file holding "step_000002000"

A folder without ``done`` (a kill mid-write) is never loaded and is removed on the next save. ``latest`` is
replaced atomically (``os.replace``), so it always names a complete folder. Resume is re-running the same
command: ``load_latest()`` returns the newest complete checkpoint or ``None``. ``StopSignals`` lets a loop turn
Ctrl-C / SIGTERM into "save a checkpoint, then stop" instead of losing the work since the last one.

A ``fingerprint`` (e.g. the stage's config section as a dict) is stored beside every checkpoint; checkpoints
whose fingerprint differs from the current one are never resumed (DVC keeps a stage's persistent outputs when
its params change, and an old run must not continue under new settings); they are removed on the next save.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

DONE = "done"
LATEST = "latest"


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
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Save and load step folders under ``directory``, keeping the newest ``keep`` (and ``protect``)."""

    def __init__(self, directory: str | Path, keep: int = 3, fingerprint: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self.fingerprint = None if fingerprint is None else json.dumps(fingerprint, sort_keys=True, default=str)
        self.loads = 0
        """How many times a checkpoint was loaded by this object (resume tests assert exactly one)."""

    @staticmethod
    def name(step: int) -> str:
        return f"step_{step:09d}"

    def complete(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        if not self.directory.exists():
            return []
        found = [p for p in self.directory.glob("step_*") if p.is_dir() and (p / DONE).exists() and self._matches(p)]
        return sorted(found, key=lambda p: p.name)

    def _matches(self, folder: Path) -> bool:
        if self.fingerprint is None:
            return True
        stored = folder / "fingerprint.json"
        return stored.exists() and stored.read_text() == self.fingerprint

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
            (tmp / "fingerprint.json").write_text(self.fingerprint)
        if extra is not None:
            extra(tmp)
        (tmp / DONE).write_text(str(step))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        pointer_tmp = self.directory / f".{LATEST}.tmp"
        pointer_tmp.write_text(final.name)
        os.replace(pointer_tmp, self.directory / LATEST)
        _fsync_dir(self.directory)
        self._prune(protect + (final.name,))
        return final

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
        """``(state, folder)`` of the newest complete checkpoint, or ``None`` when there is none."""
        path = self.latest_path()
        if path is None:
            return None
        self.loads += 1
        return torch.load(path / "state.pt", map_location=map_location, weights_only=False), path

    def _prune(self, protect: tuple[str, ...]) -> None:
        for leftover in self.directory.glob(".tmp_step_*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for path in self.directory.glob("step_*"):
            if path.is_dir() and not ((path / DONE).exists() and self._matches(path)):
                shutil.rmtree(path, ignore_errors=True)
        complete = self.complete()
        for path in complete[: max(0, len(complete) - self.keep)]:
            if path.name not in protect:
                shutil.rmtree(path, ignore_errors=True)


class StopSignals:
    """Context manager: SIGINT and SIGTERM set ``signum`` instead of stopping the process, so a training loop can
    finish its step, save a checkpoint and stop (``viper.errors.Stopped``). A second signal of the same kind acts
    as it normally would (Ctrl-C twice interrupts at once). Outside the main thread (where Python cannot install
    handlers, e.g. a flow's worker thread) it does nothing and ``signum`` stays None.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        signal.signal(signum, self._previous[signum])

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
