"""The DreamerV3 agent: world model + actor-critic, their Adam optimisers, one update, and acting.

One update (``update``) on a replay batch (B x T): world-model loss and step; with exploration, one step of
the disagreement ensemble on the posterior; imagination of H steps from all B*T posterior states; actor and
critic losses and steps; slow-critic EMA. Published optimiser settings: Adam, world model lr 1e-4 / eps 1e-8 /
global-norm clip 1000, actor and critic lr 3e-5 / eps 1e-5 / clip 100 (each critic clipped on its own, as each
published ``VFunction`` has its own optimiser), disagreement ensemble lr 1e-4 / eps 1e-5 / clip 100.

Behaviours (``critic_scales``): the task reward trains one critic on the ``reward`` head (DreamerV3's
``Greedy``, experts and the oracle). Any other reward (VIPER's ``density``) is the published ``Prior``
behaviour: a critic on that head (weight ``agent.density_weight``) and a Plan2Explore disagreement critic
(weight ``agent.expl_weight``), each with its own slow critic and return normaliser; the advantages are mixed
``sum_k w_k adv_k / sum_k w_k``; a zero weight removes that critic (and the ensemble) altogether, as published.
On CUDA the forward passes run under bf16 autocast and modules may be compiled; on CPU everything is fp32.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from viper.agent.actor_critic import ACSettings, ActorCritic, imagined_cont
from viper.agent.exploration import Disagreement
from viper.agent.rssm import State
from viper.agent.world_model import SIZES, WorldModel
from viper.config import AgentConfig
from viper.errors import ViperError


@dataclass(frozen=True)
class OptSettings:
    """Adam settings per optimiser (published 2023 ``model_opt`` / ``actor_opt`` / ``critic_opt``)."""

    lr: float
    eps: float
    clip: float


def _adam(params, opt: OptSettings, capturable: bool = False) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=opt.lr, eps=opt.eps, capturable=capturable)


def _load_adam(opt: torch.optim.Adam, saved: dict) -> None:
    """``load_state_dict`` that keeps this run's ``capturable`` (``device`` and ``cuda_graph`` may change on
    resume): torch takes every group setting from the saved state, so a CUDA-graph run resumed on the CPU would
    fail its first step, and a CPU run resumed on CUDA could not be captured. Step counters move to where the
    setting wants them (the parameter's device when capturable, the CPU otherwise)."""
    capturable = [group["capturable"] for group in opt.param_groups]
    opt.load_state_dict(saved)
    for group, flag in zip(opt.param_groups, capturable, strict=True):
        group["capturable"] = flag
        for param in group["params"]:
            state = opt.state.get(param, {})
            if "step" in state:
                state["step"] = state["step"].to(param.device if flag else "cpu")


class GraphedUpdate:
    """``update`` replayed from one CUDA graph (``agent.cuda_graph``).

    The first ``warmup`` calls run eagerly on a side stream (they create the optimisers' states and let cuDNN
    pick its algorithms); the next call captures one whole update reading its batch from static device buffers,
    then replays it; every later call copies its batch into those buffers and replays. Parameters, gradients and
    optimiser states keep their addresses (in-place updates, capturable Adam), so acting, evaluation and
    checkpoints between replays see the current weights. Returned metrics are copies: the next replay
    overwrites the graph's outputs. A capture that fails (a host synchronisation or a dynamic shape inside the
    update) warns once and leaves every later update eager.
    """

    def __init__(self, update: Callable[[dict[str, Tensor]], dict[str, Tensor]], warmup: int = 3) -> None:
        self.update, self.warmup, self.calls = update, warmup, 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        self.failed = False

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.failed:
            return self.update(batch)
        if self.graph is None and self.calls < self.warmup:
            self.calls += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.update(batch)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            return self._capture(batch)
        if batch.keys() != self.inputs.keys() or any(batch[k].shape != v.shape for k, v in self.inputs.items()):
            raise ViperError("agent.cuda_graph: the update's batch changed shape or keys; a graph needs them fixed")
        for key, buffer in self.inputs.items():
            buffer.copy_(batch[key], non_blocking=True)
        self.graph.replay()
        return {k: v.clone() for k, v in self.outputs.items()}

    def _capture(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self.inputs = {k: v.clone() for k, v in batch.items()}
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        try:
            with torch.cuda.graph(graph):
                self.outputs = self.update(self.inputs)
        except RuntimeError as exc:
            torch.cuda.synchronize()
            warnings.warn(f"agent.cuda_graph: capturing the update failed, updates stay eager: {exc}", stacklevel=2)
            self.failed, self.inputs, self.outputs = True, {}, {}
            return self.update(batch)
        self.graph = graph
        graph.replay()  # capture records kernels without running them: this runs the update on the batch
        return {k: v.clone() for k, v in self.outputs.items()}


DISAG = "disag"
"""Critic name of the Plan2Explore disagreement reward."""
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile modes ``agent.compile_mode`` accepts."""


def critic_scales(cfg: AgentConfig, reward_name: str) -> dict[str, float]:
    """Advantage weight per critic (zero weights dropped): ``{"reward": 1}`` for the task reward, else
    ``{reward_name: density_weight, "disag": expl_weight}`` (published ``prior_rewards`` density 1, disag 1)."""
    if reward_name == "reward":
        return {"reward": 1.0}
    for key in ("density_weight", "expl_weight"):
        if getattr(cfg, key) < 0:
            raise ViperError(f"agent.{key}={getattr(cfg, key)}: expected a weight >= 0")
    scales = {reward_name: cfg.density_weight, DISAG: cfg.expl_weight}
    scales = {k: v for k, v in scales.items() if v > 0}
    if not scales:
        raise ViperError("agent.density_weight and agent.expl_weight are both 0: the actor would have no objective")
    return scales


class Agent(nn.Module):
    """World model and actor-critic for ``action_dim`` actions (one-hot when ``discrete``).

    ``reward_name`` is the reward the actor-critic optimises (a world-model head and replay key); the task
    reward head ``reward`` always exists and, when another reward is optimised, learns from stop-gradient
    features and is only logged (VIPER's setting: ``grad_heads: [decoder, density, cont]``).
    """

    def __init__(self, cfg: AgentConfig, action_dim: int, discrete: bool, reward_name: str, device) -> None:
        super().__init__()
        if cfg.size not in SIZES:
            raise ViperError(f"agent.size={cfg.size!r}: expected one of {', '.join(SIZES)}")
        size = SIZES[cfg.size]
        self.cfg, self.action_dim, self.discrete, self.reward_name = cfg, action_dim, discrete, reward_name
        heads = {"reward": reward_name == "reward"}
        if reward_name != "reward":
            heads[reward_name] = True
        self.wm = WorldModel(size, action_dim, heads)
        settings = ACSettings(
            discount=1.0 - 1.0 / cfg.discount_horizon,
            return_lambda=cfg.return_lambda,
            actor_entropy=cfg.actor_entropy,
        )
        scales = critic_scales(cfg, reward_name)
        feat_dim = self.wm.rssm.feat_dim
        self.expl = None
        if DISAG in scales:
            stoch_dim = size.stoch * size.classes
            self.expl = Disagreement(feat_dim, action_dim, stoch_dim, size.layers, size.units, cfg.disag_models)
        self.ac = ActorCritic(feat_dim, action_dim, discrete, size.layers, size.units, scales, settings)
        self.device = torch.device(device)
        self.to(self.device)
        self.model_opt_settings = OptSettings(cfg.model_lr, cfg.model_eps, cfg.model_grad_clip)
        self.actor_opt_settings = OptSettings(cfg.actor_lr, cfg.actor_critic_eps, cfg.actor_critic_grad_clip)
        self.critic_opt_settings = OptSettings(cfg.critic_lr, cfg.actor_critic_eps, cfg.actor_critic_grad_clip)
        self.model_params = list(self.wm.parameters())
        self.actor_params = list(self.ac.actor.parameters())
        self.critic_params = list(self.ac.critics.parameters())
        self.cuda = self.device.type == "cuda"
        graphed = cfg.cuda_graph and self.cuda
        self.model_opt = _adam(self.model_params, self.model_opt_settings, graphed)
        self.actor_opt = _adam(self.actor_params, self.actor_opt_settings, graphed)
        self.critic_opt = _adam(self.critic_params, self.critic_opt_settings, graphed)
        self.expl_opt_settings = OptSettings(cfg.expl_lr, cfg.expl_eps, cfg.expl_grad_clip)
        self.expl_params = list(self.expl.parameters()) if self.expl is not None else []
        self.expl_opt = _adam(self.expl_params, self.expl_opt_settings, graphed) if self.expl is not None else None
        if cfg.compile_mode not in COMPILE_MODES:
            raise ViperError(f"agent.compile_mode={cfg.compile_mode!r}: expected one of {', '.join(COMPILE_MODES)}")
        mode = None if cfg.compile_mode == "default" else cfg.compile_mode
        if cfg.compile and self.cuda:
            # Compile the batched, shape-stable parts; the Python loops over time stay eager.
            # Each head and critic itself: compiling a ModuleDict wraps only its own (unused) call.
            heads = (*self.wm.heads.values(), self.wm.cont, *self.ac.critics.values())
            for module in (self.wm.encoder, self.wm.decoder, *heads):
                module.compile(mode=mode)
        self.imagine_step = None
        if cfg.compile_loops:
            # Static shapes: a batch's (B, ...) step and the N = B*T imagination step each compile once.
            self.wm.rssm.compile_steps(dynamic=False, mode=mode)
            step = functools.partial(self.wm.imagine_step, self.ac.policy)
            self.imagine_step = torch.compile(step, dynamic=False, mode=mode)
        if graphed and mode == "reduce-overhead" and (cfg.compile or cfg.compile_loops):
            raise ViperError(
                "agent.cuda_graph=true (the default) graphs the whole update, so agent.compile_mode=reduce-overhead "
                "cannot add its own CUDA graphs: use agent.compile_mode=default, or agent.cuda_graph=false"
            )
        self.graphed = GraphedUpdate(self._update) if graphed else None

    def _autocast(self):
        if self.cuda and self.cfg.bf16:
            # A graph capture must not see autocast's cache of cast weights (PyTorch's CUDA-graph rules).
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=self.graphed is None)
        return contextlib.nullcontext()

    def to_tensors(self, batch: dict[str, np.ndarray]) -> dict[str, Tensor]:
        """Replay batch (numpy) -> tensors on the agent's device (images stay uint8)."""
        if "is_first" in batch and not np.all(batch["is_first"][:, 0]):
            raise ValueError("replay batch: every sequence must start at is_first (RSSM.observe resets there)")
        return {k: torch.as_tensor(v).to(self.device, non_blocking=True) for k, v in batch.items()}

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One full update on a batch (B, T, ...); returns detached scalar metrics."""
        self.train()
        return self.graphed(batch) if self.graphed is not None else self._update(batch)

    def _update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        with self._autocast():
            wm_loss, post, metrics = self.wm.loss(batch)
        self.model_opt.zero_grad(set_to_none=True)
        wm_loss.backward()
        metrics["grad_norm/model"] = nn.utils.clip_grad_norm_(self.model_params, self.model_opt_settings.clip)
        self.model_opt.step()
        metrics = {f"wm/{k}" if not k.startswith("loss/") else k: v for k, v in metrics.items()}
        metrics["loss/model"] = wm_loss.detach()
        if self.expl is not None:
            metrics.update(self._train_expl(post, batch["action"]))
        metrics.update(self._behaviour(post, batch["is_terminal"]))
        return metrics

    def _train_expl(self, post: State, action: Tensor) -> dict[str, Tensor]:
        # Published order: the reward ensemble learns on the posterior before the actor-critic imagines.
        with self._autocast():
            loss = self.expl.loss(post.feat(), action, post.stoch)
        self.expl_opt.zero_grad(set_to_none=True)
        loss.backward(inputs=self.expl_params)
        norm = nn.utils.clip_grad_norm_(self.expl_params, self.expl_opt_settings.clip)
        self.expl_opt.step()
        return {"loss/disag": loss.detach(), "grad_norm/disag": norm}

    def imagined_rewards(self, feat: Tensor, actions: Tensor) -> dict[str, Tensor]:
        """Reward per critic on arriving at imagined states 1..H: feat (H+1, N, F), actions (H, N, A) -> (H, N).

        Head rewards come from the world model; the disagreement of state t needs the action taken there, so
        the policy also acts in the last state (the published ``imagine`` samples H+1 actions).

        The heads run over all H+1 states and the start's value is dropped afterwards: slicing the (H+1, N, F)
        features instead would make the backward pass zero-fill and copy a gradient of their full size."""
        rewards = {}
        for name in self.ac.critics:
            if name == DISAG:
                last, _ = self.ac.policy(feat[-1].detach())
                taken = torch.cat([actions, last[None].to(actions.dtype)], 0)
                rewards[name] = self.expl.reward(feat, taken)[1:]
            else:
                rewards[name] = self.wm.reward(name, feat)[1:]
        return rewards

    def imagine_from(self, post: State, is_terminal: Tensor) -> tuple[Tensor, Tensor, Tensor, dict, Tensor]:
        """Imagine from every posterior state of a batch (B, T, ...) -> N = B*T starts, with no gradient into the
        world model's observation path. Returns what ``ActorCritic.losses`` takes: features (H+1, N, F), actions
        (H, N, A), the actor's outputs (H, N, *), rewards per critic (H, N) and continue flags (H+1, N)."""
        start = post.map(lambda x: x.detach().flatten(0, 1))
        first_cont = (~is_terminal).flatten().float()
        traj, actions, outs = self.wm.imagine(self.ac.policy, start, self.cfg.imag_horizon, self.imagine_step)
        feat = traj.feat()
        rewards = self.imagined_rewards(feat, actions)
        with torch.no_grad():
            cont = imagined_cont(self.wm.cont_prob(feat), first_cont)
        return feat, actions, torch.stack(outs), rewards, cont

    def _behaviour(self, post: State, is_terminal: Tensor) -> dict[str, Tensor]:
        with self._autocast():
            actor_loss, critic_loss, metrics = self.ac.losses(*self.imagine_from(post, is_terminal))
        self.actor_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        # Separate backward passes: the actor loss also depends on the critics (returns, baseline) and the
        # world model (dynamics), but only the actor may learn from it; `inputs=` skips the other grads.
        actor_loss.backward(inputs=self.actor_params, retain_graph=True)
        critic_loss.backward(inputs=self.critic_params)
        metrics["grad_norm/actor"] = nn.utils.clip_grad_norm_(self.actor_params, self.actor_opt_settings.clip)
        for name, critic in self.ac.critics.items():
            norm = nn.utils.clip_grad_norm_(list(critic.parameters()), self.critic_opt_settings.clip)
            metrics["grad_norm/critic" if len(self.ac.critics) == 1 else f"grad_norm/critic_{name}"] = norm
        self.actor_opt.step()
        self.critic_opt.step()
        self.ac.update_slow()
        metrics["loss/critic"] = critic_loss.detach()
        return {(k if k.startswith(("loss/", "grad_norm/")) else f"ac/{k}"): v for k, v in metrics.items()}

    def initial_carry(self, envs: int) -> tuple[State, Tensor]:
        """Recurrent acting state of ``envs`` environments before their first step."""
        with torch.no_grad():
            state = self.wm.rssm.initial(envs)
        return state, torch.zeros(envs, self.action_dim, device=self.device)

    @torch.no_grad()
    def act(
        self, obs: np.ndarray, is_first: np.ndarray, carry: tuple[State, Tensor], sample: bool = True
    ) -> tuple[np.ndarray, tuple[State, Tensor]]:
        """Actions for a batch of observations.

        obs uint8 (E, H, W, C); is_first bool (E,) (resets those envs' recurrent state). Returns actions
        float32 (E, A) (continuous: as sampled, not clipped; discrete: one-hot) and the new carry.

        Continuous samples can leave [-1, 1]: as released, replay keeps them so (the env clips: ``driver.clip_action``),
        the world model clamps them on input, and the Plan2Explore ensemble learns on the actions the actor
        imagines with (which are never clipped).
        """
        self.eval()
        state, prev_action = carry
        with self._autocast():
            embed = self.wm.encoder(torch.as_tensor(obs, device=self.device))
            first = torch.as_tensor(is_first, device=self.device, dtype=torch.bool)
            state = self.wm.rssm.obs_step(state, prev_action, embed, first)
            action, _ = self.ac.policy(state.feat(), sample)
        action = action.float()
        state = state.map(lambda x: x.float())
        return action.cpu().numpy(), (state, action)

    def optimizer_state(self) -> dict:
        state = {
            "model": self.model_opt.state_dict(),
            "actor": self.actor_opt.state_dict(),
            "critic": self.critic_opt.state_dict(),
        }
        if self.expl_opt is not None:
            state["expl"] = self.expl_opt.state_dict()
        return state

    def load_optimizer_state(self, state: dict) -> None:
        _load_adam(self.model_opt, state["model"])
        _load_adam(self.actor_opt, state["actor"])
        _load_adam(self.critic_opt, state["critic"])
        if self.expl_opt is not None:
            _load_adam(self.expl_opt, state["expl"])
