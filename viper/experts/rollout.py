"""One episode of a policy in a fresh env: frames, actions, rewards; deterministic for the same arguments."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import gymnasium
import numpy as np

from viper.envs import make
from viper.experts.policies import make_policy
from viper.hashing import sources_digest


@dataclass(frozen=True)
class Episode:
    """One rolled-out episode, L = agent steps + 1 (frame 0 is the reset observation).

    frames: uint8 (L, 64, 64, 3); actions: float32 (L, A), row 0 zeros, row i the action that led to frame
    i (Atari: one-hot over the full action set); rewards: float32 (L,), row 0 zero, row i the reward of
    the step that led to frame i; task_return: the sum of rewards (float64 sum, before the float32 cast).
    """

    task: str
    policy: str
    seed: int
    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    task_return: float
    terminated: bool
    """True when the task ended the episode (game over) rather than the step limit."""

    @property
    def length(self) -> int:
        """Number of frames L."""
        return len(self.frames)


def action_dim(space: gymnasium.Space) -> int:
    """Width A of an action row: the number of actions (Discrete) or the action vector's size (Box)."""
    if isinstance(space, gymnasium.spaces.Discrete):
        return int(space.n)
    return int(np.prod(space.shape))


def action_row(action, space: gymnasium.Space) -> np.ndarray:
    """An action as a float32 row: the vector for a Box space, one-hot for a Discrete space."""
    if isinstance(space, gymnasium.spaces.Discrete):
        row = np.zeros(space.n, dtype=np.float32)
        row[int(action) - space.start] = 1.0
        return row
    return np.asarray(action, dtype=np.float32).reshape(-1)


def rollout(
    task: str,
    policy: str,
    seed: int,
    action_repeat: int | None = None,
    episode_env_steps: int | None = None,
    fast_render: bool = True,
    expert_settings: tuple[str, ...] = (),
    sample: bool = False,
) -> Episode:
    """Roll out one episode of ``policy`` (a spec, see ``make_policy``, with its ``expert_settings``) in
    ``make(task, seed, ...)``.

    Runs in the calling process; the env is closed before returning. The env and the policy's random
    choices are both seeded from ``seed``, so the same arguments give the same episode (bit-for-bit on CPU).
    """
    env = make(task, seed, action_repeat=action_repeat, episode_env_steps=episode_env_steps, fast_render=fast_render)
    try:
        agent = make_policy(policy, task, env, seed, expert_settings, sample)
        obs, _ = env.reset(seed=seed)
        agent.reset()
        space = env.action_space
        frames, actions, rewards = [obs], [np.zeros(action_dim(space), np.float32)], [0.0]
        terminated = truncated = False
        while not (terminated or truncated):
            action = agent.act(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            frames.append(obs)
            actions.append(action_row(action, space))
            rewards.append(reward)
    finally:
        env.close()
    return Episode(
        task=task,
        policy=policy,
        seed=seed,
        frames=np.stack(frames),
        actions=np.stack(actions),
        rewards=np.asarray(rewards, dtype=np.float32),
        task_return=float(np.sum(rewards, dtype=np.float64)),
        terminated=bool(terminated),
    )


SHARED_ROLLOUT_CODE = (
    "envs/__init__.py",
    "envs/suites.py",
    "experts/__init__.py",
    "experts/base.py",
    "experts/policies.py",
    "experts/rollout.py",
)
"""Modules (under ``viper/``) every rollout runs; a suite adds its adapter, ``envs/<suite>.py``."""
EXPERT_HELPERS = {"experts/dmc_scripted.py": ("experts/lqr.py",)}
"""Modules a scripted expert's module calls into."""
NOT_ROLLOUT_CODE = ("envs/masks.py",)
"""Modules of ``viper/envs`` and ``viper/experts`` that no rollout runs (the Atari masks shape tokenizer input)."""


def rollout_code_files(task: str, policy: str = "expert") -> tuple[str, ...]:
    """The modules (relative to ``viper/``) whose code decides ``task``'s episodes under ``policy`` (a spec): the
    shared rollout code, the suite's adapter and, when the policy acts through it, the task's scripted expert. A
    trained expert's code is not among them (see ``viper.stages.UNTRACKED``)."""
    from viper.envs import suites
    from viper.experts.policies import SCRIPTED, checkpoint_of

    files = [*SHARED_ROLLOUT_CODE, f"envs/{suites.suite_of(task)}.py"]
    scripted = policy == "expert" or (policy.startswith("noisy:") and checkpoint_of(policy) is None)
    if task in SCRIPTED and scripted:
        module = f"experts/{Path(inspect.getfile(SCRIPTED[task])).name}"
        files += [module, *EXPERT_HELPERS.get(module, ())]
    return tuple(files)


def rollout_code_hash(task: str, policy: str = "expert") -> str:
    """sha256 (16 hex) of ``rollout_code_files(task, policy)``: changed rollout code means other episodes of
    ``task``, and only of the tasks whose code changed (a Pong expert fix does not roll out the DMC videos again).

    DVC keeps the store as a persistent output across code changes, so collect's task fingerprints must notice
    them themselves.
    """
    return sources_digest(Path(__file__).resolve().parents[1], rollout_code_files(task, policy))
