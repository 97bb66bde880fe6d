"""Rollout worker pools (viper.data.rollouts): a worker that dies or hangs is retried, then named, never waited for."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from viper import config as config_lib
from viper.data import rollouts
from viper.errors import ViperError

TASK = "dmc/cartpole_balance"


def die_once(job):
    """A rollout worker that kills its own process (SIGKILL, as the OOM killer would) the first time it gets
    episode 1 and in every try of episode 2; other tries roll out for real. Markers live in $DIE_MARKERS."""
    marker = Path(os.environ["DIE_MARKERS"]) / str(job.index)
    if job.index == 2 or (job.index == 1 and not marker.exists()):
        marker.write_text(str(int(marker.read_text()) + 1 if marker.exists() else 1))
        os.kill(os.getpid(), signal.SIGKILL)
    if job.index == 0 and os.environ.get("FINISH_LATE"):
        time.sleep(5)  # finish after another worker broke the pool: the episode's result has no reader
    return rollouts.run_job(job)


@pytest.mark.timeout(240)
def test_a_dead_worker_is_retried_then_named_never_waited_for(tmp_path, monkeypatch, capsys):
    """A worker process killed mid-rollout: its episodes run again in a fresh pool (multiprocessing.Pool used
    to wait forever here); one that keeps dying ends in an error naming it. A worker still rolling out when the
    pool broke is killed and its episode named, not waited for (one blocked in its result pipe hung CI once)."""
    monkeypatch.setenv("DIE_MARKERS", str(tmp_path))
    job = rollouts.RolloutJob(TASK, "expert", 0, 0, 2, 10, True)
    jobs = [dataclasses.replace(job, index=i) for i in (0, 1, 3)]
    got = dict(rollouts.parallel_rollouts(jobs, workers=2, run=die_once, retries=1))
    assert sorted(got) == [0, 1, 3] and (tmp_path / "1").read_text() == "1"
    assert "rolling out episodes" in capsys.readouterr().err
    # The retried episode is the one the dead worker was rolling out (rollouts are seeded by the job).
    _, direct = rollouts.run_job(jobs[1])
    np.testing.assert_array_equal(got[1]["frames"], direct["frames"])
    np.testing.assert_array_equal(got[1]["actions"], direct["actions"])

    # Episode 0 finishes late: usually after episode 2's worker broke the pool, so it is named too, never lost.
    # The workers inherit an ignored SIGTERM (as under some job runners and shells' background jobs), so the
    # executor's own SIGTERM of a broken pool's other workers does not end them: collect must SIGKILL them.
    monkeypatch.setenv("FINISH_LATE", "1")
    jobs, yielded = [dataclasses.replace(job, index=i) for i in (0, 2)], []
    start = time.monotonic()
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with pytest.raises(ViperError, match=r"died 2 times .*episodes \[(0, )?2\] are not rolled out") as err:
            for index, _ in rollouts.parallel_rollouts(jobs, workers=2, run=die_once, retries=1):
                yielded.append(index)
    finally:
        signal.signal(signal.SIGTERM, previous)
    named = [0, 2] if "[0, 2]" in str(err.value) else [2]
    assert sorted(yielded + named) == [0, 2] and (tmp_path / "2").read_text() == "2"
    assert time.monotonic() - start < 120


def hang_once(job):
    """A rollout worker that hangs (sleeps for an hour) the first time it gets episode 1; markers in $DIE_MARKERS."""
    marker = Path(os.environ["DIE_MARKERS"]) / f"hang{job.index}"
    if job.index == 1 and not marker.exists():
        marker.write_text("1")
        time.sleep(3600)
    return job.index, {"pid": os.getpid()}


def test_a_hung_worker_is_killed_and_its_episodes_retried(tmp_path, monkeypatch, capsys):
    """No rollout finished for the stall limit: the workers are killed, the unfinished episodes rolled
    out again (a hung worker used to stall collect forever)."""
    monkeypatch.setenv("DIE_MARKERS", str(tmp_path))
    job = rollouts.RolloutJob(TASK, "expert", 0, 0, 2, 10, True)
    jobs = [dataclasses.replace(job, index=i) for i in (0, 1, 3)]
    start = time.monotonic()
    got = dict(rollouts.parallel_rollouts(jobs, workers=2, run=hang_once, retries=1, stall_s=4))
    assert sorted(got) == [0, 1, 3] and time.monotonic() - start < 120
    assert "hung (no rollout finished in 4 s, collect.stall_seconds_per_step)" in capsys.readouterr().err
    # The limit bounds one episode: per agent step, at least 10 minutes, 0 off.
    cfg = config_lib.load("tiny", params_path=None).collect
    assert rollouts.stall_limit(dataclasses.replace(cfg, episode_env_steps=27_000)) == 27_000
    assert rollouts.stall_limit(dataclasses.replace(cfg, episode_env_steps=40)) == rollouts.MIN_STALL_S
    assert rollouts.stall_limit(dataclasses.replace(cfg, stall_seconds_per_step=0.0)) == 0
