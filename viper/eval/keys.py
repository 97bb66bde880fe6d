"""Metric keys that one stage writes and another reads: named once here, so writer and reader cannot drift."""

from __future__ import annotations

from typing import Any

from viper import paths

AGENT_REWARDS = ("viper", "task")
"""The rewards an agent run trains on, as its folder under ``data/agents/`` names them (evaluate, report)."""
REWARD_EVAL = "reward_eval"
"""Prefix of the reward-eval metrics (``data/reward_eval/<suite>/metrics.json``, DVC metrics)."""


def reward_eval_key(task: str, name: str) -> str:
    """``("dmc/cartpole_balance", "auroc_expert_vs_random")`` -> ``reward_eval/dmc-cartpole_balance/auroc_...``;
    ``task`` ``min`` names the minimum over tasks."""
    return f"{REWARD_EVAL}/{task if task == 'min' else paths.slug(task)}/{name}"


def reward_eval_by_task(metrics: dict[str, Any], tasks) -> dict[str, dict[str, float]]:
    """Per task, its scalar reward-eval metrics by name (the nested ``mean_reward/<category>`` and
    ``mean_return/<category>`` ones left out); a task without any metric is absent."""
    out: dict[str, dict[str, float]] = {}
    for task in tasks:
        prefix = reward_eval_key(task, "")
        names = {key[len(prefix) :]: value for key, value in metrics.items() if key.startswith(prefix)}
        values = {name: value for name, value in names.items() if "/" not in name}
        if values:
            out[task] = values
    return out
