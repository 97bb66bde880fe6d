"""VIPER inside the agent: relabel windowing and episode boundaries, the density head's target and the replayed
sequence length, each against a slow, obviously-correct reference (the two critics: test_agent_critics.py).

The reward model is the real one (``VideoReward``: the VQ-GAN at tiny sizes and a small VideoGPT, random
weights): the properties tested here hold for any weights, and a random prior gives every window its own value,
so a step scored with the wrong window cannot pass.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from viper import config as C
from viper import paths
from viper.agent.agent import Agent
from viper.agent.dists import TwoHot
from viper.agent.replay import Replay
from viper.agent.rewards import Inserter, TaskReward
from viper.agent.run_spec import replay_spec, sequence_length
from viper.agent.viper_reward import ViperReward, check_action_repeat
from viper.config import AgentConfig, RewardConfig, TokenizerConfig
from viper.data.store import open_store
from viper.errors import ViperError
from viper.models.prior_checkpoint import LoadedPrior
from viper.models.videogpt import PriorSpec, VideoGPT
from viper.models.vqgan import VQGAN, Tokenizer, VQGANArch, weights_hash
from viper.reward import VideoReward

TASK = "dmc/cartpole_balance"


def reward_model(seq_len: int, frame_skip: int) -> VideoReward:
    cfg = TokenizerConfig(base_channels=8, channel_mult=(1, 2, 2, 2), embed_dim=8, codebook_size=16)
    torch.manual_seed(0)
    vqgan = VQGAN(VQGANArch.from_config(cfg))
    tokenizer = Tokenizer(vqgan, weights_hash(vqgan.state_dict()))
    spec = PriorSpec(32, 1, 2, 64, 0.0, seq_len, tokenizer.grid, 16, 8, num_classes=1)
    prior = VideoGPT(spec, tokenizer.codebook)
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_(0.0, 0.2)
    loaded = LoadedPrior(prior.eval(), (TASK,), tokenizer.hash, seq_len, frame_skip, 0, Path("test-prior"))
    return VideoReward(tokenizer, loaded, RewardConfig(device="cpu", windows_per_batch=256))


def frames(steps: int, seed: int) -> np.ndarray:
    """Drifting coloured stripes uint8 (T, 64, 64, 3): every frame differs, so every window does."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, 64)
    freq, color = rng.uniform(2, 9, 2), rng.uniform(0.2, 1.0, 3)
    out = np.zeros((steps, 64, 64, 3), np.uint8)
    for t in range(steps):
        wave = np.sin(freq[0] * x[:, None] * (1 + 0.2 * t) + freq[1] * x[None, :] + 0.5 * t)
        out[t] = (127 + 127 * wave[..., None] * color).astype(np.uint8)
    return out


def stream_of(lengths: list[int], seed: int) -> list[dict]:
    """Back-to-back episodes of one env stream as step rows (is_first opens, is_last closes an episode)."""
    rows = []
    for e, length in enumerate(lengths):
        video = frames(length, seed * 100 + e)
        for t in range(length):
            rows.append(
                {
                    "image": video[t],
                    "action": np.full(1, t, np.float32),
                    "reward": np.float32(e),
                    "is_first": t == 0,
                    "is_last": t == length - 1,
                    "is_terminal": False,
                    "episode": e,
                    "t": t,
                }
            )
    return rows


def reference_inserts(rows: list[dict], model: VideoReward) -> list[tuple[int, int, float, bool]]:
    """Slow reference: for every step t >= K of every episode, in order, the reward of the one window ending at t
    scored on its own; the first inserted step of each episode carries is_first. K = seq_len * frame_skip - 1 as
    released (>= window - 1: with frame_skip > 1 the first scoreable steps stay context)."""
    window, context = model.window_frames, model.seq_len * model.frame_skip - 1
    out = []
    episodes = sorted({r["episode"] for r in rows})
    for e in episodes:
        video = np.stack([r["image"] for r in rows if r["episode"] == e])
        for t in range(context, len(video)):
            value = model.score(video[None, t - window + 1 : t + 1], TASK)[0, -1]
            out.append((e, t, float(value), t == context))
    return out


@pytest.fixture(scope="module", params=[(4, 1), (3, 2)], ids=["window4", "window5-skip2"])
def model(request) -> VideoReward:
    return reward_model(*request.param)


def fill(model: VideoReward, streams: list[list[dict]], chunk_steps: int) -> tuple[Replay, ViperReward]:
    source = ViperReward(model, TASK, chunk_steps)
    spec = replay_spec((64, 64, 3), 1, source.name)
    replay = Replay(10_000, len(streams), spec, seed=0)
    inserter = Inserter(replay, source, len(streams))
    keys = ("image", "action", "reward", "is_first", "is_last", "is_terminal")
    assert len({len(s) for s in streams}) == 1, "streams step together"
    for i in range(len(streams[0])):
        inserter.add({k: np.stack([np.asarray(s[i][k]) for s in streams]) for k in keys})
    return replay, source


def test_relabel_inserts_each_step_with_its_own_window_and_skips_episode_starts(model):
    # Episodes shorter than the context, equal to a chunk, spanning several chunks, and ending mid-chunk.
    lengths = [[23, 3, 8, 30], [9, 40, 2, 13]]
    streams = [stream_of(ls, seed) for seed, ls in enumerate(lengths)]
    assert len(streams[0]) == len(streams[1])
    replay, source = fill(model, streams, chunk_steps=8)
    assert source.context_steps == model.seq_len * model.frame_skip - 1  # released: 15 for (16,1), (8,2), (4,4)
    for stream, rows in enumerate(streams):
        expected = reference_inserts(rows, model)
        count = int(replay.count[stream])
        assert count == len(expected), f"stream {stream}: {count} inserted, {len(expected)} expected"
        data = {k: v[stream, :count] for k, v in replay.data.items()}
        # Which step: the inserted actions hold each step's index t; the task reward holds its episode.
        assert data["action"][:, 0].tolist() == [t for _, t, _, _ in expected]
        assert data["reward"].tolist() == [e for e, _, _, _ in expected]
        assert data["is_first"].tolist() == [first for *_, first in expected]
        np.testing.assert_allclose(data["density"], [v for _, _, v, _ in expected], rtol=1e-5, atol=1e-3)
        # An episode's end flag survives the relabelling (every episode longer than K ends in replay).
        assert data["is_last"].sum() == sum(1 for ln in lengths[stream] if ln > source.context_steps)


def test_a_checkpoint_inserts_the_steps_waiting_for_their_chunk_with_the_same_rewards(model):
    """A resumed run restarts its envs, so steps still waiting for their relabel chunk at a checkpoint were never
    inserted (up to chunk - K per env and resume). ``flush_partial`` inserts them; the rewards and the steps
    after it are those of an uninterrupted chunking."""
    rows = stream_of([60], seed=3)
    source = ViperReward(model, TASK, 16)
    replay = Replay(10_000, 1, replay_spec((64, 64, 3), 1, source.name), seed=0)
    inserter = Inserter(replay, source, 1)
    keys = ("image", "action", "reward", "is_first", "is_last", "is_terminal")
    for row in rows[:40]:
        inserter.add({k: np.asarray(row[k])[None] for k in keys})
    before = int(replay.count[0])
    inserter.flush_partial()  # the checkpoint at step 40
    assert before < 40 - source.context_steps == int(replay.count[0])
    for row in rows[40:]:
        inserter.add({k: np.asarray(row[k])[None] for k in keys})
    expected = reference_inserts(rows, model)
    count = int(replay.count[0])
    assert count == len(expected) and replay.data["action"][0, :count, 0].tolist() == [t for _, t, *_ in expected]
    np.testing.assert_allclose(replay.data["density"][0, :count], [v for *_, v, _ in expected], rtol=1e-5, atol=1e-3)


def test_chunked_rewards_equal_the_whole_episode_score(model):
    rows = stream_of([37], seed=7)
    replay, source = fill(model, [rows], chunk_steps=11)
    full = model.score(np.stack([r["image"] for r in rows])[None], TASK)[0]
    k, window = source.context_steps, model.window_frames
    assert np.isnan(full[: window - 1]).all() and np.isfinite(full[window - 1 :]).all()
    np.testing.assert_allclose(replay.data["density"][0, : replay.count[0]], full[k:], rtol=1e-5, atol=1e-3)


def test_evaluation_returns_sum_the_steps_training_rewards(model):
    """The evaluation VIPER return sums exactly the steps replay gets rewards for (context on, as released), and
    a run's fingerprint records the context where it differs from the old window - 1 rule."""
    rows = stream_of([30], seed=5)
    frames = np.stack([r["image"] for r in rows])
    source = ViperReward(model, TASK, 11)
    agent_view = source.score_episode(frames)
    full = model.score(frames[None], TASK)[0]
    k = source.context_steps
    assert np.isnan(agent_view[:k]).all() and np.array_equal(agent_view[k:], full[k:])
    replay, _ = fill(model, [rows], chunk_steps=11)
    np.testing.assert_allclose(replay.data["density"][0, : replay.count[0]], agent_view[k:], rtol=1e-5, atol=1e-3)
    assert ("context_steps" in source.fingerprint()) == (k != model.window_frames - 1)


def test_density_head_target_is_the_reward_models_score(model):
    rows = stream_of([40], seed=3)
    replay, source = fill(model, [rows], chunk_steps=16)
    count = int(replay.count[0])
    full = model.score(np.stack([r["image"] for r in rows])[None], TASK)[0, source.context_steps :]
    torch.manual_seed(0)
    agent = Agent(AgentConfig(size="tiny", imag_horizon=3), 1, False, source.name, "cpu")
    # The task reward head learns from stop-gradient features; the density head shapes the representation.
    assert agent.wm.head_grad == {"reward": False, "density": True}
    batch = agent.to_tensors({k: v[:1, :count] for k, v in replay.data.items()})
    _, post, metrics = agent.wm.loss(batch)
    with torch.no_grad():
        logits = agent.wm.heads["density"](post.feat())
        expected = -TwoHot(logits).log_prob(torch.as_tensor(full[None], dtype=torch.float32)).mean()
    assert float(metrics["loss/density"]) == pytest.approx(float(expected), rel=1e-5)


def test_only_the_density_head_shapes_the_representation_and_the_loss_weights_are_published(model):
    """The task reward head learns from stop-gradient features (only logged under reward viper); the density
    head's loss reaches the encoder. And the total is the published weighting of the per-term losses."""
    from viper.agent.world_model import LossScales

    rows = stream_of([40], seed=3)
    replay, source = fill(model, [rows], chunk_steps=16)
    count = int(replay.count[0])
    torch.manual_seed(0)
    agent = Agent(AgentConfig(size="tiny", imag_horizon=3), 1, False, source.name, "cpu")
    batch = agent.to_tensors({k: v[:1, :count] for k, v in replay.data.items()})
    total, _, metrics = agent.wm.loss(batch)
    weights = {"image": 1.0, "reward": 1.0, "density": 1.0, "cont": 1.0, "dyn": 0.5, "rep": 0.1}
    by_hand = sum(weights[k] * float(metrics[f"loss/{k}"]) for k in weights)
    assert set(metrics) >= {f"loss/{k}" for k in weights} and float(total.detach()) == pytest.approx(by_hand, rel=1e-5)
    encoder = list(agent.wm.encoder.parameters())
    for head in ("reward", "density"):  # one head's loss alone: every other scale 0, the other head's target 0
        agent.wm.scales = LossScales(image=0.0, cont=0.0, dyn=0.0, rep=0.0, reward=1.0)
        other = "density" if head == "reward" else "reward"
        alone = {**batch, other: torch.zeros_like(batch[other])}
        with torch.no_grad():  # the other head's loss constant in the features; this one's output layer not 0
            agent.wm.heads[other].out.linear.weight.zero_()
            agent.wm.heads[head].out.linear.weight.normal_(0.0, 0.1)
        loss, _, _ = agent.wm.loss(alone)
        grads = torch.autograd.grad(loss, encoder, allow_unused=True)
        reached = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert reached == (head == "density"), head


def test_reward_fingerprint_tells_raw_weights_from_ema():
    """state.pt holds both weight sets, so its hash alone would let a resumed run mix EMA- and raw-scored replay."""
    ema = reward_model(4, 1)
    raw = reward_model(4, 1)
    raw.cfg = dataclasses.replace(raw.cfg, weights="raw")
    ema_fp, raw_fp = ViperReward(ema, TASK, 16).fingerprint(), ViperReward(raw, TASK, 16).fingerprint()
    assert "weights" not in ema_fp  # the published default leaves existing checkpoints' fingerprints as they were
    assert raw_fp == {**ema_fp, "weights": "raw"}


@pytest.mark.parametrize("recorded", [2, None], ids=["collected", "imported"])
def test_agent_action_repeat_must_match_the_expert_videos(tmp_path, recorded):
    store = paths.store(tmp_path, "dmc")
    frames_ = frames(6, 0)
    open_store(store, "a").append_episode(
        TASK, frames_, np.zeros((6, 1), np.float32), np.zeros(6, np.float32), attrs={"action_repeat": recorded}
    )
    same = C.load(preset="tiny", overrides=[f"data_dir={tmp_path}", "agent.action_repeat=2"], params_path=None)
    check_action_repeat(same, TASK)
    other = C.load(preset="tiny", overrides=[f"data_dir={tmp_path}", "agent.action_repeat=4"], params_path=None)
    if recorded is None:  # imported videos record no repeat: nothing to compare
        check_action_repeat(other, TASK)
        return
    with pytest.raises(
        ViperError,
        match=r"dmc\.zarr: the expert videos of dmc/cartpole_balance were recorded at "
        r"action repeat 2, but agent.action_repeat=4.*-S agent.action_repeat=2",
    ):
        check_action_repeat(other, TASK)
    check_action_repeat(C.load(preset="tiny", overrides=[f"data_dir={tmp_path / 'none'}"], params_path=None), TASK)


def test_viper_agents_replay_the_released_relabelling_replays_sequence_length():
    source = ViperReward(reward_model(16, 1), TASK, 64)  # the published 16-step window: 15 context steps
    assert sequence_length(AgentConfig(), source) == 49  # the released items: 64 - 16 + 1 scored steps
    assert sequence_length(AgentConfig(viper_batch_length=64), source) == 64
    assert sequence_length(AgentConfig(), TaskReward()) == 64  # the oracle replays batch_length
    assert sequence_length(AgentConfig(batch_length=16), ViperReward(reward_model(4, 1), TASK, 16)) == 13
    with pytest.raises(ViperError, match="viper_batch_length=-1"):
        sequence_length(AgentConfig(viper_batch_length=-1), source)
    for pair in ((8, 2), (4, 4)):  # every released pair keeps 15 context steps, as the released replay does
        assert sequence_length(AgentConfig(), ViperReward(reward_model(*pair), TASK, 64)) == 49
    # A chunk no longer than the context leaves one-step sequences: refused (it used to end in a NaN "diverged").
    short = ViperReward(source.model, TASK, 16)
    with pytest.raises(ViperError, match=r"sequences of 1 step.*raise agent.batch_length above 16"):
        sequence_length(AgentConfig(batch_length=16), short)
    with pytest.raises(ViperError, match="viper_batch_length >= 2"):
        sequence_length(AgentConfig(viper_batch_length=1), source)
    assert sequence_length(AgentConfig(batch_length=16, viper_batch_length=32), short) == 32
