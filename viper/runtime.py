"""Process environment shared by the CLI, tests, CI and the Makefile: read from ``viper/runtime.env``.

``configure()`` runs when ``viper`` is imported, before any module imports MuJoCo, so headless rendering
(``MUJOCO_GL=egl``) and a project-local ``PREFECT_HOME`` hold however a stage is started. Values already in
the environment win; a relative ``PREFECT_HOME`` is made absolute against the working directory.

``THP_MEM_ALLOC_ENABLE=1`` makes PyTorch back CPU tensors of 2 MiB and more with transparent huge pages. glibc
serves such blocks with their own ``mmap`` and unmaps them on free, so without it every large activation or
gradient of a training step is page-faulted in again, 4 KiB at a time (~400k faults per agent update at size
XS): filling a fresh 80 MB tensor takes 85 ms instead of 16 ms here. PyTorch reads the variable once, at its
first CPU allocation, which is why it is set here, before any viper module creates a tensor. Effect on an update:
``benchmarks/results/agent.md``.

``GLIBC_TUNABLES`` raises glibc's mmap and trim thresholds so that a freed tensor's memory stays in the heap and
the next tensor reuses it. By default glibc maps every block above 32 MiB on its own and unmaps it on free, and
on these VMs touching a fresh page is expensive (a fresh 80 MB tensor took 16 ms to fill, a reused one 8 ms;
inside an agent update, where the machine's memory is busy, 58 vs 3 ms for a 32 MB one). The reuse needs the
huge-page setting above too: glibc hands the 2 MiB-aligned blocks PyTorch then asks for out again, but not the
64-byte-aligned ones it asks for otherwise. The cost is that a process keeps the memory of its largest step until
it exits. Effect on an agent update: ``benchmarks/results/agent.md``. glibc reads the variable only when a
process starts, so ``restart_if_needed`` re-executes the ``viper`` command once when it was started without it
(``make``, Prefect flows and the stage commands that ``viper`` or ``dvc`` spawn inherit it).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path

ENV_FILE = Path(__file__).with_name("runtime.env")

READ_AT_START = ("GLIBC_TUNABLES",)
"""runtime.env variables that take effect only in a process started with them (the C library reads them)."""

_missing_at_start: list[str] = []


def settings() -> dict[str, str]:
    """The ``KEY=VALUE`` pairs of runtime.env (comments and blank lines skipped)."""
    out = {}
    for line in ENV_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


OPEN_FILES = 65536
"""The open-files limit a viper process asks for (up to the hard limit): the store's direct reader keeps each
shard file it reads open (``viper.data.fastread``), per task and per DataLoader worker, and ~1,000 shards of a
17-task paper-scale store would pass the common soft limit of 1,024."""


def raise_open_files_limit() -> None:
    """Raise the soft open-files limit towards ``OPEN_FILES``; never above the hard limit, never lowered."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        # Best effort: macOS, say, refuses values below an "unlimited" hard limit that its kernel caps.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def configure() -> None:
    """Set every runtime.env variable that the environment does not already set; raise the open-files limit."""
    raise_open_files_limit()
    for key, value in settings().items():
        if key == "PREFECT_HOME":
            value = str(Path(value).absolute())
        if key in READ_AT_START and key not in os.environ and platform.libc_ver()[0] == "glibc":
            _missing_at_start.append(key)
        os.environ.setdefault(key, value)


def missing_at_start() -> list[str]:
    """The ``READ_AT_START`` variables this process started without (empty after ``restart_if_needed``)."""
    return list(_missing_at_start)


def restart_if_needed() -> None:
    """Re-execute this process with the same command line if it started without a ``READ_AT_START`` variable.

    ``configure()`` has put the variable into ``os.environ`` by now, so the new process starts with it and does
    not restart again. Only for a command's own process (the ``viper`` entry point), never inside a caller's.
    """
    if _missing_at_start:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


DEVICE_PATTERN = r"auto|cpu|mps|cuda(?::(\d+))?"
"""What a device setting may say (``sections.Device``): auto, cpu, mps (Apple GPUs), cuda or cuda:<i>."""
DEVICE_NAMES = "auto, cpu, mps, cuda or cuda:<i>"


def resolve_device(name: str, key: str, local_rank: int = 0):
    """The torch device the setting ``key`` names: ``auto`` -> ``cuda:<local_rank>`` when CUDA is present, else
    the CPU; ``cpu``; ``mps``; ``cuda[:i]``, refused (a ViperError naming ``key``) where that device is missing."""
    import re

    import torch

    from viper.errors import ViperError

    match = re.fullmatch(DEVICE_PATTERN, name)
    if match is None:
        raise ViperError(f"{key}={name!r}: expected {DEVICE_NAMES}")
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ViperError(f"{key}={name!r}: no Apple GPU (MPS) on this machine (use auto or cpu)")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ViperError(f"{key}={name!r}: CUDA is not available on this machine (use auto or cpu)")
        if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
            raise ViperError(f"{key}={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def kill_workers(processes) -> None:
    """SIGKILL the worker processes of a broken ``ProcessPoolExecutor`` (``pool._processes.values()``) before its
    shutdown. The executor only SIGTERMs them, and a worker that inherited an ignored SIGTERM (from a parent
    started as a shell's background job or by some job runners) survives that; one blocked writing its result
    into a pipe nobody reads any more then makes ``shutdown`` wait forever."""
    for process in list(processes):
        if process.is_alive():
            process.kill()
