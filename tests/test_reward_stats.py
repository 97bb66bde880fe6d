"""AUROC and Spearman of viper.eval.stats against slow, obviously-correct definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from viper.eval.stats import auroc, spearman


def slow_auroc(pos, neg) -> float:
    """Fraction of (positive, negative) pairs ordered correctly, ties counting one half."""
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def slow_ranks(x) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def slow_spearman(x, y) -> float:
    rx, ry = slow_ranks(list(x)), slow_ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5


# Small integer-valued floats make ties common.
values = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(values, values)
def test_auroc_matches_pairwise_definition(pos, neg):
    assert auroc(np.array(pos), np.array(neg)) == pytest.approx(slow_auroc(pos, neg), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-4, 4), st.integers(-4, 4)), min_size=3, max_size=15))
def test_spearman_matches_rank_pearson_definition(pairs):
    x = np.array([p[0] for p in pairs], float)
    y = np.array([p[1] for p in pairs], float)
    got = spearman(x, y)
    if len(set(x)) == 1 or len(set(y)) == 1:
        assert np.isnan(got)
    else:
        assert got == pytest.approx(slow_spearman(x, y), abs=1e-12)


def test_extremes_and_bad_inputs():
    assert auroc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert auroc([1.0], [2.0, 3.0]) == 0.0
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="finite"):
        auroc([np.nan, 1.0], [0.0])
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="equal-length"):
        spearman([1.0, 2.0], [1.0])
