"""One writer per output (viper/locks.py): a second process writing the same run folder or store task group is
refused at once with the holder's pid; a killed holder leaves no lock behind."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from viper import config as config_lib
from viper import locks, paths
from viper.data import collect
from viper.errors import ViperError

TASK = "dmc/cartpole_balance"

# Another process holds the lock (as a running `viper` command would) until it is killed.
HOLDER = """
import sys, time
from viper import locks
with locks.exclusive(sys.argv[1], "the test's output", "viper holder-test"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def hold():
    started = []

    def start(path):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "held", "the holder process did not take the lock"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_second_holder_is_refused_with_the_holders_pid_and_let_in_once_the_holder_is_killed(tmp_path, hold):
    path = locks.lock_file(tmp_path, "agents-task-dmc-cartpole_balance-seed0")
    holder = hold(path)
    second = locks.exclusive(path, "data/agents/task/dmc-cartpole_balance/seed0", "viper train-agent")
    with pytest.raises(ViperError) as refused, second:
        pytest.fail("entered a lock another process holds")
    message = str(refused.value)
    assert f"pid {holder.pid}" in message and str(path) in message and "wait for it or stop it" in message
    assert "`viper holder-test` is writing data/agents/task/dmc-cartpole_balance/seed0" in message

    holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the lock with the process
    holder.wait()
    with locks.exclusive(path, "the output", "viper train-agent"):
        assert path.read_text().splitlines() == [str(os.getpid()), "viper train-agent"]
    assert path.read_text() == ""  # a released lock names no holder


def test_lock_files_sit_outside_every_stage_output_and_name_the_folder():
    data = Path("data")  # as dvc.yaml's outs name it
    agent = locks.folder_lock_file(data, paths.agent_dir(data, "viper", TASK, 0))
    expert = locks.folder_lock_file(data, paths.expert_dir(data, TASK))
    task_agent = locks.folder_lock_file(data, paths.agent_dir(data, "task", TASK, 0))
    assert agent == data / ".locks" / "agents-viper-dmc-cartpole_balance-seed0.lock"
    assert expert == data / ".locks" / "experts-dmc-cartpole_balance.lock"
    assert len({agent, expert, task_agent}) == 3  # the expert stage's run never blocks train-agent's, or back
    from viper.stages import STAGES

    outs = [out for stage in STAGES for out in stage.outs]
    for lock in (agent, expert, locks.lock_file(data, "collect-dmc-cartpole_balance")):
        assert not [out for out in outs if lock.is_relative_to(out)], lock  # DVC would hash it


def test_collect_refuses_a_task_another_process_is_collecting(tmp_path, hold):
    cfg = config_lib.load("tiny", params_path=None)
    c = dataclasses.replace(cfg.collect, tasks=(TASK,), episodes_per_task=2, episode_env_steps=10, workers=1)
    cfg = dataclasses.replace(cfg, data_dir=str(tmp_path), collect=c)
    holder = hold(locks.lock_file(tmp_path, "collect-dmc-cartpole_balance"))
    with pytest.raises(ViperError, match=rf"{TASK} in .*dmc\.zarr \(pid {holder.pid}\); wait for it or stop it"):
        collect.run(cfg, progress=False)
    assert not paths.store(tmp_path, "dmc").exists()  # refused before the store was opened


def test_train_agent_refuses_a_run_folder_another_process_is_training(tmp_path, hold):
    data = tmp_path / "data"
    holder = hold(locks.folder_lock_file(data, paths.agent_dir(data, "task", TASK, 0)))
    args = ["train-agent", "--preset", "tiny", "--task", TASK, "--seed", "0", "--reward", "task"]
    # The timeout bounds the run this test would start if nothing refused it.
    proc = subprocess.run(
        [sys.executable, "-m", "viper.cli", *args, "-S", f"data_dir={data}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{paths.agent_dir(data, 'task', TASK, 0)} (pid {holder.pid})" in proc.stderr
    assert not (paths.agent_dir(data, "task", TASK, 0) / "logs").exists()  # refused before the run started


@pytest.mark.parametrize("stage", ["tokenizer", "tokenize", "prior"])
def test_a_trainer_refuses_its_suites_run_folder_while_another_process_trains_it(tmp_path, hold, stage):
    """Tokenize too: every write stages under one hidden name, which a second writer deleted mid-write."""
    from viper.train import prior, tokenize, tokenizer

    cfg = dataclasses.replace(config_lib.load("tiny", params_path=None), data_dir=str(tmp_path))
    run_dir = {"tokenizer": paths.tokenizer_dir, "tokenize": paths.tokens, "prior": paths.prior_dir}[stage](
        tmp_path, "dmc"
    )
    holder = hold(locks.folder_lock_file(tmp_path, run_dir))
    # Refused before any input is read: this data_dir has no videos, tokens or tokenizer to train from.
    with pytest.raises(ViperError, match=rf"is writing {re.escape(str(run_dir))} \(pid {holder.pid}\)"):
        {"tokenizer": tokenizer, "tokenize": tokenize, "prior": prior}[stage].run(cfg)


def test_import_takes_the_task_lock_collect_takes_and_leaves_other_tasks_writers_alone(tmp_path, hold, capsys):
    """`viper import` wrote a task group with no lock, and the published-data collect opened the store as its
    only writer (cleaning every task's working groups) while holding only its own tasks' locks."""
    import numpy as np
    import zarr

    from viper import cli
    from viper.data.location import hidden

    data = tmp_path / "data"
    source = paths.published_dir(data) / "dmc"
    for split in ("train", "test"):
        (source / "cartpole_balance" / split).mkdir(parents=True)
        np.savez(source / "cartpole_balance" / split / "ep0.npz", np.zeros((4, 64, 64, 3), np.uint8))
    holder = hold(locks.lock_file(data, "collect-dmc-cartpole_balance"))
    args = ["import", str(source), "--preset", "tiny", "-S", f"data_dir={data}"]
    assert cli.main(args) == 2
    assert f"writing {TASK} in" in capsys.readouterr().err and not paths.store(data, "dmc").exists()
    holder.kill()
    holder.wait()
    # Another task's writer is creating its working group (zarr.json written, arrays not yet) meanwhile.
    store = paths.store(data, "dmc")
    other = hidden("cartpole_swingup", "collecting")
    zarr.open_group(store=zarr.storage.LocalStore(store), path=other, mode="w")
    assert cli.main(args) == 0
    cfg = config_lib.load("tiny,published", [f"data_dir={data}", f"collect.tasks=[{TASK}]"], params_path=None)
    assert collect.run(cfg, progress=False)[f"{TASK}/episodes"] == 2  # <data_dir>/published/dmc again
    assert (store / other / "zarr.json").exists()  # neither writer touched the other task's group
