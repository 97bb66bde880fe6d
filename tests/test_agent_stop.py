"""Stopping the agent's training loop (Ctrl-C, SIGTERM): a checkpoint where it stopped, whatever it was doing
(stepping, saving, a burst of updates, an evaluation), and a resume that continues as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from test_agent_train import TASK, _viper

import viper.errors
from viper import config as C
from viper import paths
from viper.agent.train import run


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_saves_a_checkpoint_where_the_run_stopped_and_the_run_resumes_there(tmp_path, signum):
    # Ctrl-C in a terminal, `timeout` and cluster schedulers signal the whole process group: the main process
    # and its two env workers.
    data = tmp_path / "data"
    stop_opts = ["agent.envs=2", "agent.parallel_envs=true", "agent.checkpoint_every_env_steps=10000"]
    stop_opts += ["agent.eval_every_env_steps=10000", "agent.log_every_env_steps=10", "agent.env_steps=2000"]
    args = ["train-agent", "--preset", "tiny", "--task", TASK, "--seed", "0", "--reward", "task"]
    args += ["-S", f"data_dir={data}"] + [a for o in stop_opts for a in ("-S", o)]
    run_dir = paths.agent_dir(data, "task", TASK, 0)
    log = run_dir / "logs" / "metrics.jsonl"
    proc = _viper(args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    # Wait until it trains (a logged update), then interrupt.
    while not (log.exists() and '"agent/loss/image"' in log.read_text()):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no update within 240 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signum)
    _, stderr = proc.communicate(timeout=120)
    stderr = stderr.decode()
    assert proc.returncode == 128 + signum, stderr[-3000:]
    message = stderr.strip().splitlines()[-1]
    assert (
        f"stopped by {signal.Signals(signum).name} at env step" in message
        and "run the same command to resume" in message
    ), message
    stopped_at = int(message.split("at env step ")[1].split()[0])
    assert 0 < stopped_at < 2000 and "Traceback" not in stderr
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    saved = torch.load(run_dir / "checkpoints" / latest / "state.pt", weights_only=False)["counters"]
    assert saved["env_steps"] == stopped_at and saved["updates"] > 0

    # The same run, a little longer (env_steps may change on resume), continues from the saved step.
    opts = [o for o in stop_opts if not o.startswith("agent.env_steps")] + [f"agent.env_steps={stopped_at + 20}"]
    cfg = C.load(preset="tiny", overrides=[f"data_dir={data}", *opts], params_path=None)
    metrics = run(cfg, TASK, 0, "task", run_dir)
    assert metrics["checkpoint_loads"] == 1 and metrics["start_env_steps"] == stopped_at
    assert metrics["replay_steps_at_start"] == stopped_at and metrics["env_steps"] == stopped_at + 20


def test_a_stop_during_a_periodic_save_does_not_save_that_step_again(tmp_path, monkeypatch):
    """Ctrl-C landing in the periodic save: the stop then saved the same step again (at paper scale a second
    12 GB write, with the scheduler's kill on its way)."""
    from viper.checkpoint import Checkpointer

    saves, real_save = [], Checkpointer.save

    def save_then_interrupt(self, step, *args, **kwargs):
        out = real_save(self, step, *args, **kwargs)
        saves.append(step)
        if len(saves) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # StopSignals turns it into a stop request
        return out

    monkeypatch.setattr(Checkpointer, "save", save_then_interrupt)
    opts = ["agent.env_steps=300", "agent.checkpoint_every_env_steps=40", "agent.eval_every_env_steps=10000"]
    cfg = C.load(preset="tiny", overrides=[f"data_dir={tmp_path}", *opts], params_path=None)
    with pytest.raises(viper.errors.Stopped, match="at env step 40"):
        run(cfg, TASK, 0, "task", paths.agent_dir(tmp_path, "task", TASK, 0))
    assert saves == [40]
    # The stretch since the last log row (the tiny preset logs every 50 env steps) is logged at the stop, not lost.
    log = paths.agent_dir(tmp_path, "task", TASK, 0) / "logs" / "metrics.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    stop_rows = [r for r in rows if r["step"] == 40 and "agent/updates" in r]
    assert len(stop_rows) == 1 and stop_rows[0]["agent/env_steps_per_s"] > 0


def test_a_stop_during_a_burst_of_updates_leaves_the_rest_to_the_resume(tmp_path, monkeypatch):
    """A step owes several updates (4 here; at paper scale on a CPU each takes ~16 s): the stop waited for all of
    them. Now it saves after the update under way, and the resumed run makes up the rest."""
    from viper.agent.agent import Agent

    calls, real_update = [], Agent.update

    def update_then_interrupt(self, batch):
        out = real_update(self, batch)
        calls.append(1)
        if len(calls) == 6:  # the second update of the second burst
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Agent, "update", update_then_interrupt)
    # tiny: batch 2 x 16 and one env, so 4 updates per env step at train ratio 128.
    opts = ["agent.env_steps=60", "agent.train_ratio=128", "agent.eval_every_env_steps=10000"]
    opts += ["agent.checkpoint_every_env_steps=10000"]
    cfg = C.load(preset="tiny", overrides=[f"data_dir={tmp_path}", *opts], params_path=None)
    run_dir = paths.agent_dir(tmp_path, "task", TASK, 0)
    with pytest.raises(viper.errors.Stopped) as stopped:
        run(cfg, TASK, 0, "task", run_dir)
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    saved = torch.load(latest / "state.pt", weights_only=False)["counters"]
    assert len(calls) == saved["updates"] == 6, (len(calls), saved["updates"], str(stopped.value))
    owed = 1 + (saved["env_steps"] - saved["train_start"]) * 4
    assert owed == 9  # the first burst (at train start) owed 1, the second 4 more: the stop cut the third
    monkeypatch.setattr(Agent, "update", real_update)
    metrics = run(cfg, TASK, 0, "task", run_dir)
    assert metrics["updates"] == 1 + (60 - saved["train_start"]) * 4  # as an uninterrupted run


def stopped_in_its_first_evaluation(tmp_path, monkeypatch, opts: list[str], message: str):
    """A task-reward run with ``opts``, stopped (a SIGINT, which StopSignals turns into a stop request) as its first
    evaluation episode starts, with ``message``; returns its config and folder."""
    from viper.agent import evaluation

    played, real_run_episode = [], evaluation.run_episode

    def interrupt_then_play(env, act, *args, **kwargs):
        played.append(1)
        if len(played) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_run_episode(env, act, *args, **kwargs)

    monkeypatch.setattr(evaluation, "run_episode", interrupt_then_play)
    cfg = C.load(preset="tiny", overrides=[f"data_dir={tmp_path}", *opts], params_path=None)
    run_dir = paths.agent_dir(tmp_path, "task", TASK, 0)
    with pytest.raises(viper.errors.Stopped, match=message):
        run(cfg, TASK, 0, "task", run_dir)
    return cfg, run_dir


def test_a_stop_during_an_evaluation_cuts_it_short_and_the_resumed_run_evaluates_first(tmp_path, monkeypatch):
    """The stop waited for the evaluation under way: at paper scale minutes of episodes and VIPER scoring, past a
    scheduler's grace period after its SIGTERM (the kill then lost everything since the last checkpoint)."""
    opts = ["agent.env_steps=300", "agent.eval_every_env_steps=60", "agent.checkpoint_every_env_steps=10000"]
    cfg, run_dir = stopped_in_its_first_evaluation(tmp_path, monkeypatch, opts, "at env step 60 of 300")
    rows = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in rows if "episode/task_return" in r]  # the cut evaluation logged nothing
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    saved = torch.load(latest / "state.pt", weights_only=False)["counters"]
    assert saved["env_steps"] == 60 and saved["next_eval"] == 60 and saved["eval_history"] == []
    # Resumed, it makes the cut evaluation at the step it was due (as an uninterrupted run), then the cadence's.
    metrics = run(cfg, TASK, 0, "task", run_dir)
    assert metrics["start_env_steps"] == 60 and metrics["env_steps"] == 300
    rows = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r["step"] for r in rows if "episode/task_return" in r]
    assert evaluated == [60, 120, 180, 240, 300], evaluated


def test_a_stop_during_the_final_evaluation_is_made_up_on_resume(tmp_path, monkeypatch):
    """The resumed run found env_steps done and skipped its whole loop: the final evaluation never happened and
    metrics.json reported the evaluation before it as the run's result."""
    opts = ["agent.env_steps=60", "agent.eval_every_env_steps=10000", "agent.checkpoint_every_env_steps=10000"]
    cfg, run_dir = stopped_in_its_first_evaluation(tmp_path, monkeypatch, opts, "the final evaluation")
    metrics = run(cfg, TASK, 0, "task", run_dir)
    rows = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [(r["step"], r["episode/task_return"]) for r in rows if "episode/task_return" in r]
    assert [step for step, _ in evaluated] == [60], evaluated
    assert metrics["env_steps"] == 60 and metrics["eval_task_return"] == pytest.approx(evaluated[0][1])
    # The made-up evaluation is in the checkpoint (a save at the loaded step was skipped): done, nothing more to do.
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    assert [step for step, _ in torch.load(latest / "state.pt", weights_only=False)["counters"]["eval_history"]] == [60]
    assert run(cfg, TASK, 0, "task", run_dir)["checkpoint_loads"] == 1
    rows = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "episode/task_return" in r] == [60], "the third run evaluated again"
