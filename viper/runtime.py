"""Process environment shared by the CLI, tests, CI and the Makefile: read from ``viper/runtime.env``.

``configure()`` runs when ``viper`` is imported, before any module imports MuJoCo, so headless rendering
(``MUJOCO_GL=egl``) and a project-local ``PREFECT_HOME`` hold however a stage is started. Values already in
the environment win; a relative ``PREFECT_HOME`` is made absolute against the working directory.
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
