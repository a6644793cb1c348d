"""analysis/uncertainty.py against hand computation and exact enumeration: IQM, the stratified bootstrap's
percentile interval, the probability of improvement and its interval."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from analysis.uncertainty import (iqm, mean, probability_of_improvement,
                                  probability_of_improvement_ci, stratified_bootstrap_ci)


def exact_band(values, q: float, reps: int, k: float = 4.0) -> tuple[float, float]:
    """Where a bootstrap percentile at level q can fall when the replicates follow the exact distribution of
    the equally likely ``values``: between its exact quantiles (smallest v with F(v) >= level) at q -+ k
    standard errors of an empirical CDF from ``reps`` draws, sqrt(q (1 - q) / reps). The tolerance: a
    bound outside the band is off by more than k = 4 standard errors. When no jump of F lies in the band,
    it is one point and the bound must equal the exact quantile."""
    support, counts = np.unique(np.round(values, 12), return_counts=True)
    cdf = np.cumsum(counts) / counts.sum()
    eps = k * np.sqrt(q * (1 - q) / reps)
    return float(support[np.searchsorted(cdf, q - eps)]), float(support[np.searchsorted(cdf, q + eps)])


def within(x: float, band: tuple[float, float]) -> bool:
    return band[0] - 1e-12 <= x <= band[1] + 1e-12


# -- IQM ------------------------------------------------------------------------------------------------

def test_iqm_by_hand():
    assert iqm([1.0, 2.0, 3.0, 4.0]) == pytest.approx(2.5)  # N = 4, k = 1: mean(2, 3)
    assert iqm([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx(3.0)  # k = 1: mean(2, 3, 4), the outlier cut
    # (4, 2) pooled: 0 1 2 3 4 5 6 100, k = 2: mean(2, 3, 4, 5)
    assert iqm([[1, 100], [2, 3], [4, 5], [0, 6]]) == pytest.approx(3.5)
    assert iqm([[1.0], [2.0], [6.0]]) == pytest.approx(3.0)  # N < 4: nothing cut, the mean
    stack = np.array([[[1, 2], [3, 4]], [[1, 2], [3, 100]]], dtype=float)  # (2, 2, 2): one IQM per matrix
    assert iqm(stack) == pytest.approx([2.5, 2.5]) and mean(stack) == pytest.approx([2.5, 26.5])


# -- stratified bootstrap -------------------------------------------------------------------------------

def test_bootstrap_of_a_constant_is_the_constant():
    x = np.full((4, 3), 0.625)  # a dyadic fraction: sums of it are exact, so the equality can be exact
    for stat in (np.mean, iqm, np.median):
        assert stratified_bootstrap_ci(x, stat, reps=500) == (0.625, 0.625, 0.625)


@pytest.mark.parametrize(("confidence", "expect"), [(0.95, (0.0, 3.0)), (0.6, (2 / 3, 2.0))])
def test_bootstrap_interval_matches_the_27_exact_resamples(confidence, expect):
    """3 runs, 1 task: the resampled mean takes 27 equally likely values (3^3 ordered draws)."""
    x, reps = np.array([0.0, 1.0, 3.0]), 20_000
    exact = [np.mean(t) for t in itertools.product(x, repeat=3)]
    tail = (1 - confidence) / 2
    lo_band, hi_band = exact_band(exact, tail, reps), exact_band(exact, 1 - tail, reps)
    # By hand: F = 1/27, 4/27, 7/27, 11/27, 17/27, 20/27, 23/27, 26/27, 1 at 0, 1/3, .., 3; the levels
    # 0.025, 0.2, 0.8, 0.975 lie between jumps, more than 4 standard errors from each: one exact value.
    assert lo_band == pytest.approx((expect[0], expect[0])) and hi_band == pytest.approx((expect[1], expect[1]))
    point, lo, hi = stratified_bootstrap_ci(x, np.mean, reps=reps, confidence=confidence, seed=1)
    assert point == pytest.approx(4 / 3)
    assert lo == pytest.approx(expect[0], abs=1e-12) and hi == pytest.approx(expect[1], abs=1e-12)


def test_bootstrap_replicates_follow_the_exact_distribution():
    seen = []

    def record(s):
        seen.append(s.copy())
        return float(s.mean())

    x, reps = np.array([0.0, 1.0, 3.0]), 20_000
    stratified_bootstrap_ci(x, record, reps=reps)
    means = np.round([s.mean() for s in seen[:reps]], 12)  # the replicates, then the point estimate
    support, counts = np.unique(np.round([np.mean(t) for t in itertools.product(x, repeat=3)], 12),
                                return_counts=True)
    for v, c in zip(support, counts):
        p = c / 27
        assert abs(np.mean(means == v) - p) < 5 * np.sqrt(p * (1 - p) / reps), v  # 5 binomial standard errors


def test_bootstrap_is_stratified_per_task():
    # Two tasks on very different scales: every resample keeps 3 runs per task, each drawn from its own task.
    x = np.array([[0.0, 100.0], [1.0, 101.0], [2.0, 102.0]])
    seen = []
    stratified_bootstrap_ci(x, lambda s: seen.append(s.copy()) or 0.0, reps=300)
    assert all(s.shape == (3, 2) and set(s[:, 0]) <= {0, 1, 2} and set(s[:, 1]) <= {100, 101, 102} for s in seen)
    # Pooled resampling would mix the scales; row resampling would keep column 1 - column 0 at exactly 100.
    _, lo, hi = stratified_bootstrap_ci(x, lambda s: float(np.mean(s[:, 1] - s[:, 0])), reps=2000)
    assert 98.0 <= lo < 100.0 < hi <= 102.0


def test_bootstrap_interval_matches_the_729_exact_stratified_resamples():
    """(3, 2): resamples are 3 run indices per task, 3^6 = 729 equally likely; the overall mean."""
    x, reps, confidence = np.array([[0.0, 40.0], [1.0, 20.0], [3.0, 10.0]]), 20_000, 0.9
    exact = [x[list(i[:3]), 0].mean() / 2 + x[list(i[3:]), 1].mean() / 2 for i in itertools.product(range(3), repeat=6)]
    point, lo, hi = stratified_bootstrap_ci(x, np.mean, reps=reps, confidence=confidence, seed=3)
    assert point == pytest.approx(x.mean())
    assert within(lo, exact_band(exact, 0.05, reps)) and within(hi, exact_band(exact, 0.95, reps))
    # Resampling whole rows (the same runs in both tasks) would let the opposed tasks cancel: 27 resamples,
    # a narrower interval, (7.83, 16.83) against the stratified (6.83 .. 7.0, 17.67 .. 17.83).
    rows = [x[list(i)].mean() for i in itertools.product(range(3), repeat=3)]
    assert not within(lo, exact_band(rows, 0.05, reps)) and not within(hi, exact_band(rows, 0.95, reps))


def test_bootstrap_is_seeded_and_vectorized_gives_the_same_interval():
    x = np.random.default_rng(0).normal(size=(5, 4))
    a = stratified_bootstrap_ci(x, iqm, reps=300, seed=7)
    assert a == stratified_bootstrap_ci(x, iqm, reps=300, seed=7)
    assert a != stratified_bootstrap_ci(x, iqm, reps=300, seed=8)
    assert a[1] <= a[0] <= a[2]
    assert stratified_bootstrap_ci(x, iqm, reps=300, seed=7, vectorized=True) == pytest.approx(a, abs=1e-12)
    assert stratified_bootstrap_ci(x, mean, reps=300, seed=7, vectorized=True) == pytest.approx(
        stratified_bootstrap_ci(x, np.mean, reps=300, seed=7), abs=1e-12)


# -- probability of improvement -------------------------------------------------------------------------

def test_probability_of_improvement_by_hand():
    # x = 1 2 3 against y = 0 2 4, 9 pairs: 1 beats 0 (1); 2 beats 0, ties 2 (1.5); 3 beats 0 and 2 (2): 4.5 / 9.
    assert probability_of_improvement([[1], [2], [3]], [[0], [2], [4]]) == pytest.approx(0.5)
    # A second task, 5 6 7 against 5 5 5: three ties (1.5) and six wins: 7.5 / 9. Tasks averaged: (4.5 + 7.5) / 18.
    x, y = [[1, 5], [2, 6], [3, 7]], [[0, 5], [2, 5], [4, 5]]
    assert probability_of_improvement(x, y) == pytest.approx(2 / 3)
    assert probability_of_improvement(y, x) == pytest.approx(1 / 3)
    # Unequal run counts: 1 3 against 2 2 0, 6 pairs: 1 beats 0 (1); 3 beats all three (3): 4 / 6.
    assert probability_of_improvement([1, 3], [2, 2, 0]) == pytest.approx(2 / 3)


def test_probability_of_improvement_is_the_normalised_mann_whitney_u():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, size=(6, 3)), rng.integers(0, 5, size=(4, 3))  # small integers: many ties
    u = [stats.mannwhitneyu(x[:, t], y[:, t]).statistic / (6 * 4) for t in range(3)]
    assert probability_of_improvement(x, y) == pytest.approx(np.mean(u), abs=1e-12)
    assert probability_of_improvement(x, y) + probability_of_improvement(y, x) == pytest.approx(1.0, abs=1e-12)
    assert probability_of_improvement(x, x) == pytest.approx(0.5, abs=1e-12)


def test_probability_of_improvement_interval():
    assert probability_of_improvement_ci(np.ones((3, 2)), np.zeros((4, 2)), reps=200) == (1.0, 1.0, 1.0)
    # x = 1 3 against the single run y = 2: a resample of x wins 0, 1 or 2 of 2 draws, P = 1/4, 1/2, 1/4,
    # so P(X > Y) is 0, 0.5 or 1; the 40 % interval (quantiles 0.3, 0.7) is exactly 0.5, the 95 % one 0 .. 1.
    exact, reps = [0.0, 0.5, 0.5, 1.0], 20_000
    assert exact_band(exact, 0.3, reps) == exact_band(exact, 0.7, reps) == (0.5, 0.5)
    assert probability_of_improvement_ci([1, 3], [2], reps=reps, confidence=0.4) == (0.5, 0.5, 0.5)
    assert probability_of_improvement_ci([1, 3], [2], reps=reps) == (0.5, 0.0, 1.0)


# -- bad input ------------------------------------------------------------------------------------------

def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match=r"scores: expected a \(runs, tasks\) array, got shape \(\)"):
        iqm(0.5)
    with pytest.raises(ValueError, match=r"scores: expected a \(runs, tasks\) array, got shape \(2, 2, 2\)"):
        stratified_bootstrap_ci(np.zeros((2, 2, 2)), np.mean)
    with pytest.raises(ValueError, match=r"statistic: expected 10 values, one per resample, got shape \(\)"):
        stratified_bootstrap_ci(np.zeros((2, 2)), np.mean, reps=10, vectorized=True)  # np.mean pools the stack
    with pytest.raises(ValueError, match="scores: empty"):
        stratified_bootstrap_ci(np.zeros((0, 3)), np.mean)
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        iqm([1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="x and y: need the same tasks, got 2 and 3"):
        probability_of_improvement(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="y: empty"):
        probability_of_improvement_ci([1.0], [])
    with pytest.raises(ValueError, match="confidence"):
        stratified_bootstrap_ci([1.0, 2.0], np.mean, confidence=95)
    with pytest.raises(ValueError, match="reps"):
        probability_of_improvement_ci([1.0], [2.0], reps=0)
