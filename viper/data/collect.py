"""The ``collect`` stage: roll out a policy for every task, filter as published, write the video store.

Per task, resumable and idempotent:
  1. Roll out ``episodes_per_task`` episodes in ``workers`` processes (``viper.data.rollouts``). Episode
     ``i`` of task ``t`` uses seed ``SeedSequence([seed, crc32(t), i])``, so a config always produces the same
     episodes. Each finished rollout is appended (atomically) to a hidden staging group
     ``.<name>.collecting``, which records the rollout index; a re-run after a kill rolls out only the missing
     indices.
  2. Filter (``viper.data.filtering``: return percentile, cap, drop first frames, seeded test split) and write
     the kept episodes, in rollout-index order, into ``.<name>.building``.
  3. Swap it in as the task group (``VideoStore.promote``) and delete the staging group.
A task group whose recorded fingerprint matches the config is left alone, so re-running is a no-op; a different
config, or a change to the code that rolls the task out (``rollout_code_files``: the shared rollout code, the
suite's env adapter, the task's scripted expert), re-collects the task and replaces its group in one swap. The
store therefore depends only on the config, not on worker count, timing or interruptions. A group that was imported
(``viper import``) is not replaced unless asked (``--replace-imported``): a user's own videos cannot be rolled out
again. One process collects a task at a time: ``run`` holds the task's lock (``task_lock``) around its work, and a
second is refused.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from viper import locks, paths
from viper.config import CollectConfig, Config, override
from viper.data.filtering import assign_split, select_episodes, task_key, trim_episode
from viper.data.rollouts import RolloutJob, parallel_rollouts, stall_limit
from viper.data.store import VideoStore, open_store
from viper.data.taskgroup import TaskGroup
from viper.errors import ViperError
from viper.experts.policies import SPEC_FORMS, checkpoint_of
from viper.experts.rollout import rollout_code_hash
from viper.hashing import json_digest, sources_digest

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
FILTER_CODE = ("data/filtering.py",)
"""The code (under ``viper/``) that selects, trims and splits the rolled-out episodes: part of the task group's
key, so a fix to it builds the group again (a staging group of a killed collection keeps its rollouts)."""


def episode_seed(seed: int, task: str, index: int) -> int:
    """Seed of rollout ``index`` of ``task`` (a 31-bit int derived from ``(seed, crc32(task), index)``)."""
    state = np.random.SeedSequence([seed, task_key(task), index]).generate_state(1)[0]
    return int(state & 0x7FFFFFFF)


def policy_identity(policy: str) -> dict[str, str] | None:
    """The checkpoint a ``checkpoint`` policy spec loads, by content (None for scripted and random policies, or a
    path that does not exist yet: loading it fails with its own message)."""
    if (path := checkpoint_of(policy)) is None or not Path(path).exists():
        return None
    from viper.agent.policy import checkpoint_identity  # lazy: torch and the agent, for this policy only

    return checkpoint_identity(path)


def fingerprint(cfg: CollectConfig, task: str, fields: tuple[str, ...], identity: dict[str, str] | None = None) -> str:
    """Short hash of the config fields and rollout code (``rollout_code_hash``) that determine ``task``'s data
    (16 hex of sha256). A checkpoint policy adds the checkpoint it loads, ``identity``
    (``policy_identity(cfg.policy)``): a retrained expert (the ``expert`` stage run again with other settings)
    collects again instead of leaving the old expert's videos under the same path."""
    values = {f: getattr(cfg, f) for f in fields}
    values["code"] = rollout_code_hash(task, cfg.policy)
    if set(FILTER_FIELDS) <= set(fields):
        values["filter_code"] = sources_digest(Path(__file__).resolve().parents[1], FILTER_CODE)
    if "policy" in fields and identity is not None:
        values["checkpoint"] = identity
    return json_digest(values)


def _staging(store: VideoStore, cfg: CollectConfig, task: str, identity: dict[str, str] | None) -> TaskGroup:
    """The task's rollout staging group, discarded and re-made if it was made with other rollout settings."""
    key = fingerprint(cfg, task, ROLLOUT_FIELDS, identity)
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
    identity = policy_identity(cfg.policy)  # hashes a checkpoint's weights (~200 MB at size S): once per task
    key = fingerprint(cfg, task, ROLLOUT_FIELDS + FILTER_FIELDS, identity)
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
    staging = _staging(store, cfg, task, identity)
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
        for index, ep in parallel_rollouts(jobs, cfg.workers, stall_s=stall_limit(cfg)):
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
    from viper.data.importers import check_published, write_published

    c = cfg.collect
    root = paths.published_dir(cfg.data_dir) / c.suite
    if not root.is_dir():
        raise ViperError(
            f"collect.policy=published: {root} does not exist; place the published dataset there as "
            f"<task>/{{train,test}}/*.npz (README: 'Reproducing from the published datasets')"
        )
    summary = {}
    for task in tasks:
        checked = check_published(root, c.suite, [task], c.manifest or None)[task]
        # A writer of this task only (the caller holds its lock): writers of other tasks may be mid-write.
        store = open_store(url, "a", chunk_frames=c.chunk_frames, shard_frames=c.shard_frames, task=task)
        kept = store.task(task) if task in store.tasks else None
        if kept is not None and _same_files(kept.attrs.get("source"), checked.source, kept.num_episodes):
            # The same bytes are in the store already: a new import would give the group a new identity, and
            # the tokenizer, prior and agents trained on it would all train again for nothing.
            print(f"collect: {task}: {kept.num_episodes} published episodes, up to date", flush=True)
            summary[task] = kept.num_episodes
            continue
        summary[task] = write_published(store, task, checked)
    return {f"{task}/episodes": count for task, count in summary.items()}


def _same_files(stored: Any, source: dict[str, Any], episodes: int) -> bool:
    """Whether a stored group of ``episodes`` episodes holds the published files ``source`` describes (format,
    count, the sha256 of their checksums); where the folder lies and which manifest checked it do not matter. A
    group re-imported from an export (which carries the source record along, edited or not) or extended since
    is not the published files."""
    if not isinstance(stored, dict) or "imported_from" in stored or episodes != source["files"]:
        return False
    content = ("format", "files", "dataset_sha256")
    return all(k in stored and stored[k] == source[k] for k in content)


def expert_policy(cfg: Config, task: str) -> str:
    """``collect.policy`` for ``task``: ``expert`` means the scripted expert where one exists, otherwise the
    agent that ``viper expert`` trained on the task reward (``viper.paths.expert_dir``)."""
    from viper.experts.policies import needs_trained_expert

    if not needs_trained_expert(cfg.collect.policy, task):
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
        with contextlib.ExitStack() as held:
            for task in tasks:
                held.enter_context(task_lock(cfg, url, task))
            return {**out, **import_published_tasks(cfg, tasks, url)}
    parse_expert_settings(c.expert_settings)  # every entry checked before any rollout
    for task in tasks:
        # Only the task's own settings enter its config, so they (not another task's) decide its fingerprint.
        own = settings_of_task(c.expert_settings, task)
        task_cfg = replace(c, policy=expert_policy(cfg, task), expert_settings=own)
        with task_lock(cfg, url, task):
            for name, value in collect_task(task_cfg, task, url, progress, replace_imported).items():
                out[f"{task}/{name}"] = value
    return out


def task_lock(cfg: Config, url: str, task: str, command: str = "viper collect") -> contextlib.AbstractContextManager:
    """The lock on one task group of the store at ``url`` (``viper.locks``): the store allows one writer per task
    (``viper.data.store``), and two ``viper collect`` runs for a task would otherwise both stage and promote its
    group. Per task, so the Prefect flow's one-task-per-process fan-out still collects several tasks at once. A
    store at a non-local URL is not locked: a lock file on this machine cannot stop a writer elsewhere."""
    if "://" in url and not url.startswith("file://"):
        return contextlib.nullcontext()
    return locks.exclusive(locks.lock_file(cfg.data_dir, f"collect-{paths.slug(task)}"), f"{task} in {url}", command)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Flags mapping onto ``collect.*`` (``--task`` restricts the run to one task)."""
    parser.add_argument("--task", help="collect only this task (full name, e.g. dmc/cartpole_balance)")
    parser.add_argument("--policy", help=f"collect.policy: {SPEC_FORMS}, or 'published' (import the paper's videos)")
    parser.add_argument("--episodes", type=int, help="collect.episodes_per_task")
    parser.add_argument("--workers", type=int, help="collect.workers")
    parser.add_argument("--seed", type=int, help="collect.seed")
    parser.add_argument(
        "--replace-imported",
        action="store_true",
        help="collect over tasks whose videos were imported (`viper import`); without it such tasks are refused",
    )


def apply_arguments(cfg: Config, args: argparse.Namespace) -> Config:
    """``cfg`` with the command-line flags applied to its ``collect`` section; an error names the flag."""
    flags = {"policy": "--policy", "episodes_per_task": "--episodes", "workers": "--workers", "seed": "--seed"}
    changes = {key: getattr(args, flag[2:], None) for key, flag in flags.items()}
    changes = {k: v for k, v in changes.items() if v is not None}
    if getattr(args, "task", None):
        changes["tasks"] = (args.task,)
    shown = {key: f"{flag} {changes[key]}" for key, flag in flags.items() if key in changes}
    if "tasks" in changes:
        shown["tasks"] = f"--task {args.task}"
    return override(cfg, "collect", changes, shown)


def cli(cfg: Config, args: argparse.Namespace, command: str) -> dict[str, Any]:
    """``viper collect``: print where the store is and what each task kept."""
    cfg = apply_arguments(cfg, args)
    if getattr(args, "policy", None):
        # The flag is checked as the config's collect.policy is on load, before any env or store is touched.
        from viper.experts.policies import spec_problem

        why = spec_problem(args.policy)
        if why is not None:
            raise ViperError(f"--policy {args.policy!r}: {why}")
    result = run(cfg, replace_imported=getattr(args, "replace_imported", False))
    for key, value in result.items():
        print(f"{key}: {value}")
    return {k: v for k, v in result.items() if k != "store"}
