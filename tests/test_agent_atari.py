"""The agent on a real ALE game: the discrete (one-hot) actor trains, acts, evaluates and resumes through the same
loop as on dm_control (the paper_atari preset's path, at tiny sizes)."""

from __future__ import annotations

import numpy as np

from viper import config as C
from viper import paths
from viper.agent.replay import read_saved
from viper.agent.train import run

TASK = "atari/pong"
STEPS = ["agent.checkpoint_every_env_steps=60", "agent.eval_every_env_steps=60"]


def test_the_agent_trains_acts_evaluates_and_resumes_on_an_atari_game(tmp_path):
    data = tmp_path / "data"
    base = [f"data_dir={data}", f"agent.tasks=[{TASK}]", *STEPS]
    run_dir = paths.agent_dir(data, "task", TASK, 0)
    metrics = run(C.load("tiny", [*base, "agent.env_steps=120"], params_path=None), TASK, 0, "task", run_dir)
    assert metrics["env_steps"] == 120 and metrics["updates"] > 0
    assert -21.0 <= metrics["eval_task_return"] <= 21.0  # a Pong score
    assert list((run_dir / "videos").glob("eval_*.gif"))

    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    actions = read_saved(run_dir / "checkpoints" / latest / "replay")[0]["action"]
    # One row per env step, one-hot over the full action space (18 actions, as published for Atari).
    assert actions.shape == (120, 18)
    assert set(np.unique(actions).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(actions.sum(-1), 1.0)
    # After the random prefill the actor's samples act: an untrained categorical over 18 actions varies.
    acted = actions[metrics["replay_steps"] // 2 :].argmax(-1)
    assert len(np.unique(acted)) > 1, acted

    longer = run(C.load("tiny", [*base, "agent.env_steps=180"], params_path=None), TASK, 0, "task", run_dir)
    assert longer["checkpoint_loads"] == 1 and longer["start_env_steps"] == 120
    assert longer["env_steps"] == 180 and longer["updates"] > metrics["updates"]
