"""Rank statistics for the reward diagnostics: AUROC (Mann-Whitney) and Spearman, ties averaged."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _finite_1d(name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: expected finite numbers, got {values[~np.isfinite(values)][:5]} among them")
    return values


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2; in [0, 1].

    Computed from average ranks (the Mann-Whitney U statistic / (n_pos * n_neg)).
    """
    pos, neg = _finite_1d("positive", positive), _finite_1d("negative", negative)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"auroc: need at least one score per class, got {pos.size} and {neg.size}")
    ranks = rankdata(np.concatenate([pos, neg]), method="average")
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation: Pearson correlation of average ranks; NaN if either side is constant."""
    x, y = _finite_1d("x", x), _finite_1d("y", y)
    if x.size != y.size or x.size < 2:
        raise ValueError(f"spearman: need two equal-length samples of size >= 2, got {x.size} and {y.size}")
    rx = rankdata(x, method="average") - (x.size + 1) / 2
    ry = rankdata(y, method="average") - (y.size + 1) / 2
    denom = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")
