"""End to end on ``tiny``: collect -> train-tokenizer -> tokenize -> train-videogpt -> train-agent (reward viper,
the DVC stage's call: no --task), and the agent's logged VIPER rewards equal what ``viper score`` gives for the
same frames (the evaluation episode's file, and the relabelled replay against whole-segment scoring)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from viper import config as config_lib
from viper import paths
from viper.agent import commands as agent_stage
from viper.agent.replay import read_saved
from viper.data import collect
from viper.reward import score
from viper.train import prior, tokenize, tokenizer

TASK = "dmc/cartpole_balance"
SHORT = [f"tokenizer.{k}=4" for k in ("train_grad_steps", "eval_every_grad_steps", "checkpoint_every_grad_steps")]
SHORT += [f"prior.{k}=4" for k in ("train_grad_steps", "eval_every_grad_steps", "checkpoint_every_grad_steps")]
SHORT += [f"agent.{k}=100" for k in ("env_steps", "eval_every_env_steps", "checkpoint_every_env_steps")]


def _stage_args() -> argparse.Namespace:
    return argparse.Namespace(task=None, seed=None, reward=None)


@pytest.mark.slow
def test_tiny_pipeline_viper_agent_logs_the_rewards_viper_score_gives(tmp_path):
    overrides = [f"data_dir={tmp_path}", "reward.device=cpu", "agent.device=cpu", *SHORT]
    cfg = config_lib.load("tiny", overrides, params_path=None)
    collect.run(cfg, progress=False)
    tokenizer.run(cfg, progress=False)
    tokenize.run(cfg, device="cpu")
    prior.run(cfg)
    summary = agent_stage.cli(cfg, _stage_args(), "train-agent")
    key = f"{paths.slug(TASK)}/seed0"
    assert summary[f"{key}/env_steps"] == 100 and summary[f"{key}/updates"] > 0
    assert np.isfinite(summary[f"{key}/eval_task_return"]) and np.isfinite(summary[f"{key}/eval_viper_return"])
    run_dir = paths.agent_dir(tmp_path, "viper", TASK, 0)
    rows = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]

    # The evaluation episode: its stored rewards are `viper score`'s for its frames, and its logged return.
    episode = run_dir / "videos" / "eval_000000100.npz"
    assert (run_dir / "videos" / "eval_000000100.gif").stat().st_size > 1000
    with np.load(episode) as data:
        logged = data["viper_rewards"]
    _, scored, _ = score.run(cfg, episode, TASK, output=tmp_path / "eval.png")
    np.testing.assert_allclose(logged, scored, rtol=1e-5, equal_nan=True)
    evals = [r["episode/viper_return"] for r in rows if "episode/viper_return" in r]
    assert evals == [pytest.approx(float(np.nansum(scored)), rel=1e-5)]

    # The replay: each stretch between is_first flags is one training episode from step K = window - 1 on;
    # its relabelled rewards from step 2K on (those whose whole window lies in the stretch) are `viper score`'s.
    folder = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    stream = read_saved(folder / "replay")[0]
    count = len(stream["image"])
    image, density, first, last = (stream[k] for k in ("image", "density", "is_first", "is_last"))
    starts = np.flatnonzero(first).tolist()
    assert starts and starts[0] == 0
    context = int(np.isnan(scored).sum())
    ended = []
    for begin, end in zip(starts, starts[1:] + [count], strict=True):
        path = tmp_path / f"segment{begin}.npz"
        np.savez(path, frames=image[begin:end])
        _, rewards, _ = score.run(cfg, path, TASK, output=tmp_path / f"segment{begin}.png")
        np.testing.assert_allclose(density[begin + context : end], rewards[context:], rtol=1e-5)
        if last[end - 1]:
            ended.append(float(density[begin:end].sum(dtype=np.float64)))
    train = [r["train/episode_viper_return"] for r in rows if "train/episode_viper_return" in r]
    assert ended and train == pytest.approx(ended, rel=1e-5)
