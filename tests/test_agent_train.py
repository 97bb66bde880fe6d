"""The agent's training loop on real dm_control pixels: kill-and-resume, the checkpoint policy, CLI errors."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import viper.envs
import viper.errors
from viper import config as C
from viper import paths
from viper.agent.divergence import divergence_advice
from viper.agent.driver import EnvPool
from viper.agent.policy import load_policy
from viper.agent.replay import read_saved
from viper.agent.rewards import make_reward_source
from viper.agent.train import fingerprint, run

TASK = "dmc/cartpole_balance"
RESUME = ["agent.env_steps=300", "agent.checkpoint_every_env_steps=100", "agent.eval_every_env_steps=150"]


def _viper(args, cwd, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "viper.cli", *args], cwd=cwd, env=env, **kwargs)


@pytest.mark.slow
def test_killed_run_resumes_with_one_load_and_its_replay(tmp_path):
    data = tmp_path / "data"
    args = ["train-agent", "--preset", "tiny", "--task", TASK, "--seed", "0", "--reward", "task"]
    args += ["-S", f"data_dir={data}"] + [a for o in RESUME for a in ("-S", o)]
    run_dir = paths.agent_dir(data, "task", TASK, 0)
    proc = _viper(args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (run_dir / "checkpoints" / "latest").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(
        run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip() / "state.pt",
        weights_only=False,
    )["counters"]
    assert saved["env_steps"] < 300, "the run was killed before it finished"

    cfg = C.load(preset="tiny", overrides=[f"data_dir={data}", *RESUME], params_path=None)
    metrics = run(cfg, TASK, 0, "task", run_dir)
    assert metrics["checkpoint_loads"] == 1
    assert metrics["start_env_steps"] == saved["env_steps"]
    # One env: the replay holds exactly one row per env step, before and after the resume.
    assert metrics["replay_steps_at_start"] == saved["env_steps"]
    assert metrics["env_steps"] == 300 and metrics["replay_steps"] == 300
    assert metrics["updates"] > saved["updates"]
    # The world model learns from real pixels across the kill: the image loss falls (metrics.jsonl continues).
    rows = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    image_loss = [r["agent/loss/image"] for r in rows if "agent/loss/image" in r]
    assert len(image_loss) >= 3 and image_loss[-1] < 0.7 * image_loss[0], image_loss
    # The resumed process's first timed row covers the steps since the resume, not since the killed one's last row.
    timed = [r for r in rows if "agent/stretch_s" in r]
    restart = max((i for i in range(1, len(timed)) if timed[i]["step"] <= timed[i - 1]["step"]), default=None)
    first = timed[restart] if restart is not None else next(r for r in timed if r["step"] > saved["env_steps"])
    steps = first["agent/stretch_s"] * first["agent/env_steps_per_s"]
    assert steps == pytest.approx(first["step"] - saved["env_steps"]), (first, saved["env_steps"])
    assert (run_dir / "metrics.json").exists() and (run_dir / "plots" / "returns.png").exists()
    assert list((run_dir / "videos").glob("eval_*.gif"))

    # A finished run re-run does not train again.
    again = run(cfg, TASK, 0, "task", run_dir)
    assert again["checkpoint_loads"] == 1 and again["updates"] == metrics["updates"]
    # A longer run continues it, saving on its own schedule (it saved again at once at step 301 before).
    longer = C.load(preset="tiny", overrides=[f"data_dir={data}", *RESUME, "agent.env_steps=400"], params_path=None)
    assert run(longer, TASK, 0, "task", run_dir)["env_steps"] == 400
    assert not (run_dir / "checkpoints" / "step_000000301").exists()
    assert (run_dir / "checkpoints" / "step_000000400" / "done").exists()

    # A checkpoint policy's episode depends on its seed alone (evaluate and collect reproduce), and leaves the
    # caller's torch RNG where it was.
    from viper.experts import rollout

    torch.manual_seed(123)
    before = torch.get_rng_state()
    episodes = [rollout(TASK, f"checkpoint:{run_dir}", seed, episode_env_steps=30) for seed in (5, 5, 6)]
    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(episodes[0].actions, episodes[1].actions)
    np.testing.assert_array_equal(episodes[0].frames, episodes[1].frames)
    assert not np.array_equal(episodes[0].frames, episodes[2].frames)
    # Sampled actions (evaluate's default, as the released code reports training episodes) reproduce too.
    sampled = [rollout(TASK, f"checkpoint:{run_dir}", 5, episode_env_steps=30, sample=True) for _ in range(2)]
    np.testing.assert_array_equal(sampled[0].actions, sampled[1].actions)
    assert not np.array_equal(sampled[0].actions, episodes[0].actions)

    # Its noisy version (reward-eval's noisy expert of a task without a scripted one): epsilon 0 is the agent
    # itself; with noise the episode changes and still reproduces.
    quiet = rollout(TASK, f"noisy:0:checkpoint:{run_dir}", 5, episode_env_steps=30)
    np.testing.assert_array_equal(quiet.actions, episodes[0].actions)
    noisy = [rollout(TASK, f"noisy:0.5:checkpoint:{run_dir}", 5, episode_env_steps=30) for _ in range(2)]
    np.testing.assert_array_equal(noisy[0].actions, noisy[1].actions)
    assert not np.array_equal(noisy[0].actions, episodes[0].actions)

    # The collector's checkpoint policy loads the run and acts on real frames.
    policy = load_policy(run_dir)
    env = viper.envs.make(TASK, seed=3, episode_env_steps=5)
    try:
        obs, _ = env.reset()
        policy.reset()
        for _ in range(5):
            action = policy.act(obs)
            assert action.shape == env.action_space.shape and np.all(np.abs(action) <= 1.0)
            obs, *_ = env.step(action)
        # An action the noise put in its place is what the next latent update conditions on.
        policy.taken(np.array([0.25], np.float32))
        assert policy._carry[1].tolist() == [[0.25]]
    finally:
        env.close()


def test_a_damaged_replay_block_resumes_the_run_without_those_steps(tmp_path, capsys):
    """The kept checkpoints share their replay blocks (hard links), so a bad block damaged every one of them and
    the run started anew from step 0; now the latest resumes (weights, counters) without the steps up to it."""
    opts = ["agent.env_steps=60", "agent.checkpoint_every_env_steps=1000", "agent.eval_every_env_steps=1000"]
    cfg = C.load(preset="tiny", overrides=[f"data_dir={tmp_path}", *opts], params_path=None)
    run_dir = tmp_path / "run"
    assert run(cfg, TASK, 0, "task", run_dir)["env_steps"] == 60
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    block = latest / "replay" / "s000_b0000000.image.npy"
    data = bytearray(block.read_bytes())
    data[-100] ^= 0xFF
    with open(block, "r+b") as handle:
        handle.write(bytes(data))
    longer = C.load(
        preset="tiny", overrides=[f"data_dir={tmp_path}", *opts[1:], "agent.env_steps=70"], params_path=None
    )
    metrics = run(longer, TASK, 0, "task", run_dir)
    assert metrics["checkpoint_loads"] == 1 and metrics["start_env_steps"] == 60
    assert metrics["replay_steps_at_start"] == 0 and metrics["replay_steps"] == 10
    assert "1 replay block file(s) differ from their checksums (s000_b0000000.image.npy)" in capsys.readouterr().err


def test_more_envs_than_sequences_per_batch_trains_once_a_stream_holds_a_sequence(tmp_path):
    # 4 envs, batch 2 x 16: replay holds one batch of steps (32) when each stream has only 8, too few to sample.
    opts = ["agent.envs=4", "agent.env_steps=120", "agent.eval_every_env_steps=10000", "agent.log_every_env_steps=40"]
    cfg = C.load(preset="tiny", overrides=[f"data_dir={tmp_path}", *opts], params_path=None)
    assert cfg.agent.batch_size * cfg.agent.batch_length == 32 and cfg.agent.batch_length == 16
    metrics = run(cfg, TASK, 0, "task", tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
    # Training starts at 64 replayed steps (16 per stream), not at 32.
    first = min(r["step"] for r in rows if r.get("agent/updates", 0) > 0)
    assert metrics["updates"] > 0 and first >= 64
    # Every log row says where its stretch's wall time went: fractions that add up to at most the whole, with the
    # env steps (rendering) in every stretch and updates only in those after training started.
    timed = [r for r in rows if "agent/env_steps_per_s" in r]
    assert [r["step"] for r in timed] == [40, 80, 120]
    phases = ("act", "insert", "env", "update", "eval", "checkpoint")
    for r in timed:
        fractions = [r[f"agent/time/{name}"] for name in phases]
        assert all(f >= 0 for f in fractions) and 0.5 < sum(fractions) <= 1.0 + 1e-6, r
        assert r["agent/time/env"] > 0 and r["agent/env_steps_per_s"] > 0
        assert r["agent/stretch_s"] * r["agent/env_steps_per_s"] == pytest.approx(40)  # its own 40 env steps
        assert (r["agent/time/update"] > 0) == (r["step"] > first - 40), r
    # Replay keeps the actor's samples as drawn (the env clips them), as the released driver records them: the
    # Gaussian at its initial std leaves [-1, 1] for about a quarter of the samples.
    latest = tmp_path / "run" / "checkpoints" / (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    stored = np.concatenate([steps["action"] for steps in read_saved(latest / "replay").values()])
    assert np.isfinite(stored).all() and np.abs(stored).max() > 1.0
    # train_ratio 0 acts and fills replay without training (the 2023 Ratio would otherwise owe one update). With
    # collect.fast_render=false the agent's envs render as MuJoCo's defaults do (as imported videos were).
    over = [f"data_dir={tmp_path}", *opts, "agent.train_ratio=0", "collect.fast_render=false"]
    metrics = run(C.load(preset="tiny", overrides=over, params_path=None), TASK, 0, "task", tmp_path / "idle")
    assert metrics["updates"] == 0 and metrics["replay_steps"] == 120
    latest = tmp_path / "idle" / "checkpoints" / (tmp_path / "idle" / "checkpoints" / "latest").read_text().strip()
    assert json.loads((latest / "fingerprint.json").read_text())["fast_render"] is False
    first = read_saved(latest / "replay")[0]["image"][0]
    resets = {}
    for fast in (True, False):
        pool = EnvPool(TASK, 0, 4, 2, cfg.agent.episode_env_steps or None, False, fast_render=fast)
        try:
            resets[fast] = pool.reset()[0]
        finally:
            pool.close()
    assert np.array_equal(first, resets[False]) and not np.array_equal(first, resets[True])


def test_a_diverging_agent_stops_with_a_clear_error_and_keeps_its_last_finite_checkpoint(tmp_path):
    """A real divergence (learning rates of 1e30): the run stops at the first non-finite action or loss with a
    message naming the step and the checkpoint to resume from, and never saves the NaN weights over it."""
    data = tmp_path / "data"
    opts = ["agent.model_lr=1e30", "agent.actor_lr=1e30", "agent.critic_lr=1e30", "agent.env_steps=400"]
    opts += ["agent.checkpoint_every_env_steps=20", "agent.log_every_env_steps=10", f"data_dir={data}"]
    args = ["train-agent", "--preset", "tiny", "--task", TASK, "--seed", "0", "--reward", "task"]
    proc = _viper(args + [a for o in opts for a in ("-S", o)], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    err = err.decode()
    assert proc.returncode == 2 and "Traceback" not in err and "BADCTRL" not in err, err[-3000:]
    message = err.strip().splitlines()[-1]
    assert "not finite" in message and "the agent diverged" in message and "non-finite weights in" in message, message
    # Advice names only settings in effect: on the CPU bf16 autocast is off, so only the learning rates remain.
    assert message.endswith("try lower learning rates (agent.model_lr, agent.actor_lr, agent.critic_lr)"), message
    diverged_at = int(message.split("at env step ")[1].split(":")[0].split()[0])
    checkpoints = paths.agent_dir(data, "task", TASK, 0) / "checkpoints"
    latest = checkpoints / (checkpoints / "latest").read_text().strip()
    assert str(latest) in message
    state = torch.load(latest / "state.pt", weights_only=False)
    assert state["counters"]["env_steps"] < diverged_at
    assert all(torch.isfinite(v).all() for v in state["agent"].values() if v.is_floating_point())


def test_viper_reward_without_a_reward_model_is_a_clear_error(tmp_path):
    proc = _viper(
        ["train-agent", "--preset", "tiny", "--task", TASK, "--reward", "viper", "-S", f"data_dir={tmp_path}"],
        tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "dvc repro train-videogpt" in err and "Traceback" not in err
    assert not (tmp_path / "agents").exists(), "no run may start without its reward model"


def test_checkpoint_policy_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(viper.errors.ViperError, match="no complete agent checkpoint"):
        load_policy(Path(tmp_path))


def test_agent_envs_render_like_the_expert_videos():
    """``collect.fast_render`` reaches the agent's renderer (frames differ) and its checkpoint fingerprint."""
    frames = {}
    for fast in (True, False):
        pool = EnvPool(TASK, 0, 1, 2, 10, False, fast_render=fast)
        try:
            frames[fast] = pool.reset()
        finally:
            pool.close()
    assert frames[True].shape == frames[False].shape == (1, 64, 64, 3)
    assert not np.array_equal(frames[True], frames[False])
    cfg = C.load(preset="tiny", overrides=[], params_path=None)
    source = make_reward_source("task", cfg, TASK)
    assert fingerprint(cfg.agent, TASK, source, True) != fingerprint(cfg.agent, TASK, source, False)


def test_task_reward_runs_resume_whatever_the_viper_settings_say():
    """A task-reward run (oracle, expert) is the same run however ``agent.reward`` and the VIPER-only settings
    read: ``--reward task`` and ``-S agent.reward=task`` continue each other, and ``agent.expl_weight=0`` does
    not restart the experts. A setting the run does read still makes another run."""
    cfg = C.load(preset="tiny", overrides=[], params_path=None)
    source = make_reward_source("task", cfg, TASK)
    base = fingerprint(cfg.agent, TASK, source)
    assert base["agent"]["reward"] == "task"
    for changes in ({"reward": "viper"}, {"reward": "task"}, {"expl_weight": 0.0, "density_weight": 2.0}):
        assert fingerprint(dataclasses.replace(cfg.agent, **changes), TASK, source) == base, changes
    assert fingerprint(dataclasses.replace(cfg.agent, model_lr=3e-4), TASK, source) != base


def test_divergence_advice_names_the_numerics_settings_in_effect_on_the_device():
    cfg = C.AgentConfig(bf16=True, cuda_graph=True, compile_loops=True)
    assert divergence_advice(cfg, cuda=True).startswith("agent.bf16=false, agent.cuda_graph=false, agent.compile_loops")
    assert divergence_advice(cfg, cuda=False).startswith("agent.compile_loops=false, lower learning rates")
    assert divergence_advice(C.AgentConfig(bf16=False, cuda_graph=False), cuda=True).startswith("lower learning rates")


def test_evaluation_episodes_depend_on_the_step_not_on_restarts_and_leave_training_draws_alone(tmp_path):
    """The eval env was seeded by the restart count and the agent sampled from the training RNG: a resumed run
    evaluated other episodes than an uninterrupted one at the same step."""
    from viper.agent.agent import Agent
    from viper.agent.evaluation import Evaluator
    from viper.config import AgentConfig

    acfg = AgentConfig(size="tiny", eval_episodes=2, episode_env_steps=40)
    torch.manual_seed(0)
    agent = Agent(acfg, 1, False, "reward", "cpu")
    played = []
    for restart in (0, 1):
        evaluator = Evaluator(TASK, 0, acfg, tmp_path / f"run{restart}", restart)
        torch.manual_seed(restart)  # the training RNG, wherever the run's own draws left it
        state = torch.get_rng_state()
        try:
            played.append(evaluator(agent, 1000).task_returns)
        finally:
            evaluator.close()
        assert torch.equal(torch.get_rng_state(), state)
    assert played[0] == played[1] and played[0][0] != played[0][1]
    gifs = [(tmp_path / f"run{r}" / "videos" / "eval_000001000.gif").read_bytes() for r in (0, 1)]
    assert gifs[0] == gifs[1]
