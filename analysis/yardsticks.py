"""What a study's scores are measured against: the synthetic ceiling and the shuffled leakage floors.

- **Ceiling** (``fsrf.ceiling``, synthetic data only): computed from the study's base config (the
  parent run's ``base.*`` params: data seed, size, preset, eval mask seed) on the same test split and
  masks as every run, and added to the runs as one row of variant ``ceiling``. Per variant and
  condition the report gives the **gap** (ceiling - variant) and the **recovered share**,
  (variant - chance) / (ceiling - chance): of what the condition still allows above chance, the part the
  variant reaches (1: the ceiling; 0: chance). Chance is the ceiling with nothing present (``intra_1.0``:
  the label's prior mean, a constant). The complete-to-missing drops of the variant and of the ceiling
  (``lav`` minus the condition) are given beside them.
- **Floors** (``eval.shuffled_floor``): per missing condition and present modality, the score with that
  modality's content permuted across samples (``<condition>_shuffled_<m>``). A one-modality condition's
  floor should fall to the model's own chance, its score with nothing present (``intra_1.0``); a floor
  that stays above it by more than ``LEAK_MARGIN`` (and significantly, Welch p < 0.05 over seeds) says
  that something other than the content (length, padding, position) reaches the score.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from analysis import load, tables
from fsrf import variants
from fsrf.ceiling import VARIANT as CEILING
from fsrf.protocol import MISSING, TABLE, shuffled_controls

LEAK_MARGIN = 0.05  # a floor this far above chance (headline metric) is flagged
CHANCE = "intra_1.0"  # every modality lost: what a model gives with no input


def run_config(config: load.StudyConfig):
    """The study's base RunConfig, rebuilt from the parent run's ``base.*`` params."""
    from fsrf.config import apply_overrides, build_config, parse_value

    base = {k[len("base."):]: None if v == "None" else parse_value(v)  # MLflow writes None as "None"
            for k, v in config.parent_params.items() if k.startswith("base.")}
    return build_config(apply_overrides({}, base), where=f"parent run {config.parent_run_id} (base.* params)")


def add_ceiling(runs: pl.DataFrame, config: load.StudyConfig | None) -> tuple[pl.DataFrame, str | None]:
    """The runs with the ceiling's row added (synthetic studies), and a note saying why not otherwise."""
    if CEILING in runs["variant"].to_list():
        return runs, None
    if config is None:
        return runs, "no ceiling: it is computed from the study's config, which only MLflow has (--robustness-run)"
    if not any(k.startswith("base.") for k in config.parent_params):
        return runs, "no ceiling: the parent run has no base.* params"
    cfg = run_config(config)
    if cfg.data.source != "synthetic":
        return runs, None  # real data: no generator, no ceiling (the floors are the yardstick)
    from fsrf.ceiling import ceiling

    metrics = ceiling(cfg)
    row = {"run_id": None, "variant": CEILING, "seed": None, "overlap": None,
           **{k: v for k, v in metrics.items() if k in runs.columns or k.count("/") == 2}}
    extra = pl.DataFrame([row], schema_overrides=load._KEY_SCHEMA, infer_schema_length=None)
    extra = extra.with_columns([pl.col(c).cast(pl.Float64) for c in extra.columns if c.startswith("test/")])
    return pl.concat([runs, extra], how="diagonal_relaxed"), None


def gap_table(main: pl.DataFrame, metric: str, conditions: list[str], *, complete: str = "lav") -> pl.DataFrame:
    """Per variant x condition: mean and std over seeds, the ceiling, gap, recovered share, and the
    complete-to-missing drops of the variant and of the ceiling. Empty without a ceiling row."""
    schema = {"variant": pl.String, "condition": pl.String, "mean": pl.Float64, "std": pl.Float64, "n": pl.Int64,
              "ceiling": pl.Float64, "gap": pl.Float64, "recovered_share": pl.Float64,
              "drop": pl.Float64, "ceiling_drop": pl.Float64}
    ceil_rows = main.filter(pl.col("variant") == CEILING)
    if ceil_rows.height == 0:
        return pl.DataFrame(schema=schema)

    def ceil(c: str) -> float | None:
        col = f"test/{metric}/{c}"
        return ceil_rows[col][0] if col in ceil_rows.columns else None

    chance = ceil(CHANCE)
    rows = []
    for v in variants.ordered(main["variant"].to_list()):
        if v == CEILING:
            continue
        g = main.filter(pl.col("variant") == v)
        for c in conditions:
            col, top = f"test/{metric}/{c}", ceil(c)
            if col not in g.columns or top is None or g[col].null_count() == g.height:
                continue
            x = g[col].drop_nulls().to_numpy()
            comp = g[f"test/{metric}/{complete}"].drop_nulls().to_numpy() if f"test/{metric}/{complete}" in g.columns else None
            mean = float(np.mean(x))
            room = top - chance if chance is not None else math.nan
            rows.append({"variant": v, "condition": c, "mean": mean,
                         "std": float(np.std(x, ddof=1)) if x.size > 1 else None, "n": int(x.size),
                         "ceiling": top, "gap": top - mean,
                         "recovered_share": (mean - chance) / room if room and abs(room) > 1e-9 else None,
                         "drop": float(np.mean(comp)) - mean if comp is not None and comp.size else None,
                         "ceiling_drop": (ceil(complete) - top) if ceil(complete) is not None else None})
    return pl.DataFrame(rows, schema=schema)


def floor_table(main: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Per variant x missing condition x shuffled modality: the condition's mean score, the floor's mean
    and std, the model's chance (``CHANCE``), the ceiling of the floor where there is one, and whether the
    floor is a leak (one-modality conditions: floor above chance by ``LEAK_MARGIN``, Welch p < 0.05).
    Empty when no run has floors."""
    schema = {"variant": pl.String, "condition": pl.String, "shuffled": pl.String, "score": pl.Float64,
              "floor": pl.Float64, "floor_std": pl.Float64, "n": pl.Int64, "chance": pl.Float64,
              "floor_ceiling": pl.Float64, "leak_p": pl.Float64, "leak": pl.Boolean}
    rows = []
    modalities = [m for m in "lav" if f"test/{metric}/{m}" in main.columns]
    for v in variants.ordered(main["variant"].to_list()):
        if variants.BY_NAME.get(v) is not None and variants.BY_NAME[v].oracle:
            continue  # the ceiling of each control is the floor_ceiling column
        g = main.filter(pl.col("variant") == v)
        for control in shuffled_controls(tuple(modalities)):
            col = f"test/{metric}/{control.name}"
            if col not in g.columns or g[col].null_count() == g.height:
                continue
            x = g[col].drop_nulls().to_numpy()
            score = g[f"test/{metric}/{control.condition.name}"].drop_nulls().to_numpy()
            chance = g[f"test/{metric}/{CHANCE}"].drop_nulls().to_numpy() if f"test/{metric}/{CHANCE}" in g.columns else np.array([])
            alone = len(control.condition.present) == 1
            p = tables.welch_p(x, chance) if alone and chance.size else math.nan
            leak = bool(alone and chance.size and np.mean(x) - np.mean(chance) > LEAK_MARGIN
                        and (math.isnan(p) or p < tables.ALPHA))
            rows.append({"variant": v, "condition": control.condition.name, "shuffled": control.modality,
                         "score": float(np.mean(score)) if score.size else None, "floor": float(np.mean(x)),
                         "floor_std": float(np.std(x, ddof=1)) if x.size > 1 else None, "n": int(x.size),
                         "chance": float(np.mean(chance)) if chance.size else None,
                         "floor_ceiling": None, "leak_p": None if math.isnan(p) else p, "leak": leak})
    t = pl.DataFrame(rows, schema=schema)
    ceil_rows = main.filter(pl.col("variant") == CEILING)
    if ceil_rows.height and t.height:
        lookup = {c: ceil_rows[c][0] for c in ceil_rows.columns if c.startswith(f"test/{metric}/")}
        t = t.with_columns(floor_ceiling=pl.struct("condition", "shuffled").map_elements(
            lambda r: lookup.get(f"test/{metric}/{r['condition']}_shuffled_{r['shuffled']}"), return_dtype=pl.Float64))
    return t


MISSING_NAMES = [c.name for c in MISSING]
TABLE_NAMES = [c.name for c in TABLE]
