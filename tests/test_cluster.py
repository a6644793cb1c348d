"""The study on real infrastructure, started by the tests: a 2-node Ray cluster that loses a node, and a
shared MLflow tracking server on PostgreSQL.

- ``test_lost_worker_node``: ``cluster/local_cluster.sh`` starts a head and one worker node on this
  machine (1 CPU each, their own ``--temp-dir``, ``RAY_AUTH_MODE=disabled`` for nodes and driver; Ray
  puts them on the machine's address even when told 127.0.0.1); a study runs on it with ``--address``; once a trial on the worker node has reported an epoch, every process of that
  node is SIGKILLed. The trial is retried from its last checkpoint on the head and the study completes:
  every trial TERMINATED, one MLflow child run per trial, none RUNNING. The study also carries a
  NaN-poisoned trial, which must end FAILED with its reason after one attempt, although
  ``--max-failures 3`` would allow retries.
- ``test_shared_tracking_server``: ``cluster/mlflow_server.sh`` starts PostgreSQL and an MLflow server on
  free loopback ports; a study with 4 concurrent trials logs to it through a URI that carries a
  password: every param and per-epoch metric is on every child run, the artifacts reach the server's
  store, nothing is left RUNNING, and the password appears in no logged param or tag, no output and no
  study file.

The cluster files themselves are checked without a cloud: the launcher YAML against Ray's own schema,
the KubeRay manifests by their kinds and fields, every study command they hold against the study's own
argument parser, and each file opens with the commands that use it.

Every process a test starts is stopped by the scripts' own ``stop`` and then, whatever is left, killed
by process id (the cluster's processes carry a marker in their environment; a bare ``ray stop`` would
also stop other people's Ray on this machine).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import ROOT, TINY, subprocess_env
from fsrf.config import flatten, load_config

SCRIPT = ROOT / "studies" / "tune_lambdas.py"
NAN_SCRIPT = ROOT / "tests" / "nan_study.py"  # the same driver, one trial's loss NaN
BIN = Path(sys.executable).parent  # ray and mlflow of this environment
SETS = [a for kv in TINY for a in ("--set", kv)]
OBJECTIVE = "val/Non0_F1_score/objective"
SPEC_PARAMS = ("loss.lambda1", "loss.lambda2", "loss.tau", "loss.sinkhorn_eps", "loss.margin", "loss.noise_mu",
               "loss.noise_sigma2", "missing.schedule", "train.lr", "seed")


# ---------------------------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    return subprocess_env(RAY_AUTH_MODE="disabled", RAY=str(BIN / "ray"), MLFLOW=str(BIN / "mlflow"),
                          PATH=f"{BIN}:{os.environ.get('PATH', '')}", **extra)


def sh(*args, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", *map(str, args)], env=base_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def marked(prefix: str) -> dict[int, str]:
    """pid -> name of the processes whose environment has ``FSRF_RAY_NODE=<prefix>...`` (a cluster's)."""
    needle = f"FSRF_RAY_NODE={prefix}".encode()
    out = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/environ", "rb") as f:
                if not any(e.startswith(needle) for e in f.read().split(b"\0")):
                    continue
            with open(f"{d}/cmdline", "rb") as f:
                out[int(d[6:])] = f.read().split(b"\0")[0].decode(errors="replace").rsplit("/", 1)[-1]
        except OSError:
            continue
    return out


def kill_pids(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a driver started with ``start_new_session=True`` and everything in its process group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def results(study_dir: Path) -> dict[str, list[dict]]:
    """trial id -> the rows of its ``result.json`` (what the driver received, in order)."""
    out = {}
    for path in study_dir.glob("*/result.json"):
        try:
            rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        except (OSError, ValueError):
            continue  # being written
        if rows:
            out[rows[-1]["trial_id"]] = rows
    return out


def tune_states(study_dir: Path) -> dict[str, dict]:
    """trial id -> Tune's saved trial state (status, number of failures) from the experiment snapshot."""
    files = sorted(study_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    data = json.loads(files[-1].read_text())
    out = {}
    for item in data["trial_data"]:
        trial = json.loads(item[0])
        meta = json.loads(item[1]) if len(item) > 1 else {}
        out[trial["trial_id"]] = {"status": trial["status"], "failures": meta.get("num_failures", 0)}
    return out


def mlflow_runs(uri: str, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"no experiment {name!r} at {uri}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("fsrf.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, children, runs


def steps(client, run, key: str) -> list[int]:
    return sorted({m.step for m in client.get_metric_history(run.info.run_id, key)})


def tail(text: str, n: int = 4000) -> str:
    return text[-n:]


# ----------------------------------------------------------------------------- 2-node Ray cluster

@pytest.fixture
def ray_cluster():
    """A head and one worker node on this machine, 1 CPU each; stopped (and its leftovers killed) at the end."""
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="fr", dir="/tmp"))  # short: Ray's socket paths stay < 108 bytes
    script = ROOT / "cluster" / "local_cluster.sh"
    try:
        t0 = time.time()
        out = sh(script, "start", "1", "--port", port, "--dir", folder, "--cpus", "1", timeout=240).stdout
        assert f"address: 127.0.0.1:{port}" in out, out
        print(f"cluster up in {time.time() - t0:.1f} s: {len(marked(f'{folder}/head'))} head and "
              f"{len(marked(f'{folder}/worker1'))} worker-node processes")
        yield {"address": f"127.0.0.1:{port}", "dir": folder, "script": script, "port": port}
    finally:
        sh(script, "stop", "--port", port, "--dir", folder, timeout=120, check=False)
        left = marked(f"{folder}/")
        kill_pids(left)
        shutil.rmtree(folder, ignore_errors=True)
        assert not left, f"processes left after `local_cluster.sh stop`: {left}"


@pytest.mark.slow
def test_lost_worker_node(ray_cluster, tmp_path, fsrf_cache):
    """SIGKILL the worker node mid-trial: the trial is retried from its checkpoint, the study completes."""
    n_trials, epochs, nan_trial = 4, 12, 4  # 12: reused actors make trials quick; the kill must land inside one
    cluster, study_dir = ray_cluster, tmp_path / "runs" / "tune" / "c"
    worker_prefix = f"{cluster['dir']}/worker1"
    worker_pids = set(marked(worker_prefix))
    assert worker_pids, "the worker node has no processes"
    # batches of 4 stretch an epoch to ~1 s, so that the kill falls inside a trial; grace = max epochs:
    # ASHA stops nobody, every trial should run all its epochs.
    # tests/nan_study.py: the study's own driver, trial `nan_trial` trained on NaN labels
    args = [sys.executable, str(NAN_SCRIPT), str(nan_trial), "--address", cluster["address"], *SETS, "--set", "train.batch_size=4",
            "--name", "c", "--num-samples", str(n_trials), "--max-epochs", str(epochs),
            "--grace-period", str(epochs), "--max-failures", "3"]
    t0 = time.time()
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(args, cwd=tmp_path, env=base_env(FSRF_CACHE=str(fsrf_cache)), stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        on_worker = {}  # trial id -> epochs it had reported on the worker node when the kill came
        while not on_worker:
            assert driver.poll() is None, tail((tmp_path / "driver.log").read_text())
            assert time.time() - t0 < 240, "no trial reported an epoch on the worker node in time"
            worker_pids |= set(marked(worker_prefix))  # trial processes start after the node
            for trial_id, rows in results(study_dir).items():
                # at least two epochs still to go: the kill lands mid-trial, not after its end
                if rows[-1].get("pid") in worker_pids and 1 <= rows[-1].get("epoch", 0) <= epochs - 2:
                    on_worker[trial_id] = rows[-1]["epoch"]
            time.sleep(0.1)
        victims = marked(worker_prefix)
        killed_at = time.time() - t0
        out = sh(cluster["script"], "kill", "worker1", "--port", cluster["port"], "--dir", cluster["dir"]).stdout
        assert "killed node worker1" in out
        assert not marked(worker_prefix), "the worker node survived its kill"
        code = driver.wait(timeout=300)
    finally:
        kill_group(driver)
        log.close()
    wall = time.time() - t0
    text = (tmp_path / "driver.log").read_text()
    assert code == 0, tail(text)

    # Tune: every trial ran to its end; the one on the lost node failed once and was retried
    states = tune_states(study_dir)
    rows = results(study_dir)
    (victim,) = on_worker
    assert len(states) == n_trials, states
    assert {s["status"] for s in states.values()} == {"TERMINATED"}, states
    assert states[victim]["failures"] == 1, states[victim]
    assert "Failure # 1" in next(study_dir.glob(f"*{victim}*/error.txt")).read_text()
    reported = [r["epoch"] for r in rows[victim] if "epoch" in r]
    # retried from its checkpoint: epoch 1 was not trained twice, and it reached the last epoch
    assert reported.count(1) == 1 and set(reported) == set(range(1, epochs + 1)), reported
    resumed_from = [b for a, b in zip(reported, reported[1:]) if b <= a]  # where the retry started again
    trials = pl.read_parquet(study_dir / "trials.parquet")
    assert trials.height == n_trials and trials["trial_id"].n_unique() == n_trials

    # MLflow: one child per trial, none RUNNING; the NaN trial FAILED (once: no retry), the others FINISHED
    client, parent, children, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "c")
    assert parent.info.status == "FINISHED"
    assert len(children) == n_trials and len({r.data.tags["fsrf.trial_id"] for r in children}) == n_trials
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    by_index = {int(r.data.tags["fsrf.trial_index"]): r for r in children}
    bad = by_index.pop(nan_trial)
    assert bad.info.status == "FAILED", bad.data.tags
    reason = bad.data.tags["fsrf.stop_reason"]
    assert "non-finite loss" in reason and "train/total is nan" in reason, reason
    bad_id = bad.data.tags["fsrf.trial_id"]
    assert states[bad_id]["failures"] == 0 and not list(study_dir.glob(f"*{bad_id}*/error.txt"))
    assert trials.filter(pl.col("trial_id") == bad_id)["status"].to_list() == ["ERROR"]
    for index, run in by_index.items():
        assert run.info.status == "FINISHED", (index, run.data.tags.get("fsrf.stop_reason"))
        assert run.data.tags["fsrf.stop_reason"] == "completed"
        assert steps(client, run, OBJECTIVE) == list(range(1, epochs + 1)), run.info.run_name
    assert sorted(trials.filter(pl.col("trial_id") != bad_id)["status"].to_list()) == ["TERMINATED"] * (n_trials - 1)

    names = sorted({v for v in victims.values()})
    print(f"\nlost node: killed worker node 'worker1' ({len(victims)} processes: {', '.join(names)}) "
          f"{killed_at:.1f} s into the study, while trial {victim} was on it after epoch {on_worker[victim]}/{epochs}; "
          f"the trial failed once and was retried on the head from its checkpoint (epochs reported {reported}, "
          f"restart at {resumed_from or 'the next epoch'}). Study wall {wall:.1f} s. Afterwards: Tune "
          f"{sum(s['status'] == 'TERMINATED' for s in states.values())}/{n_trials} trials TERMINATED "
          f"(failures {sorted(s['failures'] for s in states.values())}); MLflow {len(children)} child runs: "
          f"{sum(r.info.status == 'FINISHED' for r in children)} FINISHED, "
          f"{sum(r.info.status == 'FAILED' for r in children)} FAILED (NaN trial {nan_trial}, not retried), "
          f"{sum(r.info.status == 'RUNNING' for r in runs)} RUNNING")


# ---------------------------------------------------------------- MLflow on PostgreSQL, 4 concurrent trials

def listening(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) with a LISTEN socket on ``port``."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                out.add(addr)
    return out


@pytest.fixture
def tracking_server(tmp_path_factory):
    """PostgreSQL + MLflow server via ``cluster/mlflow_server.sh``, on free loopback ports."""
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    pytest.importorskip("psycopg2", reason="MLflow needs psycopg2-binary for PostgreSQL")
    folder = Path(tempfile.mkdtemp(prefix="mlf", dir="/tmp"))
    folder.chmod(0o755)  # the postgres user must reach its data folder
    script, port, pg_port = ROOT / "cluster" / "mlflow_server.sh", free_port(), free_port()
    opts = ["--dir", folder / "srv", "--port", port, "--pg-port", pg_port]
    try:
        t0 = time.time()
        out = sh(script, "start", *opts, timeout=180).stdout
        assert f"tracking URI: http://127.0.0.1:{port}" in out, out
        print(f"PostgreSQL + MLflow up in {time.time() - t0:.1f} s")
        yield {"port": port, "pg_port": pg_port, "dir": folder / "srv"}
    finally:
        sh(script, "stop", *opts, timeout=120, check=False)
        pid_file = folder / "srv" / "mlflow.pid"
        if pid_file.exists():  # stop failed: the server's process group, by id
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        pg_pid = folder / "srv" / "pgdata" / "postmaster.pid"
        if pg_pid.exists():
            kill_pids([int(pg_pid.read_text().split()[0])])
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_shared_tracking_server(tracking_server, tmp_path, fsrf_cache, monkeypatch):
    """4 trials at once (0.5 CPU each on a local Ray of 2 CPUs) log to MLflow on PostgreSQL."""
    n_trials, epochs, secret = 4, 2, "s3cret-Pa55word"
    port = tracking_server["port"]
    # Both servers listen on loopback only.
    assert listening(port) == {"0100007F"}, listening(port)
    assert listening(tracking_server["pg_port"]) == {"0100007F"}, listening(tracking_server["pg_port"])
    uri = f"http://127.0.0.1:{port}"
    secret_uri = f"http://fsrf:{secret}@127.0.0.1:{port}"  # what a user with credentials would pass
    args = [sys.executable, str(SCRIPT), *SETS, "--cpus", "2", "--cpus-per-trial", "0.5", "--name", "shared",
            "--num-samples", str(n_trials), "--max-epochs", str(epochs), "--grace-period", str(epochs),
            "--tracking-uri", secret_uri,
            "--optuna-storage", f"postgresql+psycopg2://postgres@127.0.0.1:{tracking_server['pg_port']}/optuna"]
    pgpass = str(tracking_server["dir"] / "pgpass")
    t0 = time.time()
    driver = subprocess.Popen(args, cwd=tmp_path, env=base_env(FSRF_CACHE=str(fsrf_cache), PGPASSFILE=pgpass),
                              stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        kill_group(driver)
    wall = time.time() - t0
    assert driver.returncode == 0, tail(stderr) + tail(stdout)
    assert "4 at a time" in stderr

    study_dir = tmp_path / "runs" / "tune" / "shared"
    rows = results(study_dir)
    spans = [(r[0]["timestamp"] - r[0]["time_this_iter_s"], r[-1]["timestamp"]) for r in rows.values()]
    assert len(spans) == n_trials and max(s for s, _ in spans) < min(e for _, e in spans), "trials did not overlap"

    client, parent, children, runs = mlflow_runs(uri, "shared")
    assert parent.info.status == "FINISHED"
    assert len(children) == n_trials and len({r.data.tags["fsrf.trial_id"] for r in children}) == n_trials
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    expected_params = set(flatten(load_config(None, TINY))) | set(SPEC_PARAMS) | {"study.num_samples", "study.searched"}
    schema = None
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags.get("fsrf.stop_reason")
        missing = expected_params - set(run.data.params)
        assert not missing, (run.info.run_name, sorted(missing))
        assert run.data.params["model.width"] == "16"
        for key in (OBJECTIVE, "train/total", "val/Non0_F1_score/lav", "val/Non0_F1_score/avg_missing"):
            assert steps(client, run, key) == list(range(1, epochs + 1)), (run.info.run_name, key)
        keys = set(run.data.metrics)
        assert schema is None or keys == schema, run.info.run_name  # every trial logs the same metrics
        schema = keys
    # the parent's artifacts went through the server into its artifact store
    assert {"trials.parquet", "epochs.parquet", "summary.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    stored = {p.name for p in tracking_server["dir"].joinpath("artifacts").rglob("*") if p.is_file()}
    assert {"trials.parquet", "epochs.parquet", "summary.json"} <= stored, stored

    # the password is in no logged param or tag, no output and no study file that is read or logged
    for run in runs:
        logged = {**run.data.params, **run.data.tags}
        leaks = {k: v for k, v in logged.items() if secret in str(v)}
        assert not leaks, (run.info.run_name, leaks)
    assert secret not in stdout and secret not in stderr
    for path in tmp_path.rglob("*"):  # the study's files, Tune's pickled experiment state included
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert json.loads((study_dir / "fsrf_study.json").read_text())["uri"] == uri  # the password went to the env
    # the searcher's study lives in the server's PostgreSQL too: every trial, told its objective
    import optuna

    monkeypatch.setenv("PGPASSFILE", pgpass)
    stored = optuna.load_study(study_name="shared", storage=args[args.index("--optuna-storage") + 1])
    assert sorted(t.value for t in stored.trials) == pytest.approx(
        sorted(r.data.metrics["best/" + OBJECTIVE] for r in children))
    print(f"\nshared tracking: {n_trials} concurrent trials x {epochs} epochs logged to MLflow on PostgreSQL in "
          f"{wall:.1f} s; {len(children)} child runs, all FINISHED, {len(expected_params)} params each, "
          f"{len(schema)} metrics each; password found in 0 params/tags")


# ------------------------------------------------------------------ the cluster files, without a cloud

CLUSTER_FILES = ("gpu-cluster.yaml", "kuberay.yaml", "local_cluster.sh", "mlflow_server.sh", "Dockerfile")


def study_commands(text: str) -> list[list[str]]:
    """The argument lists of every ``python studies/tune_lambdas.py ...`` command in a file (comment lines
    and YAML folded lines joined)."""
    flat = re.sub(r"\\\n#?\s*", " ", text)  # shell line continuations, also inside comments
    flat = re.sub(r"\n\s*#?\s+(?=--)", " ", flat)  # folded YAML / wrapped comment lines starting with --
    out = []
    for m in re.finditer(r"python studies/tune_lambdas\.py([^'\n]*)", flat):
        out.append(shlex.split(m[1].replace("<head>", "HEAD")))
    return out


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_each_cluster_file_opens_with_its_commands(name):
    lines = (ROOT / "cluster" / name).read_text().splitlines()
    head = [ln for ln in lines[:14] if ln.startswith("#") and not ln.startswith("#!")]
    assert len(head) >= 4, name
    commands = [ln for ln in head if re.match(r"#\s{2,}\S", ln)]
    assert commands, f"{name} does not open with the commands that use it"


def test_study_commands_in_cluster_files_parse():
    """Every study command the cluster files show is accepted by the study's own parser."""
    from studies.tune_lambdas import parse, validate

    seen = 0
    for name in ("gpu-cluster.yaml", "kuberay.yaml", "README.md"):
        for argv in study_commands((ROOT / "cluster" / name).read_text()):
            args = parse(argv)
            validate(args)
            if "--address" in argv:
                assert args.address, (name, argv)
            seen += 1
    assert seen >= 4, seen


def test_gpu_cluster_yaml_passes_rays_schema():
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster" / "gpu-cluster.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)
    types = config["available_node_types"]
    head, workers = types[config["head_node_type"]], [t for k, t in types.items() if k != config["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # the head runs no trial
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in workers)  # GPU workers
    assert any("pip install" in c and "-e ." in c for c in config["setup_commands"])
    assert any("ray start --head" in c and "dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address" in c for c in config["worker_start_ray_commands"])
    modes = {m for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
             for m in re.findall(r"RAY_AUTH_MODE=(\w+)", c)}
    assert len(modes) == 1, modes  # the same auth mode on every node


def test_kuberay_manifests():
    import yaml

    docs = [d for d in yaml.safe_load_all((ROOT / "cluster" / "kuberay.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"PersistentVolumeClaim", "RayCluster", "RayJob"}
    cluster, job = kinds["RayCluster"]["spec"], kinds["RayJob"]["spec"]
    (gpu,) = cluster["workerGroupSpecs"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert job["clusterSelector"]["ray.io/cluster"] == kinds["RayCluster"]["metadata"]["name"]
    assert "studies/tune_lambdas.py --address auto" in job["entrypoint"]
    assert "--gpus-per-worker 1" in job["entrypoint"]
    claim = kinds["PersistentVolumeClaim"]["metadata"]["name"]
    for spec in [cluster["headGroupSpec"], gpu]:
        vols = spec["template"]["spec"]["volumes"]
        assert any(v.get("persistentVolumeClaim", {}).get("claimName") == claim for v in vols)
    # every study folder and checkpoint lives on the shared volume
    assert "--storage /mnt/fsrf/" in job["entrypoint"]


def test_scripts_are_valid_bash_and_refuse_unknown_options(tmp_path):
    for name in ("local_cluster.sh", "mlflow_server.sh"):
        script = ROOT / "cluster" / name
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, name
        proc = subprocess.run(["bash", str(script), "status", "--bogus", "1"], capture_output=True, text=True,
                              env=base_env(), cwd=tmp_path, timeout=60)
        assert proc.returncode == 2 and "error: unknown option --bogus" in proc.stderr, (name, proc.stderr)
