"""Published VIPER results (Escontrela et al., 2023), read from the paper's figures: +-5-10% of the axis.

Source: shared/reference/viper-original.md. DMC: episode return (max 1000) at ~15M env frames; Atari:
human-normalised score at 10M env frames. ``None`` where the paper reports nothing for the task.
"""

from __future__ import annotations

from typing import NamedTuple


class Published(NamedTuple):
    oracle: float | None
    """Return of DreamerV3 trained on the task reward."""
    viper: float | None
    """Return of DreamerV3 trained on the VIPER reward."""
    unit: str
    """``return`` (DMC) or ``human-normalised`` (Atari)."""


DMC = {
    "cartpole_balance": (1000, 850),
    "cartpole_swingup": (850, 720),
    "cheetah_run": (880, 880),
    "cup_catch": (950, 930),
    "finger_spin": (900, 890),
    "finger_turn_hard": (900, 930),
    "hopper_stand": (920, 830),
    "pendulum_swingup": (800, 480),
    "pointmass_easy": (880, 500),
    "pointmass_hard": (800, 300),
    "quadruped_run": (900, 920),
    "quadruped_walk": (930, 950),
    "reacher_easy": (970, 620),
    "reacher_hard": (900, 400),
    "walker_walk": (970, 940),
}
ATARI = {
    "assault": (4.4, 0.8),
    "atlantis": (60.0, 60.0),
    "boxing": (7.5, 6.7),
    "freeway": (0.3, 0.9),
    "kangaroo": (2.7, 4.6),
    "pong": (1.0, 1.0),
    "zaxxon": (1.45, 0.05),
}
# Ratios the targets ask of a 100k-frame run (shared/TARGETS.md).
TARGET_RATIO = {"dmc/cartpole_balance": 0.85, "dmc/cartpole_swingup": 0.85, "dmc/pendulum_swingup": 0.6}


def published(task: str) -> Published:
    """Published oracle / VIPER numbers for ``suite/name`` (both ``None`` when the paper has none)."""
    suite, _, name = task.partition("/")
    table, unit = (DMC, "return") if suite == "dmc" else (ATARI, "human-normalised")
    oracle, viper = table.get(name, (None, None))
    return Published(oracle, viper, unit)
