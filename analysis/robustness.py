"""Robustness curves (the paper's Fig. 2), their MultiBench summaries, and the paired-mask overlap study.

A curve is f(p) for p = 0, 0.1, ..., 1.0 (SPEC section 5): f(p) for p > 0 is the score under the
intra-modality condition ``intra_p`` (every available modality loses each frame with probability p),
and f(0) is the complete-modality score ``lav`` (``l`` for text-only data, whose only modality is
language). A dropped word is dropped before the encoder (SPEC 7: its id becomes ``[UNK]``). Runs
evaluated with ``eval.zeroed_curve`` also have a second word-drop curve, ``zeroed_p``: the same words
dropped (same masks as ``intra_p``), but by zeroing their cached encoder states instead (SPEC 2's
semantics, the kept words' states still carrying them); every function here takes ``kind="zeroed"`` for
it. Runs made before SPEC 7 (no ``missing.word_drop`` param) had zeroed-state ``intra_p`` and an
``unk_p`` curve instead; they are not relabelled here.

The summaries come from ``fsrf.metrics``: ``relative_robustness`` (trapezoid area under f),
``effective_robustness`` (what is kept beyond the late-fusion baseline shifted to the same clean
score) and ``minmax_normalise`` across the compared variants.

Per-modality curves (``kind="intra_l"``, ``"intra_a"``, ``"intra_v"``): f(p) is the score under
``intra_<m>_<p>``, only modality m losing frames while the others stay complete, and f(0) the same
complete score; the modality whose curve has the lowest area is the one whose loss hurts most
(``hardest_modality``). Every curve figure marks the largest missing rate of the training schedule
(``max_training_rate``, from the run params): beyond it, robustness is extrapolated, not trained.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from analysis.tables import complete_condition
from fsrf import MODALITIES, variants
from fsrf.metrics import effective_robustness, minmax_normalise, relative_robustness
from fsrf.missing import SCHEDULES, Schedule
from fsrf.protocol import HEADLINE, INTRA_POINTS, Condition
from fsrf.variants import ROBUSTNESS_BASELINE

P_GRID = (0.0, *INTRA_POINTS)  # the 11 points of a curve
# The two ways to lose a word: ``intra_p`` replaces the dropped tokens' ids by [UNK] before the encoder
# (SPEC 7, the protocol); ``zeroed_p`` zeroes their cached encoder states (SPEC 2, ``eval.zeroed_curve``).
KINDS = {"intra": "[UNK] ids", "zeroed": "zeroed states"}
# One modality at a time (``intra_<m>_<p>``): the curve kind of each modality, and its name for readers.
MODALITY_KINDS = {f"intra_{m}": m for m in MODALITIES}
MODALITY_NAMES = {"l": "language", "a": "audio", "v": "visual"}


def point_name(kind: str, p: float) -> str:
    if kind in MODALITY_KINDS:
        return Condition("modality", modality=MODALITY_KINDS[kind], rate=p).name
    if kind not in KINDS:
        raise ValueError(f"unknown curve kind {kind!r}; one of {', '.join([*KINDS, *MODALITY_KINDS])}")
    return Condition(kind, rate=p).name  # intra_p, zeroed_p


def curve_columns(df: pl.DataFrame, metric: str = HEADLINE, kind: str = "intra") -> list[str]:
    """The wide table's columns of the 11 curve points, p = 0 first (the same f(0) for both kinds)."""
    return [f"test/{metric}/{complete_condition(df, metric)}"] + [f"test/{metric}/{point_name(kind, p)}"
                                                                  for p in INTRA_POINTS]


def has_curve(df: pl.DataFrame, metric: str = HEADLINE, kind: str = "intra") -> bool:
    """Whether some run has all 11 points of this kind of curve."""
    cols = curve_columns(df, metric, kind)
    if any(c not in df.columns for c in cols):
        return False
    x = df.select(cols).to_numpy().astype(np.float64)
    return bool(np.isfinite(x).all(axis=1).any())


def seed_curves(df: pl.DataFrame, metric: str = HEADLINE, kind: str = "intra") -> dict[str, np.ndarray]:
    """Per variant, the (n_seeds, 11) curves of the runs that have all 11 points (others are skipped:
    a curve with a hole has no area; a variant without any, such as ridge for ``zeroed``, is absent)."""
    cols = curve_columns(df, metric, kind)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"the runs lack curve column(s) {', '.join(missing)}")
    out = {}
    for variant in variants.ordered(df["variant"].to_list()):
        x = df.filter(pl.col("variant") == variant).select(cols).to_numpy().astype(np.float64)  # (n, 11)
        x = x[np.isfinite(x).all(axis=1)]
        if len(x):
            out[variant] = x
    return out


def curves(df: pl.DataFrame, metric: str = HEADLINE, kind: str = "intra") -> pl.DataFrame:
    """Mean and std (ddof=1; null with a single seed) over seeds of f(p), per variant and p.

    Columns: variant, p, mean, std, n. Pass ``main_runs(df)`` when the runs include an overlap sweep.
    """
    rows = []
    for variant, x in seed_curves(df, metric, kind).items():
        std = x.std(axis=0, ddof=1) if len(x) > 1 else np.full(x.shape[1], np.nan)
        for p, m, s in zip(P_GRID, x.mean(axis=0), std):
            rows.append({"variant": variant, "p": p, "mean": float(m),
                         "std": None if math.isnan(s) else float(s), "n": len(x)})
    return pl.DataFrame(rows, schema={"variant": pl.String, "p": pl.Float64, "mean": pl.Float64,
                                      "std": pl.Float64, "n": pl.Int64})


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else None)


def robustness_summary(df: pl.DataFrame, metric: str = HEADLINE, *, baseline: str = ROBUSTNESS_BASELINE,
                       kind: str = "intra") -> pl.DataFrame:
    """Per variant: area under the curve and effective robustness, raw and (>= 3 variants) normalised.

    - ``auc``: ``relative_robustness`` of the mean curve; ``auc_seed_mean``/``auc_seed_std``: the same
      per seed, then mean and std (they measure the spread; the trapezoid is linear, so the seed mean
      equals ``auc``).
    - ``effective``: ``effective_robustness`` of the mean curve against the baseline's mean curve
      (null when the baseline variant is absent; 0 for the baseline itself); ``effective_seed_*`` per
      seed against the baseline's mean curve.
    - ``auc_norm``, ``effective_norm``: ``minmax_normalise`` across the variants, only with three or
      more variants (MultiBench's convention; with two the result would be just 0 and 1).
    """
    per_seed = seed_curves(df, metric, kind)
    base = per_seed[baseline].mean(axis=0) if baseline in per_seed else None
    rows = []
    for variant, x in per_seed.items():
        mean_curve = x.mean(axis=0)
        auc_seed = [relative_robustness(c) for c in x]
        row = {"variant": variant, "n": len(x), "auc": relative_robustness(mean_curve)}
        row["auc_seed_mean"], row["auc_seed_std"] = _mean_std(auc_seed)
        if base is not None:
            row["effective"] = effective_robustness(mean_curve, base)
            row["effective_seed_mean"], row["effective_seed_std"] = _mean_std(
                [effective_robustness(c, base) for c in x])
        rows.append(row)
    schema = {"variant": pl.String, "n": pl.Int64, "auc": pl.Float64, "auc_seed_mean": pl.Float64,
              "auc_seed_std": pl.Float64, "effective": pl.Float64, "effective_seed_mean": pl.Float64,
              "effective_seed_std": pl.Float64}
    out = pl.DataFrame(rows, schema=schema)
    norm_schema = {"auc_norm": pl.Float64, "effective_norm": pl.Float64}
    if out.height >= 3:
        auc_norm = minmax_normalise(dict(zip(out["variant"], out["auc"])))
        eff = (minmax_normalise(dict(zip(out["variant"], out["effective"])))
               if base is not None else {v: None for v in out["variant"]})
        out = out.with_columns(auc_norm=pl.Series([auc_norm[v] for v in out["variant"]], dtype=pl.Float64),
                               effective_norm=pl.Series([eff[v] for v in out["variant"]], dtype=pl.Float64))
    else:
        out = out.with_columns([pl.lit(None, dtype=t).alias(k) for k, t in norm_schema.items()])
    return out


def modality_kinds(df: pl.DataFrame, metric: str = HEADLINE) -> list[str]:
    """The per-modality curve kinds (``intra_l``, ``intra_a``, ``intra_v``) that some run has whole."""
    return [kind for kind in MODALITY_KINDS if has_curve(df, metric, kind)]


def modality_curves(df: pl.DataFrame, metric: str = HEADLINE) -> pl.DataFrame:
    """``curves`` of each per-modality kind the runs have, stacked with a ``modality`` column (l, a, v).

    Columns: variant, modality, p, mean, std, n; empty (same columns) when no run has one.
    """
    parts = [curves(df, metric, kind).with_columns(modality=pl.lit(MODALITY_KINDS[kind]))
             for kind in modality_kinds(df, metric)]
    schema = {"variant": pl.String, "modality": pl.String, "p": pl.Float64, "mean": pl.Float64,
              "std": pl.Float64, "n": pl.Int64}
    return pl.concat(parts).select(list(schema)) if parts else pl.DataFrame(schema=schema)


def modality_summary(df: pl.DataFrame, metric: str = HEADLINE, *, baseline: str = ROBUSTNESS_BASELINE) -> pl.DataFrame:
    """``robustness_summary`` of each per-modality curve: per variant and modality the AUC (mean curve),
    its spread over seeds, and the effective robustness against the baseline's curve of the same
    modality. Columns: variant, modality, n, auc, auc_seed_mean, auc_seed_std, effective."""
    schema = {"variant": pl.String, "modality": pl.String, "n": pl.Int64, "auc": pl.Float64,
              "auc_seed_mean": pl.Float64, "auc_seed_std": pl.Float64, "effective": pl.Float64}
    parts = [robustness_summary(df, metric, baseline=baseline, kind=kind)
             .with_columns(modality=pl.lit(MODALITY_KINDS[kind])).select(list(schema))
             for kind in modality_kinds(df, metric)]
    if not parts:
        return pl.DataFrame(schema=schema)
    order = {v: i for i, v in enumerate(variants.ordered(df["variant"].to_list()))}
    out = pl.concat(parts).cast(schema)
    return out.sort([pl.col("variant").replace_strict(order, return_dtype=pl.Int64),
                     pl.col("modality").replace_strict({m: i for i, m in enumerate(MODALITIES)},
                                                       return_dtype=pl.Int64)])


def hardest_modality(summary: pl.DataFrame) -> dict[str, str]:
    """Per variant, the modality whose loss hurts most: the lowest AUC of its per-modality curves (all
    start from the same complete score, so the lowest area is the largest loss). Ties: (l, a, v) order."""
    out = {}
    for variant in summary["variant"].unique(maintain_order=True).to_list():
        rows = summary.filter(pl.col("variant") == variant).iter_rows(named=True)
        best = min(rows, key=lambda r: (r["auc"], MODALITIES.index(r["modality"])))
        out[variant] = best["modality"]
    return out


def _number(params: dict[str, str], key: str) -> float | None:
    """A numeric run param (MLflow keeps params as strings); None when absent, "None" or varying."""
    value = params.get(key)
    try:
        return None if value is None else float(value)
    except ValueError:  # "varies: ..." over a variant's seeds, or not a number
        return None


def max_training_rate(params: dict[str, str], *, modality: str | None = None) -> float | None:
    """The largest missing rate a run's MRM schedule reaches, from its (string) params; None if unknown.

    ``Schedule(missing.schedule, missing.p0, missing.p1, missing.at).max_rate(epochs)`` with the epochs
    the run trained for (``study.epochs``, else ``train.epochs``); without them, ``max_rate()``'s bound
    for every run length (p0 for ``constant``, max(p0, p1) otherwise). With ``modality``, times that
    modality's ``missing.modality_scale.<m>`` (the rate at which its frames are dropped).
    """
    kind = params.get("missing.schedule")
    p0, p1, at = (_number(params, f"missing.{k}") for k in ("p0", "p1", "at"))
    if kind not in SCHEDULES or p0 is None:
        return None
    if kind != "constant" and p1 is None:
        return None
    schedule = Schedule(kind, p0, p1, 0.5 if at is None else at)
    epochs = _number(params, "study.epochs") or _number(params, "train.epochs")
    top = schedule.max_rate(int(epochs) if epochs else None)
    if modality is not None:
        scale = _number(params, f"missing.modality_scale.{modality}")
        top *= 1.0 if scale is None else scale
    return top


def is_closed_form(variant: str) -> bool:
    """Whether a variant is fitted in closed form (``fsrf.variants``: ``fsrf.baselines``' ridge on the
    frozen encoder's states), without the training loop; an unknown variant is not."""
    return variant in variants.BY_NAME and variants.BY_NAME[variant].closed_form


def max_training_rates(variant_params: dict[str, dict[str, str]], *,
                       modality: str | None = None) -> dict[str, float]:
    """``max_training_rate`` per variant whose params say it (``load.StudyConfig.variant_params``).

    Closed-form variants (the ridge baseline) are left out: they are fitted on complete utterances, without
    the training loop and so without a missing-rate schedule.
    """
    out = {}
    for variant, params in variant_params.items():
        rate = None if is_closed_form(variant) else max_training_rate(params, modality=modality)
        if rate is not None:
            out[variant] = rate
    return out


def overlap_study(df: pl.DataFrame, metric: str = HEADLINE, *, condition: str = "avg_missing",
                  variant: str = "fsrf") -> pl.DataFrame:
    """Mean and std over seeds of FSRF's ``avg_missing`` score against the MRM ``overlap`` setting.

    ``overlap`` = o makes the two training views drop the same modality set with probability o
    (``fsrf.missing.sample_presence``). Only runs with a numeric overlap are the study; FSRF runs with
    independent views (null) are returned as one extra row with a null ``overlap``, the reference the
    paper uses. Columns: overlap, mean, std, n; empty when no run has a numeric overlap.
    """
    col = f"test/{metric}/{condition}"
    schema = {"overlap": pl.Float64, "mean": pl.Float64, "std": pl.Float64, "n": pl.Int64}
    if col not in df.columns:
        return pl.DataFrame(schema=schema)
    rows = df.filter((pl.col("variant") == variant) & pl.col(col).is_not_null() & pl.col(col).is_not_nan())
    if "train_rate" in rows.columns:
        rows = rows.filter(pl.col("train_rate").is_null())  # a rate grid's runs are another study
    if rows["overlap"].null_count() == rows.height:
        return pl.DataFrame(schema=schema)
    return (rows.group_by("overlap")
            .agg(mean=pl.col(col).mean(), std=pl.col(col).std(ddof=1), n=pl.len().cast(pl.Int64))
            .select(list(schema)).cast(schema)
            .sort("overlap", nulls_last=True))


def rate_grid(df: pl.DataFrame, metric: str = HEADLINE) -> pl.DataFrame:
    """The train-rate x test-rate grid (MuteBench): per variant, training rate r (the runs of
    ``--train-rates``, constant schedule) and test intra point p, the mean and std over seeds of the test
    score at ``intra_p``, and whether p exceeds the training maximum r. Columns: variant, train_rate,
    test_rate, mean, std, n, beyond; empty when no run has a training rate."""
    schema = {"variant": pl.String, "train_rate": pl.Float64, "test_rate": pl.Float64, "mean": pl.Float64,
              "std": pl.Float64, "n": pl.Int64, "beyond": pl.Boolean}
    if "train_rate" not in df.columns:
        return pl.DataFrame(schema=schema)
    grid = df.filter(pl.col("train_rate").is_not_null() & pl.col("overlap").is_null())
    rows = []
    for (variant, rate), g in grid.group_by(["variant", "train_rate"], maintain_order=True):
        for p in INTRA_POINTS:
            col = f"test/{metric}/{point_name('intra', p)}"
            if col not in g.columns:
                continue
            x = g[col].drop_nulls().drop_nans()
            if x.len() == 0:
                continue
            rows.append({"variant": variant, "train_rate": rate, "test_rate": p, "mean": x.mean(),
                         "std": x.std(ddof=1) if x.len() > 1 else None, "n": x.len(), "beyond": p > rate + 1e-9})
    t = pl.DataFrame(rows, schema=schema)
    order = {v: i for i, v in enumerate(variants.ordered(t["variant"].to_list()))}
    return t.sort([pl.col("variant").replace_strict(order, return_dtype=pl.Int64), "train_rate", "test_rate"])
