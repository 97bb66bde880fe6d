"""Reward sources: what the agent optimises, computed on real steps before they enter replay.

A ``RewardSource`` names the replay key and world-model head of its reward, how many steps it needs at once
(``chunk_steps``) and how many leading steps of each chunk are context only (``context_steps``: scored
windows need history; VIPER uses 64-step chunks with 15 context steps). The ``Inserter`` buffers each env's
stream into such overlapping chunks, asks the source to ``relabel`` them and appends the scored steps to
replay. The task reward is the trivial source (chunks of one step, no context); VIPER's video reward
(issue 7) is a second implementation of the same protocol.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from viper.agent.replay import Replay
from viper.errors import ViperError


class RewardSource(Protocol):
    name: str
    """Replay key, world-model head and critic of this reward (``reward`` is the environment's)."""
    chunk_steps: int
    """Steps of one env stream passed to ``relabel`` at once."""
    context_steps: int
    """Leading steps of each chunk that only give context (they entered replay with the previous chunk)."""

    def relabel(self, chunk: dict[str, np.ndarray]) -> np.ndarray:
        """Rewards float32 (chunk_steps - context_steps,) for the chunk's steps after the context.

        ``chunk`` maps replay keys to (chunk_steps, ...) arrays of one env stream (``image`` uint8 frames,
        ``reward`` the task reward, flags)."""


class TaskReward:
    """The environment's reward (experts and the oracle baseline)."""

    name = "reward"
    chunk_steps = 1
    context_steps = 0

    def relabel(self, chunk: dict[str, np.ndarray]) -> np.ndarray:
        return chunk["reward"].astype(np.float32)


def make_reward_source(reward: str) -> RewardSource:
    """The reward source named by ``--reward`` / ``agent.reward``."""
    if reward == "task":
        return TaskReward()
    if reward == "viper":
        raise ViperError(
            "agent.reward='viper': the VIPER reward inside the agent is not implemented until issue 7; "
            "use --reward task"
        )
    raise ViperError(f"agent.reward={reward!r}: expected 'task' or 'viper'")


class Inserter:
    """Per-stream chunking with context overlap between a reward source and the replay buffer."""

    def __init__(self, replay: Replay, source: RewardSource, streams: int) -> None:
        assert 0 <= source.context_steps < source.chunk_steps, "context_steps must be below chunk_steps"
        self.replay, self.source = replay, source
        self.pending: list[list[dict[str, np.ndarray]]] = [[] for _ in range(streams)]

    def add(self, steps: dict[str, np.ndarray]) -> None:
        """One step of every stream: key -> (streams, ...) arrays without the source's reward key."""
        if self.source.chunk_steps == 1:
            # Fast path (task reward): relabel all streams' steps at once and append them.
            rewards = self.source.relabel(steps)
            self.replay.add({**steps, self.source.name: rewards} if self.source.name != "reward" else steps)
            return
        for stream, buffer in enumerate(self.pending):
            buffer.append({k: v[stream] for k, v in steps.items()})
            if len(buffer) < self.source.chunk_steps:
                continue
            chunk = {k: np.stack([s[k] for s in buffer]) for k in buffer[0]}
            rewards = self.source.relabel(chunk)
            ctx = self.source.context_steps
            assert rewards.shape == (len(buffer) - ctx,), f"relabel(): {len(buffer) - ctx} rewards expected"
            for i, step in enumerate(buffer[ctx:]):
                row = {k: np.asarray(v)[None] for k, v in step.items()}
                row[self.source.name] = np.asarray(rewards[i : i + 1], np.float32)
                self.replay.add(row, streams=np.array([stream]))
            self.pending[stream] = buffer[len(buffer) - ctx :] if ctx else []
