"""Fair ablations and the train-rate x test-rate grid of ``studies/robustness.py``: the run specs and the
variant search spaces, and a small fair study with a grid end to end (real Ray, real MLflow, real Optuna):
each variant gets its own tuning study and runs with its own best configuration, and the report's grid
cells are the means of the runs they come from."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, subprocess_env
from fsrf import variants
from studies import robustness


def test_specs_of_a_grid_and_a_fair_study():
    specs = robustness.run_specs(["fsrf", "ridge"], 2, [], 0, train_rates=[0.0, 0.5],
                                 tuned={"fsrf": {"loss.lambda1": 0.3}})
    names = [robustness.spec_name(s) for s in specs]
    assert names == ["fsrf-seed00", "fsrf-seed01", "ridge-seed00", "ridge-seed01", "fsrf-train0-seed00",
                     "fsrf-train0-seed01", "fsrf-train0.5-seed00", "fsrf-train0.5-seed01"]  # ridge has no training
    grid = specs[-1]
    changes = variants.run_overrides("fsrf", seed=1, train_rate=0.5, tuned=grid["tuned"])
    assert changes["missing.schedule"] == "constant" and changes["missing.p0"] == 0.5
    assert changes["loss.lambda1"] == 0.3 and changes["seed"] == 1
    # the variant's own switches win over tuned values, the grid's rate over the variant's missing.*
    late = variants.run_overrides("late_fusion", seed=0, train_rate=0.3, tuned={"model.dhf": True, "missing.p0": 0.9})
    assert late["model.dhf"] is False and late["missing.p0"] == 0.3


def test_a_variant_searches_only_what_it_does_not_fix(tmp_path):
    space = str(ROOT / "configs" / "search_space.yaml")
    assert robustness.variant_space(space, variants.get("no_das"), tmp_path) == space  # fixes nothing searched
    path = robustness.variant_space(space, variants.get("late_fusion"), tmp_path)
    params = yaml.safe_load(open(path))["params"]
    full = yaml.safe_load(open(space))["params"]
    assert set(full) - set(params) == {"missing.schedule", "missing.p0", "missing.p1"}
    assert params["loss.lambda1"] == full["loss.lambda1"]


@pytest.mark.parametrize("args, words", [
    (["--fair", "--from-study", "x"], ("--fair", "--from-study")),
    (["--fair", "--tune-trials", "0"], ("--tune-trials", ">= 1")),
    (["--train-rates", "0,1.5"], ("--train-rates", "[0, 1]")),
    (["--train-rates", "0.3,0.3"], ("--train-rates", "repeat")),
])
def test_bad_fair_and_grid_flags_are_refused(tmp_path, args, words):
    proc = subprocess.run([sys.executable, str(ROOT / "studies" / "robustness.py"), *args], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0
    assert all(w in proc.stderr for w in words), proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.fixture(scope="module")
def fair(tmp_path_factory):
    work = tmp_path_factory.mktemp("fair")
    proc = subprocess.run([sys.executable, str(ROOT / "studies" / "robustness.py"), "--smoke-test", "--fair",
                           "--tune-trials", "2", "--tune-epochs", "2", "--variants", "fsrf,late_fusion,ridge",
                           "--train-rates", "0,0.5", "--cpus", "2"],
                          cwd=work, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    return {"work": work, "client": client}


@pytest.mark.slow
def test_every_variant_gets_its_own_study_and_runs_its_best_config(fair):
    client, work = fair["client"], fair["work"]
    exp = client.get_experiment_by_name("fsrf-robustness")
    parent = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("fsrf.role") == "robustness")
    p = parent.data.params
    assert p["study.ablation_mode"] == "fair" and p["study.fair_trials"] == "2" and p["study.fair_epochs"] == "2"
    assert p["study.fair_studies"] == "fsrf:fsrf-robustness-tune-fsrf,late_fusion:fsrf-robustness-tune-late_fusion"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    for name in ("fsrf", "late_fusion"):
        summary = json.loads((work / "runs" / "tune" / f"fsrf-robustness-tune-{name}" / "summary.json").read_text())
        best = summary["best_config"]
        assert summary["trials"] == 2 and best
        tune_exp = client.get_experiment_by_name(f"fsrf-robustness-tune-{name}")
        tune_parent = next(r for r in client.search_runs([tune_exp.experiment_id])
                           if r.data.tags.get("fsrf.role") == "study")
        assert tune_parent.data.params["base.model.dhf"] == str(name == "fsrf")  # tuned as the variant it is
        searched = {k[len("space."):] for k in tune_parent.data.params if k.startswith("space.")}
        assert ("missing.p0" in searched) == (name == "fsrf")  # late fusion fixes its missing.*
        runs = [r for r in children if r.data.tags["fsrf.variant"] == name and r.data.params["train_rate"] == "None"]
        assert len(runs) == 2
        for r in runs:
            for k, v in best.items():
                if k not in variants.get(name).overrides:
                    assert r.data.params[k] == str(v), (name, k)
    assert not (work / "runs" / "tune" / "fsrf-robustness-tune-ridge").exists()  # closed form: nothing to tune


@pytest.mark.slow
def test_grid_cells_match_their_runs_and_the_report_says_fair(fair):
    from analysis import report

    work = fair["work"]
    table = pl.read_parquet(work / "runs" / "robustness" / "fsrf-robustness" / "runs.parquet")
    assert sorted(table.filter(pl.col("train_rate").is_not_null())["train_rate"].unique().to_list()) == [0.0, 0.5]
    client = fair["client"]
    exp = client.get_experiment_by_name("fsrf-robustness")
    parent = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("fsrf.role") == "robustness")
    for r in client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"):
        if r.data.params["train_rate"] != "None":
            assert r.data.params["missing.schedule"] == "constant"
            assert float(r.data.params["missing.p0"]) == float(r.data.params["train_rate"])
    out = work / "rep"
    assert report.main(["--robustness-run", parent.info.run_id, "--tracking-uri", f"sqlite:///{work}/mlflow.db",
                        "--out", str(out), "--no-log"]) == 0
    grid = pl.read_csv(out / "tables" / "rate_grid_Non0_F1_score.csv")
    assert grid.height == 2 * 2 * 10  # fsrf, late fusion x 2 rates x 10 test points
    for cell in grid.iter_rows(named=True):
        runs = table.filter((pl.col("variant") == cell["variant"]) & (pl.col("train_rate") == cell["train_rate"]))
        col = f"test/Non0_F1_score/intra_{round(cell['test_rate'], 1)}"  # intra_0.1 .. intra_1.0
        assert cell["mean"] == pytest.approx(runs[col].mean(), abs=1e-12)
        assert cell["beyond"] == (cell["test_rate"] > cell["train_rate"])
    html = (out / "report.html").read_text()
    assert "Ablation mode: fair." in html and 'id="fig-rate_grid"' in html
    # Table I and the curves use the main runs only: two seeds per trained variant, not the grid's
    t1 = pl.read_csv(out / "tables" / "table1_Non0_F1_score.csv")
    assert set(t1.filter(pl.col("variant") == "fsrf")["n"].to_list()) == {2}
