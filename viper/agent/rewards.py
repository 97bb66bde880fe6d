"""Reward sources: what the agent optimises, computed on real steps before they enter replay.

A ``RewardSource`` names the replay key and world-model head of its reward, how many steps it needs at once
(``chunk_steps``) and how many leading steps of each chunk are context only (``context_steps``: scored
windows need history). The ``Inserter`` buffers each env's stream into such overlapping chunks, asks the
source to ``relabel`` them (all streams whose chunk is ready in one batched call) and appends the scored steps
to replay. The task reward is the trivial source (chunks of one step, no context); VIPER's video reward
(``viper.agent.viper_reward``) is the second one.

Chunking with context (VIPER; chunk C = 64, context K = 15 as published), per env stream:

* The first K steps of every episode are context only: they have no full window of history and never enter
  replay (as in the released code). The first step that does enter replay is marked ``is_first``, so the
  world model restarts its state there (the released code copies the episode's ``is_first`` onto it too).
* Within an episode, chunks of C steps overlap by K: each scores C - K new steps, which are appended to the
  replay stream in order. The replay samples every window of C - K steps of the stream (49; the released
  replay's items: every such run of scored steps, inserted with stride 1; ``agent.viper_batch_length``).
* When an episode ends (``is_last``), its remaining steps are scored at once (a shorter chunk), so no scored
  step of the episode is lost; an episode of K steps or fewer inserts nothing.

For every episode of at least C steps (all published settings: DMC 500, Atari up to 27000) this inserts
exactly the steps the released ``UniformRelabel`` (``add_mode: chunk``) inserts, with the same window per
step. The released deque skips any 64-step stream that holds an episode boundary before its last step, so it
never inserts episodes shorter than C at all; here such episodes are inserted from step K on (short CPU
presets would otherwise never fill the replay). A reward depends only on its own window, so the chunking
never changes a reward's value: ``tests/test_agent_viper.py`` checks the inserted rewards against a slow
per-episode reference.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from viper.agent.replay import Replay
from viper.config import Config
from viper.errors import ViperError

REWARDS = ("task", "viper")
"""Reward sources ``--reward`` / ``agent.reward`` accepts."""


class RewardSource(Protocol):
    name: str
    """Replay key, world-model head and critic of this reward (``reward`` is the environment's)."""
    chunk_steps: int
    """Steps of one env stream passed to ``relabel`` at once (at most; episode ends flush shorter chunks)."""
    context_steps: int
    """Leading steps of each chunk that only give context (the previous chunk's tail or an episode's start)."""

    def relabel(self, chunk: dict[str, np.ndarray]) -> np.ndarray:
        """Rewards float32 (len - context_steps,) for the chunk's steps after the context.

        ``chunk`` maps replay keys to (len, ...) arrays of one env stream (``image`` uint8 frames, ``reward``
        the task reward, flags), len <= chunk_steps."""


class TaskReward:
    """The environment's reward (experts and the oracle baseline)."""

    name = "reward"
    chunk_steps = 1
    context_steps = 0

    def relabel(self, chunk: dict[str, np.ndarray]) -> np.ndarray:
        return chunk["reward"].astype(np.float32)


def relabel_batch(source: RewardSource, chunks: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Relabel several streams' chunks; sources with ``relabel_batch`` score them in one batched call."""
    batched = getattr(source, "relabel_batch", None)
    if batched is not None:
        return batched(chunks)
    return [source.relabel(chunk) for chunk in chunks]


def check_reward(reward: str) -> None:
    if reward not in REWARDS:
        raise ViperError(f"agent.reward={reward!r}: expected one of {', '.join(REWARDS)}")


def make_reward_source(reward: str, cfg: Config | None = None, task: str | None = None) -> RewardSource:
    """The reward source named by ``--reward`` / ``agent.reward``; ``viper`` loads the suite's reward model
    (tokenizer + prior under ``cfg.data_dir``) for ``task``."""
    check_reward(reward)
    if reward == "task":
        return TaskReward()
    if cfg is None or task is None:
        raise ValueError("the viper reward source needs the configuration and the task")
    from viper.agent.viper_reward import load_viper_reward

    return load_viper_reward(cfg, task)


class Inserter:
    """Per-stream, episode-aware chunking between a reward source and the replay buffer (module docstring).

    ``finished`` collects ``(stream, episode reward sum, inserted steps)`` of every episode that ended, for
    logging the optimised reward's return of training episodes (pop them after each ``add``).
    """

    def __init__(self, replay: Replay, source: RewardSource, streams: int) -> None:
        assert 0 <= source.context_steps < source.chunk_steps, "context_steps must be below chunk_steps"
        self.replay, self.source = replay, source
        self.pending: list[list[dict[str, np.ndarray]]] = [[] for _ in range(streams)]
        self.episode_start = np.ones(streams, bool)
        """Whether the stream's next inserted step is the first of its episode (gets ``is_first``)."""
        self.episode_sum = np.zeros(streams, np.float64)
        self.episode_steps = np.zeros(streams, np.int64)
        self.finished: list[tuple[int, float, int]] = []

    def add(self, steps: dict[str, np.ndarray]) -> None:
        """One step of every stream: key -> (streams, ...) arrays without the source's reward key."""
        if self.source.chunk_steps == 1:
            # Fast path (task reward): relabel all streams' steps at once and append them.
            rewards = self.source.relabel(steps)
            self.replay.add({**steps, self.source.name: rewards} if self.source.name != "reward" else steps)
            return
        ready = []
        for stream, buffer in enumerate(self.pending):
            step = {k: np.asarray(v[stream]) for k, v in steps.items()}
            if step["is_first"]:
                # A new episode: leftovers of an episode cut without is_last (none with our driver) are dropped.
                buffer.clear()
                self.episode_start[stream] = True
                self.episode_sum[stream], self.episode_steps[stream] = 0.0, 0
            buffer.append(step)
            if len(buffer) >= self.source.chunk_steps or step["is_last"]:
                ready.append(stream)
        if ready:
            self._flush(ready)

    def flush_partial(self) -> None:
        """Score and insert every stream's waiting steps now (before a checkpoint: a resumed run restarts its envs
        with fresh episodes, so steps still waiting for their chunk would never reach replay). A step's reward
        depends only on its own window, so the values are those a full chunk would give; the last K steps stay
        as the next chunk's context."""
        waiting = [s for s, buffer in enumerate(self.pending) if len(buffer) > self.source.context_steps]
        if self.source.chunk_steps > 1 and waiting:
            self._flush(waiting)

    def _flush(self, ready: list[int]) -> None:
        ctx = self.source.context_steps
        # Streams that started together have chunks of equal length; score each length group in one call.
        scored = [s for s in ready if len(self.pending[s]) > ctx]
        by_length: dict[int, list[int]] = {}
        for stream in scored:
            by_length.setdefault(len(self.pending[stream]), []).append(stream)
        for length, group in by_length.items():
            chunks = [{k: np.stack([s[k] for s in self.pending[i]]) for k in self.pending[i][0]} for i in group]
            rewards = relabel_batch(self.source, chunks)
            for stream, values in zip(group, rewards, strict=True):
                values = np.asarray(values, np.float32)
                assert values.shape == (length - ctx,), (
                    f"relabel(): {length - ctx} rewards expected, got {values.shape}"
                )
                assert np.isfinite(values).all(), "relabel() returned a non-finite reward for a scored step"
                self._insert(stream, self.pending[stream][ctx:], values)
        for stream in ready:
            buffer = self.pending[stream]
            if buffer[-1]["is_last"]:
                if self.episode_steps[stream]:
                    self.finished.append((stream, float(self.episode_sum[stream]), int(self.episode_steps[stream])))
                buffer.clear()
            else:
                # Keep the last K steps as the next chunk's context (already inserted, or the episode's start).
                del buffer[: len(buffer) - ctx]

    def _insert(self, stream: int, steps: list[dict[str, np.ndarray]], rewards: np.ndarray) -> None:
        for i, step in enumerate(steps):
            row = {k: v[None] for k, v in step.items()}
            if self.episode_start[stream]:
                row["is_first"] = np.ones(1, bool)
                self.episode_start[stream] = False
            row[self.source.name] = rewards[i : i + 1]
            self.replay.add(row, streams=np.array([stream]))
        self.episode_sum[stream] += float(rewards.astype(np.float64).sum())
        self.episode_steps[stream] += len(steps)
