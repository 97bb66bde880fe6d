"""The tokenize stage on a real Zarr store and a trained tokenizer: tokens written and refused when stale, and
what makes them (and the tokenizer) stale: more training, replaced or extended videos, an edited Atari mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_tokenizer_train import TASKS, synthetic_frames, tiny_cfg, write_store

from viper import paths
from viper.data.store import open_store
from viper.data.tokens import StaleTokensError, read_tokens
from viper.models.vqgan import load_tokenizer
from viper.train import tokenize, tokenizer


def test_tokenize_writes_tokens_and_refuses_stale_ones(tmp_path, capsys):
    write_store(tmp_path)
    cfg = tiny_cfg(tmp_path, "tokenizer.train_grad_steps=3")
    tokenizer.run(cfg, progress=False, stop_at_grad_steps=2)  # from the real store (ChunkPools, test split)
    capsys.readouterr()
    tokenize.run(cfg, device="cpu")  # a stopped run's tokenizer works, with a line saying it is unfinished
    assert "stopped at update 2 of 3 (tokenizer.train_grad_steps); tokens made now go stale" in capsys.readouterr().out
    tokenizer.run(cfg, progress=False)
    first = tokenize.run(cfg, device="cpu")
    assert first["tasks_encoded"] == 2 and first["frames"] == 2 * 3 * 12
    assert "stopped at update" not in capsys.readouterr().out
    tok = load_tokenizer(paths.tokenizer_dir(tmp_path, "dmc"))
    store = open_store(paths.store(tmp_path, "dmc"))
    out = paths.tokens(tmp_path, "dmc")
    for task in TASKS:
        group = read_tokens(out, task, expected_hash=tok.hash)
        frames = store.task(task).read_frames(0, store.task(task).num_frames)
        assert group.tokens.dtype == np.int16 and group.tokens.shape == (36, 8, 8)
        assert np.array_equal(group.tokens, tok.encode(frames).numpy())
        assert np.array_equal(group.episode_ends, store.task(task).episode_ends)
    assert tokenize.run(cfg, device="cpu")["tasks_up_to_date"] == 2
    # More training changes the weights: the old tokens are stale until tokenize runs again.
    more = tiny_cfg(tmp_path, "tokenizer.train_grad_steps=5")
    new_hash = tokenizer.run(more, progress=False)["tokenizer_hash"]
    assert new_hash != tok.hash
    with pytest.raises(StaleTokensError, match=new_hash):
        read_tokens(out, TASKS[0], expected_hash=new_hash)
    assert tokenize.run(more, device="cpu")["tasks_encoded"] == 2
    assert read_tokens(out, TASKS[0], expected_hash=new_hash).tokenizer_hash == new_hash


def test_extended_or_replaced_videos_retrain_the_tokenizer_and_prior_and_are_encoded_again(tmp_path):
    from viper.train import prior

    write_store(tmp_path)
    cfg = tiny_cfg(
        tmp_path,
        "tokenizer.train_grad_steps=3",
        f"collect.tasks={json.dumps(TASKS)}",
        "prior.train_grad_steps=2",
        "prior.eval_every_grad_steps=2",
        "prior.checkpoint_every_grad_steps=2",
    )
    store = open_store(paths.store(tmp_path, "dmc"), "a")
    identity = store.task(TASKS[0]).identity
    assert open_store(paths.store(tmp_path, "dmc")).task(TASKS[0]).identity == identity  # reading changes nothing
    tokenizer.run(cfg, progress=False)
    tokenize.run(cfg, device="cpu")
    prior.run(cfg)
    prior_ckpts = paths.prior_dir(tmp_path, "dmc") / "checkpoints"
    # Nothing changed: everything resumes or is up to date.
    assert tokenizer.run(cfg, progress=False)["checkpoint_loads"] == 1
    assert tokenize.run(cfg, device="cpu")["tasks_up_to_date"] == 2
    prior.run(cfg)
    assert not (prior_ckpts / "superseded").exists()

    # One more episode of the first task: a different training set.
    store.append_episode(TASKS[0], synthetic_frames(12, seed=999), split="train")
    assert store.task(TASKS[0]).identity != identity
    again = tokenizer.run(cfg, progress=False)
    assert again["checkpoint_loads"] == 0 and again["start_step"] == 0 and again["step"] == 3
    assert list((paths.tokenizer_dir(tmp_path, "dmc") / "checkpoints" / "superseded").iterdir())
    assert tokenize.run(cfg, device="cpu")["tasks_encoded"] == 2  # a new tokenizer: both tasks again
    prior.run(cfg)
    assert list((prior_ckpts / "superseded").iterdir())

    # The task replaced whole (as `viper import` and `viper collect` do) by the very same episodes: a new group.
    group = store.task(TASKS[1])
    staged = store.staging(TASKS[1], "importing", attrs=dict(group.attrs))
    for i in range(group.num_episodes):
        ep = group.read_episode(i)
        staged.append(ep["frames"], None, None, "test" if group.split[i] else "train")
    store.promote(TASKS[1], "importing")
    assert store.task(TASKS[1]).identity != group.identity
    assert tokenize.run(cfg, device="cpu")["tasks_encoded"] == 1  # same tokenizer, one task's store changed
    assert tokenizer.run(cfg, progress=False)["checkpoint_loads"] == 0


def test_an_edited_scoreboard_mask_retrains_the_tokenizer_and_encodes_again(tmp_path, monkeypatch, capsys):
    """Neither the tokens nor the tokenizer recorded the mask their frames passed through: after an edit of
    viper/envs/masks.py (DVC reruns both stages), the finished tokenizer resumed and every task was 'up to date',
    so the prior kept training on old-mask tokens while the reward scored new-mask frames."""
    from viper.envs import masks

    store = open_store(paths.store(tmp_path, "atari"), "a")
    for e in range(3):
        store.append_episode("atari/pong", synthetic_frames(12, seed=e), split="test" if e == 2 else "train")
    cfg = tiny_cfg(tmp_path, "tokenizer.train_grad_steps=2", "collect.suite=atari", "collect.tasks=[atari/pong]")
    tokenizer.run(cfg, progress=False)
    tokenize.run(cfg, device="cpu")
    assert tokenizer.run(cfg, progress=False)["checkpoint_loads"] == 1  # nothing changed: resumed, up to date
    assert tokenize.run(cfg, device="cpu")["tasks_up_to_date"] == 1
    monkeypatch.setitem(masks.SCORE_BOXES, "pong", ((0, 9, 0, 64),))  # a taller score band
    capsys.readouterr()
    again = tokenizer.run(cfg, progress=False)
    assert again["checkpoint_loads"] == 0 and again["start_step"] == 0
    assert "masks.atari/pong" in capsys.readouterr().out  # the stale message names what changed
    assert tokenize.run(cfg, device="cpu")["tasks_encoded"] == 1
    # Tokens alone: re-encoded under another mask even when the tokenizer is the same.
    monkeypatch.setitem(masks.SCORE_BOXES, "pong", ((0, 7, 0, 64),))
    assert tokenize.run(cfg, device="cpu")["tasks_encoded"] == 1
