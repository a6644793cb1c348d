"""The report's yardsticks on hand-made runs (``analysis/yardsticks.py``): the gap to the ceiling and the
recovered share by hand, the leakage flag on a floor built to leak and on one that falls to chance."""

from __future__ import annotations

import math

import polars as pl
import pytest

from analysis import yardsticks

F1 = "Non0_F1_score"


def runs(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema_overrides={"run_id": pl.String, "seed": pl.Int64, "overlap": pl.Float64})


def test_gap_and_recovered_share_by_hand():
    df = runs([
        {"run_id": "c", "variant": "ceiling", "seed": None, "overlap": None,
         f"test/{F1}/l": 0.80, f"test/{F1}/lav": 0.90, f"test/{F1}/intra_1.0": 0.40},
        {"run_id": "1", "variant": "fsrf", "seed": 0, "overlap": None,
         f"test/{F1}/l": 0.70, f"test/{F1}/lav": 0.85, f"test/{F1}/intra_1.0": 0.42},
        {"run_id": "2", "variant": "fsrf", "seed": 1, "overlap": None,
         f"test/{F1}/l": 0.60, f"test/{F1}/lav": 0.75, f"test/{F1}/intra_1.0": 0.38},
    ])
    t = yardsticks.gap_table(df, F1, ["l", "lav"])
    r = t.filter(pl.col("condition") == "l").row(0, named=True)
    assert r["variant"] == "fsrf" and r["n"] == 2 and r["mean"] == pytest.approx(0.65)
    assert r["gap"] == pytest.approx(0.15)  # 0.80 - 0.65
    assert r["recovered_share"] == pytest.approx((0.65 - 0.40) / (0.80 - 0.40))  # 0.625
    assert r["drop"] == pytest.approx(0.80 - 0.65) and r["ceiling_drop"] == pytest.approx(0.10)
    assert "ceiling" not in t["variant"].to_list()
    assert yardsticks.gap_table(df.filter(pl.col("variant") != "ceiling"), F1, ["l"]).height == 0


def _floors(floor_a: list[float], chance: float | None, sd: float | None = 0.01) -> pl.DataFrame:
    extra = {} if chance is None else {f"test/{F1}/a_shuffled_a_chance": chance, f"test/{F1}/a_shuffled_a_chance_sd": sd}
    return runs([{"run_id": str(i), "variant": "fsrf", "seed": i, "overlap": None, f"test/{F1}/a": 0.55,
                  f"test/{F1}/a_shuffled_a": fa, f"test/{F1}/intra_1.0": 0.33, f"test/{F1}/l": 0.7,
                  f"test/{F1}/la": 0.72, f"test/{F1}/la_shuffled_a": 0.70, f"test/{F1}/la_shuffled_l": 0.5, **extra}
                 for i, fa in enumerate(floor_a)])


def test_a_floor_that_stays_up_is_a_leak_and_one_at_chance_is_not():
    leak = yardsticks.floor_table(_floors([0.58, 0.60, 0.59], 0.50), F1)
    row = leak.filter((pl.col("condition") == "a") & (pl.col("shuffled") == "a")).row(0, named=True)
    assert row["leak"] and row["floor"] == pytest.approx(0.59) and row["chance"] == pytest.approx(0.50)
    assert row["z"] == pytest.approx(9.0)  # (0.59 - 0.50) / 0.01
    # 2.5 points above chance: within what one permutation does (the constant's 0.33 is not chance)
    assert not yardsticks.floor_table(_floors([0.52, 0.53, 0.525], 0.50), F1)["leak"].any()
    # above the margin but within 3 spreads of a noisy chance: not a leak either
    assert not yardsticks.floor_table(_floors([0.57, 0.56, 0.58], 0.50, sd=0.03), F1)["leak"].any()
    # runs without a logged chance: compared with a label-independent predictor's 0.5
    old = yardsticks.floor_table(_floors([0.58, 0.60, 0.59], None), F1)
    r = old.filter(pl.col("condition") == "a").row(0, named=True)
    assert r["chance"] == yardsticks.LABEL_INDEPENDENT and r["chance_sd"] is None and r["leak"]
    # two-modality controls are reported, never flagged (their floor is the other modality's score)
    two = leak.filter(pl.col("condition") == "la")
    assert sorted(two["shuffled"].to_list()) == ["a", "l"] and not two["leak"].any()
    assert math.isclose(two.filter(pl.col("shuffled") == "a")["floor"][0], 0.70)


def test_no_floors_no_table():
    df = runs([{"run_id": "1", "variant": "fsrf", "seed": 0, "overlap": None, f"test/{F1}/a": 0.5}])
    assert yardsticks.floor_table(df, F1).height == 0
