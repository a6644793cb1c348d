"""A smoke robustness study end to end (real Ray, real MLflow store) and the report built from it."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, subprocess_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    work = tmp_path_factory.mktemp("robustness")
    env = subprocess_env()
    proc = subprocess.run([sys.executable, str(ROOT / "studies" / "robustness.py"), "--smoke-test",
                           "--variants", "fsrf,late_fusion,ridge", "--cpus", "2"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    exp = client.get_experiment_by_name("fsrf-robustness")
    runs = client.search_runs([exp.experiment_id])
    return {"work": work, "env": env, "client": client, "runs": runs, "stdout": proc.stdout}


def test_every_variant_and_seed_is_a_finished_child_with_test_metrics(study):
    runs = study["runs"]
    parents = [r for r in runs if r.data.tags.get("fsrf.role") == "robustness"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    got = sorted((r.data.tags["fsrf.variant"], int(r.data.params["seed"])) for r in children)
    assert got == [(v, s) for v in ("fsrf", "late_fusion", "ridge") for s in (0, 1)]
    for r in children:
        assert r.info.status == "FINISHED"
        assert 0.0 <= r.data.metrics["test/Non0_F1_score/lav"] <= 1.0
        assert "test/Non0_F1_score/intra_avg" in r.data.metrics and "test/Non0_F1_score/burst_avg" in r.data.metrics
    ridge = [r for r in children if r.data.tags["fsrf.variant"] == "ridge"]
    assert all(not any(k.startswith("train/") for k in r.data.metrics) for r in ridge)  # closed form, no loop
    fsrf = [r for r in children if r.data.tags["fsrf.variant"] == "fsrf"]
    for r in fsrf:  # synthetic data: the representations for the probe travel with the run
        names = {a.path for a in study["client"].list_artifacts(r.info.run_id)}
        assert {"metrics.json", "representations.npz"} <= names
    late = [r for r in children if r.data.tags["fsrf.variant"] == "late_fusion"]
    assert all(r.data.params["model.dhf"] == "False" and r.data.params["missing.p0"] == "0.0" for r in late)


def test_runs_carry_the_study_context_a_manifest_and_their_cost(study):
    import mlflow

    runs = study["runs"]
    parent = next(r for r in runs if r.data.tags.get("fsrf.role") == "robustness")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    for r in children:
        assert r.data.params["study.name"] == "fsrf-robustness" and r.data.params["study.seeds"] == "2"
        assert r.data.tags["fsrf.study"] == "fsrf-robustness" and r.data.tags["fsrf.data"] == "synthetic/mosi"
        man = mlflow.artifacts.load_dict(r.info.artifact_uri + "/manifest.json")
        assert man["seeds"]["train"] == int(r.data.params["seed"]) == int(r.data.tags["fsrf.seed"])
        assert man["config"]["model.dhf"] == (r.data.params["model.dhf"] == "True")  # the variant's own switches
        out = man["outcome"]
        assert out["metrics"]["test/Non0_F1_score/lav"] == r.data.metrics["test/Non0_F1_score/lav"]
        assert out["best_epoch"] == r.data.metrics["best/epoch"] >= 1
        assert r.data.metrics["cost/cpu_s"] > 0 and r.data.metrics["cost/gpu_s"] == 0
        assert r.data.tags["fsrf.stop_reason"] == "completed" == out["stop_reason"]  # no scheduler here
    total = sum(r.data.metrics["cost/cpu_s"] for r in children)
    assert parent.data.metrics["study/cpu_s"] == pytest.approx(total, rel=1e-6)
    assert "cost: 6 runs" in study["stdout"]


def test_runs_parquet_matches_mlflow(study):
    table = pl.read_parquet(study["work"] / "runs" / "robustness" / "fsrf-robustness" / "runs.parquet")
    assert len(table) == 6
    by_id = {r.info.run_id: r for r in study["runs"]}
    for row in table.iter_rows(named=True):
        assert row["test/Non0_F1_score/lav"] == pytest.approx(by_id[row["run_id"]].data.metrics["test/Non0_F1_score/lav"])


def test_the_report_builds_from_the_study(study):
    parent = next(r for r in study["runs"] if r.data.tags.get("fsrf.role") == "robustness")
    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "report.py"), "--robustness-run", parent.info.run_id],
                          cwd=study["work"], env=study["env"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = next((study["work"] / "reports").glob("robustness-*/report.html")).read_text()
    assert "Table I" in html and "Late fusion" in html and "Ridge" in html
    assert "data:image/png;base64," in html
    # cost and provenance: the runs' CPU-seconds add up to the parent's, and the manifests' commit is shown
    cost = pl.read_csv(next((study["work"] / "reports").glob("robustness-*/tables/cost_per_variant.csv")))
    assert sorted(cost["variant"].to_list()) == ["fsrf", "late_fusion", "ridge"] and cost["runs"].to_list() == [2, 2, 2]
    assert cost["cpu_s_total"].sum() == pytest.approx(parent.data.metrics["study/cpu_s"], rel=1e-6)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert 'id="table-cost"' in html and (not head or head in html)
    logged = {a.path for a in study["client"].list_artifacts(parent.info.run_id)}
    assert "report" in logged


def test_the_report_of_a_synthetic_study_carries_the_ceiling(study):
    """The report adds the closed-form ceiling of the study's own config (``fsrf.ceiling``) as a Table I row
    and a curve, with each variant's gap: the same numbers ``ceiling()`` gives for the parent's base config."""
    from analysis import load, yardsticks
    from fsrf.ceiling import ceiling

    folder = next((study["work"] / "reports").glob("robustness-*"))
    t1 = pl.read_csv(folder / "tables" / "table1_Non0_F1_score.csv")
    parent = next(r for r in study["runs"] if r.data.tags.get("fsrf.role") == "robustness")
    config = load.study_config(f"sqlite:///{study['work']}/mlflow.db", parent.info.run_id)
    want = ceiling(yardsticks.run_config(config))
    row = t1.filter(pl.col("variant") == "ceiling")
    assert row.height == 8  # the six missing conditions, their mean avg_missing and lav
    for r in row.iter_rows(named=True):
        assert r["mean"] == pytest.approx(want[f"test/Non0_F1_score/{r['condition']}"], abs=1e-12)
    gaps = pl.read_csv(folder / "tables" / "ceiling_gap_Non0_F1_score.csv")
    assert set(gaps["variant"]) == {"fsrf", "late_fusion", "ridge"}
    g = gaps.filter((pl.col("variant") == "fsrf") & (pl.col("condition") == "la")).row(0, named=True)
    runs = load.runs_from_mlflow(f"sqlite:///{study['work']}/mlflow.db", parent.info.run_id)
    fs = runs.filter(pl.col("variant") == "fsrf")["test/Non0_F1_score/la"].mean()
    assert g["gap"] == pytest.approx(want["test/Non0_F1_score/la"] - fs, abs=1e-12)
    html = (folder / "report.html").read_text()
    assert 'id="ceiling"' in html and "recovered share" in html
    curves = pl.read_csv(folder / "tables" / "curves_Non0_F1_score.csv")
    assert "ceiling" in curves["variant"].to_list()
