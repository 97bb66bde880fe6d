"""The task registry and the DMC adapter: names, spaces, episode length, action repeat, seeding, rendering."""

from __future__ import annotations

import numpy as np
import pytest
from dm_control import suite

from viper.envs import atari_mask, make, suites
from viper.envs.dmc import dmc_names
from viper.errors import ViperError


def test_registry_lists_every_published_task():
    assert len(suites.tasks("dmc")) == 17
    assert len(suites.tasks("atari")) == 8
    assert suites.suite_of("dmc/cartpole_balance") == "dmc"
    assert suites.suite_of("atari/pong") == "atari"
    assert suites.defaults("dmc").action_repeat == 2
    assert suites.defaults("atari/pong").episode_env_steps == 27_000


@pytest.mark.parametrize(("repeat", "steps"), [(1, 1000), (2, 500), (4, 250), (3, 334)])
def test_the_default_episode_lasts_1000_control_steps_at_any_action_repeat(repeat, steps):
    """A fixed 500 agent steps made a repeat-1 episode half as long (and its returns half the published scale)
    and a repeat-4 episode twice as long."""
    env = make("dmc/cartpole_balance", seed=0, action_repeat=repeat)
    try:
        env.reset(seed=0)
        zero = np.zeros(env.action_space.shape, np.float32)
        taken, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(zero)
            taken, done = taken + 1, terminated or truncated
        assert taken == steps
    finally:
        env.close()
    assert suites.defaults("atari/pong").steps_at(4) == 27_000 and suites.defaults("atari").steps_at(1) == 108_000


@pytest.mark.parametrize("bad", ["dmc/cartpole_run", "cartpole_balance", "gym/pong", ""])
def test_unknown_task_names_the_known_ones(bad):
    with pytest.raises(ViperError, match="dmc/cartpole_balance"):
        make(bad, seed=0)


def test_unknown_suite():
    with pytest.raises(ViperError, match="known suites: dmc, atari"):
        suites.tasks("metaworld")


def test_published_names_map_to_dm_control_tasks():
    known = set(suite.ALL_TASKS)
    for task in suites.tasks("dmc"):
        assert dmc_names(task) in known, task
    assert dmc_names("dmc/pointmass_easy") == ("point_mass", "easy")
    assert dmc_names("dmc/cup_catch") == ("ball_in_cup", "catch")
    assert dmc_names("dmc/finger_turn_hard") == ("finger", "turn_hard")


@pytest.mark.parametrize("task", suites.tasks("dmc"))
def test_every_dmc_task_gives_64x64_frames(task):
    env = make(task, seed=0)
    try:
        obs, _ = env.reset()
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
        assert env.observation_space.contains(obs)
        assert env.action_space.low.min() == -1.0 and env.action_space.high.max() == 1.0
        obs2, reward, terminated, truncated, _ = env.step(env.action_space.high)
        assert isinstance(reward, float) and not terminated and not truncated
        assert obs.std() > 0, "a blank frame: the renderer drew nothing"
        assert not np.array_equal(obs, obs2) or task.startswith("dmc/pointmass"), "frame did not change"
    finally:
        env.close()
    env.close()  # idempotent


def test_episode_length_and_truncation():
    env = make("dmc/cartpole_swingup", seed=0, episode_env_steps=7)
    env.reset()
    flags = [env.step(np.zeros(1))[3] for _ in range(7)]
    assert flags == [False] * 6 + [True]
    env.close()


def test_default_episode_is_1000_control_steps():
    env = make("dmc/pendulum_swingup", seed=0)
    env.reset()
    steps = 0
    truncated = False
    while not truncated:
        _, _, terminated, truncated, info = env.step(np.zeros(1))
        steps += 1
        assert not terminated
    assert steps == 500 and info["env_steps"] == 500
    assert env.physics.data.time == pytest.approx(1000 * env.dm_env.control_timestep())
    env.close()


@pytest.mark.parametrize("repeat", [1, 3])
def test_action_repeat_matches_raw_dm_control(repeat):
    """Rewards equal the sum of the raw dm_control rewards over the repeated control steps."""
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(20, 1))
    env = make("dmc/cartpole_swingup", seed=3, action_repeat=repeat)
    env.reset()
    ours = [env.step(a)[1] for a in actions]
    env.close()
    raw = suite.load("cartpole", "swingup", task_kwargs={"random": 3})
    raw.reset()
    expected = []
    for a in actions:
        total = 0.0
        for _ in range(repeat):
            total += raw.step(a).reward
        expected.append(total)
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_seeding_is_deterministic():
    def first_frames(seed):
        env = make("dmc/reacher_easy", seed=seed)
        frames = [env.reset()[0]] + [env.step(np.array([0.5, -0.5]))[0] for _ in range(3)]
        env.close()
        return np.stack(frames)

    a, b, c = first_frames(1), first_frames(1), first_frames(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c), "different seeds should give different initial states"


def test_reset_seed_reseeds_initial_state():
    env = make("dmc/reacher_easy", seed=0)
    first = env.reset(seed=5)[0]
    env.reset()
    again = env.reset(seed=5)[0]
    env.close()
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("task", ["dmc/cartpole_swingup", "dmc/reacher_easy"])
def test_fast_render_keeps_the_content(task):
    """Fast rendering moves pixels far less than a different state does: same scene, cheaper pixels."""

    def frame(steps, fast):
        env = make(task, seed=0, fast_render=fast)
        env.reset()
        for _ in range(steps):
            obs = env.step(np.full(env.action_space.shape, 0.5))[0]
        env.close()
        return obs.astype(np.float64)

    fast, slow = frame(10, True), frame(10, False)
    other = frame(20, False)
    # Content: where the scene differs between two states, fast and default rendering agree.
    moved = np.abs(slow - other).sum(-1) > 60
    assert moved.sum() > 10, "the two states should differ somewhere"
    assert np.abs(fast - slow).sum(-1)[moved].mean() < 0.5 * np.abs(slow - other).sum(-1)[moved].mean()


@pytest.mark.parametrize(("task", "camera"), [("dmc/quadruped_walk", 2), ("dmc/cheetah_run", 0)])
def test_frames_are_dm_controls_own_render(task, camera):
    """Without fast rendering, a frame is exactly dm_control's ``physics.render`` of the named camera."""
    env = make(task, seed=0, fast_render=False)
    obs = env.reset()[0]
    assert env.camera_id == camera
    np.testing.assert_array_equal(obs, env.physics.render(64, 64, camera_id=camera))
    env.close()


def test_dmc_mask_keeps_everything():
    mask = atari_mask("dmc/cartpole_balance")
    assert mask.shape == (64, 64) and mask.dtype == bool and mask.all()
