"""``make_policy(spec, task, env, seed)``: parse a policy spec and build the policy for one env.

Specs: ``expert`` (the task's scripted expert), ``random``, ``noisy:<epsilon>`` (the expert, with a uniformly
random action with probability epsilon), ``checkpoint:<path>`` (a trained agent, through
``viper.agent.policy.load_policy``), ``noisy:<epsilon>:checkpoint:<path>`` (that agent with the same noise: the
noisy expert of a task without a scripted one).

Expert settings (``collect.expert_settings``) retune a scripted expert's numeric class attributes for one task,
written ``<task>:<attribute>=<value>``, e.g. ``dmc/cartpole_swingup:pump_gain=4.0``; they apply wherever that
expert acts (``expert`` and ``noisy:<epsilon>``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from viper.envs import suites
from viper.errors import ViperError
from viper.experts.base import NoisyPolicy, Policy, RandomPolicy
from viper.experts.dmc_scripted import SCRIPTED_DMC
from viper.experts.pong import PongExpert

SCRIPTED = {**SCRIPTED_DMC, "atari/pong": PongExpert}
"""Task -> scripted expert class (constructed with the env it acts in)."""
SPEC_FORMS = "'expert', 'random', 'noisy:<epsilon in [0, 1]>[:checkpoint:<path>]' or 'checkpoint:<path>'"
SETTING_FORM = "'<task>:<attribute>=<number>', e.g. 'dmc/cartpole_swingup:pump_gain=4.0'"


def scripted_tasks() -> tuple[str, ...]:
    """Tasks that have a scripted expert."""
    return tuple(sorted(SCRIPTED))


def needs_trained_expert(policy: str, task: str) -> bool:
    """Whether collecting ``task`` under ``collect.policy`` ``policy`` needs the agent ``viper expert`` trains:
    ``expert`` on a task without a scripted one (the ``expert`` stage runs before ``collect`` for it)."""
    return policy == "expert" and task not in SCRIPTED


def _check_scripted(task: str) -> None:
    suites.check_task(task)
    if task not in SCRIPTED:
        raise ViperError(
            f"no scripted expert for {task!r}; tasks with one: {', '.join(scripted_tasks())} "
            "(for other tasks collect with 'checkpoint:<path>' from an agent trained on the task reward)"
        )


def tunable_attributes(task: str) -> tuple[str, ...]:
    """Names of the numeric class attributes of ``task``'s scripted expert that expert settings may change."""
    _check_scripted(task)
    cls = SCRIPTED[task]
    names = {n for klass in cls.__mro__ for n in vars(klass) if not n.startswith("_")}
    numeric = [n for n in names if isinstance(getattr(cls, n), (int, float)) and not isinstance(getattr(cls, n), bool)]
    return tuple(sorted(numeric))


def _split_setting(entry: str) -> tuple[str, str, str, str]:
    """``"<task>:<attribute>=<value>"`` -> (task, attribute, "=" or "", value), task and attribute stripped."""
    name, _, assignment = str(entry).rpartition(":")
    attribute, eq, raw = assignment.partition("=")
    return name.strip(), attribute.strip(), eq, raw


def settings_of_task(entries: Iterable[str], task: str) -> tuple[str, ...]:
    """The entries of ``entries`` that name ``task`` (unparsed, in order)."""
    return tuple(entry for entry in entries if _split_setting(entry)[0] == task)


def parse_expert_settings(entries: Iterable[str], task: str | None = None) -> dict[str, dict[str, float]]:
    """``["dmc/cartpole_swingup:pump_gain=4.0"]`` -> ``{"dmc/cartpole_swingup": {"pump_gain": 4.0}}``.

    Every entry is checked (its task has a scripted expert that has the attribute, the value is a finite number);
    with ``task``, only that task's settings are returned. ``ViperError`` names the entry and the expected form.
    """
    out: dict[str, dict[str, float]] = {}
    for entry in entries:
        name, attribute, eq, raw = _split_setting(entry)
        if not name or not attribute or not eq:
            raise ViperError(f"expert setting {entry!r}: expected {SETTING_FORM}")
        try:
            allowed = tunable_attributes(name)
        except ViperError as exc:
            raise ViperError(f"expert setting {entry!r}: {exc}") from None
        if attribute not in allowed:
            raise ViperError(
                f"expert setting {entry!r}: the {name} expert has no setting {attribute!r}; "
                f"settings: {', '.join(allowed)}"
            )
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            raise ViperError(f"expert setting {entry!r}: {raw.strip()!r} is not a finite number")
        if isinstance(getattr(SCRIPTED[name], attribute), int):  # a step count, say: range() takes no float
            if value != int(value):
                raise ViperError(f"expert setting {entry!r}: {attribute} counts something; expected a whole number")
            value = int(value)
        out.setdefault(name, {})[attribute] = value
    return out if task is None else {task: out[task]} if task in out else {}


def make_expert(task: str, env, settings: dict[str, float] | None = None) -> Policy:
    """The scripted expert of ``task`` acting in ``env``, with ``settings`` (attribute -> value, already checked
    by ``parse_expert_settings``) set on it; ``ViperError`` listing the tasks that have one."""
    _check_scripted(task)
    expert = SCRIPTED[task](env)
    for attribute, value in (settings or {}).items():
        setattr(expert, attribute, value)
    return expert


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


def spec_problem(policy: str) -> str | None:
    """Why ``policy`` is not a form ``collect`` accepts (the reason, without the setting's name), or ``None``.

    A ``checkpoint:<path>`` may not exist yet (the ``expert`` stage writes it); collect checks the path.
    """
    kind, _, rest = policy.partition(":")
    if policy in ("expert", "random", "published") or (kind == "checkpoint" and rest):
        return None
    if kind == "noisy":
        raw, _, inner = rest.partition(":")
        epsilon = f"noisy:{raw}"
        try:
            parse_epsilon(epsilon)
        except ViperError as exc:  # its text names `policy 'noisy:<eps>'`
            return str(exc).removeprefix(f"policy {epsilon!r}: ")
        inner_kind, _, path = inner.partition(":")
        if not inner or (inner_kind == "checkpoint" and path):
            return None
        return f"only a checkpoint agent takes noise this way; expected {SPEC_FORMS}"
    return f"unknown policy; expected {SPEC_FORMS} (or 'published': import the published videos)"


def checkpoint_of(spec: str) -> str | None:
    """The agent path a ``checkpoint:<path>`` or ``noisy:<epsilon>:checkpoint:<path>`` spec loads, else ``None``."""
    kind, _, rest = spec.partition(":")
    if kind == "noisy":
        kind, _, rest = rest.partition(":")[2].partition(":")
    return rest if kind == "checkpoint" and rest else None


def load_checkpoint_policy(spec: str, seed: int = 0, sample: bool = False) -> Policy:
    """A trained agent from ``checkpoint:<path>`` (its sampling seeded by ``seed``); clear errors for a missing
    path or a missing agent module."""
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
    return load_policy(path, sample=sample, seed=seed)


def make_policy(
    spec: str, task: str, env, seed: int, expert_settings: Iterable[str] = (), sample: bool = False
) -> Policy:
    """Build the policy ``spec`` for ``task`` acting in ``env`` (see the module docstring for specs).

    Random choices (``random``, ``noisy``, a checkpoint agent's sampling) are seeded from ``seed``, so a rollout
    is reproducible.
    ``expert_settings`` (entries for any task; only ``task``'s apply) retune the scripted expert. ``sample``: a
    checkpoint agent samples its actions instead of playing their mode.
    """
    if not isinstance(spec, str):
        raise ViperError(f"policy {spec!r}: expected {SPEC_FORMS}")
    kind = spec.partition(":")[0]
    settings = parse_expert_settings(expert_settings, task).get(task)
    if spec == "expert":
        return make_expert(task, env, settings)
    if spec == "random":
        suites.check_task(task)
        return RandomPolicy(env.action_space, seed)
    if kind == "noisy":
        raw, _, inner = spec.partition(":")[2].partition(":")
        epsilon = parse_epsilon(f"noisy:{raw}")
        if inner and inner.partition(":")[0] != "checkpoint":
            raise ViperError(f"policy {spec!r}: only a checkpoint agent takes noise this way; expected {SPEC_FORMS}")
        base = make_policy(inner, task, env, seed, sample=sample) if inner else make_expert(task, env, settings)
        return NoisyPolicy(base, epsilon, env.action_space, seed)
    if kind == "checkpoint":
        suites.check_task(task)
        return load_checkpoint_policy(spec, seed, sample)
    raise ViperError(f"policy {spec!r}: unknown policy; expected {SPEC_FORMS}")
