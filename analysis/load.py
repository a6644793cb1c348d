"""Read a study's results into polars tables: robustness runs from MLflow or parquet, tuning trials.

The robustness study (``studies/robustness.py``) leaves one MLflow parent run (tag
``fsrf.role=robustness``) with a FINISHED child run per variant x seed (tag ``fsrf.role=robustness-run``)
and the same numbers in ``runs.parquet``. Both readers return the *wide* table

    run_id | variant | seed | overlap | test/<metric>/<condition> ... | health/<name> ...

one row per child run (``health/...`` columns, the mechanism health of each run's selected epoch, only
when the runs carry them: ``health_columns``), ``overlap`` null where the views were drawn independently (``missing.overlap``
= "None"), rows ordered by variant (the order of ``fsrf.variants.VARIANTS``: FSRF first, the baselines
last) then seed. Everything
downstream takes this table. Missing or empty input raises ``fsrf.errors.InputError`` naming the run
or file, which the report turns into ``error: <one line>`` and exit code 2.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from fsrf import variants
from fsrf.errors import InputError
from fsrf.manifest import ROLE_ROBUSTNESS, ROLE_ROBUSTNESS_RUN, ROLE_TAG
from fsrf.protocol import BEST_OBJECTIVE

KEYS = ("run_id", "variant", "seed", "overlap", "train_rate")  # train_rate: the grid's constant rate (else null)
REPRESENTATIONS = "representations.npz"
_KEY_SCHEMA = {"run_id": pl.String, "variant": pl.String, "seed": pl.Int64, "overlap": pl.Float64,
               "train_rate": pl.Float64}


def metric_columns(df: pl.DataFrame, split: str = "test") -> list[str]:
    return [c for c in df.columns if c.startswith(f"{split}/") and c.count("/") == 2]


def health_columns(df: pl.DataFrame) -> list[str]:
    """``health/<name>``, ``health/<name>/<m>`` and ``health/grad_share/<term>`` (SPEC section 7): optional,
    absent from studies run before the final report carried the selected epoch's health."""
    return [c for c in df.columns if c.startswith("health/")]


def _finish(df: pl.DataFrame, where: str) -> pl.DataFrame:
    """Key columns typed and first, rows in the report's order; refuse a table with nothing to analyse.
    ``train_rate`` may be absent (studies from before the grid): it is then null."""
    if "train_rate" not in df.columns:
        df = df.with_columns(train_rate=pl.lit(None, dtype=pl.Float64))
    missing = [k for k in KEYS if k not in df.columns]
    if missing:
        raise InputError(where, None, f"missing column(s) {', '.join(missing)}")
    if df.height == 0:
        raise InputError(where, None, "no runs (the table is empty)")
    metrics = metric_columns(df)
    if not metrics:
        raise InputError(where, None, "no test/<metric>/<condition> columns")
    health = health_columns(df)
    df = df.with_columns([pl.col(k).cast(t) for k, t in _KEY_SCHEMA.items()]
                         + [pl.col(c).cast(pl.Float64) for c in metrics + health])
    ranks = {v: variants.rank(v) for v in df["variant"].drop_nulls().unique().to_list()}
    rank = pl.col("variant").replace_strict(ranks, default=float(len(variants.VARIANTS)), return_dtype=pl.Float64)
    return (df.select([*KEYS, *sorted(metrics), *sorted(health)])
            .sort([rank, "variant", "overlap", "train_rate", "seed"], nulls_last=False))


# -- MLflow ---------------------------------------------------------------------------------------------

def resolve_tracking_uri(uri: str | None) -> str:
    """``uri`` > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<cwd>/mlflow.db``; SQLite paths made absolute.

    A SQLite file that does not exist is refused: MLflow would silently create an empty store and the
    user would see "run not found" instead of the real mistake, a wrong path.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
    if "://" not in uri:
        raise InputError("--tracking-uri", None, f"{uri!r} is not a URI (sqlite:///path/mlflow.db or http://host:port)")
    if not uri.startswith("sqlite:///"):  # a store MLflow cannot use, or one that does not answer: one line
        from studies.tracking import check_reachable, check_store_uri

        check_store_uri(uri)
        check_reachable(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        path = path if uri.startswith("sqlite:////") else path.resolve()
        if not path.is_file():
            raise InputError("--tracking-uri", None, f"no MLflow store at {path}")
        uri = f"sqlite:///{path}"
    return uri


@functools.lru_cache(maxsize=4)
def mlflow_client(tracking_uri: str):
    """One client per store: building one costs seconds (the store checks its schema)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _parent(client, parent_run_id: str, tracking_uri: str):
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(parent_run_id)
    except MlflowException:
        raise InputError("--robustness-run", None, f"run {parent_run_id} not found in {tracking_uri}") from None
    role = run.data.tags.get(ROLE_TAG)
    if role != ROLE_ROBUSTNESS:
        raise InputError("--robustness-run", None, f"run {parent_run_id} is not a robustness study parent "
                                                   f"(tag {ROLE_TAG}={role!r}, expected {ROLE_ROBUSTNESS!r})")
    return run


def _children(client, parent) -> list:
    """FINISHED child runs of a robustness parent; failed or killed seeds are left out, not averaged."""
    query = (f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.status = 'FINISHED' "
             f"and tags.`{ROLE_TAG}` = '{ROLE_ROBUSTNESS_RUN}'")
    runs, token = [], None
    while True:
        page = client.search_runs([parent.info.experiment_id], filter_string=query, max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _overlap(value: str | None) -> float | None:
    if value is None or value == "None":
        return None
    return float(value)


def runs_from_mlflow(tracking_uri: str, parent_run_id: str) -> pl.DataFrame:
    """The wide table of a robustness study from its MLflow parent run (FINISHED children only)."""
    client = mlflow_client(tracking_uri)
    parent = _parent(client, parent_run_id, tracking_uri)
    rows = []
    for run in _children(client, parent):
        params, tags = run.data.params, run.data.tags
        seed = params.get("seed")
        row = {"run_id": run.info.run_id, "variant": tags.get("fsrf.variant") or params.get("variant"),
               "seed": int(seed) if seed not in (None, "None") else None,
               "overlap": _overlap(params.get("missing.overlap")), "train_rate": _overlap(params.get("train_rate"))}
        if not row["variant"]:
            raise InputError(f"run {run.info.run_id}", "fsrf.variant", "child run without a variant tag or param")
        # health/*: logged every epoch and, last, at the selected epoch by the final report (same step,
        # later): the latest value MLflow keeps is the selected epoch's
        row.update({k: v for k, v in run.data.metrics.items() if k.startswith(("test/", "health/"))})
        rows.append(row)
    if not rows:
        raise InputError("--robustness-run", None, f"run {parent_run_id} has no FINISHED child runs "
                                                   f"tagged {ROLE_TAG}={ROLE_ROBUSTNESS_RUN}")
    return _finish(pl.DataFrame(rows, infer_schema_length=None), f"run {parent_run_id}")


@dataclass(frozen=True)
class StudyConfig:
    """What was run: the parent's params and, per variant, the config params its seeds share."""

    experiment: str
    parent_run_id: str
    parent_name: str
    parent_params: dict[str, str]
    variant_params: dict[str, dict[str, str]]  # variant -> param -> value (or "varies: a, b, ...")
    tags: dict[str, str] = field(default_factory=dict)
    parent_metrics: dict[str, float] = field(default_factory=dict)  # study/wall_time_s, study/cpu_s, ...
    runs_meta: list[dict] = field(default_factory=list)  # per child: variant, seed, cost, best epoch, manifest tags


MANIFEST_TAGS = {"fsrf.code_commit": "commit", "fsrf.code_dirty": "dirty", "fsrf.data_fingerprint": "data",
                 "fsrf.encoder_id": "encoder", "fsrf.selection": "selection"}


def study_config(tracking_uri: str, parent_run_id: str) -> StudyConfig:
    """The exact configurations of a robustness study, deduplicated per variant.

    A param with one value across a variant's seeds is reported once; one that differs (``seed``,
    ``missing.overlap`` in an overlap sweep) is reported as ``varies: v1, v2, ...``.
    """
    client = mlflow_client(tracking_uri)
    parent = _parent(client, parent_run_id, tracking_uri)
    seen: dict[str, dict[str, set[str]]] = {}
    meta = []
    for run in _children(client, parent):
        variant = run.data.tags.get("fsrf.variant") or run.data.params.get("variant", "?")
        for k, v in run.data.params.items():
            seen.setdefault(variant, {}).setdefault(k, set()).add(v)
        m = run.data.metrics
        meta.append({"variant": variant, "seed": run.data.params.get("seed"),
                     **{k: m.get(k) for k in ("cost/cpu_s", "cost/wall_s", "cost/gpu_s", "best/epoch")},
                     **{short: run.data.tags.get(tag) for tag, short in MANIFEST_TAGS.items()}})
    per_variant = {}
    for variant in variants.ordered(seen):
        per_variant[variant] = {
            k: next(iter(vals)) if len(vals) == 1 else "varies: " + ", ".join(sorted(vals, key=_numeric_first))
            for k, vals in sorted(seen[variant].items())}
    exp = client.get_experiment(parent.info.experiment_id)
    tags = {k: v for k, v in parent.data.tags.items() if not k.startswith("mlflow.")}
    return StudyConfig(experiment=exp.name, parent_run_id=parent_run_id, parent_name=parent.info.run_name or "",
                       parent_params=dict(sorted(parent.data.params.items())), variant_params=per_variant,
                       tags=tags, parent_metrics=dict(parent.data.metrics), runs_meta=meta)


def data_param(config: StudyConfig | None, key: str) -> str | None:
    """One ``data.*`` param of the study's runs (``data.source``, ``data.name``), when every variant that
    logged it agrees; else the parent's ``base.<key>``; None when unknown (no MLflow config, or mixed)."""
    if config is None:
        return None
    values = {p[key] for p in config.variant_params.values() if key in p}
    if len(values) == 1:
        value = next(iter(values))
        return None if value.startswith("varies: ") or value == "None" else value
    if values:
        return None
    value = config.parent_params.get(f"base.{key}")
    return None if value in (None, "None") else value


def _numeric_first(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


@dataclass(frozen=True)
class Representations:
    """One child run's saved representations (``representations.npz``), arrays in memory."""

    run_id: str
    variant: str
    seed: int | None
    arrays: dict[str, np.ndarray]


def representations_from_mlflow(tracking_uri: str, parent_run_id: str) -> list[Representations]:
    """Every child run's ``representations.npz`` (at the artifact root or one folder down), by seed."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file floods stderr
    client = mlflow_client(tracking_uri)
    parent = _parent(client, parent_run_id, tracking_uri)
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in _children(client, parent):
            path = _find_artifact(client, run.info.run_id, REPRESENTATIONS)
            if path is None:
                continue
            local = client.download_artifacts(run.info.run_id, path, dst_path=tmp)
            seed = run.data.params.get("seed")
            found.append(Representations(
                run_id=run.info.run_id, variant=run.data.tags.get("fsrf.variant") or run.data.params.get("variant"),
                seed=int(seed) if seed not in (None, "None") else None, arrays=load_npz(local)))
    return sorted(found, key=lambda r: (variants.rank(r.variant), r.seed if r.seed is not None else -1))


def _find_artifact(client, run_id: str, name: str) -> str | None:
    top = client.list_artifacts(run_id)
    for item in top:
        if not item.is_dir and Path(item.path).name == name:
            return item.path
    for item in top:
        if item.is_dir:
            for sub in client.list_artifacts(run_id, item.path):
                if not sub.is_dir and Path(sub.path).name == name:
                    return sub.path
    return None


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` file, read without pickle (a results file must never execute code)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), None, "no such file")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# -- parquet --------------------------------------------------------------------------------------------

def runs_from_parquet(path: str | Path) -> pl.DataFrame:
    """The wide table from a robustness study's ``runs.parquet``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), None, "no such file (expected a robustness study's runs.parquet)")
    try:
        df = pl.read_parquet(path)
    except Exception as err:  # polars raises several types for a damaged or foreign file
        raise InputError(str(path), None, f"not a readable parquet file ({type(err).__name__})") from None
    return _finish(df, str(path))


# -- reshaping ------------------------------------------------------------------------------------------

def long_metrics(df: pl.DataFrame) -> pl.DataFrame:
    """The wide table as one row per run x metric x condition (test split); null values dropped.

    Columns: run_id, variant, seed, overlap, metric, condition, value.
    """
    cols = metric_columns(df)
    keys = [k for k in KEYS if k in df.columns]  # a selection of a wide table may leave train_rate out
    long = df.unpivot(on=cols, index=keys, variable_name="name", value_name="value")
    parts = pl.col("name").str.split("/")
    return (long.with_columns(metric=parts.list.get(1), condition=parts.list.get(2))
            .filter(pl.col("value").is_not_null() & pl.col("value").is_not_nan())
            .select([*keys, "metric", "condition", "value"]))


def main_runs(df: pl.DataFrame) -> pl.DataFrame:
    """The runs of each variant's main setting, leaving out an overlap sweep's or a rate grid's extra runs.

    When a variant was run under several settings (``overlap`` of the paired-mask study, ``train_rate``
    of the train x test grid), pooling them would mix different training procedures in one mean, so
    Table I, Table II and the curves use one setting per variant: both null (the config's own MRM) when
    present, otherwise the setting with the most runs (ties: the smallest overlap, then rate). Variants
    with a single setting are kept whole.
    """
    if "train_rate" not in df.columns:
        df = df.with_columns(train_rate=pl.lit(None, dtype=pl.Float64))
    keep = []
    for variant in df["variant"].unique(maintain_order=True).to_list():
        rows = df.filter(pl.col("variant") == variant)
        counts = rows.group_by(["overlap", "train_rate"]).len()
        if counts.height > 1:
            plain = rows.filter(pl.col("overlap").is_null() & pl.col("train_rate").is_null())
            if plain.height:
                rows = plain
            else:
                best = counts.sort(["len", "overlap", "train_rate"], descending=[True, False, False],
                                   nulls_last=False).row(0, named=True)
                rows = rows.filter(pl.col("overlap").eq_missing(best["overlap"])
                                   & pl.col("train_rate").eq_missing(best["train_rate"]))
        keep.append(rows)
    return pl.concat(keep)


# -- tuning study ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TuningStudy:
    """A tuning study's exported tables (``studies/tune_lambdas.py`` writes them into its folder)."""

    folder: Path
    trials: pl.DataFrame  # one row per trial: trial_id, status, params (dotted names), best/val/... metrics
    epochs: pl.DataFrame | None  # per-epoch metrics with trial_id and epoch (None when the file is absent)
    params: list[str]  # the searched params: dotted column names


def param_columns(trials: pl.DataFrame) -> list[str]:
    """Searched params: dotted config names (``loss.tau``); metric columns carry '/' instead."""
    return [c for c in trials.columns if "." in c and "/" not in c]


def trials_from_study(study_dir: str | Path) -> TuningStudy:
    """Read ``trials.parquet`` (and ``epochs.parquet`` when present) of a tuning study folder."""
    folder = Path(study_dir)
    path = folder / "trials.parquet"
    if not path.is_file():
        raise InputError(str(path), None, "no such file (expected a tuning study folder, runs/tune/<name>)")
    trials = pl.read_parquet(path)
    if trials.height == 0:
        raise InputError(str(path), None, "no trials (the table is empty)")
    for col in ("trial_id", BEST_OBJECTIVE):
        if col not in trials.columns:
            raise InputError(str(path), None, f"missing column {col}")
    params = param_columns(trials)
    if not params:
        raise InputError(str(path), None, "no param columns (dotted names such as loss.tau)")
    epochs_path = folder / "epochs.parquet"
    epochs = pl.read_parquet(epochs_path) if epochs_path.is_file() else None
    return TuningStudy(folder=folder, trials=trials, epochs=epochs, params=params)

