"""The published expert-data filter: keep high-return episodes, drop their first frames, cap, split 95/5.

Published DMC data (viper_rl's ``prepare_data.ipynb``): keep episodes at or above the 90th percentile of return,
drop the first 50 frames of each, at most 500 per task, 95/5 train/test split. Atari: no return filter. All
four knobs live in ``CollectConfig`` (``keep_return_percentile``, ``drop_first_frames``,
``max_episodes_per_task``, ``test_fraction``).
"""

from __future__ import annotations

import zlib

import numpy as np

from viper.errors import ViperError


def task_key(task: str) -> int:
    """A stable per-task integer for seeding (CRC32 of the name; Python's ``hash`` is randomised per run)."""
    return zlib.crc32(task.encode())


def select_episodes(returns: np.ndarray, keep_return_percentile: float, max_episodes: int) -> np.ndarray:
    """Indices (int64, ascending) of the episodes kept: return >= the percentile of ``returns`` (linear
    interpolation, numpy's default; 0 keeps all), then at most ``max_episodes`` of them, the highest returns
    first (ties: lower index first)."""
    returns = np.asarray(returns, dtype=np.float64)
    if not 0.0 <= keep_return_percentile <= 100.0:
        raise ViperError(f"collect.keep_return_percentile {keep_return_percentile}: expected 0..100")
    if max_episodes < 1:
        raise ViperError(f"collect.max_episodes_per_task {max_episodes}: expected >= 1")
    if returns.size == 0:
        return np.zeros(0, np.int64)
    if keep_return_percentile > 0 and np.isnan(returns).any():
        raise ViperError("return filter: some episodes have no return (NaN); set keep_return_percentile 0")
    if keep_return_percentile > 0:
        kept = np.flatnonzero(returns >= np.percentile(returns, keep_return_percentile))
    else:
        kept = np.arange(returns.size)
    if kept.size > max_episodes:
        # Stable sort on -return keeps lower indices first among equal returns.
        kept = kept[np.argsort(-returns[kept], kind="stable")[:max_episodes]]
    return np.sort(kept).astype(np.int64)


def assign_split(num_episodes: int, test_fraction: float, seed: int, task: str) -> np.ndarray:
    """Split codes uint8 (E,) (0 train, 1 test): ``round(test_fraction * E)`` test episodes chosen by a
    permutation seeded from ``(seed, task)``; at least one test and one train episode when E >= 2 and
    ``test_fraction > 0``."""
    if not 0.0 <= test_fraction < 1.0:
        raise ViperError(f"collect.test_fraction {test_fraction}: expected 0 <= fraction < 1")
    split = np.zeros(num_episodes, np.uint8)
    num_test = int(round(test_fraction * num_episodes))
    if test_fraction > 0 and num_episodes >= 2:
        num_test = min(max(num_test, 1), num_episodes - 1)
    rng = np.random.default_rng([seed, task_key(task)])
    split[rng.permutation(num_episodes)[:num_test]] = 1
    return split


def trim_episode(episode: dict[str, np.ndarray], drop_first_frames: int) -> dict[str, np.ndarray] | None:
    """The episode without its first ``drop_first_frames`` frames (and action/reward rows); None if nothing
    would be left."""
    if drop_first_frames < 0:
        raise ViperError(f"collect.drop_first_frames {drop_first_frames}: expected >= 0")
    if len(episode["frames"]) <= drop_first_frames:
        return None
    return {k: v[drop_first_frames:] for k, v in episode.items()}
