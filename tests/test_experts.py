"""Scripted experts are true experts (far above random, at the stated thresholds); policy specs; rollouts.

Random baselines are rolled out here with the same code path (``rollout(task, "random", seed)``), never
hard-coded. Seeds are few: one DMC episode costs about a second of CPU at fast rendering.
"""

from __future__ import annotations

import numpy as np
import pytest

from viper.envs import make
from viper.errors import ViperError
from viper.experts import Episode, NoisyPolicy, make_policy, rollout, scripted_tasks
from viper.experts.rollout import action_row

# task -> (expert seeds, threshold on the mean expert return). Measured means at repeat 2 (8 seeds):
# cartpole_balance ~1000, cartpole_swingup ~863, pendulum_swingup ~830 (680-930: swing-up time depends on the
# start angle), pointmass_easy ~896, reacher_easy ~985.
DMC_EXPERTS = {
    "dmc/cartpole_balance": ((0, 1), 900.0),
    "dmc/cartpole_swingup": ((0, 1, 2), 800.0),
    "dmc/pendulum_swingup": ((0, 1, 2), 700.0),
    "dmc/pointmass_easy": ((0, 1), 800.0),
    "dmc/reacher_easy": ((0, 1), 900.0),
}


def mean_return(task: str, policy: str, seeds) -> float:
    return float(np.mean([rollout(task, policy, seed).task_return for seed in seeds]))


@pytest.mark.parametrize("task", sorted(DMC_EXPERTS))
def test_dmc_expert_beats_threshold_and_random(task):
    seeds, threshold = DMC_EXPERTS[task]
    expert = mean_return(task, "expert", seeds)
    random = mean_return(task, "random", seeds[:2])
    assert expert >= threshold, f"{task}: expert mean return {expert:.1f} < {threshold}"
    assert expert >= 2.5 * random + 300, f"{task}: expert {expert:.1f} not far above random {random:.1f}"


def points(episode: Episode) -> tuple[int, int]:
    return int((episode.rewards > 0).sum()), int((episode.rewards < 0).sum())


def test_pong_expert_wins_points_random_loses_them():
    """A fixed number of steps, not a whole game (measured: ~3-5 points won and 0-1 lost per 1000 steps)."""
    steps = 1000
    expert = [points(rollout("atari/pong", "expert", seed=seed, episode_env_steps=steps)) for seed in (0, 1)]
    won, lost = sum(w for w, _ in expert), sum(lo for _, lo in expert)
    random_won, random_lost = points(rollout("atari/pong", "random", seed=0, episode_env_steps=steps))
    assert won >= 5 and won >= 3 * lost, f"expert won {won}, lost {lost} in 2 x {steps} steps"
    assert random_lost >= 10 and random_won <= 1, f"random won {random_won}, lost {random_lost}"
    assert (won - lost) / 2 - (random_won - random_lost) >= 12


def test_pong_lookahead_leaves_the_episode_alone():
    """The expert's look-ahead must not reach the real emulator: its episode, replayed in a fresh env without
    the expert, gives the same frames. Sticky actions repeat ALE's previous command, which a state snapshot
    leaves out, so a look-ahead on the real emulator changed nearly every step after the first."""
    steps = 150
    ep = rollout("atari/pong", "expert", seed=0, episode_env_steps=steps)
    env = make("atari/pong", seed=0, episode_env_steps=steps)
    frames, rewards = [env.reset(seed=0)[0]], [0.0]
    for row in ep.actions[1:]:
        obs, reward, *_ = env.step(int(np.argmax(row)))
        frames.append(obs)
        rewards.append(reward)
    env.close()
    assert len(set(np.argmax(ep.actions[1:], 1).tolist())) > 1, "the expert should steer, not idle"
    np.testing.assert_array_equal(np.stack(frames), ep.frames)
    np.testing.assert_array_equal(np.asarray(rewards, np.float32), ep.rewards)


def test_rollout_layout_and_replay():
    """Row i of actions led to frame i: replaying the actions in a fresh env gives the same frames."""
    ep = rollout("dmc/cartpole_swingup", "noisy:0.5", seed=2, episode_env_steps=12)
    assert ep.frames.shape == (13, 64, 64, 3) and ep.frames.dtype == np.uint8
    assert ep.actions.shape == (13, 1) and ep.actions.dtype == np.float32
    assert ep.rewards.shape == (13,) and ep.rewards.dtype == np.float32
    assert not ep.actions[0].any() and ep.rewards[0] == 0.0 and not ep.terminated
    assert ep.task_return == pytest.approx(float(ep.rewards.sum()), rel=1e-6)
    env = make("dmc/cartpole_swingup", seed=2)
    frames = [env.reset(seed=2)[0]]
    rewards = [0.0]
    for action in ep.actions[1:]:
        obs, reward, *_ = env.step(action)
        frames.append(obs)
        rewards.append(reward)
    env.close()
    np.testing.assert_array_equal(np.stack(frames), ep.frames)
    np.testing.assert_allclose(rewards, ep.rewards, rtol=1e-6)


def test_atari_rollout_actions_are_one_hot():
    ep = rollout("atari/pong", "random", seed=1, episode_env_steps=20)
    assert ep.actions.shape == (21, 18)
    assert not ep.actions[0].any()
    np.testing.assert_array_equal(ep.actions[1:].sum(1), 1.0)


@pytest.mark.parametrize(
    ("task", "policy", "steps"),
    [("dmc/reacher_easy", "noisy:0.3", 25), ("dmc/cartpole_balance", "random", 25), ("atari/pong", "noisy:0.5", 60)],
)
def test_rollout_is_deterministic(task, policy, steps):
    a = rollout(task, policy, seed=5, episode_env_steps=steps)
    b = rollout(task, policy, seed=5, episode_env_steps=steps)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.rewards, b.rewards)
    c = rollout(task, policy, seed=6, episode_env_steps=steps)
    assert not np.array_equal(a.actions, c.actions), "another seed should give other random actions"


def test_noisy_zero_is_the_expert():
    a = rollout("dmc/pointmass_easy", "expert", seed=1, episode_env_steps=20)
    b = rollout("dmc/pointmass_easy", "noisy:0", seed=1, episode_env_steps=20)
    np.testing.assert_array_equal(a.frames, b.frames)


class _Constant:
    """Deterministic stand-in expert for counting how often NoisyPolicy replaces actions."""

    def __init__(self) -> None:
        self.calls = 0

    def reset(self) -> None:
        pass

    def act(self, obs):
        self.calls += 1
        return np.full(2, 5.0, dtype=np.float32)  # outside the action space: replaced actions are obvious


@pytest.mark.parametrize("epsilon", [0.0, 0.25, 1.0])
def test_noisy_replaces_a_fraction_epsilon(epsilon):
    import gymnasium

    space = gymnasium.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    expert = _Constant()
    policy = NoisyPolicy(expert, epsilon, space, seed=0)
    draws = 4000
    replaced = sum(bool((policy.act(None) != 5.0).all()) for _ in range(draws))
    assert expert.calls == draws, "the expert is consulted every step"
    assert abs(replaced / draws - epsilon) < 0.03


def test_action_row():
    import gymnasium

    np.testing.assert_array_equal(action_row(2, gymnasium.spaces.Discrete(4)), [0, 0, 1, 0])
    box = gymnasium.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
    assert action_row(np.array([0.1, 0.2, 0.3]), box).dtype == np.float32


@pytest.fixture(scope="module")
def env():
    env = make("dmc/cartpole_balance", seed=0)
    yield env
    env.close()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("expertt", "unknown policy"),
        ("noisy:abc", "not a number"),
        ("noisy:1.5", r"in \[0, 1\]"),
        ("noisy:", "not a number"),
        ("checkpoint:", "expected 'checkpoint:<path"),
        ("checkpoint:/nonexistent/agent", "/nonexistent/agent does not exist"),
        ("noisy:0.5:random", "only a checkpoint agent takes noise"),
        ("noisy:0.5:checkpoint:/nonexistent/agent", "/nonexistent/agent does not exist"),
        (3, "expected 'expert'"),
    ],
)
def test_bad_specs_are_clear_errors(env, spec, message):
    with pytest.raises(ViperError, match=message):
        make_policy(spec, "dmc/cartpole_balance", env, seed=0)


def test_checkpoint_without_a_checkpoint_is_a_clear_error(env, tmp_path):
    """An existing folder without a complete agent checkpoint (or no agent module yet): a ViperError."""
    with pytest.raises(ViperError, match="no complete agent checkpoint"):
        make_policy(f"checkpoint:{tmp_path}", "dmc/cartpole_balance", env, seed=0)


def test_task_without_expert_lists_the_ones_with(env):
    with pytest.raises(ViperError, match="dmc/cartpole_swingup.*dmc/reacher_easy"):
        make_policy("expert", "dmc/walker_walk", env, seed=0)
    with pytest.raises(ViperError, match="no scripted expert"):
        make_policy("noisy:0.5", "dmc/walker_walk", env, seed=0)
    with pytest.raises(ViperError, match="unknown task"):
        make_policy("random", "dmc/walker_run", env, seed=0)
    assert {"dmc/cartpole_balance", "atari/pong"} <= set(scripted_tasks())


SWINGUP = "dmc/cartpole_swingup"


def test_expert_settings_retune_the_controller(monkeypatch):
    """A setting acts as if the expert class had that value; other tasks' settings leave it alone."""
    short = {"episode_env_steps": 60}
    default = rollout(SWINGUP, "expert", seed=3, **short)
    tuned = rollout(SWINGUP, "expert", seed=3, expert_settings=(f"{SWINGUP}:pump_gain=4.0",), **short)
    assert not np.array_equal(default.actions, tuned.actions), "pump_gain 4.0 must change the swing-up actions"
    other = rollout(SWINGUP, "expert", seed=3, expert_settings=("dmc/pendulum_swingup:pump_gain=1.0",), **short)
    np.testing.assert_array_equal(other.actions, default.actions)
    noisy = rollout(SWINGUP, "noisy:0", seed=3, expert_settings=(f"{SWINGUP}:pump_gain=4.0",), **short)
    np.testing.assert_array_equal(noisy.actions, tuned.actions)
    from viper.experts.dmc_scripted import CartpoleExpert

    monkeypatch.setattr(CartpoleExpert, "pump_gain", 4.0)
    np.testing.assert_array_equal(rollout(SWINGUP, "expert", seed=3, **short).actions, tuned.actions)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("pump_gain=4", "expected '<task>:<attribute>=<number>'"),
        (f"{SWINGUP}:pump_gain", "expected '<task>:<attribute>=<number>'"),
        (f"{SWINGUP}:pump=4", "no setting 'pump'; settings: catch_cosine, centre_damping, centre_gain, pump_gain"),
        (f"{SWINGUP}:q_diag=4", "no setting 'q_diag'"),
        (f"{SWINGUP}:pump_gain=fast", "'fast' is not a finite number"),
        (f"{SWINGUP}:pump_gain=nan", "not a finite number"),
        ("dmc/walker_walk:kp=1", "no scripted expert for 'dmc/walker_walk'"),
    ],
)
def test_bad_expert_settings_are_clear_errors(env, entry, message):
    from viper.experts.policies import parse_expert_settings

    with pytest.raises(ViperError, match=f"expert setting {entry!r}: .*{message}"):
        parse_expert_settings([entry])
    with pytest.raises(ViperError, match=message):
        make_policy("expert", "dmc/cartpole_balance", env, seed=0, expert_settings=(entry,))


def test_parse_expert_settings_per_task():
    from viper.experts.policies import parse_expert_settings

    entries = [f"{SWINGUP}:pump_gain=4", f"{SWINGUP}:centre_gain=2.5", "dmc/pointmass_easy:kp=30"]
    assert parse_expert_settings(entries) == {
        SWINGUP: {"pump_gain": 4.0, "centre_gain": 2.5},
        "dmc/pointmass_easy": {"kp": 30.0},
    }
    assert parse_expert_settings(entries, SWINGUP) == {SWINGUP: {"pump_gain": 4.0, "centre_gain": 2.5}}
    assert parse_expert_settings(entries, "dmc/cartpole_balance") == {}
    # A count stays a whole number (Pong's settle_steps went to range() as 3.0, a TypeError at the first action).
    settle = parse_expert_settings(["atari/pong:settle_steps=3"])["atari/pong"]["settle_steps"]
    assert settle == 3 and isinstance(settle, int)
    with pytest.raises(ViperError, match="settle_steps counts something; expected a whole number"):
        parse_expert_settings(["atari/pong:settle_steps=2.5"])


def test_a_tasks_rollout_code_is_its_suites_and_its_experts_only(tmp_path):
    """Collect fingerprints hashed every module of viper/envs and viper/experts: a Pong expert fix rolled out every
    DMC task's videos again (and so retrained the tokenizer, the prior and the agents on them)."""
    import importlib
    import shutil
    from pathlib import Path

    from viper.hashing import sources_digest

    rollout_module = importlib.import_module("viper.experts.rollout")  # the package exports the function too

    tasks = ("dmc/cartpole_balance", "dmc/walker_walk", "atari/pong", "atari/boxing")
    files = {task: rollout_module.rollout_code_files(task) for task in tasks}
    root = Path(rollout_module.__file__).resolve().parents[1]
    modules = {p.relative_to(root).as_posix() for folder in ("envs", "experts") for p in (root / folder).glob("*.py")}
    # Every module either decides some task's episodes or is declared not to (a new module must be placed).
    covered = set(rollout_module.NOT_ROLLOUT_CODE).union(*map(set, files.values()))
    assert modules <= covered, sorted(modules - covered)
    assert "experts/pong.py" not in files["dmc/cartpole_balance"] and "envs/atari.py" not in files["dmc/walker_walk"]
    assert (
        "experts/dmc_scripted.py" in files["dmc/cartpole_balance"] and "experts/lqr.py" in files["dmc/cartpole_balance"]
    )
    assert "experts/pong.py" in files["atari/pong"] and "experts/pong.py" not in files["atari/boxing"]
    # Only a policy that acts through the scripted expert depends on its code.
    for policy, scripted in [("noisy:0.3", True), ("random", False), ("noisy:0.3:checkpoint:/runs/x", False)]:
        assert ("experts/pong.py" in rollout_module.rollout_code_files("atari/pong", policy)) == scripted, policy
    # On a copy of the code: editing the Pong expert changes Pong's hash alone; the shared rollout code, all.
    shutil.copytree(root / "envs", tmp_path / "envs")
    shutil.copytree(root / "experts", tmp_path / "experts")
    before = {task: sources_digest(tmp_path, files[task]) for task in tasks}
    assert before == {task: rollout_module.rollout_code_hash(task) for task in tasks}
    with open(tmp_path / "experts" / "pong.py", "a") as f:
        f.write("# a fix\n")
    after = {task: sources_digest(tmp_path, files[task]) for task in tasks}
    assert [task for task in tasks if after[task] != before[task]] == ["atari/pong"]
    with open(tmp_path / "experts" / "rollout.py", "a") as f:
        f.write("# a fix\n")
    assert all(sources_digest(tmp_path, files[task]) != after[task] for task in tasks)
