"""DreamerV3 world model: CNN encoder, RSSM, image decoder, reward heads and continue head, and its loss.

Loss per step (mean over B x T), scales as published: image 1 (squared error summed over pixels),
each reward head 1 (symlog two-hot, 255 bins), continue 1 (Bernoulli), dyn 0.5 and rep 0.1 (KL balancing
with 1 free nat). Reward heads are named after the replay key they learn (``reward`` is the environment's
task reward; issue 7 adds ``density``). A head with ``grad=False`` reads stop-gradient features: it learns
the reward but does not shape the representation (VIPER trains the task reward head this way and only logs
it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from viper.agent.dists import TwoHot
from viper.agent.nets import MLP, ConvDecoder, ConvEncoder
from viper.agent.rssm import RSSM, State


@dataclass(frozen=True)
class ModelSize:
    """One row of the size table: GRU width, RSSM hidden units, CNN depth, MLP layers/units, latents."""

    deter: int
    units: int
    cnn_depth: int
    layers: int
    stoch: int = 32
    classes: int = 32


SIZES: dict[str, ModelSize] = {
    # ``tiny`` is not published: a CPU-test size that runs the same code (CI's learning and resume tests).
    "tiny": ModelSize(deter=128, units=128, cnn_depth=8, layers=1, stoch=16, classes=16),
    "XS": ModelSize(deter=256, units=256, cnn_depth=24, layers=1),
    "S": ModelSize(deter=512, units=512, cnn_depth=32, layers=2),
    "M": ModelSize(deter=1024, units=640, cnn_depth=48, layers=3),
    "L": ModelSize(deter=2048, units=768, cnn_depth=64, layers=4),
    "XL": ModelSize(deter=4096, units=1024, cnn_depth=96, layers=5),
}


@dataclass(frozen=True)
class LossScales:
    """Published world-model loss scales and KL settings (2023 ``loss_scales``, ``dyn_loss``, ``rep_loss``)."""

    image: float = 1.0
    reward: float = 1.0
    cont: float = 1.0
    dyn: float = 0.5
    rep: float = 0.1
    free_nats: float = 1.0


BINS = 255
"""Bins of every symlog two-hot head (reward heads and critics)."""


class WorldModel(nn.Module):
    """Encoder + RSSM + decoder + reward heads + continue head.

    ``reward_heads`` maps a head name (also its replay key) to whether its gradient reaches the features.
    """

    def __init__(
        self,
        size: ModelSize,
        action_dim: int,
        reward_heads: dict[str, bool],
        image_shape: tuple[int, int, int] = (64, 64, 3),
        unimix: float = 0.01,
        scales: LossScales = LossScales(),
    ) -> None:
        super().__init__()
        self.scales = scales
        self.encoder = ConvEncoder(size.cnn_depth, image_shape)
        self.rssm = RSSM(size.deter, size.stoch, size.classes, size.units, action_dim, self.encoder.out_dim, unimix)
        feat = self.rssm.feat_dim
        self.decoder = ConvDecoder(feat, size.cnn_depth, image_shape)
        # outscale 0: reward predictions start at exactly 0 (published ``reward_head.outscale``).
        self.heads = nn.ModuleDict({k: MLP(feat, BINS, size.layers, size.units, 0.0) for k in reward_heads})
        self.head_grad = dict(reward_heads)
        self.cont = MLP(feat, 1, size.layers, size.units, 1.0)

    def reward(self, name: str, feat: Tensor) -> Tensor:
        """Predicted reward of head ``name`` at features (..., F) -> (...) raw units."""
        return TwoHot(self.heads[name](feat)).mean()

    def cont_prob(self, feat: Tensor) -> Tensor:
        """Probability that the episode continues after the state (..., F) -> (...)."""
        return torch.sigmoid(self.cont(feat).squeeze(-1).float())

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, State, dict[str, Tensor]]:
        """World-model loss on a replay batch.

        batch: image uint8 (B, T, H, W, C), action float (B, T, A) (taken at each step), is_first and
        is_terminal bool (B, T), one float (B, T) per reward head. Returns (scalar loss, posterior State
        (B, T, ...) with gradients, metrics of detached scalars).
        """
        image = batch["image"]
        batch_size, length = image.shape[:2]
        # (B, T, H, W, C) -> (B*T, H, W, C) for the CNN, back to (B, T, E).
        embed = self.encoder(image.flatten(0, 1)).unflatten(0, (batch_size, length))
        # The action before step t is the one taken at t-1; replay sequences start at is_first.
        prev_action = torch.cat([torch.zeros_like(batch["action"][:, :1]), batch["action"][:, :-1]], 1)
        post, prior_logits = self.rssm.observe(embed, prev_action, batch["is_first"])
        feat = post.feat()
        losses: dict[str, Tensor] = {}
        recon = self.decoder(feat.flatten(0, 1)).unflatten(0, (batch_size, length))
        target = image.float() / 255.0
        losses["image"] = (recon.float() - target).square().sum((-3, -2, -1))
        for name, head in self.heads.items():
            inputs = feat if self.head_grad[name] else feat.detach()
            losses[name] = -TwoHot(head(inputs)).log_prob(batch[name])
        cont_target = (~batch["is_terminal"]).float()
        losses["cont"] = F.binary_cross_entropy_with_logits(
            self.cont(feat).squeeze(-1).float(), cont_target, reduction="none"
        )
        losses["dyn"], losses["rep"], kl = self.rssm.kl_losses(post.logits, prior_logits, self.scales.free_nats)
        scale = {"image": self.scales.image, "cont": self.scales.cont, "dyn": self.scales.dyn}
        scale["rep"] = self.scales.rep
        total = sum(losses[k].mean() * scale.get(k, self.scales.reward) for k in losses)
        metrics = {f"loss/{k}": v.detach().mean() for k, v in losses.items()}
        metrics["kl"] = kl.mean()
        metrics["post_entropy"] = -(post.logits.exp() * post.logits).sum(-1).mean().detach()
        return total, post, metrics

    def imagine_step(self, policy, state: State) -> tuple[State, Tensor, Tensor]:
        """One imagined step: the policy acts on stop-gradient features, the prior moves on. Returns (next
        state, action, the policy's second output)."""
        action, dist = policy(state.feat().detach())
        return self.rssm.img_step(state, action), action, dist

    def imagine(self, policy, start: State, horizon: int, step=None) -> tuple[State, Tensor, list]:
        """Roll the prior forward ``horizon`` steps from ``start`` (N, ...) with ``policy(feat) -> (action,
        dist)`` applied to stop-gradient features.

        Returns the trajectory State with fields (H+1, N, ...) (index 0 is ``start``), actions (H, N, A)
        taken at steps 0..H-1 and the H action distributions. Gradients flow from later states to earlier
        actions through the dynamics (DreamerV3's continuous-action actor gradient). ``step(state) -> (next
        state, action, dist)`` stands in for ``imagine_step(policy, .)`` (e.g. a compiled version of it).
        """
        states, actions, dists = [start], [], []
        state = start
        step = step or functools.partial(self.imagine_step, policy)
        for _ in range(horizon):
            state, action, dist = step(state)
            states.append(state)
            actions.append(action)
            dists.append(dist)
        traj = State(*(torch.stack(x, 0) for x in zip(*states, strict=True)))
        return traj, torch.stack(actions, 0), dists
