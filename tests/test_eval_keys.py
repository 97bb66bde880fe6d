"""What reward-eval's and evaluate's resume keys depend on: a retrained expert, changed env code and bf16 scoring
give new keys (stale scores were reused); copying a checkpoint does not (everything was evaluated again)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from viper import config, paths, stages
from viper.config import RewardConfig
from viper.eval import agent_eval, reward_eval
from viper.reward import VideoReward

TASK = "dmc/walker_walk"  # no scripted expert: its noisy episodes come from a trained one


def checkpoint(run_dir, step: int, weights: bytes):
    folder = run_dir / "checkpoints" / f"step_{step:09d}"
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(weights)
    (folder / "done").write_text(str(step))
    return folder


def test_noisy_expert_scores_follow_the_trained_experts_weights_and_the_stages_code(tmp_path, monkeypatch):
    cfg = config.load("tiny", [f"data_dir={tmp_path}"], params_path=None)
    expert = paths.expert_dir(tmp_path, TASK)
    checkpoint(expert, 1, b"first weights")
    policies = reward_eval.noisy_policies(cfg, TASK)
    assert all(":checkpoint:" in spec for spec in policies.values())
    first = reward_eval.record_keys(cfg, "model", TASK, "videos", policies)
    checkpoint(expert, 2, b"retrained weights")  # `viper expert` trained on
    retrained = reward_eval.record_keys(cfg, "model", TASK, "videos", policies)
    assert all(retrained[category] != first[category] for category in policies)
    # A change to the stage's code re-scores what it affects: DVC reruns the stage for it, and reusing the records
    # recorded old numbers as current. Rollout, agent or env code: the rollout categories only (the stored videos'
    # scores do not depend on it); scoring code: every category.
    real_stage, real_repo = stages.code_digest, stages.repo_digest
    monkeypatch.setattr(stages, "code_digest", lambda name: real_stage(name) + "x")  # not the scoring code
    rollout_code = reward_eval.record_keys(cfg, "model", TASK, "videos", policies)
    changed = {category for category in retrained if rollout_code[category] != retrained[category]}
    assert changed == set(policies), changed
    monkeypatch.undo()
    monkeypatch.setattr(stages, "repo_digest", lambda entries: real_repo(entries) + "x")  # every file's digest
    scoring_code = reward_eval.record_keys(cfg, "model", TASK, "videos", policies)
    assert all(scoring_code[category] != retrained[category] for category in retrained)
    assert set(stages.SCORING_CODE) < set(stages.by_name("reward-eval").code) | {
        "viper/envs/__init__.py",
        "viper/envs/masks.py",
    }


def test_an_evaluated_checkpoint_is_known_by_its_weights_not_its_file_times(tmp_path, monkeypatch):
    run = tmp_path / "run"
    folder = checkpoint(run, 1, b"weights")
    key = agent_eval._checkpoint(run)
    os.utime(folder / "state.pt", (0, 0))  # a copy, `dvc checkout`, a restore from superseded/
    assert agent_eval._checkpoint(run) == key
    (folder / "state.pt").write_bytes(b"weights, retrained")
    assert agent_eval._checkpoint(run) != key
    cfg = config.load("tiny", params_path=None)
    code = agent_eval.settings_key(cfg, None)
    monkeypatch.setattr(stages, "code_digest", lambda name: "other code" if name == "evaluate" else "?")
    assert agent_eval.settings_key(cfg, None) != code


def test_cuda_scores_are_not_mixed_with_cpu_ones(tmp_path):
    """bf16 autocast runs on CUDA only, and CUDA's float32 runs the tokenizer's convolutions in TF32: on CUDA the
    precision is part of the reward model's identity; CPU keys are unchanged (bf16 is ignored there)."""
    (tmp_path / "state.pt").write_bytes(b"prior")

    def identity(device: str, bf16: bool) -> str:
        fake = SimpleNamespace(
            prior_path=tmp_path,
            tokenizer=SimpleNamespace(hash="tok"),
            cfg=RewardConfig(bf16=bf16),
            device=torch.device(device),
        )
        return VideoReward.identity(fake)

    assert identity("cpu", True) == identity("cpu", False) and not identity("cpu", True).endswith("bf16")
    keys = {identity("cpu", False), identity("cuda", True), identity("cuda", False)}
    assert len(keys) == 3, keys


def test_reward_eval_averages_the_rewards_the_agent_gets():
    """With frame_skip 4 (paper_atari) the agent's context (seq_len * frame_skip - 1 = 15 steps) is longer than
    one window minus one (12): reward-eval averaged three steps no agent is rewarded for."""
    scores = np.arange(40, dtype=np.float32)
    scores[:12] = np.nan
    fake = SimpleNamespace(
        context_steps=15,
        score=lambda frames, task: scores[None],
        agent_rewards=lambda frames, task: np.where(np.arange(40) < 15, np.nan, scores),
    )
    mean = reward_eval._mean_reward(fake, np.zeros((40, 64, 64, 3), np.uint8), TASK)
    assert mean == pytest.approx(np.arange(15, 40).mean())


@pytest.mark.parametrize(
    "override, message",
    [
        ("evaluate.agent_episodes=0", "evaluate.agent_episodes=0: expected int >= 1"),
        ("evaluate.reward_eval_episodes=0", "evaluate.reward_eval_episodes=0: expected int >= 1"),
        ("evaluate.noisy_epsilons=[0.1234567, 0.1234568]", "two values print alike"),
    ],
)
def test_evaluation_counts_and_epsilons_are_checked_on_load(override, message):
    """0 episodes crashed the evaluate stage with a traceback; epsilons that print alike merged two categories."""
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[")):
        config.load("tiny", [override], params_path=None)


def test_a_code_digest_follows_the_listed_python_files_only(tmp_path):
    from viper.hashing import sources_digest

    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "c.py").write_text("z = 3\n")
    listed = ("pkg", "b.py")
    first = sources_digest(tmp_path, listed)
    (tmp_path / "c.py").write_text("z = 4\n")  # not listed
    (tmp_path / "pkg" / "notes.txt").write_text("other notes")  # not Python
    assert sources_digest(tmp_path, listed) == first
    (tmp_path / "pkg" / "sub" / "a.py").write_text("x = 2\n")  # inside a listed folder
    assert sources_digest(tmp_path, listed) != first
    assert len(stages.code_digest("evaluate")) == 16 and stages.code_digest("evaluate") != stages.code_digest("report")
