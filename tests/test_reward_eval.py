"""reward-eval: per-task metrics from scored episodes, the resumable episode log, and the plot."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from viper.checkpoint import Checkpointer
from viper.errors import ViperError
from viper.eval.reward_eval import Scored, _load_done, scatter, task_metrics
from viper.models.vqgan import VQGAN, VQGANArch

TASK = "dmc/cartpole_balance"


def records() -> list[Scored]:
    """Experts score highest, then noisy, then random; shuffled/reversed between noisy and expert."""
    out = []
    spec = [("expert", -10.0, 900.0), ("noisy:0.5", -20.0, 500.0), ("random", -40.0, 100.0),
            ("shuffled", -30.0, 900.0), ("reversed", -12.0, 900.0)]  # fmt: skip
    for category, reward, ret in spec:
        for i in range(3):
            out.append(Scored(TASK, category, i, reward + i, ret + 10 * i, 50, "m"))
    return out


def test_task_metrics_rank_the_categories():
    metrics = task_metrics(records(), (0.5,))
    assert metrics["auroc_expert_vs_random"] == 1.0
    assert metrics["auroc_expert_vs_noisy_0.5"] == 1.0
    assert metrics["auroc_expert_vs_shuffled"] == 1.0
    # reversed: expert rewards -10, -9, -8 vs -12, -11, -10: 8 of 9 pairs won, one tie counts 1/2.
    assert metrics["auroc_expert_vs_reversed"] == pytest.approx(8.5 / 9)
    assert metrics["spearman_reward_vs_return"] == pytest.approx(1.0)
    assert metrics["mean_reward/expert"] == pytest.approx(-9.0)


def test_episodes_without_a_return_are_left_out_of_the_spearman_and_noisy_categories_are_optional():
    """Imported expert videos record no return (NaN): the Spearman ranks the episodes that have one. A task
    without an expert to perturb has no noisy episodes: its metrics leave them out instead of failing."""
    rows = [r if r.category != "expert" else Scored(**{**asdict(r), "task_return": float("nan")}) for r in records()]
    metrics = task_metrics(rows, (0.5,))
    ranked = [r for r in rows if r.category in ("noisy:0.5", "random")]
    expected = task_metrics(ranked + [r for r in rows if r.category not in ("noisy:0.5", "random")], (0.5,))
    assert np.isfinite(metrics["spearman_reward_vs_return"])
    assert metrics["spearman_reward_vs_return"] == expected["spearman_reward_vs_return"] == pytest.approx(1.0)
    assert metrics["auroc_expert_vs_random"] == 1.0
    quiet = task_metrics([r for r in records() if r.category != "noisy:0.5"], ())
    assert not [k for k in quiet if "noisy" in k] and quiet["auroc_expert_vs_random"] == 1.0


def test_each_categorys_key_changes_with_what_its_scores_depend_on_and_only_that(tmp_path):
    """One key per task re-scored every category after any change (a new epsilon re-ran the random rollouts);
    each category's key now holds only what its scores depend on."""
    from viper import config as config_lib
    from viper.eval.reward_eval import record_keys

    cfg = config_lib.load("tiny", params_path=None)
    trained = tmp_path / "checkpoints" / "step_000000001"  # an agent trained on the task reward
    trained.mkdir(parents=True)
    (trained / "state.pt").write_bytes(b"weights")
    (trained / "done").write_text("1")
    policies = {"noisy:0.5": "noisy:0.5", "random": "random"}
    base = record_keys(cfg, "model", TASK, "videos", policies)
    assert record_keys(cfg, "model", TASK, "videos", dict(policies)) == base and len(set(base.values())) == 5

    def changed(keys: dict[str, str]) -> set[str]:
        return {category for category, key in keys.items() if base.get(category) != key}

    stored, rolled = {"expert", "shuffled", "reversed"}, {"noisy:0.5", "random"}
    assert changed(record_keys(cfg, "other model", TASK, "videos", policies)) == stored | rolled
    assert changed(record_keys(cfg, "model", TASK, "replaced videos", policies)) == stored
    trained_expert = {**policies, "noisy:0.5": f"noisy:0.5:checkpoint:{tmp_path}"}
    assert changed(record_keys(cfg, "model", TASK, "videos", trained_expert)) == {"noisy:0.5"}
    more = {**policies, "noisy:0.9": "noisy:0.9"}
    assert changed(record_keys(cfg, "model", TASK, "videos", more)) == {"noisy:0.9"}  # nothing else re-scored
    for override, expected in (
        ("evaluate.seed=7", rolled | {"shuffled"}),
        ("collect.drop_first_frames=3", rolled),
        ("collect.episode_env_steps=41", rolled),
        (f"collect.expert_settings=[{TASK}:centre_gain=3.0]", {"noisy:0.5"}),
        ("collect.expert_settings=[dmc/cartpole_swingup:pump_gain=4.0]", set()),  # another task's expert
    ):
        other = config_lib.load("tiny", [override], params_path=None)
        assert changed(record_keys(other, "model", TASK, "videos", policies)) == expected, override


def test_missing_category_is_an_error_not_a_silent_number():
    with pytest.raises(ViperError, match="no scored episodes for random"):
        task_metrics([r for r in records() if r.category != "random"], (0.5,))


def test_episode_log_keeps_only_records_of_the_same_model(tmp_path):
    path = tmp_path / "episodes.jsonl"
    rows = records()
    lines = [json.dumps(asdict(r)) for r in rows[:4]]
    lines.append(json.dumps({**asdict(rows[4]), "model": "other"}))
    lines.append('{"task": "cut short')
    path.write_text("\n".join(lines) + "\n")
    done = _load_done(path, {r.category: "m" for r in rows})
    assert set(done) == {(r.task, r.category, r.index) for r in rows[:4]}


def test_scatter_writes_a_png(tmp_path):
    metrics = {f"reward_eval/dmc-cartpole_balance/{k}": v for k, v in task_metrics(records(), (0.5,)).items()}
    png = scatter({TASK: records()}, metrics, tmp_path / "scatter.png")
    assert png.stat().st_size > 1000 and np.isfinite(list(metrics.values())).all()


def test_stage_end_to_end_on_real_rollouts(tmp_path, capsys):
    """Expert rollouts in a real store, a tokenizer checkpoint, tokenize, a briefly trained prior, reward-eval."""
    from viper import config as config_lib
    from viper import paths
    from viper.data.store import open_store
    from viper.eval import reward_eval
    from viper.experts import rollout
    from viper.train import prior as prior_stage
    from viper.train import tokenize

    overrides = [f"data_dir={tmp_path}", "collect.workers=1", "evaluate.reward_eval_episodes=2",
                 "prior.train_grad_steps=4", "reward.device=cpu"]  # fmt: skip
    cfg = config_lib.load("tiny", overrides, params_path=None)
    c = cfg.collect
    store = open_store(paths.store(tmp_path, "dmc"), "a")
    for i, split in enumerate(["train", "train", "test", "test"]):
        ep = rollout(TASK, "expert", i, c.action_repeat, c.episode_env_steps, c.fast_render)
        store.append_episode(TASK, ep.frames, ep.actions, ep.rewards, split=split, task_return=ep.task_return)
    # The tokenizer: the real VQ-GAN at tiny sizes, untrained (this test is about the stage's plumbing).
    torch.manual_seed(0)
    vqgan = VQGAN(VQGANArch.from_config(cfg.tokenizer))
    state = {"model": vqgan.state_dict(), "arch": asdict(vqgan.arch)}
    Checkpointer(paths.tokenizer_dir(tmp_path, "dmc") / "checkpoints").save(1, state)
    tokenize.run(cfg, device="cpu")
    prior_stage.run(cfg)
    metrics = reward_eval.run(cfg)
    out = paths.reward_eval_dir(tmp_path, "dmc")
    key = "reward_eval/dmc-cartpole_balance/"
    for name in ("auroc_expert_vs_random", "auroc_expert_vs_noisy_0.5", "auroc_expert_vs_shuffled"):
        assert 0.0 <= metrics[key + name] <= 1.0
    assert -1.0 <= metrics[key + "spearman_reward_vs_return"] <= 1.0
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    lines = (out / "episodes.jsonl").read_text().splitlines()
    # 2 experts x (as recorded, shuffled, reversed) + 2 noisy + 2 random
    assert sorted(json.loads(x)["category"] for x in lines).count("expert") == 2 and len(lines) == 10
    assert (out / "scatter.png").stat().st_size > 1000
    # A run killed mid-way (log cut short) resumes to the same numbers.
    (out / "episodes.jsonl").write_text("\n".join(lines[:4]) + '\n{"task": "dmc/cart')
    assert reward_eval.run(cfg) == pytest.approx(metrics)
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 10
    # The command prints each task's numbers, and says so when the reward cannot guide an agent.
    capsys.readouterr()
    reward_eval.cli(cfg, None, "reward-eval")
    printed = capsys.readouterr().out
    auroc = metrics[key + "auroc_expert_vs_random"]
    assert f"{TASK}: auroc_expert_vs_random {auroc:.3f}" in printed
    assert ("does not tell expert from random episodes" in printed) == (auroc < reward_eval.WEAK_AUROC), printed
    # `viper score` reads an episode straight from the store.
    from viper.reward import score

    summary, rewards, png = score.run(cfg, paths.store(tmp_path, "dmc"), TASK, episode=2)
    assert png == tmp_path / "scores" / "dmc" / "dmc-cartpole_balance-ep2.reward.png" and png.stat().st_size > 1000
    assert summary["score/scored_steps"] == np.isfinite(rewards).sum() == len(rewards) - 3
    with pytest.raises(ViperError, match="episodes 0..3"):
        score.run(cfg, paths.store(tmp_path, "dmc"), TASK, episode=9)
