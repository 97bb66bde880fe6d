"""Rollouts in worker processes for ``collect``: one seeded episode per job, retried when a worker dies or hangs.

Workers are spawned, not forked: EGL/MuJoCo state must not be forked. A rollout is a function of its job
(task, policy, seed, ...), so rolling a job out again after a lost worker gives the same episode.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from viper import runtime
from viper.config import CollectConfig
from viper.errors import ViperError


@dataclass(frozen=True)
class RolloutJob:
    """One episode to roll out in a worker process."""

    task: str
    policy: str
    index: int
    seed: int
    action_repeat: int
    episode_env_steps: int
    fast_render: bool
    expert_settings: tuple[str, ...] = ()


def run_job(job: RolloutJob) -> tuple[int, dict[str, Any]]:
    """Worker entry point: ``(index, {frames, actions, rewards, task_return})`` of one rollout."""
    from viper.experts import rollout

    ep = rollout(
        job.task,
        job.policy,
        job.seed,
        action_repeat=job.action_repeat,
        episode_env_steps=job.episode_env_steps,
        fast_render=job.fast_render,
        expert_settings=job.expert_settings,
    )
    out = {"frames": ep.frames, "actions": ep.actions, "rewards": ep.rewards, "task_return": float(ep.task_return)}
    return job.index, out


WORKER_RETRIES = 2
"""Fresh pools a collection tries after a worker process died or hung, before giving up on the unfinished episodes."""


MIN_STALL_S = 600.0
"""The shortest stall limit, whatever the episode length (process start-up, a busy machine)."""


def stall_limit(cfg: CollectConfig) -> float:
    """Seconds without a finished rollout after which the workers are presumed hung; 0: never. Every episode
    started at or after the last finish, so the gap between finishes is at most one episode's duration."""
    if cfg.stall_seconds_per_step <= 0:
        return 0.0
    return max(MIN_STALL_S, cfg.stall_seconds_per_step * cfg.episode_env_steps)


def parallel_rollouts(
    jobs: list[RolloutJob],
    workers: int,
    run: Callable = run_job,
    retries: int = WORKER_RETRIES,
    stall_s: float = 0.0,
):
    """Yield ``(index, episode)`` as rollouts finish (any order); ``workers`` spawned processes.

    A worker that dies (a native crash in rendering, the OOM killer) breaks its pool; so does one that hangs:
    when no rollout has finished for ``stall_s`` seconds (``stall_limit``; 0 waits forever) the pool's
    processes are killed. The episodes not yet yielded are rolled out again in a fresh pool, up to
    ``retries`` times (rollouts are seeded, so a retry gives the same episodes), then a ``ViperError`` names
    them. (``multiprocessing.Pool`` would wait forever for a dead worker's result instead.)
    """
    if workers <= 1 or len(jobs) <= 1:
        yield from map(run, jobs)
        return
    pending = {job.index: job for job in jobs}
    for attempt in range(retries + 1):
        pool = ProcessPoolExecutor(min(workers, len(pending)), mp_context=multiprocessing.get_context("spawn"))
        what, broken, processes = "died", False, []
        try:
            waiting = {pool.submit(run, job) for job in pending.values()}
            processes = list(getattr(pool, "_processes", {}).values())  # spawned by the submits
            while waiting:
                done, waiting = wait(waiting, timeout=stall_s or None, return_when=FIRST_COMPLETED)
                if not done:
                    what = f"hung (no rollout finished in {stall_s:g} s, collect.stall_seconds_per_step)"
                    runtime.kill_workers(processes)  # the pool breaks: the wait below returns its futures at once
                    continue
                for future in done:
                    index, episode = future.result()
                    del pending[index]
                    yield index, episode
            return
        except BrokenProcessPool as exc:
            broken = True
            if attempt == retries:
                raise ViperError(
                    f"{jobs[0].task}: a rollout worker process {what} {retries + 1} times ({exc}); episodes "
                    f"{sorted(pending)} are not rolled out. The finished ones are kept: run the same command "
                    "again to roll out the rest"
                ) from exc
            print(
                f"{jobs[0].task}: a rollout worker process {what}; rolling out episodes {sorted(pending)} again "
                f"in fresh processes (retry {attempt + 1} of {retries})",
                file=sys.stderr,
            )
        finally:
            if broken:
                runtime.kill_workers(processes)  # survivors of the executor's SIGTERM would hang the shutdown
            pool.shutdown(wait=True, cancel_futures=True)
