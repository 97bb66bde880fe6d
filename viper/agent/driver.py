"""Environment stepping for the agent: E envs from ``viper.envs.make`` stepped together, and the step rows
that go to replay.

Envs reset themselves on the step after an episode ends (gymnasium's next-step autoreset): that step ignores
the action and returns the reset frame, which the driver marks ``is_first``. With ``parallel`` the envs run in
worker processes (spawned, so each owns its renderer); otherwise in this process.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable

import gymnasium
import numpy as np

import viper.envs


def env_seed(seed: int, stream: int, restart: int) -> int:
    """Seed of env ``stream`` in the ``restart``-th (re)start of a run: distinct per run, stream and resume."""
    return int(np.random.SeedSequence([seed, stream, restart]).generate_state(1)[0] % (2**31 - 1))


def _ignoring_stop_signals(make_env):
    """Build an env in a worker process that ignores SIGINT and SIGTERM. Ctrl-C in a terminal, ``timeout``,
    ``kill -- -PGID`` and cluster schedulers signal the whole process group; the main process then saves a
    checkpoint and closes the workers itself (a worker whose main process is gone ends at its pipe's EOF)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return make_env()


class EnvPool:
    """``count`` copies of ``task`` with distinct seeds; actions in the agent's format (float (E, A)).

    ``fast_render`` must match the expert videos' setting (``collect.fast_render``): the VIPER reward scores
    the agent's frames with a model trained on those videos.
    """

    def __init__(
        self,
        task: str,
        seed: int,
        count: int,
        action_repeat: int,
        episode_env_steps: int | None,
        parallel: bool,
        restart: int = 0,
        first_stream: int = 0,
        fast_render: bool = True,
    ) -> None:
        fns = [
            functools.partial(
                viper.envs.make,
                task,
                env_seed(seed, first_stream + i, restart),
                action_repeat=action_repeat,
                episode_env_steps=episode_env_steps,
                fast_render=fast_render,
            )
            for i in range(count)
        ]
        if parallel and count > 1:
            # Stop signals reach the whole process group: the workers leave them to the main process, which saves
            # a checkpoint and then closes them (train.py).
            fns = [functools.partial(_ignoring_stop_signals, fn) for fn in fns]
            self.envs = gymnasium.vector.AsyncVectorEnv(fns, context="spawn")
        else:
            self.envs = gymnasium.vector.SyncVectorEnv(fns)
        space = self.envs.single_action_space
        self.discrete = isinstance(space, gymnasium.spaces.Discrete)
        self.action_dim = int(space.n) if self.discrete else int(np.prod(space.shape))
        self.count = count
        self.done = np.ones(count, bool)
        """Whether each env's last step ended its episode (so its next frame starts a new one)."""

    def reset(self) -> np.ndarray:
        """Start every env: frames uint8 (E, H, W, C)."""
        obs, _ = self.envs.reset()
        self.done[:] = False
        return obs

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Apply float actions (E, A) (one-hot when discrete).

        Returns frames uint8 (E, H, W, C), rewards float32 (E,), is_first, is_last, is_terminal bool (E,).
        An env whose previous step ended its episode returns its reset frame (is_first, reward 0).
        """
        env_action = action.argmax(-1) if self.discrete else clip_action(action).astype(np.float32)
        is_first = self.done.copy()
        obs, reward, terminated, truncated, _ = self.envs.step(env_action)
        terminated = np.asarray(terminated, bool) & ~is_first
        is_last = (terminated | np.asarray(truncated, bool)) & ~is_first
        self.done = is_last
        return obs, np.asarray(reward, np.float32), is_first, is_last, terminated

    def random_actions(self, rng: np.random.Generator) -> np.ndarray:
        """Uniform random actions (E, A): one-hot for discrete spaces, uniform in [-1, 1] otherwise."""
        if self.discrete:
            return np.eye(self.action_dim, dtype=np.float32)[rng.integers(self.action_dim, size=self.count)]
        return rng.uniform(-1.0, 1.0, (self.count, self.action_dim)).astype(np.float32)

    def close(self) -> None:
        try:
            self.envs.close()
        except (BrokenPipeError, EOFError, ConnectionError):  # a worker already gone (killed from outside)
            self.envs.close(terminate=True)


def clip_action(action: np.ndarray) -> np.ndarray:
    """A sampled continuous action clipped into the env's [-1, 1] (the released ``ClipAction`` wrapper)."""
    return np.clip(action, -1.0, 1.0)


class EpisodeInterrupted(Exception):
    """``run_episode``'s ``interrupted()`` said stop before the episode ended."""


def run_episode(
    env: gymnasium.Env,
    act,
    max_steps: int | None = None,
    seed: int | None = None,
    interrupted: Callable[[], bool] | None = None,
) -> tuple[float, np.ndarray, int]:
    """Roll out one episode with ``act(frame, is_first) -> float action (A,)``; ``seed`` reseeds the env's reset.

    Returns (task return, frames uint8 (L+1, H, W, C) including the reset frame, agent steps L).
    ``interrupted`` is asked before every step; ``EpisodeInterrupted`` when it says stop (a training run's stop
    signal: an evaluation at paper scale lasts minutes, more than a scheduler waits after its SIGTERM).
    """
    discrete = isinstance(env.action_space, gymnasium.spaces.Discrete)
    obs, _ = env.reset(seed=seed)
    frames, total, steps, is_first = [obs], 0.0, 0, True
    while True:
        if interrupted is not None and interrupted():
            raise EpisodeInterrupted
        action = act(obs, is_first)
        obs, reward, terminated, truncated, _ = env.step(int(np.argmax(action)) if discrete else action)
        frames.append(obs)
        total += float(reward)
        steps += 1
        is_first = False
        if terminated or truncated or (max_steps is not None and steps >= max_steps):
            return total, np.stack(frames), steps
