"""Linear-quadratic regulators from a finite-difference linearisation of one agent step of a MuJoCo model.

The agent holds each action for ``action_repeat`` control steps, so the discrete-time model that matters is
the map (state, action) -> state after that hold, not the physics step: it is linearised here by central
differences on a copy of the env's physics (MuJoCo's ``mjd_transitionFD`` would give the single physics
step, and cartpole integrates with RK4 where it does not apply).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import solve_discrete_are


def n_sub_steps(dm_env) -> int:
    """Physics steps per control step of a dm_control environment."""
    timestep = dm_env.physics.model.opt.timestep
    return int(round(dm_env.control_timestep() / timestep))


def hold(physics, state: np.ndarray, action: np.ndarray, control_steps: int, sub_steps: int) -> np.ndarray:
    """State (qpos, qvel) after holding ``action`` (ctrl units) for ``control_steps`` from ``state``.

    ``physics`` is a scratch copy: its state is overwritten.
    """
    nq = physics.model.nq
    with physics.reset_context():
        physics.data.qpos[:] = state[:nq]
        physics.data.qvel[:] = state[nq:]
    physics.data.ctrl[:] = action
    for _ in range(control_steps):
        physics.step(sub_steps)
    return np.concatenate([physics.data.qpos, physics.data.qvel])


def linearize(physics, control_steps: int, sub_steps: int, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """``(A (n, n), B (n, m))`` with x' ~ A x + B u around x = 0 (all joints at 0, at rest), u = 0."""
    scratch = physics.copy(share_model=True)
    n = physics.model.nq + physics.model.nv
    m = physics.model.nu
    zero_x, zero_u = np.zeros(n), np.zeros(m)
    a_mat, b_mat = np.zeros((n, n)), np.zeros((n, m))
    for i in range(n):
        dx = np.zeros(n)
        dx[i] = eps
        plus = hold(scratch, zero_x + dx, zero_u, control_steps, sub_steps)
        minus = hold(scratch, zero_x - dx, zero_u, control_steps, sub_steps)
        a_mat[:, i] = (plus - minus) / (2 * eps)
    for j in range(m):
        du = np.zeros(m)
        du[j] = eps
        plus = hold(scratch, zero_x, zero_u + du, control_steps, sub_steps)
        minus = hold(scratch, zero_x, zero_u - du, control_steps, sub_steps)
        b_mat[:, j] = (plus - minus) / (2 * eps)
    scratch.free()
    return a_mat, b_mat


def lqr_gain(a_mat: np.ndarray, b_mat: np.ndarray, q_diag, r_diag) -> np.ndarray:
    """Infinite-horizon discrete LQR gain K (m, n): u = -K x minimises sum x'Qx + u'Ru."""
    q_mat, r_mat = np.diag(np.asarray(q_diag, float)), np.diag(np.asarray(r_diag, float))
    p_mat = solve_discrete_are(a_mat, b_mat, q_mat, r_mat)
    return np.linalg.solve(r_mat + b_mat.T @ p_mat @ b_mat, b_mat.T @ p_mat @ a_mat)
