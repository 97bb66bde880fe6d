"""The ``collect`` stage: roll out a policy for every task, filter as published, write the video store.

Per task, resumable and idempotent:
  1. Roll out ``episodes_per_task`` episodes in ``workers`` processes (spawned: EGL/MuJoCo state must not be
     forked). Episode ``i`` of task ``t`` uses seed ``SeedSequence([seed, crc32(t), i])``, so a config always
     produces the same episodes. Each finished rollout is appended (atomically) to a hidden staging group
     ``.<name>.collecting``, which records the rollout index; a re-run after a kill rolls out only the missing
     indices.
  2. Filter (``viper.data.filtering``: return percentile, cap, drop first frames, seeded test split) and write
     the kept episodes, in rollout-index order, into ``.<name>.building``.
  3. Swap it in as the task group (``VideoStore.promote``) and delete the staging group.
A task group whose recorded fingerprint matches the config is left alone, so re-running is a no-op; a
different config re-collects the task and replaces its group in one swap. The store therefore depends only
on the config, not on worker count, timing or interruptions. A group that was imported (``viper import``) is
not replaced unless asked (``--replace-imported``): a user's own videos cannot be rolled out again.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from viper import paths, runtime
from viper.checkpoint import json_digest
from viper.config import CollectConfig, Config, override
from viper.data.filtering import assign_split, select_episodes, task_key, trim_episode
from viper.data.store import TaskGroup, VideoStore, open_store
from viper.errors import ViperError

COLLECTING, BUILDING = "collecting", "building"
ROLLOUT_FIELDS = (
    "policy",
    "expert_settings",
    "episodes_per_task",
    "episode_env_steps",
    "action_repeat",
    "seed",
    "fast_render",
)
FILTER_FIELDS = ("keep_return_percentile", "drop_first_frames", "max_episodes_per_task", "test_fraction")


def episode_seed(seed: int, task: str, index: int) -> int:
    """Seed of rollout ``index`` of ``task`` (a 31-bit int derived from ``(seed, crc32(task), index)``)."""
    state = np.random.SeedSequence([seed, task_key(task), index]).generate_state(1)[0]
    return int(state & 0x7FFFFFFF)


def rollout_code_hash() -> str:
    """sha256 (16 hex) of the environment and expert sources: changed rollout code means changed data.

    DVC keeps the store as a persistent output across code changes, so the store itself must notice them.
    """
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for folder in ("envs", "experts"):
        for path in sorted((root / folder).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(cfg: CollectConfig, fields: tuple[str, ...]) -> str:
    """Short hash of the config fields and rollout code that determine a task's data (16 hex of sha256)."""
    values = {f: getattr(cfg, f) for f in fields}
    values["code"] = rollout_code_hash()
    return json_digest(values)


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


def _rollouts(
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


def _staging(store: VideoStore, cfg: CollectConfig, task: str) -> TaskGroup:
    """The task's rollout staging group, discarded and re-made if it was made with other rollout settings."""
    key = fingerprint(cfg, ROLLOUT_FIELDS)
    if store.has_staging(task, COLLECTING):
        group = store.staging(task, COLLECTING)
        if group.attrs.get("source", {}).get("rollout_fingerprint") == key:
            return group
        store.discard_staging(task, COLLECTING)
    attrs = {"action_repeat": cfg.action_repeat, "source": {"rollout_fingerprint": key}}
    return store.staging(task, COLLECTING, attrs=attrs)


def imported_from(group: TaskGroup) -> str | None:
    """Where a task group's videos were imported from (``viper import``, HDF5 or npz), None when collected."""
    source = group.attrs.get("source", {})
    if "imported_from" in source:
        return str(source["imported_from"])
    if "format" in source:
        return f"{source['format']} {source.get('root', '')}".strip()
    return None


def collect_task(
    cfg: CollectConfig, task: str, store_url: str, progress: bool = True, replace_imported: bool = False
) -> dict[str, float]:
    """Collect, filter and write one task's group; returns its summary numbers.

    A group that was imported rather than collected is not replaced unless ``replace_imported``: a user's own
    videos cannot be regenerated by running the command again."""
    # Opened for this task only: the Prefect flow collects several tasks into one store at once.
    store = open_store(store_url, "a", chunk_frames=cfg.chunk_frames, shard_frames=cfg.shard_frames, task=task)
    key = fingerprint(cfg, ROLLOUT_FIELDS + FILTER_FIELDS)
    existing = store.task(task) if task in store.tasks else None
    if existing is not None and existing.attrs.get("source", {}).get("fingerprint") == key:
        store.discard_staging(task, COLLECTING)
        return _summary(existing, rolled_out=cfg.episodes_per_task)
    origin = imported_from(existing) if existing is not None else None
    if origin is not None and not replace_imported:
        raise ViperError(
            f"{store_url}: the videos of {task} were imported ({origin}), not collected; collecting would replace "
            f"them. Train on them with the later stages (README: 'Your own expert videos'), leave {task} out of "
            "collect.tasks, or pass --replace-imported to collect over them"
        )
    staging = _staging(store, cfg, task)
    done = set(staging.episode_ids.tolist())
    jobs = [
        RolloutJob(
            task,
            cfg.policy,
            i,
            episode_seed(cfg.seed, task, i),
            cfg.action_repeat,
            cfg.episode_env_steps,
            cfg.fast_render,
            cfg.expert_settings,
        )
        for i in range(cfg.episodes_per_task)
        if i not in done
    ]
    with tqdm(total=cfg.episodes_per_task, initial=len(done), desc=task, disable=not progress, unit="ep") as bar:
        for index, ep in _rollouts(jobs, cfg.workers, stall_s=stall_limit(cfg)):
            staging.append(ep["frames"], ep["actions"], ep["rewards"], task_return=ep["task_return"], episode_id=index)
            bar.update(1)
            bar.set_postfix(ret=f"{ep['task_return']:.1f}")
    _build(store, staging, cfg, task, key)
    store.promote(task, BUILDING)
    store.discard_staging(task, COLLECTING)
    return _summary(store.task(task), rolled_out=cfg.episodes_per_task, all_returns=staging.returns)


def _build(store: VideoStore, staging: TaskGroup, cfg: CollectConfig, task: str, key: str) -> None:
    """Filter the staged rollouts into a fresh ``building`` group, in rollout-index order."""
    order = np.argsort(staging.episode_ids, kind="stable")
    ids, returns, lengths = staging.episode_ids[order], staging.returns[order], staging.lengths[order]
    if len(ids) != cfg.episodes_per_task or not np.array_equal(ids, np.arange(cfg.episodes_per_task)):
        raise ViperError(
            f"{staging.where}: staged rollouts {ids.tolist()[:10]}... are not 0..{cfg.episodes_per_task - 1}"
        )
    kept = select_episodes(returns, cfg.keep_return_percentile, cfg.max_episodes_per_task)
    kept = kept[lengths[kept] > cfg.drop_first_frames]
    if kept.size == 0:
        raise ViperError(
            f"{task}: no episode survives filtering (percentile {cfg.keep_return_percentile}, drop_first_frames "
            f"{cfg.drop_first_frames}, episode lengths {lengths.min()}..{lengths.max()})"
        )
    split = assign_split(kept.size, cfg.test_fraction, cfg.seed, task)
    store.discard_staging(task, BUILDING)
    source = {
        "fingerprint": key,
        "policy": cfg.policy,
        "expert_settings": list(cfg.expert_settings),
        "seed": cfg.seed,
        "episodes_rolled_out": cfg.episodes_per_task,
        "episode_env_steps": cfg.episode_env_steps,
        "returns_rolled_out": [float(r) for r in returns],
        **{f: getattr(cfg, f) for f in FILTER_FIELDS},
    }
    build = store.staging(task, BUILDING, attrs={"action_repeat": cfg.action_repeat, "source": source})
    for code, i in zip(split, kept, strict=True):
        ep = trim_episode(staging.read_episode(int(order[i])), cfg.drop_first_frames)
        build.append(
            ep["frames"],
            ep.get("actions"),
            ep.get("rewards"),
            split="test" if code else "train",
            task_return=float(returns[i]),
            episode_id=int(ids[i]),
        )


def _summary(group: TaskGroup, rolled_out: int, all_returns: np.ndarray | None = None) -> dict[str, float]:
    out = {
        "episodes_rolled_out": rolled_out,
        "episodes_kept": group.num_episodes,
        "episodes_test": int(group.episodes("test").size),
        "frames": group.num_frames,
        "return_kept_mean": float(np.mean(group.returns)),
    }
    returns = all_returns if all_returns is not None else group.attrs.get("source", {}).get("returns_rolled_out")
    if returns is not None and len(returns):
        out["return_rolled_out_mean"] = float(np.mean(returns))
    return out


PUBLISHED = "published"
"""``collect.policy`` that imports the published dataset instead of rolling out."""


def import_published_tasks(cfg: Config, tasks: tuple[str, ...], url: str) -> dict[str, Any]:
    """Import ``tasks`` from ``<published_dir>/<suite>`` (verified against ``collect.manifest`` when set)."""
    from viper.data.importers import import_published

    c = cfg.collect
    root = paths.published_dir(cfg.data_dir) / c.suite
    if not root.is_dir():
        raise ViperError(
            f"collect.policy=published: {root} does not exist; place the published dataset there as "
            f"<task>/{{train,test}}/*.npz (README: 'Reproducing from the published datasets')"
        )
    store = open_store(url, "a", chunk_frames=c.chunk_frames, shard_frames=c.shard_frames)
    summary = import_published(root, store, c.suite, list(tasks), c.manifest or None)
    return {f"{task}/episodes": count for task, count in summary.items()}


def expert_policy(cfg: Config, task: str) -> str:
    """``collect.policy`` for ``task``: ``expert`` means the scripted expert where one exists, otherwise the
    agent that ``viper expert`` trained on the task reward (``viper.paths.expert_dir``)."""
    from viper.experts.policies import scripted_tasks

    if cfg.collect.policy != "expert" or task in scripted_tasks():
        return cfg.collect.policy
    trained = paths.expert_dir(cfg.data_dir, task)
    if not (trained / "checkpoints").exists():
        raise ViperError(
            f"{task!r} has no scripted expert and no trained one in {trained}; run `viper expert --task {task}` "
            "(the `expert` stage of dvc.yaml) first"
        )
    return f"checkpoint:{trained}"


def run(
    cfg: Config, tasks: tuple[str, ...] | None = None, progress: bool = True, replace_imported: bool = False
) -> dict[str, Any]:
    """Collect every task of ``cfg.collect.tasks`` (or ``tasks``) into ``viper.paths.store``; returns
    ``{"store": path, "<task>/<metric>": value, ...}``. Imported groups are replaced only with
    ``replace_imported`` (``collect_task``)."""
    from viper.envs import suites
    from viper.experts.policies import parse_expert_settings, settings_of_task

    c = cfg.collect
    tasks = tuple(tasks) if tasks is not None else tuple(c.tasks)
    for task in tasks:
        suites.check_task(task)
        if suites.suite_of(task) != c.suite:
            raise ViperError(f"task {task!r} is not in suite {c.suite!r} (collect.suite); store would mix suites")
    url = str(paths.store(cfg.data_dir, c.suite))
    out: dict[str, Any] = {"store": url}
    if c.policy == PUBLISHED:
        return {**out, **import_published_tasks(cfg, tasks, url)}
    parse_expert_settings(c.expert_settings)  # every entry checked before any rollout
    for task in tasks:
        # Only the task's own settings enter its config, so they (not another task's) decide its fingerprint.
        own = settings_of_task(c.expert_settings, task)
        task_cfg = replace(c, policy=expert_policy(cfg, task), expert_settings=own)
        for name, value in collect_task(task_cfg, task, url, progress, replace_imported).items():
            out[f"{task}/{name}"] = value
    return out


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Flags mapping onto ``collect.*`` (``--task`` restricts the run to one task)."""
    parser.add_argument("--task", help="collect only this task (full name, e.g. dmc/cartpole_balance)")
    parser.add_argument("--policy", help="collect.policy: expert, random, noisy:<eps>, checkpoint:<path>")
    parser.add_argument("--episodes", type=int, help="collect.episodes_per_task")
    parser.add_argument("--workers", type=int, help="collect.workers")
    parser.add_argument("--seed", type=int, help="collect.seed")
    parser.add_argument(
        "--replace-imported",
        action="store_true",
        help="collect over tasks whose videos were imported (`viper import`); without it such tasks are refused",
    )


def apply_arguments(cfg: Config, args: argparse.Namespace) -> Config:
    """``cfg`` with the command-line flags applied to its ``collect`` section."""
    changes = {
        "policy": getattr(args, "policy", None),
        "episodes_per_task": getattr(args, "episodes", None),
        "workers": getattr(args, "workers", None),
        "seed": getattr(args, "seed", None),
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if getattr(args, "task", None):
        changes["tasks"] = (args.task,)
    return override(cfg, "collect", **changes)


def cli(cfg: Config, args: argparse.Namespace, command: str) -> dict[str, Any]:
    """``viper collect``: print where the store is and what each task kept."""
    cfg = apply_arguments(cfg, args)
    result = run(cfg, replace_imported=getattr(args, "replace_imported", False))
    for key, value in result.items():
        print(f"{key}: {value}")
    return {k: v for k, v in result.items() if k != "store"}
