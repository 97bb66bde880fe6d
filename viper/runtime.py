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
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_FILE = Path(__file__).with_name("runtime.env")


def settings() -> dict[str, str]:
    """The ``KEY=VALUE`` pairs of runtime.env (comments and blank lines skipped)."""
    out = {}
    for line in ENV_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def configure() -> None:
    """Set every runtime.env variable that the environment does not already set."""
    for key, value in settings().items():
        if key == "PREFECT_HOME":
            value = str(Path(value).absolute())
        os.environ.setdefault(key, value)
