"""SIGKILL at random moments during collect / train-tokenizer / train-videogpt / train-agent (TARGETS.md).

For each stage, ``--trials`` times: start the stage's ``viper`` command (tiny preset, lengthened so that a kill
can land anywhere in it), SIGKILL its process group after a random delay, then check what a user relies on:

- collect: the store opens read-only, every episode committed before the kill is still there (the count never
  falls) and the newest one reads back whole;
- training stages: the newest complete checkpoint loads (``torch.load`` of its state) and its step never falls,
  so re-running the same command resumes from it.

Each trial re-runs the same command, so the stage makes progress across kills. After the trials the command
runs once more without a kill and must finish (exit 0) with the configured amount of work done. The stages run
in pipeline order in one scratch data folder (the tokenizer trains on the collected store, and so on).

    .venv/bin/python benchmarks/bench_kill.py --trials 20 --out /tmp/kill

Prints one table row per stage. CPU-heavy (about half an hour at 20 trials on 2 cores); not a test.
``--trials 1`` is a quick check of the script itself.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from viper import paths
from viper.checkpoint import Checkpointer
from viper.data.collect import COLLECTING
from viper.data.store import open_store

TASK = "dmc/cartpole_balance"
SUITE = "dmc"
ROLLOUTS = 300
"""Episodes the collect trials roll out (tiny preset: 40-step episodes)."""
STAGES = {
    # stage: (extra arguments, overrides that lengthen the tiny preset's work)
    "collect": ([], [f"collect.episodes_per_task={ROLLOUTS}"]),
    "train-tokenizer": ([], ["tokenizer.train_grad_steps=600", "tokenizer.checkpoint_every_grad_steps=10"]),
    "tokenize": ([], []),
    "train-videogpt": ([], ["prior.train_grad_steps=4000", "prior.checkpoint_every_grad_steps=10"]),
    "train-agent": (
        ["--task", TASK, "--seed", "0", "--reward", "task"],
        ["agent.env_steps=6000", "agent.checkpoint_every_env_steps=50", "agent.eval_every_env_steps=1000"],
    ),
}
"""Stages in pipeline order; ``tokenize`` only runs (uninterrupted) to feed ``train-videogpt``."""
KILLED = ("collect", "train-tokenizer", "train-videogpt", "train-agent")
SPANS = {"collect": 15.0, "train-tokenizer": 30.0, "train-videogpt": 20.0, "train-agent": 40.0}
"""Upper end of the random kill delay (s) per stage; the lower end is 2 s (often before any work)."""


def command(stage: str, data: Path) -> list[str]:
    extra, overrides = STAGES[stage]
    args = [sys.executable, "-m", "viper.cli", stage, "--preset", "tiny", "-S", f"data_dir={data}", *extra]
    return args + [a for o in overrides for a in ("-S", o)]


def checkpoint_dir(stage: str, data: Path) -> Path:
    return {
        "train-tokenizer": paths.tokenizer_dir(data, SUITE) / "checkpoints",
        "train-videogpt": paths.prior_dir(data, SUITE) / "checkpoints",
        "train-agent": paths.agent_dir(data, "task", TASK, 0) / "checkpoints",
    }[stage]


def progress(stage: str, data: Path) -> int:
    """Committed episodes (collect) or the newest complete checkpoint's step, after checking it is usable."""
    if stage == "collect":
        url = paths.store(data, SUITE)
        if not url.exists():
            return 0
        store = open_store(str(url))  # read-only: what a reader sees right after the kill, before any repair
        finished = TASK in store.tasks
        if finished:
            group = store.task(TASK)  # collection finished: the filtered episodes
        elif store.has_staging(TASK, COLLECTING):
            group = store.staging(TASK, COLLECTING)  # the rollouts committed so far
        else:
            return 0
        if group.num_episodes:
            frames = group.read_episode(group.num_episodes - 1)["frames"]
            assert frames.ndim == 4 and frames.shape[1:] == (64, 64, 3), f"{url}: bad newest episode {frames.shape}"
        # Rollouts count until the swap; after it, count the configured rollouts as done.
        return ROLLOUTS if finished else group.num_episodes
    loaded = Checkpointer(checkpoint_dir(stage, data)).load_latest()
    if loaded is None:
        return 0
    state, latest = loaded
    assert isinstance(state, dict) and state, f"{latest}: empty checkpoint state"
    return int(latest.name.split("_")[-1])


def run_stage(stage: str, data: Path, log: Path, kill_after: float | None) -> tuple[int | None, float]:
    """Run the stage; SIGKILL its process group after ``kill_after`` s. (exit code or None if killed, wall s)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log, "a") as out:
        proc = subprocess.Popen(command(stage, data), stdout=out, stderr=out, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return code, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="kills per stage")
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (data and logs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", nargs="+", default=list(KILLED), choices=KILLED)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    data = args.out / "data"
    args.out.mkdir(parents=True, exist_ok=True)
    print("| stage | trials | killed mid-run | finished before the kill | progress after each kill | final run |")
    print("|---|---|---|---|---|---|")
    last = max(list(STAGES).index(s) for s in args.stages)
    for index, stage in enumerate(STAGES):
        log = args.out / f"{stage}.log"
        if stage not in args.stages:
            if index < last:  # a prerequisite of a later stage: run it once, uninterrupted
                code, _ = run_stage(stage, data, log, None)
                assert code == 0, f"{stage} failed; see {log}"
            continue
        span = SPANS[stage]
        before, history, killed, finished = progress(stage, data), [], 0, 0
        for _ in range(args.trials):
            code, _ = run_stage(stage, data, log, rng.uniform(2.0, span))
            now = progress(stage, data)
            assert now >= before, f"{stage}: progress fell from {before} to {now} after a kill (see {log})"
            history.append(now)
            before = now
            if code is None:
                killed += 1
            else:
                assert code == 0, f"{stage} exited {code} (see {log})"
                finished += 1
        code, wall = run_stage(stage, data, log, None)
        assert code == 0, f"{stage}: the run after the kills exited {code} (see {log})"
        final = progress(stage, data)
        trace = " ".join(str(h) for h in history)
        row = [stage, args.trials, killed, finished, trace, f"exit 0, progress {final} ({wall:.0f} s)"]
        print("| " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    main()
