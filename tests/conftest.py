"""Shared fixtures. Importing viper sets the runtime environment (viper/runtime.env) for every test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

import viper  # noqa: F401  (runtime environment before anything imports MuJoCo or Prefect)

ROOT = Path(__file__).resolve().parents[1]

# Property tests draw the same examples on every run (``make test`` and CI are reproducible: a red run replays);
# HYPOTHESIS_PROFILE=explore draws fresh random examples to hunt for new failures.
settings.register_profile("repro", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repro"))


@pytest.fixture(autouse=True)
def _torch_threads():
    """Tests share 2 cores with other processes: one torch thread keeps timings stable and fast."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("VIPER_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect test harness (a temporary local API and database) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    # Its default 30 s start-up limit was passed once on a loaded 2-core machine (a red suite, not a defect).
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def venv_on_path(monkeypatch):
    """This interpreter's folder first on PATH, so flows that start `dvc` / `viper` get this environment's."""
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
