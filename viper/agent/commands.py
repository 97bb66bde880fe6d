"""The ``viper train-agent`` and ``viper expert`` commands: which (task, seed) runs they train and where each
run's folder is; the training itself is ``viper.agent.train.run``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from viper import paths
from viper.agent.rewards import check_reward
from viper.agent.train import run
from viper.config import Config
from viper.envs.suites import check_task
from viper.errors import ViperError


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "expert":
        parser.add_argument(
            "--task",
            help="task, e.g. dmc/walker_walk (default: with collect.policy=expert, every collect.tasks entry "
            "without a scripted expert; otherwise none)",
        )
        parser.add_argument("--seed", type=int, help="seed (default: the first agent.seeds entry)")
    else:
        parser.add_argument("--task", help="task, e.g. dmc/cartpole_balance (default: every agent.tasks entry)")
        parser.add_argument("--seed", type=int, help="seed (default: every agent.seeds entry)")
    if command == "train-agent":
        parser.add_argument("--reward", choices=("task", "viper"), help="reward source (default: agent.reward)")


def train_experts(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """``viper expert``: a task-reward agent for every collect task without a scripted expert (or ``--task``),
    written to ``viper.paths.expert_dir``, where ``collect``'s ``expert`` policy finds it."""
    from viper.experts.policies import needs_trained_expert, scripted_tasks

    # Without --task: only where collect needs one (another policy, or the published videos, needs none).
    tasks = [args.task] if args.task else [t for t in cfg.collect.tasks if needs_trained_expert(cfg.collect.policy, t)]
    seed = args.seed if args.seed is not None else cfg.agent.seeds[0]
    (Path(cfg.data_dir) / "experts").mkdir(parents=True, exist_ok=True)  # the stage's output, even when empty
    results: dict[str, Any] = {"experts_trained": len(tasks)}
    for task in tasks:
        out = paths.expert_dir(cfg.data_dir, task)
        if task in scripted_tasks():
            print(
                f"expert: note: {task} has a scripted expert, which collect.policy=expert uses; the agent trained "
                f"here is used only where a policy names it (collect.policy=checkpoint:{out})",
                flush=True,
            )
        metrics = run(cfg, task, seed, "task", out, command="expert")
        print(f"expert: {task}: eval task return {metrics['eval_task_return']:.1f} ({out})")
        results.update({f"{paths.slug(task)}/{k}": v for k, v in metrics.items()})
    if not tasks:
        print(f"expert: collect.policy={cfg.collect.policy!r} needs no trained expert here; nothing to train")
    return results


def cli(cfg: Config, args: argparse.Namespace, command: str) -> dict[str, Any]:
    """``viper train-agent`` / ``viper expert``: train every requested (task, seed) into its agent folder.

    Returns flat summary metrics keyed ``<task slug>/seed<k>/<metric>``."""
    reward = "task" if command == "expert" else (getattr(args, "reward", None) or cfg.agent.reward)
    check_reward(reward)
    if args.task:
        check_task(args.task)  # a short name would otherwise be read as a suite (and name a missing reward model)
    if args.seed is not None and args.seed < 0:
        raise ViperError(f"--seed {args.seed}: expected an int >= 0")
    if command == "expert":
        return train_experts(cfg, args)
    tasks = [args.task] if args.task else list(cfg.agent.tasks)  # agent.tasks were checked when the config loaded
    if reward == "viper":
        from viper.agent.viper_reward import reward_model_dirs

        for task in tasks:
            reward_model_dirs(cfg, task)  # fail before any env starts
    if args.seed is not None:
        seeds = [args.seed]
    else:
        seeds = list(cfg.agent.seeds[:1]) if command == "expert" else list(cfg.agent.seeds)
    results = {}
    for task in tasks:
        for seed in seeds:
            out = paths.agent_dir(cfg.data_dir, reward, task, seed)
            metrics = run(cfg, task, seed, reward, out)
            viper_return = (
                f", VIPER return {metrics['eval_viper_return']:.1f}" if "eval_viper_return" in metrics else ""
            )
            print(
                f"{command}: {task} seed {seed}: eval task return {metrics['eval_task_return']:.1f}{viper_return} "
                f"after {metrics['env_steps']} env steps ({out})"
            )
            results.update({f"{paths.slug(task)}/seed{seed}/{k}": v for k, v in metrics.items()})
    return results
