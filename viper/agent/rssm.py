"""Recurrent state-space model of DreamerV3 (2023 release): GRU deterministic state + S x K' categoricals.

Per step (shapes: B batch, D deter, S x K' stochastic latents, A action dims, E embedding):
  prior:     h_t = GRU(h_{t-1}, img_in([z_{t-1}, a_{t-1}]));  z_t ~ Cat(img_logits(img_out(h_t)))
  posterior: z_t ~ Cat(obs_logits(obs_out([h_t, e_t])))
The GRU is the published variant: one LayerNorm'd linear map to (reset, candidate, update) and an update
gate biased by -1. Categoricals mix in 1% uniform and are sampled one-hot with straight-through gradients.
``is_first`` resets the state to the learned initial state and the previous action to zero.

Speed: ``observe`` only runs the posterior chain sequentially (the prior's ``img_out``/``img_logits`` do not
feed the next step, so they run once over all B*T states afterwards), and the embedding's share of
``obs_out`` is one matmul over the whole sequence.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from viper.agent.dists import categorical_index, kl_categorical, onehot, straight_through, unimix_logits
from viper.agent.nets import Dense, OneHotWidth


class State(NamedTuple):
    """RSSM state: deter (..., D), stoch one-hot (..., S, K'), logits log-probs (..., S, K')."""

    deter: Tensor
    stoch: Tensor
    logits: Tensor

    def feat(self) -> Tensor:
        """Features for heads, actor and critic: [deter, flat stoch] (..., D + S*K')."""
        return torch.cat([self.deter, self.stoch.flatten(-2)], -1)

    def map(self, fn) -> State:
        return State(*(fn(x) for x in self))


def sample_onehot(logits: Tensor) -> Tensor:
    """One-hot sample of the categoricals ``logits`` (..., K) with straight-through gradients.

    Inverse-CDF sampling: one uniform number per variable instead of K Gumbel draws (8x faster on CPU).
    """
    probs = torch.softmax(logits, -1)
    return straight_through(onehot(categorical_index(probs.detach()), probs.shape[-1], probs.dtype), probs)


def mode_onehot(logits: Tensor) -> Tensor:
    """Most likely one-hot of ``logits`` (..., K), straight-through."""
    probs = torch.softmax(logits, -1)
    return straight_through(onehot(probs.argmax(-1), probs.shape[-1], probs.dtype), probs)


class RSSM(nn.Module):
    """DreamerV3 RSSM. ``deter`` D, ``stoch`` S, ``classes`` K', hidden ``units``; ``unimix`` uniform mix."""

    def __init__(
        self,
        deter: int,
        stoch: int,
        classes: int,
        units: int,
        action_dim: int,
        embed_dim: int,
        unimix: float = 0.01,
    ) -> None:
        super().__init__()
        self.deter, self.stoch, self.classes, self.unimix = deter, stoch, classes, unimix
        self.action_dim = action_dim
        flat = stoch * classes
        # Input [one-hot stoch, action]: the one-hot span lets the layer gather rows (nets.OneHotLinear).
        self.img_in = Dense(OneHotWidth(flat + action_dim, 0, stoch, classes), units)
        # One LayerNorm'd linear map to the three gates (reset, candidate, update), no activation.
        self.gru = Dense(units + deter, 3 * deter, act=False)
        self.img_out = Dense(deter, units)
        self.img_logits = Dense(units, flat, norm=False, act=False)
        self.obs_out = Dense(deter + embed_dim, units)
        self.obs_logits = Dense(units, flat, norm=False, act=False)
        self.initial_deter = nn.Parameter(torch.zeros(deter))
        self.post_step = self._post_step
        """``observe``'s per-step function: ``_post_step`` itself, or its compiled version (``compile_steps``)."""

    @property
    def feat_dim(self) -> OneHotWidth:
        """Width of ``State.feat()``: [deter (D), one-hot stoch (S*K')]; layers built on it gather the one-hots."""
        return OneHotWidth(self.deter + self.stoch * self.classes, self.deter, self.stoch, self.classes)

    def _logits(self, layer: Dense, x: Tensor) -> Tensor:
        # (..., S*K') -> (..., S, K') log-probabilities with the uniform mix.
        x = layer(x).float()
        return unimix_logits(x.unflatten(-1, (self.stoch, self.classes)), self.unimix)

    def initial(self, batch: int) -> State:
        """Learned initial state: deter = tanh(w), stoch = the prior's mode at that deter. (B, ...)."""
        deter = torch.tanh(self.initial_deter)
        logits = self._logits(self.img_logits, self.img_out(deter))
        stoch = mode_onehot(logits)
        return State(deter.expand(batch, -1), stoch.expand(batch, -1, -1), logits.expand(batch, -1, -1))

    def _clip_action(self, action: Tensor) -> Tensor:
        # Published action_clip=1: rescale actions with |a| > 1 (imagined samples are unbounded Gaussians).
        return action / torch.clamp(action.detach().abs(), min=1.0)

    def _gru_step(self, x: Tensor, deter: Tensor) -> Tensor:
        parts = self.gru(torch.cat([x, deter], -1))
        reset, cand, update = parts.chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * deter

    def img_step(self, state: State, action: Tensor, sample: bool = True) -> State:
        """One prior step from ``state`` (B, ...) and ``action`` (B, A) -> prior state (B, ...)."""
        x = self.img_in(torch.cat([state.stoch.flatten(-2), self._clip_action(action)], -1))
        deter = self._gru_step(x, state.deter)
        logits = self._logits(self.img_logits, self.img_out(deter))
        stoch = sample_onehot(logits) if sample else mode_onehot(logits)
        return State(deter, stoch, logits)

    def _reset(self, state: State, action: Tensor, is_first: Tensor, init: State | None = None) -> tuple[State, Tensor]:
        """Where ``is_first`` (B,) is set: state <- initial state (``init`` if given), previous action <- 0."""
        init = self.initial(is_first.shape[0]) if init is None else init
        first = is_first[:, None]
        # torch.where keeps both branches' gradients where selected: 4 kernels instead of 17 multiply-adds.
        state = State(
            torch.where(first, init.deter, state.deter),
            torch.where(first[..., None], init.stoch, state.stoch),
            torch.where(first[..., None], init.logits, state.logits),
        )
        return state, action.masked_fill(first, 0.0)

    def obs_step(self, state: State, action: Tensor, embed: Tensor, is_first: Tensor) -> State:
        """One posterior step (acting): previous ``state``/``action``, ``embed`` (B, E), ``is_first`` (B,)."""
        state, action = self._reset(state, action, is_first)
        x = self.img_in(torch.cat([state.stoch.flatten(-2), self._clip_action(action)], -1))
        deter = self._gru_step(x, state.deter)
        logits = self._logits(self.obs_logits, self.obs_out(torch.cat([deter, embed], -1)))
        return State(deter, sample_onehot(logits), logits)

    def _post_step(
        self, state: State, action: Tensor, is_first: Tensor, init: State, embed_proj: Tensor, w_deter: Tensor
    ) -> State:
        """``observe``'s step: reset, prior GRU step, posterior from ``embed_proj`` (B, units), the embedding's
        precomputed share of ``obs_out`` (``w_deter`` is the deter's share of its weight)."""
        state, action = self._reset(state, action, is_first, init)
        x = self.img_in(torch.cat([state.stoch.flatten(-2), self._clip_action(action)], -1))
        deter = self._gru_step(x, state.deter)
        hidden = F.silu(self.obs_out.norm(F.linear(deter, w_deter) + embed_proj))
        logits = self._logits(self.obs_logits, hidden)
        return State(deter, sample_onehot(logits), logits)

    def compile_steps(self, **options) -> None:
        """Run ``observe``'s per-step function through ``torch.compile(**options)`` (fuses the step's small
        kernels; the Python loop over time stays)."""
        self.post_step = torch.compile(self._post_step, **options)

    def observe(self, embed: Tensor, prev_action: Tensor, is_first: Tensor) -> tuple[State, Tensor]:
        """Posterior states of a sequence and the prior's logits at the same steps.

        embed (B, T, E); prev_action (B, T, A) the action before each step; is_first (B, T) bool.
        Returns post State with (B, T, ...) fields and prior logits (B, T, S, K'). The state before the
        first step is irrelevant: replay sequences start with ``is_first`` set.
        """
        batch, length = embed.shape[:2]
        if is_first.device.type == "cpu":  # on CUDA the check would wait for the GPU (Agent.to_tensors checks)
            assert is_first[:, 0].all(), "observe(): sequences must start at is_first (replay sets it)"
        assert prev_action.shape[:2] == (batch, length), "prev_action (B, T, A) expected"
        # The embedding's part of obs_out's linear map, for all steps at once: (B, T, units).
        w_deter, w_embed = self.obs_out.linear.weight.split([self.deter, embed.shape[-1]], dim=1)
        embed_proj = F.linear(embed, w_embed)
        init = self.initial(batch)
        state = init
        deters, stochs, logits_all = [], [], []
        for t in range(length):
            state = self.post_step(state, prev_action[:, t], is_first[:, t], init, embed_proj[:, t], w_deter)
            deters.append(state.deter)
            stochs.append(state.stoch)
            logits_all.append(state.logits)
        post = State(torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(logits_all, 1))
        # The prior at every step depends only on h_t: one batched pass over (B, T, D).
        prior_logits = self._logits(self.img_logits, self.img_out(post.deter))
        return post, prior_logits

    def kl_losses(self, post_logits: Tensor, prior_logits: Tensor, free_nats: float = 1.0):
        """DreamerV3 KL balancing with free bits: (dyn, rep, kl) each (B, T).

        dyn = max(free, KL(sg(post) || prior)) trains the prior; rep = max(free, KL(post || sg(prior)))
        trains the representation; kl is the unclipped value for logging.
        """
        dyn = kl_categorical(post_logits.detach(), prior_logits)
        rep = kl_categorical(post_logits, prior_logits.detach())
        return torch.clamp(dyn, min=free_nats), torch.clamp(rep, min=free_nats), dyn.detach()
