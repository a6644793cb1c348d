"""The report's page: one function per section, each turning tables and figures into HTML with the
short explanation a reader needs, its measured numbers written in.

Adding a section is an edit of this file alone: write its function (it calls ``Report.section``, or
``Report.omitted`` when its input is missing) and call it in ``write_report``, where the page's order is;
the table of contents and the list of files follow from what the sections wrote. Variants are ordered,
labelled and described by ``fsrf.variants``, never here.

A section whose input is missing is replaced by a one-line note (``Report.omitted``). Figures and tables
are written into the report folder as they are made (PNG and SVG; CSV, Markdown, LaTeX), and the PNG
written there is the one embedded in the page as base64, so the page and the files always agree.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from analysis import figures, health, load, probe, robustness, tables, tuning, yardsticks
from fsrf import variants
from fsrf.errors import InputError
from fsrf.protocol import BEST_OBJECTIVE, HEADLINE, all_rates_conditions
from fsrf.variants import REFERENCE

VERSIONED = ("torch", "ray", "mlflow", "optuna", "polars", "pot", "fsrf", "numpy", "scipy", "scikit-learn",
             "matplotlib")
# Parts of FSRF that need two or more modalities: on text-only data they are said to be not applicable.
MULTIMODAL_ONLY = (
    "eq (1), the contrastive loss between the modalities' homogeneous representations (with one modality "
    "there is no pair: the loss is 0)",
    "the pairwise (cross-modality) margin term of eq (2), also 0",
    "the inter-modality conditions of Table I ({a}, {v}, {l,a}, ...; only {l} exists) and with them "
    "Inter-MM in Table II",
    "the factorization probe and Fig. 3 (homogeneous vs heterogeneous content is defined across modalities)",
    "the paired-mask overlap study (both MRM views always keep the one modality)",
    "the per-modality curves (one modality loses frames while the others stay complete)",
)


@dataclass(frozen=True)
class Inputs:
    """What a report is built from; everything but ``runs`` is optional and its section is omitted without."""

    runs: pl.DataFrame  # the wide table (analysis.load)
    source: str  # where the runs came from, for the page: a run id or a parquet path
    config: load.StudyConfig | None = None
    representations: list[load.Representations] | None = None  # None: not read (no MLflow run)
    study: load.TuningStudy | None = None
    ceiling_note: str | None = None  # why a synthetic study's report has no ceiling (``yardsticks.add_ceiling``)


def esc(x) -> str:
    return html.escape(str(x))


def pct(x: float | None, metric: str = HEADLINE) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.2f}" if metric in tables.PERCENT else f"{x:.4f}"


def listing(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join([", ".join(items[:-1]), items[-1]]) if len(items) > 1 else "".join(items)


def num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{round(x, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.000" for a rounding residue


def pval(p: float | None) -> str:
    return "n/a" if p is None else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")


def frame_html(df: pl.DataFrame, *, table_id: str = "", digits: int = 4) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = []
    for row in df.iter_rows():
        cells = []
        for v in row:
            if isinstance(v, float):
                v = num(v, digits)
            cells.append(f"<td>{esc('' if v is None else v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def kv_html(items: dict, *, table_id: str = "") -> str:
    return frame_html(pl.DataFrame({"name": list(map(str, items)), "value": [str(v) for v in items.values()]},
                                   schema={"name": pl.String, "value": pl.String}), table_id=table_id)


@dataclass
class Report:
    """Collects sections and writes figures and tables into the (temporary) out folder as it goes."""

    folder: Path
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, title, inner HTML)
    files: list[str] = field(default_factory=list)

    def section(self, ident: str, title: str, *parts: str) -> None:
        self.sections.append((ident, title, "\n".join(p for p in parts if p)))

    def omitted(self, ident: str, title: str, why: str) -> None:
        self.sections.append((ident, title, f'<p class="note">Omitted: {esc(why)}</p>'))

    def figure(self, fig, name: str, caption: str) -> str:
        png, svg = figures.save(fig, self.folder / "figures", name)
        self.files += [png.name, svg.name]
        b64 = base64.b64encode(png.read_bytes()).decode("ascii")  # the same PNG, not a second rendering
        return (f'<figure id="fig-{name}"><img alt="{esc(caption)}" src="data:image/png;base64,{b64}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>")

    def table(self, t: pl.DataFrame, name: str, *, key: str = "condition", caption: str = "") -> str:
        folder = self.folder / "tables"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.csv").write_text(tables.to_csv(t))
        (folder / f"{name}.md").write_text(tables.to_markdown(t, key=key))
        (folder / f"{name}.tex").write_text(tables.to_latex(t, key=key, caption=caption))
        self.files += [f"{name}.csv", f"{name}.md", f"{name}.tex"]
        return tables.to_html(t, key=key, table_id=f"table-{name}")

    def csv(self, df: pl.DataFrame, name: str) -> None:
        folder = self.folder / "tables"
        folder.mkdir(parents=True, exist_ok=True)
        df.write_csv(folder / f"{name}.csv")
        self.files.append(f"{name}.csv")


# -- sections -------------------------------------------------------------------------------------------

def conditions_text(text_only: bool) -> str:
    if text_only:
        return ("<p>The data are <b>text-only</b>: language is the only modality, so the inter-modality "
                "conditions reduce to <code>{l}</code> (the complete input); the intra-modality conditions drop "
                "tokens of the text.</p>")
    return (
        "<p>Every model is scored on the <b>test split</b> under fixed test conditions; a condition's random "
        "mask is fixed by its mask seed, so the variants are compared on the same masks.</p><ul>"
        "<li><b>Inter-modality missingness</b> (Table I): the braces list the modalities that are <i>present</i> "
        "(l = language, a = audio, v = visual); an absent modality is replaced by zeros. <code>{l,a,v}</code> is "
        "the complete input; <b>Avg. (missing)</b> is the mean over the six incomplete conditions.</li>"
        "<li><b>Intra-modality missingness</b> (the curves, Fig. 2): each frame (token) of every modality is "
        "dropped independently with probability p = 0.1 .. 1.0; p = 1 drops everything.</li>"
        "<li><b>Per-modality missingness</b> (extension): the same drops applied to one modality at a time, the "
        "other two complete (<code>intra_a_0.3</code>: audio at p = 0.3), and every modality at its own rate "
        "(<code>rates_l0.9_a0.3_v0.3</code>).</li></ul>")


def text_only_note(source: str | None, dataset: str | None) -> str:
    """The one note saying which parts of FSRF do not apply to text-only data (instead of failing or
    pretending)."""
    what = f" ({esc(source)}{': ' + esc(dataset.upper()) if dataset else ''})" if source else ""
    return ('<p class="note" id="text-only-note"><b>Text-only data</b>' + what + ": language is the only modality, "
            "so the parts of FSRF that need two or more modalities are <b>not applicable</b> and are not reported: "
            + "; ".join(esc(x) for x in MULTIMODAL_ONLY) + ". What remains is measured: the single-modality "
            "model (encoder, R_ho/R_he/R_n heads and score head, trained with the cross-sample term of eq (2), "
            "eq (3) on the noise representation and the self-distillation between the two MRM views), the {l} "
            "column of Table I, the word-drop curves and the burst drops.</p>")


def table1_section(rep: Report, main: pl.DataFrame, metric: str, *, ident: str = "table1", headline: bool = True) -> dict:
    t1 = tables.table1(main, metric)
    if t1.height == 0:
        rep.omitted(ident, f"Table I ({metric})", f"no test/{metric}/<condition> values for the Table I conditions")
        return {}
    html_table = rep.table(t1, f"table1_{metric}", caption=f"Table I: {metric} under inter-modality missingness")
    pv = tables.p_values(t1)
    if pv.height:
        rep.csv(pv, f"table1_{metric}_pvalues")
    n_seeds = ", ".join(f"{tables.variant_name(v)} {n}" for v, n in
                        t1.group_by("variant", maintain_order=True).agg(pl.col("n").max()).iter_rows())
    cond = "avg_missing" if "avg_missing" in t1["condition"].to_list() else t1["condition"][0]
    row = {r["variant"]: r for r in t1.filter(pl.col("condition") == cond).iter_rows(named=True)}
    facts = []
    if REFERENCE in row:
        facts.append(f"On <b>{esc(tables.condition_label(cond))}</b> FSRF scores {pct(row[REFERENCE]['mean'], metric)} "
                     f"± {pct(row[REFERENCE]['std'], metric)}")
        for v, r in row.items():
            if v == REFERENCE:
                continue
            verdict = "a significant difference" if r["star"] else "not a significant difference"
            facts.append(f"{esc(tables.variant_name(v))} {pct(r['mean'], metric)} ± {pct(r['std'], metric)} "
                         f"(Welch p = {pval(r['p_value'])}: {verdict})")
    n_star = int(t1["star"].sum())
    n_tests = int(t1["p_value"].is_not_null().sum())
    unit = " in percent" if metric in tables.PERCENT else ""
    text = (
        f"<p>Each cell is the mean ± standard deviation (ddof = 1) over seeds of the test <code>{esc(metric)}</code>"
        f"{unit}; seeds per variant: {esc(n_seeds)}. <b>Bold</b> marks the best mean in each column. "
        "<b>*</b> marks a variant whose scores differ from FSRF's under Welch's two-sided t-test (unequal "
        "variances) with p &lt; 0.05. The paper compares FSRF with one baseline and stars FSRF's row; here each "
        "variant is compared with FSRF, so the star sits on the compared variant and FSRF's row has none. "
        f"{n_star} of {n_tests} comparisons are significant. Hover a cell for its p-value; all p-values are "
        f"in <code>table1_{esc(metric)}_pvalues.csv</code>.</p>")
    if facts:
        text += "<p>" + "; ".join(facts) + ".</p>"
    title = f"Table I: inter-modality missingness ({metric})"
    rep.section(ident, title, text, html_table,
                "<h3>Welch p-values against FSRF</h3>" + frame_html(pv, table_id=f"pvalues-{metric}") if pv.height else "")
    if headline and t1["condition"].n_unique() > 1:
        rep.section(f"{ident}-bars", "Table I as bars",
                    rep.figure(figures.table1_figure(t1), f"table1_bars_{metric}",
                               f"Table I ({metric}): mean over seeds per condition, error bars ±1 std"))
    return {"t1": t1, "cond": cond, "row": row}


def uncertainty_section(rep: Report, main: pl.DataFrame, metric: str) -> None:
    """Table I's headline scores with rliable's uncertainty: IQM, bootstrap intervals, P(FSRF better)."""
    title = f"Uncertainty over seeds ({metric})"
    u = tables.uncertainty_table(main, metric)
    if u.height == 0:
        rep.omitted("uncertainty", title, f"no seed has test/{metric} under the complete condition")
        return
    name, shown = f"uncertainty_{metric}", tables.uncertainty_display(u)
    rep.csv(u, name)
    (rep.folder / "tables" / f"{name}.md").write_text(tables.frame_markdown(shown))
    (rep.folder / "tables" / f"{name}.tex").write_text(
        tables.frame_latex(shown, caption=f"Uncertainty over seeds: {metric}"))
    rep.files += [f"{name}.md", f"{name}.tex"]
    tasks = u["poi_tasks"][0].split(",")
    scores = ("<b>Avg. (missing)</b> is a seeds × 6 score matrix, the six incomplete conditions as tasks (its "
              "mean is Table I's); "
              if "avg_missing_mean" in u.columns else "")
    said = [f"{esc(tables.variant_name(r['variant']))} {num(r['poi'], 2)} [{num(r['poi_lo'], 2)}, "
            f"{num(r['poi_hi'], 2)}]" for r in u.iter_rows(named=True) if r["poi"] is not None]
    text = (
        "<p>How sure the comparison is with so few seeds, as rliable reports it (Agarwal et al. 2021, \"Deep RL at "
        f"the edge of the statistical precipice\"). {scores}<b>{esc(tables.condition_label(tasks[-1]))}</b> is "
        "one task. <b>mean ± std</b>: as in Table I, over seeds (ddof = 1). <b>95% CI</b>: the stratified "
        f"bootstrap percentile interval: {tables.BOOTSTRAP_REPS} times, within every task separately, as many "
        "seeds as were run are drawn with replacement and the statistic recomputed; the interval holds the "
        "middle 95% of those values. It cannot reach beyond the observed scores, so with few seeds it "
        "understates the uncertainty: read it as the least there is. <b>IQM</b>: the interquartile mean, the "
        "mean of the middle 50% of all seed × task scores, less moved by one bad seed than the mean and less "
        "noisy than the median. <b>P(FSRF better "
        "than variant)</b>: the probability that a random seed of FSRF scores better than a random seed of the "
        "variant on a condition (ties count half), averaged over the conditions "
        + esc(", ".join(tables.condition_label(c) for c in tasks))
        + "; 0.5 means neither is better, 1 that FSRF wins every pair; its interval resamples both variants' "
        "seeds the same way. Welch's test in Table I asks whether the means differ; these say how large and how "
        f"certain the difference is. The bootstrap seed is fixed ({tables.BOOTSTRAP_SEED}), so the numbers are "
        f"reproducible; full precision in <code>{esc(name)}.csv</code>.</p>")
    if said:
        text += "<p>P(FSRF better): " + "; ".join(said) + ".</p>"
    rep.section("uncertainty", title, text, frame_html(shown, table_id=f"table-{name}"))


def curves_section(rep: Report, main: pl.DataFrame, metric: str, complete: str, *,
                   references: dict[str, float] | None = None,
                   max_rates: dict[str, float] | None = None) -> pl.DataFrame | None:
    try:
        cv = robustness.curves(main, metric)
        summary = robustness.robustness_summary(main, metric)
    except ValueError as err:
        rep.omitted("curves", "Robustness curves (Fig. 2)", str(err))
        return None
    if cv.height == 0:
        rep.omitted("curves", "Robustness curves (Fig. 2)", "no run has all 11 curve points")
        return None
    rep.csv(cv, f"curves_{metric}")
    rep.csv(summary, f"robustness_{metric}")
    zeroed = zeroed_summary = None
    if robustness.has_curve(main, metric, "zeroed"):
        zeroed = robustness.curves(main, metric, kind="zeroed")
        zeroed_summary = robustness.robustness_summary(main, metric, kind="zeroed")
        rep.csv(zeroed, f"curves_zeroed_{metric}")
        rep.csv(zeroed_summary, f"robustness_zeroed_{metric}")
    caption = f"{metric} against the intra-modality missing ratio p; band: ±1 std over seeds"
    if zeroed is not None:
        caption = (f"{metric} against the word-drop ratio p, each word lost two ways: its id replaced by [UNK] "
                   "before the encoder (solid, the protocol) or its cached encoder state zeroed (dashed); "
                   "band: ±1 std over seeds")
    if references:
        caption += "; short black/brown marks at p = 0: " + tables.PAPER_CAVEAT
    caption += "; " + max_rate_caption(max_rates)
    fig = rep.figure(figures.curves_figure(cv, metric=metric, zeroed=zeroed, references=references, max_rates=max_rates),
                     "curves", caption)
    has_base = summary["effective"].null_count() < summary.height
    lines = []
    for r in summary.iter_rows(named=True):
        s = (f"{esc(tables.variant_name(r['variant']))}: AUC {num(r['auc'])} "
             f"(per seed {num(r['auc_seed_mean'])} ± {num(r['auc_seed_std'])})")
        if r["effective"] is not None:
            s += f", effective robustness {num(r['effective'])} (per seed ± {num(r['effective_seed_std'])})"
        lines.append(s)
    show = summary.select(["variant", "n", "auc", "auc_seed_std", "effective", "effective_seed_std",
                           "auc_norm", "effective_norm"])
    start = "the complete-modality score (<code>" + esc(complete) + "</code>)"
    text = (
        f"<p>Each line is the mean over seeds of the test <code>{esc(metric)}</code> at missing ratio p, with p = 0 "
        f"being {start}; the band is ±1 standard deviation over seeds. A flatter curve means a model loses less "
        "as frames go missing.</p>"
        "<p><b>AUC</b> (MultiBench's relative robustness) is the trapezoid area under the mean curve over "
        "p in [0, 1] with step 0.1, on the metric's own scale (a model keeping a score of 1.0 at every p would "
        "score 1.0). "
        + ("<b>Effective robustness</b> is the sum over the 11 points of f(p) − (b(p) + f(0) − b(0)), where b is "
           "the late-fusion baseline's mean curve: the baseline is shifted to start at the variant's clean score, "
           "and what the variant keeps beyond it is added up; positive means it degrades more slowly than the "
           "baseline (the baseline itself scores 0). " if has_base else
           "Effective robustness needs the late-fusion baseline, which this study did not run. ")
        + ("With three or more variants both figures are also max-min normalised across them "
           "(<code>*_norm</code>: best 1, worst 0), as MultiBench reports them. " if summary.height >= 3 else "")
        + "</p><p>" + "; ".join(lines) + ".</p>")
    if any(map(robustness.is_closed_form, summary["variant"].to_list())):
        text += ("<p>The grey dotted line is the <b>simplest baseline</b>: ridge regression on the frozen "
                 "encoder's mean-pooled word states (no network is trained), scored under the same conditions and "
                 "masks, a dropped word's state counted as zero. A model that does not beat it adds nothing to a "
                 "linear read-out of what the encoder already gives.</p>")
    if max_rates:
        text += f"<p>{MAX_RATE_TEXT}</p>"
    parts = [fig, text]
    if zeroed is not None:
        parts.append(two_ways_text(summary, zeroed_summary, metric))
    parts.append(frame_html(show, table_id="robustness-summary"))
    rep.section("curves", "Robustness curves (Fig. 2) and robustness figures", *parts)
    return summary


def max_rate_caption(max_rates: dict | None) -> str:
    """What the vertical dashed line of a curve figure is, or why it is missing."""
    if max_rates is None:
        return ("max training rate not marked: it is read from the runs' params in MLflow "
                "(pass --robustness-run)")
    if not max_rates:
        return "max training rate not marked: the runs' params do not give their missing-rate schedule"
    return ("dashed vertical line: max training rate, the largest missing rate of the variant's training "
            "schedule (missing.schedule, p0, p1)")


MAX_RATE_TEXT = (
    "The dashed vertical line marks the <b>max training rate</b>, the largest missing rate r that the "
    "variant's MRM schedule reaches (MuteBench: robustness holds only up to the highest rate a model was "
    "trained with). In MRM, r is both the probability that a modality is absent and the probability that "
    "a present modality loses frames, then a U(0, 1) fraction of them; so the line is the schedule's "
    "ceiling on the same 0..1 scale, not a bound on the fractions seen in training.")


def modality_section(rep: Report, main: pl.DataFrame, metric: str, *, text_only: bool,
                     max_rates: dict[str, dict[str, float]] | None) -> None:
    """Per-modality missingness: one modality loses frames at ratio p while the others stay complete."""
    title = "Per-modality missingness: which modality's loss hurts most"
    if text_only:
        rep.omitted("modality", title, "not applicable to text-only data: language is the only modality, and "
                                       "its curve is the word-drop curve above")
        return
    cv = robustness.modality_curves(main, metric)
    if cv.height == 0:
        rep.omitted("modality", title, f"no run has the per-modality conditions (test/{metric}/intra_<m>_<p>; "
                                       "runs evaluated before they were added to the protocol lack them)")
        return
    summary = robustness.modality_summary(main, metric)
    rep.csv(cv, f"modality_curves_{metric}")
    rep.csv(summary, f"modality_robustness_{metric}")
    fig = rep.figure(figures.modality_curves_figure(cv, metric=metric, max_rates=max_rates), "modality_curves",
                     f"{metric} when only one modality loses frames at ratio p, the other two complete; one panel "
                     f"per variant, band ±1 std over seeds; {max_rate_caption(max_rates)}")
    names = robustness.MODALITY_NAMES
    hardest = robustness.hardest_modality(summary)
    said = []
    for variant, m in hardest.items():
        auc = {r["modality"]: r["auc"] for r in summary.filter(pl.col("variant") == variant).iter_rows(named=True)}
        others = ", ".join(f"{names[o]} {num(a)}" for o, a in auc.items() if o != m)
        said.append(f"{esc(tables.variant_name(variant))}: losing <b>{names[m]}</b> hurts most (AUC {num(auc[m])}; "
                    f"{others})")
    table = (summary.pivot(on="modality", index="variant", values="auc")
             .rename({m: f"auc_{names[m]}" for m in names if m in summary["modality"].to_list()})
             .with_columns(hardest=pl.col("variant").replace_strict({v: names[m] for v, m in hardest.items()})))
    text = (
        f"<p>Each curve is the test <code>{esc(metric)}</code> when a single modality loses each valid frame "
        "(token for language) with probability p and the other two stay complete (conditions "
        "<code>intra_l_p</code>, <code>intra_a_p</code>, <code>intra_v_p</code>; p = 0 is the complete input), "
        "mean over seeds with a ±1 std band. MissBench's point: a model robust under one rate shared by all "
        "modalities can still depend unevenly on them. The modality whose curve has the lowest area (AUC, "
        "trapezoid over p = 0..1 as above) is the one whose loss hurts most. The dashed lines mark the max "
        "training rate as above, times <code>missing.modality_scale</code> of the modality when it was set.</p>"
        "<p>" + "; ".join(said) + ".</p>")
    parts = [fig, text, frame_html(table, table_id="modality-auc"),
             f"<p>Per seed spread and effective robustness per modality: <code>modality_robustness_"
             f"{esc(metric)}.csv</code>.</p>"]
    columns = set(main.columns)
    rates = [c.name for c in all_rates_conditions() if f"test/{metric}/{c.name}" in columns]
    if rates:
        rows = []
        for variant in variants.ordered(main["variant"].to_list()):
            x = main.filter(pl.col("variant") == variant)
            row = {"variant": variant}
            for c in rates:
                v = x[f"test/{metric}/{c}"].drop_nulls().drop_nans()
                row[c] = (f"{pct(v.mean(), metric)} ± {pct(v.std(), metric)}" if v.len() > 1
                          else pct(v.mean(), metric) if v.len() else "")
            rows.append(row)
        rate_table = pl.DataFrame(rows, schema={"variant": pl.String, **{c: pl.String for c in rates}})
        rep.csv(rate_table, f"modality_rates_{metric}")
        parts.append("<h3>Each modality its own rate</h3><p>Every modality loses frames at once, each at its own "
                     "rate (<code>rates_l&lt;r&gt;_a&lt;r&gt;_v&lt;r&gt;</code>, from "
                     "<code>eval.modality_rates</code>; each modality's mask is that of its own per-modality "
                     "point): mean ± std over seeds.</p>"
                     + frame_html(rate_table, table_id="modality-rates"))
    rep.section("modality", title, *parts)


def two_ways_text(unk: pl.DataFrame, zeroed: pl.DataFrame, metric: str) -> str:
    """How the two word-drop curves differ, with the AUC of both per variant (a table and a sentence)."""
    z_auc = {r["variant"]: r for r in zeroed.iter_rows(named=True)}
    u_auc = {r["variant"]: r for r in unk.iter_rows(named=True)}
    rows, said = [], []
    for v in variants.ordered(list(z_auc) + list(u_auc)):
        z, u = z_auc.get(v), u_auc.get(v)
        rows.append({"variant": v, "auc_zeroed": z["auc"] if z else None,
                     "auc_zeroed_seed_std": z["auc_seed_std"] if z else None,
                     "auc_unk": u["auc"] if u else None, "auc_unk_seed_std": u["auc_seed_std"] if u else None,
                     "unk_minus_zeroed": (u["auc"] - z["auc"]) if z and u else None})
        if z and u:
            said.append(f"{esc(tables.variant_name(v))}: AUC {num(u['auc'])} with [UNK] ids, "
                        f"{num(z['auc'])} with zeroed states (difference {num(u['auc'] - z['auc'])})")
        elif u:
            said.append(f"{esc(tables.variant_name(v))}: AUC {num(u['auc'])} with [UNK] ids; "
                        "no zeroed-state curve")
    schema = {k: pl.Float64 for k in ("auc_zeroed", "auc_zeroed_seed_std", "auc_unk", "auc_unk_seed_std",
                                      "unk_minus_zeroed")}
    table = pl.DataFrame(rows, schema={"variant": pl.String, **schema})
    return (
        "<h3>Two ways to lose a word</h3>"
        "<p>A dropped word can be taken away in two ways, and both curves are drawn on the same masks (the same "
        "words dropped at every p). <b>[UNK] ids</b> (solid, conditions <code>intra_p</code>, the protocol "
        "since SPEC 7, and what the field's code does): the dropped word's token id is replaced by "
        "<code>[UNK]</code> before the encoder, which reads the damaged utterance, so every other word's state "
        "changes with its context and no kept state carries the dropped word; at p = 1 the encoder still reads "
        "a sequence of [UNK] ids (the utterance's length survives). With the frozen encoder each condition's "
        "damaged utterances are encoded once and cached. <b>Zeroed states</b> (dashed, conditions "
        "<code>zeroed_p</code>, <code>eval.zeroed_curve</code>, section 2's semantics): the encoder reads the "
        "whole utterance once and a dropped word's cached state is set to zero before pooling; the other words "
        "keep the states they had in full context, so they still carry the dropped words, and at p = 1 the "
        "pooled input is exactly zero, one constant prediction. The solid curve measures robustness to a "
        "damaged input sentence, the dashed one to lost features of a sentence the encoder has read whole.</p>"
        f"<p>Measured (AUC of <code>{esc(metric)}</code>, trapezoid over p = 0..1, the same f(0) = the complete "
        "utterance for both): " + "; ".join(said) + ".</p>"
        + frame_html(table, table_id="two-ways-auc"))


def references_section(rep: Report, t1: pl.DataFrame | None, metric: str, dataset: str,
                       references: dict[str, float]) -> None:
    """The paper's Table I {l} values beside this study's measured {l}, clearly marked as not comparable."""
    rows = [{"method": label, "source": "paper, Table I",
             "encoder / protocol": "BERT-base fine-tuned; paper's protocol",
             f"{metric} {{l}} (%)": f"{100 * v:.2f}", "n": ""} for label, v in references.items()]
    if t1 is not None and t1.height:
        for r in t1.filter(pl.col("condition") == "l").iter_rows(named=True):
            rows.append({"method": tables.variant_name(r["variant"]), "source": "this study (measured)",
                         "encoder / protocol": "this study's encoder and protocol",
                         f"{metric} {{l}} (%)": f"{pct(r['mean'], metric)} ± {pct(r['std'], metric)}",
                         "n": str(r["n"])})
    table = pl.DataFrame(rows, schema={k: pl.String for k in rows[0]})
    rep.csv(table, "paper_references")
    rep.section(
        "references", f"Honest references: the paper's {{l}} values on {dataset.upper()}",
        f'<p class="note"><b>{esc(tables.PAPER_CAVEAT[0].upper() + tables.PAPER_CAVEAT[1:])}.</b></p>',
        "<p>The paper's Table I reports, for language alone (<code>{l}</code>), "
        + "; ".join(f"{esc(k)} {100 * v:.2f}" for k, v in references.items())
        + f" in percent of Non0 F1 on {esc(dataset.upper())}. They are drawn as short marks at p = 0 on the curves "
        "figure and listed here beside this study's measured <code>{l}</code> scores only as context: the paper "
        "fine-tunes BERT-base under its own training and evaluation protocol (its splits' preprocessing, "
        "checkpoint selection and reporting), so a gap to these numbers is not a measured difference between "
        "methods.</p>",
        frame_html(table, table_id="paper-references"))


def ablation_mode_text(config: load.StudyConfig | None) -> str:
    """Which ablation mode the study used (``studies/robustness.py``: shared or fair)."""
    if config is None:
        return '<p class="note">Ablation mode unknown (no MLflow parent run).</p>'
    p = config.parent_params
    if p.get("study.ablation_mode") == "fair":
        return (f"<p><b>Ablation mode: fair.</b> Every variant was tuned by its own study with the same budget "
                f"({esc(p.get('study.fair_trials'))} configurations, at most {esc(p.get('study.fair_epochs'))} "
                f"epochs, search seed {esc(p.get('study.fair_search_seed'))}, selecting on validation) and then "
                f"run with its own best configuration (studies: <code>{esc(p.get('study.fair_studies'))}</code>).</p>")
    return ("<p><b>Ablation mode: shared.</b> Every variant reuses one configuration "
            f"({esc(p.get('study.source', 'the config'))}), chosen for FSRF, as the field's papers do; "
            "<code>studies/robustness.py --fair</code> tunes each variant on its own.</p>")


def table2_section(rep: Report, main: pl.DataFrame, metric: str, config: load.StudyConfig | None = None) -> None:
    t2 = tables.table2(main, metric)
    if t2.height == 0 or t2["variant"].n_unique() < 1:
        rep.omitted("table2", "Table II: ablations", "no FSRF or ablation runs")
        return
    html_table = rep.table(t2, f"table2_{metric}", key="column", caption=f"Table II: ablations ({metric})")
    cols = ", ".join(f"<b>{esc(lab)}</b> = <code>{esc(c)}</code>" for lab, c in
                     dict(zip(t2["column"], t2["condition"])).items())
    fs = {r["column"]: r for r in t2.filter(pl.col("variant") == REFERENCE).iter_rows(named=True)}
    drops = []
    for r in t2.filter(pl.col("variant") != REFERENCE).iter_rows(named=True):
        if r["column"] in fs:
            d = r["mean"] - fs[r["column"]]["mean"]
            drops.append(f"{esc(tables.variant_name(r['variant']))} {esc(r['column'])}: {pct(d, metric)} "
                         f"against FSRF (p = {pval(r['p_value'])})")
    meaning = {"Intra-MM": "the mean of the ten intra-curve points", "CM": "the complete input",
               "Inter-MM": "the mean of the six incomplete Table I conditions"}
    ablations = [variants.description(v) for v in t2["variant"].unique(maintain_order=True)
                 if v != REFERENCE and variants.description(v)]
    baselines = [esc(tables.variant_name(v)) for v in variants.BASELINES if not variants.BY_NAME[v].oracle]
    text = (f"<p>FSRF against its ablations ({'; '.join(ablations) or 'none were run'}). Columns: {cols}; "
            + ", ".join(f"{lab} is {meaning[lab]}" for lab in t2["column"].unique(maintain_order=True))
            + ". Cells as in Table I (mean ± std over seeds, * p &lt; 0.05 against FSRF)."
            + (f" The baselines, {listing(baselines)}, are not ablations and are left out." if baselines else "")
            + "</p>")
    if drops:
        text += "<p>Differences of the means: " + "; ".join(drops) + ".</p>"
    rep.section("table2", "Table II: ablations", ablation_mode_text(config), text, html_table)


def ceiling_section(rep: Report, main: pl.DataFrame, metric: str, complete: str, note: str | None) -> None:
    """Each variant's gap to the synthetic ceiling and the share it recovers (``analysis.yardsticks``)."""
    title = "Ceiling: gap and recovered share"
    if note:
        rep.omitted("ceiling", title, note)
        return
    conds = [c for c in (*tables.MISSING_CONDITIONS, "avg_missing", complete, "intra_0.3", "intra_0.5", "intra_0.7",
                         "intra_avg") if f"test/{metric}/{c}" in main.columns]
    t = yardsticks.gap_table(main, metric, conds, complete=complete)
    if t.height == 0:
        rep.omitted("ceiling", title, "real data: there is no generator to compute a ceiling from (the shuffled "
                    "floors below are this study's yardstick)")
        return
    rep.csv(t, f"ceiling_gap_{metric}")
    cell = t.with_columns(cell=pl.format("{} / {}", pl.col("gap").map_elements(lambda x: pct(x, metric), return_dtype=pl.String),
                                         pl.col("recovered_share").map_elements(lambda x: num(x, 2), return_dtype=pl.String)))
    grid = cell.pivot(on="condition", index="variant", values="cell").with_columns(
        pl.col("variant").map_elements(tables.variant_name, return_dtype=pl.String))
    ceil = {c: t.filter(pl.col("condition") == c)["ceiling"][0] for c in conds if c in t["condition"].to_list()}
    top = pl.DataFrame({"variant": ["ceiling (score)"], **{c: [pct(v, metric)] for c, v in ceil.items()}})
    fs = t.filter((pl.col("variant") == REFERENCE) & (pl.col("condition") == "avg_missing"))
    lead = (f" FSRF's gap on the six missing conditions is {pct(fs['gap'][0], metric)} on average and it recovers "
            f"{num(fs['recovered_share'][0], 2)} of what they allow above chance." if fs.height else "")
    text = (f"<p>The ceiling (black dashed line in the curves, last row of Table I) is the label's conditional "
            f"expectation given what each test condition leaves of the generator's latents, in closed form "
            f"(<code>fsrf/ceiling.py</code> says what the oracle is assumed to know), on the same test split and "
            f"masks as the runs. Each cell is <b>gap / recovered share</b>: the ceiling minus the variant's mean "
            f"over seeds, and (variant − chance) / (ceiling − chance), chance being what the ceiling's predictions "
            f"score against permuted labels ({pct(yardsticks_chance(main, metric), metric)}: no information). The "
            f"complete-to-missing drops of each variant and of "
            f"the ceiling are in <code>tables/ceiling_gap_{esc(metric)}.csv</code>.{lead}</p>")
    rep.section("ceiling", title, text, frame_html(pl.concat([top, grid], how="diagonal_relaxed"),
                                                   table_id="table-ceiling"))


def yardsticks_chance(main: pl.DataFrame, metric: str) -> float | None:
    row = main.filter(pl.col("variant") == yardsticks.CEILING)
    for name in (yardsticks.CHANCE, yardsticks.NOTHING):
        col = f"test/{metric}/{name}"
        if row.height and col in row.columns and row[col][0] is not None:
            return row[col][0]
    return None


def floors_section(rep: Report, main: pl.DataFrame, metric: str) -> None:
    """The shuffled leakage floors beside each missing condition (``eval.shuffled_floor``)."""
    title = "Leakage floors (shuffled modalities)"
    t = yardsticks.floor_table(main, metric)
    if t.height == 0:
        rep.omitted("floors", title, "no run has shuffled floors (run the study with --set eval.shuffled_floor=true)")
        return
    rep.csv(t, f"floors_{metric}")
    show = t.select(
        pl.col("variant").map_elements(tables.variant_name, return_dtype=pl.String),
        pl.col("condition"), pl.col("shuffled"),
        *[pl.col(c).map_elements(lambda x: pct(x, metric), return_dtype=pl.String)
          for c in ("score", "floor", "floor_std", "chance", "chance_sd", "floor_ceiling")],
        pl.col("z").map_elements(lambda x: num(x, 1), return_dtype=pl.String), pl.col("n"), pl.col("leak"))
    leaks = t.filter(pl.col("leak"))
    verdict = ("<p><b>Leak:</b> " + "; ".join(
        f"{esc(tables.variant_name(r['variant']))} {esc(r['condition'])} with {esc(r['shuffled'])} shuffled stays at "
        f"{pct(r['floor'], metric)} against its chance {pct(r['chance'], metric)}"
        for r in leaks.iter_rows(named=True)) + ".</p>") if leaks.height else (
        f"<p>No one-modality floor stays more than {pct(yardsticks.LEAK_MARGIN, metric)} (and 3 chance spreads) above "
        "its chance: nothing but the modalities' content reaches the scores.</p>")
    fallback = t.filter(pl.col("chance_sd").is_null() & pl.col("chance").is_not_null()).height > 0
    text = ("<p>Each missing condition is scored again with one present modality's features permuted across the "
            "test samples (each sample keeps its own length and mask): <b>floor</b> is what survives without that "
            "modality's content. For a one-modality condition it should fall to <b>chance</b>: the same predictions "
            "scored against permuted labels (mean and spread over 20 permutations), about 50 for the F1 metrics on "
            "balanced labels (a constant prediction scores lower, about 33); for two modalities, to what the other "
            "one gives alone. <b>floor ceiling</b> is the ceiling of the same control (synthetic data); <b>z</b> the "
            f"floor's distance to chance in chance spreads. A one-modality floor more than "
            f"{pct(yardsticks.LEAK_MARGIN, metric)} and 3 spreads above chance is flagged as a leak (length, padding or "
            "position reaching the score). Every seed sees the same permutation, so the seeds are not an independent "
            "sample of it: the spread, not a test across seeds, says what chance can do.</p>"
            + ("<p class=\"note\">These runs predate the logged chance level: chance is taken as "
               f"{pct(yardsticks.LABEL_INDEPENDENT, metric)}, what a label-independent predictor scores on balanced "
               "labels.</p>" if fallback else ""))
    rep.section("floors", title, text, verdict, frame_html(show, table_id="table-floors"))


def grid_section(rep: Report, runs: pl.DataFrame, metric: str) -> None:
    """The train-rate x test-rate grid (``--train-rates``; MuteBench) and what it shows."""
    title = "Train rate x test rate"
    grid = robustness.rate_grid(runs, metric)
    if grid.height == 0:
        rep.omitted("grid", title, "no runs at constant training rates (run the study with --train-rates)")
        return
    rep.csv(grid, f"rate_grid_{metric}")
    fig = rep.figure(figures.grid_figure(grid, metric=metric), "rate_grid",
                     "Mean test score over seeds at each test intra rate (columns) for each constant training "
                     "rate (rows); hatched: test rate above the training rate")
    notes = []
    for (v,), g in grid.group_by(["variant"], maintain_order=True):
        best = {}
        for (p,), h in g.group_by(["test_rate"], maintain_order=True):
            top = h.sort("mean", descending=True).row(0, named=True)
            best[p] = top["train_rate"]
        at = {p: best[p] for p in (0.1, 0.5, 0.9) if p in best}
        notes.append(f"{esc(tables.variant_name(v))}: the best training rate is "
                     + ", ".join(f"{r:g} at test rate {p:g}" for p, r in at.items()))
    text = ("<p>Every variant trained at each constant missing rate (<code>missing.schedule=constant</code>, "
            "<code>missing.p0</code> = the row) and tested on the intra curve (the columns). A model is trained "
            "for the rates up to its row; hatched cells test beyond that. "
            + "; ".join(notes) + ".</p>")
    rep.section("grid", title, fig, text)


def health_section(rep: Report, main: pl.DataFrame) -> None:
    """Mechanism health (SPEC section 7) of each run's selected epoch, per variant over seeds, and one verdict
    per mechanism and variant by the rules of ``analysis.health`` (written on the page next to them)."""
    title = "Mechanism health"
    if not health.columns(main):
        rep.omitted("health", title, "no run carries health/* metrics (runs from before the final report "
                                     "carried the selected epoch's mechanism health, or trained with "
                                     "eval.health_every=0)")
        return
    summ = health.summary(main)
    found = health.verdicts(main)
    rep.csv(summ, "health_summary")
    rep.csv(health.verdict_frame(found), "health_verdicts")
    intro = (
        "<p>Does each FSRF mechanism do what it is for? Every run logs, each epoch on validation (SPEC section 7), "
        "and carries for its <b>selected epoch</b> (the one whose test metrics the tables report): "
        "<code>noise_var</code>, the mean per-dimension variance of R_n, and <code>noise_rank</code>, its "
        "effective rank; <code>ho_agreement</code>, the mean cosine of R_ho between two modalities of the same "
        "sample minus the same across different samples; <code>he_ho_cos</code>, the mean |cosine| of R_he and "
        "R_ho of one modality; <code>das_paired_mass</code>, B times the Sinkhorn plan's mass on a sample's own "
        "other MRM view (1 for a uniform plan, B for a perfect pairing), and <code>das_pair_cost_ratio</code>, "
        "the mean paired over the mean unpaired cost between the two views' Z; and "
        "<code>grad_share/&lt;term&gt;</code>, each loss term's share of the gradient norm at the shared layers "
        "(the modality projections). Cells: mean ± std over seeds (3 significant digits); n runs. A variant "
        "that has no DAS still shows the pairing its two views' Z get by themselves: a control for the "
        "DAS variants' numbers.</p>")
    table = frame_html(health.display(summ, main), table_id="health-table")
    rules = ("<p><b>Rules</b> (applied to the mean over seeds; in brackets how many single runs the same rule "
             "calls working):</p><ul>"
             + "".join(f"<li><b>{esc(r.mechanism)}</b>: {esc(r.text)}.</li>" for r in health.RULES)
             + f"<li><b>loss terms</b>: {esc(health.INERT_TEXT)}.</li></ul>"
             "<p>A mechanism the variant switches off, or whose metrics none of its runs has, is "
             "<b>not applicable</b>.</p>")
    lines = []
    inert = health.inert_terms(summ)
    for variant in variants.ordered(main["variant"].to_list()):
        said = []
        for v in (v for v in found if v.variant == variant):
            seeds = f" [{v.seeds_working} of {v.seeds} runs working]" if v.seeds else ""
            said.append(f"{esc(v.mechanism)}: <b>{esc(v.verdict)}</b> ({esc(v.why)}){seeds}")
        if variant in inert:
            terms = inert[variant]
            said.append("loss terms: " + ("<b>inert</b> " + ", ".join(f"{esc(t)} (share {health.fmt(x)})"
                                                                      for t, x in terms)
                                          if terms else "none inert"))
        else:
            said.append("loss terms: not applicable (no grad shares measured)")
        lines.append(f'<li id="health-{esc(variant)}"><b>{esc(tables.variant_name(variant))}</b>: '
                     + "; ".join(said) + ".</li>")
    parts = [intro, table, rules, '<ul id="health-verdicts">' + "".join(lines) + "</ul>"]
    terms = health.share_terms(main)
    if terms:
        parts.append(rep.figure(health.grad_share_figure(summ, terms), "health_grad_shares",
                                "Each loss term's mean share of the gradient norm at the shared layers, per variant "
                                "(selected epoch, mean over seeds)"))
    parts.append("<p>All values: <code>health_summary.csv</code> (every health metric, per modality too) and "
                 "<code>health_verdicts.csv</code>.</p>")
    rep.section("health", title, *parts)


def overlap_section(rep: Report, runs: pl.DataFrame, metric: str, *, text_only: bool = False) -> None:
    if text_only:
        rep.omitted("overlap", "Paired-mask overlap study", "not applicable to text-only data: the overlap setting "
                                                            "pairs the MRM views' modality sets, and with one "
                                                            "modality both views always keep it")
        return
    study = robustness.overlap_study(runs, metric)
    if study.filter(pl.col("overlap").is_not_null()).height == 0:
        rep.omitted("overlap", "Paired-mask overlap study", "no FSRF runs with a numeric missing.overlap setting")
        return
    rep.csv(study, f"overlap_{metric}")
    fig = rep.figure(figures.overlap_figure(study, metric=metric), "overlap",
                     "FSRF avg_missing score against the MRM overlap setting (mean ± std over seeds)")
    swept = study.filter(pl.col("overlap").is_not_null())
    best = swept.sort("mean", descending=True).row(0, named=True)
    ref = study.filter(pl.col("overlap").is_null())
    text = ("<p>MRM trains on two randomly incomplete views of each batch. The <code>overlap</code> setting o "
            "makes both views drop the <i>same</i> set of modalities with probability o (o = 0: always different "
            "sets, o = 1: always the same); the paper draws the views independently (dashed line, when run). "
            "The paper leaves open whether distillation needs the views to differ; this plot measures it on "
            "FSRF's avg_missing score.</p>"
            f"<p>Best setting: o = {best['overlap']:g} with {pct(best['mean'], metric)} ± {pct(best['std'], metric)} "
            f"(n = {best['n']})"
            + (f"; independent views: {pct(ref['mean'][0], metric)} ± {pct(ref['std'][0], metric)} (n = {ref['n'][0]})"
               if ref.height else "") + ".</p>")
    shown = study.with_columns(pl.col("overlap").cast(pl.String).fill_null("independent (None)"))
    rep.section("overlap", "Paired-mask overlap study", fig, text, frame_html(shown, table_id="overlap-table"))


def probe_section(rep: Report, reps: list[load.Representations] | None, *, method: str,
                  text_only: bool = False) -> None:
    title = "Factorization probe (Fig. 3)"
    if text_only:
        rep.omitted("probe", title, "not applicable to text-only data: the split into modality-homogeneous and "
                                    "heterogeneous representations is defined across two or more modalities "
                                    "(see the note on text-only data at the top)")
        return
    if reps is None:
        rep.omitted("probe", title, "representations are read from MLflow; pass --robustness-run")
        return
    reps = [r for r in reps if r.variant == "fsrf"] or reps
    if not reps:
        rep.omitted("probe", title, "no child run has a representations.npz artifact")
        return
    scores = {}
    for r in reps:
        arrays = probe.check(r.arrays, f"run {r.run_id} representations.npz")
        if "shared" in arrays:
            for k, v in probe.factorization_probe(arrays).items():
                scores.setdefault(k, []).append(v)
    first = reps[0]
    emb, labels = probe.embed_2d(first.arrays, method=method)
    fig = rep.figure(figures.embedding_figure(emb, labels, method=method), "embedding",
                     f"{method.upper()} of R_ho, R_he, R_n ({tables.variant_name(first.variant)}, seed {first.seed}) "
                     "coloured by sentiment label")
    parts = [fig]
    if scores:
        rows = [{"representation": k, "r2_mean": float(np.mean(v)),
                 "r2_std": float(np.std(v, ddof=1)) if len(v) > 1 else None, "runs": len(v)} for k, v in scores.items()]
        df = pl.DataFrame(rows, schema={"representation": pl.String, "r2_mean": pl.Float64, "r2_std": pl.Float64,
                                        "runs": pl.Int64})
        rep.csv(df, "probe_r2")
        said = "; ".join(f"{r['representation']}: R² = {num(r['r2_mean'])}" for r in rows)
        parts.append(
            "<p>On synthetic data the generator's shared sentiment latent is known. A linear probe (ridge "
            "regression, 5-fold cross-validated R², so 0 means no linearly recoverable information and 1 a perfect "
            "linear read-out) predicts it from each representation of the test split, all three modalities "
            "concatenated. DHF should put the shared content in the homogeneous part R_ho and keep it out of the "
            f"heterogeneous R_he and the noise R_n. Measured (mean over {len(reps)} run(s)): {esc(said)}.</p>")
        parts.append(frame_html(df, table_id="probe-table"))
    else:
        parts.append('<p class="note">Probe R² omitted: the representations carry no true shared latent '
                     "(real data); only the embedding is shown.</p>")
    parts.append("<p>The embedding shows each representation's test samples in two dimensions, coloured from "
                 "negative (blue) to positive (red) sentiment: a representation that encodes sentiment separates "
                 "the colours, as the paper's Fig. 3 shows for FSRF.</p>")
    rep.section("probe", title, *parts)


def tuning_section(rep: Report, study: load.TuningStudy | None) -> None:
    title = "Tuning study"
    if study is None:
        rep.omitted("tuning", title, "no tuning study given (--study-dir)")
        return
    trials = study.trials
    done = tuning.completed(trials)
    if done.height == 0:
        rep.omitted("tuning", title, f"no completed trials in {study.folder}/trials.parquet")
        return
    bsf = tuning.best_so_far(trials)
    rep.csv(bsf, "tuning_best_so_far")
    parts = [rep.figure(figures.best_so_far_figure(bsf), "tuning_best_so_far",
                        "Validation objective of each trial and the best so far against trials run")]
    best = done.sort(BEST_OBJECTIVE, descending=True).row(0, named=True)
    parts.append(f"<p>The tuning study <code>{esc(study.folder.name)}</code> ran {trials.height} trials "
                 f"({done.height} completed). Its objective is validation-only: the mean validation "
                 f"{HEADLINE} over the complete input, the six missing conditions and the ten intra points, "
                 f"at each trial's best epoch. The best trial ({esc(best['trial_id'])}) reached "
                 f"{num(best[BEST_OBJECTIVE], 4)}.</p>")
    searched = tuning.searched_params(trials)
    if done.height >= 3 and searched:
        imp = tuning.importance(trials)
        rep.csv(pl.DataFrame({"param": list(imp), "importance": list(imp.values())}), "tuning_importance")
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(imp.items())[:3])
        parts.append(rep.figure(figures.importance_figure(imp), "tuning_importance",
                                "fANOVA hyperparameter importance (mean over 5 forest seeds)"))
        parts.append("<p>Importance is Optuna's fANOVA on the completed trials: the share of the objective's "
                     "variance that each hyperparameter explains on its own (shares sum to 1), averaged over five "
                     f"random-forest seeds because single fits vary. Largest: {esc(top)}. With few trials these "
                     "shares are rough.</p>")
        matrix, names, ticks, y = tuning.parallel_axes(trials)
        parts.append(rep.figure(figures.parallel_figure(matrix, names, ticks, y), "tuning_parallel",
                                "Parallel coordinates: each searched param on a normalised axis, lines coloured by objective"))
        parts.append("<p>Parallel coordinates: one vertical axis per searched hyperparameter (numbers scaled to "
                     "the observed range, log scale where the search was; categories at evenly spaced positions), "
                     "the objective on the last axis; each line is a trial, yellow the best.</p>")
    else:
        parts.append('<p class="note">Importance and parallel coordinates omitted: they need at least 3 completed '
                     "trials and a hyperparameter that varied.</p>")
    best_cfg = {k: best[k] for k in study.params}
    parts.append("<h3>Best configuration</h3>" + kv_html(best_cfg, table_id="best-config"))
    rep.section("tuning", title, *parts)


def config_section(rep: Report, config: load.StudyConfig | None) -> None:
    title = "Configurations"
    if config is None:
        rep.omitted("configs", title, "configurations are read from MLflow; pass --robustness-run")
        return
    names = list(config.variant_params)
    keys = sorted({k for p in config.variant_params.values() for k in p})
    grid = pl.DataFrame({"param": keys, **{v: [config.variant_params[v].get(k, "") for k in keys] for v in names}},
                        schema={"param": pl.String, **{v: pl.String for v in names}})
    rep.csv(grid, "configs_per_variant")
    (rep.folder / "configs.json").write_text(json.dumps(
        {"experiment": config.experiment, "parent_run_id": config.parent_run_id, "parent_params": config.parent_params,
         "parent_tags": config.tags, "variant_params": config.variant_params}, indent=1))
    rep.files.append("configs.json")
    rep.section("configs", title,
                f"<p>Study <code>{esc(config.experiment)}</code>, parent run <code>{esc(config.parent_run_id)}</code> "
                f"({esc(config.parent_name)}). The parent's params describe the study; below them, every config "
                "param of the child runs per variant, listed once when all its seeds share it (\"varies: ...\" "
                "otherwise). Also in <code>configs.json</code>.</p>",
                "<h3>Study (parent run)</h3>", kv_html(config.parent_params, table_id="parent-params"),
                "<h3>Runs per variant</h3>", frame_html(grid, table_id="variant-params"))


def cost_section(rep: Report, config: load.StudyConfig | None, study: load.TuningStudy | None) -> None:
    """What the study cost (CPU-, wall- and GPU-seconds per run and in total) and what pins its runs
    (code commit, data fingerprint, encoder, selection rule from the runs' manifests)."""
    title = "Cost and reproducibility"
    if config is None or not config.runs_meta:
        rep.omitted("cost", title, "costs and manifests are read from MLflow; pass --robustness-run")
        return
    meta = pl.DataFrame(config.runs_meta, infer_schema_length=None)
    if "cost/cpu_s" not in meta.columns or meta["cost/cpu_s"].null_count() == meta.height:
        rep.omitted("cost", title, "the runs carry no cost/* metrics (a study from before cost accounting)")
        return
    per = (meta.group_by("variant", maintain_order=True)
           .agg(pl.len().alias("runs"), pl.col("cost/cpu_s").mean().alias("cpu_s_per_run"),
                pl.col("cost/cpu_s").std().alias("cpu_s_std"), pl.col("cost/wall_s").mean().alias("wall_s_per_run"),
                pl.col("cost/cpu_s").sum().alias("cpu_s_total"), pl.col("cost/gpu_s").sum().alias("gpu_s_total"),
                pl.col("best/epoch").mean().alias("mean_best_epoch")))
    rep.csv(per, "cost_per_variant")
    pm = config.parent_metrics
    total_cpu = pm.get("study/cpu_s", float(meta["cost/cpu_s"].sum())) + pm.get("study/driver_cpu_s", 0.0)
    lines = [f"<p>{meta.height} runs used {num(total_cpu / 3600, 2)} CPU-hours in all "
             f"({num(pm.get('study/cpu_s', float('nan')), 0)} CPU-s in the runs, "
             f"{num(pm.get('study/driver_cpu_s', float('nan')), 0)} in the driver), "
             f"{num(float(meta['cost/gpu_s'].sum()), 0)} GPU-s, and {num(pm.get('study/wall_time_s', float('nan')) / 60, 1)} "
             "minutes of wall time. CPU-seconds are each run's process time (all its threads), so they add up "
             "across runs that ran side by side.</p>"]
    if study is not None and "cpu_s" in study.trials.columns:
        t = study.trials
        lines.append(f"<p>The tuning study behind it: {t.height} trials, {num(float(t['cpu_s'].sum()) / 3600, 2)} "
                     f"CPU-hours ({num(float(t['cpu_s'].mean()), 0)} CPU-s per trial on average).</p>")
    prov = []
    for key, label in (("commit", "code commit"), ("dirty", "uncommitted changes"), ("data", "data fingerprint"),
                       ("encoder", "text encoder"), ("selection", "checkpoint selection")):
        if key in meta.columns:
            values = sorted({str(v) for v in meta[key].to_list() if v is not None})
            if values:
                prov.append(f"<li>{label}: " + ", ".join(f"<code>{esc(v)}</code>" for v in values) + "</li>")
    if prov:
        lines.append("<p>From the runs' manifests (one value each when every run agrees):</p><ul>" + "".join(prov)
                     + "</ul><p>Every run's <code>manifest.json</code> artifact re-runs it: "
                     "<code>python studies/train.py --manifest manifest.json</code> trains the same configuration "
                     "with the same seeds, data and threads and compares every metric.</p>")
    shown = per.with_columns([pl.col(c).round(1) for c in ("cpu_s_per_run", "cpu_s_std", "wall_s_per_run",
                                                           "cpu_s_total", "gpu_s_total", "mean_best_epoch")])
    rep.section("cost", title, "".join(lines), frame_html(shown, table_id="table-cost"))


def software_versions() -> dict[str, str]:
    """Versions of the installed packages (from their metadata, without importing torch or ray)."""
    from fsrf.manifest import package_versions

    return package_versions(VERSIONED)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}thead th{border-bottom:2px solid #444}
figure{margin:1em 0}figure img{max-width:100%;height:auto}figcaption{font-size:.85em;color:#555}
.note{color:#8a5a00;background:#fff6e0;padding:.3em .6em;border-left:3px solid #e0a000}
code{background:#f3f3f3;padding:0 .2em}section{margin-top:2em}
"""


def render(title: str, intro: str, rep: Report, versions: dict[str, str]) -> str:
    toc = "".join(f'<li><a href="#{ident}">{esc(title)}</a></li>' for ident, title, _ in rep.sections)
    toc += '<li><a href="#files">Files</a></li><li><a href="#versions">Software versions</a></li>'
    figs = sorted({f.rsplit(".", 1)[0] for f in rep.files if f.endswith(".png")})
    csvs = sorted(f for f in rep.files if f.endswith(".csv"))
    files = (f"<p><code>figures/</code>: {esc(', '.join(figs))} (each as .png and .svg). <code>tables/</code>: "
             f"{esc(', '.join(csvs))} (full precision; Table I, II and the uncertainty table also as .md "
             "and .tex). "
             f"{esc(', '.join(f for f in rep.files if f.endswith('.json')))}.</p>")
    body = "\n".join(f'<section id="{ident}"><h2>{esc(title)}</h2>\n{inner}</section>'
                     for ident, title, inner in rep.sections)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n<h1>{esc(title)}</h1>\n<p class=\"stamp\">Generated {stamp} by "
            f"<code>analysis/report.py</code>.</p>\n{intro}\n<nav><ul>{toc}</ul></nav>\n{body}\n"
            f'<section id="files"><h2>Files</h2>{files}</section>\n'
            f'<section id="versions"><h2>Software versions</h2>{kv_html(versions, table_id="versions-table")}</section>\n'
            "</body></html>\n")


# -- main -----------------------------------------------------------------------------------------------


def write_report(inputs: Inputs, folder: Path, *, metric: str = HEADLINE, extra_metrics=(),
                 embedding: str = "pca") -> str:
    """Every section, figure and table into ``folder`` and the page as ``report.html``; returns its title."""
    runs, config = inputs.runs, inputs.config
    main = load.main_runs(runs)
    if f"test/{metric}/l" not in main.columns and f"test/{metric}/lav" not in main.columns:
        raise InputError(inputs.source, None, f"no test/{metric}/<condition> metrics in the runs")
    complete = tables.complete_condition(main, metric)
    text_only = complete == "l" and f"test/{metric}/a" not in main.columns
    dropped = runs.height - main.height
    rep = Report(folder)
    rep.csv(runs, "runs")

    source, dataset = load.data_param(config, "data.source"), load.data_param(config, "data.name")
    references = (tables.PAPER_L.get(dataset.lower()) if text_only and source == "transcripts" and dataset
                  and metric == HEADLINE else None)

    # The page's sections in their order: a new section is its function above and one call here.
    facts = table1_section(rep, main, metric)
    uncertainty_section(rep, main, metric)
    for extra in extra_metrics:
        table1_section(rep, main, extra, ident=f"table1-{extra}", headline=False)
    max_rates = modality_max_rates = None  # None: no run params (parquet input)
    if config is not None:
        max_rates = robustness.max_training_rates(config.variant_params)
        modality_max_rates = {}
        for m in robustness.MODALITY_NAMES:
            for v, r in robustness.max_training_rates(config.variant_params, modality=m).items():
                modality_max_rates.setdefault(v, {})[m] = r
    summary = curves_section(rep, main, metric, complete, references=references, max_rates=max_rates)
    modality_section(rep, main, metric, text_only=text_only, max_rates=modality_max_rates)
    if references:
        references_section(rep, facts.get("t1"), metric, dataset, references)
    ceiling_section(rep, main, metric, complete, inputs.ceiling_note)
    floors_section(rep, main, metric)
    table2_section(rep, main, metric, config)
    health_section(rep, main)
    overlap_section(rep, runs, metric, text_only=text_only)
    grid_section(rep, runs, metric)
    probe_section(rep, inputs.representations, method=embedding, text_only=text_only)
    tuning_section(rep, inputs.study)
    cost_section(rep, config, inputs.study)
    config_section(rep, config)

    what = (f"study <code>{esc(config.experiment)}</code>, parent run <code>{esc(config.parent_run_id)}</code>"
            if config else f"<code>{esc(inputs.source)}</code>")
    seeds = main.group_by("variant", maintain_order=True).len()
    counts = ", ".join(f"{tables.variant_name(v)} ({n} seeds)" for v, n in seeds.iter_rows())
    unit = " (shown in percent)" if metric in tables.PERCENT else ""
    present = [variants.description(v) or esc(v) for v in seeds["variant"]]
    intro = [f"<p>This report summarises the robustness {what}: {main.height} test runs of {esc(counts)}. "
             f"Variants: {'; '.join(present)}. The headline metric is "
             f"<code>{esc(metric)}</code>"
             + (", the weighted F1 of negative against positive sentiment with neutral labels left out"
                if metric == HEADLINE else "") + f"{unit}.</p>"]
    if dropped:
        intro.append(f'<p class="note">{dropped} run(s) of an overlap sweep or a rate grid are used only there; '
                     "the tables and curves use each variant's main setting.</p>")
    if facts and summary is not None and REFERENCE in facts["row"]:
        fs = facts["row"][REFERENCE]
        auc = dict(zip(summary["variant"], summary["auc"]))
        intro.append(f"<p><b>In short:</b> FSRF's {esc(tables.condition_label(facts['cond']))} score is "
                     f"{pct(fs['mean'], metric)} ± {pct(fs['std'], metric)} over {fs['n']} seeds"
                     + (f", and the area under its intra-missingness curve is {num(auc[REFERENCE])}"
                        if REFERENCE in auc else "")
                     + ".</p>")
    intro.append(conditions_text(text_only))
    if text_only:
        intro.append(text_only_note(source, dataset))
    name = config.experiment if config else Path(inputs.source).resolve().parent.name
    title = f"FSRF robustness report: {name}"
    versions = software_versions()
    (folder / "versions.json").write_text(json.dumps(versions, indent=1))
    rep.files.append("versions.json")
    (folder / "report.html").write_text(render(title, "\n".join(intro), rep, versions))
    return title
