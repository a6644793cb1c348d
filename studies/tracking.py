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


def resolve_tracking_uri(uri: str | None, root: str | Path = ".") -> str:
    """``--tracking-uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<root>/mlflow.db`` (absolute: Ray workers
    run in another folder). Relative SQLite paths are made absolute; a password moves out of the URI
    into the environment (``credentials_to_env``)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:
        raise InputError("--tracking-uri", None, f"{redact(uri)!r} is not a URI (sqlite:///path/mlflow.db, "
                         "http://host:port or postgresql://...)")
    return credentials_to_env(uri)


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
    """Fail fast, with one line, when an HTTP tracking server does not answer.

    Credentials (in the URI, ``http://user:password@host:port``, or in MLflow's environment variables
    ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``) go into an Authorization header, as
    MLflow's client sends them: urllib cannot open a URL with a password itself.
    """
    if not uri.startswith(("http://", "https://")):
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


def log_metrics(client, run_id: str, metrics: dict[str, float], *, step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
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


class TrialTracker(tune.Callback):
    """A Tune callback (driver side) that mirrors every trial into a nested MLflow child run.

    ``base_params`` (the flattened base config and study settings) are logged on every child so that
    MLflow UI filters keep children; ``trial.config`` holds the sampled values that override them.
    Re-attaching after ``--resume`` finds a trial's run by its ``fsrf.trial_id`` tag instead of creating
    a second one.
    """

    def __init__(self, *, uri: str, experiment_id: str, parent_run_id: str, base_params: dict[str, Any],
                 tags: dict[str, str], max_epochs: int, name_fn=None, params_fn=None, tags_fn=None,
                 artifacts: tuple[str, ...] = (), time_budget_s: float | None = None, early_stopping: bool = True):
        self.uri, self.exp, self.parent = uri, experiment_id, parent_run_id
        self.name_fn, self.artifacts = name_fn or run_name, artifacts
        self.tags_fn = tags_fn or (lambda trial: {})
        self.params_fn = params_fn or (lambda trial: {k: v for k, v in trial.config.items() if not isinstance(v, dict)})
        self.base_params, self.tags, self.max_epochs = base_params, tags, max_epochs
        self.runs: dict[str, str] = {}
        self.manifests: dict[str, dict] = {}
        self.budget_end = time.time() + time_budget_s if time_budget_s else None
        self.early_stopping = early_stopping  # False: no scheduler, a run that ends is complete (ridge: 1 epoch)
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = client_for(self.uri)
        return self._client

    def _existing(self, trial_id: str) -> str | None:
        found = self.client.search_runs(
            [self.exp], filter_string=f"tags.`fsrf.trial_id` = '{trial_id}' and "
                                      f"tags.`mlflow.parentRunId` = '{self.parent}'", max_results=1)
        return found[0].info.run_id if found else None

    def run_for(self, trial) -> str:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        run_id = self._existing(trial.trial_id)
        if run_id is None:
            tags = {**self.tags, "mlflow.parentRunId": self.parent, "fsrf.trial_id": trial.trial_id,
                    "fsrf.trial_index": str(trial_index(trial)), "fsrf.status": "RUNNING", **self.tags_fn(trial)}
            run = self.client.create_run(self.exp, run_name=self.name_fn(trial), tags=tags)
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "fsrf.status", "RUNNING")
        self.runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        run_id = self.run_for(trial)
        log_params(self.client, run_id, {**self.base_params, **self.params_fn(trial)})

    def on_trial_restore(self, iteration, trials, trial, **info):
        self.run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from studies.worker import MANIFEST

        run_id = self.run_for(trial)
        if isinstance(result.get(MANIFEST), str):  # a trial's first report (again after a restore)
            manifest = json.loads(result[MANIFEST])
            self.manifests[trial.trial_id] = manifest
            self._log_manifest(run_id, manifest)
        log_metrics(self.client, run_id, numeric_metrics(result, prefixes=("train/", "val/", "best/", "test/", "health/", "cost/")),
                    step=int(result.get("epoch", iteration)))

    def _log_manifest(self, run_id: str, manifest: dict) -> None:
        from mlflow.entities import RunTag

        from fsrf.manifest import tags as manifest_tags

        self.client.log_dict(run_id, manifest, "manifest.json")
        items = [RunTag(k, v[:_TAG_MAX]) for k, v in manifest_tags(manifest).items()]
        self.client.log_batch(run_id, tags=items)

    def _outcome(self, trial, run_id: str, reason: str) -> None:
        """Best and final values, the selected epoch and the completed manifest of a trial that ended."""
        from fsrf.manifest import complete

        last = trial.last_result or {}
        final = {f"final/{k}": v for k, v in numeric_metrics(last, prefixes=("val/",)).items()}
        epochs = {"best/epoch": float(last.get("best_epoch", 0) or 0), "final/epoch": float(last.get("epoch", 0) or 0)}
        log_metrics(self.client, run_id, {**final, **epochs}, step=int(last.get("epoch", 0) or 0))
        manifest = self.manifests.get(trial.trial_id)
        if manifest is not None:
            self._log_manifest(run_id, complete(
                manifest, epochs_run=int(epochs["final/epoch"]), best_epoch=int(epochs["best/epoch"]),
                stop_reason=reason, metrics=numeric_metrics(last, prefixes=("best/", "test/", "cost/"))))

    def _end(self, trial, status: str, reason: str) -> None:
        run_id = self.run_for(trial)
        self.client.set_tag(run_id, "fsrf.status", status)
        self.client.set_tag(run_id, "fsrf.stop_reason", reason[:5000])
        self.client.set_terminated(run_id, status=status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        failed = failed_reason(trial)
        if failed:  # the trainable stopped it (a non-finite loss): an error, though Tune saw a clean end
            self._end(trial, "FAILED", failed)
            return
        epochs = int((trial.last_result or {}).get("epoch", 0))
        if epochs >= self.max_epochs or not self.early_stopping:
            reason = "completed"
        elif self.budget_end is not None and time.time() >= self.budget_end:
            reason = f"stopped by the study's time budget after {epochs} epochs"
        else:
            reason = f"early-stopped by the scheduler after {epochs} epochs"
        self._outcome(trial, self.run_for(trial), reason)
        if self.artifacts and trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as d:
                for name in self.artifacts:
                    if (Path(d) / name).is_file():
                        self.client.log_artifact(self.run_for(trial), str(Path(d) / name))
        self._end(trial, "FINISHED", reason)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED", error_reason(trial))

    def close(self, status: str = "KILLED") -> int:
        """End every child run still RUNNING (interrupted study); returns how many were ended."""
        n = 0
        budget = self.budget_end is not None and time.time() >= self.budget_end
        reason = "stopped by the study's time budget" if budget else "study interrupted"
        for run in self.client.search_runs([self.exp], filter_string=f"tags.`mlflow.parentRunId` = '{self.parent}'"
                                           " and attributes.status = 'RUNNING'"):
            self.client.set_tag(run.info.run_id, "fsrf.status", status)
            self.client.set_tag(run.info.run_id, "fsrf.stop_reason", reason)
            self.client.set_terminated(run.info.run_id, status=status)
            n += 1
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
