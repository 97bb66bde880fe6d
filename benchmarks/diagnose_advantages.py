"""Which objective moves the actor? Per-critic shares of a trained agent's actor gradient.

The actor's loss mixes one normalised advantage per critic (``sum_k w_k (R_k - v_k) / max(1, P95_k - P5_k)``,
weights ``w_k / sum w``) with the entropy bonus. This loads an agent checkpoint and its replay, imagines from
``--batches`` replay batches exactly as an update does (same horizon, policy, heads, continue flags, the
checkpoint's return normalisers, which it does not update), and reports per term:

- the spread (std over imagined states) of its contribution to the advantage;
- the norm of the actor gradient that term alone gives, its cosine with the full actor gradient and with the
  first critic's (the task or VIPER reward).

A term whose gradient norm is orders of magnitude below another's does not steer the policy.

    .venv/bin/python benchmarks/diagnose_advantages.py <run folder or checkpoint> --batches 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from viper.agent.agent import Agent
from viper.agent.policy import checkpoint_folder, load_policy
from viper.agent.replay import Replay
from viper.agent.run_spec import replay_spec


def load(path: str) -> tuple[Agent, Replay, Path]:
    """The newest complete checkpoint under ``path``: (agent, its replay, the checkpoint folder)."""
    folder = checkpoint_folder(path)
    agent = load_policy(folder).agent
    spec = replay_spec((64, 64, 3), agent.action_dim, agent.reward_name)
    replay = Replay(agent.cfg.replay_capacity_steps, agent.cfg.envs, spec, seed=0)
    replay.load(folder / "replay")
    return agent, replay, folder


def actor_terms(agent: Agent, batch) -> dict[str, torch.Tensor]:
    """Per-term actor losses (to be differentiated) and the spread of each critic's advantage part, from one
    replay batch: the update's own imagination (``Agent.imagine_from``) and advantages (``ActorCritic``)."""
    with torch.no_grad():
        _, post, _ = agent.wm.loss(batch)
    feat, actions, outs, rewards, cont = agent.imagine_from(post, batch["is_terminal"])
    ac = agent.ac
    parts, weight = ac.advantages(feat, rewards, cont, update_norms=False)
    entropy = ac.dist(outs).entropy()
    bonus = (ac.settings.actor_entropy * entropy * weight).mean()
    terms, spread = {}, {}
    for name, part in parts.items():
        # The actor loss of this critic's part alone: the real loss, its entropy bonus taken out again (the bonus
        # is its own term), so the terms' gradients sum to the update's actor gradient.
        loss, _ = ac.actor_loss(part["part"], actions, outs, weight)
        terms[name] = loss + bonus
        spread[name] = part["part"].detach().std()
    terms["entropy"], spread["entropy"] = -bonus, (ac.settings.actor_entropy * entropy).detach().std()
    return terms, spread


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm() + 1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="agent run folder, its checkpoints folder or one step_* folder")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    agent, replay, folder = load(args.checkpoint)
    replay.rng = np.random.default_rng(args.seed)
    params = agent.actor_params
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for _ in range(args.batches):
        batch = agent.to_tensors(replay.sample(agent.cfg.batch_size, agent.cfg.batch_length))
        terms, spread = actor_terms(agent, batch)
        grads = {}
        for name, loss in terms.items():
            g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            grads[name] = torch.cat(
                [(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, params, strict=True)]
            )
        full, main = sum(grads.values()), next(iter(grads.values()))
        for name, g in grads.items():
            rows.setdefault(name, []).append((float(spread[name]), float(g.norm()), cosine(g, full), cosine(g, main)))
    print(f"checkpoint {folder}, {args.batches} batches of {agent.cfg.batch_size} x {agent.cfg.batch_length}")
    main = next(iter(rows))
    print(f"| term | advantage std over states | actor grad norm | cosine with the full grad | cosine with {main} |")
    print("|---|---|---|---|---|")
    for name, values in rows.items():
        std, norm, cos_full, cos_main = np.mean(np.array(values), 0)
        print(f"| {name} | {std:.3g} | {norm:.3g} | {cos_full:+.2f} | {cos_main:+.2f} |")


if __name__ == "__main__":
    main()
