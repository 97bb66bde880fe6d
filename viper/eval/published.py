"""Published VIPER results (Escontrela et al., 2023), read from the paper's figures: +-5-10% of the axis.

Source: the paper's result figures (Escontrela et al. 2023, arXiv:2305.14343; per-task values read off the
plots). DMC: episode return (max 1000) at ~15M env frames; Atari:
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
# Scores of uniformly random play and of a human tester per game (Mnih et al., 2015; the table Badia et al.,
# 2020, reprint for Agent57): a game score s is human-normalised as (s - random) / (human - random), which is
# how the paper reports Atari.
ATARI_RANDOM_HUMAN = {
    "assault": (222.4, 742.0),
    "atlantis": (12850.0, 29028.1),
    "boxing": (0.1, 12.1),
    "defender": (2874.5, 18688.9),
    "freeway": (0.0, 29.6),
    "kangaroo": (52.0, 3035.0),
    "pong": (-20.7, 14.6),
    "zaxxon": (32.5, 9173.3),
}
# Ratios the targets ask of a 100k-frame run (shared/TARGETS.md).
TARGET_RATIO = {"dmc/cartpole_balance": 0.85, "dmc/cartpole_swingup": 0.85, "dmc/pendulum_swingup": 0.6}


def in_published_unit(task: str, score: float | None) -> float | None:
    """A return of ours in the unit the paper reports ``task`` in: DMC as it is, Atari human-normalised."""
    suite, _, name = task.partition("/")
    if score is None or suite != "atari":
        return score
    random, human = ATARI_RANDOM_HUMAN[name]
    return (score - random) / (human - random)


def published(task: str) -> Published:
    """Published oracle / VIPER numbers for ``suite/name`` (both ``None`` when the paper has none)."""
    suite, _, name = task.partition("/")
    table, unit = (DMC, "return") if suite == "dmc" else (ATARI, "human-normalised")
    oracle, viper = table.get(name, (None, None))
    return Published(oracle, viper, unit)
