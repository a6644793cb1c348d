"""What users of the tools expect (issue 15): MLflow's Dataset column, optuna-dashboard, a light driver, and
tracking URIs MLflow cannot use refused in one line.

- Every trial and robustness run records its dataset as an MLflow input (name, the data fingerprint as
  digest, source, context), so the UI's Dataset column and its ``dataset.*`` filters work; the parent
  run has it too.
- ``TrialTracker``'s callbacks return at once while the MLflow store is busy (they queue the calls to
  one thread); everything is in the store, in order, once the study ends.
- ``optuna-dashboard`` opens a real study's Optuna storage on loopback and serves its trials (and, where
  Chromium is installed, renders them).
- A tracking URI of a kind MLflow cannot use is refused before anything is written, and no process is
  left running.

Real things only: MLflow SQLite stores, a real tuning study (``studies/tune_lambdas.py``, 2 tiny trials
on a local Ray), the real ``optuna-dashboard`` server and headless Chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, TINY
from test_study import ARGS, SCRIPT, Mlflow, reap, study_env, tail

N_TRIALS, EPOCHS, STUDY = 2, 2, "tools"
OBJECTIVE = "val/Non0_F1_score/objective"


# ---------------------------------------------------------------------------------------------- helpers

class FakeTrial:
    """What ``TrialTracker`` reads from a Tune trial: id, experiment tag, config, last result, checkpoint."""

    def __init__(self, trial_id: str, index: int, config: dict):
        self.trial_id, self.experiment_tag, self.config = trial_id, f"{index}_lr=0.001", config
        self.last_result, self.checkpoint, self.error_file = {}, None, None


def manifest_of(kind: str | None = None, **data_changes) -> dict:
    """The manifest a trial's first report carries, for the tiny synthetic data (its real fingerprint)."""
    from fsrf.config import load_config
    from fsrf.data import fingerprint, load_dataset
    from fsrf.manifest import build

    cfg = load_config(None, TINY)
    study = {"name": "s"} if kind is None else {"name": "s", "kind": kind}
    manifest = build(cfg, data_fingerprint=fingerprint(load_dataset(cfg.data)), encoder_id="minilm@test",
                     code={"commit": "abc", "dirty": False}, study=study)
    manifest["data"].update(data_changes)
    return manifest


def new_tracker(uri: str, name: str = "s"):
    """A tracker on a new experiment and parent run of the SQLite store at ``uri`` (artifacts beside it,
    never in the working directory); (tracker, client)."""
    from studies import tracking

    client = tracking.client_for(uri)
    exp = tracking.experiment_id(client, name, artifact_root=Path(uri.removeprefix("sqlite:///")).parent / "artifacts")
    parent = client.create_run(exp, run_name=f"study-{name}").info.run_id
    tracker = tracking.TrialTracker(uri=uri, experiment_id=exp, parent_run_id=parent, base_params={"study.name": name},
                                    tags={"fsrf.study": name}, max_epochs=3)
    return tracker, client


def epoch_result(epoch: int, manifest: dict | None = None, n: int = 220) -> dict:
    """A trial's report at ``epoch``: ~220 numbers, like a real one (``val/<metric>/<condition>``...)."""
    from studies.worker import MANIFEST

    result = {"epoch": epoch, "best_epoch": epoch, OBJECTIVE: 0.5 + epoch / 100, f"best/{OBJECTIVE}": 0.5 + epoch / 100,
              "cost/cpu_s": float(epoch), **{f"val/m{i}/c": i + epoch / 10 for i in range(n)}}
    if manifest is not None:
        result[MANIFEST] = json.dumps(manifest)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def received_epochs(study_dir: Path) -> dict[str, list[int]]:
    """trial id -> the epochs the driver received, in order (the trial folder's ``result.json``)."""
    out = {}
    for path in study_dir.glob("*/result.json"):
        lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        if lines:
            out[lines[-1]["trial_id"]] = [int(ln["epoch"]) for ln in lines]
    return out


def inputs_of(client, run_id: str):
    return client.get_run(run_id).inputs.dataset_inputs


# ---------------------------------------------------------------------------- dataset inputs (no Ray)

@pytest.mark.parametrize("kind, context", [(None, "train/valid"), ("robustness", "train/valid/test")])
def test_a_run_records_its_dataset_as_an_mlflow_input(tmp_path, kind, context):
    """A trial's first report (its manifest) gives its run one dataset input: ``synthetic/mosi``, the
    data fingerprint as digest, MLflow's ``code`` source with the preset, the context the run reads;
    MLflow's own ``get_source`` reads the source back, and ``dataset.*`` filters find the run."""
    import mlflow.data

    from studies.tracking import CONTEXT_ROBUSTNESS, CONTEXT_TUNING

    assert (CONTEXT_TUNING, CONTEXT_ROBUSTNESS) == ("train/valid", "train/valid/test")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker, client = new_tracker(uri)
    manifest = manifest_of(kind)
    trial = FakeTrial("t0001", 1, {"train.lr": 1e-3})
    tracker.on_trial_start(0, [trial], trial)
    for epoch in (1, 2):
        tracker.on_trial_result(0, [trial], trial, epoch_result(epoch, manifest if epoch == 1 else None))
    trial.last_result = epoch_result(2)
    tracker.on_trial_complete(0, [trial], trial)
    tracker.on_experiment_end([trial])
    assert tracker.close() == 0
    run = client.get_run(tracker.runs["t0001"])
    assert run.info.status == "FINISHED"
    (entry,) = run.inputs.dataset_inputs
    ds = entry.dataset
    assert (ds.name, ds.digest) == ("synthetic/mosi", manifest["data"]["fingerprint"])
    assert ds.digest == run.data.tags["fsrf.data_fingerprint"] and len(ds.digest) == 16
    assert {t.key: t.value for t in entry.tags} == {"mlflow.data.context": context}
    source = mlflow.data.get_source(ds)  # MLflow parses what was logged as one of its own sources
    assert type(source).__name__ == "CodeDatasetSource"
    assert source.to_dict()["tags"] == {"generator": "fsrf.data.synthetic", "preset": "mosi", "seed": "0",
                                        "size_scale": "0.05"}
    assert json.loads(ds.profile)["preset"] == "mosi"
    # the parent run has the study's dataset too (once), and the UI's filters find both runs
    (parent_entry,) = inputs_of(client, tracker.parent)
    assert parent_entry.dataset.digest == ds.digest
    for query in (f"dataset.digest = '{ds.digest}'", "dataset.name = 'synthetic/mosi'", f"dataset.context = '{context}'"):
        found = {r.info.run_id for r in client.search_runs([tracker.exp], filter_string=query)}
        assert found == {run.info.run_id, tracker.parent}, query
    assert not client.search_runs([tracker.exp], filter_string="dataset.digest = '0000000000000000'")


def test_a_file_dataset_is_named_by_its_label_and_points_at_the_file(tmp_path):
    """Real data (a transcripts CSV): ``transcripts/<data.name>``, MLflow's ``local`` source with the
    file's absolute URI (what ``get_source`` returns), the fingerprint as digest; a second trial on the
    same data shares the dataset (one MLflow dataset, two inputs) and the parent gets it once."""
    import mlflow.data

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker, client = new_tracker(uri)
    csv = tmp_path / "label.csv"
    manifest = manifest_of(source="transcripts", path=str(csv), fingerprint="00ff00ff00ff00ff")
    manifest["config"]["data.name"] = "mosi"
    trials = [FakeTrial(f"t{i}", i, {"train.lr": 1e-3}) for i in (1, 2)]
    for trial in trials:
        tracker.on_trial_start(0, trials, trial)
        tracker.on_trial_result(0, trials, trial, epoch_result(1, manifest))
    tracker.on_experiment_end(trials)
    tracker.close()
    for trial in trials:
        (entry,) = inputs_of(client, tracker.runs[trial.trial_id])
        assert (entry.dataset.name, entry.dataset.digest) == ("transcripts/mosi", "00ff00ff00ff00ff")
        assert entry.dataset.source_type == "local"
        assert mlflow.data.get_source(entry.dataset).uri == csv.resolve().as_uri()
    assert len(inputs_of(client, tracker.parent)) == 1
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        assert con.execute("select count(*) from datasets").fetchone()[0] == 1


# ------------------------------------------------------------------------------------- the hot path

def test_callbacks_return_while_the_store_is_busy_and_nothing_is_lost(tmp_path):
    """With the SQLite store locked by another connection for 1.5 s, every callback of a trial (start,
    three reports of ~220 metrics, the end) still returns at once: Tune's loop never waits for MLflow.
    Once the lock goes, ``flush`` makes the queued calls in order: every epoch's metrics at its step,
    the run FINISHED with its outcome. (A tracker that logged in the callback would block ~1.5 s.)"""
    db = tmp_path / "mlflow.db"
    tracker, client = new_tracker(f"sqlite:///{db}")
    trial = FakeTrial("t0001", 1, {"train.lr": 1e-3})
    tracker.on_trial_start(0, [trial], trial)
    tracker.flush()  # the run exists; the MLflow thread is up
    lock = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")  # every other connection waits (MLflow's SQLite timeout is 5 s)
    released = threading.Timer(1.5, lambda: lock.execute("ROLLBACK"))
    released.start()
    try:
        manifest, took = manifest_of(), []
        for epoch in (1, 2, 3):
            t0 = time.perf_counter()
            tracker.on_trial_result(0, [trial], trial, epoch_result(epoch, manifest if epoch == 1 else None))
            took.append(time.perf_counter() - t0)
        trial.last_result = epoch_result(3)
        t0 = time.perf_counter()
        tracker.on_trial_complete(0, [trial], trial)
        took.append(time.perf_counter() - t0)
        still_locked = released.is_alive()
    finally:
        released.join()
        lock.close()
    assert still_locked, "the callbacks took longer than the lock: the test proves nothing"
    assert max(took) < 0.25, [f"{t * 1000:.0f} ms" for t in took]
    tracker.on_experiment_end([trial])
    tracker.close()
    run = client.get_run(tracker.runs["t0001"])
    assert run.info.status == "FINISHED" and run.data.tags["fsrf.stop_reason"] == "completed"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, OBJECTIVE))
    assert history == [(1, 0.51), (2, 0.52), (3, 0.53)]
    assert len([k for k in run.data.metrics if k.startswith("val/m")]) == 220
    assert run.data.metrics["final/epoch"] == 3 and run.data.metrics[f"final/{OBJECTIVE}"] == 0.53
    assert len(run.inputs.dataset_inputs) == 1


def test_a_failed_mlflow_call_fails_the_study_at_its_end(tmp_path, capsys):
    """A call that fails on the MLflow thread does not stop Tune's loop: one warning line, the next
    calls still made, and ``on_experiment_end`` (inside ``Tuner.fit``) raises it so that the study does
    not end as if all were logged; ``close`` then ends the runs without raising it again."""
    tracker, client = new_tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    good, bad = FakeTrial("good", 1, {}), FakeTrial("bad", 2, {})
    tracker.on_trial_start(0, [good, bad], good)
    tracker.flush()
    client.delete_run(tracker.runs["good"])  # logging to a deleted run fails in MLflow
    tracker.on_trial_result(0, [good, bad], good, epoch_result(1))
    tracker.on_trial_result(0, [good, bad], good, epoch_result(2))
    tracker.on_trial_start(0, [good, bad], bad)
    tracker.on_trial_result(0, [good, bad], bad, epoch_result(1))
    with pytest.raises(RuntimeError, match=r"2 MLflow call\(s\) .* failed; the first: MlflowException"):
        tracker.on_experiment_end([good, bad])
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: an MLflow call failed")]
    assert len(warnings) == 1, warnings
    assert client.get_metric_history(tracker.runs["bad"], OBJECTIVE)[0].value == 0.51  # the queue went on
    assert tracker.close() == 1  # "bad" was still RUNNING: KILLED
    assert client.get_run(tracker.runs["bad"]).info.status == "KILLED"


def test_run_for_waits_for_the_queue_and_the_tracker_pickles(tmp_path):
    """``run_for`` (for other callbacks) returns the run the queued calls created; Tune pickles its
    callbacks with the Tuner (cloudpickle), before and after the MLflow thread exists."""
    from ray import cloudpickle as pickle

    tracker, client = new_tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    pickle.dumps(tracker)
    trial = FakeTrial("t0001", 1, {})
    tracker.on_trial_start(0, [trial], trial)
    tracker.log_params(trial, {"ray.device": "cpu"})
    run_id = tracker.run_for(trial)
    assert client.get_run(run_id).data.params["ray.device"] == "cpu"
    copy = pickle.loads(pickle.dumps(tracker))
    assert copy.runs == {"t0001": run_id} and copy._queue is None
    tracker.close()


# ------------------------------------------------------------------------------------ tracking URIs

REFUSED = [  # (URI, fragments of the one-line message)
    ("ftp://files.example/mlflow", ("'ftp' is not a tracking store MLflow can use", "sqlite:///")),
    ("s3://bucket/mlruns", ("'s3' is not a tracking store",)),
    ("file:///tmp/mlruns", ("file store", "maintenance mode", "sqlite:///")),
    ("mlruns", ("'mlruns' is not a URI",)),
    ("databricks", ("Databricks tracking is not supported",)),
    ("databricks://profile", ("Databricks tracking is not supported",)),
    ("uc:http://host", ("Unity Catalog",)),
    ("sqlite://", ("in-memory SQLite store",)),
    ("sqlite:////nonexistent-folder/mlflow.db", ("no folder /nonexistent-folder",)),
    ("sqlite:////tmp", ("/tmp is a folder, not a SQLite file",)),
    ("postgresql+nosuchdriver://u@h/db", ("SQLAlchemy has no database driver 'postgresql+nosuchdriver'",)),
    ("postgresql+psycopg2://u@h:port/db", ("is not a database URL",)),
    ("http://u:secret@[::1/mlflow", ("'http://...' is not a valid URI",)),
    ("http://", ("names no host",)),
]


@pytest.mark.parametrize("uri, fragments", REFUSED, ids=[u for u, _ in REFUSED])
def test_tracking_uris_mlflow_cannot_use_are_refused(uri, fragments, monkeypatch):
    from fsrf.errors import InputError
    from studies.tracking import resolve_tracking_uri

    with pytest.raises(InputError) as err:
        resolve_tracking_uri(uri)
    assert str(err.value).startswith("--tracking-uri: ")
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # from the environment: the message names the variable
    with pytest.raises(InputError, match="^MLFLOW_TRACKING_URI: "):
        resolve_tracking_uri(None)


def test_a_database_without_its_driver_is_refused():
    """SQLAlchemy 2.1's plain ``postgresql://`` means psycopg 3; the project installs psycopg2. The URI
    itself is fine (``resolve_tracking_uri``); ``check_reachable`` refuses it before connecting."""
    import importlib.util

    from fsrf.errors import InputError
    from studies.tracking import check_reachable, resolve_tracking_uri

    checked = 0
    for uri, module in [("postgresql://u@h/db", "psycopg"), ("mysql://u@h/db", "MySQLdb"), ("mssql://u@h/db", "pyodbc")]:
        if importlib.util.find_spec(module) is not None:
            continue  # installed here: nothing to refuse
        assert resolve_tracking_uri(uri) == uri
        with pytest.raises(InputError, match=rf"^--tracking-uri: .*\({module}\) is not installed.*postgresql\+psycopg2://"):
            check_reachable(uri)
        checked += 1
    if not checked:
        pytest.skip("psycopg, MySQLdb and pyodbc are all installed here: no driver is missing")


def test_the_stores_mlflow_can_use_are_accepted_and_open(tmp_path, monkeypatch):
    """Relative and absolute SQLite files (new or existing), HTTP servers and databases with an installed
    driver pass; the SQLite one opens in MLflow for real."""
    from studies.tracking import client_for, resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri(None, root=tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    uri = resolve_tracking_uri(f"sqlite:///{tmp_path / 'x.db'}")
    assert client_for(uri).search_experiments()[0].name == "Default"
    assert resolve_tracking_uri("https://mlflow.example:443") == "https://mlflow.example:443"
    if __import__("importlib").util.find_spec("psycopg2") is not None:
        assert resolve_tracking_uri("postgresql+psycopg2://u@10.0.0.5/mlflow") == "postgresql+psycopg2://u@10.0.0.5/mlflow"


def test_every_scheme_mlflow_registers_is_a_decision():
    """Each tracking-store scheme MLflow registers is either used by the platform or refused with a reason,
    and each one the platform accepts is one MLflow can open: a new MLflow scheme fails here."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    from studies.tracking import DATABASE_SCHEMES, REFUSED_SCHEMES, REST_SCHEMES

    registered = set(_tracking_store_registry._registry)
    accepted = set(REST_SCHEMES) | set(DATABASE_SCHEMES)
    assert accepted <= registered
    assert registered - accepted == set(REFUSED_SCHEMES), registered - accepted


def test_an_unreachable_database_server_is_refused_at_once():
    """MLflow retries a database that does not answer for minutes; ``check_reachable`` says so in a second."""
    from fsrf.errors import InputError
    from studies.tracking import check_reachable

    port = free_port()  # closed again: nothing listens there
    t0 = time.time()
    with pytest.raises(InputError, match=f"database server postgresql\\+psycopg2://u@127.0.0.1:{port}/db is unreachable"):
        check_reachable(f"postgresql+psycopg2://u@127.0.0.1:{port}/db")
    assert time.time() - t0 < 5
    check_reachable("postgresql+psycopg2:///db")  # a local socket: not checked


@pytest.mark.parametrize("script", ["tune_lambdas.py", "robustness.py"])
def test_a_refused_tracking_uri_writes_nothing_and_leaves_no_process(tmp_path, script):
    """The issue's case: ``--tracking-uri ftp://...`` used to end in a traceback (exit 1) after the
    study's ``optuna.db`` was written and Ray had started. Now: one line, exit 2, an empty folder, and
    no process with this test's marker in its environment."""
    proc = subprocess.run([sys.executable, str(ROOT / "studies" / script), *ARGS, "--tracking-uri",
                           "ftp://files.example/mlflow"], cwd=tmp_path, env=study_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    left = reap(tmp_path, grace=2)
    assert proc.returncode == 2, tail(proc)
    assert proc.stderr.strip().splitlines() == [
        "error: --tracking-uri: 'ftp://files.example/mlflow': 'ftp' is not a tracking store MLflow can use "
        "(sqlite:///path/mlflow.db, http(s)://host:port, postgresql+psycopg2://user@host/db, mysql://...)"]
    assert list(tmp_path.iterdir()) == [], sorted(p.name for p in tmp_path.rglob("*"))
    assert left == [], f"processes left running: {left}"


# ------------------------------------------------------------------------ a real study and its tools

@pytest.fixture(scope="module")
def study(tmp_path_factory, fsrf_cache):
    """A real tuning study: 2 tiny trials x 2 epochs on a local Ray of 2 CPUs, in its own folder."""
    cwd = tmp_path_factory.mktemp("tools-study")
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT), *ARGS, "--name", STUDY, "--num-samples", str(N_TRIALS),
                               "--max-epochs", str(EPOCHS), "--grace-period", str(EPOCHS)], cwd=cwd,
                              env=study_env(cwd), capture_output=True, text=True, timeout=400)
    finally:
        reap(cwd, grace=10)
    assert proc.returncode == 0, tail(proc)
    print(f"\nstudy of {N_TRIALS} trials in {time.time() - t0:.0f} s")
    return {"cwd": cwd, "proc": proc, "dir": cwd / "runs" / "tune" / STUDY}


@pytest.mark.slow
def test_every_trial_of_a_real_study_has_its_dataset_and_every_epoch(study):
    """Through Tune: each trial's run has the dataset input (the fingerprint its manifest names, context
    train/valid), so has the parent; every epoch the driver received (``result.json``) is in MLflow at its
    step although the calls were queued; the console is the study's few lines, no per-result warnings
    from the tracker."""
    ml = Mlflow(study["cwd"], STUDY)
    assert len(ml.children) == N_TRIALS
    fingerprints = set()
    for run in ml.children:
        (entry,) = inputs_of(ml.client, run.info.run_id)
        assert entry.dataset.name == "synthetic/mosi"
        assert entry.dataset.digest == run.data.tags["fsrf.data_fingerprint"]
        assert {t.key: t.value for t in entry.tags} == {"mlflow.data.context": "train/valid"}
        fingerprints.add(entry.dataset.digest)
        assert run.info.status == "FINISHED"
    assert len(fingerprints) == 1
    assert [e.dataset.digest for e in inputs_of(ml.client, ml.parent.info.run_id)] == list(fingerprints)
    received = received_epochs(study["dir"])
    assert sorted(received.values()) == [list(range(1, EPOCHS + 1))] * N_TRIALS
    for run in ml.children:
        steps = [s for s, _ in ml.history(run, OBJECTIVE)]
        assert steps == received[run.data.tags["fsrf.trial_id"]], run.info.run_name
    err = study["proc"].stderr
    assert "MLflow call failed" not in err and "Traceback" not in err


def dashboard(storage_url: str):
    """``optuna-dashboard`` on a free loopback port, stopped (its process group) when the block ends."""
    import contextlib

    exe = Path(sys.executable).with_name("optuna-dashboard")
    if not exe.exists():
        pytest.skip("optuna-dashboard is not installed (pip install -e '.[test]')")

    @contextlib.contextmanager
    def running():
        port = free_port()
        proc = subprocess.Popen([str(exe), storage_url, "--host", "127.0.0.1", "--port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/meta", timeout=2).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise AssertionError(f"optuna-dashboard did not answer:\n{proc.communicate()[0][-3000:]}")
                    time.sleep(0.3)
            yield port
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    return running()


def get_json(port: int, path: str) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30).read())


@pytest.mark.slow
def test_optuna_dashboard_serves_the_studys_trials(study, tmp_path):
    """The README's ``optuna-dashboard sqlite:///runs/tune/<name>/optuna.db``: the server, on loopback
    only, lists the study and returns every trial with the values Optuna stored and the configurations
    Tune trained (``trials.parquet``); with Chromium, its page renders the study (not a blank page)."""
    import optuna
    import polars as pl

    from test_cluster import listening

    url = f"sqlite:///{study['dir'] / 'optuna.db'}"
    stored = optuna.load_study(study_name=STUDY, storage=url)
    trained = pl.read_parquet(study["dir"] / "trials.parquet")
    searched = [c for c in trained.columns if c.startswith(("loss.", "missing.", "train."))]
    with dashboard(url) as port:
        assert listening(port) == {"0100007F"}, listening(port)  # 127.0.0.1 only
        (summary,) = get_json(port, "/api/studies")["study_summaries"]
        assert (summary["study_name"], summary["directions"]) == (STUDY, ["maximize"])
        detail = get_json(port, f"/api/studies/{summary['study_id']}")
        assert len(detail["trials"]) == len(stored.trials) == N_TRIALS
        for served, trial in zip(sorted(detail["trials"], key=lambda t: t["number"]), stored.trials):
            assert served["state"] == trial.state.name.capitalize()
            assert served.get("values") == trial.values
            assert {p["name"]: p["param_internal_value"] for p in served["params"]} == pytest.approx(
                {k: trial.distributions[k].to_internal_repr(v) for k, v in trial.params.items()})
        served_params = sorted(tuple(sorted((p["name"], p["param_external_value"]) for p in t["params"]
                                            if p["name"] in searched)) for t in detail["trials"])
        trained_params = sorted(tuple(sorted((k, str(row[k])) for k in searched if row[k] is not None))
                                for row in trained.iter_rows(named=True))
        assert served_params == trained_params
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            pytest.skip("the API checks passed; Chromium is not installed (apt-get install -y chromium) for the page")
        page = f"http://127.0.0.1:{port}/dashboard/studies/{summary['study_id']}"
        flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,900", "--virtual-time-budget=15000"]
        shot = tmp_path / "dashboard.png"
        subprocess.run([*flags, f"--user-data-dir={tmp_path / 'profile1'}", f"--screenshot={shot}", page],
                       capture_output=True, timeout=120)
        dom = subprocess.run([*flags, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", page],
                             capture_output=True, text=True, timeout=120).stdout
    assert shot.is_file(), "no screenshot"
    pixels = __import__("matplotlib.image", fromlist=["imread"]).imread(shot)[..., :3]
    colours = {tuple(c) for c in (pixels.reshape(-1, 3)[::97] * 255).round().astype(int).tolist()}
    assert pixels.std() > 0.05 and len(colours) > 20, f"blank page? std {pixels.std():.3f}, {len(colours)} colours"
    assert STUDY in dom and searched[0] in dom, "the page did not render the study's name and params"
