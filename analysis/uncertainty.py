"""How sure a comparison over a few seeds is: the interquartile mean, stratified-bootstrap confidence
intervals and the probability of improvement, as rliable reports them.

Reference: R. Agarwal, M. Schwarzer, P. S. Castro, A. Courville, M. G. Bellemare, "Deep reinforcement
learning at the edge of the statistical precipice", NeurIPS 2021; code: github.com/google-research/rliable.

Axis legend: a score matrix is (R, T), R runs (here the seeds of one variant) by T tasks (here test
conditions); a 1-D array is one task, (R,) -> (R, 1). Empty, NaN or infinite input is refused with a
ValueError naming the argument. Pure numpy and scipy; every random draw comes from ``seed``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats


def _finite(x: np.ndarray, name: str) -> np.ndarray:
    if x.size == 0:
        raise ValueError(f"{name}: empty, shape {x.shape}; need at least one run and one task")
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name}: {bad} NaN or infinite value(s); leave out the runs that lack a score")
    return x


def score_matrix(scores, name: str = "scores") -> np.ndarray:
    """``scores`` as a finite float (R, T) array with R, T >= 1."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a (runs, tasks) array, got shape {x.shape}")
    return _finite(x, name)


def _matrices(scores) -> np.ndarray:
    """One (R, T) matrix, or a stack (..., R, T) of them as a vectorised bootstrap passes."""
    x = np.asarray(scores, dtype=np.float64)
    return score_matrix(x) if x.ndim < 3 else _finite(x, "scores")


def mean(scores) -> float | np.ndarray:
    """Mean of all R x T scores; of each matrix of a stack (..., R, T)."""
    x = _matrices(scores).mean(axis=(-2, -1))
    return float(x) if x.ndim == 0 else x


def iqm(scores) -> float | np.ndarray:
    """Interquartile mean of all R x T scores pooled, rliable's aggregate of choice; of each matrix of a
    stack (..., R, T).

    With the N = R T scores sorted, x_(1) <= ... <= x_(N), and k = floor(N / 4):
        IQM = 1 / (N - 2k) * sum_{i = k+1}^{N-k} x_(i),
    the mean of the middle 50 % (``scipy.stats.trim_mean(x, 0.25)``, as rliable). One outlying seed
    moves it less than the mean, and it is less noisy than the median. With N < 4 it is the mean.
    """
    x = _matrices(scores)
    out = stats.trim_mean(x.reshape(*x.shape[:-2], -1), 0.25, axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def _check(reps: int, confidence: float) -> None:
    if not (isinstance(reps, (int, np.integer)) and reps >= 1):
        raise ValueError(f"reps: expected a positive integer, got {reps!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a level in (0, 1), got {confidence!r}")


def _resample(x: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``reps`` stratified resamples of x (R, T): per task, R runs drawn with replacement, the tasks
    independently (a run index per cell, not per row)."""
    r, t = x.shape
    idx = rng.integers(0, r, size=(reps, r, t))  # (reps, R, T)
    return x[idx, np.arange(t)]  # (reps, R, T)


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def stratified_bootstrap_ci(scores, statistic: Callable[[np.ndarray], float], *, reps: int = 2000,
                            confidence: float = 0.95, seed: int = 0,
                            vectorized: bool = False) -> tuple[float, float, float]:
    """``statistic`` of a (R, T) score matrix and its stratified-bootstrap percentile interval.

    Each of ``reps`` replicates redraws, within every task separately, R runs with replacement (so every
    task keeps its R runs and its own scale) and applies ``statistic`` to the (R, T) resample; the
    interval is the (1 - c) / 2 and (1 + c) / 2 percentiles of the replicates (rliable's
    ``get_interval_estimates``, Agarwal et al. 2021, section 4.1). Returns (point, lo, hi), the point
    being the statistic of ``scores`` itself. Deterministic given ``seed``. ``vectorized=True`` (as in
    ``scipy.stats.bootstrap``): ``statistic`` maps the whole stack (reps, R, T) to (reps,) in one call,
    as ``mean`` and ``iqm`` do; the same resamples, so the same interval, much faster.
    """
    _check(reps, confidence)
    x = score_matrix(scores)
    resamples = _resample(x, reps, np.random.default_rng(seed))  # (reps, R, T)
    if vectorized:
        values = np.asarray(statistic(resamples), dtype=np.float64)
        if values.shape != (reps,):
            raise ValueError(f"statistic: expected {reps} values, one per resample, got shape {values.shape}")
        point = np.asarray(statistic(x[None])).item()
    else:
        values, point = np.array([statistic(s) for s in resamples], dtype=np.float64), statistic(x)
    return (float(point), *_percentiles(values, confidence))


def _poi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Batched probability of improvement: x (B, R_x, T), y (B, R_y, T) -> (B,)."""
    xs, ys = x[:, :, None, :], y[:, None, :, :]  # (B, R_x, 1, T), (B, 1, R_y, T)
    # Every task has the same R_x R_y pairs, so the mean over pairs and tasks is the mean of the per-task P_t.
    return ((xs > ys) + 0.5 * (xs == ys)).mean(axis=(1, 2, 3))


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = score_matrix(x, "x"), score_matrix(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y: need the same tasks, got {x.shape[1]} and {y.shape[1]} "
                         f"(shapes {x.shape} and {y.shape})")
    return x, y


def probability_of_improvement(x, y) -> float:
    """P(X > Y): how likely a run of X scores above a run of Y on a task, averaged over the tasks.

    For x (R_x, T) and y (R_y, T), per task t over all R_x R_y pairs of runs, ties counted half
    (the Mann-Whitney U statistic divided by R_x R_y):
        P_t = 1 / (R_x R_y) * sum_i sum_j ( [x_it > y_jt] + 1/2 [x_it = y_jt] ),
        P(X > Y) = 1 / T * sum_t P_t        (Agarwal et al. 2021, section 4.3).
    0.5: neither is better; 1: every run of X beats every run of Y on every task. P(X > Y) = 1 - P(Y > X).
    """
    x, y = _pair(x, y)
    return float(_poi(x[None], y[None])[0])


def probability_of_improvement_ci(x, y, *, reps: int = 2000, confidence: float = 0.95,
                                  seed: int = 0) -> tuple[float, float, float]:
    """P(X > Y) and its stratified-bootstrap percentile interval: each replicate redraws the runs of x
    and of y independently, within every task (as ``stratified_bootstrap_ci``). Returns (point, lo, hi)."""
    _check(reps, confidence)
    x, y = _pair(x, y)
    rng = np.random.default_rng(seed)
    values = _poi(_resample(x, reps, rng), _resample(y, reps, rng))  # (reps,)
    return (float(_poi(x[None], y[None])[0]), *_percentiles(values, confidence))
