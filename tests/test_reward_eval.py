"""reward-eval: per-task metrics from scored episodes, the resumable episode log, and the plot."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from viper.errors import ViperError
from viper.eval.reward_eval import Scored, _load_done, scatter, task_metrics

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
    done = _load_done(path, "m")
    assert set(done) == {(r.task, r.category, r.index) for r in rows[:4]}


def test_scatter_writes_a_png(tmp_path):
    metrics = {f"reward_eval/dmc-cartpole_balance/{k}": v for k, v in task_metrics(records(), (0.5,)).items()}
    png = scatter({TASK: records()}, metrics, tmp_path / "scatter.png")
    assert png.stat().st_size > 1000 and np.isfinite(list(metrics.values())).all()
