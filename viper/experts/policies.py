"""``make_policy(spec, task, env, seed)``: parse a policy spec and build the policy for one env.

Specs: ``expert`` (the task's scripted expert), ``random``, ``noisy:<epsilon>`` (the expert, with a uniformly
random action with probability epsilon), ``checkpoint:<path>`` (a trained agent, through
``viper.agent.policy.load_policy``).
"""

from __future__ import annotations

from pathlib import Path

from viper.envs import suites
from viper.errors import ViperError
from viper.experts.base import NoisyPolicy, Policy, RandomPolicy
from viper.experts.dmc_scripted import SCRIPTED_DMC
from viper.experts.pong import PongExpert

SCRIPTED = {**SCRIPTED_DMC, "atari/pong": PongExpert}
"""Task -> scripted expert class (constructed with the env it acts in)."""
SPEC_FORMS = "'expert', 'random', 'noisy:<epsilon in [0, 1]>' or 'checkpoint:<path>'"


def scripted_tasks() -> tuple[str, ...]:
    """Tasks that have a scripted expert."""
    return tuple(sorted(SCRIPTED))


def make_expert(task: str, env) -> Policy:
    """The scripted expert of ``task`` acting in ``env``; ``ViperError`` listing the tasks that have one."""
    suites.check_task(task)
    if task not in SCRIPTED:
        raise ViperError(
            f"no scripted expert for {task!r}; tasks with one: {', '.join(scripted_tasks())} "
            "(for other tasks collect with 'checkpoint:<path>' from an agent trained on the task reward)"
        )
    return SCRIPTED[task](env)


def parse_epsilon(spec: str) -> float:
    """``"noisy:0.25"`` -> 0.25, or ``ViperError`` naming the spec and the expected form."""
    raw = spec.partition(":")[2]
    try:
        epsilon = float(raw)
    except ValueError:
        raise ViperError(f"policy {spec!r}: epsilon {raw!r} is not a number; expected {SPEC_FORMS}") from None
    if not 0.0 <= epsilon <= 1.0:
        raise ViperError(f"policy {spec!r}: epsilon must be in [0, 1], got {epsilon}")
    return epsilon


def load_checkpoint_policy(spec: str) -> Policy:
    """A trained agent from ``checkpoint:<path>``; clear errors for a missing path or a missing agent module."""
    path = Path(spec.partition(":")[2])
    if not str(path) or str(path) == ".":
        raise ViperError(f"policy {spec!r}: expected 'checkpoint:<path to an agent run or checkpoint folder>'")
    if not path.exists():
        raise ViperError(f"policy {spec!r}: {path} does not exist (expected an agent run or checkpoint folder)")
    try:
        # Lazy: the agent (torch, the world model) is only needed for this policy type.
        from viper.agent.policy import load_policy
    except ImportError as exc:
        raise ViperError(
            f"policy {spec!r}: checkpoint policies need viper.agent.policy.load_policy, which cannot be "
            f"imported ({exc}); use 'expert', 'random' or 'noisy:<epsilon>' until the agent is available"
        ) from exc
    return load_policy(path)


def make_policy(spec: str, task: str, env, seed: int) -> Policy:
    """Build the policy ``spec`` for ``task`` acting in ``env`` (see the module docstring for specs).

    Random choices (``random``, ``noisy``) are seeded from ``seed``, so a rollout is reproducible.
    """
    if not isinstance(spec, str):
        raise ViperError(f"policy {spec!r}: expected {SPEC_FORMS}")
    kind = spec.partition(":")[0]
    if spec == "expert":
        return make_expert(task, env)
    if spec == "random":
        suites.check_task(task)
        return RandomPolicy(env.action_space, seed)
    if kind == "noisy":
        epsilon = parse_epsilon(spec)
        return NoisyPolicy(make_expert(task, env), epsilon, env.action_space, seed)
    if kind == "checkpoint":
        suites.check_task(task)
        return load_checkpoint_policy(spec)
    raise ViperError(f"policy {spec!r}: unknown policy; expected {SPEC_FORMS}")
