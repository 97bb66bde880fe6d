"""Does a trained agent follow its own world model? A check for continuous-action DMC agents.

For each reference policy (the agent's actor, zero action, uniform random actions) this rolls out real episodes
while the agent observes them, and reports:
- the real task return of the episode;
- how well the world model's reward head predicts the real reward along it (correlation; the head's prediction
  for the state after step t is compared with the reward of step t);
- the imagined ``--horizon``-step discounted reward of the actor, zero and random actions, started from every
  posterior state of the episode's first seed: the model's own ranking of the three behaviours.

A good model and a lagging policy show high correlation and the actor ranked first in imagination while its
real return is still below a simple policy's; a poor model shows low correlation.

    .venv/bin/python benchmarks/diagnose_agent.py data/agents/task/dmc-cartpole_balance/seed0 \
        --episodes 3 --steps 200
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from viper import envs
from viper.agent.policy import checkpoint_folder, load_policy
from viper.agent.rssm import State

POLICIES = ("actor", "zero", "random")

FIRST_SEED = 100
"""Seed of the first evaluation episode (``seeded_episode``); episode ``i`` uses FIRST_SEED + i."""


def episode(policy, task: str, kind: str, seed: int, steps: int, action_repeat: int):
    """Real episode driven by ``kind`` while the agent observes it: (rewards (T,), predicted (T,), states)."""
    agent = policy.agent
    env = envs.make(task, seed, action_repeat, steps)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    carry, first = agent.initial_carry(1), True
    rewards, predicted, states = [], [], []
    try:
        for _ in range(steps):
            action, carry = agent.act(obs[None], np.array([first]), carry, sample=True)
            first = False
            states.append(carry[0])
            with torch.no_grad():
                predicted.append(float(agent.wm.reward(agent.reward_name, carry[0].feat())[0]))
            if kind == "zero":
                action = np.zeros_like(action)
            elif kind == "random":
                action = rng.uniform(-1, 1, action.shape).astype(np.float32)
            carry = (carry[0], torch.as_tensor(action))  # the model sees the action actually taken
            obs, reward, terminated, truncated, _ = env.step(action[0])
            rewards.append(reward)
            if terminated or truncated:
                break
    finally:
        env.close()
    return np.array(rewards), np.array(predicted), states


def seeded_episode(policy, task: str, kind: str, index: int, steps: int):
    """``episode`` number ``index`` (0, 1, ...) of a policy kind, on seed FIRST_SEED + index for the environment and
    for torch's generator (the actor's samples and the posterior's latents draw from it), so every kind meets the
    same episodes. Returns ``episode``'s (rewards, predicted rewards, posterior states)."""
    torch.manual_seed(FIRST_SEED + index)
    return episode(policy, task, kind, FIRST_SEED + index, steps, policy.agent.cfg.action_repeat)


@torch.no_grad()
def imagined_return(agent, start: State, kind: str, horizon: int, seed: int) -> float:
    """Mean discounted reward of ``horizon`` imagined steps of ``kind`` from every state in ``start``."""
    gen = torch.Generator().manual_seed(seed)
    shape = (start.deter.shape[0], agent.action_dim)
    policies = {
        "actor": agent.ac.policy,
        "zero": lambda feat: (torch.zeros(shape),) * 2,
        "random": lambda feat: (torch.rand(shape, generator=gen) * 2 - 1,) * 2,
    }
    traj, _, _ = agent.wm.imagine(policies[kind], start, horizon)
    reward = agent.wm.reward(agent.reward_name, traj.feat()[1:])
    discount = agent.ac.settings.discount ** torch.arange(horizon, dtype=reward.dtype)
    return float((discount[:, None] * reward).sum(0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="agent run folder, its checkpoints folder, or one step_* checkpoint")
    parser.add_argument("--task", default=None, help="task (default: the checkpoint's)")
    parser.add_argument("--episodes", type=int, default=3, help="real episodes per policy (seeds 100, 101, ...)")
    parser.add_argument("--steps", type=int, default=200, help="agent steps per episode")
    parser.add_argument("--horizon", type=int, default=15, help="imagination horizon for the model's ranking")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = load_policy(args.run, sample=True)
    agent = policy.agent
    assert not agent.discrete, "diagnose_agent.py handles continuous-action agents"
    task = args.task or torch.load(checkpoint_folder(args.run) / "state.pt", weights_only=False)["meta"]["task"]
    print(f"{args.run}: task {task}, reward head {agent.reward_name!r}, {args.steps}-step episodes")
    for kind in POLICIES:
        returns = []
        for i in range(args.episodes):
            seed = FIRST_SEED + i
            rewards, predicted, states = seeded_episode(policy, task, kind, i, args.steps)
            returns.append(rewards.sum())
            corr = np.corrcoef(predicted[1:], rewards[:-1])[0, 1]
            line = f"  {kind:6s} seed {seed}: real return {rewards.sum():7.1f}, reward prediction corr {corr:5.2f}"
            if i == 0:
                start = State(*(torch.cat(x, 0) for x in zip(*states, strict=True)))
                imagined = {k: imagined_return(agent, start, k, args.horizon, seed) for k in POLICIES}
                line += "; imagined from these states: " + ", ".join(f"{k} {v:.2f}" for k, v in imagined.items())
            print(line)
        print(f"{kind}: mean real return {np.mean(returns):.1f} +- {np.std(returns):.1f}")


if __name__ == "__main__":
    main()
