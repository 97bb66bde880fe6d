"""SIGKILL during appends: the store always opens and holds exactly the episodes committed before the kill."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

from viper.data.store import open_store

TASK = "dmc/cartpole_balance"

# The child appends episodes forever, announcing each before ("begin i") and after ("done i") the append.
CHILD = """
import sys
import numpy as np
from viper.data.store import open_store

def episode(i):
    rng = np.random.default_rng(i)
    length = int(rng.integers(10, 90))
    frames = rng.integers(0, 6, (length, 64, 64, 3), dtype=np.uint8)
    return frames, rng.normal(size=(length, 3)).astype(np.float32)

store = open_store(sys.argv[1], "a", chunk_frames=8, shard_frames=64)
i = store.task("{task}").num_episodes if "{name}" in [t.split("/")[1] for t in store.tasks] else 0
while True:
    frames, actions = episode(i)
    print("begin", i, flush=True)
    store.append_episode("{task}", frames, actions, split="test" if i % 4 == 3 else "train")
    print("done", i, flush=True)
    i += 1
""".format(task=TASK, name=TASK.split("/")[1])


def expected_episode(i):
    rng = np.random.default_rng(i)
    length = int(rng.integers(10, 90))
    return rng.integers(0, 6, (length, 64, 64, 3), dtype=np.uint8), rng.normal(size=(length, 3)).astype(np.float32)


def test_sigkill_during_appends_keeps_exactly_committed_episodes(tmp_path):
    url = str(tmp_path / "dmc.zarr")
    rng = random.Random(1234)
    committed_before = 0
    mid_append_kills = 0
    trials = 12
    for trial in range(trials):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        # Wait until the child has begun a random number of appends, then kill it at a random moment.
        lines, target = [], rng.randint(1, 3)
        while sum(line.startswith("begin") for line in lines) < target:
            lines.append(proc.stdout.readline())
            assert lines[-1], f"child died: {proc.stderr.read()}"
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        lines += out.splitlines()
        done = [int(line.split()[1]) for line in lines if line.startswith("done")]
        begun = [int(line.split()[1]) for line in lines if line.startswith("begin")]
        # Read-only open sees only committed episodes, before any repair.
        group = open_store(url).task(TASK)
        n = group.num_episodes
        low = (max(done) + 1) if done else committed_before
        high = max(begun) + 1
        # The kill may land after the commit record but before "done" is printed: then n == high.
        assert low <= n <= high, (trial, low, n, high)
        mid_append_kills += n < high
        assert n >= committed_before, "a committed episode was lost"
        for i in range(committed_before, n):
            frames, actions = expected_episode(i)
            got = group.read_episode(i)
            np.testing.assert_array_equal(got["frames"], frames)
            np.testing.assert_array_equal(got["actions"], actions)
        # Earlier episodes are untouched by the later appends and kills.
        for i in rng.sample(range(n), min(n, 3)):
            np.testing.assert_array_equal(group.read_episode(i)["frames"], expected_episode(i)[0])
        assert group.split.tolist() == [1 if i % 4 == 3 else 0 for i in range(n)]
        committed_before = n
    # A writer repairs the store: arrays trimmed to the commit record, no temp files left, appends continue.
    repaired = open_store(url, "a").task(TASK)
    assert repaired._group["frames"].shape[0] == repaired.num_frames == int(repaired.episode_ends[-1])
    assert not [p for p in (tmp_path / "dmc.zarr").rglob("*.partial")]
    assert mid_append_kills >= 3, "too few kills landed inside an append to test anything"
