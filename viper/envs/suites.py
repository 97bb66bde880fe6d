"""Task registry: which tasks each suite has, and each suite's default action repeat and episode length.

Task names are ``<suite>/<task>`` as the published VIPER data names them (``dmc/cartpole_balance``,
``atari/pong``). The task lists themselves live in ``viper.config`` (one source for configs and envs).
"""

from __future__ import annotations

from dataclasses import dataclass

from viper.config import ATARI_TASKS, DMC_TASKS
from viper.errors import ViperError


@dataclass(frozen=True)
class SuiteDefaults:
    """Per-suite defaults that ``viper.envs.make`` uses where an argument is ``None``."""

    action_repeat: int
    """Environment steps per agent action (DMC: control steps; Atari: emulator frames, i.e. frame skip)."""
    episode_frames: int
    """Environment steps (control steps, emulator frames) per episode, whatever the action repeat."""

    @property
    def episode_env_steps(self) -> int:
        """Agent steps per episode at the suite's own action repeat."""
        return self.steps_at(self.action_repeat)

    def steps_at(self, action_repeat: int) -> int:
        """Agent steps per episode at ``action_repeat``: the episode keeps its length in time (a DMC episode is
        1000 control steps at any repeat, so its returns stay comparable with the published ones)."""
        return -(-self.episode_frames // max(1, int(action_repeat)))


SUITES: dict[str, tuple[str, ...]] = {"dmc": DMC_TASKS, "atari": ATARI_TASKS}

# DMC: 1000 control steps per episode in every suite task = 500 agent steps at repeat 2.
# Atari: 108,000 emulator frames (30 minutes of play, ALE v5's cap) = 27,000 agent steps at frame skip 4.
DEFAULTS: dict[str, SuiteDefaults] = {
    "dmc": SuiteDefaults(action_repeat=2, episode_frames=1000),
    "atari": SuiteDefaults(action_repeat=4, episode_frames=108_000),
}


def suites() -> tuple[str, ...]:
    """Names of the known suites."""
    return tuple(SUITES)


def tasks(suite: str) -> tuple[str, ...]:
    """Full task names of one suite, e.g. ``tasks("dmc")[0] == "dmc/acrobot_swingup"``."""
    if suite not in SUITES:
        raise ViperError(f"unknown suite {suite!r}; known suites: {', '.join(SUITES)}")
    return SUITES[suite]


def all_tasks() -> tuple[str, ...]:
    """Every known task of every suite."""
    return tuple(t for names in SUITES.values() for t in names)


def suite_of(task: str) -> str:
    """``"dmc/cartpole_balance"`` -> ``"dmc"``; an unknown task raises ``ViperError`` listing the known ones."""
    check_task(task)
    return task.split("/", 1)[0]


def check_task(task: str) -> None:
    """Raise ``ViperError`` naming the known tasks unless ``task`` is one of them."""
    if not isinstance(task, str) or task not in all_tasks():
        suite = task.split("/", 1)[0] if isinstance(task, str) and "/" in task else None
        known = SUITES.get(suite, all_tasks()) if suite else all_tasks()
        raise ViperError(f"unknown task {task!r}: expected '<suite>/<task>' with one of: {', '.join(known)}")


def defaults(task_or_suite: str) -> SuiteDefaults:
    """The suite defaults for a task (``"dmc/cartpole_balance"``) or a suite name (``"dmc"``)."""
    suite = task_or_suite if task_or_suite in SUITES else suite_of(task_or_suite)
    return DEFAULTS[suite]
