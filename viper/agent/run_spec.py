"""What makes an agent run what it is: the replay's per-step keys, the replayed sequence length, and the
fingerprint a checkpoint must match to be resumed (``viper.agent.train`` runs the loop)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from viper.agent.rewards import TaskReward
from viper.config import AgentConfig
from viper.errors import ViperError


def replay_spec(image_shape: tuple[int, ...], action_dim: int, reward_name: str) -> dict[str, tuple]:
    """Keys stored per step: frame, action taken, task reward, flags, and the optimised reward if different."""
    spec = {
        "image": (image_shape, np.uint8),
        "action": ((action_dim,), np.float32),
        "reward": ((), np.float32),
        "is_first": ((), bool),
        "is_last": ((), bool),
        "is_terminal": ((), bool),
    }
    if reward_name != "reward":
        spec[reward_name] = ((), np.float32)
    return spec


RESUMABLE_CHANGES = (
    "tasks",
    "seeds",
    "env_steps",
    "eval_every_env_steps",
    "eval_episodes",
    "eval_sample",
    "log_every_env_steps",
    "checkpoint_every_env_steps",
    "keep_checkpoints",
    "parallel_envs",
    "compile",
    "compile_loops",
    "compile_mode",
    "cuda_graph",
    "device",
)
"""Agent settings that may change without invalidating a run (a longer ``env_steps`` continues it)."""

VIPER_ONLY = (
    "viper_batch_length",
    "density_weight",
    "expl_weight",
    "disag_models",
    "expl_lr",
    "expl_eps",
    "expl_grad_clip",
    "context_steps",
)
"""Agent settings a task-reward run never reads (the VIPER reward's replay length, critics and exploration)."""


def fingerprint(acfg: AgentConfig, task: str, source, fast_render: bool = True) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the run-shaping agent settings, task, rendering mode and
    reward source.

    ``agent.reward`` is recorded as the reward ``source`` is, whatever the section says (``--reward`` and the
    ``expert`` stage choose it on the command line), and a task-reward run records ``VIPER_ONLY`` at their
    defaults: changing the VIPER settings (``dvc exp run -S agent.expl_weight=0``) does not restart an expert or
    an oracle run."""
    shaping = _run_shaping(_as_run(acfg, source))
    reward = source.fingerprint() if hasattr(source, "fingerprint") else {}
    fp = {"agent": shaping, "task": task, "reward_source": source.name, "reward_model": reward}
    if not fast_render:  # only recorded when off, so existing fast-render checkpoints keep resuming
        fp["fast_render"] = False
    return fp


def fingerprint_defaults(source) -> dict[str, Any]:
    """The default agent settings of a run on ``source``, for settings added after a checkpoint was written
    (``Checkpointer``)."""
    return {"agent": _run_shaping(_as_run(AgentConfig(), source))}


def _as_run(acfg: AgentConfig, source) -> AgentConfig:
    """``acfg`` as a run on ``source`` uses it: ``reward`` named by the source, and for the task reward the
    ``VIPER_ONLY`` settings at their defaults."""
    if source.name != TaskReward.name:
        return dataclasses.replace(acfg, reward="viper")
    defaults = AgentConfig()
    return dataclasses.replace(acfg, reward="task", **{k: getattr(defaults, k) for k in VIPER_ONLY})


def _run_shaping(acfg: AgentConfig) -> dict[str, Any]:
    """The agent settings a checkpoint must share to be resumed: all but ``RESUMABLE_CHANGES``."""
    return {k: v for k, v in dataclasses.asdict(acfg).items() if k not in RESUMABLE_CHANGES}


def sequence_length(acfg: AgentConfig, source) -> int:
    """Steps per replayed sequence: ``batch_length``, or with a chunked reward source (viper) the released
    relabelling replay's item length, chunk - context (``agent.viper_batch_length`` overrides it)."""
    if source.context_steps == 0:
        return acfg.batch_length
    if acfg.viper_batch_length < 0:
        raise ViperError(f"agent.viper_batch_length={acfg.viper_batch_length}: expected 0 (released) or a length")
    length = acfg.viper_batch_length or source.chunk_steps - source.context_steps
    if length < 2:
        # One-step sequences are all episode starts: the world model would learn no dynamics (and the
        # disagreement ensemble, which predicts the next step, would average over nothing).
        origin = (
            f"agent.viper_batch_length={acfg.viper_batch_length}"
            if acfg.viper_batch_length
            else f"relabel chunks of {source.chunk_steps} steps (agent.batch_length={acfg.batch_length}, at least "
            f"context + 1) minus the reward model's {source.context_steps} context steps"
        )
        raise ViperError(
            f"reward viper: replayed sequences of {length} step(s) ({origin}); they need >= 2 steps: raise "
            f"agent.batch_length above {source.context_steps + 1} or set agent.viper_batch_length >= 2"
        )
    return length
