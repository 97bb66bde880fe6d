"""One writer per output: an exclusive lock held while a process writes an agent run folder, a trainer's run
folder or one task group of the video store.

Resuming makes every stage safe to re-run, but not to run twice at once: a Prefect ``train-agents`` run beside
``dvc repro``'s ``train-agent`` stage (or two ``viper collect --task`` runs for one task) would interleave two
processes' checkpoints or episodes in one place. The second writer is refused at once with a message naming
what is being written, by whom (the holder's pid) and what to do.

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on a file under ``<data_dir>/.locks/`` (``LOCK_DIR``), named
after the locked thing (``agents-viper-dmc-cartpole_balance-seed0.lock``, ``collect-dmc-cartpole_balance.lock``).
The kernel releases a flock when the last descriptor of its open file closes, which happens when the holder
exits however it exits: a SIGKILLed or OOM-killed run never leaves a stale lock behind, and there is nothing to
clean up by hand. The file itself stays (deleting it on release would race: a process that opened the old file
just before could lock it while another creates and locks a new one); between holders it is empty, and while held
it holds the holder's pid and command, read back only for the refusal message.

The files live beside the stages' outputs, not inside them: DVC hashes every file of a tracked output
(``data/agents``, ``data/videos``, ...), and ``data/*`` is git-ignored, so ``data/.locks/`` changes nothing that
git or DVC tracks. A lock only stops processes that see the same lock file's flocks (one machine; on NFS only
where flock reaches the server), so ``collect`` does not lock stores at non-local URLs. The descriptor is not
inherited by programs the holder starts (Python opens files non-inheritable), and the stages' worker processes
are spawned, so no child keeps a lock alive after the process that took it has exited.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from viper.errors import ViperError

LOCK_DIR = ".locks"


def lock_file(data_dir: str | Path, name: str) -> Path:
    """``<data_dir>/.locks/<name>.lock``."""
    return Path(data_dir) / LOCK_DIR / f"{name}.lock"


def folder_lock_file(data_dir: str | Path, folder: str | Path) -> Path:
    """The lock file of a run folder: named after its path under ``data_dir`` (``agents/viper/dmc-x/seed0`` ->
    ``agents-viper-dmc-x-seed0``), so an agent run and an expert run of the same task and seed do not share a lock.
    A folder outside ``data_dir`` (a test's, an ad-hoc run's) is named by its absolute path."""
    folder = Path(folder).resolve()
    try:
        parts = folder.relative_to(Path(data_dir).resolve()).parts
    except ValueError:
        parts = folder.parts[1:]
    return lock_file(data_dir, "-".join(parts) or "data_dir")


def _holder(fd: int) -> tuple[str, str]:
    """(pid, command) written by the lock's holder; unknown while it is between locking and writing them."""
    lines = os.pread(fd, 4096, 0).decode(errors="replace").splitlines()
    pid = lines[0].strip() if lines and lines[0].strip() else "unknown: it is just starting"
    return pid, (lines[1].strip() if len(lines) > 1 else "")


@contextlib.contextmanager
def exclusive(path: str | Path, what: str, command: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` while the block runs; raise ``ViperError`` at once if another process
    holds it. ``what`` names the locked output and ``command`` this process's command (``viper train-agent``),
    both for the message a second writer gets."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, holder = _holder(fd)
            raise ViperError(
                f"another `{holder or command}` is writing {what} (pid {pid}); wait for it or stop it "
                f"(lock file {path}; it is free as soon as that process exits)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{command}\n".encode(), 0)
        try:
            yield path
        finally:
            # Empty between holders; a killed holder's pid stays until the next holder rewrites it, right after
            # locking, and the file is read only while someone holds the lock.
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def folder(data_dir: str | Path, run_dir: str | Path, command: str) -> contextlib.AbstractContextManager[Path]:
    """``exclusive`` on the lock of one run folder (``folder_lock_file``)."""
    return exclusive(folder_lock_file(data_dir, run_dir), str(run_dir), command)
