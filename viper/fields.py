"""The value types of configuration fields: known task names and the bounds / forms checked on load.

``viper.sections`` types its fields with these; ``viper.config`` checks a loaded value against a field's
``Range`` or ``Matches`` and names it in the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from viper.runtime import DEVICE_NAMES, DEVICE_PATTERN

DMC_TASKS = (
    "dmc/acrobot_swingup",
    "dmc/cartpole_balance",
    "dmc/cartpole_swingup",
    "dmc/cheetah_run",
    "dmc/cup_catch",
    "dmc/finger_spin",
    "dmc/finger_turn_hard",
    "dmc/hopper_stand",
    "dmc/manipulator_bring_ball",
    "dmc/pendulum_swingup",
    "dmc/pointmass_easy",
    "dmc/pointmass_hard",
    "dmc/quadruped_run",
    "dmc/quadruped_walk",
    "dmc/reacher_easy",
    "dmc/reacher_hard",
    "dmc/walker_walk",
)
ATARI_TASKS = (
    "atari/assault",
    "atari/atlantis",
    "atari/boxing",
    "atari/defender",
    "atari/freeway",
    "atari/kangaroo",
    "atari/pong",
    "atari/zaxxon",
)
Task = Literal[DMC_TASKS + ATARI_TASKS]
"""A known task, ``<suite>/<task>``."""


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field, checked when a configuration loads: inclusive, or above ``low`` with
    ``above=True``."""

    low: float = 0
    high: float | None = None
    above: bool = False

    def holds(self, value: float) -> bool:
        low_ok = value > self.low if self.above else value >= self.low
        return low_ok and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        if self.high is not None:
            return f"in {'(' if self.above else '['}{self.low}, {self.high}]"
        return f"{'>' if self.above else '>='} {self.low}"


@dataclass(frozen=True)
class Matches:
    """The form of a string field (a regular expression the whole value must match), checked on load."""

    pattern: str
    meaning: str

    def __str__(self) -> str:
        return f"({self.meaning})"


Device = Annotated[str, Matches(DEVICE_PATTERN, DEVICE_NAMES)]
"""A torch device setting (``viper.runtime.resolve_device`` turns it into a device)."""
Count = Annotated[int, Range(1)]
"""A size, a count or an interval: at least 1."""
Fraction = Annotated[float, Range(0, 1)]
