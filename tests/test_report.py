"""The report stage renders our numbers beside the published ones, one row per configured task."""

from __future__ import annotations

import json

import pytest

from viper import config as C
from viper.errors import ViperError
from viper.eval import report


def _write(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))


def test_report_rows_ratios_curves_and_html(tmp_path):
    cfg = C.load(
        "demo",
        [f"data_dir={tmp_path}", "agent.tasks=[dmc/cartpole_balance, dmc/cartpole_swingup, atari/pong]"],
        params_path=None,
    )
    results = [
        {
            "task": "dmc/cartpole_balance",
            "seed": 0,
            "reward": "viper",
            "task_return_mean": 800.0,
            "viper_return_mean": -120.0,
        },
        {"task": "dmc/cartpole_balance", "seed": 1, "reward": "viper", "task_return_mean": 600.0},
        {
            "task": "dmc/cartpole_balance",
            "seed": 0,
            "reward": "task",
            "task_return_mean": 875.0,
            "viper_return_mean": -90.0,
        },
        # Atari returns are game scores; the paper reports human-normalised ones (Pong: random -20.7, human 14.6).
        {"task": "atari/pong", "seed": 0, "reward": "viper", "task_return_mean": 14.6},
        {"task": "atari/pong", "seed": 0, "reward": "task", "task_return_mean": -3.05},
    ]
    _write(tmp_path / "evaluate" / "results.json", results)
    baselines = [{"task": "dmc/cartpole_balance", "policy": "random", "task_return_mean": 150.0, "episodes": 1}]
    _write(tmp_path / "evaluate" / "baselines.json", baselines)
    log = tmp_path / "agents" / "viper" / "dmc-cartpole_balance" / "seed0" / "logs" / "metrics.jsonl"
    lines = [json.dumps({"step": s, "episode/task_return": r, "agent/loss": 1.0}) for s, r in [(0, 10), (500, 300)]]
    _write(log, "\n".join([*lines, '{"step": 9'[:8]]))  # the last line cut short, as by a killed run
    # Runs left from other settings (a seed no longer configured, another preset's task): not plotted.
    assert 9 not in cfg.agent.seeds and "dmc/walker_walk" not in cfg.agent.tasks
    for stale in ("viper/dmc-cartpole_balance/seed9", "task/dmc-walker_walk/seed0"):
        _write(tmp_path / "agents" / stale / "logs" / "metrics.jsonl", "\n".join(lines))
    prior_log = tmp_path / "prior" / "dmc" / "logs" / "metrics.jsonl"
    _write(prior_log, json.dumps({"step": 10, "time_s": 1.0, "prior/eval_bits_per_token": 2.5}) + "\n")
    # As reward-eval writes it: flat keys per task, nested per-category means, the minimum over tasks.
    _write(
        tmp_path / "reward_eval" / "dmc" / "metrics.json",
        {
            "reward_eval/dmc-cartpole_balance/auroc_expert_vs_random": 1.0,
            "reward_eval/dmc-cartpole_balance/spearman_reward_vs_return": 0.93,
            "reward_eval/dmc-cartpole_balance/mean_reward/expert": -10.0,
            "reward_eval/min/auroc_expert_vs_random": 1.0,
        },
    )
    _write(tmp_path / "metrics" / "collect.json", {"episodes": 48})

    summary = report.run(cfg)

    assert summary == {"tasks": 3, "tasks_with_results": 2, "plot_files": 2}
    plots = sorted((tmp_path / "report" / "plots").iterdir())
    assert [p.name for p in plots] == [
        "agent_viper_dmc-cartpole_balance_seed0__episode_task_return.tsv",
        "prior_dmc__prior_eval_bits_per_token.tsv",
    ]
    assert plots[0].read_text() == "step\ttask_return\n0\t10\n500\t300\n"
    assert plots[1].read_text() == "step\teval_bits_per_token\n10\t2.5\n"
    rows = {r["task"]: r for r in report.agent_rows(cfg, tmp_path)}
    balance = rows["dmc/cartpole_balance"]
    assert balance["VIPER (ours)"] == 700.0 and balance["seeds"] == 2 and balance["unit"] == "return"
    # The summed VIPER reward of each kind of agent, never mixed.
    assert balance["summed VIPER reward, VIPER agent"] == -120.0 and balance["summed VIPER reward, oracle"] == -90.0
    pong = rows["atari/pong"]
    assert pong["unit"] == "human-normalised" and pong["VIPER (ours)"] == pytest.approx(1.0)
    assert pong["oracle (ours)"] == pytest.approx(0.5) and pong["VIPER/oracle (ours)"] == pytest.approx(2.0)
    assert balance["VIPER/oracle (ours)"] == 700.0 / 875.0 and balance["random actions (ours)"] == 150.0
    assert rows["dmc/cartpole_swingup"]["random actions (ours)"] is None
    assert balance["VIPER/oracle (paper)"] == 0.85 and balance["oracle (paper)"] == 1000
    assert rows["dmc/cartpole_swingup"]["seeds"] == "not run"
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| dmc/cartpole_balance | return | 2 | 700 |" in md and "| dmc/cartpole_swingup | return | not run |" in md
    assert "auroc_expert_vs_random" in md and "| collect | episodes | 48 |" in md
    diagnostics = {r["task"]: r for r in report.reward_rows(cfg, tmp_path)}
    assert diagnostics["dmc/cartpole_balance"]["auroc_expert_vs_random"] == 1.0
    assert diagnostics["dmc/cartpole_balance"]["spearman_reward_vs_return"] == 0.93
    assert "mean_reward/expert" not in diagnostics["dmc/cartpole_balance"]
    assert diagnostics["dmc/cartpole_swingup"]["status"] == "not run"
    assert (tmp_path / "report" / "assets" / "curve_dmc-cartpole_balance.png").stat().st_size > 1000
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("<tr>") >= 6 and "curve_dmc-cartpole_balance.png" in page


def test_a_results_record_without_its_keys_names_the_file_and_a_foreign_log_row_is_skipped(tmp_path):
    """A record without task_return_mean raised a bare KeyError naming no file; a metrics row without "step"
    stopped the whole report."""
    cfg = C.load("tiny", [f"data_dir={tmp_path}"], params_path=None)
    results = tmp_path / "evaluate" / "results.json"
    _write(results, [{"task": "dmc/cartpole_balance", "reward": "viper"}])
    with pytest.raises(ViperError, match=r"evaluate/results.json: record 0 is .*expected an object with 'task' and"):
        report.agent_rows(cfg, tmp_path)
    # Only oracle runs: the row says so rather than a bare "not run".
    _write(results, [{"task": "dmc/cartpole_balance", "reward": "task", "task_return_mean": 800.0}])
    assert report.agent_rows(cfg, tmp_path)[0]["seeds"] == "not run (oracle only)"
    log = tmp_path / "m.jsonl"
    _write(log, '{"step": 1, "a": 1.0}\n{"a": 2.0}\n{"step": 3, "a": 3.0}\n')
    assert report.read_series(log, lambda key: key == "a") == {"a": [(1, 1.0), (3, 3.0)]}
