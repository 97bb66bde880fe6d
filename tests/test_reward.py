"""VideoReward: the batched scorer against the slow per-window reference, NaN policy, input and pairing errors.

The tokenizer is the real VQ-GAN (tiny preset sizes, random weights); the prior is a small random VideoGPT on
that tokenizer's codebook. Neither needs training for these properties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from viper.config import RewardConfig, TokenizerConfig
from viper.errors import ViperError
from viper.models.prior_checkpoint import LoadedPrior
from viper.models.videogpt import PriorSpec, VideoGPT
from viper.models.vqgan import VQGAN, Tokenizer, VQGANArch, weights_hash
from viper.reward import VideoReward
from viper.reward.reference import score_per_window

TASKS = ("dmc/cartpole_balance", "dmc/cartpole_swingup")


def tiny_tokenizer(seed: int = 0, channel_mult=(1, 2, 2, 2)) -> Tokenizer:
    cfg = TokenizerConfig(base_channels=8, channel_mult=channel_mult, embed_dim=8, codebook_size=16)
    torch.manual_seed(seed)
    model = VQGAN(VQGANArch.from_config(cfg))
    return Tokenizer(model, weights_hash(model.state_dict()))


def random_prior(tokenizer: Tokenizer, seq_len: int = 4, frame_skip: int = 1, seed: int = 0) -> LoadedPrior:
    spec = PriorSpec(
        d_model=32,
        layers=2,
        heads=2,
        mlp_dim=64,
        dropout=0.1,
        seq_len=seq_len,
        grid=tokenizer.grid,
        codebook_size=tokenizer.codebook_size,
        embed_dim=int(tokenizer.codebook.shape[1]),
        num_classes=len(TASKS),
    )
    torch.manual_seed(seed)
    model = VideoGPT(spec, tokenizer.codebook)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.eval()
    return LoadedPrior(model, TASKS, tokenizer.hash, seq_len, frame_skip, step=0, path=Path("test-prior"))


def episodes(batch: int, steps: int, seed: int = 0) -> np.ndarray:
    """Smooth coloured stripes that drift over time: uint8 (B, T, 64, 64, 3) with varied tokens."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, 64)
    out = np.zeros((batch, steps, 64, 64, 3), np.uint8)
    for b in range(batch):
        freq, color = rng.uniform(2, 9, 2), rng.uniform(0.2, 1.0, 3)
        for t in range(steps):
            wave = np.sin(freq[0] * x[:, None] * (1 + 0.3 * t) + freq[1] * x[None, :] + 0.4 * t)
            out[b, t] = (127 + 127 * wave[..., None] * color).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return tiny_tokenizer()


@pytest.mark.parametrize("mode", ["joint", "conditional"])
@pytest.mark.parametrize("frame_skip", [1, 2])
def test_batched_score_matches_per_window_reference(tokenizer, mode, frame_skip):
    cfg = RewardConfig(mode=mode, windows_per_batch=3, encode_batch_frames=5, device="cpu")
    reward = VideoReward(tokenizer, random_prior(tokenizer, frame_skip=frame_skip), cfg)
    frames = episodes(2, 9)
    fast = reward.score(frames, TASKS[1])
    slow = score_per_window(reward, frames, TASKS[1])
    assert fast.dtype == np.float32 and fast.shape == (2, 9)
    first = reward.window_frames - 1
    assert reward.window_frames == 1 + 3 * frame_skip
    assert np.isnan(fast[:, :first]).all() and np.isfinite(fast[:, first:]).all()
    np.testing.assert_allclose(fast, slow, atol=1e-4, rtol=0)
    np.testing.assert_allclose(reward.score(torch.from_numpy(frames), TASKS[1]), fast, atol=1e-5, rtol=0)
    assert len(np.unique(fast[:, first:].round(3))) > 1, "rewards should differ between windows"


def test_joint_is_the_sum_of_conditionals_over_the_window(tokenizer):
    # joint r_t = sum_j log p(x_j | x_<j in the window); the conditional reward of a window that starts
    # at the same frame and ends at frame j is exactly that term (windows of every length from a T-frame prior
    # are not available through score(), so compare against the prior directly on the encoded frames).
    loaded = random_prior(tokenizer)
    joint = VideoReward(tokenizer, loaded, RewardConfig(mode="joint", device="cpu"))
    frames = episodes(1, 6, seed=3)
    tokens = tokenizer.encode(frames[0]).long()
    ids = torch.tensor([0])
    with torch.no_grad():
        terms = [loaded.model.frame_log_probs(tokens[None, 2 : 2 + j + 1], ids)[0, -1] for j in range(4)]
    assert joint.score(frames, TASKS[0])[0, 5] == pytest.approx(float(sum(terms)), abs=1e-4)
    conditional = VideoReward(tokenizer, loaded, RewardConfig(mode="conditional", device="cpu"))
    assert conditional.score(frames, TASKS[0])[0, 5] == pytest.approx(float(terms[-1]), abs=1e-4)


def test_short_episodes_are_all_nan_and_tasks_change_the_reward(tokenizer):
    reward = VideoReward(tokenizer, random_prior(tokenizer), RewardConfig(device="cpu"))
    assert np.isnan(reward.score(episodes(2, 3), TASKS[0])).all()
    backwards = episodes(1, 6)[:, ::-1]  # a negative-stride view is accepted
    np.testing.assert_allclose(reward.score(backwards, TASKS[0]), reward.score(backwards.copy(), TASKS[0]))
    frames = episodes(1, 5)
    a, b = reward.score(frames, TASKS[0])[0, -1], reward.score(frames, TASKS[1])[0, -1]
    assert np.isfinite(a) and np.isfinite(b) and a != b
    assert reward.tasks == TASKS


def test_bad_frames_tasks_and_modes_raise_clear_errors(tokenizer):
    reward = VideoReward(tokenizer, random_prior(tokenizer), RewardConfig(device="cpu"))
    good = episodes(1, 5)
    with pytest.raises(ViperError, match="dtype uint8"):
        reward.score(good.astype(np.float32), TASKS[0])
    with pytest.raises(ViperError, match=r"shape \(B, T, 64, 64, 3\)"):
        reward.score(good[0], TASKS[0])
    with pytest.raises(ViperError, match=r"shape \(B, T, 64, 64, 3\)"):
        reward.score(good[:, :, :32, :32], TASKS[0])
    with pytest.raises(ViperError, match="uint8 array"):
        reward.score(good.tolist(), TASKS[0])
    with pytest.raises(ViperError, match="not in the prior's task map.*dmc/cartpole_balance"):
        reward.score(good, "dmc/walker_walk")
    with pytest.raises(ViperError, match="reward.mode='both'"):
        VideoReward(tokenizer, random_prior(tokenizer), RewardConfig(mode="both", device="cpu"))


def test_mismatched_tokenizer_and_prior_are_refused(tokenizer):
    prior = random_prior(tokenizer)
    with pytest.raises(ViperError, match="trained on tokens of tokenizer"):
        VideoReward(tiny_tokenizer(seed=1), prior, RewardConfig(device="cpu"))
    with pytest.raises(ViperError, match="token grid"):
        VideoReward(tiny_tokenizer(channel_mult=(1, 2, 2)), prior, RewardConfig(device="cpu"))
    # Same hash claimed, different codebook vectors: refused on the codebook itself.
    other = tiny_tokenizer(seed=2)
    other.hash = tokenizer.hash
    with pytest.raises(ViperError, match="codebook differs"):
        VideoReward(other, prior, RewardConfig(device="cpu"))


def test_atari_score_area_is_masked_before_encoding(tokenizer):
    from viper.envs import atari_mask

    loaded = random_prior(tokenizer)
    pong = LoadedPrior(loaded.model, ("atari/pong", *TASKS[1:]), tokenizer.hash, 4, 1, 0, loaded.path)
    reward = VideoReward(tokenizer, pong, RewardConfig(device="cpu"))
    keep = atari_mask("atari/pong")
    assert not keep.all(), "pong has a score area to blank"
    frames = episodes(1, 5)
    scoreboard = frames.copy()
    scoreboard[:, :, ~keep] = 255 - scoreboard[:, :, ~keep]  # the score changes: the reward must not
    elsewhere = frames.copy()
    elsewhere[:, :, keep] = 255 - elsewhere[:, :, keep]
    base = reward.score(frames, "atari/pong")
    np.testing.assert_array_equal(reward.score(scoreboard, "atari/pong"), base)
    assert not np.allclose(reward.score(elsewhere, "atari/pong")[:, 3:], base[:, 3:])
    np.testing.assert_allclose(score_per_window(reward, scoreboard, "atari/pong"), base, atol=1e-4, rtol=0)
