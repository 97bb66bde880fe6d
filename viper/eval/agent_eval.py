"""The ``evaluate`` stage: roll out every trained agent of the preset; task return, VIPER return, videos.

For each (task, seed) of ``cfg.agent`` and each reward source with a trained run (``viper`` and, when present,
the ``task`` oracle), ``cfg.evaluate.agent_episodes`` episodes are rolled out with seeds from
``cfg.evaluate.seed`` (kept apart from training seeds). Each episode's frames are scored by the VIPER reward
model when one has been trained, so every run reports both returns. Every evaluated task is also played by
uniform random actions on the same episode seeds, the baseline a return needs beside it. Episodes are as long
as the agents' training episodes (``agent.episode_env_steps``, 0: the suite's), at the agents' action repeat.

Results go to ``<data>/evaluate/results.json`` (one record per run, naming the checkpoint evaluated),
``<data>/evaluate/baselines.json`` (one per task) and GIFs with the reward curve under the frames to
``<data>/evaluate/<reward>/<task>/seed<k>/episode<i>.gif`` (``<data>/evaluate/random/<task>/`` for the
baseline). Each run's record is also kept in its folder (``result.json``) with the key of what it depends on
(the checkpoint, the reward model, the evaluation settings): a re-run after a kill, or after another run
trained further, evaluates only what changed. Folders of runs no longer configured are removed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from viper import paths
from viper.config import Config
from viper.errors import ViperError
from viper.eval.keys import AGENT_REWARDS
from viper.eval.video import reward_video, write_gif
from viper.hashing import json_digest
from viper.metrics import write_json, write_text

BASELINE = "random"
"""Policy every evaluated task is also rolled out with (``viper.experts`` uniform random actions)."""


def load_reward_model(cfg: Config):
    """The VIPER reward model of the preset's suite, or ``None`` when it has not been trained."""
    from viper.reward import VideoReward

    tokenizer = paths.tokenizer_dir(cfg.data_dir, cfg.collect.suite)
    prior = paths.prior_dir(cfg.data_dir, cfg.collect.suite)
    if not (tokenizer / "checkpoints").exists() or not (prior / "checkpoints").exists():
        return None
    return VideoReward.load(tokenizer, prior, cfg.reward)


def evaluate_policy(
    cfg: Config, policy: str, task: str, reward_model, out_dir: Path, sample: bool = False
) -> dict[str, Any]:
    """Roll out ``policy`` (a ``viper collect --policy`` name; ``sample``: a checkpoint agent samples its
    actions) on the evaluation seeds; summary numbers."""
    from viper.experts import rollout

    task_returns, viper_returns = [], []
    for old in out_dir.glob("episode*.gif"):  # from an earlier evaluation, perhaps with more video episodes
        old.unlink()
    for episode in range(cfg.evaluate.agent_episodes):
        result = rollout(
            task,
            policy,
            seed=cfg.evaluate.seed + episode,
            action_repeat=cfg.agent.action_repeat,
            episode_env_steps=cfg.agent.episode_env_steps or None,
            fast_render=cfg.collect.fast_render,
            sample=sample,
        )
        task_returns.append(float(result.task_return))
        rewards = np.full(len(result.frames), np.nan, np.float32)
        if reward_model is not None and task in reward_model.tasks:
            rewards = reward_model.agent_rewards(result.frames, task)  # as the agent was rewarded
            if np.isfinite(rewards).any():  # an episode no longer than the context has no VIPER return
                viper_returns.append(float(np.nansum(rewards)))
        if episode < cfg.evaluate.video_episodes:
            write_gif(out_dir / f"episode{episode}.gif", reward_video(result.frames, rewards))
    return {
        "task_return_mean": statistics.fmean(task_returns),
        "task_return_std": statistics.pstdev(task_returns),
        "task_returns": task_returns,
        "viper_return_mean": statistics.fmean(viper_returns) if viper_returns else None,
        "episodes": len(task_returns),
    }


def settings_key(cfg: Config, reward_model) -> dict[str, Any]:
    """What every evaluated episode depends on besides the policy: the reward model, the episode settings and the
    stage's code (``viper.stages.code_digest``: the agent, env, scoring and this module's)."""
    from viper.stages import code_digest

    e = cfg.evaluate
    return {
        "reward_model": reward_model.identity() if reward_model is not None else None,
        "episodes": [e.seed, e.agent_episodes, e.video_episodes, e.agent_sample],
        "env": [cfg.agent.action_repeat, cfg.agent.episode_env_steps, cfg.collect.fast_render],
        "code": code_digest("evaluate"),
    }


def _checkpoint(run_dir: Path) -> dict[str, Any]:
    """The checkpoint a run's policy loads, by content (``viper.agent.policy.checkpoint_identity``)."""
    from viper.agent.policy import checkpoint_identity

    return checkpoint_identity(run_dir)


def _evaluated(
    cfg: Config, out: Path, key: dict[str, Any], policy: str, task: str, reward_model, sample: bool = False
) -> tuple[dict[str, Any], bool]:
    """The summary kept in ``out/result.json`` when its key is ``key``, else ``evaluate_policy``'s, kept there;
    and whether it was kept from before."""
    digest = json_digest(key)
    kept = out / "result.json"
    try:
        record = json.loads(kept.read_text())
        if record.get("key") == digest:
            return record["summary"], True
    except (OSError, json.JSONDecodeError, AttributeError, KeyError):
        pass  # not evaluated yet, or cut short by a kill
    summary = evaluate_policy(cfg, policy, task, reward_model, out, sample)
    write_text(kept, json.dumps({"key": digest, "summary": summary}, indent=2) + "\n")
    return summary, False


def run(cfg: Config) -> dict[str, Any]:
    """Evaluate every trained run of the preset (reusing what is current); write results.json; return flat
    summary metrics."""
    reward_model = load_reward_model(cfg)
    settings = settings_key(cfg, reward_model)
    out = paths.evaluate_dir(cfg.data_dir)
    records, kept = [], {out / "summary.json", out / "results.json", out / "baselines.json"}
    for task in cfg.agent.tasks:
        for seed in cfg.agent.seeds:
            for reward in AGENT_REWARDS:
                run_dir = paths.agent_dir(cfg.data_dir, reward, task, seed)
                if not (run_dir / "checkpoints").exists():
                    continue
                folder = out / reward / paths.slug(task) / f"seed{seed}"
                checkpoint = _checkpoint(run_dir)
                key = {**settings, "checkpoint": checkpoint}
                policy, sample = f"checkpoint:{run_dir}", cfg.evaluate.agent_sample
                summary, reused = _evaluated(cfg, folder, key, policy, task, reward_model, sample)
                record = {"task": task, "seed": seed, "reward": reward, "checkpoint": checkpoint["name"], **summary}
                records.append(record)
                kept.add(folder)
                _say(f"{reward:6s} {task} seed {seed}", summary, reused)
    if not records:
        raise ViperError(
            f"no trained agent under {Path(cfg.data_dir) / 'agents'} for tasks {list(cfg.agent.tasks)} and seeds "
            f"{list(cfg.agent.seeds)}; run `viper train-agent` first"
        )
    baselines = []
    for task in dict.fromkeys(record["task"] for record in records):
        folder = out / BASELINE / paths.slug(task)
        summary, reused = _evaluated(cfg, folder, settings, BASELINE, task, reward_model)
        baselines.append({"task": task, "policy": BASELINE, **summary})
        kept.add(folder)
        _say(f"{BASELINE:6s} {task} (baseline)", summary, reused)
    _remove_all_but(out, kept)
    write_json(out / "summary.json", {"runs": len(records)})
    write_text(out / "results.json", json.dumps(records, indent=2) + "\n")
    write_text(out / "baselines.json", json.dumps(baselines, indent=2) + "\n")
    metrics: dict[str, Any] = {"runs": len(records)}
    for record in records:
        key = f"{record['reward']}/{paths.slug(record['task'])}/seed{record['seed']}"
        metrics[f"{key}/task_return"] = record["task_return_mean"]
        if record["viper_return_mean"] is not None:
            metrics[f"{key}/viper_return"] = record["viper_return_mean"]
    for record in baselines:
        metrics[f"{BASELINE}/{paths.slug(record['task'])}/task_return"] = record["task_return_mean"]
    return metrics


def _remove_all_but(out: Path, kept: set[Path]) -> None:
    """Delete what ``out`` holds outside ``kept`` and their parents: the folders of runs no longer configured."""
    keep = kept | {parent for path in kept for parent in path.parents}
    for path in sorted(out.rglob("*"), reverse=True):
        if path not in keep and not any(parent in kept for parent in path.parents):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def _say(what: str, summary: dict[str, Any], reused: bool = False) -> None:
    viper = summary["viper_return_mean"]
    line = f"task return {summary['task_return_mean']:.1f} +- {summary['task_return_std']:.1f}"
    line += f", VIPER return {viper:.4g}" if viper is not None else ""
    done = ", evaluated before" if reused else ""
    print(f"evaluate: {what}: {line} ({summary['episodes']} episodes{done})", flush=True)


def cli(cfg: Config, args: argparse.Namespace, command: str) -> dict[str, Any]:
    return run(cfg)
