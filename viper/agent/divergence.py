"""When a DreamerV3 run diverges: the error ``train-agent`` stops with, which modules hold non-finite weights, and
what to change before resuming (the settings in effect on this run's device)."""

from __future__ import annotations

import torch

from viper.agent.agent import Agent
from viper.config import AgentConfig
from viper.errors import ViperError


def nonfinite_modules(agent: Agent) -> dict[str, int]:
    """How many non-finite weight tensors each of the agent's modules holds (``ac.actor``: 4); empty if none."""
    bad: dict[str, int] = {}
    for name, param in agent.named_parameters():
        if not torch.isfinite(param).all():
            module = ".".join(name.split(".")[:2])
            bad[module] = bad.get(module, 0) + 1
    return bad


def nonfinite_weights(agent: Agent) -> str:
    """``nonfinite_modules`` in words, e.g. ``non-finite weights in ac.actor (4 tensors)``."""
    bad = nonfinite_modules(agent)
    if not bad:
        return "every weight is finite"
    return "non-finite weights in " + ", ".join(f"{m} ({n} tensors)" for m, n in sorted(bad.items()))


def divergence_advice(acfg: AgentConfig, cuda: bool) -> str:
    """What to change after a divergence: the numerics settings this run has in effect (all but
    ``compile_loops`` act on CUDA only), then lower learning rates."""
    in_effect = {
        "agent.bf16=false": acfg.bf16 and cuda,
        "agent.cuda_graph=false": acfg.cuda_graph and cuda,
        "agent.compile=false": acfg.compile and cuda,
        "agent.compile_loops=false": acfg.compile_loops,
    }
    changes = [setting for setting, active in in_effect.items() if active]
    return ", ".join(changes + ["lower learning rates (agent.model_lr, agent.actor_lr, agent.critic_lr)"])


class Diverged(ViperError):
    """The agent's numbers went non-finite (a NaN action, loss or weight); caught in ``run`` for the message."""
