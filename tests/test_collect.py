"""The collect stage with real dm_control rollouts: determinism, filtering, idempotence, resume after SIGKILL."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from viper import config as config_lib
from viper import paths
from viper.data import collect
from viper.data.store import open_store
from viper.errors import ViperError

TASK = "dmc/cartpole_balance"


def tiny(data_dir, **collect_overrides):
    cfg = config_lib.load("tiny", params_path=None)
    c = dataclasses.replace(
        cfg.collect, tasks=(TASK,), episodes_per_task=3, episode_env_steps=40, workers=1, test_fraction=0.25
    )
    return dataclasses.replace(cfg, data_dir=str(data_dir), collect=dataclasses.replace(c, **collect_overrides))


def direct_rollout(cfg, index):
    from viper.experts import rollout

    c = cfg.collect
    seed = collect.episode_seed(c.seed, TASK, index)
    return rollout(TASK, c.policy, seed, action_repeat=c.action_repeat, episode_env_steps=c.episode_env_steps)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """One two-worker collection (spawned processes) shared by the tests below."""
    cfg = tiny(tmp_path_factory.mktemp("collect"), workers=2)
    result = collect.run(cfg, progress=False)
    return cfg, result


def test_collect_writes_deterministic_rollouts(collected):
    cfg, result = collected
    store = open_store(paths.store(cfg.data_dir, "dmc"))
    assert result["store"] == str(paths.store(cfg.data_dir, "dmc")) and store.tasks == [TASK]
    group = store.task(TASK)
    assert group.num_episodes == 3 and group.lengths.tolist() == [41] * 3
    assert group.split.sum() == 1 and group.episode_ids.tolist() == [0, 1, 2]
    assert result[f"{TASK}/episodes_kept"] == 3
    source = group.attrs["source"]
    assert source["policy"] == "expert" and group.attrs["action_repeat"] == cfg.collect.action_repeat
    # The same episodes as rolling out directly in this process with the derived seeds.
    for i in (0, 2):
        ep = direct_rollout(cfg, i)
        got = group.read_episode(i)
        np.testing.assert_array_equal(got["frames"], ep.frames)
        np.testing.assert_array_equal(got["actions"], ep.actions)
        np.testing.assert_allclose(group.returns[i], ep.task_return, rtol=1e-6)
    assert not [p for p in paths.store(cfg.data_dir, "dmc").iterdir() if p.name.startswith(".")]


def test_rerun_is_a_no_op(collected):
    cfg, _ = collected
    meta = paths.store(cfg.data_dir, "dmc") / "cartpole_balance" / "zarr.json"
    before = meta.stat().st_mtime_ns
    collect.run(cfg, progress=False)
    assert meta.stat().st_mtime_ns == before


def test_filtering_of_staged_rollouts(tmp_path):
    """The published filter on staged rollouts (synthetic frames here; real rollouts in the tests above)."""
    c = dataclasses.replace(
        tiny(tmp_path).collect,
        episodes_per_task=10,
        keep_return_percentile=50.0,
        max_episodes_per_task=3,
        drop_first_frames=2,
        test_fraction=0.34,
    )
    store = open_store(tmp_path / "s.zarr", "a")
    staging = store.staging(TASK, collect.COLLECTING)
    rng = np.random.default_rng(0)
    returns = rng.permutation(10).astype(float)
    for i in rng.permutation(10):  # workers finish in any order
        frames = np.full((6, 64, 64, 3), i, np.uint8)
        frames[:, 0, 0, 0] = np.arange(6)
        staging.append(frames, np.zeros((6, 1)), np.zeros(6), task_return=returns[i], episode_id=int(i))
    collect._build(store, staging, c, TASK, "key")
    store.promote(TASK, collect.BUILDING)
    group = open_store(tmp_path / "s.zarr").task(TASK)
    best = sorted(np.argsort(-returns)[:3].tolist())
    assert group.episode_ids.tolist() == best and group.lengths.tolist() == [4, 4, 4]
    np.testing.assert_array_equal(group.returns, returns[best])
    assert group.split.sum() == 1 and group.attrs["source"]["fingerprint"] == "key"
    for k, i in enumerate(best):
        frames = group.read_episode(k)["frames"]
        assert (frames[:, 1:, :, :] == i).all() and frames[:, 0, 0, 0].tolist() == [2, 3, 4, 5]


def test_resume_after_sigkill_gives_the_same_store(collected, tmp_path):
    cfg, _ = collected
    script = (
        "import dataclasses, sys\n"
        "from viper import config\n"
        "from viper.data import collect\n"
        "cfg = config.load('tiny', params_path=None)\n"
        "c = dataclasses.replace(cfg.collect, tasks=('dmc/cartpole_balance',), episodes_per_task=3,\n"
        "    episode_env_steps=40, workers=1, test_fraction=0.25)\n"
        "collect.run(dataclasses.replace(cfg, data_dir=sys.argv[1], collect=c), progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stderr=subprocess.PIPE)
    staging = paths.store(tmp_path, "dmc") / ".cartpole_balance.collecting"
    deadline = time.time() + 120
    # Kill once a rollout is committed to the staging group (the others are still to come).
    while time.time() < deadline and proc.poll() is None:
        try:
            if (
                open_store(paths.store(tmp_path, "dmc")).location.read_json(".cartpole_balance.collecting/zarr.json")[
                    "attributes"
                ]["num_episodes"]
                >= 2
            ):
                break
        except (ViperError, TypeError, KeyError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert staging.is_dir() and not (paths.store(tmp_path, "dmc") / "cartpole_balance").exists()
    resumed = collect.run(dataclasses.replace(cfg, data_dir=str(tmp_path)), progress=False)
    assert resumed[f"{TASK}/episodes_kept"] == 3 and not staging.exists()
    a = open_store(paths.store(cfg.data_dir, "dmc")).task(TASK)
    b = open_store(paths.store(tmp_path, "dmc")).task(TASK)
    for key in ("episode_ends", "returns", "split", "episode_ids"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    np.testing.assert_array_equal(a.read_frames(0, a.num_frames), b.read_frames(0, b.num_frames))


def test_expert_settings_reach_only_their_task(collected, tmp_path, monkeypatch):
    """Another task's setting leaves this task's data alone (no re-collection); a bad one fails before rolling out."""
    cfg, _ = collected
    meta = paths.store(cfg.data_dir, "dmc") / "cartpole_balance" / "zarr.json"
    before = meta.stat().st_mtime_ns
    other = dataclasses.replace(cfg.collect, expert_settings=("dmc/cartpole_swingup:pump_gain=4.0",))
    collect.run(dataclasses.replace(cfg, collect=other), progress=False)
    assert meta.stat().st_mtime_ns == before
    assert open_store(paths.store(cfg.data_dir, "dmc")).task(TASK).attrs["source"]["expert_settings"] == []
    # The filter code is part of the task group's key, not of the staging group's (its rollouts stand).
    both = collect.ROLLOUT_FIELDS + collect.FILTER_FIELDS
    keys = collect.fingerprint(cfg.collect, TASK, both), collect.fingerprint(cfg.collect, TASK, collect.ROLLOUT_FIELDS)
    monkeypatch.setattr(collect, "FILTER_CODE", ("data/collect.py",))  # as if filtering.py read otherwise
    assert collect.fingerprint(cfg.collect, TASK, both) != keys[0]
    assert collect.fingerprint(cfg.collect, TASK, collect.ROLLOUT_FIELDS) == keys[1]
    own = tiny(tmp_path, expert_settings=(f"{TASK}:centre_gain=3.0",))
    assert collect.fingerprint(own.collect, TASK, collect.ROLLOUT_FIELDS) != collect.fingerprint(
        cfg.collect, TASK, collect.ROLLOUT_FIELDS
    )
    with pytest.raises(ViperError, match="expert setting 'dmc/cartpole_balance:centre_gain=x'"):
        collect.run(tiny(tmp_path, expert_settings=(f"{TASK}:centre_gain=x",)), progress=False)
    assert not paths.store(tmp_path, "dmc").exists(), "a bad setting must fail before any store is written"


def test_arguments_and_bad_tasks(tmp_path):
    cfg = tiny(tmp_path)
    args = argparse.Namespace(task="dmc/cartpole_swingup", policy="random", episodes=3, workers=2, seed=7)
    c = collect.apply_arguments(cfg, args).collect
    assert (c.tasks, c.policy, c.episodes_per_task, c.workers, c.seed) == (("dmc/cartpole_swingup",), "random", 3, 2, 7)
    unchanged = collect.apply_arguments(
        cfg, argparse.Namespace(task=None, policy=None, episodes=None, workers=None, seed=None)
    )
    assert unchanged == cfg
    # Flags are checked as config values are: `--workers 0` or an unknown `--task` name the key and what is allowed.
    cases = [
        ({"workers": 0}, "collect.workers=0: expected int >= 1"),
        ({"episodes": 0}, "collect.episodes_per_task=0: expected int >= 1"),
        ({"task": "cartpole_balance"}, r"collect.tasks\[0\]='cartpole_balance': expected one of"),
    ]
    for flags, message in cases:
        none = dict.fromkeys(("task", "policy", "episodes", "workers", "seed"))
        with pytest.raises(ViperError, match=message):
            collect.apply_arguments(cfg, argparse.Namespace(**{**none, **flags}))
    with pytest.raises(ViperError, match="dmc/cartpole_dance"):
        collect.run(tiny(tmp_path, tasks=("dmc/cartpole_dance",)), progress=False)
    with pytest.raises(ViperError, match="not in suite 'dmc'"):
        collect.run(tiny(tmp_path, tasks=("atari/pong",)), progress=False)
    assert collect.episode_seed(0, TASK, 1) != collect.episode_seed(0, TASK, 2) != collect.episode_seed(1, TASK, 2)
    assert collect.episode_seed(0, TASK, 1) == collect.episode_seed(0, TASK, 1)


def test_imported_videos_are_not_collected_over_unless_asked(tmp_path, capsys):
    """`viper import`ed videos cannot be regenerated: collect refuses to replace them (it used to, silently)."""
    from viper import cli

    cfg = tiny(tmp_path, episodes_per_task=2, episode_env_steps=10)
    store = open_store(paths.store(tmp_path, "dmc"), "a")
    staging = store.staging(TASK, "importing", attrs={"source": {"imported_from": "/home/me/my_task.h5"}})
    staging.append(np.zeros((12, 64, 64, 3), np.uint8), split="train", episode_id=0)
    store.promote(TASK, "importing")
    with pytest.raises(ViperError, match=r"videos of dmc/cartpole_balance were imported \(/home/me/my_task.h5\)"):
        collect.run(cfg, progress=False)
    assert open_store(paths.store(tmp_path, "dmc")).task(TASK).num_frames == 12  # untouched
    args = ["collect", "--preset", "tiny", "-S", f"data_dir={tmp_path}", "--episodes", "2"]
    assert cli.main(args) == 2 and "--replace-imported" in capsys.readouterr().err
    assert cli.main([*args, "--replace-imported", "-S", "collect.episode_env_steps=10"]) == 0
    group = open_store(paths.store(tmp_path, "dmc")).task(TASK)
    assert collect.imported_from(group) is None and group.num_episodes == 2


def _mount_tmpfs(path, size: str) -> None:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.decode().strip()}")


def test_disk_full_during_collection_is_a_clean_error_and_the_same_command_resumes(tmp_path):
    """A real full disk (a 1 MiB tmpfs): collect stops with a one-line error, not a traceback; the store opens
    with every committed rollout intact; with more space the same command rolls out only the missing ones."""
    from viper.data.collect import COLLECTING

    small = tmp_path / "small"
    _mount_tmpfs(small, "1m")
    try:
        data = small / "data"
        args = [sys.executable, "-m", "viper.cli", "collect", "--preset", "tiny", "-S", f"data_dir={data}"]
        args += ["-S", "collect.episodes_per_task=60"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        full = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        assert full.returncode == 2, full.stderr[-2000:]
        assert "Traceback" not in full.stderr
        assert "No space left on device" in full.stderr and "run the same command again" in full.stderr
        store = open_store(paths.store(data, "dmc"))
        assert store.tasks == [], "the task group must not be swapped in from an incomplete collection"
        staged = store.staging(TASK, COLLECTING)
        committed = staged.num_episodes
        assert 0 < committed < 60
        kept = [staged.read_episode(i)["frames"] for i in range(committed)]
        # 40 steps: the reset frame and one frame per step.
        assert all(f.shape == (41, 64, 64, 3) and f.std() > 0 for f in kept)

        subprocess.run(["mount", "-o", "remount,size=32m", str(small)], check=True)
        again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        assert again.returncode == 0, again.stderr[-2000:]
        assert f"{committed}/60" in again.stderr, "the re-run must start from the committed rollouts"
        group = open_store(paths.store(data, "dmc")).task(TASK)
        assert group.num_episodes == 60  # tiny keeps every rollout, in rollout order
        for i, frames in enumerate(kept):
            np.testing.assert_array_equal(group.read_episode(i)["frames"], frames)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
