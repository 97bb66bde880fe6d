"""The ``evaluate`` stage: roll out every trained agent of the preset; task return, VIPER return, videos.

For each (task, seed) of ``cfg.agent`` and each reward source with a trained run (``viper`` and, when present,
the ``task`` oracle), ``cfg.evaluate.agent_episodes`` episodes are rolled out with seeds from
``cfg.evaluate.seed`` (kept apart from training seeds). Each episode's frames are scored by the VIPER reward
model when one has been trained, so every run reports both returns. Every evaluated task is also played by
uniform random actions on the same episode seeds, the baseline a return needs beside it. Results go to
``<data>/evaluate/results.json`` (one record per run), ``<data>/evaluate/baselines.json`` (one per task) and
GIFs with the reward curve under the frames to ``<data>/evaluate/<reward>/<task>/seed<k>/episode<i>.gif``
(``<data>/evaluate/random/<task>/`` for the baseline).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from viper import paths
from viper.config import Config
from viper.errors import ViperError
from viper.eval.video import reward_video, write_gif
from viper.metrics import write_json, write_text

REWARDS = ("viper", "task")
BASELINE = "random"
"""Policy every evaluated task is also rolled out with (``viper.experts`` uniform random actions)."""


def evaluate_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "evaluate"


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
    for episode in range(cfg.evaluate.agent_episodes):
        result = rollout(
            task,
            policy,
            seed=cfg.evaluate.seed + episode,
            action_repeat=cfg.agent.action_repeat,
            episode_env_steps=cfg.collect.episode_env_steps,
            fast_render=cfg.collect.fast_render,
            sample=sample,
        )
        task_returns.append(float(result.task_return))
        rewards = np.full(len(result.frames), np.nan, np.float32)
        if reward_model is not None and task in reward_model.tasks:
            rewards = reward_model.score(result.frames[None], task)[0]
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


def run(cfg: Config) -> dict[str, Any]:
    """Evaluate every trained run of the preset; write results.json; return flat summary metrics."""
    reward_model = load_reward_model(cfg)
    records = []
    for task in cfg.agent.tasks:
        for seed in cfg.agent.seeds:
            for reward in REWARDS:
                run_dir = paths.agent_dir(cfg.data_dir, reward, task, seed)
                if not (run_dir / "checkpoints").exists():
                    continue
                out = evaluate_dir(cfg.data_dir) / reward / paths.slug(task) / f"seed{seed}"
                policy = f"checkpoint:{run_dir}"
                summary = evaluate_policy(cfg, policy, task, reward_model, out, cfg.evaluate.agent_sample)
                records.append({"task": task, "seed": seed, "reward": reward, **summary})
                _say(f"{reward:6s} {task} seed {seed}", summary)
    if not records:
        raise ViperError(
            f"no trained agent under {Path(cfg.data_dir) / 'agents'} for tasks {list(cfg.agent.tasks)} and seeds "
            f"{list(cfg.agent.seeds)}; run `viper train-agent` first"
        )
    out = evaluate_dir(cfg.data_dir)
    baselines = []
    for task in dict.fromkeys(record["task"] for record in records):
        summary = evaluate_policy(cfg, BASELINE, task, reward_model, out / BASELINE / paths.slug(task))
        baselines.append({"task": task, "policy": BASELINE, **summary})
        _say(f"{BASELINE:6s} {task} (baseline)", summary)
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


def _say(what: str, summary: dict[str, Any]) -> None:
    viper = summary["viper_return_mean"]
    line = f"task return {summary['task_return_mean']:.1f} +- {summary['task_return_std']:.1f}"
    line += f", VIPER return {viper:.4g}" if viper is not None else ""
    print(f"evaluate: {what}: {line} ({summary['episodes']} episodes)", flush=True)


def cli(cfg: Config, args: argparse.Namespace, command: str) -> dict[str, Any]:
    return run(cfg)
