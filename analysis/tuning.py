"""What a tuning study found: the best objective over trials, which hyperparameters mattered, and how.

Input is the study's exported ``trials.parquet`` (``analysis.load.trials_from_study``): one row per
trial in the order Tune created them, the searched params as dotted columns and the objective
``fsrf.protocol.BEST_OBJECTIVE`` (validation only; null for a trial that failed before an epoch).

Importance is Optuna's fANOVA on an in-memory study rebuilt from those rows (``create_trial``), with
each param's distribution inferred from its column. fANOVA fits a random forest, and its answer moves
from one forest seed to the next (optuna#1199), so it is averaged over several seeds.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from analysis.load import param_columns
from fsrf.protocol import BEST_OBJECTIVE

LOG_RATIO = 20.0  # a positive param spanning more than this factor was almost surely searched on a log scale


def completed(trials: pl.DataFrame, objective: str = BEST_OBJECTIVE) -> pl.DataFrame:
    """Trials with a finite objective (failed and never-reported trials have none)."""
    return trials.filter(pl.col(objective).is_not_null() & pl.col(objective).is_not_nan())


def best_so_far(trials: pl.DataFrame, objective: str = BEST_OBJECTIVE, *, maximize: bool = True) -> pl.DataFrame:
    """The best objective among the first k trials, for k = 1..n (trials in their file order).

    Columns: trial (1-based count), trial_id, objective (null for a failed trial), best (null until
    the first completed trial).
    """
    values = trials[objective].cast(pl.Float64).fill_nan(None)
    best = values.cum_max() if maximize else values.cum_min()  # nulls stay null; later values skip them
    best = best.fill_null(strategy="forward")
    return pl.DataFrame({"trial": np.arange(1, trials.height + 1), "trial_id": trials["trial_id"].cast(pl.String),
                         "objective": values, "best": best})


def searched_params(trials: pl.DataFrame, objective: str = BEST_OBJECTIVE) -> list[str]:
    """Params that took more than one value among completed trials (a constant explains nothing)."""
    done = completed(trials, objective)
    return [c for c in param_columns(trials) if done[c].drop_nulls().n_unique() > 1]


def distributions(trials: pl.DataFrame, params: list[str]) -> dict:
    """Optuna distributions inferred from the observed values of each param column.

    Floats: ``FloatDistribution`` over [min, max], on a log scale when every value is positive and
    max/min > 20 (the search space's loguniform params span decades; a uniform one rarely does).
    Integers: ``IntDistribution`` (same log rule). Anything else (strings, booleans): a
    ``CategoricalDistribution`` over the observed values.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for name in params:
        col = trials[name].drop_nulls()
        dtype = col.dtype
        if dtype.is_numeric() and dtype != pl.Boolean:
            col = col.cast(pl.Float64).fill_nan(None).drop_nulls()
            low, high = float(col.min()), float(col.max())
            log = low > 0 and high / low > LOG_RATIO
            if dtype.is_integer():
                out[name] = IntDistribution(int(low), int(high), log=log)
            else:
                out[name] = FloatDistribution(low, high, log=log)
        else:
            out[name] = CategoricalDistribution(sorted({str(v) for v in col.to_list()}))
    return out


def optuna_study(trials: pl.DataFrame, objective: str = BEST_OBJECTIVE, *, params: list[str] | None = None):
    """An in-memory Optuna study holding the completed trials (a param missing in a row is left out of
    that trial, as a conditional param would be)."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    params = params if params is not None else searched_params(trials, objective)
    dists = distributions(trials, params)
    study = optuna.create_study(direction="maximize")
    built = []
    for row in completed(trials, objective).iter_rows(named=True):
        values, used = {}, {}
        for name in params:
            v = row[name]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            d = dists[name]
            values[name] = str(v) if isinstance(d, CategoricalDistribution) else v
            used[name] = d
        built.append(optuna.trial.create_trial(params=values, distributions=used, value=float(row[objective])))
    study.add_trials(built)
    return study


def importance(trials: pl.DataFrame, objective: str = BEST_OBJECTIVE, *, seeds=(0, 1, 2, 3, 4),
               params: list[str] | None = None) -> dict[str, float]:
    """fANOVA importance of each searched param for the objective, averaged over forest seeds.

    Returns param -> share of the objective's variance it explains on its own, summing to 1, largest
    first. Needs at least two completed trials and one param that varied.
    """
    import optuna

    params = params if params is not None else searched_params(trials, objective)
    n_done = completed(trials, objective).height
    if n_done < 2 or not params:
        raise ValueError(f"importance needs >= 2 completed trials and a varied param (have {n_done} trials, "
                         f"{len(params)} varied params)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna_study(trials, objective, params=params)
    total = dict.fromkeys(params, 0.0)
    for seed in seeds:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        for name, value in optuna.importance.get_param_importances(study, evaluator=evaluator).items():
            total[name] += float(value)
    mean = {k: v / len(seeds) for k, v in total.items()}
    norm = sum(mean.values())
    if norm > 0:  # each seed's result sums to 1 already; this only removes rounding
        mean = {k: v / norm for k, v in mean.items()}
    return dict(sorted(mean.items(), key=lambda kv: -kv[1]))


def parallel_axes(trials: pl.DataFrame, objective: str = BEST_OBJECTIVE, *, params: list[str] | None = None):
    """Data of a parallel-coordinates plot: each searched param on its own [0, 1] axis, then the objective.

    Numbers are min-max scaled (log10 first on a log-scale param); categories sit at evenly spaced
    positions in sorted order. Returns (matrix (n_trials, n_axes) with NaN where a param is absent,
    axis names, per-axis tick labels [(position, text)], objective values (n_trials,)).
    """
    from optuna.distributions import CategoricalDistribution

    params = params if params is not None else searched_params(trials, objective)
    done = completed(trials, objective)
    dists = distributions(done, params)
    cols, ticks = [], []
    for name in params:
        d = dists[name]
        raw = done[name].to_list()
        if isinstance(d, CategoricalDistribution):
            choices = list(d.choices)
            pos = {c: (i / (len(choices) - 1) if len(choices) > 1 else 0.5) for i, c in enumerate(choices)}
            cols.append([pos[str(v)] if v is not None else math.nan for v in raw])
            ticks.append([(pos[c], c) for c in choices])
            continue
        log = d.log
        f = (lambda v: math.log10(v)) if log else float
        lo, hi = f(d.low), f(d.high)
        span = hi - lo or 1.0
        cols.append([(f(v) - lo) / span if v is not None and not (isinstance(v, float) and math.isnan(v)) else math.nan
                     for v in raw])
        ticks.append([(0.0, f"{d.low:.3g}"), (1.0, f"{d.high:.3g}")])
    y = done[objective].cast(pl.Float64).to_numpy()
    lo, hi = float(np.min(y)), float(np.max(y))
    cols.append(list((y - lo) / ((hi - lo) or 1.0)))
    ticks.append([(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")])
    matrix = np.asarray(cols, dtype=np.float64).T  # (n_trials, n_axes)
    return matrix, [*params, "objective"], ticks, y
