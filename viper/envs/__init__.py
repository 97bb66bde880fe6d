"""Uniform 64x64 RGB gymnasium environments, one adapter per suite, and the task registry.

``make("dmc/cartpole_balance", seed=0)`` or ``make("atari/pong", seed=0)``: observations are uint8
(64, 64, 3) RGB frames; DMC actions are Box [-1, 1], Atari actions Discrete (full action space).
"""

from __future__ import annotations

import gymnasium
import numpy as np

from viper.envs import suites

FRAME_SIZE = 64


def make(
    task: str,
    seed: int,
    action_repeat: int | None = None,
    episode_env_steps: int | None = None,
    fast_render: bool = True,
) -> gymnasium.Env:
    """A seeded env for ``task``; ``None`` arguments take the suite defaults (``viper.envs.suites.DEFAULTS``; the
    default episode length is the suite's episode in env steps over ``action_repeat``).

    ``fast_render`` applies to DMC only (see ``viper.envs.dmc``). Close the env to release its renderer.
    """
    suite = suites.suite_of(task)
    default = suites.DEFAULTS[suite]
    repeat = default.action_repeat if action_repeat is None else int(action_repeat)
    # The default keeps the episode's length in time: 1000 DMC control steps are 500 agent steps at repeat 2, 1000 at 1.
    length = default.steps_at(repeat) if episode_env_steps is None else int(episode_env_steps)
    if suite == "dmc":
        from viper.envs.dmc import DMCEnv

        return DMCEnv(task, seed, repeat, length, fast_render=fast_render, size=FRAME_SIZE)
    from viper.envs.atari import AtariEnv

    return AtariEnv(task, seed, repeat, length, size=FRAME_SIZE)


def atari_mask(task: str) -> np.ndarray:
    """bool (64, 64): True where pixels are kept, False over the game's scoreboard; all True for DMC."""
    if suites.suite_of(task) != "atari":
        return np.ones((FRAME_SIZE, FRAME_SIZE), dtype=bool)
    from viper.envs.masks import scoreboard_mask

    return scoreboard_mask(task)


__all__ = ["FRAME_SIZE", "atari_mask", "make", "suites"]
