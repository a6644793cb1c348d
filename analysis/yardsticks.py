"""What a study's scores are measured against: the synthetic ceiling and the shuffled leakage floors.

- **Ceiling** (``fsrf.ceiling``, synthetic data only): computed from the study's base config (the
  parent run's ``base.*`` params: data seed, size, preset, eval mask seed) on the same test split and
  masks as every run, and added to the runs as one row of variant ``ceiling``. Per variant and
  condition the report gives the **gap** (ceiling - variant) and the **recovered share**,
  (variant - chance) / (ceiling - chance): of what the condition still allows above chance, the part the
  variant reaches (1: the ceiling; 0: chance). Chance is the ceiling row's ``chance``: its complete-input
  predictions scored against permuted labels (``fsrf.protocol.permutation_chance``: about 50 for the F1
  metrics, where a constant prediction scores about 33); ceilings computed before it existed fall back
  to the ceiling with nothing present (``intra_1.0``). The complete-to-missing drops of the variant and
  of the ceiling (``lav`` minus the condition) are given beside them.
- **Floors** (``eval.shuffled_floor``): per missing condition and present modality, the score with that
  modality's content permuted across samples (``<condition>_shuffled_<m>``), beside its chance level,
  the same predictions scored against permuted labels (``<control>_chance`` and ``_chance_sd``, logged
  by the run). A one-modality floor should fall to its chance; one that stays above it, on average over
  seeds, by more than ``LEAK_MARGIN`` and by more than 3 chance spreads says that something other than
  the content (length, padding, position) reaches the score. Every seed is scored with the same
  permutation, so the seeds do not make an independent sample of it: no test across seeds. Runs from
  before the chance was logged are compared with ``LABEL_INDEPENDENT`` (F1 and accuracy metrics only).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from analysis import load
from fsrf import variants
from fsrf.ceiling import VARIANT as CEILING
from fsrf.protocol import shuffled_controls

LEAK_MARGIN = 0.05  # a floor this far above chance (headline metric) is flagged
CHANCE = "chance"  # the ceiling row's chance level (fsrf.ceiling.CHANCE)
NOTHING = "intra_1.0"  # every modality lost: the ceiling's fallback chance (a constant prediction)
LABEL_INDEPENDENT = 0.5  # a label-independent predictor's F1/accuracy on balanced labels


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

    chance = ceil(CHANCE) if ceil(CHANCE) is not None else ceil(NOTHING)
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
    and std over seeds, its chance level and spread (``<control>_chance``, ``_chance_sd``; else
    ``LABEL_INDEPENDENT`` for F1/accuracy), the ceiling of the floor where there is one, the floor's
    distance to chance in chance spreads (``z``), and whether it is a leak (one-modality controls: above
    chance by ``LEAK_MARGIN`` and by 3 spreads). Empty when no run has floors."""
    schema = {"variant": pl.String, "condition": pl.String, "shuffled": pl.String, "score": pl.Float64,
              "floor": pl.Float64, "floor_std": pl.Float64, "n": pl.Int64, "chance": pl.Float64,
              "chance_sd": pl.Float64, "floor_ceiling": pl.Float64, "z": pl.Float64, "leak": pl.Boolean}
    rows = []
    modalities = [m for m in "lav" if f"test/{metric}/{m}" in main.columns]

    def mean_of(g, name):
        col = f"test/{metric}/{name}"
        x = g[col].drop_nulls().drop_nans().to_numpy() if col in g.columns else np.array([])
        return float(np.mean(x)) if x.size else None

    for v in variants.ordered(main["variant"].to_list()):
        if variants.BY_NAME.get(v) is not None and variants.BY_NAME[v].oracle:
            continue  # the ceiling of each control is the floor_ceiling column
        g = main.filter(pl.col("variant") == v)
        for control in shuffled_controls(tuple(modalities)):
            col = f"test/{metric}/{control.name}"
            if col not in g.columns or g[col].null_count() == g.height:
                continue
            x = g[col].drop_nulls().to_numpy()
            chance, spread = mean_of(g, f"{control.name}_chance"), mean_of(g, f"{control.name}_chance_sd")
            if chance is None and metric.endswith(("_F1_score", "_acc_2")):
                chance = LABEL_INDEPENDENT
            alone = len(control.condition.present) == 1
            z = (float(np.mean(x)) - chance) / spread if chance is not None and spread else None
            above = chance is not None and float(np.mean(x)) - chance > max(LEAK_MARGIN, 3 * (spread or 0.0))
            rows.append({"variant": v, "condition": control.condition.name, "shuffled": control.modality,
                         "score": mean_of(g, control.condition.name), "floor": float(np.mean(x)),
                         "floor_std": float(np.std(x, ddof=1)) if x.size > 1 else None, "n": int(x.size),
                         "chance": chance, "chance_sd": spread, "floor_ceiling": None, "z": z,
                         "leak": bool(alone and above)})
    t = pl.DataFrame(rows, schema=schema)
    ceil_rows = main.filter(pl.col("variant") == CEILING)
    if ceil_rows.height and t.height:
        lookup = {c: ceil_rows[c][0] for c in ceil_rows.columns if c.startswith(f"test/{metric}/")}
        t = t.with_columns(floor_ceiling=pl.struct("condition", "shuffled").map_elements(
            lambda r: lookup.get(f"test/{metric}/{r['condition']}_shuffled_{r['shuffled']}"), return_dtype=pl.Float64))
    return t

