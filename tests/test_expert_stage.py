"""The expert stage: which tasks get a trained expert and how `collect`'s `expert` policy finds it."""

from __future__ import annotations

import numpy as np
import pytest

from viper import config as C
from viper import paths
from viper.cli import main
from viper.data.collect import expert_policy
from viper.errors import ViperError
from viper.experts.policies import scripted_tasks


def test_expert_stage_skips_tasks_with_scripted_experts(tmp_path, capsys):
    code = main(["expert", "--preset", "tiny", "-S", f"data_dir={tmp_path}", "--metrics-out", str(tmp_path / "m.json")])
    assert code == 0 and "nothing to train" in capsys.readouterr().out
    assert (tmp_path / "experts").is_dir() and '"experts_trained": 0' in (tmp_path / "m.json").read_text()


def test_expert_policy_uses_scripted_then_trained_experts(tmp_path):
    cfg = C.load("tiny", [f"data_dir={tmp_path}"], params_path=None)
    assert "dmc/cartpole_balance" in scripted_tasks()
    assert expert_policy(cfg, "dmc/cartpole_balance") == "expert"
    assert "dmc/cheetah_run" not in scripted_tasks()
    with pytest.raises(ViperError, match=r"viper expert --task dmc/cheetah_run"):
        expert_policy(cfg, "dmc/cheetah_run")
    (paths.expert_dir(tmp_path, "dmc/cheetah_run") / "checkpoints").mkdir(parents=True)
    assert expert_policy(cfg, "dmc/cheetah_run") == f"checkpoint:{paths.expert_dir(tmp_path, 'dmc/cheetah_run')}"
    other = C.load("tiny", [f"data_dir={tmp_path}", "collect.policy=random"], params_path=None)
    assert expert_policy(other, "dmc/cheetah_run") == "random"


def test_training_an_expert_for_a_task_with_a_scripted_one_says_collect_will_not_use_it(tmp_path, capsys):
    """`viper expert --task dmc/cartpole_balance` trained an agent that collect's `expert` policy never uses,
    without a word."""
    args = ["expert", "--preset", "tiny", "-S", f"data_dir={tmp_path}", "--task", "dmc/cartpole_balance"]
    assert main([*args, "-S", "agent.env_steps=4", "-S", "agent.eval_episodes=1"]) == 0
    out = capsys.readouterr().out
    expected = f"collect.policy=checkpoint:{paths.expert_dir(tmp_path, 'dmc/cartpole_balance')}"
    assert "dmc/cartpole_balance has a scripted expert, which collect.policy=expert uses" in out and expected in out


def test_collect_with_a_trained_expert_collects_again_when_its_weights_change(tmp_path, monkeypatch):
    """collect named a checkpoint policy by its path: an expert retrained under the same path (the expert stage run
    again with other agent settings) left the old expert's videos in the store. The weights are hashed once per
    task (they were read twice: once for the staging key, once for the store's)."""
    import torch

    from viper.agent import policy
    from viper.agent.policy import checkpoint_folder
    from viper.checkpoint import Checkpointer, saved_step
    from viper.data import collect
    from viper.data.store import open_store

    task = "dmc/cartpole_balance"
    train = ["expert", "--preset", "tiny", "-S", f"data_dir={tmp_path}", "--task", task, "-S", "agent.env_steps=4"]
    assert main([*train, "-S", "agent.eval_episodes=1"]) == 0
    expert = paths.expert_dir(tmp_path, task)
    settings = [f"collect.policy=checkpoint:{expert}", "collect.episodes_per_task=2", "collect.episode_env_steps=20"]
    cfg = C.load("tiny", [f"data_dir={tmp_path}", f"collect.tasks=[{task}]", "collect.workers=1", *settings], None)
    store_meta = paths.store(tmp_path, "dmc") / "cartpole_balance" / "zarr.json"

    hashed = []
    monkeypatch.setattr(
        policy, "checkpoint_identity", lambda path, real=policy.checkpoint_identity: hashed.append(path) or real(path)
    )

    def collected():
        hashed.clear()
        collect.run(cfg, progress=False)
        assert len(hashed) == 1, f"the expert's weights were hashed {len(hashed)} times"
        group = open_store(paths.store(tmp_path, "dmc")).task(task)
        return store_meta.stat().st_mtime_ns, group.read_episode(0)["actions"]

    first_time, first_actions = collected()
    assert collected()[0] == first_time  # the same expert: nothing to do
    # "Retrain" the expert: a newer checkpoint with other weights under the path the policy names.
    folder = checkpoint_folder(expert)
    state = torch.load(folder / "state.pt", weights_only=False)
    state["agent"] = {k: v + 0.5 if v.is_floating_point() else v for k, v in state["agent"].items()}
    Checkpointer(folder.parent).save(saved_step(folder) + 1, state)
    again_time, again_actions = collected()
    assert again_time != first_time and not np.array_equal(again_actions, first_actions)
    # A byte flipped in the expert's weights is refused, not rolled out (torch.load would read it).
    from viper.agent.policy import load_policy

    state_path = checkpoint_folder(expert) / "state.pt"
    data = bytearray(state_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    state_path.write_bytes(bytes(data))
    with pytest.raises(ViperError, match="state.pt is missing or differs from its checksum"):
        load_policy(expert)
