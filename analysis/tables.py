"""Table I (inter-modality missingness) and Table II (ablations) of the paper, from a study's runs.

Both tables are computed as *long* polars frames (one row per variant x condition: mean, std over
seeds, n, and Welch's p-value against FSRF) and rendered to Markdown, LaTeX (booktabs), HTML and CSV.
Stored values are fractions as the metrics return them; the renderers show F1 and accuracies in
percent, as the paper does.

Significance: the paper compares FSRF with one baseline and stars FSRF's row. Here every variant is
compared with FSRF (Welch's unequal-variance t-test over seeds, two-sided), so the ``*`` goes on the
*compared* variant's cell: "this variant's scores differ from FSRF's with p < 0.05".
"""

from __future__ import annotations

import html
import math
import warnings

import numpy as np
import polars as pl
from scipy import stats

from analysis import uncertainty
from analysis.load import long_metrics
from fsrf import variants
from fsrf.protocol import HEADLINE, MISSING
from fsrf.variants import REFERENCE

ALPHA = 0.05
MISSING_CONDITIONS = tuple(c.name for c in MISSING)  # the names of the six conditions of avg_missing
# The paper's column order: the six missing conditions, their mean, then the complete modalities.
TABLE1_CONDITIONS = (*MISSING_CONDITIONS, "avg_missing", "lav")
TABLE2_COLUMNS = (("Intra-MM", "intra_avg"), ("Inter-MM", "avg_missing"), ("CM", "lav"))
LOWER_IS_BETTER = frozenset({"MAE"})
PERCENT = frozenset({"Non0_F1_score", "Non0_acc_2", "Has0_F1_score", "Has0_acc_2", "Mult_acc_5", "Mult_acc_7"})
# The paper's Table I, column {l} (language only), Non0 F1 as fractions: FSRF and its strongest baseline
# CorrKD. BERT-base fine-tuned under the paper's own protocol: context for a text-only study, not a target
# it can be compared with directly.
PAPER_L = {"mosi": {"FSRF (paper)": 0.8258, "CorrKD (paper)": 0.8120},
           "mosei": {"FSRF (paper)": 0.8262, "CorrKD (paper)": 0.8076}}
PAPER_CAVEAT = "paper values, different encoder (BERT-base fine-tuned) and protocol: not directly comparable"
LABELS = {"avg_missing": "Avg. (missing)", "lav": "{l,a,v}", "intra_avg": "Intra avg"}


def variant_name(variant: str) -> str:
    """The variant's label (``fsrf.variants``); an unknown variant by its name."""
    return variants.label(variant)


def condition_label(condition: str) -> str:
    if condition in LABELS:
        return LABELS[condition]
    if condition in MISSING_CONDITIONS:
        return "{" + ",".join(condition) + "}"
    return condition


def welch_p(a, b) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); NaN when it is undefined.

    Undefined: fewer than two values on a side, or no variance on either side (t is 0/0).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        return math.nan
    with warnings.catch_warnings():  # scipy warns on zero variance and returns NaN, which we keep
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def complete_condition(df: pl.DataFrame, metric: str) -> str:
    """The all-modalities-present condition: ``lav``; ``la`` for text with audio; ``l`` for text alone."""
    for name in ("lav", "la"):
        if f"test/{metric}/{name}" in df.columns and df[f"test/{metric}/{name}"].null_count() < df.height:
            return name
    return "l"


def summarise(df: pl.DataFrame, metric: str, conditions, *, reference: str = REFERENCE) -> pl.DataFrame:
    """Mean, std (ddof=1), n over seeds per variant x condition, and Welch's p against ``reference``.

    Returns columns variant, condition, mean, std, n, p_value (null for the reference itself, when the
    reference is absent, or when the test is undefined), star (p < 0.05). Conditions the data lacks
    are skipped; rows come in variant order then the given condition order.
    """
    long = long_metrics(df).filter((pl.col("metric") == metric) & pl.col("condition").is_in(list(conditions)))
    values = {(v, c): vals.to_numpy() for (v, c), vals in
              ((k, g["value"]) for k, g in long.group_by(["variant", "condition"]))}
    rows = []
    for variant in variants.ordered(long["variant"].to_list()):
        for condition in conditions:
            x = values.get((variant, condition))
            if x is None:
                continue
            ref = values.get((reference, condition))
            p = welch_p(ref, x) if ref is not None and variant != reference else math.nan
            rows.append({"variant": variant, "condition": condition, "mean": float(np.mean(x)),
                         "std": float(np.std(x, ddof=1)) if x.size > 1 else math.nan, "n": int(x.size),
                         "p_value": None if math.isnan(p) else p, "star": bool(p < ALPHA)})
    schema = {"variant": pl.String, "condition": pl.String, "mean": pl.Float64, "std": pl.Float64,
              "n": pl.Int64, "p_value": pl.Float64, "star": pl.Boolean}
    return pl.DataFrame(rows, schema=schema).with_columns(pl.col("std").fill_nan(None))


def table1(df: pl.DataFrame, metric: str = HEADLINE) -> pl.DataFrame:
    """Table I: every variant under the inter-modality conditions l a v la lv av, their mean, and lav.

    Pass ``analysis.load.main_runs(df)`` when the runs include an overlap sweep. Text-only data has
    only ``l``; the table then has that one column.
    """
    return summarise(df, metric, TABLE1_CONDITIONS).with_columns(metric=pl.lit(metric))


def table2(df: pl.DataFrame, metric: str = HEADLINE) -> pl.DataFrame:
    """Table II: FSRF and its ablations under intra missingness (mean of the intra curve, ``intra_avg``),
    inter missingness (``avg_missing``) and complete modalities (``lav``; ``l`` for text-only data).

    The baselines (``fsrf.variants.BASELINES``) are not ablations of FSRF and are left out, as in the paper;
    the ceiling (an oracle, synthetic data) stays as the last row, the yardstick.
    Columns as ``summarise`` plus ``column`` (Intra-MM, Inter-MM, CM).
    """
    complete = complete_condition(df, metric)
    columns = [(label, complete if label == "CM" else cond) for label, cond in TABLE2_COLUMNS]
    left_out = [v for v in variants.BASELINES if not variants.BY_NAME[v].oracle]  # the ceiling stays: the yardstick
    ablations = df.filter(~pl.col("variant").is_in(left_out))
    t = summarise(ablations, metric, [c for _, c in columns])
    label = {c: lab for lab, c in columns}
    return t.with_columns(column=pl.col("condition").replace_strict(label), metric=pl.lit(metric))


# -- rendering ------------------------------------------------------------------------------------------

def _grid(t: pl.DataFrame, key: str) -> tuple[list[str], list[str], dict]:
    names = variants.ordered(t["variant"].to_list())
    cols = list(dict.fromkeys(t[key].to_list()))
    cells = {(r["variant"], r[key]): r for r in t.iter_rows(named=True)}
    return names, cols, cells


def _best(t: pl.DataFrame, key: str, metric: str) -> dict[str, float]:
    """The best mean per column among the models (an oracle such as the ceiling is no contender)."""
    agg = pl.col("mean").min() if metric in LOWER_IS_BETTER else pl.col("mean").max()
    oracles = [v.name for v in variants.VARIANTS if v.oracle]
    return dict(t.filter(~pl.col("variant").is_in(oracles)).group_by(key).agg(agg).iter_rows())


def _fmt(x: float | None, scale: float, digits: int) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * scale:.{digits}f}"


def _table(t: pl.DataFrame, *, key: str, digits: int | None):
    """Rows of (variant, n, [(mean_str, std_str, star, best)]) and the column labels."""
    metric = t["metric"][0] if "metric" in t.columns and t.height else ""
    scale = 100.0 if metric in PERCENT else 1.0
    if digits is None:  # percent with 2 decimals as the paper; MAE and Corr need more on their [0, ~2] scale
        digits = 2 if metric in PERCENT else 3
    names, cols, cells = _grid(t, key)
    best = _best(t, key, metric)
    rows = []
    for v in names:
        row = []
        for c in cols:
            r = cells.get((v, c))
            if r is None:
                row.append(None)
                continue
            row.append((_fmt(r["mean"], scale, digits), _fmt(r["std"], scale, digits), r["star"],
                        c in best and math.isclose(r["mean"], best[c], rel_tol=0, abs_tol=1e-12)))
        n = max((cells[(v, c)]["n"] for c in cols if (v, c) in cells), default=0)
        rows.append((v, n, row))
    labels = cols if key == "column" else [condition_label(c) for c in cols]
    return labels, rows


def to_markdown(t: pl.DataFrame, *, key: str = "condition", digits: int | None = None) -> str:
    """GitHub Markdown: mean ± std per cell, best mean in bold, ``*`` where p < 0.05 against FSRF."""
    labels, rows = _table(t, key=key, digits=digits)
    out = ["| Variant | n | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]
    for v, n, row in rows:
        cells = []
        for cell in row:
            if cell is None:
                cells.append("")
                continue
            mean, std, star, best = cell
            text = mean if std == "-" else f"{mean} ± {std}"
            cells.append((f"**{text}**" if best else text) + ("\\*" if star else ""))
        out.append(f"| {variant_name(v)} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _tex(s: str) -> str:
    return s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("&", "\\&").replace("%", "\\%") \
        .replace("{", "\\{").replace("}", "\\}").replace("#", "\\#")


def to_latex(t: pl.DataFrame, *, key: str = "condition", digits: int | None = None, caption: str = "") -> str:
    """A booktabs ``tabular`` (in a ``table`` float when a caption is given); best mean in bold."""
    labels, rows = _table(t, key=key, digits=digits)
    body = [r"\begin{tabular}{l" + "r" * (len(labels) + 1) + "}", r"\toprule",
            "Variant & $n$ & " + " & ".join(_tex(lab) for lab in labels) + r" \\", r"\midrule"]
    for v, n, row in rows:
        cells = []
        for cell in row:
            if cell is None:
                cells.append("")
                continue
            mean, std, star, best = cell
            text = mean if std == "-" else f"{mean} $\\pm$ {std}"
            cells.append((f"\\textbf{{{text}}}" if best else text) + ("$^{*}$" if star else ""))
        body.append(f"{_tex(variant_name(v))} & {n} & " + " & ".join(cells) + r" \\")
    body += [r"\bottomrule", r"\end{tabular}"]
    if not caption:
        return "\n".join(body) + "\n"
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(caption)}}}", *body,
                      r"\end{table}"]) + "\n"


def to_html(t: pl.DataFrame, *, key: str = "condition", digits: int | None = None, table_id: str = "") -> str:
    """An HTML ``<table>`` for the report; each cell's tooltip carries its p-value against FSRF."""
    labels, rows = _table(t, key=key, digits=digits)
    _, cols, cells = _grid(t, key)
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    out = [f"<table{ident}>", "<thead><tr><th>Variant</th><th>n</th>"
           + "".join(f"<th>{html.escape(lab)}</th>" for lab in labels) + "</tr></thead>", "<tbody>"]
    for v, n, row in rows:
        tds = []
        for c, cell in zip(cols, row):
            if cell is None:
                tds.append("<td></td>")
                continue
            mean, std, star, best = cell
            p = cells[(v, c)]["p_value"]
            title = f' title="Welch p = {p:.3g} against FSRF"' if p is not None else ""
            text = mean if std == "-" else f"{mean} ± {std}"
            text = f"<b>{text}</b>" if best else text
            tds.append(f"<td{title}>{text}{'<sup>*</sup>' if star else ''}</td>")
        out.append(f"<tr><th>{html.escape(variant_name(v))}</th><td>{n}</td>{''.join(tds)}</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def p_values(t: pl.DataFrame, *, key: str = "condition") -> pl.DataFrame:
    """Welch p-values against FSRF as a variant x condition grid (FSRF itself left out)."""
    others = t.filter(pl.col("variant") != REFERENCE)
    if others.height == 0:
        return pl.DataFrame({"variant": []}, schema={"variant": pl.String})
    cols = list(dict.fromkeys(t[key].to_list()))
    wide = others.pivot(on=key, index="variant", values="p_value")
    return wide.select(["variant", *[c for c in cols if c in wide.columns]])


def to_csv(t: pl.DataFrame) -> str:
    """The long table with full precision (fractions, not percent): what a reader re-analyses."""
    return t.write_csv()


# -- uncertainty over seeds (rliable; analysis/uncertainty.py) --------------------------------------------

BOOTSTRAP_REPS, BOOTSTRAP_SEED = 2000, 0  # a fixed seed: the report's intervals are reproducible


def uncertainty_table(df: pl.DataFrame, metric: str = HEADLINE, *, reps: int = BOOTSTRAP_REPS,
                      seed: int = BOOTSTRAP_SEED) -> pl.DataFrame:
    """Per variant, over its seeds: mean, std, IQM and their 95 % stratified-bootstrap intervals of two
    scores, and FSRF's probability of improvement over the variant (``analysis.uncertainty``): the
    chance that FSRF scores better (higher; lower for MAE) on a condition, for a seed of each.

    The scores: ``avg_missing``, a (seeds, 6) matrix with the six missing conditions as tasks (its mean
    is Table I's avg_missing), and the complete condition (``lav``; ``l`` for text-only data, which then
    is the only score) as one task. P(FSRF better) takes all of these conditions as tasks. Seeds
    lacking any of them are left out. One row per variant: variant, n, ``<score>_{mean, std, iqm,
    mean_lo, mean_hi, iqm_lo, iqm_hi}`` per score, poi, poi_lo, poi_hi (null for FSRF itself or
    without FSRF runs), poi_tasks, metric.
    """
    def have(c):
        return f"test/{metric}/{c}" in df.columns

    complete = complete_condition(df, metric)
    scores = [(s, conds) for s, conds in (("avg_missing", MISSING_CONDITIONS), (complete, (complete,)))
              if all(map(have, conds))]
    tasks = list(dict.fromkeys(c for _, conds in scores for c in conds))
    fields = ("mean", "std", "iqm", "mean_lo", "mean_hi", "iqm_lo", "iqm_hi")
    schema = {"variant": pl.String, "n": pl.Int64, **{f"{s}_{k}": pl.Float64 for s, _ in scores for k in fields},
              "poi": pl.Float64, "poi_lo": pl.Float64, "poi_hi": pl.Float64, "poi_tasks": pl.String}
    cols = [pl.col(f"test/{metric}/{c}") for c in tasks]
    names = variants.ordered(df["variant"].to_list()) if tasks else []
    matrices = {v: df.filter((pl.col("variant") == v) & pl.all_horizontal([c.is_finite() for c in cols]))
                .select(cols).to_numpy() for v in names}
    matrices = {v: m for v, m in matrices.items() if len(m)}  # (seeds, tasks)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0  # "better" is lower for MAE
    rows = []
    for variant, m in matrices.items():
        row = {"variant": variant, "n": len(m), "poi_tasks": ",".join(tasks)}
        for score, conds in scores:
            x = m[:, [tasks.index(c) for c in conds]]  # (seeds, tasks of this score)
            for name, statistic in (("mean", uncertainty.mean), ("iqm", uncertainty.iqm)):
                row[f"{score}_{name}"], row[f"{score}_{name}_lo"], row[f"{score}_{name}_hi"] = \
                    uncertainty.stratified_bootstrap_ci(x, statistic, reps=reps, seed=seed, vectorized=True)
            row[f"{score}_std"] = float(np.std(x.mean(axis=1), ddof=1)) if len(x) > 1 else None  # as Table I
        if REFERENCE in matrices and variant != REFERENCE:
            row["poi"], row["poi_lo"], row["poi_hi"] = uncertainty.probability_of_improvement_ci(
                sign * matrices[REFERENCE], sign * m, reps=reps, seed=seed)
        rows.append(row)
    return pl.DataFrame(rows, schema=schema).with_columns(metric=pl.lit(metric))


def uncertainty_display(u: pl.DataFrame) -> pl.DataFrame:
    """The uncertainty table as text cells (F1 and accuracies in percent): per score mean ± std, the 95 %
    interval of the mean, IQM [95 % interval]; then P(FSRF better than the variant) [95 % interval]."""
    metric = u["metric"][0] if u.height else ""
    scale, digits = (100.0, 2) if metric in PERCENT else (1.0, 3)
    scores = [c.removesuffix("_mean") for c in u.columns if c.endswith("_mean")]
    rows = []
    for r in u.iter_rows(named=True):
        row = {"Variant": variant_name(r["variant"]), "n": str(r["n"])}
        for s in scores:
            f = {k: _fmt(r[f"{s}_{k}"], scale, digits) for k in ("mean", "std", "iqm", "mean_lo", "mean_hi",
                                                                  "iqm_lo", "iqm_hi")}
            label = condition_label(s)
            row[f"{label} mean ± std"] = f"{f['mean']} ± {f['std']}"
            row[f"{label} 95% CI of mean"] = f"[{f['mean_lo']}, {f['mean_hi']}]"
            row[f"{label} IQM [95% CI]"] = f"{f['iqm']} [{f['iqm_lo']}, {f['iqm_hi']}]"
        row[f"P({variant_name(REFERENCE)} better than variant) [95% CI]"] = (
            "-" if r["poi"] is None else f"{r['poi']:.2f} [{r['poi_lo']:.2f}, {r['poi_hi']:.2f}]")
        rows.append(row)
    return pl.DataFrame(rows, schema={k: pl.String for k in rows[0]} if rows else None)


def frame_markdown(df: pl.DataFrame) -> str:
    """A table of text cells as GitHub Markdown, the first column left-aligned."""
    out = ["| " + " | ".join(df.columns) + " |", "|---|" + "---:|" * (df.width - 1)]
    out += ["| " + " | ".join(row) + " |" for row in df.iter_rows()]
    return "\n".join(out) + "\n"


def frame_latex(df: pl.DataFrame, *, caption: str = "") -> str:
    """A table of text cells as a booktabs ``tabular`` (in a ``table`` float when a caption is given)."""
    def tex(s):
        return _tex(s).replace("±", r"$\pm$")

    body = [r"\begin{tabular}{l" + "r" * (df.width - 1) + "}", r"\toprule",
            " & ".join(tex(c) for c in df.columns) + r" \\", r"\midrule",
            *(" & ".join(tex(x) for x in row) + r" \\" for row in df.iter_rows()), r"\bottomrule", r"\end{tabular}"]
    if not caption:
        return "\n".join(body) + "\n"
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(caption)}}}", *body,
                      r"\end{table}"]) + "\n"
