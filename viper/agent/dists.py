"""Distributions and transforms of DreamerV3 (2023 release), written for batched tensors.

- ``symlog``/``symexp``: the squashing used for reward and value targets.
- ``TwoHot``: 255 bins uniformly spaced in symlog space over [-20, 20]; targets are two-hot encoded, the
  prediction is decoded as ``symexp(sum(probs * bins))`` (the 2023 ``DiscDist``).
- ``unimix_logits``: mix 1% uniform into a categorical (keeps KL and log-probs finite).
- ``OneHotDist``: categorical over the last axis with straight-through one-hot samples.
- ``kl_categorical``: KL between factorised categoricals, summed over the latent variables.
- ``NormalActor``: the bounded-mean Gaussian of the continuous actor (tanh mean, std in [0.1, 1]).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def symlog(x: Tensor) -> Tensor:
    """sign(x) * log(1 + |x|)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """Inverse of ``symlog``: sign(x) * (exp(|x|) - 1)."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


class TwoHot:
    """Symlog two-hot categorical over fixed bins: regression as classification (reward and critic heads).

    ``logits`` (..., bins) float. ``mean()`` (...) in raw units; ``log_prob(x)`` (...) of raw targets ``x``.
    """

    def __init__(self, logits: Tensor, low: float = -20.0, high: float = 20.0) -> None:
        self.logits = logits.float()
        self.bins = torch.linspace(low, high, logits.shape[-1], device=logits.device)

    def mean(self) -> Tensor:
        return symexp((torch.softmax(self.logits, -1) * self.bins).sum(-1))

    def log_prob(self, x: Tensor) -> Tensor:
        target = twohot_encode(symlog(x.float()), self.bins)
        return (target * torch.log_softmax(self.logits, -1)).sum(-1)


def onehot(index: Tensor, classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot vectors (..., classes) of integer ``index`` (...).

    One scatter into zeros of the wanted dtype: ``F.one_hot(...).to(dtype)`` builds an int64 tensor and casts
    it, and on the CPU first reads the index range back to the host. Indices here come from argmax, sampling or
    clamped searches, so they are in range by construction."""
    out = torch.zeros(index.shape + (classes,), dtype=dtype, device=index.device)
    return out.scatter_(-1, index.unsqueeze(-1), 1.0)


def straight_through(hard: Tensor, probs: Tensor) -> Tensor:
    """``hard`` (one-hots) in the forward pass, the gradient of ``probs`` in the backward pass (DreamerV3's
    ``sg(sample) + (probs - sg(probs))``).

    The bracket matters: ``probs - sg(probs)`` is exactly zero, so the values are exactly ``hard``. Left to right,
    ``hard + probs - sg(probs)`` rounds ``1 + p - p`` and stores 0.99999994 where the sample has its one (in the
    replay's discrete actions and in every latent the networks read).
    """
    return hard + (probs - probs.detach())


def twohot_encode(y: Tensor, bins: Tensor) -> Tensor:
    """Two-hot weights (..., K) of values ``y`` (...) on sorted ``bins`` (K,): the two neighbouring bins share
    the mass linearly, so ``sum(weights * bins) == clip(y, bins[0], bins[-1])``."""
    k = bins.shape[0]
    # Index of the last bin <= y and of the first bin > y, clamped to the ends (as the 2023 code does):
    # outside the range both name the end bin, which then gets all the mass.
    count = torch.searchsorted(bins, y.contiguous(), right=True)
    below = (count - 1).clamp(0, k - 1)
    above = count.clamp(0, k - 1)
    dist_below = (y - bins[below]).abs()
    dist_above = (bins[above] - y).abs()
    equal = below == above
    dist_below = torch.where(equal, torch.ones_like(dist_below), dist_below)
    dist_above = torch.where(equal, torch.ones_like(dist_above), dist_above)
    total = dist_below + dist_above
    weight_below = dist_above / total
    weight_above = dist_below / total
    # Scatter the two weights (at an end bin both land on the same index and add up to 1).
    out = torch.zeros(y.shape + (k,), dtype=weight_below.dtype, device=y.device)
    out.scatter_(-1, below.unsqueeze(-1), weight_below.unsqueeze(-1))
    return out.scatter_add_(-1, above.unsqueeze(-1), weight_above.unsqueeze(-1))


def unimix_logits(logits: Tensor, unimix: float) -> Tensor:
    """Log-probabilities of ``(1 - unimix) * softmax(logits) + unimix / K`` over the last axis."""
    if unimix <= 0.0:
        return torch.log_softmax(logits, -1)
    probs = torch.softmax(logits, -1)
    probs = (1.0 - unimix) * probs + unimix / logits.shape[-1]
    return torch.log(probs)


def categorical_index(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One class index (...) drawn from each categorical ``probs`` (..., K), by inverse CDF: one uniform number per
    variable (``torch.multinomial`` draws K exponentials, and some releases read its checks back to the host,
    which a CUDA graph cannot capture)."""
    uniform = torch.rand(probs.shape[:-1] + (1,), device=probs.device, dtype=probs.dtype, generator=generator)
    return (probs.cumsum(-1) < uniform).sum(-1).clamp_(max=probs.shape[-1] - 1)


class OneHotDist:
    """Categorical over the last axis of ``logits`` (log-probabilities) with one-hot, straight-through samples.

    The samples carry the gradient of the probabilities (``straight_through``), as in DreamerV3.
    """

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits
        self.probs = torch.softmax(logits, -1)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        index = categorical_index(self.probs.detach(), generator)
        return straight_through(onehot(index, self.probs.shape[-1], self.probs.dtype), self.probs)

    def mode(self) -> Tensor:
        return straight_through(onehot(self.probs.argmax(-1), self.probs.shape[-1], self.probs.dtype), self.probs)

    def log_prob(self, onehot: Tensor) -> Tensor:
        return (onehot * torch.log_softmax(self.logits, -1)).sum(-1)

    def entropy(self) -> Tensor:
        logp = torch.log_softmax(self.logits, -1)
        return -(logp.exp() * logp).sum(-1)


def kl_categorical(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(p || q) of factorised categoricals (..., S, K) given as log-probabilities, summed over S -> (...)."""
    logp = torch.log_softmax(logits_p, -1)
    logq = torch.log_softmax(logits_q, -1)
    return (logp.exp() * (logp - logq)).sum((-1, -2))


class NormalActor:
    """Independent Gaussian over action dims: mean ``tanh(m)``, std ``(max-min)*sigmoid(s + 2) + min``.

    ``mean_raw``/``std_raw`` (..., A). ``log_prob``/``entropy`` sum over A. Samples are reparameterised,
    so imagined returns backpropagate into the actor (DreamerV3's continuous-action gradient).
    """

    def __init__(self, mean_raw: Tensor, std_raw: Tensor, min_std: float = 0.1, max_std: float = 1.0) -> None:
        self.mean = torch.tanh(mean_raw.float())
        self.std = (max_std - min_std) * torch.sigmoid(std_raw.float() + 2.0) + min_std

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean

    def log_prob(self, x: Tensor) -> Tensor:
        z = (x - self.mean) / self.std
        return (-0.5 * z * z - torch.log(self.std) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> Tensor:
        return (0.5 + 0.5 * math.log(2 * math.pi) + torch.log(self.std)).sum(-1)
