"""Plan2Explore disagreement (the 2023 DreamerV3 ``expl.Disag`` that VIPER's ``Prior`` behaviour uses).

An ensemble of ``members`` MLP heads (published 8, same layers/units as the other heads, output scale 1) reads
``[deter, stoch, action]`` at step t and regresses the (sampled, flattened) stochastic state at t+1 with a
squared error summed over its S*K' dimensions (the published ``mse`` head). The intrinsic reward of an imagined
state is the ensemble's standard deviation (population std over members) averaged over those dimensions:
high where the world model has seen few transitions like this one.

Shapes: N states, F = D + S*K' features, A action dims, M ensemble members, H imagination horizon.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from viper.agent.nets import MLP, OneHotWidth
from viper.errors import ViperError


class Disagreement(nn.Module):
    """``members`` heads ``[feat, action] (..., F + A) -> next flat stoch (..., S*K')``."""

    def __init__(self, feat_dim: int, action_dim: int, stoch_dim: int, layers: int, units: int, members: int = 8):
        super().__init__()
        if members < 2:
            raise ViperError(f"agent.disag_models={members}: the disagreement (an ensemble's std) needs >= 2 members")
        width = feat_dim + action_dim
        if isinstance(feat_dim, OneHotWidth):
            # The action columns come after the features: the latents' one-hot span stays where it was.
            width = OneHotWidth(width, feat_dim.start, feat_dim.groups, feat_dim.classes)
        self.heads = nn.ModuleList(MLP(width, stoch_dim, layers, units, 1.0) for _ in range(members))

    def members(self, feat: Tensor, action: Tensor) -> list[Tensor]:
        """Each member's prediction: feat (..., F), action (..., A) -> M tensors (..., S*K')."""
        inputs = torch.cat([feat, action.to(feat.dtype)], -1)
        return [head(inputs) for head in self.heads]

    def predict(self, feat: Tensor, action: Tensor) -> Tensor:
        """Every member's prediction stacked: (M, ..., S*K')."""
        return torch.stack(self.members(feat, action), 0)

    def reward(self, feat: Tensor, action: Tensor) -> Tensor:
        """Intrinsic reward (...): std over members, mean over predicted dims (``preds.std(0).mean(-1)``).

        Imagination passes the features of states 1..H with the actions the policy takes there, so the reward
        for arriving at state t measures disagreement about the transition out of t (the published ``[1:]``).
        """
        # Two passes over the members' outputs without stacking them: on the CPU ``torch.std`` over a stacked
        # member axis took ~1 s for the (8, 4096, 1024) predictions of an XS update, this ~0.3 s.
        preds = [p.float() for p in self.members(feat, action)]
        mean = sum(preds) / len(preds)
        return _std_from_var(sum((p - mean).square() for p in preds) / len(preds)).mean(-1)

    def loss(self, feat: Tensor, action: Tensor, stoch: Tensor) -> Tensor:
        """Training loss on posterior sequences, summed over members (published ``Disag._loss``).

        feat (B, T, F) posterior features, action (B, T, A) actions taken at t, stoch (B, T, S, K') posterior
        samples. Inputs at t = 0..T-2, targets the stoch at t+1; everything is stop-gradient (the ensemble
        never shapes the representation). Returns a scalar.
        """
        inputs = feat[:, :-1].detach()
        target = stoch[:, 1:].detach().flatten(-2).float()
        preds = self.predict(inputs, action[:, :-1].detach()).float()
        # (M, B, T-1, S*K'): squared error summed over dims, mean over (B, T-1), sum over members.
        return (preds - target[None]).square().sum(-1).mean((1, 2)).sum()


def _std_from_var(var: Tensor) -> Tensor:
    """``sqrt(var)`` with gradient 0 where ``var`` is exactly 0, as ``torch.std`` has.

    A plain ``var.sqrt()`` back-propagates 0 * inf = NaN there. Members agree exactly in some dimension far more
    often than it seems under bf16 autocast (8 mantissa bits): on an H100 the size-S VIPER agent's actor went NaN
    after 4-6k agent steps in every seed-0 run until this (benchmarks/results/gpu.md). The value is unchanged.
    """
    positive = var > 0
    return torch.where(positive, torch.where(positive, var, torch.ones_like(var)).sqrt(), torch.zeros_like(var))
