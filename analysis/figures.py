"""The report's figures, drawn with matplotlib from the tables of ``robustness``, ``tables``, ``tuning``
and ``probe``; each is saved as PNG and SVG.

Figures are built as ``matplotlib.figure.Figure`` objects, not through ``pyplot``: no global figure
registry to leak memory in a long session and no GUI backend to pick; PNGs render with Agg.
A variant keeps its colour and line style in every figure (``color``, ``linestyle``: from its entry in
``fsrf.variants``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from analysis.robustness import MODALITY_NAMES, is_closed_form
from analysis.tables import PERCENT, condition_label, variant_name
from fsrf import variants
from fsrf.protocol import HEADLINE

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#7f7f7f", "#ff7f0e", "#8c564b", "#e377c2")
REFERENCE_COLORS = ("#000000", "#8c564b", "#e377c2")  # the paper's values, in PAPER_L order
DPI = 110


def color(variant: str) -> str:
    """A variant's colour: its entry's ``color`` in ``fsrf.variants``, else the palette colour at its position
    in VARIANTS. A variant not in VARIANTS takes one of the palette colours that no entry holds by position,
    chosen from its name's characters: not hash(), whose str hashes are salted per process, since a variant
    must keep its colour between reports."""
    if variant in variants.BY_NAME:
        return variants.BY_NAME[variant].color or _COLORS[variants.NAMES.index(variant) % len(_COLORS)]
    free = [c for i, c in enumerate(_COLORS) if i >= len(variants.VARIANTS) or variants.VARIANTS[i].color]
    free = free or list(_COLORS)
    return free[sum(map(ord, variant)) % len(free)]


def linestyle(variant: str) -> str:
    return variants.BY_NAME[variant].linestyle if variant in variants.BY_NAME else "-"


def _scale(metric: str) -> tuple[float, str]:
    return (100.0, f"{metric} (%)") if metric in PERCENT else (1.0, metric)


def save(fig: Figure, folder: str | Path, name: str) -> list[Path]:
    """Write ``<name>.png`` and ``<name>.svg``; metadata without dates so reruns give identical files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    fig.savefig(png, format="png", dpi=DPI, metadata={"Software": None})
    fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return [png, svg]


MAX_RATE_COLOR = "#333333"
MAX_RATE_LABEL = "max training rate"


def mark_max_training_rate(ax, marks: dict[str, float] | None, *, colors: dict[str, str] | None = None) -> None:
    """Vertical dashed lines at the largest missing rate of the training schedule, labelled "max training
    rate" (MuteBench: robustness holds only up to the highest rate a model was trained with).

    ``marks``: who (a variant's or a modality's display name) -> rate (``robustness.max_training_rate``).
    Those sharing a rate share one line; when the rates differ, each line names whom it belongs to and
    takes their colour from ``colors`` when it belongs to one alone.
    """
    by_rate: dict[float, list[str]] = {}
    for who, rate in (marks or {}).items():
        by_rate.setdefault(round(rate, 9), []).append(who)
    for rate, whos in sorted(by_rate.items()):
        label = f"{MAX_RATE_LABEL} {rate:.2g}" + (f" ({', '.join(whos)})" if len(by_rate) > 1 else "")
        c = (colors or {}).get(whos[0], MAX_RATE_COLOR) if len(by_rate) > 1 and len(whos) == 1 else MAX_RATE_COLOR
        ax.axvline(rate, color=c, ls=(0, (5, 3)), lw=1.2, alpha=0.9, zorder=1.5, label=label,
                   gid=f"max-training-rate:{rate:g}")


def curves_figure(curves: pl.DataFrame, *, metric: str = HEADLINE, zeroed: pl.DataFrame | None = None,
                  references: dict[str, float] | None = None, max_rates: dict[str, float] | None = None) -> Figure:
    """Fig. 2: score against the intra-modality missing ratio p, mean over seeds with a +-1 std band.

    ``curves`` are the protocol's curves (``robustness.curves``: words dropped as [UNK] ids), each in its
    variant's colour and ``linestyle`` (``fsrf.variants``; the ridge baseline: dark grey, dotted), a
    closed-form variant labelled "simplest baseline". ``zeroed``, when given, are the zeroed-state
    word-drop curves (``kind="zeroed"``, ``eval.zeroed_curve``), dashed in the variant's colour. ``references`` (label -> value, fractions like the
    curves) are drawn as short horizontal marks at p = 0: the paper's numbers, context only. ``max_rates``
    (variant -> rate) marks the training schedule's largest rate of the variants drawn
    (``mark_max_training_rate``).
    """
    scale, ylabel = _scale(metric)
    two_ways = zeroed is not None and zeroed.height > 0
    fig = Figure(figsize=(7.6 if references else 7.0, 4.6 if references else 4.2), layout="constrained")
    ax = fig.subplots()
    sets = [(curves, "[UNK] ids", None)] + ([(zeroed, "zeroed states", "--")] if two_ways else [])
    for frame, how, style in sets:
        for variant in variants.ordered(frame["variant"].to_list()):
            c = frame.filter(pl.col("variant") == variant).sort("p")
            p, m = c["p"].to_numpy(), c["mean"].to_numpy() * scale
            s = c["std"].fill_null(0.0).to_numpy() * scale
            n = c["n"][0]
            name = variant_name(variant) + (", simplest baseline" if is_closed_form(variant) else "")
            label = f"{name}{': ' + how if two_ways else ''} (n={n})"
            ax.plot(p, m, marker="o" if style is None else "s", ms=3.5, color=color(variant),
                    ls=style or linestyle(variant), label=label, gid=f"curve:{variant}:{how}")
            ax.fill_between(p, m - s, m + s, color=color(variant), alpha=0.18 if style is None else 0.10,
                            linewidth=0)
    drawn = set(curves["variant"].to_list())
    mark_max_training_rate(ax, {variant_name(v): r for v, r in (max_rates or {}).items() if v in drawn},
                           colors={variant_name(v): color(v) for v in drawn})
    for (label, value), c in zip((references or {}).items(), REFERENCE_COLORS):
        ax.plot([-0.035, 0.07], [value * scale] * 2, color=c, lw=2.4, solid_capstyle="butt",
                label=f"{label}: {value * scale:.2f} at p = 0 (BERT-base, other protocol)", gid=f"reference:{label}")
    ax.set_xlabel("intra-modality missing ratio p (p = 0: complete modalities)"
                  if not two_ways else "word-drop ratio p (p = 0: complete utterances)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(np.round(np.arange(0, 1.01, 0.1), 1))
    ax.set_xlim(-0.045 if references else -0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8 if (two_ways or references) else 9)
    title = ("Word drop two ways: [UNK] ids (solid) and zeroed states (dashed); mean ± 1 std over seeds"
             if two_ways else "Robustness to intra-modality missingness (mean ± 1 std over seeds)")
    ax.set_title(title, fontsize=10)
    return fig


MODALITY_COLORS = {"l": "#1f77b4", "a": "#d62728", "v": "#2ca02c"}
MODALITY_MARKERS = {"l": "o", "a": "s", "v": "^"}


def modality_curves_figure(curves: pl.DataFrame, *, metric: str = HEADLINE,
                           max_rates: dict[str, dict[str, float]] | None = None) -> Figure:
    """Per-modality missingness: one panel per variant, one line per modality, the score when only that
    modality loses frames at ratio p (the others complete), mean over seeds with a +-1 std band.

    ``curves`` come from ``robustness.modality_curves``. ``max_rates``: variant -> modality -> the
    largest rate at which its training schedule dropped that modality's frames; marked on each panel
    (one line when the modalities share it).
    """
    scale, ylabel = _scale(metric)
    names = variants.ordered(curves["variant"].to_list())
    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.7 * cols + 0.6, 3.2 * rows + 0.7), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, variant in zip(axes, names):
        mine = curves.filter(pl.col("variant") == variant)
        for m in MODALITY_NAMES:
            c = mine.filter(pl.col("modality") == m).sort("p")
            if c.height == 0:
                continue
            p, mean = c["p"].to_numpy(), c["mean"].to_numpy() * scale
            s = c["std"].fill_null(0.0).to_numpy() * scale
            ax.plot(p, mean, marker=MODALITY_MARKERS[m], ms=3.5, color=MODALITY_COLORS[m],
                    label=f"{MODALITY_NAMES[m]} lost (n={c['n'][0]})", gid=f"modality:{variant}:{m}")
            ax.fill_between(p, mean - s, mean + s, color=MODALITY_COLORS[m], alpha=0.15, linewidth=0)
        rates = (max_rates or {}).get(variant, {})
        mark_max_training_rate(ax, {MODALITY_NAMES[m]: r for m, r in rates.items()},
                               colors={MODALITY_NAMES[m]: MODALITY_COLORS[m] for m in MODALITY_NAMES})
        ax.set_title(variant_name(variant), fontsize=10)
        ax.set_xticks(np.round(np.arange(0, 1.01, 0.2), 1))
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=7)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.supxlabel("missing ratio p of one modality, the other two complete (p = 0: complete modalities)",
                  fontsize=9)
    fig.supylabel(ylabel, fontsize=9)
    fig.suptitle("Which modality's loss hurts most (mean ± 1 std over seeds)", fontsize=10)
    return fig


def table1_figure(t1: pl.DataFrame) -> Figure:
    """Table I as grouped bars: one group per condition, one bar per variant, error bar 1 std."""
    metric = t1["metric"][0]
    scale, ylabel = _scale(metric)
    conds = list(dict.fromkeys(t1["condition"].to_list()))
    names = variants.ordered(t1["variant"].to_list())
    width = 0.8 / max(1, len(names))
    fig = Figure(figsize=(max(5.0, 1.0 + 0.9 * len(conds)), 3.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(conds))
    for i, variant in enumerate(names):
        rows = {r["condition"]: r for r in t1.filter(pl.col("variant") == variant).iter_rows(named=True)}
        means = [rows[c]["mean"] * scale if c in rows else math.nan for c in conds]
        stds = [(rows[c]["std"] or 0.0) * scale if c in rows else 0.0 for c in conds]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               color=color(variant), label=variant_name(variant))
    top = float(np.nanmax([(r["mean"] + (r["std"] or 0.0)) * scale for r in t1.iter_rows(named=True)]))
    ax.set_ylim(0, top * 1.06)  # room for the error bars of the best bar
    ax.set_xticks(x, [condition_label(c) for c in conds])
    ax.set_ylabel(ylabel)
    ax.set_xlabel("test condition (present modalities)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False, fontsize=8, ncols=min(len(names), 5), loc="lower center",
              bbox_to_anchor=(0.5, 1.0))
    return fig


def best_so_far_figure(bsf: pl.DataFrame) -> Figure:
    """Tuning: each trial's objective (dots) and the best so far (step line) against the trial count."""
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.scatter(bsf["trial"].to_numpy(), bsf["objective"].cast(pl.Float64).to_numpy(), s=14, color="#7f7f7f",
               label="trial")
    ax.step(bsf["trial"].to_numpy(), bsf["best"].cast(pl.Float64).to_numpy(), where="post", color="#1f77b4",
            label="best so far")
    ax.set_xlabel("trials run")
    ax.set_ylabel("validation objective (mean F1)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=9)
    return fig


def importance_figure(importances: dict[str, float]) -> Figure:
    """Tuning: fANOVA importance per searched param, largest on top."""
    names = list(importances)[::-1]
    fig = Figure(figsize=(6.0, 0.8 + 0.32 * len(names)), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="#1f77b4")
    ax.set_xlabel("fANOVA importance (share of the objective's variance)")
    ax.set_xlim(0, max(1e-9, max(importances.values())) * 1.1)
    ax.grid(axis="x", alpha=0.3)
    return fig


def parallel_figure(matrix: np.ndarray, names: list[str], ticks: list, objective: np.ndarray) -> Figure:
    """Tuning: parallel coordinates, one normalised axis per searched param and the objective last;
    lines coloured by the objective (the best trials drawn on top)."""
    import matplotlib as mpl

    fig = Figure(figsize=(max(6.0, 1.1 * len(names)), 4.2), layout="constrained")
    ax = fig.subplots()
    norm = mpl.colors.Normalize(vmin=float(np.min(objective)), vmax=float(np.max(objective)))
    cmap = mpl.colormaps["viridis"]
    x = np.arange(len(names))
    for i in np.argsort(objective):
        ax.plot(x, matrix[i], color=cmap(norm(objective[i])), alpha=0.8, lw=1.2)
    for j, axis_ticks in enumerate(ticks):
        ax.axvline(j, color="black", lw=0.6)
        for pos, text in axis_ticks:
            ax.text(j + 0.03, pos, text, fontsize=7, va="center")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.2, len(names) - 0.6)
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="objective")
    return fig


def embedding_figure(embeddings: dict[str, np.ndarray], labels: np.ndarray, *, method: str = "pca") -> Figure:
    """Fig. 3: one panel per representation (R_ho, R_he, R_n), points coloured by sentiment label."""
    import matplotlib as mpl

    fig = Figure(figsize=(4.0 * len(embeddings) + 0.8, 3.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(embeddings)))
    norm = mpl.colors.Normalize(vmin=-3, vmax=3)
    for ax, (name, xy) in zip(axes, embeddings.items()):
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="coolwarm", norm=norm, s=7, alpha=0.8, linewidths=0)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{method.upper()} 1")
        ax.set_ylabel(f"{method.upper()} 2")
    fig.colorbar(sc, ax=list(axes), label="sentiment label (-3 negative .. +3 positive)", shrink=0.9)
    return fig


def overlap_figure(study: pl.DataFrame, *, metric: str = HEADLINE) -> Figure:
    """Overlap study: FSRF's avg_missing score (mean +- std) against the MRM overlap setting; the
    independent-views runs (overlap None), when present, as a horizontal reference band."""
    scale, ylabel = _scale(metric)
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.subplots()
    swept = study.filter(pl.col("overlap").is_not_null())
    ax.errorbar(swept["overlap"].to_numpy(), swept["mean"].to_numpy() * scale,
                yerr=swept["std"].fill_null(0.0).to_numpy() * scale, marker="o", capsize=3, color=color("fsrf"),
                label="FSRF, overlap o")
    ref = study.filter(pl.col("overlap").is_null())
    if ref.height:
        m, s = ref["mean"][0] * scale, (ref["std"][0] or 0.0) * scale
        ax.axhline(m, color="#7f7f7f", ls="--", label=f"independent views (n={ref['n'][0]})")
        ax.axhspan(m - s, m + s, color="#7f7f7f", alpha=0.15, lw=0)
    ax.set_xlabel("overlap o = P(both MRM views drop the same modality set)")
    ax.set_ylabel(f"avg_missing {ylabel}")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=9)
    return fig


def grid_figure(grid: pl.DataFrame, *, metric: str = HEADLINE) -> Figure:
    """The train-rate x test-rate grid, one heatmap per variant: rows the constant training rate, columns
    the test intra rate, cells the mean score over seeds (written in); cells whose test rate exceeds the
    training rate are hatched (MuteBench: beyond what the model was trained for)."""
    from matplotlib.patches import Rectangle

    scale, label = _scale(metric)
    names = variants.ordered(grid["variant"].to_list())
    lo, hi = grid["mean"].min() * scale, grid["mean"].max() * scale
    fig = Figure(figsize=(4.6 * len(names) + 0.8, 3.8), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False, sharey=True)
    image = None
    for ax, v in zip(axes[0], names):
        g = grid.filter(pl.col("variant") == v)
        rates = sorted(set(g["train_rate"].to_list()))
        tests = sorted(set(g["test_rate"].to_list()))
        m = np.full((len(rates), len(tests)), np.nan)
        for r in g.iter_rows(named=True):
            m[rates.index(r["train_rate"]), tests.index(r["test_rate"])] = r["mean"] * scale
        image = ax.imshow(m, cmap="viridis", vmin=lo, vmax=hi, aspect="auto", origin="lower")
        for i, rate in enumerate(rates):
            for j, p in enumerate(tests):
                if np.isnan(m[i, j]):
                    continue
                ax.text(j, i, f"{m[i, j]:.0f}" if scale > 1 else f"{m[i, j]:.2f}", ha="center", va="center",
                        fontsize=7, color="white" if m[i, j] < (lo + hi) / 2 else "black")
                if p > rate + 1e-9:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", lw=0,
                                           edgecolor="white", alpha=0.5))
        ax.set_xticks(range(len(tests)), [f"{p:g}" for p in tests], fontsize=8)
        ax.set_yticks(range(len(rates)), [f"{r:g}" for r in rates])
        ax.set_title(variant_name(v))
        ax.set_xlabel("test missing rate (intra)")
    axes[0][0].set_ylabel("training missing rate (constant)")
    fig.colorbar(image, ax=axes[0].tolist(), label=label, shrink=0.9)
    fig.suptitle("Train rate x test rate (hatched: test rate above the training rate)", fontsize=10)
    return fig
