"""Atari adapter (ale-py through gymnasium) with DreamerV3's ALE settings and 64x64 RGB frames.

Settings (DreamerV3's Atari env, which produced the published VIPER Atari data):
- ALE v5 game, full action space (18 actions), sticky actions with ``repeat_action_probability`` 0.25;
- frame skip ``action_repeat`` (default 4) done here, with the observation the pixel-wise maximum of the last
  two emulator frames (objects some games draw on alternate frames stay visible);
- the 210x160 RGB screen resized to 64x64 with area interpolation;
- no no-op starts, no life-loss episodes: an episode ends at game over or after ``episode_env_steps``
  agent steps (default 27,000 = 108,000 emulator frames, ALE v5's own cap). The cap is a truncation (the agent
  bootstraps through it); the released Atari env marks it terminal too (``is_terminal = is_last``), which only
  matters for the rare episode that reaches it.
``ale`` exposes the emulator (RAM for scripted experts).
"""

from __future__ import annotations

import cv2
import gymnasium
import numpy as np

from viper.errors import ViperError

# Published task name -> ALE game id.
GAMES = {
    "assault": "Assault",
    "atlantis": "Atlantis",
    "boxing": "Boxing",
    "defender": "Defender",
    "freeway": "Freeway",
    "kangaroo": "Kangaroo",
    "pong": "Pong",
    "zaxxon": "Zaxxon",
}
STICKY_ACTION_PROBABILITY = 0.25


def game_id(task: str) -> str:
    """``"atari/pong"`` -> ``"ALE/Pong-v5"``."""
    name = task.removeprefix("atari/")
    if name not in GAMES:
        raise ViperError(f"task {task!r}: unknown Atari game; known: {', '.join(GAMES)}")
    return f"ALE/{GAMES[name]}-v5"


def make_ale_env(task: str) -> gymnasium.Env:
    import ale_py

    gymnasium.register_envs(ale_py)
    # frameskip=1: the skip (with max-pooling of the last two frames) is done in AtariEnv.step. ALE applies
    # sticky actions per emulator frame either way. No emulator frame cap: AtariEnv truncates episodes.
    return gymnasium.make(
        game_id(task),
        frameskip=1,
        repeat_action_probability=STICKY_ACTION_PROBABILITY,
        full_action_space=True,
        max_num_frames_per_episode=0,
    ).unwrapped


class AtariEnv(gymnasium.Env):
    """One Atari game: ``step(action int in [0, 18))`` -> (frame uint8 (64, 64, 3), reward, term, trunc, info)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self, task: str, seed: int, action_repeat: int = 4, episode_env_steps: int = 27_000, size: int = 64
    ) -> None:
        assert action_repeat >= 1, f"action_repeat must be >= 1, got {action_repeat}"
        assert episode_env_steps >= 1, f"episode_env_steps must be >= 1, got {episode_env_steps}"
        self.task = task
        self.action_repeat = action_repeat
        self.episode_env_steps = episode_env_steps
        self.size = size
        self._env = make_ale_env(task)
        self.ale = self._env.ale
        self._actions = self.ale.getLegalActionSet()
        self.action_space = gymnasium.spaces.Discrete(len(self._actions))
        self.observation_space = gymnasium.spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8)
        height, width = self.ale.getScreenDims()
        # The two most recent emulator screens, (2, 210, 160, 3), max-pooled into one observation.
        self._screens = np.zeros((2, height, width, 3), dtype=np.uint8)
        self._seed = seed
        self._seeded = False
        self._steps = 0
        self._frame: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start a game. The first reset seeds ALE with the constructor's seed; ``seed`` reseeds it."""
        super().reset(seed=seed)
        if seed is None and not self._seeded:
            seed = self._seed
        self._seeded = True
        # Reseeding reloads the ROM (ALE's RNG drives sticky actions); later resets continue the stream.
        self._env.reset(seed=seed)
        self._steps = 0
        self.ale.getScreenRGB(self._screens[0])
        self._screens[1] = self._screens[0]
        self._frame = self._observe()
        return self._frame, {"lives": self.ale.lives(), "env_steps": 0}

    def step(self, action):
        assert self._frame is not None, "call reset() before step()"
        action = int(action)
        assert 0 <= action < len(self._actions), f"action {action} outside [0, {len(self._actions)})"
        reward = 0.0
        terminated = False
        for repeat in range(self.action_repeat):
            reward += self.ale.act(self._actions[action])
            terminated = self.ale.game_over()
            # Keep the two most recent emulator screens: only those are observed (max-pooled).
            if repeat >= self.action_repeat - 2 or terminated:
                self._screens[0] = self._screens[1]
                self.ale.getScreenRGB(self._screens[1])
            if terminated:
                break
        self._steps += 1
        truncated = not terminated and self._steps >= self.episode_env_steps
        self._frame = self._observe()
        return self._frame, float(reward), terminated, truncated, {"lives": self.ale.lives(), "env_steps": self._steps}

    def _observe(self) -> np.ndarray:
        pooled = np.maximum(self._screens[0], self._screens[1])
        return cv2.resize(pooled, (self.size, self.size), interpolation=cv2.INTER_AREA)

    def render(self) -> np.ndarray:
        """The latest frame, uint8 (64, 64, 3)."""
        assert self._frame is not None, "call reset() before render()"
        return self._frame

    def close(self) -> None:
        self._env.close()
