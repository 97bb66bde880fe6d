"""Fan-out through a Dask cluster: the collect flow on two tasks over a local cluster of two worker processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pipeline.flows import collect_videos
from pipeline.runners import make_runner
from viper import paths
from viper.data.store import open_store

TASKS = ["dmc/cartpole_balance", "dmc/cartpole_swingup"]


@pytest.mark.slow
def test_collect_flow_fans_out_over_a_two_worker_dask_cluster(tmp_path, prefect_api, venv_on_path):
    pytest.importorskip("prefect_dask", reason="the [dask] extra (in requirements.lock) is not installed")
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "preset": "tiny", "data_dir": "data"}))
    runner = make_runner("dask", workers=2)
    drivers = collect_videos.with_options(task_runner=runner)(tasks=TASKS, preset="tiny", project_dir=str(tmp_path))
    # Each task was driven from a Dask worker process, not from a thread of this one.
    assert set(drivers) == set(TASKS) and os.getpid() not in drivers.values(), drivers
    store = open_store(paths.store(tmp_path / "data", "dmc"))
    assert store.tasks == TASKS
    for task in TASKS:
        assert len(store.task(task).episodes()) == 4, task
