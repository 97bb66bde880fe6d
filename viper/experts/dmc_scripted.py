"""Scripted DMC experts that read the simulator state (``env.physics``) and act like trained agents.

Each expert is built for one env and its action repeat (controllers are linearised over the agent step).
Returns reached over seeds are asserted in tests/test_experts.py; numbers at action repeat 2:

- cartpole_balance: LQR about the upright pose; ~1000.
- cartpole_swingup: energy pumping (Astrom-Furuta) with cart centring, LQR once cos(angle) > 0.85; ~860
  (trained DreamerV3 agents: ~850-880).
- pendulum_swingup: torque-limited energy pumping, LQR near the top.
- pointmass_easy / pointmass_hard: saturated PD on the mass position (hard: through the inverse of the
  randomised actuation directions).
- reacher_easy / reacher_hard: two-link inverse kinematics, then joint-space PD.
"""

from __future__ import annotations

import mujoco
import numpy as np

from viper.experts.lqr import linearize, lqr_gain, n_sub_steps


def _wrap(angle: float) -> float:
    """Angle in [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


class _DMCExpert:
    """Base: holds the env (a ``viper.envs.dmc.DMCEnv``) whose physics the controller reads."""

    def __init__(self, env) -> None:
        self.env = env.unwrapped
        self.physics = self.env.physics

    def reset(self) -> None:
        pass

    def _out(self, u: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(u, dtype=np.float64), -1.0, 1.0).astype(np.float32)


class _PoleExpert(_DMCExpert):
    """LQR about the upright pose (all joints 0) over the agent step, shared by cartpole and pendulum."""

    q_diag: tuple[float, ...] = ()
    r_diag: tuple[float, ...] = ()

    def __init__(self, env) -> None:
        super().__init__(env)
        a_mat, b_mat = linearize(self.physics, self.env.action_repeat, n_sub_steps(self.env.dm_env))
        self.gain = lqr_gain(a_mat, b_mat, self.q_diag, self.r_diag)
        pole = self.physics.model.body(self.pole_body).id
        model = self.physics.model
        # Pendulum energy about the hinge, zero at rest upright: E = I w^2 / 2 + m g l (cos(theta) - 1).
        self.mass = float(model.body_mass[pole])
        self.com = float(model.body_ipos[pole][2])
        self.inertia = float(model.body_inertia[pole][1]) + self.mass * self.com**2
        self.gravity = float(-model.opt.gravity[2])

    pole_body = ""

    def energy(self, angle: float, angular_vel: float) -> float:
        potential = self.mass * self.gravity * self.com * (np.cos(angle) - 1.0)
        return 0.5 * self.inertia * angular_vel**2 + potential


class CartpoleExpert(_PoleExpert):
    """Cartpole balance and swing-up; state (cart x, pole angle from upright, x', angle')."""

    q_diag = (10.0, 10.0, 1.0, 1.0)
    r_diag = (1.0,)
    pole_body = "pole_1"
    catch_cosine = 0.85
    """Above this cos(angle) the LQR takes over from energy pumping."""
    pump_gain, centre_gain, centre_damping = 5.0, 1.0, 1.0

    def act(self, obs: np.ndarray) -> np.ndarray:
        (x, angle), (v, w) = self.physics.data.qpos, self.physics.data.qvel
        angle = _wrap(angle)
        if np.cos(angle) > self.catch_cosine:
            return self._out(-self.gain @ np.array([x, angle, v, w]))
        # Pushing the cart against sign(w cos(angle)) adds energy (dE/dt = -m l a w cos); pump until E = 0.
        energy = self.energy(angle, w)
        pump = self.pump_gain * energy * np.sign(w * np.cos(angle) + 1e-9)
        return self._out([pump - self.centre_gain * x - self.centre_damping * v])


class PendulumExpert(_PoleExpert):
    """Pendulum swing-up with a torque limit below gravity's: pump energy, then LQR near the top."""

    q_diag = (10.0, 1.0)
    r_diag = (1.0,)
    pole_body = "pole"
    catch_cosine = 0.9
    pump_gain = 10.0

    def act(self, obs: np.ndarray) -> np.ndarray:
        angle, w = _wrap(self.physics.data.qpos[0]), self.physics.data.qvel[0]
        if np.cos(angle) > self.catch_cosine:
            return self._out(-self.gain @ np.array([angle, w]))
        # Torque along the motion adds energy: dE/dt = u w.
        energy = self.energy(angle, w)
        return self._out([-self.pump_gain * energy * np.sign(w + 1e-9)])


class PointMassExpert(_DMCExpert):
    """Saturated PD towards the target (at the origin) in joint space, mapped through the actuation."""

    kp, kd = 60.0, 6.0

    def act(self, obs: np.ndarray) -> np.ndarray:
        physics = self.physics
        to_target = physics.named.data.geom_xpos["target", :2] - physics.named.data.geom_xpos["pointmass", :2]
        force = self.kp * to_target - self.kd * physics.data.qvel[:2]
        # Tendon i pulls along direction d_i (wrap_prm rows; identity for easy): joint force = D^T u.
        directions = physics.model.wrap_prm[:4].reshape(2, 2)
        return self._out(np.linalg.solve(directions.T, force))


class ReacherExpert(_DMCExpert):
    """Two-link inverse kinematics for the finger to reach the target, then computed-torque joint PD.

    The desired joint acceleration (critically damped PD, natural frequency ``omega`` rad/s) is turned into
    torques through the mass matrix, so both links respond alike despite their different inertias.
    """

    omega = 10.0

    def act(self, obs: np.ndarray) -> np.ndarray:
        physics = self.physics
        model = physics.named.model
        target = model.geom_pos["target", :2]
        # Link lengths from the model: shoulder->wrist and wrist->finger body offsets.
        l1 = float(model.body_pos["hand", "x"])
        l2 = float(model.body_pos["finger", "x"])
        q, qvel = physics.data.qpos[:2].copy(), physics.data.qvel[:2]
        goal = self._ik(target, l1, l2, q)
        error = np.array([_wrap(goal[0] - q[0]), goal[1] - q[1]])
        accel = self.omega**2 * error - 2.0 * self.omega * qvel
        mass = np.zeros((physics.model.nv, physics.model.nv))
        mujoco.mj_fullM(physics.model.ptr, physics.data.ptr, mass)
        torque = mass @ accel + physics.data.qfrc_bias + physics.model.dof_damping * qvel
        return self._out(torque / physics.model.actuator_gear[:, 0])

    @staticmethod
    def _ik(target: np.ndarray, l1: float, l2: float, q: np.ndarray) -> np.ndarray:
        """Joint angles putting the finger on ``target`` (the elbow branch nearest ``q``)."""
        dist = float(np.clip(np.linalg.norm(target), abs(l1 - l2) + 1e-6, l1 + l2 - 1e-6))
        cos_elbow = (dist**2 - l1**2 - l2**2) / (2 * l1 * l2)
        best, best_cost = q, np.inf
        for elbow in (np.arccos(cos_elbow), -np.arccos(cos_elbow)):
            # Reacher links lie along +x at q = 0 and rotate about +z.
            shoulder = np.arctan2(target[1], target[0]) - np.arctan2(l2 * np.sin(elbow), l1 + l2 * np.cos(elbow))
            cost = abs(_wrap(shoulder - q[0])) + abs(elbow - q[1])
            if cost < best_cost:
                best, best_cost = np.array([shoulder, elbow]), cost
        return best


SCRIPTED_DMC = {
    "dmc/cartpole_balance": CartpoleExpert,
    "dmc/cartpole_swingup": CartpoleExpert,
    "dmc/pendulum_swingup": PendulumExpert,
    "dmc/pointmass_easy": PointMassExpert,
    "dmc/pointmass_hard": PointMassExpert,
    "dmc/reacher_easy": ReacherExpert,
    "dmc/reacher_hard": ReacherExpert,
}
