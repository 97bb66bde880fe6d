"""DeepMind Control Suite adapter: a gymnasium env with 64x64 RGB uint8 frames and actions in [-1, 1].

Frames are rendered from camera 0 (quadruped: camera 2), as DreamerV3 and the published VIPER data do.
Rendering dominates collection time (benchmarks/results/envs.md), so ``fast_render`` (default) changes how
pixels are produced, not which objects are drawn. Measured at 64x64 on the 2-core CPU (EGL/llvmpipe, render
calls only): default settings ~25 frames/s; shadows off ~10x faster; reflections off a further ~1.3-1.9x;
an offscreen buffer of the frame size with multisampling off (``offsamples = 0``, set before the first
render since the GL framebuffer is created from it) a further ~2x. All three together: ~250-800 frames/s.

What changes on screen: no cast shadows, no mirror image of the body in the floor (top-down tasks such as
point_mass and reacher show a darker, matte floor), aliased edges, and lines thinner than a pixel
(cartpole's rail) may vanish. Bodies, targets, floor layout and sky are the same. The skybox stays on:
turning it off (a black background) gave no measurable speed-up here. Frames made with and without
``fast_render`` differ in those pixels, so the expert videos and the agent's env must use the same setting
(both default to ``True``); match ``fast_render=False`` when comparing against the published dataset,
which was rendered with dm_control's defaults.
"""

from __future__ import annotations

import gymnasium
import mujoco
import numpy as np
from dm_control import mujoco as dm_mujoco
from dm_control import suite

from viper.errors import ViperError

# Published names -> dm_control domain names where they differ.
DOMAIN_ALIASES = {"pointmass": "point_mass", "cup": "ball_in_cup"}
# Camera per domain; quadruped's camera 0 does not follow the body.
CAMERAS = {"quadruped": 2}
FAST_RENDER_FLAGS = {mujoco.mjtRndFlag.mjRND_SHADOW: False, mujoco.mjtRndFlag.mjRND_REFLECTION: False}


def dmc_names(task: str) -> tuple[str, str]:
    """``"dmc/pointmass_easy"`` -> ``("point_mass", "easy")``; ``"dmc/finger_turn_hard"`` -> finger, turn_hard."""
    name = task.removeprefix("dmc/")
    domain, sep, task_name = name.partition("_")
    if not sep:
        raise ViperError(f"task {task!r}: expected 'dmc/<domain>_<task>', e.g. dmc/cartpole_balance")
    return DOMAIN_ALIASES.get(domain, domain), task_name


class DMCEnv(gymnasium.Env):
    """One dm_control suite task as a gymnasium env (see the module docstring for rendering).

    ``step(action float (A,) in [-1, 1])`` repeats the action ``action_repeat`` control steps and returns
    ``(frame uint8 (64, 64, 3), summed reward, terminated, truncated, info)``; ``truncated`` is set after
    ``episode_env_steps`` agent steps. ``physics`` exposes the simulator state for scripted experts.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        task: str,
        seed: int,
        action_repeat: int = 2,
        episode_env_steps: int = 500,
        fast_render: bool = True,
        size: int = 64,
    ) -> None:
        assert action_repeat >= 1, f"action_repeat must be >= 1, got {action_repeat}"
        assert episode_env_steps >= 1, f"episode_env_steps must be >= 1, got {episode_env_steps}"
        domain, task_name = dmc_names(task)
        self.task = task
        self.action_repeat = action_repeat
        self.episode_env_steps = episode_env_steps
        self.fast_render = fast_render
        # The episode length is ours to enforce (any repeat x length), so dm_control's own limit is lifted.
        self._env = suite.load(domain, task_name, task_kwargs={"random": seed, "time_limit": float("inf")})
        physics = self._env.physics
        if fast_render:
            # Must precede the first render: the GL framebuffer is created from these on first use.
            physics.model.vis.global_.offwidth = size
            physics.model.vis.global_.offheight = size
            physics.model.vis.quality.offsamples = 0
        self.camera_id = CAMERAS.get(domain, 0)
        self._camera = dm_mujoco.Camera(physics, height=size, width=size, camera_id=self.camera_id)
        if fast_render:
            # Scene flags persist across renders of this camera's scene (dm_control never resets them).
            for flag, value in FAST_RENDER_FLAGS.items():
                self._camera.scene.flags[flag] = value
        spec = self._env.action_spec()
        self._low = spec.minimum.astype(np.float64)
        self._high = spec.maximum.astype(np.float64)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, shape=spec.shape, dtype=np.float32)
        self.observation_space = gymnasium.spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8)
        self._steps = 0
        self._frame: np.ndarray | None = None
        self._closed = False

    @property
    def physics(self):
        """The dm_control ``Physics`` (read-only use: experts read joint positions and velocities)."""
        return self._env.physics

    @property
    def dm_env(self):
        """The wrapped ``dm_control.rl.control.Environment``."""
        return self._env

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode; ``seed`` reseeds the task's initial-state RNG, otherwise its stream continues."""
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)
        time_step = self._env.reset()
        self._steps = 0
        self._frame = self._render()
        return self._frame, {"discount": float(time_step.discount or 1.0), "env_steps": 0}

    def step(self, action):
        assert self._frame is not None, "call reset() before step()"
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(self.action_space.shape), -1.0, 1.0)
        # [-1, 1] -> the task's own bounds (all suite tasks use [-1, 1], so usually the identity).
        scaled = self._low + (action + 1.0) * 0.5 * (self._high - self._low)
        reward = 0.0
        terminated = False
        for _ in range(self.action_repeat):
            time_step = self._env.step(scaled)
            reward += float(time_step.reward or 0.0)
            if time_step.last():
                # With the time limit lifted, LAST means the task ended the episode (discount 0).
                terminated = True
                break
        self._steps += 1
        truncated = not terminated and self._steps >= self.episode_env_steps
        self._frame = self._render()
        info = {"discount": float(time_step.discount), "env_steps": self._steps}
        return self._frame, reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        """The latest frame, uint8 (64, 64, 3)."""
        assert self._frame is not None, "call reset() before render()"
        return self._frame

    def _render(self) -> np.ndarray:
        return self._camera.render().copy()

    def close(self) -> None:
        """Free the MuJoCo scene and the GL context (EGL complains at exit otherwise); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._camera.scene.free()
        self._env.physics.free()
