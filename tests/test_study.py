"""End-to-end tests of the study platform: ``studies/tune_lambdas.py`` run as a user runs it.

Each study runs in a fresh interpreter (its own local Ray with 2 CPUs, its own folder as the working
directory: ``./mlflow.db`` and ``./runs/tune``) on the real synthetic data shrunk to a few dozen samples.
One module-scoped study (4 trials x 2 epochs, trial 2 trained on NaN labels by ``tests/nan_study.py``,
the real driver with a test trainable) feeds most assertions; the Ray Train path and resume each need a
study of their own. Every process a study leaves behind (found by a
marker in its environment, never by name) is killed, so other Ray sessions on the machine are untouched.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import ROOT, TINY, subprocess_env
from fsrf.config import flatten, load_config
from fsrf.errors import InputError
from studies.space import load_space

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "studies" / "tune_lambdas.py"
NAN_SCRIPT = ROOT / "tests" / "nan_study.py"  # the same driver, one trial's loss NaN (no such CLI switch)
SPACE = ROOT / "configs" / "search_space.yaml"
ARGS = [a for kv in TINY for a in ("--set", kv)] + ["--cpus", "2"]
OBJECTIVE = "val/Non0_F1_score/objective"
BEST = "best/" + OBJECTIVE
# SPEC section 6: params every trial run carries, by these flat dotted names.
SPEC_PARAMS = ("loss.lambda1", "loss.lambda2", "loss.tau", "loss.sinkhorn_eps", "loss.margin", "loss.noise_mu",
               "loss.noise_sigma2", "missing.schedule", "train.lr", "seed")
MARK = "FSRF_TEST_MARK"

# The shared study.
N_TRIALS, MAX_EPOCHS, NAN_TRIAL = 4, 2, 2


# ---------------------------------------------------------------------------------------------- helpers

def study_env(cwd: Path) -> dict[str, str]:
    return subprocess_env(**{MARK: str(cwd)})  # the marker finds every process the study leaves


def marked_pids(cwd: Path) -> list[int]:
    """Processes whose environment carries this test's marker: the driver, Ray's daemons and workers."""
    needle = f"{MARK}={cwd}\0".encode()
    pids = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/environ", "rb") as f:
                if needle in f.read():
                    pids.append(int(d[6:]))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid()]


def reap(cwd: Path, *, grace: float = 0.0) -> list[int]:
    """Wait up to ``grace`` s for the study's processes to exit, then SIGKILL what is left; returns those."""
    deadline = time.time() + grace
    left = marked_pids(cwd)
    while left and time.time() < deadline:
        time.sleep(0.5)
        left = marked_pids(cwd)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def run_study(cwd: Path, *args: str, timeout: float = 300, nan_trial: int | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in ``cwd`` (with ``nan_trial``: ``tests/nan_study.py``, that trial's loss NaN); on a
    timeout, kill everything it started before failing."""
    command = [str(SCRIPT)] if nan_trial is None else [str(NAN_SCRIPT), str(nan_trial)]
    try:
        return subprocess.run([sys.executable, *command, *ARGS, *args], cwd=cwd, env=study_env(cwd),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        reap(cwd)
        raise


def tail(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"


class Mlflow:
    """What a study left in ``<cwd>/mlflow.db``: the parent run and its children."""

    def __init__(self, cwd: Path, name: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
        exp = self.client.get_experiment_by_name(name)
        assert exp is not None, f"no MLflow experiment {name!r}"
        self.runs = self.client.search_runs([exp.experiment_id], max_results=1000)
        parents = [r for r in self.runs if r.data.tags.get("fsrf.role") == "study"]
        assert len(parents) == 1, f"expected one parent run, got {len(parents)}"
        self.parent = parents[0]
        self.children = [r for r in self.runs if r.data.tags.get("mlflow.parentRunId") == self.parent.info.run_id]

    def by_index(self, index: int):
        (run,) = [r for r in self.children if r.data.tags.get("fsrf.trial_index") == str(index)]
        return run

    def history(self, run, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in
                sorted(self.client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))]


def base_flat() -> dict:
    return flatten(load_config(None, TINY))


# ----------------------------------------------------------------------------- variants (no Ray needed)

def test_robustness_variants_come_from_fsrf_variants():
    """The robustness study offers ``fsrf.variants``' names and defaults; each run trains exactly its
    variant's overrides and logs the values it trained with; the tuning study's ``fsrf.variant`` tag of a
    trained variant's config names that variant."""
    from fsrf import variants
    from studies import robustness, worker

    assert robustness.checked(robustness.parse([]))[0] == list(variants.DEFAULT)
    assert robustness.checked(robustness.parse(["--variants", ",".join(variants.RUNNABLE)]))[0] == list(variants.RUNNABLE)
    with pytest.raises(InputError, match="not trained"):  # the ceiling is the report's, never a run
        robustness.checked(robustness.parse(["--variants", "fsrf,ceiling"]))
    settings = worker.TrialSettings(base=base_flat(), max_epochs=2)
    for v in variants.VARIANTS:
        if v.oracle:
            continue
        spec = {"variant": v.name, "seed": 3, "overlap": None}
        flat = flatten(worker.robustness_config(settings, spec))
        assert all(flat[k] == x for k, x in v.overrides.items())
        assert {k: x for k, x in flat.items() if k not in v.overrides and k != "seed"} == \
            {k: x for k, x in base_flat().items() if k not in v.overrides and k != "seed"} | {"train.epochs": 2,
                                                                                             "train.threads": 1}
        logged = robustness._spec_params(spec)  # the run's own MLflow params
        assert all(flat[k] == x for k, x in logged.items() if k in flat) and logged["variant"] == v.name
        if not v.closed_form:
            assert variants.of_config(flat) == v.name


def test_the_cli_has_no_fault_injection_switch(capsys):
    """NaN trials come from ``tests/nan_study.py`` (the driver called with a test trainable), not from a
    hidden flag of the production command line."""
    import dataclasses

    from studies import tune_lambdas, worker

    with pytest.raises(SystemExit):
        tune_lambdas.parse(["--nan-trial", "2"])
    assert not [f.name for f in dataclasses.fields(worker.TrialSettings) if "nan" in f.name]


# ---------------------------------------------------------------------------------- the shared study

@pytest.fixture(scope="module")
def study(tmp_path_factory, fsrf_cache):
    """4 trials x 2 epochs (OptunaSearch + ASHA, grace 1), trial 2 poisoned with NaN and never retried."""
    cwd = tmp_path_factory.mktemp("study")
    t0 = time.time()
    proc = run_study(cwd, "--name", "s", "--num-samples", str(N_TRIALS), "--max-epochs", str(MAX_EPOCHS),
                     "--grace-period", "1", "--max-failures", "0", nan_trial=NAN_TRIAL)
    wall = time.time() - t0
    leftover = reap(cwd, grace=15)  # a study that exits shuts its local Ray down
    print(f"shared study: {wall:.1f} s")
    assert proc.returncode == 0, tail(proc)
    folder = cwd / "runs" / "tune" / "s"
    return dict(cwd=cwd, proc=proc, wall=wall, leftover=leftover, ml=Mlflow(cwd, "s"),
                trials=pl.read_parquet(folder / "trials.parquet"), epochs=pl.read_parquet(folder / "epochs.parquet"),
                space=load_space(SPACE, load_config(None, TINY)))


def test_mlflow_parent_and_one_nested_child_per_trial(study):
    ml = study["ml"]
    parent = ml.parent
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "study-s"
    assert len(ml.children) == N_TRIALS
    assert {r.info.run_id for r in ml.runs} == {parent.info.run_id} | {r.info.run_id for r in ml.children}
    assert [r.info.run_name for r in ml.runs if r.info.status == "RUNNING"] == []
    ids = [r.data.tags["fsrf.trial_id"] for r in ml.children]
    assert len(set(ids)) == N_TRIALS  # one run per trial, no duplicates
    assert sorted(int(r.data.tags["fsrf.trial_index"]) for r in ml.children) == list(range(1, N_TRIALS + 1))
    for run in ml.children:
        m = re.fullmatch(r"trial-(\d{3})-lr(\d)e-(\d)", run.info.run_name)
        assert m, run.info.run_name
        assert int(m[1]) == int(run.data.tags["fsrf.trial_index"])
        lr = float(run.data.params["train.lr"])
        assert float(f"{m[2]}e-{m[3]}") == pytest.approx(lr, rel=0.5)  # the name shows the trial's lr
        assert run.data.tags["fsrf.status"] == run.info.status
    # the parent holds the study's settings and its search space
    assert parent.data.params["study.num_samples"] == str(N_TRIALS)
    assert parent.data.params["space.train.lr"].startswith("loguniform")
    assert parent.data.params["study.searched"].split(",") == study["space"].names


def test_every_trial_run_has_the_spec_params_in_range(study):
    ml, space, base = study["ml"], study["space"], base_flat()
    done = [r for r in ml.children if r.info.status == "FINISHED"]
    assert len(done) == N_TRIALS - 1
    for run in ml.children:
        params = run.data.params
        assert set(SPEC_PARAMS) <= set(params), sorted(set(SPEC_PARAMS) - set(params))
        assert params["model.width"] == "16" and params["data.size_scale"] == "0.05"  # the --set overrides
        for p in space.params:
            if p.distribution == "choice":
                assert params[p.name] in p.values, (run.info.run_name, p.name, params[p.name])
            else:
                assert p.low <= float(params[p.name]) <= p.high, (run.info.run_name, p.name, params[p.name])
    # trial 1 evaluates the base config (start_with_base: true); the others are sampled and all differ
    first = ml.by_index(1).data.params
    assert {n: first[n] for n in space.names} == {n: str(base[n]) for n in space.names}
    points = {tuple(r.data.params[n] for n in space.names) for r in ml.children}
    assert len(points) == N_TRIALS
    for p in space.params:
        if p.distribution != "choice":
            assert len({r.data.params[p.name] for r in ml.children}) == N_TRIALS, p.name


def test_objective_and_train_loss_logged_every_epoch(study):
    ml, trials = study["ml"], study["trials"]
    epochs_of = dict(zip(trials["trial_id"], trials["epochs"]))
    done = [r for r in ml.children if r.info.status == "FINISHED"]
    assert max(epochs_of[r.data.tags["fsrf.trial_id"]] for r in done) == MAX_EPOCHS  # ASHA let one finish
    for run in done:
        n = epochs_of[run.data.tags["fsrf.trial_id"]]
        assert n >= 1
        objective = ml.history(run, OBJECTIVE)
        assert [s for s, _ in objective] == list(range(1, n + 1)), run.info.run_name
        assert [s for s, _ in ml.history(run, "train/total")] == list(range(1, n + 1))
        assert all(math.isfinite(v) for _, v in objective)
        # best/... is the objective at the best epoch so far
        assert ml.history(run, BEST)[-1][1] == pytest.approx(max(v for _, v in objective))
        reason = run.data.tags["fsrf.stop_reason"]
        assert reason == ("completed" if n == MAX_EPOCHS else f"early-stopped by the scheduler after {n} epochs")


def test_tuning_never_logs_test_metrics(study):
    ml = study["ml"]
    for run in ml.runs:
        assert not [k for k in run.data.metrics if k.startswith("test/") or "/test/" in k], run.info.run_name
        assert any(k.startswith("val/") or k.startswith("best/val/") for k in run.data.metrics) \
            or run.info.status == "FAILED", run.info.run_name
    for table in (study["trials"], study["epochs"]):
        assert not [c for c in table.columns if "test/" in c]


def test_parquet_tables_agree_with_mlflow(study):
    ml, trials, epochs, space = study["ml"], study["trials"], study["epochs"], study["space"]
    assert trials.height == N_TRIALS
    assert trials["trial_id"].n_unique() == N_TRIALS
    assert set(trials["trial_id"]) == {r.data.tags["fsrf.trial_id"] for r in ml.children}
    assert set(space.names) | {BEST, "trial_id", "status", "epochs"} <= set(trials.columns)
    by_id = {r.data.tags["fsrf.trial_id"]: r for r in ml.children}
    for row in trials.iter_rows(named=True):
        run = by_id[row["trial_id"]]
        for name in space.names:  # the table holds the params the run was logged with
            logged = run.data.params[name]
            assert (logged == row[name]) if isinstance(row[name], str) else float(logged) == row[name], name
        if row["status"] == "TERMINATED":
            assert row[BEST] == pytest.approx(run.data.metrics[BEST])
            hist = epochs.filter(pl.col("trial_id") == row["trial_id"]).sort("epoch")
            assert hist["epoch"].to_list() == list(range(1, row["epochs"] + 1))
            assert hist[OBJECTIVE].to_list() == pytest.approx([v for _, v in ml.history(run, OBJECTIVE)])
            assert hist["train/total"].to_list() == pytest.approx([v for _, v in ml.history(run, "train/total")])
    # the parent's best is the table's best, with that trial's config
    parent = ml.parent
    best = trials.filter(pl.col(BEST).is_not_null()).sort(BEST, descending=True).row(0, named=True)
    assert parent.data.metrics[BEST] == pytest.approx(trials[BEST].max())
    assert parent.data.metrics["study/trials"] == N_TRIALS
    for name in space.names:
        got = parent.data.params[f"best.{name}"]
        assert (got == best[name]) if isinstance(best[name], str) else float(got) == best[name], name
    assert f"{best[BEST]:.4f}" in study["proc"].stdout  # the summary printed for the user


def test_failed_trial_ends_failed_and_the_study_goes_on(study):
    """Trial 2's loss turns NaN (``--max-failures 0``): it fails, its run says why; the study still exits 0."""
    ml, trials, proc = study["ml"], study["trials"], study["proc"]
    bad = ml.by_index(NAN_TRIAL)
    assert bad.info.status == "FAILED"
    assert bad.data.tags["fsrf.status"] == "FAILED"
    reason = bad.data.tags["fsrf.stop_reason"]
    assert "nan" in reason.lower(), reason
    assert not [k for k in bad.data.metrics if k.startswith("val/")]  # it failed in its first epoch
    assert sorted(r.info.status for r in ml.children if r is not bad) == ["FINISHED"] * (N_TRIALS - 1)
    row = trials.filter(pl.col("trial_id") == bad.data.tags["fsrf.trial_id"]).row(0, named=True)
    assert row["status"] == "ERROR" and "nan" in row["error"].lower()
    assert trials.filter(pl.col("status") == "TERMINATED").height == N_TRIALS - 1
    # a study with failed trials still completes (exit 0) and reports them
    assert proc.returncode == 0
    assert f"{N_TRIALS} trials (1 errored)" in proc.stdout
    assert ml.parent.data.metrics["study/errored"] == 1


def test_study_leaves_no_process_behind(study):
    assert study["leftover"] == []


def _manifest(ml, run) -> dict:
    import mlflow

    return mlflow.artifacts.load_dict(run.info.artifact_uri + "/manifest.json")


def test_child_runs_carry_the_study_context_and_a_manifest(study):
    """Filters on study params/tags in the MLflow UI keep the children; every trial has a manifest whose
    seeds, data and code match the run, and its outcome matches the logged best and final values."""
    ml = study["ml"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for run in ml.children:
        p, t = run.data.params, run.data.tags
        assert p["study.name"] == "s" and p["study.objective"] == BEST and p["study.search_seed"] == "0"
        assert p["study.selection"].startswith("epoch with the best val/Non0_F1_score/objective")
        assert (t["fsrf.study"], t["fsrf.objective"], t["fsrf.data"], t["fsrf.variant"]) == \
            ("s", BEST, "synthetic/mosi", "fsrf")
        if run.info.status == "FAILED":
            continue
        man = _manifest(ml, run)
        assert man["schema"] == "fsrf.manifest/1"
        assert man["seeds"] == {"search": 0, "train": int(p["seed"]), "data": 0, "eval_mask": 1234}
        assert man["code"]["commit"] == (head or "unknown") == t["fsrf.code_commit"]
        assert man["data"]["fingerprint"] == t["fsrf.data_fingerprint"] and len(t["fsrf.data_fingerprint"]) == 16
        assert man["packages"]["torch"] == __import__("torch").__version__
        assert {k: str(v) for k, v in man["config"].items() if k in study["space"].names} == \
            {k: p[k] for k in study["space"].names}
        out, m = man["outcome"], run.data.metrics
        history = ml.history(run, OBJECTIVE)
        assert out["epochs_run"] == m["final/epoch"] == len(history)
        best_step = max(history, key=lambda sv: sv[1])[0]
        assert out["best_epoch"] == m["best/epoch"] == best_step  # the first epoch reaching the maximum
        assert out["metrics"][BEST] == m[BEST] == max(v for _, v in history)
        assert m["final/" + OBJECTIVE] == history[-1][1]
        assert out["stop_reason"] == t["fsrf.stop_reason"]
        assert 0 < m["cost/cpu_s"] and 0 < m["cost/wall_s"] and m["cost/gpu_s"] == 0


def test_progress_is_a_few_lines_and_the_cost_is_reported(study):
    proc, ml = study["proc"], study["ml"]
    assert "Checkpoint successfully created" not in proc.stdout + proc.stderr
    status = [ln for ln in proc.stderr.splitlines() if "trials done" in ln]
    assert 1 <= len(status) <= N_TRIALS + 2 * study["wall"] / 30 + 1
    last = status[-1]
    assert f"{N_TRIALS}/{N_TRIALS} trials done" in last and "1 failed" in last and "0 running" in last
    children = sum(r.data.metrics.get("cost/cpu_s", 0.0) for r in ml.children)
    assert ml.parent.data.metrics["study/cpu_s"] == pytest.approx(children, rel=1e-6)
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("cost:")]
    assert f"{N_TRIALS} trials, {children:.0f} CPU-s in trials" in line


def test_a_trial_rerun_from_its_manifest_reproduces_its_metrics(study, tmp_path):
    """The manifest.json of a finished trial, fed to ``studies/train.py --manifest``, gives the same
    best validation values (exactly: same config, seed, data and thread count, on CPU)."""
    ml = study["ml"]
    run = next(r for r in ml.children if r.info.status == "FINISHED")
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(_manifest(ml, run)))
    proc = subprocess.run([sys.executable, str(ROOT / "studies" / "train.py"), "--manifest", str(path),
                           "--output", str(tmp_path / "out")], cwd=tmp_path, env=study_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, tail(proc)
    assert re.search(r"reproduced: [1-9]\d* metrics equal", proc.stdout), proc.stdout
    # tampering with the recorded outcome is caught (exit 1): the comparison can fail
    man = json.loads(path.read_text())
    man["outcome"]["metrics"][BEST] += 0.01
    path.write_text(json.dumps(man))
    proc = subprocess.run([sys.executable, str(ROOT / "studies" / "train.py"), "--manifest", str(path),
                           "--output", str(tmp_path / "out2")], cwd=tmp_path, env=study_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "NOT reproduced" in proc.stdout, tail(proc)


def test_seeds_per_config_selects_on_the_mean(tmp_path):
    """2 configurations x 2 training seeds: Optuna (persisted in optuna.db) is told each configuration's
    mean over its seeds, and the study selects the configuration with the best mean."""
    import optuna

    try:
        proc = run_study(tmp_path, "--name", "k", "--num-samples", "2", "--seeds-per-config", "2",
                         "--max-epochs", "2", "--cpus", "2")
    finally:
        reap(tmp_path, grace=10)
    assert proc.returncode == 0, tail(proc)
    folder = tmp_path / "runs" / "tune" / "k"
    trials = pl.read_parquet(folder / "trials.parquet")
    configs = pl.read_parquet(folder / "configs.parquet")
    assert trials.height == 4 and configs.height == 2
    ml = Mlflow(tmp_path, "k")
    for (cid,), group in trials.group_by("config_id"):
        assert sorted(group["seed"].to_list()) == [0, 1]  # the base seed and the next
        row = configs.filter(pl.col("config_id") == cid).row(0, named=True)
        values = group[BEST].to_list()
        assert row["n_seeds"] == 2 and row[BEST] == pytest.approx(sum(values) / 2)
        assert row["objective_std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    for run in ml.children:
        assert re.fullmatch(r"trial-\d{3}-s[01]-lr\de-\d", run.info.run_name), run.info.run_name
        assert run.data.params["seed"] == run.info.run_name.split("-s")[1][0]
        assert _manifest(ml, run)["seeds"]["train"] == int(run.data.params["seed"])
    best = configs.sort(BEST, descending=True).row(0, named=True)
    assert ml.parent.data.metrics[BEST] == pytest.approx(best[BEST])
    stored = optuna.load_study(study_name="k", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert sorted(t.value for t in stored.trials) == pytest.approx(sorted(configs[BEST].to_list()))
    assert [t.state.name for t in stored.trials] == ["COMPLETE", "COMPLETE"]


def test_random_sampler_and_fifo_run_every_trial_to_the_budget(tmp_path):
    """The random-search baseline of the search-efficiency figure: ``--sampler random --scheduler fifo``
    runs every configuration for --max-epochs (ASHA with grace 1 would stop one of 3 at epoch 1), the
    Optuna study's sampler is a seeded RandomSampler (same seed: same configurations), and the tables
    keep the report time of every epoch, which orders a study's epochs for ``benchmark.search_progress``."""
    import optuna

    runs = {}
    try:
        for name in ("r1", "r2"):
            runs[name] = run_study(tmp_path, "--name", name, "--num-samples", "3", "--max-epochs", "2",
                                   "--grace-period", "1", "--sampler", "random", "--scheduler", "fifo",
                                   "--search-seed", "5", "--cpus", "2")
    finally:
        reap(tmp_path, grace=10)
    for proc in runs.values():
        assert proc.returncode == 0, tail(proc)
    folder = tmp_path / "runs" / "tune"
    trials = pl.read_parquet(folder / "r1" / "trials.parquet")
    assert trials.height == 3 and trials["epochs"].to_list() == [2, 2, 2]
    epochs = pl.read_parquet(folder / "r1" / "epochs.parquet")
    assert epochs.height == 6 and {"timestamp", "time_total_s"} <= set(epochs.columns)
    ml = Mlflow(tmp_path, "r1")
    assert ml.parent.data.params["study.sampler"] == "random" and ml.parent.data.params["study.scheduler"] == "FIFO"
    space = load_space(SPACE, load_config(None, TINY))
    first, second = (pl.read_parquet(folder / n / "trials.parquet").sort("trial_id") for n in ("r1", "r2"))
    for name in space.names:  # the seeded sampler proposes the same configurations (order may differ)
        assert sorted(map(repr, first[name].to_list())) == sorted(map(repr, second[name].to_list())), name
    stored = optuna.load_study(study_name="r1", storage=f"sqlite:///{folder / 'r1' / 'optuna.db'}")
    assert len(stored.trials) == 3


# -------------------------------------------------------------------------------- the Ray Train path

def test_ray_train_workers_log_the_same_schema(study, tmp_path):
    """2 Train workers (DDP over gloo on CPU) per trial, holding both CPUs of the local Ray, 3 trials in
    sequence: each must get the CPUs back from the one before (Train V2 leaves a terminated trial's
    worker placement group reserved, ray#54305; the study removes it), or the study hangs."""
    t0 = time.time()
    try:
        proc = run_study(tmp_path, "--name", "t", "--num-samples", "3", "--max-epochs", str(MAX_EPOCHS),
                         "--grace-period", "1", "--workers-per-trial", "2", "--cpus-per-trial", "2", timeout=300)
    finally:
        reap(tmp_path, grace=10)
    print(f"Ray Train study: {time.time() - t0:.1f} s")
    assert proc.returncode == 0, tail(proc)
    ml = Mlflow(tmp_path, "t")
    assert len(ml.children) == 3 and all(r.info.status == "FINISHED" for r in ml.children)
    run = ml.by_index(1)
    assert ml.parent.info.status == "FINISHED"
    assert run.data.params["study.workers_per_trial"] == "2"
    plain = next(r for r in study["ml"].children if r.info.status == "FINISHED")
    # the same metrics, but for the loss terms' gradient shares, which are not measured under DDP
    # (fsrf.train.fit: autograd.grad beside DDP's reducer; logged as NaN, which MLflow logging skips)
    shares = {k for k in plain.data.metrics if k.startswith("health/grad_share/")}
    assert shares and set(run.data.metrics) == set(plain.data.metrics) - shares
    assert set(run.data.params) == set(plain.data.params)
    assert [s for s, _ in ml.history(run, OBJECTIVE)] == list(range(1, MAX_EPOCHS + 1))
    assert [s for s, _ in ml.history(run, "train/total")] == list(range(1, MAX_EPOCHS + 1))
    assert "world_size=2" in proc.stderr  # Ray Train set up a 2-process group for the trial
    trial_id = run.data.tags["fsrf.trial_id"]
    assert list((tmp_path / "runs" / "tune" / "train").glob(f"train-{trial_id}*")), "no Ray Train run folder"


# ----------------------------------------------------------------------------------------------- resume

def _trial_states(study_dir: Path) -> dict[str, str]:
    """trial id -> status in Tune's newest experiment snapshot (what ``--resume`` restores from)."""
    files = sorted(study_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {}
    try:
        data = json.loads(files[-1].read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for item in data.get("trial_data", []):
        trial = json.loads(item[0] if isinstance(item, list) else item)
        out[trial["trial_id"]] = trial["status"]
    return out


def _reported(study_dir: Path) -> dict[str, int]:
    """trial id -> epochs the driver has received (lines of the trial folder's ``result.json``)."""
    out = {}
    for path in study_dir.glob("*/result.json"):
        try:
            lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        except (OSError, ValueError):
            continue
        if lines:
            out[lines[-1]["trial_id"]] = len(lines)
    return out


def test_resume_after_a_killed_driver(tmp_path):
    """SIGKILL the driver's process group once a trial has finished and the next one is running;
    ``--resume`` completes the study without re-running the finished trial or duplicating any run."""
    # 8 epochs: a trial lasts several of Tune's 2 s state snapshots (reused actors make trials quick),
    # so the saved state does show "one finished, one running" before the study ends
    n, epochs = 3, 8
    # --cpus 1: one trial at a time (and one torch thread), so the kill falls between "trial 1 done" and
    # "trial 2 done"; grace = max epochs: ASHA stops nobody.
    study_args = ["--name", "r", "--num-samples", str(n), "--max-epochs", str(epochs), "--grace-period", str(epochs),
                  "--cpus", "1"]
    study_dir = tmp_path / "runs" / "tune" / "r"
    t0 = time.time()
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, str(SCRIPT), *ARGS, *study_args], cwd=tmp_path,
                                 env=study_env(tmp_path), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # Kill as soon as Tune's saved state (what --resume restores) has a finished trial and a running
            # one. Killing later is not safe yet: Tune deletes checkpoints beyond num_to_keep before its saved
            # state (synced in the background) names the newer ones, and a resumed trial whose saved
            # checkpoint is gone fails ("Could not recover from checkpoint as it does not exist").
            while not {"TERMINATED", "RUNNING"} <= set(_trial_states(study_dir).values()):
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
                assert time.time() - t0 < 240, "no trial finished in time"
                time.sleep(0.1)
        finally:
            try:
                os.killpg(first.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended by itself: the assertion above says why
                pass
            first.wait()
            left = reap(tmp_path, grace=2)
    killed_at = time.time() - t0
    at_kill = _reported(study_dir)
    states = _trial_states(study_dir)
    finished = {t for t, s in states.items() if s == "TERMINATED"}
    assert finished and len(finished) < n, states

    ml = Mlflow(tmp_path, "r")
    assert ml.parent.info.status == "RUNNING"  # the driver really died mid-study
    before = {r.data.tags["fsrf.trial_id"]: r for r in ml.children}
    in_flight = [r for r in ml.children if r.info.status == "RUNNING"]
    assert in_flight, "no trial was running when the driver died"
    kept = {}
    for trial_id in finished:
        assert before[trial_id].info.status == "FINISHED"
        kept[trial_id] = [(m.step, m.value, m.timestamp) for m in
                          ml.client.get_metric_history(before[trial_id].info.run_id, OBJECTIVE)]
        assert [s for s, _, _ in kept[trial_id]] == list(range(1, epochs + 1))

    t1 = time.time()
    try:
        proc = run_study(tmp_path, *study_args, "--resume", timeout=240)
    finally:
        reap(tmp_path, grace=10)
    print(f"resume: killed after {killed_at:.1f} s ({len(finished)} finished, {len(in_flight)} running, "
          f"epochs reported {sorted(at_kill.values())}, {len(left)} leftover processes killed), "
          f"resumed run {time.time() - t1:.1f} s")
    assert proc.returncode == 0, tail(proc)

    ml = Mlflow(tmp_path, "r")  # still exactly one parent (asserted inside), now FINISHED
    assert ml.parent.info.status == "FINISHED"
    assert [r.info.run_name for r in ml.runs if r.info.status == "RUNNING"] == []
    ids = [r.data.tags["fsrf.trial_id"] for r in ml.children]
    assert len(ids) == n and len(set(ids)) == n  # one run per trial: none duplicated by the resume
    assert sorted(int(r.data.tags["fsrf.trial_index"]) for r in ml.children) == list(range(1, n + 1))
    for run in ml.children:
        trial_id = run.data.tags["fsrf.trial_id"]
        assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags.get("fsrf.stop_reason"))
        if trial_id in before:
            assert run.info.run_id == before[trial_id].info.run_id  # re-attached, not recreated
        history = ml.client.get_metric_history(run.info.run_id, OBJECTIVE)
        if trial_id in finished:  # not run again: its history is exactly what it was
            assert [(m.step, m.value, m.timestamp) for m in history] == kept[trial_id]
        else:
            assert {m.step for m in history} == set(range(1, epochs + 1))
    trials = pl.read_parquet(study_dir / "trials.parquet")
    assert trials.height == n and set(trials["trial_id"]) == set(ids)
    assert trials["status"].to_list() == ["TERMINATED"] * n
    # the searcher's history survived: the Optuna storage holds every trial, before and after the kill
    import optuna

    stored = optuna.load_study(study_name="r", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    assert [t.state.name for t in stored.trials] == ["COMPLETE"] * n
    assert sorted(t.value for t in stored.trials) == pytest.approx(sorted(trials[BEST].to_list()))
    per_trial = pl.read_parquet(study_dir / "epochs.parquet").group_by("trial_id").agg(pl.col("epoch").sort())
    assert {t: e for t, e in per_trial.iter_rows()} == {t: list(range(1, epochs + 1)) for t in ids}


def test_time_budget_ends_the_study_and_says_why(tmp_path):
    """``--time-budget``: trials still running when it runs out end KILLED with the reason, none RUNNING."""
    try:
        proc = run_study(tmp_path, "--name", "b", "--num-samples", "4", "--max-epochs", "200", "--grace-period", "200",
                         "--time-budget", "0.4")
    finally:
        reap(tmp_path, grace=10)
    assert proc.returncode == 0, tail(proc)
    ml = Mlflow(tmp_path, "b")
    reasons = [r.data.tags.get("fsrf.stop_reason", "") for r in ml.children]
    assert [r.info.run_name for r in ml.runs if r.info.status == "RUNNING"] == []
    assert any(reason.startswith("stopped by the study's time budget") for reason in reasons), reasons
    assert not any(reason == "completed" for reason in reasons), reasons  # 200 epochs never fit in 24 s


def test_runs_table_leaves_out_runs_interrupted_before_their_test_protocol():
    """An interrupted robustness study keeps its finished runs; a run stopped mid-training has per-epoch
    metrics but no test/ ones, and must not enter runs.parquet as a row of nulls (it made a variant's
    mean over seeds look like n=3 with std 0)."""
    from types import SimpleNamespace

    from studies.robustness import runs_table

    def result(trial_id, seed, metrics):
        return SimpleNamespace(error=None, config={"spec": {"variant": "no_dhf", "seed": seed, "overlap": None}},
                               metrics={"trial_id": trial_id, **metrics})

    results = [result("t0", 0, {"best_epoch": 12, "test/Non0_F1_score/lav": 0.81, "health/noise_var": 1.0}),
               result("t1", 1, {"best_epoch": 8, "val/Non0_F1_score/objective": 0.7}),  # interrupted
               result("t2", 2, {})]
    table = runs_table(results, SimpleNamespace(runs={"t0": "run0", "t1": "run1", "t2": "run2"}))
    assert table["run_id"].to_list() == ["run0"] and table["test/Non0_F1_score/lav"].to_list() == [0.81]
    assert table["health/noise_var"].to_list() == [1.0]
