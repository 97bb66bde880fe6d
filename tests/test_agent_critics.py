"""Two critics in the agent (density and Plan2Explore disagreement): advantage mixing and both critics' losses
against a hand computation, beta = 0, and the disagreement reward against a loop over ensemble members."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from viper.agent.actor_critic import ACSettings, ActorCritic
from viper.agent.agent import Agent, critic_scales
from viper.agent.dists import TwoHot
from viper.agent.exploration import Disagreement
from viper.config import AgentConfig
from viper.errors import ViperError


def _lambda_return_loop(reward, value, disc, lam):
    """Slow reference of the 2023 lambda-return recursion, one scalar at a time."""
    horizon, n = reward.shape
    out = np.zeros((horizon, n))
    for i in range(n):
        nxt = value[horizon, i]
        for t in reversed(range(horizon)):
            nxt = reward[t, i] + disc[t, i] * ((1 - lam) * value[t + 1, i] + lam * nxt)
            out[t, i] = nxt
    return out


def _actor_critic(scales: dict[str, float], seed: int = 0, discrete: bool = False, entropy: float = 0.0):
    torch.manual_seed(seed)
    ac = ActorCritic(6, 2, discrete, 1, 16, scales, ACSettings(actor_entropy=entropy))
    with torch.no_grad():
        for critic in ac.critics.values():
            critic.out.linear.weight.normal_(0.0, 0.5)  # non-zero values, so baselines matter
    return ac


def _imagined(seed: int = 0, horizon: int = 5, n: int = 40):
    gen = torch.Generator().manual_seed(seed)
    feat = torch.randn(horizon + 1, n, 6, generator=gen)
    cont = (torch.rand(horizon + 1, n, generator=gen) > 0.1).float()
    cont[0] = 1.0
    actions = torch.rand(horizon, n, 2, generator=gen) * 2 - 1
    return feat, actions, cont


@pytest.mark.parametrize("discrete", [False, True], ids=["backprop", "reinforce"])
def test_advantages_of_two_critics_are_mixed_as_published(discrete):
    """Advantages, actor loss (backprop through the dynamics, or REINFORCE with the entropy bonus) and the two
    critics' losses (two-hot regression to the lambda-return plus the slow-critic regulariser) by hand."""
    scales = {"density": 2.0, "disag": 0.5}
    ac = _actor_critic(scales, discrete=discrete, entropy=3e-4 if discrete else 0.0)
    feat, actions, cont = _imagined()
    if discrete:  # one-hot actions of the discrete (Atari) actor
        actions = torch.nn.functional.one_hot(torch.randint(0, 2, (5, 40), generator=torch.Generator()), 2).float()
    gen = torch.Generator().manual_seed(1)
    rewards = {"density": -300 + 80 * torch.randn(5, 40, generator=gen), "disag": torch.rand(5, 40, generator=gen)}
    # Normalisers mid-run: EMA percentiles away from zero (density spans hundreds of nats, disag about 1).
    ac.retnorms["density"].low.fill_(-900.0), ac.retnorms["density"].high.fill_(-200.0)
    ac.retnorms["disag"].low.fill_(0.2), ac.retnorms["disag"].high.fill_(0.7)
    lows = {k: float(ac.retnorms[k].low) for k in scales}
    highs = {k: float(ac.retnorms[k].high) for k in scales}
    s = ac.settings
    with torch.no_grad():
        values = {k: TwoHot(ac.critics[k](feat)).mean().numpy().astype(np.float64) for k in scales}
        slow = {k: TwoHot(ac.slow_critics[k](feat[:-1])).mean() for k in scales}
        actor_out = ac.actor(feat[:-1])
    actor_loss, critic_loss, metrics = ac.losses(feat, actions, actor_out, rewards, cont)

    # Hand computation, in float64 with NumPy.
    c = cont.numpy().astype(np.float64)
    disc = s.discount * c[1:]
    weight = np.cumprod(s.discount * c, 0) / s.discount
    advantage = np.zeros((5, 40))
    expected_critic = 0.0
    for k, w in scales.items():
        ret = _lambda_return_loop(rewards[k].numpy().astype(np.float64), values[k], disc, s.return_lambda)
        with torch.no_grad():
            dist = TwoHot(ac.critics[k](feat[:-1]))
            per_state = -dist.log_prob(torch.as_tensor(ret, dtype=torch.float32)) - s.slowreg * dist.log_prob(slow[k])
        expected_critic += float(np.mean(per_state.numpy().astype(np.float64) * weight[:-1]))
        q5, q95 = np.percentile(ret, [5, 95])
        low = s.retnorm_decay * lows[k] + (1 - s.retnorm_decay) * q5
        high = s.retnorm_decay * highs[k] + (1 - s.retnorm_decay) * q95
        scale = max(1.0, high - low)
        assert float(metrics[f"{k}/return_scale"]) == pytest.approx(scale, rel=1e-4)
        advantage += w / sum(scales.values()) * (ret - values[k][:-1]) / scale
    if discrete:  # REINFORCE: -log pi(a) x sg(advantage), minus the entropy bonus
        with torch.no_grad():
            dist = ac.dist(actor_out)
            log_pi = dist.log_prob(actions).numpy().astype(np.float64)
            entropy = dist.entropy().numpy().astype(np.float64)
        expected = np.mean((-log_pi * advantage - s.actor_entropy * entropy) * weight[:-1])
    else:
        expected = np.mean(-advantage * weight[:-1])
    assert float(metrics["advantage"]) == pytest.approx(advantage.mean(), rel=1e-4, abs=1e-6)
    assert float(actor_loss.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert float(critic_loss.detach()) == pytest.approx(expected_critic, rel=1e-4)
    # The slow critics then move 2% of the way to the critics (published fraction 0.02, every update).
    before = {k: [p.detach().clone() for p in ac.slow_critics[k].parameters()] for k in scales}
    ac.update_slow()
    for k in scales:
        for old, new, fast in zip(before[k], ac.slow_critics[k].parameters(), ac.critics[k].parameters(), strict=True):
            torch.testing.assert_close(new, old + 0.02 * (fast - old))


def test_beta_zero_removes_the_disagreement_critics_influence():
    feat, actions, cont = _imagined(seed=2)
    density = torch.randn(5, 40)
    losses = []
    for disag_scale in (1.0, 1.0, 0.0, 0.0):
        ac = _actor_critic({"density": 1.0, "disag": disag_scale}, seed=3)
        # Two very different disagreement rewards per setting: they matter at beta 1, never at beta 0.
        disag = torch.full((5, 40), 50.0) if len(losses) % 2 else torch.rand(5, 40, generator=torch.Generator())
        actor_loss, _, _ = ac.losses(feat, actions, ac.actor(feat[:-1]), {"density": density, "disag": disag}, cont)
        grads = torch.autograd.grad(actor_loss, list(ac.actor.parameters()), allow_unused=True)
        losses.append((float(actor_loss.detach()), grads))
    assert losses[0][0] != pytest.approx(losses[1][0])
    assert losses[2][0] == losses[3][0]
    for a, b in zip(losses[2][1], losses[3][1], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    # The agent builds neither the disagreement critic nor its ensemble at beta 0 (the published behaviour).
    assert critic_scales(AgentConfig(expl_weight=0.0), "density") == {"density": 1.0}
    assert critic_scales(AgentConfig(), "density") == {"density": 1.0, "disag": 1.0}
    assert critic_scales(AgentConfig(), "reward") == {"reward": 1.0}
    agent = Agent(AgentConfig(size="tiny", expl_weight=0.0), 1, False, "density", "cpu")
    assert list(agent.ac.critics) == ["density"] and agent.expl is None
    with pytest.raises(ViperError, match="both 0"):
        critic_scales(AgentConfig(expl_weight=0.0, density_weight=0.0), "density")
    with pytest.raises(ViperError, match=r"agent.disag_models=1: .* >= 2 members"):  # a std of one member is 0
        Disagreement(feat_dim=6, action_dim=2, stoch_dim=5, layers=1, units=8, members=1)


def test_disagreement_reward_gradient_is_finite_where_members_agree_exactly():
    """Tied members (all heads equal, as bf16 rounding makes them in some dims) have std 0: the actor's gradient
    through the reward must be 0 there, not NaN (a plain sqrt(var) gave NaN and killed GPU runs)."""
    torch.manual_seed(0)
    disag = Disagreement(feat_dim=6, action_dim=2, stoch_dim=5, layers=1, units=8, members=4)  # exact mean
    for head in disag.heads[1:]:
        head.load_state_dict(disag.heads[0].state_dict())
    feat, action = torch.randn(4, 6, requires_grad=True), torch.rand(4, 2, requires_grad=True)
    reward = disag.reward(feat, action)
    assert torch.equal(reward, torch.zeros(4))
    grads = torch.autograd.grad(reward.sum(), [feat, action])
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    # One head apart: a finite gradient equal to torch.std's, from the dims where they differ.
    with torch.no_grad():
        disag.heads[3].out.linear.weight.add_(0.1 * torch.randn_like(disag.heads[2].out.linear.weight))
    got = torch.autograd.grad(disag.reward(feat, action).sum(), feat)[0]
    reference = torch.stack([h(torch.cat([feat, action], -1)) for h in disag.heads]).std(0, unbiased=False)
    # float32 with the small std of a 0.1 perturbation: the two summation orders agree to ~1e-4.
    torch.testing.assert_close(got, torch.autograd.grad(reference.mean(-1).sum(), feat)[0], rtol=1e-3, atol=1e-4)
    assert torch.isfinite(got).all() and got.abs().sum() > 0


def test_disagreement_reward_and_loss_match_a_loop_over_members():
    torch.manual_seed(0)
    disag = Disagreement(feat_dim=10, action_dim=2, stoch_dim=12, layers=1, units=16, members=4)
    feat, action = torch.randn(3, 7, 10), torch.rand(3, 7, 2)
    stoch = torch.nn.functional.one_hot(torch.randint(0, 4, (3, 7, 3)), 4).float()
    with torch.no_grad():
        preds = [head(torch.cat([feat, action], -1)).numpy().astype(np.float64) for head in disag.heads]
        reward = disag.reward(feat, action).numpy()
        loss = float(disag.loss(feat, action, stoch))
    stacked = np.stack(preds)
    mean = stacked.mean(0)
    # Population std over members per dim, then the mean over the 12 predicted dims.
    expected = np.sqrt(((stacked - mean) ** 2).mean(0)).mean(-1)
    np.testing.assert_allclose(reward, expected, rtol=1e-5)
    # The actor's dynamics gradient flows through the reward: it must equal torch.std's over stacked members.
    disag64, feat64 = disag.double(), feat.double().requires_grad_()
    inputs = torch.cat([feat64, action.double()], -1)
    got = torch.autograd.grad(disag64.reward(feat64, action.double()).sum(), feat64)[0]
    stacked_std = torch.stack([head(inputs) for head in disag64.heads]).std(0, unbiased=False).mean(-1)
    # reward() computes in float32 (it casts bf16 predictions up): float32 tolerances.
    torch.testing.assert_close(got, torch.autograd.grad(stacked_std.sum(), feat64)[0], rtol=1e-5, atol=1e-7)
    disag.float()
    target = stoch.flatten(-2).numpy()
    expected_loss = sum(((p[:, :-1] - target[:, 1:]) ** 2).sum(-1).mean() for p in preds)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
