"""The world model against slow, obviously-correct loops: the posterior it trains on is the one the agent acts
with, the image and continue losses are the published per-step terms, and an episode's end reaches imagination.

Batches here hold terminal steps: every other agent test's replay rows continue, so an inverted continue target
went unnoticed there."""

from __future__ import annotations

import math

import pytest
import torch

from viper.agent.agent import Agent
from viper.agent.rssm import RSSM
from viper.config import AgentConfig


def test_the_trained_posterior_is_the_acting_one():
    """``observe`` (training) takes a fast path, the embedding's share of the posterior layer computed for all
    steps at once; ``obs_step`` (acting) computes it step by step. Same seed, same states."""
    torch.manual_seed(0)
    rssm = RSSM(deter=8, stoch=3, classes=4, units=8, action_dim=2, embed_dim=5)
    embed, prev_action = torch.randn(2, 7, 5), torch.randn(2, 7, 2)
    is_first = torch.zeros(2, 7, dtype=torch.bool)
    is_first[:, 0] = is_first[1, 4] = True
    torch.manual_seed(1)
    post, _ = rssm.observe(embed, prev_action, is_first)
    torch.manual_seed(1)
    state = rssm.initial(2)
    for t in range(7):
        state = rssm.obs_step(state, prev_action[:, t], embed[:, t], is_first[:, t])
        torch.testing.assert_close(post.logits[:, t], state.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(post.stoch[:, t], state.stoch, rtol=0, atol=0)
        torch.testing.assert_close(post.deter[:, t], state.deter, rtol=1e-5, atol=1e-5)


def _batch(batch: int = 2, length: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    is_first = torch.zeros(batch, length, dtype=torch.bool)
    is_first[:, 0] = True
    is_terminal = torch.zeros(batch, length, dtype=torch.bool)
    is_terminal[0, 3] = is_terminal[1, 4] = True
    return {
        "image": torch.randint(0, 256, (batch, length, 64, 64, 3), generator=g, dtype=torch.uint8),
        "action": torch.rand(batch, length, 1, generator=g) * 2 - 1,
        "reward": torch.rand(batch, length, generator=g),
        "is_first": is_first,
        "is_terminal": is_terminal,
    }


def test_image_and_continue_losses_are_the_published_per_step_terms():
    """Per step: the summed squared error of the decoded image against pixels / 255, and the binary
    cross-entropy of the continue head against 1 - is_terminal, averaged over the batch."""
    torch.manual_seed(0)
    agent = Agent(AgentConfig(size="tiny"), 1, False, "reward", "cpu")
    batch = _batch()
    with torch.no_grad():
        _, post, metrics = agent.wm.loss(batch)
        image_terms, cont_terms = [], []
        for b in range(2):
            for t in range(5):
                feat = post.feat()[b, t][None]
                decoded = agent.wm.decoder(feat)[0].float()
                pixels = batch["image"][b, t].float() / 255.0
                image_terms.append(float(((decoded - pixels) ** 2).sum()))
                p = 1.0 / (1.0 + math.exp(-float(agent.wm.cont(feat))))
                y = 0.0 if batch["is_terminal"][b, t] else 1.0
                cont_terms.append(-(y * math.log(p) + (1.0 - y) * math.log(1.0 - p)))
    assert float(metrics["loss/image"]) == pytest.approx(sum(image_terms) / 10, rel=1e-4)
    assert float(metrics["loss/cont"]) == pytest.approx(sum(cont_terms) / 10, rel=1e-4)


def test_an_episodes_end_reaches_imagination_as_its_first_continue_flag():
    torch.manual_seed(0)
    agent = Agent(AgentConfig(size="tiny", imag_horizon=3), 1, False, "reward", "cpu")
    batch = _batch()
    with torch.no_grad():
        _, post, _ = agent.wm.loss(batch)
        *_, cont = agent.imagine_from(post, batch["is_terminal"])
    assert cont.shape == (4, 10)
    torch.testing.assert_close(cont[0], (~batch["is_terminal"]).flatten().float(), rtol=0, atol=0)
