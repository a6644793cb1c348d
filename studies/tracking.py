"""MLflow wiring of a study: where the store is, its credentials, the client, one experiment per study,
a parent run per invocation and, through ``TrialTracker``, a child run per trial.

Everything is logged from the driver (a Tune callback), never from trial workers, so SQLite's
single-writer limit is never hit and Ray workers need no tracking credentials. The Ray side of a study
(starting Ray, progress, cost, the driver skeleton) is ``studies/runtime.py``.

Names (SPEC section 6): params are flat dotted config names (``loss.lambda1``, ``train.lr``, ``seed``);
metrics are ``train/<loss>`` and ``val/<metric>/<condition>`` per epoch (step = epoch), ``best/val/...``
at the selected epoch, ``final/val/...`` at the last epoch run, ``best/epoch`` and ``final/epoch``, and
the trial's cost ``cost/cpu_s``, ``cost/wall_s``, ``cost/gpu_s``. Tags: ``fsrf.trial_id``,
``fsrf.trial_index``, ``fsrf.status``, ``fsrf.stop_reason`` and the manifest's ``fsrf.code_commit``,
``fsrf.data_fingerprint``, ``fsrf.encoder_id``, ``fsrf.selection``, ``fsrf.seed``; the artifact
``manifest.json`` (``fsrf.manifest``) completed with the outcome when the trial ends. Runs end FINISHED,
FAILED or KILLED: never left RUNNING.
"""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ray import tune

from fsrf.errors import InputError

# MLflow's limits (mlflow/utils/validation.py): param values 6000 characters, tag values 8000, 100 params
# and 1000 metrics per log_batch call.
_PARAM_MAX = 6000
_TAG_MAX = 8000


# What a tracking URI may be. MLflow 3.17 registers these stores (mlflow/tracking/_tracking_service/utils.py):
# a REST server (http, https), a SQLAlchemy database (sqlite, postgresql, mysql, mssql, each with an optional
# "+driver"), the file store ("file:" or a plain path) and Databricks ("databricks", "databricks-uc", "uc").
# The platform uses the first two; the others are refused with the reason (tests/test_tracking_tools.py
# checks this table against MLflow's registry, so a new MLflow scheme is a decision, not an accident).
REST_SCHEMES = ("http", "https")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_STORE_EXAMPLES = "sqlite:///path/mlflow.db, http(s)://host:port, postgresql+psycopg2://user@host/db, mysql://..."
REFUSED_SCHEMES = {
    "": "a plain path is MLflow's file store, which MLflow 3 keeps in maintenance mode and refuses: "
        "use sqlite:///path/mlflow.db",
    "file": "MLflow 3 keeps the file store in maintenance mode and refuses it: use sqlite:///path/mlflow.db",
    "databricks": "Databricks tracking is not supported by this platform (its artifacts go to a local folder "
                  "beside any store that is not an HTTP server): use an MLflow server, http(s)://host:port",
    "databricks-uc": "a Unity Catalog URI is a model registry, not a tracking store",
    "uc": "a Unity Catalog URI is a model registry, not a tracking store",
}


def resolve_tracking_uri(uri: str | None, root: str | Path = ".") -> str:
    """``--tracking-uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<root>/mlflow.db`` (absolute: Ray workers
    run in another folder). Relative SQLite paths are made absolute; a password moves out of the URI
    into the environment (``credentials_to_env``).

    A URI MLflow cannot use as a tracking store (``ftp://...``, the file store, Databricks, a driver
    SQLAlchemy does not know, a SQLite file in a folder that does not exist) is refused here, with one
    line naming where it came from (the flag or the variable), before anything is written: MLflow itself
    would fail only once the study has started. ``check_reachable`` then asks the environment (the
    database driver installed, the server answering).
    """
    where = "--tracking-uri" if uri else "MLFLOW_TRACKING_URI"
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"
    if uri.lower() in ("databricks", "databricks-uc", "uc"):
        raise InputError(where, None, f"{uri!r}: {REFUSED_SCHEMES[uri.lower()]}")
    if "://" not in uri and not uri.lower().startswith("file:"):
        raise InputError(where, None, f"{redact(uri)!r} is not a URI ({_STORE_EXAMPLES})")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    try:
        check_store_uri(uri, where=where)
        return credentials_to_env(uri)
    except InputError:
        raise
    except ValueError as err:  # urllib or SQLAlchemy on a malformed host or port
        raise InputError(where, None, f"{_shown(uri)!r} is not a valid URI ({err})") from None


def _shown(uri: str) -> str:
    """``redact(uri)``, or only its scheme when the URI is too malformed to find its password."""
    try:
        return redact(uri)
    except ValueError:
        return uri.split("://", 1)[0] + "://..."


def store_scheme(uri: str) -> str:
    """The tracking-store kind of a URI as MLflow reads it: ``postgresql+psycopg2://...`` is ``postgresql``."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    return scheme.split("+", 1)[0]


def check_store_uri(uri: str, *, where: str = "--tracking-uri") -> None:
    """Refuse, with the reason, a URI that is not a tracking store MLflow 3.17 can open for this platform.

    Databases are checked the way SQLAlchemy reads them: the URL must parse and SQLAlchemy must know the
    dialect and driver (whether the driver's package is installed is ``check_reachable``'s question); a
    SQLite store must be a file (new or existing) in a folder that exists. Nothing is created, imported
    or connected to here.
    """
    scheme = store_scheme(uri)
    shown = redact(uri)
    if scheme in REFUSED_SCHEMES:
        raise InputError(where, None, f"{shown!r}: {REFUSED_SCHEMES[scheme]}")
    if scheme in REST_SCHEMES:
        if not urllib.parse.urlsplit(uri).hostname:
            raise InputError(where, None, f"{shown!r} names no host (http(s)://host:port)")
        return
    if scheme not in DATABASE_SCHEMES:
        raise InputError(where, None, f"{shown!r}: {scheme or uri.split(':', 1)[0]!r} is not a tracking store "
                                      f"MLflow can use ({_STORE_EXAMPLES})")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        url.get_dialect()
    except ValueError:  # a port that is not a number
        raise InputError(where, None, f"{shown!r} is not a database URL") from None
    except NoSuchModuleError:  # an ArgumentError too: first
        raise InputError(where, None, f"{shown!r}: SQLAlchemy has no database driver "
                                      f"{urllib.parse.urlsplit(uri).scheme!r}") from None
    except ArgumentError:
        raise InputError(where, None, f"{shown!r} is not a database URL") from None
    if scheme == "sqlite":
        if not url.database or url.database == ":memory:":
            raise InputError(where, None, f"{shown!r} is an in-memory SQLite store, which keeps nothing "
                                          "after the study: use sqlite:///path/mlflow.db")
        path = Path(url.database)
        if path.is_dir():
            raise InputError(where, None, f"{path} is a folder, not a SQLite file (sqlite:///{path}/mlflow.db)")
        if not path.parent.is_dir():
            raise InputError(where, None, f"no folder {path.parent} for the SQLite store {path.name}")


def credentials_to_env(uri: str) -> str:
    """Move a password out of a tracking URI into the environment of this process and return the URI
    without it: ``http://user:pw@host`` sets ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``
    (MLflow's client sends them as basic auth), ``postgresql://user:pw@host/db`` sets ``PGPASSWORD``
    (libpq reads it). The URI is printed by MLflow ("View run at ..."), pickled into Tune's experiment
    state and written to the study's files; the password is then in none of them. Other schemes keep
    their password (and ``redact`` hides it in messages)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    user, password = urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password)
    if parts.scheme in ("http", "https"):
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
        netloc = host
    elif parts.scheme.startswith("postgresql"):
        os.environ["PGPASSWORD"] = password
        netloc = f"{parts.username}@{host}" if parts.username else host
    else:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def redact(uri: str) -> str:
    """``uri`` without its password (``postgresql://user:***@host/db``): for messages, files and logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def check_reachable(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast, with one line, when an HTTP tracking server does not answer, a database's Python driver
    is not installed, or a database server (PostgreSQL, MySQL, SQL Server) does not accept a connection
    on its port (MLflow would retry for minutes before failing with a traceback). A database reached
    through a local socket is not connected to.

    Credentials (in the URI, ``http://user:password@host:port``, or in MLflow's environment variables
    ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``) go into an Authorization header, as
    MLflow's client sends them: urllib cannot open a URL with a password itself.
    """
    scheme = store_scheme(uri)
    if scheme in DATABASE_SCHEMES:
        check_driver(uri)
    if scheme in _DATABASE_PORTS:
        parts = urllib.parse.urlsplit(uri)
        try:
            address = (parts.hostname, parts.port or _DATABASE_PORTS[scheme])
        except ValueError as err:  # a port that is not a number
            raise InputError("--tracking-uri", None, f"{redact(uri)}: {err}") from None
        if not address[0]:
            return
        try:
            socket.create_connection(address, timeout=timeout).close()
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise InputError("--tracking-uri", None, f"database server {redact(uri)} is unreachable ({reason})") from None
        return
    if scheme not in REST_SCHEMES:
        return
    parts = urllib.parse.urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    url = urllib.parse.urlunsplit(parts._replace(netloc=host, path=parts.path.rstrip("/") + "/health"))
    request = urllib.request.Request(url)
    user = urllib.parse.unquote(parts.username) if parts.username else os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = urllib.parse.unquote(parts.password or "") if parts.username else os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=timeout).read()
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise InputError("--tracking-uri", None, f"tracking server {redact(uri)} is unreachable ({reason})") from None


def check_driver(uri: str) -> None:
    """Refuse a database URI whose Python driver is not installed (SQLAlchemy 2.1 reads a plain
    ``postgresql://`` as psycopg 3; this project installs psycopg2: ``postgresql+psycopg2://``)."""
    from sqlalchemy.engine import make_url

    try:
        make_url(uri).get_dialect().import_dbapi()
    except ImportError as err:
        raise InputError("--tracking-uri", None, f"{redact(uri)!r}: the {store_scheme(uri)} driver's Python package "
                                                 f"({err.name or err}) is not installed: install it, or name an "
                                                 "installed driver in the scheme (postgresql+psycopg2://...)") from None


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_root(uri: str, name: str) -> Path | None:
    """Where a new experiment keeps its artifacts: a tracking server's own store (it serves them over
    HTTP, so drivers on other machines can log them), else ``./mlartifacts/<name>`` next to the store."""
    return None if uri.startswith(("http://", "https://")) else Path("mlartifacts") / name


def experiment_id(client, name: str, *, artifact_root: str | Path | None = None) -> str:
    """The experiment named ``name``, created in the driver before any trial starts (creation races)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if artifact_root is not None:
        location = Path(artifact_root).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def clean_params(params: dict[str, Any]) -> dict[str, str]:
    return {k: ("None" if v is None else str(v))[:_PARAM_MAX] for k, v in params.items()}


def numeric_metrics(result: dict[str, Any], prefixes=("train/", "val/", "best/", "test/", "health/")) -> dict[str, float]:
    """The finite numeric metrics of a Tune result that belong in MLflow."""
    out = {}
    for k, v in result.items():
        if k.startswith(prefixes) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


def log_metrics(client, run_id: str, metrics: dict[str, float], *, step: int, timestamp_ms: int | None = None) -> None:
    """``metrics`` at ``step`` in ``log_batch`` calls of at most 900; stamped ``timestamp_ms`` (when they
    were reported, for a queued call), else now."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    items = [Metric(k, v, now, step) for k, v in metrics.items()]
    for i in range(0, len(items), 900):  # MLflow caps a batch at 1000 metrics
        client.log_batch(run_id, metrics=items[i: i + 900])


def log_params(client, run_id: str, params: dict[str, Any], *, skip_existing: bool = True) -> None:
    from mlflow.entities import Param

    params = clean_params(params)
    if skip_existing:
        have = client.get_run(run_id).data.params
        params = {k: v for k, v in params.items() if k not in have}
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 90):  # MLflow caps params per batch at 100
        client.log_batch(run_id, params=items[i: i + 90])


def trial_index(trial) -> int:
    """Tune's 1-based trial counter (the number before '_' in the experiment tag)."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) if head.isdigit() else 0


def short(value: Any) -> str:
    return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e") if isinstance(value, float) else str(value)


def run_name(trial, lr_key: str = "train.lr") -> str:
    """Readable and deterministic: ``trial-007-lr3e-4`` (index, learning rate if searched), with the seed
    of a repeated configuration, ``trial-007-s1-lr3e-4``, under ``--seeds-per-config``."""
    from studies.worker import REPEAT_INDEX, repeat_index

    name = f"trial-{trial_index(trial):03d}"
    if REPEAT_INDEX in trial.config:
        name += f"-s{repeat_index(trial.config)}"
    if lr_key in trial.config:
        name += f"-lr{short(trial.config[lr_key])}"
    return name


# The context of a run's dataset input (the input tag ``mlflow.data.context``): the splits a run reads.
# Tuning trials select on validation and never see the test split; robustness runs are scored on it.
CONTEXT_TUNING = "train/valid"
CONTEXT_ROBUSTNESS = "train/valid/test"


def dataset_name(manifest: dict) -> str:
    """The dataset's name in MLflow: ``synthetic/mosi`` (the generator and its preset), else the source and
    the data's label (``data.name``, or the file's stem): ``transcripts/mosi``, ``mmsa/aligned_50``."""
    data, config = manifest["data"], manifest.get("config", {})
    if data["source"] == "synthetic":
        return f"synthetic/{data['preset']}"
    return f"{data['source']}/{config.get('data.name') or Path(str(data['path'])).stem}"


def dataset_input(manifest: dict, *, context: str):
    """A run's dataset as an MLflow input (what ``mlflow.log_input`` logs), from its manifest.

    The digest is the data fingerprint (``fsrf.data.fingerprint``: a content hash of every split), so
    runs on the same data share one MLflow dataset and the UI's Dataset column and filters
    (``dataset.name``, ``dataset.digest``, ``dataset.context``) group them. The source is the synthetic
    generator with its preset, seed and size (MLflow's ``code`` source) or the data file (``local``, its
    absolute ``file://`` URI); the profile repeats what identifies the data.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    data, config = manifest["data"], manifest.get("config", {})
    profile = {"source": data["source"], "fingerprint": data["fingerprint"]}
    if data["source"] == "synthetic":
        identity = {"generator": "fsrf.data.synthetic", "preset": data["preset"],
                    "seed": manifest.get("seeds", {}).get("data"), "size_scale": config.get("data.size_scale")}
        source_type, source = "code", {"tags": {k: str(v) for k, v in identity.items()}}
        profile.update(identity)
    else:
        path = Path(str(data["path"])).resolve()  # the driver's folder: where the user named the file
        source_type, source = "local", {"uri": path.as_uri()}
        profile.update(path=str(path), name=config.get("data.name"))
        if config.get("data.audio_path"):
            profile["audio_path"] = str(Path(str(config["data.audio_path"])).resolve())
    dataset = Dataset(name=dataset_name(manifest), digest=str(data["fingerprint"]), source_type=source_type,
                      source=json.dumps(source), profile=json.dumps(profile, sort_keys=True))
    return DatasetInput(dataset=dataset, tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)])


class TrialTracker(tune.Callback):
    """A Tune callback (driver side) that mirrors every trial into a nested MLflow child run.

    ``base_params`` (the flattened base config and study settings) are logged on every child so that
    MLflow UI filters keep children; ``trial.config`` holds the sampled values that override them.
    Re-attaching after ``--resume`` finds a trial's run by its ``fsrf.trial_id`` tag instead of creating
    a second one. A trial's first report carries its manifest: the run gets ``manifest.json``, the
    manifest's tags and the dataset as an MLflow input (``dataset_input``; also on the parent run).

    Off the hot path: Tune calls its callbacks in the driver's loop between trial results, and every
    MLflow call (a ``log_batch`` of ~220 metrics on SQLite: 40-100 ms, more on a busy machine) used to
    hold the loop there. The callbacks now only read what they need from the trial (its config, the
    result's numbers, its checkpoint) and queue the MLflow calls to one background thread, which makes
    them in the order they were queued (a run is created before its metrics, the metrics before its
    end). ``flush`` waits for the queue; Tune's ``on_experiment_end`` and ``close`` flush, so everything
    is in MLflow when ``Tuner.fit`` returns. A failed call does not stop the study: the first one is
    printed once, and ``on_experiment_end`` (or ``close``) raises it, so that the study fails loudly.
    """

    def __init__(self, *, uri: str, experiment_id: str, parent_run_id: str, base_params: dict[str, Any],
                 tags: dict[str, str], max_epochs: int, name_fn=None, params_fn=None, tags_fn=None,
                 artifacts: tuple[str, ...] = (), time_budget_s: float | None = None, early_stopping: bool = True):
        self.uri, self.exp, self.parent = uri, experiment_id, parent_run_id
        self.name_fn, self.artifacts = name_fn or run_name, artifacts
        self.tags_fn = tags_fn or (lambda trial: {})
        self.params_fn = params_fn or (lambda trial: {k: v for k, v in trial.config.items() if not isinstance(v, dict)})
        self.base_params, self.tags, self.max_epochs = base_params, tags, max_epochs
        self.runs: dict[str, str] = {}  # trial id -> run id (written by the MLflow thread; read after flush)
        self.manifests: dict[str, dict] = {}
        self.budget_end = time.time() + time_budget_s if time_budget_s else None
        self.early_stopping = early_stopping  # False: no scheduler, a run that ends is complete (ridge: 1 epoch)
        self._client = None
        self._queue = None  # the MLflow thread: made on first use (Tune pickles its callbacks before that)
        self._failures: list[BaseException] = []
        self._parent_datasets: set[tuple[str, str]] = set()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_client=None, _queue=None, _failures=[])
        return state

    @property
    def client(self):
        if self._client is None:
            self._client = client_for(self.uri)
        return self._client

    # -- the MLflow thread ------------------------------------------------------------------------------

    def _submit(self, fn, *args, **kwargs) -> None:
        """Queue ``fn(*args, **kwargs)`` for the MLflow thread (one thread: calls run in queued order)."""
        if self._queue is None:
            from concurrent.futures import ThreadPoolExecutor

            self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsrf-mlflow")
        self._queue.submit(self._guarded, fn, *args, **kwargs)

    def _guarded(self, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001  kept for flush; the queue goes on with the next call
            self._failures.append(err)
            if len(self._failures) == 1:
                first = (str(err).strip().splitlines() or [""])[0][:300]
                print(f"warning: an MLflow call failed ({type(err).__name__}: {first}); the study goes on "
                      "and fails at its end", file=sys.stderr, flush=True)

    def flush(self, *, raise_failures: bool = True) -> None:
        """Wait until every queued MLflow call has been made; then raise the first that failed (once)."""
        if self._queue is not None:
            self._queue.submit(lambda: None).result()
        if raise_failures and self._failures:
            failures, self._failures = self._failures, []
            raise RuntimeError(f"{len(failures)} MLflow call(s) of the study's trial runs failed; the first: "
                               f"{type(failures[0]).__name__}: {failures[0]}") from failures[0]

    def on_experiment_end(self, trials, **info):
        self.flush()

    # -- what the callbacks read from a trial (in Tune's loop) -------------------------------------------

    def _identity(self, trial) -> tuple[str, str, dict[str, str]]:
        """What creating the trial's run needs: its id, run name and tags."""
        tags = {**self.tags, "mlflow.parentRunId": self.parent, "fsrf.trial_id": trial.trial_id,
                "fsrf.trial_index": str(trial_index(trial)), "fsrf.status": "RUNNING", **self.tags_fn(trial)}
        return trial.trial_id, self.name_fn(trial), tags

    def run_for(self, trial) -> str:
        """The trial's run id, for a caller outside the tracker: waits until the queued MLflow calls are
        made (the run exists then). On Tune's hot path prefer ``log_params``, which only queues."""
        return self._call(self._run_id, self._identity(trial))

    def log_params(self, trial, params: dict[str, Any]) -> None:
        """Queue more params for the trial's run (another callback's, e.g. where the trial ran)."""
        self._submit(self._start, self._identity(trial), params)

    def _call(self, fn, *args):
        """``fn(*args)`` on the MLflow thread after the queued calls; its value (or its error) here."""
        self._submit(lambda: None)  # makes the thread if there is none yet
        return self._queue.submit(fn, *args).result()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._submit(self._start, self._identity(trial), {**self.base_params, **self.params_fn(trial)})

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._submit(self._run_id, self._identity(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from studies.worker import MANIFEST

        manifest = None
        if isinstance(result.get(MANIFEST), str):  # a trial's first report (again after a restore)
            manifest = json.loads(result[MANIFEST])
            self.manifests[trial.trial_id] = manifest
        metrics = numeric_metrics(result, prefixes=("train/", "val/", "best/", "test/", "health/", "cost/"))
        self._submit(self._result, self._identity(trial), manifest, metrics,
                     step=int(result.get("epoch", iteration)), timestamp_ms=int(time.time() * 1000))

    def on_trial_complete(self, iteration, trials, trial, **info):
        ident, last = self._identity(trial), dict(trial.last_result or {})
        failed = failed_reason(trial)
        if failed:  # the trainable stopped it (a non-finite loss): an error, though Tune saw a clean end
            self._submit(self._end, ident, "FAILED", failed)
            return
        epochs = int(last.get("epoch", 0))
        if epochs >= self.max_epochs or not self.early_stopping:
            reason = "completed"
        elif self.budget_end is not None and time.time() >= self.budget_end:
            reason = f"stopped by the study's time budget after {epochs} epochs"
        else:
            reason = f"early-stopped by the scheduler after {epochs} epochs"
        checkpoint = trial.checkpoint if self.artifacts else None
        self._submit(self._complete, ident, last, reason, checkpoint)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._submit(self._end, self._identity(trial), "FAILED", error_reason(trial))

    # -- what the MLflow thread does ---------------------------------------------------------------------

    def _existing(self, trial_id: str) -> str | None:
        found = self.client.search_runs(
            [self.exp], filter_string=f"tags.`fsrf.trial_id` = '{trial_id}' and "
                                      f"tags.`mlflow.parentRunId` = '{self.parent}'", max_results=1)
        return found[0].info.run_id if found else None

    def _run_id(self, ident) -> str:
        """The trial's run: known, found by its ``fsrf.trial_id`` tag (a resumed study), or created."""
        trial_id, name, tags = ident
        if trial_id in self.runs:
            return self.runs[trial_id]
        run_id = self._existing(trial_id)
        if run_id is None:
            run_id = self.client.create_run(self.exp, run_name=name, tags=tags).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "fsrf.status", "RUNNING")
        self.runs[trial_id] = run_id
        return run_id

    def _start(self, ident, params: dict[str, Any]) -> None:
        log_params(self.client, self._run_id(ident), params)

    def _result(self, ident, manifest: dict | None, metrics: dict[str, float], *, step: int, timestamp_ms: int) -> None:
        run_id = self._run_id(ident)
        if manifest is not None:
            self._log_manifest(run_id, manifest)
            self._log_dataset(run_id, manifest)
        log_metrics(self.client, run_id, metrics, step=step, timestamp_ms=timestamp_ms)

    def _log_manifest(self, run_id: str, manifest: dict) -> None:
        from mlflow.entities import RunTag

        from fsrf.manifest import tags as manifest_tags

        self.client.log_dict(run_id, manifest, "manifest.json")
        items = [RunTag(k, v[:_TAG_MAX]) for k, v in manifest_tags(manifest).items()]
        self.client.log_batch(run_id, tags=items)

    def _log_dataset(self, run_id: str, manifest: dict) -> None:
        """The run's dataset input, and the parent's the first time the study sees this dataset."""
        kind = (manifest.get("study") or {}).get("kind")
        entry = dataset_input(manifest, context=CONTEXT_ROBUSTNESS if kind == "robustness" else CONTEXT_TUNING)
        self.client.log_inputs(run_id, datasets=[entry])
        key = (entry.dataset.name, entry.dataset.digest)
        if key not in self._parent_datasets:
            self.client.log_inputs(self.parent, datasets=[entry])
            self._parent_datasets.add(key)

    def _outcome(self, trial_id: str, run_id: str, last: dict, reason: str) -> None:
        """Best and final values, the selected epoch and the completed manifest of a trial that ended."""
        from fsrf.manifest import complete

        final = {f"final/{k}": v for k, v in numeric_metrics(last, prefixes=("val/",)).items()}
        epochs = {"best/epoch": float(last.get("best_epoch", 0) or 0), "final/epoch": float(last.get("epoch", 0) or 0)}
        log_metrics(self.client, run_id, {**final, **epochs}, step=int(last.get("epoch", 0) or 0))
        manifest = self.manifests.get(trial_id)
        if manifest is not None:
            self._log_manifest(run_id, complete(
                manifest, epochs_run=int(epochs["final/epoch"]), best_epoch=int(epochs["best/epoch"]),
                stop_reason=reason, metrics=numeric_metrics(last, prefixes=("best/", "test/", "cost/"))))

    def _complete(self, ident, last: dict, reason: str, checkpoint) -> None:
        run_id = self._run_id(ident)
        self._outcome(ident[0], run_id, last, reason)
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                for name in self.artifacts:
                    if (Path(d) / name).is_file():
                        self.client.log_artifact(run_id, str(Path(d) / name))
        self._end(ident, "FINISHED", reason)

    def _end(self, ident, status: str, reason: str) -> None:
        run_id = self._run_id(ident)
        self.client.set_tag(run_id, "fsrf.status", status)
        self.client.set_tag(run_id, "fsrf.stop_reason", reason[:5000])
        self.client.set_terminated(run_id, status=status)

    def close(self, status: str = "KILLED") -> int:
        """Make the queued MLflow calls, end every child run still RUNNING (an interrupted study) and stop
        the MLflow thread; returns how many runs were ended. It does not raise a queued call's failure
        (a study that reached its end has had it raised by ``on_experiment_end``; one that did not is
        already failing, and its parent run must still be ended): it prints how many failed."""
        self.flush(raise_failures=False)
        n = 0
        budget = self.budget_end is not None and time.time() >= self.budget_end
        reason = "stopped by the study's time budget" if budget else "study interrupted"
        for run in self.client.search_runs([self.exp], filter_string=f"tags.`mlflow.parentRunId` = '{self.parent}'"
                                           " and attributes.status = 'RUNNING'"):
            self.client.set_tag(run.info.run_id, "fsrf.status", status)
            self.client.set_tag(run.info.run_id, "fsrf.stop_reason", reason)
            self.client.set_terminated(run.info.run_id, status=status)
            n += 1
        if self._queue is not None:
            self._queue.shutdown(wait=True)
            self._queue = None
        if self._failures:
            print(f"warning: {len(self._failures)} MLflow call(s) of the trial runs failed", file=sys.stderr)
            self._failures = []
        return n


def failed_reason(trial) -> str | None:
    """Why the trainable stopped this trial itself (``failed_reason`` of its last report), if it did."""
    from studies.worker import FAILED_REASON

    return (trial.last_result or {}).get(FAILED_REASON)


def error_reason(trial) -> str:
    """The last line of a failed trial's error (Tune writes it to ``error.txt`` in the trial folder)."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "trial failed (no error file)"
