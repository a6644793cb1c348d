"""analysis/ on a small MLflow store written here with known values: tables, t-tests, curves, AUC and
effective robustness against hand computation; tuning importance; the factorization probe.

The store (``study`` fixture, shared with test_report.py) holds one robustness parent run and child
runs for fsrf, no_dhf and late_fusion x seeds 0, 1, 2, plus an overlap sweep of fsrf (0.0, 0.5, 1.0 x 2
seeds). Values are built from ``BASE`` and ``OFFSET`` below so that every expected number can be
recomputed by hand in the tests.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from analysis import load, probe, robustness, tables, tuning
from fsrf import variants
from fsrf.errors import InputError
from fsrf.manifest import ROLE_ROBUSTNESS, ROLE_ROBUSTNESS_RUN, ROLE_TAG
from fsrf.protocol import BEST_OBJECTIVE, INTRA_POINTS, MISSING, TABLE, Condition

TABLE_CONDITIONS = tuple(c.name for c in TABLE)  # the names the fixtures' metrics are written under
MISSING_CONDITIONS = tuple(c.name for c in MISSING)


def intra_name(p: float) -> str:
    return Condition("intra", rate=p).name


VARIANTS = ("fsrf", "no_dhf", "late_fusion")
SEEDS = (0, 1, 2)
F1 = "Non0_F1_score"
# Known Non0_F1_score per variant x Table I condition (seed offsets below are added).
BASE = {
    "fsrf":        {"l": 0.80, "a": 0.60, "v": 0.55, "la": 0.80, "lv": 0.79, "av": 0.65, "lav": 0.85},
    "no_dhf":      {"l": 0.70, "a": 0.58, "v": 0.50, "la": 0.795, "lv": 0.74, "av": 0.60, "lav": 0.83},
    "late_fusion": {"l": 0.75, "a": 0.40, "v": 0.38, "la": 0.78, "lv": 0.77, "av": 0.45, "lav": 0.86},
}
OFFSET = {"fsrf": (-0.01, 0.0, 0.01), "no_dhf": (-0.01, 0.0, 0.015), "late_fusion": (-0.02, 0.0, 0.02)}
SLOPE = {"fsrf": 0.3, "no_dhf": 0.4, "late_fusion": 0.5}  # intra curve: f(p) = lav - slope * p (+ offset)
OVERLAP_AVG_MISSING = {0.0: (0.70, 0.72), 0.5: (0.74, 0.76), 1.0: (0.71, 0.69)}  # fsrf sweep, seeds 0 and 1
# Per-modality curves: f(p) = lav - slope_m * p under intra_<m>_<p>, so AUC_m = lav - slope_m / 2 and the
# modality whose loss hurts most (the steepest) is l for fsrf, a for no_dhf and v for late fusion.
MODALITY_SLOPE = {"fsrf": {"l": 0.35, "a": 0.10, "v": 0.05}, "no_dhf": {"l": 0.10, "a": 0.30, "v": 0.20},
                  "late_fusion": {"l": 0.20, "a": 0.10, "v": 0.45}}
HARDEST = {"fsrf": "l", "no_dhf": "a", "late_fusion": "v"}
RATES = {"rates_l0.9_a0.3_v0.3": 0.30, "rates_l0.3_a0.9_v0.3": 0.12}  # f = lav - value
# The runs' missing-rate schedules (MLflow params are strings): FSRF and w/o DHF linear 0.2 -> 0.6 over 10
# epochs (max 0.6; FSRF drops audio frames at half that rate), late fusion never trained with missing data.
SCHEDULE = {"fsrf": {"missing.schedule": "linear", "missing.p0": "0.2", "missing.p1": "0.6", "study.epochs": "10",
                     "missing.modality_scale.a": "0.5"},
            "no_dhf": {"missing.schedule": "linear", "missing.p0": "0.2", "missing.p1": "0.6", "study.epochs": "10"},
            "late_fusion": {"missing.schedule": "constant", "missing.p0": "0.0", "missing.p1": "0.0",
                            "study.epochs": "10"}}


# Known mechanism health of each run's selected epoch (SPEC section 7), per variant x seed (0, 1, 2), as a
# run logs it: without DHF there is no R_n, R_ho or R_he; the DAS metrics are measured on the two MRM
# views' Z of any model, DAS on or off. Expected verdicts: FSRF every mechanism working and the js term
# inert (mean share 0.005); w/o DHF DAS degenerate (mean paired mass 1.87 < 2) and nothing inert; late
# fusion (DHF and DAS off) not applicable throughout.
HEALTH = {
    "fsrf": {"noise_var": (0.8, 0.9, 1.3), "noise_var/l": (0.7, 0.8, 1.2), "noise_rank": (1.0, 1.5, 2.0),
             "ho_agreement": (0.3, 0.4, 0.8), "he_ho_cos": (0.1, 0.2, 0.6), "das_paired_mass": (5.0, 6.0, 10.0),
             "das_pair_cost_ratio": (0.5, 0.6, 0.9), "grad_share/task": (0.6, 0.7, 0.8),
             "grad_share/contrastive": (0.25, 0.2, 0.15), "grad_share/sinkhorn": (0.14, 0.095, 0.05),
             "grad_share/js": (0.01, 0.005, 0.0)},
    "no_dhf": {"das_paired_mass": (1.5, 2.0, 2.1), "das_pair_cost_ratio": (0.9, 0.95, 0.99),
               "grad_share/task": (0.8, 0.85, 0.9), "grad_share/sinkhorn": (0.15, 0.12, 0.09),
               "grad_share/js": (0.05, 0.03, 0.01)},
    "late_fusion": {"das_paired_mass": (1.0, 1.1, 1.2), "das_pair_cost_ratio": (1.0, 1.0, 1.1),
                    "grad_share/task": (1.0, 1.0, 1.0)},
}
OVERLAP_HEALTH_SHIFT = 10.0  # the overlap sweep's runs: far off, so a summary that pools them shows it


def health_values(variant: str, seed: int, shift: float = 0.0) -> dict[str, float]:
    return {f"health/{k}": v[seed] + shift for k, v in HEALTH[variant].items()}


def run_values(variant: str, seed: int) -> dict[str, float]:
    """Every test/ metric of one run, as the robustness study would log them."""
    off = OFFSET[variant][seed]
    v = {c: BASE[variant][c] + off for c in TABLE_CONDITIONS}
    v["avg_missing"] = float(np.mean([v[c] for c in MISSING_CONDITIONS]))
    for p in INTRA_POINTS:
        v[intra_name(p)] = v["lav"] - SLOPE[variant] * p
    v["intra_avg"] = float(np.mean([v[intra_name(p)] for p in INTRA_POINTS]))
    for p in (0.2, 0.4, 0.6, 0.8, 1.0):
        v[f"burst_{p}"] = v["lav"] - 0.2 * p
    for m, slope in MODALITY_SLOPE[variant].items():
        for p in INTRA_POINTS:
            v[f"intra_{m}_{p}"] = v["lav"] - slope * p
        v[f"intra_{m}_avg"] = v["lav"] - slope * 0.55
    for c, drop in RATES.items():
        v[c] = v["lav"] - drop
    out = {f"test/{F1}/{c}": x for c, x in v.items()}
    out["test/MAE/lav"] = 0.9 - v["lav"]  # a second metric, lower is better
    return out


def known(variant: str, condition: str) -> np.ndarray:
    return np.array([run_values(variant, s)[f"test/{F1}/{condition}"] for s in SEEDS])


def log_run(client, exp_id: str, parent: str, variant: str, seed: int, overlap, metrics: dict,
            extra_params: dict | None = None) -> str:
    from mlflow.entities import Metric, Param

    run = client.create_run(exp_id, run_name=f"{variant}-seed{seed}",
                            tags={"mlflow.parentRunId": parent, ROLE_TAG: ROLE_ROBUSTNESS_RUN, "fsrf.variant": variant,
                                  "fsrf.code_commit": "c0ffee1", "fsrf.data_fingerprint": "f00dfeed"})
    rid = run.info.run_id
    params = {"variant": variant, "seed": str(seed), "missing.overlap": str(overlap), "loss.lambda1": "0.2",
              "train.lr": "0.001", "model.dhf": str(variant != "no_dhf"), "data.preset": "mosi",
              **SCHEDULE.get(variant, {}), **(extra_params or {})}
    client.log_batch(rid, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()]
                     + [Metric(f"val/{F1}/lav", 0.5, 0, 0)]
                     + [Metric(k, v, 0, 0) for k, v in run_cost(seed).items()],
                     params=[Param(k, v) for k, v in params.items()])
    return rid


def run_cost(seed: int) -> dict[str, float]:
    """Known costs of a fixture run: 100 + 10 * seed CPU-s, 50 + seed wall-s, best epoch seed + 1."""
    return {"cost/cpu_s": 100.0 + 10 * seed, "cost/wall_s": 50.0 + seed, "cost/gpu_s": 0.0, "best/epoch": seed + 1.0}


def representations(n: int = 300, d: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """R_ho a linear function of the shared latent plus small noise; R_he and R_n pure noise."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=n)
    w = rng.normal(size=(3, d))
    ho = shared[:, None, None] * w[None] + 0.05 * rng.normal(size=(n, 3, d))
    return {"ho": ho, "he": rng.normal(size=(n, 3, d)), "noise": rng.normal(size=(n, 3, d)),
            "labels": np.clip(1.5 * shared, -3, 3), "shared": shared}


def tuning_trials(n: int = 30, seed: int = 0) -> pl.DataFrame:
    """A tuning study's trials whose objective depends on loss.lambda1 only."""
    rng = np.random.default_rng(seed)
    lam = np.exp(rng.uniform(np.log(0.02), np.log(2.0), n))
    margin = rng.uniform(0.1, 1.0, n)
    schedule = rng.choice(["constant", "linear", "cosine", "step"], n)
    objective = 0.5 + 0.1 * np.log10(lam) + 0.001 * rng.normal(size=n)
    status = ["TERMINATED"] * n
    objective = objective.astype(object)
    objective[3] = None  # one failed trial
    status[3] = "ERROR"
    return pl.DataFrame({
        "trial_id": [f"t{i:03d}" for i in range(n)], "status": status, "epochs": [3] * n,
        "loss.lambda1": lam, "loss.margin": margin, "missing.schedule": schedule.tolist(),
        BEST_OBJECTIVE: pl.Series(objective.tolist(), dtype=pl.Float64),
    })


def new_store(tmp_path_factory, folder: str, experiment: str, parent_name: str):
    """A fresh SQLite MLflow store with one experiment and its robustness parent run:
    (root folder, URI, client, experiment id, parent run id)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp(folder)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp_id, run_name=parent_name, tags={ROLE_TAG: ROLE_ROBUSTNESS}).info.run_id
    return root, uri, client, exp_id, parent


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """The MLflow store, runs.parquet and a tuning study folder: ids, paths and the run table."""
    root, uri, client, exp_id, parent = new_store(tmp_path_factory, "study", "robust-test", "robustness-test")
    client.log_param(parent, "study.seeds", "3")
    client.log_param(parent, "study.variants", ",".join(VARIANTS))
    rows = []
    for variant in VARIANTS:
        for seed in SEEDS:
            m = {**run_values(variant, seed), **health_values(variant, seed)}
            rid = log_run(client, exp_id, parent, variant, seed, None, m)
            rows.append({"run_id": rid, "variant": variant, "seed": seed, "overlap": None, **m})
            if variant == "fsrf" and seed == 0:
                path = root / "representations.npz"
                np.savez(path, **representations())
                client.log_artifact(rid, str(path))
            client.set_terminated(rid, "FINISHED")
    for overlap, values in OVERLAP_AVG_MISSING.items():
        for seed, value in enumerate(values):
            m = {**run_values("fsrf", seed), f"test/{F1}/avg_missing": value,
                 **health_values("fsrf", seed, OVERLAP_HEALTH_SHIFT)}
            rid = log_run(client, exp_id, parent, "fsrf", seed, overlap, m)
            rows.append({"run_id": rid, "variant": "fsrf", "seed": seed, "overlap": overlap, **m})
            client.set_terminated(rid, "FINISHED")
    # A failed child must not count.
    bad = log_run(client, exp_id, parent, "fsrf", 9, None, run_values("fsrf", 0))
    client.set_terminated(bad, "FAILED")
    total_cpu = sum(run_cost(r["seed"])["cost/cpu_s"] for r in rows)  # the FINISHED children only
    for k, v in {"study/cpu_s": total_cpu, "study/driver_cpu_s": 5.0, "study/wall_time_s": 600.0}.items():
        client.log_metric(parent, k, v)
    client.set_terminated(parent, "FINISHED")
    parquet = root / "runs.parquet"
    pl.DataFrame(rows, schema_overrides={"overlap": pl.Float64}).write_parquet(parquet)
    tune_dir = root / "tune" / "lambdas"
    tune_dir.mkdir(parents=True)
    tuning_trials().write_parquet(tune_dir / "trials.parquet")
    pl.DataFrame({"trial_id": ["t000", "t000"], "epoch": [1, 2], f"val/{F1}/objective": [0.4, 0.5]}).write_parquet(
        tune_dir / "epochs.parquet")
    return {"uri": uri, "parent": parent, "exp_id": exp_id, "root": root, "parquet": parquet, "tune_dir": tune_dir,
            "n_runs": len(rows)}


@pytest.fixture(scope="module")
def runs(study):
    return load.runs_from_mlflow(study["uri"], study["parent"])


# A text-only study on "real MOSI transcripts": fsrf and the ridge baseline x 3 seeds, only the `l`
# condition, the [UNK]-id word-drop curve intra_p, burst drops, and (fsrf only: eval.zeroed_curve) the
# zeroed-state word-drop curve zeroed_p. Curves: intra f(p) = l - TEXT_SLOPE p (linear), zeroed
# f(p) = l - ZEROED_CURVATURE p^2 (the trapezoid over p = 0, 0.1, .., 1 of p^2 is 0.1 (3.85 - 0.5) = 0.335).
TEXT_VARIANTS = ("fsrf", "ridge")
TEXT_L = {"fsrf": 0.80, "ridge": 0.76}
TEXT_SLOPE = {"fsrf": 0.3, "ridge": 0.2}
ZEROED_CURVATURE = 0.4
TEXT_PARAMS = {"data.source": "transcripts", "data.name": "mosi", "data.path": "/data/mosi/label.csv"}


def text_run_values(variant: str, seed: int) -> dict[str, float]:
    l_score = TEXT_L[variant] + OFFSET["fsrf"][seed]
    v = {"l": l_score}
    for p in INTRA_POINTS:
        v[intra_name(p)] = l_score - TEXT_SLOPE[variant] * p
        if variant == "fsrf":
            v[f"zeroed_{p}"] = l_score - ZEROED_CURVATURE * p ** 2
    v["intra_avg"] = float(np.mean([v[intra_name(p)] for p in INTRA_POINTS]))
    if variant == "fsrf":
        v["zeroed_avg"] = float(np.mean([v[f"zeroed_{p}"] for p in INTRA_POINTS]))
    for p in (0.2, 0.4, 0.6, 0.8, 1.0):
        v[f"burst_{p}"] = l_score - 0.1 * p
    return {f"test/{F1}/{c}": x for c, x in v.items()}


@pytest.fixture(scope="session")
def text_study(tmp_path_factory):
    """A text-only robustness study in its own MLflow store (ids and path)."""
    root, uri, client, exp_id, parent = new_store(tmp_path_factory, "text-study", "mosi-text",
                                                  "robustness-mosi-text")
    client.log_param(parent, "study.variants", ",".join(TEXT_VARIANTS))
    for k, v in TEXT_PARAMS.items():
        client.log_param(parent, f"base.{k}", v)
    for variant in TEXT_VARIANTS:
        for seed in SEEDS:
            rid = log_run(client, exp_id, parent, variant, seed, None, text_run_values(variant, seed), TEXT_PARAMS)
            client.set_terminated(rid, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return {"uri": uri, "parent": parent, "root": root}


@pytest.fixture(scope="module")
def text_runs(text_study):
    return load.main_runs(load.runs_from_mlflow(text_study["uri"], text_study["parent"]))


# -- load -----------------------------------------------------------------------------------------------

def test_mlflow_and_parquet_recover_the_table(study, runs):
    assert runs.height == study["n_runs"]  # the FAILED child is left out
    assert runs.columns[:4] == ["run_id", "variant", "seed", "overlap"]
    assert runs["variant"].unique(maintain_order=True).to_list() == list(VARIANTS)  # FSRF first, baseline last
    assert not any(c.startswith("val/") for c in runs.columns)
    fs0 = runs.filter((pl.col("variant") == "fsrf") & (pl.col("seed") == 0) & pl.col("overlap").is_null())
    assert fs0.height == 1
    for k, v in run_values("fsrf", 0).items():
        assert fs0[k][0] == pytest.approx(v, abs=1e-12)
    assert sorted(runs["overlap"].drop_nulls().unique().to_list()) == [0.0, 0.5, 1.0]

    from_parquet = load.runs_from_parquet(study["parquet"])
    assert from_parquet.columns == runs.columns
    key = ["variant", "overlap", "seed"]
    a, b = runs.sort(key, nulls_last=True), from_parquet.sort(key, nulls_last=True)
    assert a.drop("run_id").equals(b.drop("run_id"))


def test_long_metrics_and_main_runs(runs):
    long = load.long_metrics(runs)
    assert long.columns == ["run_id", "variant", "seed", "overlap", "train_rate", "metric", "condition", "value"]
    assert set(long["metric"].unique()) == {F1, "MAE"}
    assert long.filter((pl.col("metric") == F1) & (pl.col("condition") == "intra_0.3")).height == runs.height
    main = load.main_runs(runs)
    assert main.height == len(VARIANTS) * len(SEEDS)
    assert main["overlap"].null_count() == main.height


def test_load_errors_name_the_input(study, tmp_path):
    with pytest.raises(InputError, match="not found"):
        load.runs_from_mlflow(study["uri"], "0" * 32)
    with pytest.raises(InputError, match="no such file"):
        load.runs_from_parquet(tmp_path / "runs.parquet")
    empty = tmp_path / "empty.parquet"
    pl.DataFrame(schema={"run_id": pl.String, "variant": pl.String, "seed": pl.Int64, "overlap": pl.Float64,
                         f"test/{F1}/l": pl.Float64}).write_parquet(empty)
    with pytest.raises(InputError, match="empty"):
        load.runs_from_parquet(empty)
    with pytest.raises(InputError, match="no MLflow store"):
        load.resolve_tracking_uri(f"sqlite:///{tmp_path / 'nothing.db'}")
    with pytest.raises(InputError, match="trials.parquet"):
        load.trials_from_study(tmp_path)


# -- Table I and II -------------------------------------------------------------------------------------

def test_table1_means_stds_and_welch(runs):
    t1 = tables.table1(load.main_runs(runs))
    assert t1["condition"].unique(maintain_order=True).to_list() == ["l", "a", "v", "la", "lv", "av", "avg_missing", "lav"]
    assert t1.height == len(VARIANTS) * 8
    for r in t1.iter_rows(named=True):
        x = known(r["variant"], r["condition"])
        assert r["mean"] == pytest.approx(x.mean(), abs=1e-12)
        assert r["std"] == pytest.approx(x.std(ddof=1), abs=1e-12)
        assert r["n"] == 3
        if r["variant"] == "fsrf":
            assert r["p_value"] is None and not r["star"]
        else:
            p = stats.ttest_ind(known("fsrf", r["condition"]), x, equal_var=False).pvalue
            assert r["p_value"] == pytest.approx(p, rel=1e-9)
            assert r["star"] == (p < 0.05)

    def cell(v, c):
        return t1.filter((pl.col("variant") == v) & (pl.col("condition") == c)).row(0, named=True)

    assert cell("no_dhf", "l")["p_value"] < 1e-3 and cell("no_dhf", "l")["star"]  # 0.80 vs 0.70: clearly different
    assert cell("no_dhf", "la")["p_value"] > 0.5 and not cell("no_dhf", "la")["star"]  # 0.80 vs 0.795: not


def test_table1_renderers(runs):
    t1 = tables.table1(load.main_runs(runs))
    md = tables.to_markdown(t1)
    lines = md.strip().splitlines()
    assert len(lines) == 2 + len(VARIANTS)
    assert all(line.count("|") == 2 + 1 + 8 for line in lines)  # variant, n, 8 conditions
    no_dhf = next(line for line in lines if line.startswith("| w/o DHF"))
    # l: 70 + (-1 + 0 + 1.5) / 3 percent, std of (-1, 0, 1.5); starred (0.80 vs 0.70)
    assert "| 70.17 ± 1.26\\* |" in no_dhf
    tex = tables.to_latex(t1, caption="Table I")
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    # Best lav mean is late fusion (0.86); best l is FSRF (0.80).
    assert "\\textbf{86.00 $\\pm$ 2.00}" in tex
    assert "\\textbf{80.00 $\\pm$ 1.00}" in tex
    assert "$^{*}$" in tex
    csv = pl.read_csv(tables.to_csv(t1).encode())
    assert csv.height == t1.height and "p_value" in csv.columns


def test_table1_lower_is_better_and_text_only(runs):
    main = load.main_runs(runs)
    mae = tables.table1(main, "MAE")
    assert mae["condition"].to_list() == ["lav"] * 3
    tex = tables.to_latex(mae)
    assert "\\textbf{0.04" in tex  # late fusion: 0.9 - 0.86, the lowest MAE, is the best
    text_only = main.select(["run_id", "variant", "seed", "overlap", f"test/{F1}/l",
                             *[f"test/{F1}/{intra_name(p)}" for p in INTRA_POINTS], f"test/{F1}/intra_avg"])
    t = tables.table1(text_only)
    assert t["condition"].unique().to_list() == ["l"]
    t2 = tables.table2(text_only)
    assert t2["column"].unique(maintain_order=True).to_list() == ["Intra-MM", "CM"]
    assert t2.filter(pl.col("column") == "CM")["condition"].unique().to_list() == ["l"]
    cv = robustness.curves(text_only)
    assert cv.filter((pl.col("variant") == "fsrf") & (pl.col("p") == 0.0))["mean"][0] == pytest.approx(
        known("fsrf", "l").mean())


def test_table2(runs):
    t2 = tables.table2(load.main_runs(runs))
    assert t2["variant"].unique(maintain_order=True).to_list() == ["fsrf", "no_dhf"]  # late fusion is no ablation
    assert t2["column"].unique(maintain_order=True).to_list() == ["Intra-MM", "Inter-MM", "CM"]
    for r in t2.iter_rows(named=True):
        x = known(r["variant"], {"Intra-MM": "intra_avg", "Inter-MM": "avg_missing", "CM": "lav"}[r["column"]])
        assert r["mean"] == pytest.approx(x.mean(), abs=1e-12)
        assert r["std"] == pytest.approx(x.std(ddof=1), abs=1e-12)
    # Intra-MM by hand: mean over p of (lav - slope p) = lav - slope * 0.55
    fs = t2.filter((pl.col("variant") == "fsrf") & (pl.col("column") == "Intra-MM"))["mean"][0]
    assert fs == pytest.approx(0.85 - 0.3 * 0.55, abs=1e-12)
    assert len(tables.to_markdown(t2, key="column").strip().splitlines()) == 4


# -- uncertainty over seeds -----------------------------------------------------------------------------

def reference_replicates(matrices, statistic, *, reps: int = 20_000, seed: int = 1) -> np.ndarray:
    """A stratified bootstrap written here from its definition: every column of every (seeds, tasks)
    matrix redrawn with replacement on its own, then ``statistic`` of the batch of resamples -> (reps,)."""
    rng = np.random.default_rng(seed)
    resampled = [np.stack([rng.choice(m[:, t], size=(reps, len(m))) for t in range(m.shape[1])], axis=-1)
                 for m in matrices]  # each (reps, seeds, tasks)
    return statistic(*resampled)


def assert_percentile_interval(lo: float, hi: float, replicates: np.ndarray, *, reps: int = tables.BOOTSTRAP_REPS):
    """The table's 95 % bounds against the reference replicates' 2.5 and 97.5 % quantiles. Tolerance: the
    quantile levels q -+ 4 standard errors of the two empirical CDFs, 4 sqrt(q (1-q) (1/reps + 1/reps_ref))."""
    for bound, q in ((lo, 0.025), (hi, 0.975)):
        eps = 4 * np.sqrt(q * (1 - q) * (1 / reps + 1 / len(replicates)))
        assert np.quantile(replicates, q - eps) - 1e-12 <= bound <= np.quantile(replicates, q + eps) + 1e-12, (bound, q)


def test_uncertainty_table_against_hand_computation(runs):
    u = tables.uncertainty_table(load.main_runs(runs))
    assert u["variant"].to_list() == list(VARIANTS) and (u["n"] == 3).all()
    assert u["poi_tasks"].unique().to_list() == ["l,a,v,la,lv,av,lav"]
    row = {r["variant"]: r for r in u.iter_rows(named=True)}
    matrix = {v: np.column_stack([known(v, c) for c in MISSING_CONDITIONS]) for v in VARIANTS}  # (3 seeds, 6)
    for v in VARIANTS:
        r, x = row[v], matrix[v]
        # Every seed's offset shifts all six conditions alike: mean = mean of the six BASE values, std = std of
        # the offsets; the IQM of the 18 scores drops the 4 lowest and 4 highest (floor(18 / 4) = 4).
        assert r["avg_missing_mean"] == pytest.approx(np.mean([BASE[v][c] for c in MISSING_CONDITIONS])
                                                      + np.mean(OFFSET[v]), abs=1e-12)
        assert r["avg_missing_std"] == pytest.approx(np.std(OFFSET[v], ddof=1), abs=1e-12)
        assert r["avg_missing_iqm"] == pytest.approx(np.sort(x.ravel())[4:14].mean(), abs=1e-12)
        assert r["lav_mean"] == r["lav_iqm"] == pytest.approx(known(v, "lav").mean(), abs=1e-12)  # 3 values: no cut
        assert_percentile_interval(r["avg_missing_mean_lo"], r["avg_missing_mean_hi"],
                                   reference_replicates([x], lambda s: s.mean(axis=(1, 2))))
        assert_percentile_interval(r["avg_missing_iqm_lo"], r["avg_missing_iqm_hi"],
                                   reference_replicates([x], lambda s: np.sort(s.reshape(len(s), -1))[:, 4:14].mean(1)))
        # One task, 3 seeds: each extreme comes back as all three draws with probability 1/27 > 2.5 %.
        assert (r["lav_mean_lo"], r["lav_mean_hi"]) == pytest.approx((known(v, "lav").min(), known(v, "lav").max()))
    # P(FSRF better) by counting the 9 seed pairs per condition (ties half), then averaging the 7 conditions:
    # no_dhf: l v lv av 9/9; a and lav 8/9; la 5.5/9 (0.81 ties 0.81). late fusion: l a v av 9/9, la and lv
    # 7.5/9, lav 3/9 (0.84 and 0.86 tie).
    assert row["fsrf"]["poi"] is None
    assert row["no_dhf"]["poi"] == pytest.approx((4 + 8 / 9 + 8 / 9 + 5.5 / 9) / 7, abs=1e-12)
    assert row["late_fusion"]["poi"] == pytest.approx(6 / 7, abs=1e-12)
    seven = {v: np.column_stack([matrix[v], known(v, "lav")]) for v in VARIANTS}

    def poi(a, b):  # (reps, 3, 7) each
        return ((a[:, :, None] > b[:, None]) + 0.5 * (a[:, :, None] == b[:, None])).mean(axis=(1, 2, 3))

    for v in ("no_dhf", "late_fusion"):
        replicates = reference_replicates([seven["fsrf"], seven[v]], poi)
        assert_percentile_interval(row[v]["poi_lo"], row[v]["poi_hi"], replicates)


def test_uncertainty_table_renderers_and_edge_cases(runs, text_runs):
    u = tables.uncertainty_table(load.main_runs(runs))
    shown = tables.uncertainty_display(u)
    no_dhf = shown.row(1, named=True)
    assert no_dhf["Variant"] == "w/o DHF" and no_dhf["{l,a,v} mean ± std"] == "83.17 ± 1.26"
    assert no_dhf["P(FSRF better than variant) [95% CI]"].startswith("0.91 [")
    assert shown.row(0, named=True)["P(FSRF better than variant) [95% CI]"] == "-"
    md = tables.frame_markdown(shown).strip().splitlines()
    assert len(md) == 2 + len(VARIANTS) and all(line.count("|") == shown.width + 1 for line in md)
    tex = tables.frame_latex(shown, caption="Uncertainty")
    assert "\\caption{Uncertainty}" in tex and "95\\% CI" in tex and "$\\pm$" in tex
    # Text-only data: one score, {l}, and P(FSRF better) over that one condition: 0.79 .. 0.81 beat 0.75 .. 0.77.
    t = tables.uncertainty_table(text_runs)
    assert [c for c in t.columns if c.endswith("_mean")] == ["l_mean"] and t["poi_tasks"].to_list() == ["l", "l"]
    assert t.filter(pl.col("variant") == "ridge")["poi"].to_list() == [1.0]
    # MAE, lower is better: FSRF's MAE (0.9 - lav) is higher than late fusion's on average, so P < 0.5.
    mae = tables.uncertainty_table(load.main_runs(runs), "MAE")
    assert mae.filter(pl.col("variant") == "late_fusion")["poi"][0] == pytest.approx(3 / 9)


# -- curves and robustness figures ----------------------------------------------------------------------

def test_curves_start_at_lav(runs):
    cv = robustness.curves(load.main_runs(runs))
    assert cv.height == len(VARIANTS) * 11
    for v in VARIANTS:
        c = cv.filter(pl.col("variant") == v).sort("p")
        assert c["p"].to_list() == pytest.approx([0.0, *INTRA_POINTS])
        assert c["mean"][0] == pytest.approx(known(v, "lav").mean(), abs=1e-12)
        assert c["std"][0] == pytest.approx(known(v, "lav").std(ddof=1), abs=1e-12)
        assert c["mean"][5] == pytest.approx(known(v, "intra_0.5").mean(), abs=1e-12)
        assert (c["n"] == 3).all()


def test_auc_effective_robustness_and_normalisation(runs):
    s = robustness.robustness_summary(load.main_runs(runs))
    row = {r["variant"]: r for r in s.iter_rows(named=True)}
    # Mean curves are linear, f(p) = lav - slope * p, so the trapezoid is exact: lav - slope / 2.
    assert row["fsrf"]["auc"] == pytest.approx(0.85 - 0.3 / 2, abs=1e-12)
    assert row["no_dhf"]["auc"] == pytest.approx(0.83 + 0.005 / 3 - 0.4 / 2, abs=1e-12)
    assert row["late_fusion"]["auc"] == pytest.approx(0.86 - 0.5 / 2, abs=1e-12)
    # Per seed the curve is shifted by the seed offset: AUC_s = AUC + offset; std over seeds = std of offsets.
    assert row["fsrf"]["auc_seed_std"] == pytest.approx(np.std(OFFSET["fsrf"], ddof=1), abs=1e-12)
    # ER = sum_p (f - b - f0 + b0) = sum_p (slope_b - slope_f) p = (slope_b - slope_f) * 5.5
    p = np.array([0.0, *INTRA_POINTS])
    assert row["fsrf"]["effective"] == pytest.approx(float(np.sum((0.5 - 0.3) * p)), abs=1e-12)
    assert row["fsrf"]["effective"] == pytest.approx(1.1, abs=1e-12)
    assert row["no_dhf"]["effective"] == pytest.approx(0.55, abs=1e-12)
    assert row["late_fusion"]["effective"] == pytest.approx(0.0, abs=1e-12)
    for col in ("auc_norm", "effective_norm"):
        vals = s[col].to_numpy()
        assert vals.min() == 0.0 and vals.max() == 1.0 and ((vals >= 0) & (vals <= 1)).all()
    assert row["fsrf"]["auc_norm"] == 1.0 and row["late_fusion"]["auc_norm"] == 0.0
    assert row["no_dhf"]["effective_norm"] == pytest.approx(0.5, abs=1e-12)
    # Two variants: no normalisation; no baseline: no effective robustness.
    two = robustness.robustness_summary(load.main_runs(runs).filter(pl.col("variant") != "late_fusion"))
    assert two["auc_norm"].null_count() == 2 and two["effective"].null_count() == 2


def test_overlap_study(runs):
    ov = robustness.overlap_study(runs)
    assert ov["overlap"].to_list() == [0.0, 0.5, 1.0, None]  # independent views last
    for r in ov.iter_rows(named=True):
        x = np.array(OVERLAP_AVG_MISSING[r["overlap"]]) if r["overlap"] is not None else known("fsrf", "avg_missing")
        assert r["mean"] == pytest.approx(x.mean(), abs=1e-12)
        assert r["std"] == pytest.approx(x.std(ddof=1), abs=1e-12)
        assert r["n"] == len(x)
    assert robustness.overlap_study(load.main_runs(runs)).filter(pl.col("overlap").is_not_null()).height == 0


# -- tuning ---------------------------------------------------------------------------------------------

def test_tuning_views(study):
    st = load.trials_from_study(study["tune_dir"])
    assert st.params == ["loss.lambda1", "loss.margin", "missing.schedule"]
    assert st.epochs is not None and st.epochs.height == 2
    bsf = tuning.best_so_far(st.trials)
    obj = st.trials[BEST_OBJECTIVE].to_list()
    expect, best = [], -math.inf
    for v in obj:
        best = max(best, v) if v is not None else best
        expect.append(best)
    assert bsf["best"].to_list() == pytest.approx(expect)
    assert bsf["objective"][3] is None and bsf["trial"].to_list() == list(range(1, 31))

    dists = tuning.distributions(st.trials, st.params)
    assert dists["loss.lambda1"].log and not dists["loss.margin"].log
    assert set(dists["missing.schedule"].choices) == {"constant", "linear", "cosine", "step"}

    imp = tuning.importance(st.trials, seeds=(0, 1, 2))
    assert set(imp) == set(st.params)
    assert sum(imp.values()) == pytest.approx(1.0, abs=1e-6)
    assert next(iter(imp)) == "loss.lambda1" and imp["loss.lambda1"] > 0.8

    matrix, names, ticks, y = tuning.parallel_axes(st.trials)
    assert matrix.shape == (29, 4) and names[-1] == "objective"
    assert np.nanmin(matrix) >= 0 and np.nanmax(matrix) <= 1


# -- probe ----------------------------------------------------------------------------------------------

def test_probe_r2():
    arrays = representations()
    r2 = probe.factorization_probe(arrays)
    assert r2["R_ho"] > 0.9
    assert r2["R_he"] < 0.1 and r2["R_n"] < 0.1
    emb, labels = probe.embed_2d(arrays)
    assert set(emb) == {"R_ho", "R_he", "R_n"} and emb["R_ho"].shape == (300, 2) and labels.shape == (300,)
    with pytest.raises(InputError, match="shared"):
        probe.factorization_probe({k: v for k, v in arrays.items() if k != "shared"})
    with pytest.raises(InputError, match="shape"):
        probe.check({**arrays, "ho": arrays["ho"][:, :2]})


def test_representations_from_mlflow(study):
    found = load.representations_from_mlflow(study["uri"], study["parent"])
    assert [(r.variant, r.seed) for r in found] == [("fsrf", 0)]
    assert np.allclose(found[0].arrays["shared"], representations()["shared"])


# -- text-only data: two word-drop curves, the ridge baseline, the paper's references ------------------

def trapezoid(f) -> float:
    """By hand: 0.1 * (f0 / 2 + f1 + ... + f9 + f10 / 2)."""
    f = list(f)
    return 0.1 * (f[0] / 2 + sum(f[1:-1]) + f[-1] / 2)


def test_text_only_zeroed_curve_and_its_auc(text_runs):
    assert robustness.has_curve(text_runs, F1, "intra") and robustness.has_curve(text_runs, F1, "zeroed")
    zeroed_cv = robustness.curves(text_runs, F1, kind="zeroed")
    assert zeroed_cv["variant"].unique().to_list() == ["fsrf"]  # ridge has no zeroed-state curve here
    c = zeroed_cv.sort("p")
    expect = [0.80 - ZEROED_CURVATURE * p ** 2 for p in (0.0, *INTRA_POINTS)]  # f(0) is `l` (seed offsets mean 0)
    assert c["mean"].to_list() == pytest.approx(expect, abs=1e-12)
    s = {r["variant"]: r for r in robustness.robustness_summary(text_runs, F1, kind="zeroed").iter_rows(named=True)}
    assert set(s) == {"fsrf"}
    assert s["fsrf"]["auc"] == pytest.approx(trapezoid(expect), abs=1e-12)
    assert s["fsrf"]["auc"] == pytest.approx(0.80 - ZEROED_CURVATURE * 0.335, abs=1e-12)  # 0.666
    assert s["fsrf"]["auc_seed_std"] == pytest.approx(np.std(OFFSET["fsrf"], ddof=1), abs=1e-12)
    unk = {r["variant"]: r for r in robustness.robustness_summary(text_runs, F1).iter_rows(named=True)}
    assert unk["fsrf"]["auc"] == pytest.approx(0.80 - 0.3 / 2, abs=1e-12)
    assert unk["ridge"]["auc"] == pytest.approx(0.76 - 0.2 / 2, abs=1e-12)
    assert unk["ridge"]["effective"] is None  # no late-fusion baseline in this study


def test_text_only_figure_draws_both_curves_ridge_and_references(text_runs):
    from analysis import figures

    cv, zeroed = robustness.curves(text_runs, F1), robustness.curves(text_runs, F1, kind="zeroed")
    fig = figures.curves_figure(cv, metric=F1, zeroed=zeroed, references=tables.PAPER_L["mosi"])
    lines = {ln.get_gid(): ln for ln in fig.axes[0].get_lines()}
    solid, dashed = lines["curve:fsrf:[UNK] ids"], lines["curve:fsrf:zeroed states"]
    assert solid.get_linestyle() == "-" and dashed.get_linestyle() == "--"
    assert solid.get_color() == dashed.get_color() == figures.color("fsrf")
    assert "[UNK] ids" in solid.get_label() and "zeroed states" in dashed.get_label()
    assert list(dashed.get_ydata()) == pytest.approx([100 * (0.80 - ZEROED_CURVATURE * p ** 2)
                                                      for p in (0.0, *INTRA_POINTS)])
    ridge = lines["curve:ridge:[UNK] ids"]
    assert ridge.get_linestyle() == ":" and ridge.get_color() == variants.get("ridge").color
    assert "simplest baseline" in ridge.get_label()
    assert "curve:ridge:zeroed states" not in lines
    for label, value in (("FSRF (paper)", 82.58), ("CorrKD (paper)", 81.20)):
        ref = lines[f"reference:{label}"]
        assert list(ref.get_ydata()) == pytest.approx([value, value])
        x0, x1 = ref.get_xdata()
        assert x0 < 0 < x1 < 0.1  # a short mark at p = 0
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("82.58" in t for t in legend) and any("81.20" in t for t in legend)
    # Without zeroed curves the figure is the plain one: no "[UNK] ids" in the labels.
    plain = figures.curves_figure(cv, metric=F1)
    assert all("[UNK]" not in ln.get_label() for ln in plain.axes[0].get_lines())


def test_text_only_ridge_in_table1_not_in_table2(text_runs):
    t1 = tables.table1(text_runs)
    assert t1["variant"].to_list() == ["fsrf", "ridge"] and t1["condition"].unique().to_list() == ["l"]
    ridge = t1.filter(pl.col("variant") == "ridge").row(0, named=True)
    assert ridge["mean"] == pytest.approx(0.76, abs=1e-12)
    assert ridge["p_value"] == pytest.approx(stats.ttest_ind(0.80 + np.array(OFFSET["fsrf"]),
                                                             0.76 + np.array(OFFSET["fsrf"]), equal_var=False).pvalue)
    assert "Ridge (frozen states)" in tables.to_markdown(t1)
    t2 = tables.table2(text_runs)
    assert t2["variant"].unique().to_list() == ["fsrf"]
    assert t2["column"].unique(maintain_order=True).to_list() == ["Intra-MM", "CM"]


def test_study_config_names_the_data(text_study, study):
    config = load.study_config(text_study["uri"], text_study["parent"])
    assert load.data_param(config, "data.source") == "transcripts"
    assert load.data_param(config, "data.name") == "mosi"
    assert load.data_param(None, "data.name") is None
    synthetic = load.study_config(study["uri"], study["parent"])
    assert load.data_param(synthetic, "data.name") is None  # not logged: no references drawn
    assert variants.ordered(["ridge", "late_fusion", "mystery", "fsrf"]) == ["fsrf", "mystery", "late_fusion", "ridge"]


# -- per-modality missingness and the max training rate --------------------------------------------------

def test_modality_curves_auc_and_the_modality_whose_loss_hurts_most(runs):
    main = load.main_runs(runs)
    assert robustness.modality_kinds(main) == ["intra_l", "intra_a", "intra_v"]
    cv = robustness.modality_curves(main)
    assert cv.height == len(VARIANTS) * 3 * 11
    c = cv.filter((pl.col("variant") == "no_dhf") & (pl.col("modality") == "a")).sort("p")
    assert c["mean"][0] == pytest.approx(known("no_dhf", "lav").mean(), abs=1e-12)  # f(0): the complete input
    assert c["mean"][3] == pytest.approx(known("no_dhf", "intra_a_0.3").mean(), abs=1e-12)
    assert c["std"][3] == pytest.approx(np.std(OFFSET["no_dhf"], ddof=1), abs=1e-12)
    s = robustness.modality_summary(main)
    assert s["variant"].unique(maintain_order=True).to_list() == list(VARIANTS)
    assert s["modality"].to_list()[:3] == ["l", "a", "v"]
    for r in s.iter_rows(named=True):  # linear curves: the trapezoid is exact, lav - slope / 2
        lav = known(r["variant"], "lav").mean()
        assert r["auc"] == pytest.approx(lav - MODALITY_SLOPE[r["variant"]][r["modality"]] / 2, abs=1e-12)
        # effective robustness against late fusion's curve of the same modality: (slope_b - slope_f) * 5.5
        expect = (MODALITY_SLOPE["late_fusion"][r["modality"]] - MODALITY_SLOPE[r["variant"]][r["modality"]]) * 5.5
        assert r["effective"] == pytest.approx(expect, abs=1e-9)
    assert robustness.hardest_modality(s) == HARDEST
    # Not simply the first or the last modality: reorder the rows and the answer stays.
    assert robustness.hardest_modality(s.reverse()) == HARDEST
    # Runs without the per-modality conditions have none.
    plain = main.select([c for c in main.columns if "intra_l" not in c])
    assert robustness.modality_kinds(plain) == ["intra_a", "intra_v"]
    assert robustness.modality_curves(main.select(["run_id", "variant", "seed", "overlap", f"test/{F1}/lav"])).height == 0


def test_max_training_rate_by_hand():
    linear = {"missing.schedule": "linear", "missing.p0": "0.2", "missing.p1": "0.6", "missing.at": "0.5",
              "study.epochs": "10"}
    assert robustness.max_training_rate(linear) == pytest.approx(0.6)  # p1, reached at the last epoch
    assert robustness.max_training_rate({**linear, "missing.p0": "0.7"}) == pytest.approx(0.7)  # falling: p0
    assert robustness.max_training_rate({**linear, "study.epochs": "1"}) == pytest.approx(0.2)  # one epoch: p0
    constant = {"missing.schedule": "constant", "missing.p0": "0.3", "missing.p1": "0.9", "train.epochs": "5"}
    assert robustness.max_training_rate(constant) == 0.3  # p1 is not used by a constant schedule
    assert robustness.max_training_rate({k: v for k, v in constant.items() if k != "train.epochs"}) == 0.3
    assert robustness.max_training_rate({**linear, "missing.modality_scale.a": "0.5"}, modality="a") == pytest.approx(0.3)
    assert robustness.max_training_rate(linear, modality="v") == pytest.approx(0.6)  # scale 1 when not logged
    assert robustness.max_training_rate({}) is None
    assert robustness.max_training_rate({**linear, "missing.p1": "varies: 0.5, 0.6"}) is None
    rates = robustness.max_training_rates({v: SCHEDULE[v] for v in VARIANTS} | {"ridge": SCHEDULE["fsrf"]})
    assert rates == pytest.approx({"fsrf": 0.6, "no_dhf": 0.6, "late_fusion": 0.0})  # ridge: no schedule


def test_study_config_gives_the_max_training_rates(study):
    config = load.study_config(study["uri"], study["parent"])
    assert robustness.max_training_rates(config.variant_params) == pytest.approx(
        {"fsrf": 0.6, "no_dhf": 0.6, "late_fusion": 0.0})
    assert robustness.max_training_rates(config.variant_params, modality="a")["fsrf"] == pytest.approx(0.3)


def test_every_curve_figure_marks_the_max_training_rate(runs):
    from analysis import figures

    main = load.main_runs(runs)
    rates = {"fsrf": 0.6, "no_dhf": 0.6, "late_fusion": 0.0}

    def marks(ax):
        return {ln.get_gid(): ln for ln in ax.get_lines() if (ln.get_gid() or "").startswith("max-training-rate")}

    fig = figures.curves_figure(robustness.curves(main), metric=F1, max_rates=rates)
    found = marks(fig.axes[0])
    assert set(found) == {"max-training-rate:0.6", "max-training-rate:0"}
    assert list(found["max-training-rate:0.6"].get_xdata()) == [0.6, 0.6]
    assert found["max-training-rate:0.6"].get_label() == "max training rate 0.6 (FSRF, w/o DHF)"
    assert found["max-training-rate:0"].get_label() == "max training rate 0 (Late fusion)"
    per = {"fsrf": {"l": 0.6, "a": 0.3, "v": 0.6}, "no_dhf": {"l": 0.6, "a": 0.6, "v": 0.6},
           "late_fusion": {"l": 0.0, "a": 0.0, "v": 0.0}}
    fig = figures.modality_curves_figure(robustness.modality_curves(main), metric=F1, max_rates=per)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["FSRF", "w/o DHF", "Late fusion"]
    for ax, variant in zip(panels, VARIANTS):
        lines = {ln.get_gid() for ln in ax.get_lines()}
        assert {f"modality:{variant}:{m}" for m in "lav"} <= lines
        assert marks(ax), variant  # every panel has its line
    fsrf = marks(panels[0])
    assert fsrf["max-training-rate:0.3"].get_label() == "max training rate 0.3 (audio)"
    assert fsrf["max-training-rate:0.6"].get_label() == "max training rate 0.6 (language, visual)"
    assert [ln.get_label() for ln in marks(panels[1]).values()] == ["max training rate 0.6"]  # shared: one line
    a = next(ln for ln in panels[0].get_lines() if ln.get_gid() == "modality:fsrf:a")
    assert list(a.get_ydata()) == pytest.approx([100 * (0.85 - 0.10 * p) for p in (0.0, *INTRA_POINTS)])


def test_table1_latex_and_markdown_exact_text():
    """Paper-ready Table I from runs, compared with text written by hand: means and sample stds in percent
    ({l}: 0.80/0.81/0.82 -> 81.00 +- 1.00; late fusion {l,a,v}: 0.86/0.88/0.90 -> 88.00 +- 2.00), the best
    mean per column in bold, and the Welch mark on late fusion's {l} (t = 12.2, p = 2.6e-4 < 0.05)."""
    runs = pl.DataFrame({"run_id": list("abcdef"), "variant": ["fsrf"] * 3 + ["late_fusion"] * 3,
                         "seed": [0, 1, 2] * 2, "overlap": [None] * 6,
                         f"test/{F1}/l": [0.80, 0.81, 0.82, 0.70, 0.71, 0.72],
                         f"test/{F1}/lav": [0.85, 0.86, 0.87, 0.86, 0.88, 0.90]},
                        schema_overrides={"overlap": pl.Float64})
    t1 = tables.table1(load.main_runs(runs))
    assert tables.to_markdown(t1) == (
        "| Variant | n | {l} | {l,a,v} |\n"
        "|---|---:|---:|---:|\n"
        "| FSRF | 3 | **81.00 ± 1.00** | 86.00 ± 1.00 |\n"
        "| Late fusion | 3 | 71.00 ± 1.00\\* | **88.00 ± 2.00** |\n")
    assert tables.to_latex(t1, caption="Table I") == (
        "\\begin{table}[t]\n\\centering\n\\caption{Table I}\n\\begin{tabular}{lrrr}\n\\toprule\n"
        "Variant & $n$ & \\{l\\} & \\{l,a,v\\} \\\\\n\\midrule\n"
        "FSRF & 3 & \\textbf{81.00 $\\pm$ 1.00} & 86.00 $\\pm$ 1.00 \\\\\n"
        "Late fusion & 3 & 71.00 $\\pm$ 1.00$^{*}$ & \\textbf{88.00 $\\pm$ 2.00} \\\\\n"
        "\\bottomrule\n\\end{tabular}\n\\end{table}\n")


# -- mechanism health -------------------------------------------------------------------------------------

def test_health_summary_against_hand_computation(runs):
    """Mean and sample std over each variant's three seeds, n, for every health column a variant has (the
    overlap sweep's runs, shifted by 10, left out); none for a metric the variant does not log."""
    from analysis import health

    summ = health.summary(load.main_runs(runs))
    got = {(r["variant"], r["metric"]): r for r in summ.iter_rows(named=True)}
    assert set(got) == {(v, m) for v, values in HEALTH.items() for m in values}
    for (variant, metric), r in got.items():
        x = np.array(HEALTH[variant][metric])
        assert r["n"] == 3
        assert r["mean"] == pytest.approx(x.mean(), abs=1e-12)
        assert r["std"] == pytest.approx(np.sqrt(((x - x.mean()) ** 2).sum() / 2), abs=1e-12)
    assert got[("fsrf", "noise_var")]["mean"] == pytest.approx(1.0)  # (0.8 + 0.9 + 1.3) / 3
    assert got[("fsrf", "noise_var")]["std"] == pytest.approx(math.sqrt(0.07))  # (0.04 + 0.01 + 0.09) / 2
    shown = health.display(summ, load.main_runs(runs))
    assert shown.columns == ["variant", "n", *health.TABLE_METRICS, "grad_share/task", "grad_share/contrastive",
                             "grad_share/js", "grad_share/sinkhorn"]  # task first, then by name
    fsrf, no_dhf = shown.row(0, named=True), shown.row(1, named=True)
    assert fsrf["variant"] == "FSRF" and fsrf["n"] == 3
    assert fsrf["noise_var"] == "1.00 ± 0.265" and fsrf["das_paired_mass"] == "7.00 ± 2.65"  # sqrt(7) = 2.6458
    assert fsrf["grad_share/js"] == "0.00500 ± 0.00500"
    assert no_dhf["variant"] == "w/o DHF" and no_dhf["noise_var"] == "" and no_dhf["das_paired_mass"] == "1.87 ± 0.321"


def test_health_verdicts_of_the_fixture(runs):
    from analysis import health

    main = load.main_runs(runs)
    found = {(v.variant, v.mechanism): v for v in health.verdicts(main)}
    assert [found[("fsrf", r.mechanism)].verdict for r in health.RULES] == ["working"] * 4
    das = found[("fsrf", "DAS alignment")]
    assert das.why == "mean das_paired_mass 7.00, mean das_pair_cost_ratio 0.667" and (das.seeds_working, das.seeds) == (3, 3)
    for mechanism in ("noise branch (R_n)", "shared space (R_ho)", "specific vs shared (R_he)"):
        v = found[("no_dhf", mechanism)]
        assert v.verdict == "not applicable" and "model.dhf=False" in v.why and v.seeds is None
    # w/o DHF: paired mass (1.5, 2.0, 2.1), mean 1.867 < 2: degenerate, though two single runs pass
    assert found[("no_dhf", "DAS alignment")].verdict == "degenerate"
    assert (found[("no_dhf", "DAS alignment")].seeds_working, found[("no_dhf", "DAS alignment")].seeds) == (2, 3)
    assert {v.verdict for (variant, _), v in found.items() if variant == "late_fusion"} == {"not applicable"}
    assert found[("late_fusion", "DAS alignment")].why == "switched off by the variant: model.das=False"
    inert = health.inert_terms(health.summary(main))
    assert inert["fsrf"] == [("js", pytest.approx(0.005))] and inert["no_dhf"] == [] and inert["late_fusion"] == []


def health_runs(variant: str = "fsrf", **columns) -> pl.DataFrame:
    """A wide table of one run per value: ``columns`` are health metric names -> lists of values."""
    n = len(next(iter(columns.values())))
    return pl.DataFrame({"run_id": [f"r{i}" for i in range(n)], "variant": [variant] * n, "seed": list(range(n)),
                         "overlap": [None] * n, f"test/{F1}/lav": [0.8] * n,
                         **{f"health/{k}": v for k, v in columns.items()}},
                        schema_overrides={"overlap": pl.Float64})


def verdict_of(mechanism: str, runs: pl.DataFrame):
    from analysis import health

    return next(v for v in health.verdicts(runs) if v.mechanism == mechanism)


# Each rule at its threshold and just either side of it (one run: the mean is the value itself).
THRESHOLD_CASES = [
    ("noise branch (R_n)", {"noise_var": [1e-3]}, "working"),  # degenerate only *below* 1e-3
    ("noise branch (R_n)", {"noise_var": [0.99e-3]}, "degenerate"),
    ("noise branch (R_n)", {"noise_var": [1.01e-3]}, "working"),
    ("noise branch (R_n)", {"noise_var": [5e-9]}, "degenerate"),  # the literal eq (3)'s collapse
    ("shared space (R_ho)", {"ho_agreement": [0.05]}, "degenerate"),  # working only *above* 0.05
    ("shared space (R_ho)", {"ho_agreement": [0.0501]}, "working"),
    ("shared space (R_ho)", {"ho_agreement": [0.0499]}, "degenerate"),
    ("specific vs shared (R_he)", {"he_ho_cos": [0.9]}, "working"),  # degenerate only *above* 0.9
    ("specific vs shared (R_he)", {"he_ho_cos": [0.9001]}, "degenerate"),
    ("specific vs shared (R_he)", {"he_ho_cos": [0.8999]}, "working"),
    ("DAS alignment", {"das_paired_mass": [2.0], "das_pair_cost_ratio": [0.999]}, "working"),
    ("DAS alignment", {"das_paired_mass": [1.999], "das_pair_cost_ratio": [0.999]}, "degenerate"),
    ("DAS alignment", {"das_paired_mass": [2.001], "das_pair_cost_ratio": [0.5]}, "working"),
    ("DAS alignment", {"das_paired_mass": [2.0], "das_pair_cost_ratio": [1.0]}, "degenerate"),  # needs < 1
    ("DAS alignment", {"das_paired_mass": [30.0], "das_pair_cost_ratio": [1.001]}, "degenerate"),
]


@pytest.mark.parametrize("mechanism,columns,expected", THRESHOLD_CASES)
def test_health_rule_at_its_threshold(mechanism, columns, expected):
    v = verdict_of(mechanism, health_runs(**columns))
    assert v.verdict == expected and (v.seeds_working, v.seeds) == (int(expected == "working"), 1)


def test_health_verdict_is_on_the_mean_over_seeds():
    """R_ho over three seeds (0.0, 0.06, 0.12): mean 0.06 > 0.05 working, though one seed alone is not;
    R_n (2e-3, 1e-4, 1e-4): mean 7.3e-4 < 1e-3 degenerate, though one seed alone is working."""
    v = verdict_of("shared space (R_ho)", health_runs(ho_agreement=[0.0, 0.06, 0.12]))
    assert v.verdict == "working" and (v.seeds_working, v.seeds) == (2, 3) and v.why == "mean ho_agreement 0.0600"
    v = verdict_of("noise branch (R_n)", health_runs(noise_var=[2e-3, 1e-4, 1e-4]))
    assert v.verdict == "degenerate" and (v.seeds_working, v.seeds) == (1, 3)


def test_health_not_applicable_without_the_part():
    """w/o noise switches R_n off: not applicable, whatever it logged; a variant that should have a metric
    but whose runs lack it: not applicable, not measured (and NaN counts as absent)."""
    runs = health_runs("no_noise", noise_var=[1e-9, 1e-9], ho_agreement=[0.5, 0.5])
    v = verdict_of("noise branch (R_n)", runs)
    assert v.verdict == "not applicable" and v.why == "switched off by the variant: model.noise=False"
    assert verdict_of("shared space (R_ho)", runs).verdict == "working"
    v = verdict_of("noise branch (R_n)", health_runs("fsrf", ho_agreement=[0.5, 0.5]))
    assert v.verdict == "not applicable" and v.why == "not measured (noise_var absent from its runs)"
    v = verdict_of("DAS alignment", health_runs("fsrf", das_paired_mass=[3.0, 3.0], das_pair_cost_ratio=[math.nan] * 2))
    assert v.verdict == "not applicable" and "das_pair_cost_ratio absent" in v.why


def test_health_inert_term_threshold():
    from analysis import health

    runs = health_runs(**{"grad_share/task": [0.98, 0.98], "grad_share/js": [0.0099, 0.0099],
                          "grad_share/sinkhorn": [0.01, 0.01]})
    assert health.inert_terms(health.summary(runs)) == {"fsrf": [("js", pytest.approx(0.0099))]}


def test_runs_table_carries_the_selected_epochs_health_to_parquet(tmp_path):
    """The worker's final report takes health/* from the selected epoch's history entry (not the last
    epoch's); runs_table keeps them; runs.parquet read back by analysis has them beside the test metrics."""
    from types import SimpleNamespace

    from studies.robustness import runs_table
    from studies.worker import selected_health

    history = [{"epoch": e, "train/total": 1.0, "health/noise_var": 0.1 * (e + 1), "health/grad_share/task": 0.5}
               for e in range(3)]
    assert selected_health(SimpleNamespace(history=history, best_epoch=1)) == {
        "health/noise_var": pytest.approx(0.2), "health/grad_share/task": 0.5}
    assert selected_health(SimpleNamespace(history=history[:0], best_epoch=0)) == {}
    final = {f"test/{F1}/lav": 0.8, **selected_health(SimpleNamespace(history=history, best_epoch=1)),
             "trial_id": "t1", "best_epoch": 2}
    results = [SimpleNamespace(error=None, metrics=final, config={"spec": {"variant": "fsrf", "seed": 0, "overlap": None}}),
               SimpleNamespace(error=None, metrics={f"test/{F1}/lav": 0.7, "trial_id": "t2", "best_epoch": 1},
                               config={"spec": {"variant": "ridge", "seed": 0, "overlap": None}})]
    table = runs_table(results, SimpleNamespace(runs={"t1": "run-a", "t2": "run-b"}))
    table.write_parquet(tmp_path / "runs.parquet")
    back = load.runs_from_parquet(tmp_path / "runs.parquet")
    assert load.health_columns(back) == ["health/grad_share/task", "health/noise_var"]
    assert back.filter(pl.col("variant") == "fsrf")["health/noise_var"][0] == pytest.approx(0.2)
    assert back.filter(pl.col("variant") == "ridge")["health/noise_var"][0] is None


def test_old_stores_without_health_still_load(study, tmp_path):
    from analysis import health

    old = load.runs_from_parquet(study["parquet"]).select(pl.exclude("^health/.*$"))
    old.write_parquet(tmp_path / "runs.parquet")
    back = load.runs_from_parquet(tmp_path / "runs.parquet")
    assert load.health_columns(back) == [] and back.height == study["n_runs"]
    assert health.columns(back) == [] and health.summary(back).height == 0
