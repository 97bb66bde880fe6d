"""Stage ``reward-eval``: does the VIPER reward rank expert behaviour above non-expert behaviour?

For every task of the preset it scores
  * held-out expert episodes (the video store's test split),
  * noisy-expert episodes at each ``evaluate.noisy_epsilons`` and random-policy episodes, rolled out fresh with
    ``viper.experts.rollout`` (seeds ``evaluate.seed + i``), with the store's ``collect.drop_first_frames``
    dropped so that every category shows the same part of an episode; the noisy expert is the one the videos
    came from (the scripted expert with ``collect.expert_settings``, else the agent ``viper expert`` trained;
    a task with neither gets no noisy episodes),
  * the expert episodes with their frames shuffled in time and played backwards (does the prior model
    dynamics, or only poses?),
and reports AUROC(expert vs random), AUROC(expert vs each epsilon), AUROC(expert vs shuffled / reversed) on the
episode mean reward (over the steps an agent is rewarded for: after the first ``context_steps``), and the Spearman
correlation between episode mean reward and task return over expert, noisy and random episodes (those with a known
return: imported videos have none). Outputs under ``viper.paths.reward_eval_dir``: ``metrics.json``,
``episodes.jsonl`` (one line per scored episode; a re-run skips the episodes already scored under their category's
key, ``record_keys``: the reward model, and the task's videos or the category's rollout settings), ``scatter.png``.
"""

from __future__ import annotations

import argparse
import json
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from viper import paths, runtime
from viper.config import Config
from viper.errors import ViperError
from viper.eval.keys import reward_eval_by_task, reward_eval_key
from viper.eval.stats import auroc, spearman
from viper.hashing import json_digest
from viper.metrics import save_figure, write_json
from viper.reward.model import VideoReward


@dataclass(frozen=True)
class Scored:
    """One scored episode."""

    task: str
    category: str
    """``expert``, ``noisy:<eps>``, ``random``, ``shuffled`` or ``reversed``."""
    index: int
    """Store episode index (expert, shuffled, reversed) or rollout number (noisy, random)."""
    mean_reward: float
    """Mean per-step reward in nats over the steps an agent is rewarded for (``VideoReward.agent_rewards``: after
    the first ``context_steps``, which for frame_skip > 1 is more than the steps without a full window)."""
    task_return: float
    steps: int
    model: str
    """Key of what the score depends on (``record_keys``: reward model, the task's videos, rollout settings)."""


def _rollout(task: str, policy: str, seed: int, cfg: Config) -> tuple[np.ndarray, float]:
    """Roll out one episode (runs in a worker process): frames after the dropped prefix, task return."""
    from viper.experts import rollout

    c = cfg.collect
    episode = rollout(
        task, policy, seed, c.action_repeat, c.episode_env_steps, c.fast_render, expert_settings=c.expert_settings
    )
    return episode.frames[c.drop_first_frames :], float(episode.task_return)


def noisy_policies(cfg: Config, task: str) -> dict[str, str]:
    """Category (``noisy:<eps>``) -> policy spec: noise on the expert the videos came from (module docstring);
    empty, with a printed line, for a task without a scripted or trained expert."""
    from viper.experts.policies import scripted_tasks

    trained = paths.expert_dir(cfg.data_dir, task)
    if task in scripted_tasks():
        base = ""
    elif (trained / "checkpoints").exists():
        base = f":checkpoint:{trained}"
    else:
        print(f"reward-eval: {task} has no scripted expert and no trained one in {trained}: no noisy-expert episodes")
        return {}
    return {f"noisy:{eps:g}": f"noisy:{eps:g}{base}" for eps in cfg.evaluate.noisy_epsilons}


def _group(cfg: Config, task: str):
    from viper.data.store import open_store

    return open_store(paths.store(cfg.data_dir, task.split("/", 1)[0])).task(task)


def _expert_episodes(cfg: Config, task: str) -> list[tuple[int, np.ndarray, float]]:
    """(store index, frames, return) of the first ``reward_eval_episodes`` test-split episodes."""
    suite = task.split("/", 1)[0]
    group = _group(cfg, task)
    test = group.episodes("test")[: cfg.evaluate.reward_eval_episodes]
    if test.size == 0:
        raise ViperError(f"{paths.store(cfg.data_dir, suite)}: {task} has no test-split episodes to evaluate")
    return [(int(i), group.read_episode(int(i))["frames"], float(group.returns[i])) for i in test]


EPISODE_CATEGORIES = ("expert", "shuffled", "reversed")
"""Categories scored from the store's held-out expert episodes (the others are fresh rollouts)."""


def record_keys(cfg: Config, reward_identity: str, task: str, videos: str, policies: dict[str, str]) -> dict[str, str]:
    """Category -> 16 hex digits naming what its scores depend on, so a change re-scores only the categories it
    affects. All: the reward model (``reward_identity``, its ``VideoReward.identity``). Expert, shuffled and
    reversed: the task's videos (store identity) and the scoring code (``viper.stages.SCORING_CODE``); shuffled also
    ``evaluate.seed`` (the permutations). A rollout category (``policies``: category -> spec): the stage's whole
    code (``code_digest``: scoring, rollout, agent and env code), its spec, seed and episode settings, and for a
    noisy expert this task's ``collect.expert_settings`` or the trained expert's weights."""
    from viper.agent.policy import checkpoint_identity
    from viper.experts.policies import checkpoint_of, settings_of_task
    from viper.stages import SCORING_CODE, code_digest, repo_digest

    c = cfg.collect
    code, scoring = code_digest("reward-eval"), repo_digest(SCORING_CODE)
    keys = {
        "expert": json_digest([reward_identity, videos, scoring]),
        "reversed": json_digest([reward_identity, videos, "reversed", scoring]),
        "shuffled": json_digest([reward_identity, videos, cfg.evaluate.seed, scoring]),
    }
    episodes = [cfg.evaluate.seed, c.action_repeat, c.episode_env_steps, c.fast_render, c.drop_first_frames]
    for category, spec in policies.items():
        expert = ""
        if (trained := checkpoint_of(spec)) is not None:
            expert = checkpoint_identity(trained)
        elif spec.startswith("noisy:"):
            expert = list(settings_of_task(c.expert_settings, task))
        keys[category] = json_digest([reward_identity, spec, episodes, code, expert])
    return keys


def _mean_reward(reward: VideoReward, frames: np.ndarray, task: str) -> float:
    """Mean of the rewards an agent gets for the episode (``agent_rewards``: after the context steps)."""
    rewards = reward.agent_rewards(frames, task)
    finite = rewards[np.isfinite(rewards)]
    if finite.size == 0:
        raise ViperError(
            f"{task}: an episode of {len(frames)} frames gets no reward: the first {reward.context_steps} steps are "
            "the reward model's context"
        )
    return float(finite.mean())


def evaluate_task(
    cfg: Config, reward: VideoReward, task: str, keys: dict[str, str], policies: dict[str, str], out: Path, pool
) -> list[Scored]:
    """Score every category of ``task`` (``policies``: category -> spec of the fresh rollouts) under its key
    (``keys``, ``record_keys``), reusing the records of ``out`` with that key and appending new ones; a progress
    bar counts the episodes, reused ones included."""
    done = _load_done(out, keys)
    experts = _expert_episodes(cfg, task)
    n = cfg.evaluate.reward_eval_episodes
    total = 3 * len(experts) + len(policies) * n
    bar = tqdm(total=total, desc=f"reward-eval {task}", unit="ep", dynamic_ncols=True)
    records: list[Scored] = []

    def keep(category: str, index: int, frames: np.ndarray, task_return: float) -> None:
        score = _mean_reward(reward, frames, task)
        record = Scored(task, category, index, score, task_return, len(frames), keys[category])
        records.append(record)
        with out.open("a") as fh:  # one line per episode: a killed run keeps what it scored
            fh.write(json.dumps(asdict(record)) + "\n")
        bar.update(1)
        bar.set_postfix(category=category, reward=f"{record.mean_reward:.1f}")

    try:
        shuffle = np.random.default_rng([cfg.evaluate.seed, zlib.crc32(task.encode())])
        for index, frames, task_return in experts:
            order = shuffle.permutation(len(frames))  # drawn even when cached, so later episodes get the same order
            for category, view in (("expert", frames), ("shuffled", frames[order]), ("reversed", frames[::-1])):
                if (task, category, index) in done:
                    records.append(done[(task, category, index)])
                    bar.update(1)
                else:
                    keep(category, index, np.ascontiguousarray(view), task_return)
        jobs = {}
        for category, policy in policies.items():
            for i in range(n):
                if (task, category, i) in done:
                    records.append(done[(task, category, i)])
                    bar.update(1)
                else:
                    args = (task, policy, cfg.evaluate.seed + i, cfg)
                    jobs[(category, i)] = pool.submit(_rollout, *args) if pool is not None else args
        for (category, i), job in jobs.items():
            frames, task_return = job.result() if pool is not None else _rollout(*job)
            keep(category, i, frames, task_return)
    finally:  # a scoring error leaves no stray bar line
        bar.close()
    return records


def task_metrics(records: list[Scored], epsilons: tuple[float, ...]) -> dict[str, float]:
    """AUROCs and Spearman of one task's records (see the module docstring); ``epsilons``: the noisy categories
    the task has (none for a task without an expert to perturb)."""
    by: dict[str, list[Scored]] = {}
    for r in records:
        by.setdefault(r.category, []).append(r)
    needed = ["expert", "random", "shuffled", "reversed"] + [f"noisy:{eps:g}" for eps in epsilons]
    missing = [c for c in needed if c not in by]
    if missing:
        raise ViperError(f"{records[0].task if records else '?'}: no scored episodes for {', '.join(missing)}")
    expert = [r.mean_reward for r in by["expert"]]
    out = {
        "auroc_expert_vs_random": auroc(expert, [r.mean_reward for r in by["random"]]),
        "auroc_expert_vs_shuffled": auroc(expert, [r.mean_reward for r in by["shuffled"]]),
        "auroc_expert_vs_reversed": auroc(expert, [r.mean_reward for r in by["reversed"]]),
    }
    for eps in epsilons:
        out[f"auroc_expert_vs_noisy_{eps:g}"] = auroc(expert, [r.mean_reward for r in by[f"noisy:{eps:g}"]])
    ranked = [r for r in records if r.category not in ("shuffled", "reversed") and np.isfinite(r.task_return)]
    out["spearman_reward_vs_return"] = (
        spearman([r.mean_reward for r in ranked], [r.task_return for r in ranked]) if len(ranked) > 1 else np.nan
    )
    for category, rs in by.items():
        out[f"mean_reward/{category}"] = float(np.mean([r.mean_reward for r in rs]))
        out[f"mean_return/{category}"] = float(np.mean([r.task_return for r in rs]))
    return out


def _load_done(path: Path, keys: dict[str, str]) -> dict[tuple, Scored]:
    """``(task, category, index)`` -> the records of ``path`` scored under their category's current key."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = Scored(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # a line cut short by a kill
            if record.model == keys.get(record.category):
                done[(record.task, record.category, record.index)] = record
    return done


def scatter(per_task: dict[str, list[Scored]], metrics: dict[str, float], path: Path) -> Path:
    """PNG: one panel per task, episode mean reward against task return, coloured by category."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(per_task), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(per_task), squeeze=False)[0]
    for ax, (task, records) in zip(axes, per_task.items(), strict=True):
        categories = sorted({r.category for r in records if r.category not in ("shuffled", "reversed")})
        for category in sorted(categories, key=lambda c: (c != "expert", c)):
            rs = [r for r in records if r.category == category]
            ax.scatter([r.task_return for r in rs], [r.mean_reward for r in rs], s=18, label=category, alpha=0.8)
        ax.set_title(
            f"{task}\nAUROC vs random {metrics[reward_eval_key(task, 'auroc_expert_vs_random')]:.2f}, "
            f"Spearman {metrics[reward_eval_key(task, 'spearman_reward_vs_return')]:.2f}",
            fontsize=9,
        )
        ax.set_xlabel("task return")
        ax.set_ylabel("mean VIPER reward (nats/step)")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def run(cfg: Config) -> dict[str, float]:
    """Evaluate the reward model on every task of the preset; returns the flat metrics (also metrics.json)."""
    suite = cfg.collect.suite
    out_dir = paths.reward_eval_dir(cfg.data_dir, suite)
    out_dir.mkdir(parents=True, exist_ok=True)
    reward = VideoReward.load(
        paths.tokenizer_dir(cfg.data_dir, suite), paths.prior_dir(cfg.data_dir, suite), cfg.reward
    )
    episodes = out_dir / "episodes.jsonl"
    model = reward.identity()
    plan = {}
    for task in cfg.collect.tasks:
        policies = {**noisy_policies(cfg, task), "random": "random"}
        plan[task] = (record_keys(cfg, model, task, _group(cfg, task).identity, policies), policies)
    # Start the file afresh with only the records still valid, so stale lines never accumulate.
    done = [r for task, (keys, _) in plan.items() for r in _load_done(episodes, keys).values() if r.task == task]
    tmp = episodes.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(asdict(r)) + "\n" for r in done))
    tmp.replace(episodes)
    workers = max(1, cfg.collect.workers)
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else None
    try:
        per_task = {
            task: evaluate_task(cfg, reward, task, keys, policies, episodes, pool)
            for task, (keys, policies) in plan.items()
        }
    except BrokenProcessPool:
        runtime.kill_workers(getattr(pool, "_processes", {}).values())  # before the shutdown waits for them
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    metrics: dict[str, float] = {}
    for task, records in per_task.items():
        epsilons = tuple(eps for eps in cfg.evaluate.noisy_epsilons if f"noisy:{eps:g}" in plan[task][1])
        for key, value in task_metrics(records, epsilons).items():
            metrics[reward_eval_key(task, key)] = value
    summarised = ["auroc_expert_vs_random", "spearman_reward_vs_return", "auroc_expert_vs_shuffled"]
    summarised += [f"auroc_expert_vs_noisy_{eps:g}" for eps in cfg.evaluate.noisy_epsilons]
    for key in summarised:  # the worst task of those that measured it
        values = [v for t in per_task if np.isfinite(v := metrics.get(reward_eval_key(t, key), np.nan))]
        metrics[reward_eval_key("min", key)] = float(min(values)) if values else float("nan")
    write_json(out_dir / "metrics.json", metrics)
    scatter(per_task, metrics, out_dir / "scatter.png")
    return metrics


WEAK_AUROC = 0.9
"""Below this expert-vs-random AUROC, ``viper reward-eval`` says the reward is not ready (the demo model has 1.0)."""


def cli(cfg: Config, args: argparse.Namespace, command: str) -> dict[str, float]:
    metrics = run(cfg)
    for task, shown in reward_eval_by_task(metrics, cfg.collect.tasks).items():
        print(task + ": " + "  ".join(f"{k} {v:.3f}" for k, v in shown.items()))
        auroc = metrics.get(reward_eval_key(task, "auroc_expert_vs_random"), np.nan)
        if not auroc >= WEAK_AUROC:
            print(
                f"{task}: the reward does not tell expert from random episodes (AUROC {auroc:.3f}, 1 is perfect, "
                "0.5 chance): an agent trained on it learns little; train the prior longer or on more videos"
            )
    print(f"details: {paths.reward_eval_dir(cfg.data_dir, cfg.collect.suite)}")
    return metrics
