"""Policy interface and the policies every task has: ``random`` and ``noisy:<epsilon>`` around an expert.

A policy acts in the env it was made for: ``reset()`` at the start of each episode, then ``act(frame)``
once per step. DMC actions are float32 (A,) in [-1, 1]; Atari actions are the index (int) into the full
action set. Scripted experts may ignore the frame and read the simulator state through their env.
"""

from __future__ import annotations

from typing import Protocol

import gymnasium
import numpy as np


class Policy(Protocol):
    """What ``viper.experts.rollout`` drives: ``reset()`` per episode, ``act(obs)`` per step."""

    def reset(self) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray | int: ...


def policy_rng(seed: int, stream: int) -> np.random.Generator:
    """A generator for policy randomness, independent of the env's own seed stream (same ``seed``)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 7919, stream]))


def random_action(space: gymnasium.Space, rng: np.random.Generator) -> np.ndarray | int:
    """Uniform action: float32 (A,) in [low, high] for a Box, an int in [0, n) for a Discrete space."""
    if isinstance(space, gymnasium.spaces.Discrete):
        return int(space.start + rng.integers(space.n))
    assert isinstance(space, gymnasium.spaces.Box), f"unsupported action space {space}"
    return rng.uniform(space.low, space.high).astype(np.float32)


class RandomPolicy:
    """Uniformly random actions, seeded (the same seed gives the same action sequence)."""

    def __init__(self, action_space: gymnasium.Space, seed: int) -> None:
        self.action_space = action_space
        self._rng = policy_rng(seed, 0)

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray | int:
        return random_action(self.action_space, self._rng)


class NoisyPolicy:
    """With probability ``epsilon`` a uniformly random action, otherwise the expert's.

    The expert is still asked every step, so stateful experts (Pong tracks the ball between frames) keep
    an up-to-date view of the episode whichever action is taken.
    """

    def __init__(self, expert: Policy, epsilon: float, action_space: gymnasium.Space, seed: int) -> None:
        assert 0.0 <= epsilon <= 1.0, f"epsilon must be in [0, 1], got {epsilon}"
        self.expert = expert
        self.epsilon = epsilon
        self.action_space = action_space
        self._rng = policy_rng(seed, 1)

    def reset(self) -> None:
        self.expert.reset()

    def act(self, obs: np.ndarray) -> np.ndarray | int:
        action = self.expert.act(obs)
        if self._rng.random() < self.epsilon:
            action = random_action(self.action_space, self._rng)
            if hasattr(self.expert, "taken"):  # a recurrent agent's next step must see the executed action
                self.expert.taken(action)
        return action
