"""The value types of configuration fields: known task names and the bounds / forms checked on load.

``viper.sections`` types its fields with these; ``check_value`` (called by ``viper.config`` on every loaded
value) checks a value against its field's type, ``Range`` or ``Matches`` and names the key in the error.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from viper.errors import ViperError
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


class ConfigError(ViperError, ValueError):
    """A configuration key, value or preset that cannot be used; the message says which and why."""


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def scientific(value: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` (no dot) as a string; read it as the float everyone means."""
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)
    return value


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is typing.Annotated:
        base, *extras = typing.get_args(tp)
        return " ".join([type_name(base), *(str(e) for e in extras if isinstance(e, (Range, Matches)))])
    return getattr(tp, "__name__", str(tp))


def check_value(key: str, value: Any, tp: Any, bounded: bool = False) -> Any:
    """Return ``value`` converted to ``tp`` or raise ``ConfigError`` naming the key and expectation. Numbers are
    never negative unless ``bounded`` (an annotated ``Range`` states the bounds instead)."""

    def fail() -> typing.NoReturn:
        raise ConfigError(f"{key}={value!r}: expected {type_name(tp)}, got {type(value).__name__}")

    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}={value!r}: expected {type_name(tp)}")
        return value
    if typing.get_origin(tp) is typing.Annotated:
        base, *extras = typing.get_args(tp)
        if isinstance(value, float) and value != value:  # NaN: the field's own bounds, not the plain ">= 0"
            raise ConfigError(f"{key}=nan: expected {type_name(tp)}")
        value = check_value(key, value, base, bounded=any(isinstance(e, Range) for e in extras))
        for bounds in (e for e in extras if isinstance(e, Range)):
            if not bounds.holds(value):
                raise ConfigError(f"{key}={value!r}: expected {type_name(tp)}")
        for form in (e for e in extras if isinstance(e, Matches)):
            if re.fullmatch(form.pattern, value) is None:
                raise ConfigError(f"{key}={value!r}: expected {type_name(tp)}")
        return value
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            fail()
        item = typing.get_args(tp)[0]
        return tuple(check_value(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if tp in (int, float):
        value = scientific(value) if tp is float else value
        if isinstance(value, bool) or not isinstance(value, (int, float) if tp is float else int):
            fail()
        if value != value or (not bounded and value < 0):  # NaN never passes
            raise ConfigError(f"{key}={value!r}: expected {type_name(tp)} >= 0")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            fail()
        return value
    if isinstance(tp, types.UnionType):
        raise ConfigError(f"{key}: union types are not supported in configs")
    fail()
