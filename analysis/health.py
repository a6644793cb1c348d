"""Mechanism health of a robustness study (SPEC section 7): per variant over seeds, and whether each FSRF
mechanism is working or degenerate, by the rules below.

Each robustness run carries the health metrics of its **selected epoch** (``studies/worker.py`` puts
``health/<name>``, ``health/<name>/<m>`` and ``health/grad_share/<term>`` of that epoch into its final
report; ``fsrf/health.py`` defines them, measured on validation). This module summarises those columns
of the wide table (``analysis.load``) per variant (mean, std over seeds, n) and applies ``RULES`` to the
mean over seeds; ``analysis/sections.py`` writes the section. A variant that switches a mechanism off
(its ``fsrf.variants`` overrides) gets "not applicable", and so does a metric no run of the variant has.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from fsrf import variants

PREFIX = "health/"
GRAD_SHARE = "health/grad_share/"
# The health metrics of the page's table, in its order (per-modality values go to the CSV only).
TABLE_METRICS = ("noise_var", "noise_rank", "ho_agreement", "he_ho_cos", "das_paired_mass", "das_pair_cost_ratio")

# -- the rules: every threshold of the verdicts, in one place ----------------------------------------------
# R_n: eq (3)'s prior form settles R_n's per-dimension variance near sigma2 (~1); the literal form drives it
# to ~5e-9. Below 1e-3 R_n is a constant in practice: Z - sum_m n_m only shifts Z by a bias, and the noise
# priors move nothing but that bias.
NOISE_VAR_MIN = 1e-3
# R_ho: ho_agreement is the mean same-sample cross-modality cosine minus the different-sample one. 0 means a
# sample's modalities agree no more than any two samples do (a constant or sample-blind shared space);
# 0.05 leaves room for the validation-set noise of a real but weak agreement to count as working.
HO_AGREEMENT_MIN = 0.05
# R_he vs R_ho: a mean |cosine| above 0.9 makes R_he a copy (or a sign flip) of R_ho: the factorization then
# has one part, not two.
HE_HO_COS_MAX = 0.9
# DAS: das_paired_mass is B x the plan's mass on a sample's own other view (1 for a uniform plan, B for a
# perfect pairing): at least twice the uniform plan's means the plan pairs; and the paired cost must lie
# below the unpaired one (ratio < 1), or the plan pairs by chance of eps rather than because the two views
# of a sample are close.
DAS_PAIRED_MASS_MIN = 2.0
DAS_PAIR_COST_RATIO_MAX = 1.0
# Loss terms: a term whose mean share of the gradient norm at the shared layers is below 1 % barely moves
# them: it is listed as inert (its weight, or the term itself, leaves it without effect).
INERT_SHARE = 0.01


@dataclass(frozen=True)
class Rule:
    """One mechanism's verdict: ``working(means)`` on the means over seeds of ``metrics``; ``parts`` are the
    ``model.<part>`` switches that must all be on for the mechanism to exist."""

    mechanism: str
    parts: tuple[str, ...]
    metrics: tuple[str, ...]
    text: str  # the rule as the report writes it
    working: Callable[[Mapping[str, float]], bool]


RULES: tuple[Rule, ...] = (
    Rule("noise branch (R_n)", ("dhf", "noise"), ("noise_var",),
         f"degenerate when noise_var < {NOISE_VAR_MIN:g} (R_n collapsed to a constant: the noise priors then "
         "only move a bias), else working",
         lambda m: m["noise_var"] >= NOISE_VAR_MIN),
    Rule("shared space (R_ho)", ("dhf",), ("ho_agreement",),
         f"working when ho_agreement > {HO_AGREEMENT_MIN:g} (a sample's modalities agree more than different "
         "samples do), else degenerate",
         lambda m: m["ho_agreement"] > HO_AGREEMENT_MIN),
    Rule("specific vs shared (R_he)", ("dhf",), ("he_ho_cos",),
         f"degenerate when he_ho_cos > {HE_HO_COS_MAX:g} (R_he duplicates R_ho), else working",
         lambda m: m["he_ho_cos"] <= HE_HO_COS_MAX),
    Rule("DAS alignment", ("das",), ("das_paired_mass", "das_pair_cost_ratio"),
         f"working when das_paired_mass >= {DAS_PAIRED_MASS_MIN:g} (the plan gives a sample's own other view "
         f"at least twice a uniform plan's mass) and das_pair_cost_ratio < {DAS_PAIR_COST_RATIO_MAX:g} (a "
         "sample's two views are closer than two samples are); else degenerate",
         lambda m: m["das_paired_mass"] >= DAS_PAIRED_MASS_MIN and m["das_pair_cost_ratio"] < DAS_PAIR_COST_RATIO_MAX),
)
INERT_TEXT = (f"a loss term whose mean grad share is < {INERT_SHARE:g} is listed as inert (it barely moves the "
              "shared layers)")

WORKING, DEGENERATE, NOT_APPLICABLE = "working", "degenerate", "not applicable"


def columns(runs: pl.DataFrame) -> list[str]:
    """The wide table's health columns that hold at least one finite value."""
    return [c for c in runs.columns if c.startswith(PREFIX)
            and runs[c].cast(pl.Float64).drop_nulls().drop_nans().len() > 0]


def _values(rows: pl.DataFrame, col: str) -> np.ndarray:
    if col not in rows.columns:
        return np.empty(0)
    return rows[col].cast(pl.Float64).drop_nulls().drop_nans().to_numpy()


def summary(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per variant x health column with a value: variant, metric (the column without ``health/``),
    n (runs with a value), mean and std (ddof 1; null for one run) over those runs."""
    rows = []
    cols = columns(runs)
    for variant in variants.ordered(runs["variant"].to_list()):
        mine = runs.filter(pl.col("variant") == variant)
        for col in cols:
            x = _values(mine, col)
            if len(x):
                rows.append({"variant": variant, "metric": col.removeprefix(PREFIX), "n": len(x),
                             "mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else None})
    return pl.DataFrame(rows, schema={"variant": pl.String, "metric": pl.String, "n": pl.Int64,
                                      "mean": pl.Float64, "std": pl.Float64})


def share_terms(runs: pl.DataFrame) -> list[str]:
    """The loss terms with a grad share in some run: ``task`` first, the regularisers by name."""
    terms = sorted(c.removeprefix(GRAD_SHARE) for c in columns(runs) if c.startswith(GRAD_SHARE))
    return sorted(terms, key=lambda t: t != "task")


def fmt(x: float | None) -> str:
    """Three significant digits, trailing zeros kept (``1.00``, ``0.265``, ``5.00e-09``, ``123``): health values
    span 1e-9 (a collapsed R_n) to the batch size."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x + 0.0:#.3g}".removesuffix(".")  # + 0.0: no "-0.00"


def display(summ: pl.DataFrame, runs: pl.DataFrame) -> pl.DataFrame:
    """The page's table: per variant, n (runs with health metrics) and "mean ± std" of ``TABLE_METRICS``
    and the grad shares; a cell over fewer runs than the row's n says its own n."""
    shown = [m for m in TABLE_METRICS if m in set(summ["metric"])] + [f"grad_share/{t}" for t in share_terms(runs)]
    out = []
    for variant in summ["variant"].unique(maintain_order=True).to_list():
        cells = {r["metric"]: r for r in summ.filter(pl.col("variant") == variant).iter_rows(named=True)}
        n = max(r["n"] for r in cells.values())
        row = {"variant": variants.label(variant), "n": n}
        for m in shown:
            r = cells.get(m)
            row[m] = "" if r is None else (fmt(r["mean"]) + ("" if r["std"] is None else f" ± {fmt(r['std'])}")
                                           + ("" if r["n"] == n else f" (n={r['n']})"))
        out.append(row)
    return pl.DataFrame(out, schema={"variant": pl.String, "n": pl.Int64, **{m: pl.String for m in shown}})


@dataclass(frozen=True)
class Verdict:
    variant: str
    mechanism: str
    verdict: str  # WORKING, DEGENERATE or NOT_APPLICABLE
    why: str  # the means the rule read, or why it does not apply
    seeds_working: int | None = None  # runs whose own values the rule calls working
    seeds: int | None = None  # runs with every metric of the rule


def switched_off(variant: str, rule: Rule) -> str | None:
    """The switch by which ``variant`` turns the mechanism off (``model.dhf=False``), else None."""
    overrides = variants.BY_NAME[variant].overrides if variant in variants.BY_NAME else {}
    return next((f"model.{p}=False" for p in rule.parts if overrides.get(f"model.{p}") is False), None)


def verdicts(runs: pl.DataFrame) -> list[Verdict]:
    """Every rule for every variant of ``runs``: on the means over seeds, with how many single runs agree."""
    out = []
    for variant in variants.ordered(runs["variant"].to_list()):
        mine = runs.filter(pl.col("variant") == variant)
        for rule in RULES:
            off = switched_off(variant, rule)
            if off:
                out.append(Verdict(variant, rule.mechanism, NOT_APPLICABLE, f"switched off by the variant: {off}"))
                continue
            cols = [PREFIX + m for m in rule.metrics]
            absent = [m for m, c in zip(rule.metrics, cols) if len(_values(mine, c)) == 0]
            if absent:
                out.append(Verdict(variant, rule.mechanism, NOT_APPLICABLE,
                                   f"not measured ({', '.join(absent)} absent from its runs)"))
                continue
            means = {m: float(_values(mine, c).mean()) for m, c in zip(rule.metrics, cols)}
            complete = mine.select(cols).cast(pl.Float64).fill_nan(None).drop_nulls()
            per_run = [rule.working(dict(zip(rule.metrics, row))) for row in complete.iter_rows()]
            out.append(Verdict(variant, rule.mechanism, WORKING if rule.working(means) else DEGENERATE,
                               ", ".join(f"mean {m} {fmt(v)}" for m, v in means.items()),
                               seeds_working=sum(per_run), seeds=len(per_run)))
    return out


def inert_terms(summ: pl.DataFrame) -> dict[str, list[tuple[str, float]]]:
    """Per variant with grad shares: the terms whose mean share is below ``INERT_SHARE``, with the share."""
    shares = summ.filter(pl.col("metric").str.starts_with("grad_share/"))
    out: dict[str, list[tuple[str, float]]] = {}
    for variant in shares["variant"].unique(maintain_order=True).to_list():
        rows = shares.filter(pl.col("variant") == variant)
        out[variant] = [(r["metric"].removeprefix("grad_share/"), r["mean"]) for r in rows.iter_rows(named=True)
                        if r["mean"] < INERT_SHARE]
    return out


def verdict_frame(found: list[Verdict]) -> pl.DataFrame:
    return pl.DataFrame([{"variant": v.variant, "mechanism": v.mechanism, "verdict": v.verdict, "why": v.why,
                          "seeds_working": v.seeds_working, "seeds": v.seeds} for v in found],
                        schema={"variant": pl.String, "mechanism": pl.String, "verdict": pl.String, "why": pl.String,
                                "seeds_working": pl.Int64, "seeds": pl.Int64})


_TERM_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
                "#64b5cd")


def grad_share_figure(summ: pl.DataFrame, terms: list[str]) -> Figure:
    """Mean grad share of each loss term at the shared layers, one stacked bar per variant (the shares of a
    run sum to 1; the means over seeds do too). A term keeps its colour across the bars."""
    from analysis.tables import variant_name

    shares = summ.filter(pl.col("metric").str.starts_with("grad_share/"))
    names = shares["variant"].unique(maintain_order=True).to_list()
    fig = Figure(figsize=(6.4, 0.9 + 0.45 * max(len(names), 1)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]  # the first variant on top
    left = np.zeros(len(names))
    for i, term in enumerate(terms):
        mean = {r["variant"]: r["mean"] for r in shares.filter(pl.col("metric") == f"grad_share/{term}")
                .iter_rows(named=True)}
        width = np.array([mean.get(v, 0.0) for v in names])
        ax.barh(y, width, left=left, color=_TERM_COLORS[i % len(_TERM_COLORS)], label=term, gid=f"share:{term}")
        left += width
    ax.set_yticks(y, [variant_name(v) for v in names])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the gradient norm at the shared layers (mean over seeds)")
    ax.legend(frameon=False, fontsize=8, ncols=min(len(terms), 5), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return fig
