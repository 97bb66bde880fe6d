"""Actor-critic in imagination (DreamerV3, 2023 release): lambda-returns, percentile return normalisation,
two-hot critics with a slow-critic regulariser, and an actor trained by dynamics backprop (continuous) or
REINFORCE (discrete).

One critic and one return normaliser per reward (``critics`` maps a reward name to its advantage scale), so
VIPER's density and Plan2Explore rewards (issue 7) are extra entries; the advantages are mixed as published:
``sum_k scale_k * (ret_k - v_k) / max(1, P95_k - P5_k) / sum_k scale_k``.

Time-major shapes: H imagination horizon, N = B*T start states, A action dims, F feature dims.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from viper.agent.dists import NormalActor, OneHotDist, TwoHot, unimix_logits
from viper.agent.nets import MLP
from viper.agent.world_model import BINS


@dataclass(frozen=True)
class ACSettings:
    """Published actor-critic settings (2023 configs.yaml); the configurable ones come from AgentConfig."""

    discount: float = 1.0 - 1.0 / 333.0
    return_lambda: float = 0.95
    actor_entropy: float = 3e-4
    slow_critic_fraction: float = 0.02
    slowreg: float = 1.0
    retnorm_decay: float = 0.99
    retnorm_max: float = 1.0
    retnorm_low: float = 5.0
    retnorm_high: float = 95.0
    min_std: float = 0.1
    max_std: float = 1.0
    unimix: float = 0.01


def lambda_returns(reward: Tensor, value: Tensor, disc: Tensor, lam: float) -> Tensor:
    """TD(lambda) returns, the 2023 recursion: R_H = v_H; R_t = r_{t+1} + d_{t+1}((1-lam) v_{t+1} + lam R_{t+1}).

    reward (H, N) rewards on arriving at states 1..H; value (H+1, N) at states 0..H; disc (H, N) discount
    times continue flag of states 1..H. Returns (H, N) for states 0..H-1.
    """
    horizon = reward.shape[0]
    assert value.shape[0] == horizon + 1 and disc.shape[0] == horizon, "reward/disc (H,N), value (H+1,N)"
    interm = reward + disc * value[1:] * (1.0 - lam)
    out = [value[-1]]
    for t in reversed(range(horizon)):
        out.append(interm[t] + disc[t] * lam * out[-1])
    return torch.stack(out[::-1][:-1], 0)


class PercentileNorm(nn.Module):
    """EMA of the 5th and 95th return percentiles; scale = max(1/max, high - low) (2023 ``perc_ema``).

    ``update(x)`` then ``stats() -> (offset, scale)``; the state (two buffers) is checkpointed with the agent.
    """

    def __init__(self, decay: float = 0.99, max_inv: float = 1.0, low: float = 5.0, high: float = 95.0):
        super().__init__()
        self.decay, self.max_inv, self.q_low, self.q_high = decay, max_inv, low / 100.0, high / 100.0
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        # Created once: a fresh tensor per update would be a blocking host-to-device copy on CUDA.
        self.register_buffer("levels", torch.tensor([self.q_low, self.q_high]), persistent=False)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        q = torch.quantile(x.detach().float().flatten(), self.levels)
        self.low.mul_(self.decay).add_((1 - self.decay) * q[0])
        self.high.mul_(self.decay).add_((1 - self.decay) * q[1])

    def stats(self) -> tuple[Tensor, Tensor]:
        return self.low.clone(), torch.clamp(self.high - self.low, min=1.0 / self.max_inv)


class ActorCritic(nn.Module):
    """Actor, one critic + slow critic + return normaliser per reward name, and their losses."""

    def __init__(
        self,
        feat_dim: int,
        action_dim: int,
        discrete: bool,
        layers: int,
        units: int,
        critics: dict[str, float],
        settings: ACSettings = ACSettings(),
    ) -> None:
        super().__init__()
        self.discrete, self.action_dim, self.settings = discrete, action_dim, settings
        out = action_dim if discrete else 2 * action_dim
        self.actor = MLP(feat_dim, out, layers, units, 1.0)
        # outscale 0: values start at exactly 0 (published ``critic.outscale``).
        self.critics = nn.ModuleDict({k: MLP(feat_dim, BINS, layers, units, 0.0) for k in critics})
        self.slow_critics = copy.deepcopy(self.critics).requires_grad_(False)
        s = settings
        self.retnorms = nn.ModuleDict(
            {k: PercentileNorm(s.retnorm_decay, s.retnorm_max, s.retnorm_low, s.retnorm_high) for k in critics}
        )
        self.scales = dict(critics)

    def dist(self, out: Tensor) -> NormalActor | OneHotDist:
        """Action distribution from the actor's raw output (..., A or 2A)."""
        if self.discrete:
            return OneHotDist(unimix_logits(out.float(), self.settings.unimix))
        mean, std = out.float().chunk(2, -1)
        return NormalActor(mean, std, self.settings.min_std, self.settings.max_std)

    def policy(self, feat: Tensor, sample: bool = True) -> tuple[Tensor, Tensor]:
        """(action (..., A), raw actor output) for features (..., F); discrete actions are one-hot."""
        out = self.actor(feat)
        dist = self.dist(out)
        return (dist.sample() if sample else dist.mode()), out

    @torch.no_grad()
    def update_slow(self) -> None:
        """Slow critic <- (1 - f) slow + f critic, every update (published period 1, fraction 0.02)."""
        for name, critic in self.critics.items():
            for slow, fast in zip(self.slow_critics[name].parameters(), critic.parameters(), strict=True):
                slow.lerp_(fast, self.settings.slow_critic_fraction)

    def advantages(
        self, traj_feat: Tensor, rewards: dict[str, Tensor], cont: Tensor, update_norms: bool = True
    ) -> tuple[dict[str, dict[str, Tensor]], Tensor]:
        """Each critic's part of the mixed advantage, and the states' weights.

        Per reward name: ``logits`` (H+1, N, BINS) of the critic, ``value`` (H+1, N), ``ret`` (H, N) the
        lambda-return, ``scale`` the return normaliser's range and ``part`` (H, N) its share of the advantage,
        ``(ret - value) / scale * w / sum(w)``. ``update_norms`` first moves the normalisers' EMAs with these
        returns (training does; a diagnostic reading a checkpoint need not). ``weight`` (H, N): the discounted
        probability that the imagined episode is still running at each state. Shapes as in ``losses``.
        """
        s = self.settings
        weight = (torch.cumprod(s.discount * cont, 0) / s.discount).detach()[:-1]
        disc = s.discount * cont[1:]
        total_scale = sum(self.scales.values())
        parts: dict[str, dict[str, Tensor]] = {}
        for name, critic in self.critics.items():
            logits = critic(traj_feat)
            value = TwoHot(logits).mean()
            ret = lambda_returns(rewards[name], value, disc, s.return_lambda)
            if update_norms:
                self.retnorms[name].update(ret)
            _, scale = self.retnorms[name].stats()
            # The percentile offset cancels in ret - value; only the scale matters for the advantage.
            part = (ret - value[:-1]) / scale * (self.scales[name] / total_scale)
            parts[name] = {"logits": logits, "value": value, "ret": ret, "scale": scale, "part": part}
        return parts, weight

    def actor_loss(
        self, advantage: Tensor, actions: Tensor, actor_out: Tensor, weight: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(loss, entropy (H, N)). Discrete: REINFORCE with the advantage as a constant; continuous: backprop
        through the dynamics (the advantage carries the gradient). Minus the entropy bonus; weighted mean."""
        dist = self.dist(actor_out)
        entropy = dist.entropy()
        reinforce = -dist.log_prob(actions.detach()) * advantage.detach() if self.discrete else None
        loss = reinforce if reinforce is not None else -advantage
        return ((loss - self.settings.actor_entropy * entropy) * weight).mean(), entropy

    def losses(
        self, traj_feat: Tensor, actions: Tensor, actor_out: Tensor, rewards: dict[str, Tensor], cont: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Actor and critic losses of one imagined batch.

        traj_feat (H+1, N, F) features with gradients through the dynamics; actions (H, N, A) taken at
        states 0..H-1; actor_out (H, N, *) the actor's raw outputs there; rewards name -> (H, N) predicted
        rewards on arriving at states 1..H; cont (H+1, N) continue flags (index 0: 1 - is_terminal of the
        start). Returns (actor loss, critic loss, metrics).
        """
        s = self.settings
        parts, weight = self.advantages(traj_feat, rewards, cont)
        advantage = torch.zeros_like(cont[:-1])
        critic_loss = torch.zeros((), device=traj_feat.device)
        metrics: dict[str, Tensor] = {}
        for name, part in parts.items():
            advantage = advantage + part["part"]
            # Critic: two-hot regression to sg(lambda-return) plus the slow critic's mean (regulariser).
            with torch.no_grad():
                slow_value = TwoHot(self.slow_critics[name](traj_feat[:-1].detach())).mean()
            dist = TwoHot(part["logits"][:-1])
            loss = -dist.log_prob(part["ret"].detach()) - s.slowreg * dist.log_prob(slow_value)
            critic_loss = critic_loss + (loss * weight).mean()
            metrics[f"{name}/return"] = part["ret"].detach().mean()
            metrics[f"{name}/value"] = part["value"].detach().mean()
            metrics[f"{name}/imag_reward"] = rewards[name].detach().mean()
            metrics[f"{name}/return_scale"] = part["scale"]
            metrics[f"loss/critic_{name}"] = loss.detach().mean()
        actor_loss, entropy = self.actor_loss(advantage, actions, actor_out, weight)
        metrics["loss/actor"] = actor_loss.detach()
        metrics["actor_entropy"] = entropy.detach().mean()
        metrics["advantage"] = advantage.detach().mean()
        return actor_loss, critic_loss, metrics


def imagined_cont(cont_prob: Tensor, first_cont: Tensor) -> Tensor:
    """Continue flags of a trajectory (H+1, N): the start's known flag, then the continue head's mode."""
    return torch.cat([first_cont[None], (cont_prob[1:] > 0.5).to(cont_prob.dtype)], 0)
