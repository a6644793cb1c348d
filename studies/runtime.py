"""The Ray side of a study: starting Ray, the driver skeleton both studies share, what a study prints
while it runs, what it cost, and the Ray Train placement-group workaround.

``Study`` is what the tuning study (``studies/tune_lambdas.py``) and the robustness study
(``studies/robustness.py``) do alike around their Tuner; each entry point keeps what is its own (the
trainable, the search, its tables and its printed summary):

    study = runtime.Study(uri, name)           # the clock starts: the study's wall time and driver CPU
    ...                                        # start Ray, build the trainable
    study.open(run_name=..., tags=..., params=...)    # the MLflow experiment and the parent run
    tracker = tracking.TrialTracker(experiment_id=study.experiment_id, parent_run_id=study.parent_run_id, ...)
    results = study.fit(make_tuner, tracker)   # Tuner.fit(); no child run left RUNNING, whatever happens
    ...                                        # the study's own tables and artifacts on the parent run
    spent = study.finish(results, {"study/trials": n, "study/errored": e})  # study/* metrics, final status
    print(spent.line(n, "trials"))
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ray import tune

from studies import tracking
from studies._cli import ROOT


def start_ray(address: str | None, cpus: float | None, gpus: float | None = None) -> float:
    """Join the cluster at ``address`` or start a local Ray with explicit CPUs (and ``gpus`` logical GPUs:
    Ray schedules and assigns them as if they were real, which is how the GPU packing is tested on a
    machine without one; None: the GPUs Ray detects); returns the cluster's CPUs.

    Ray workers run in Ray's session folder: the repository goes on their PYTHONPATH (a checkout that
    was not pip-installed still works) and Hugging Face stays offline.
    """
    import ray

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # narrow the window a killed driver loses
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's automatic loggers include TensorBoard's, which the driver pays on every result (2-7 ms of the
    # driver's per-result cost here); the studies add the CSV and JSON loggers themselves (``loggers()``).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if os.environ.get("FSRF_CACHE"):
        env["FSRF_CACHE"] = os.environ["FSRF_CACHE"]
    if address:
        ray.init(address=address, runtime_env={"env_vars": env})
    else:
        env["PYTHONPATH"] = str(ROOT)
        ray.init(num_cpus=cpus or os.cpu_count(), num_gpus=gpus, include_dashboard=False,
                 runtime_env={"env_vars": env})
    return float(ray.cluster_resources().get("CPU", 1))


def loggers() -> list:
    """Tune's CSV and JSON result loggers (``progress.csv``, ``result.json``: what ``Result.metrics_dataframe``
    and ``tune.Tuner.restore`` read), without the TensorBoard logger ``start_ray`` switches off."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [CSVLoggerCallback(), JsonLoggerCallback()]


def node_resources() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of every alive node of the cluster Ray is connected to: trials are placed per node
    (a share of a GPU must fit in one GPU, a trial's bundle on one node), so the study's concurrency is
    computed from these, not from the cluster's totals (``studies.capacity.trials_at_once``)."""
    import ray

    return [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


def check_data(cfg) -> None:
    """Read the dataset once in the driver, before Ray, and fill the text cache.

    A missing, unreadable or malformed file, or a pickle without ``data.trust_pickle``, is then refused
    in seconds with one line naming the file and field, instead of failing every trial on the cluster.
    """
    from fsrf.data import load_dataset

    warm_text_cache(cfg, load_dataset(cfg.data))


def warm_text_cache(cfg, splits) -> None:
    """Encode every utterance once here, with all the driver's cores, before trials start.

    Otherwise trials that start together each find the cache empty and encode the same texts in
    parallel (on MOSEI's 22k utterances that is minutes of duplicated work per trial). A fine-tuned
    encoder runs live and has no cache.
    """
    if cfg.encoder.finetune:
        return
    from fsrf import text

    path = text.resolve_path(cfg.encoder.path)
    print("text cache: checking (encoding once if needed) ...", file=sys.stderr, flush=True)
    for split in splits.values():
        text.cached_states(split.text, encoder_path=path, max_tokens=cfg.data.max_tokens,
                           cache_dir=cfg.encoder.cache_dir)
    if cfg.missing.word_drop == "unk":  # the protocol's word-drop conditions, encoded with [UNK] (SPEC 7)
        warm_word_drops(cfg, splits)


def warm_word_drops(cfg, splits) -> None:
    """Encode the validation and test utterances of every condition that drops words, once, here.

    They depend on the data, the encoder and ``eval.mask_seed`` only, so every trial of a study reads
    the same cached arrays; without this, trials starting together would encode them in parallel.
    (The training patterns depend on each run's seed and are encoded by the run itself.)
    """
    from fsrf import protocol
    from fsrf.train import prepare

    prep = prepare(cfg.model_copy(update={"missing": cfg.missing.model_copy(update={"word_drop": "zeroed"})}),
                   splits=splits)  # zeroed: no training patterns here, only the split tensors
    conditions = (protocol.conditions_for(prep.modalities)
                  + protocol.per_modality_conditions(prep.modalities, rates=cfg.eval.modality_rates))
    for name in ("valid", "test"):
        data = prep.splits[name]
        valid = data.inputs.valid()
        for condition in conditions:
            protocol.word_states(data, condition, condition.view(valid, seed=cfg.eval.mask_seed,
                                                                 available=prep.modalities))


# ------------------------------------------------------------------------------ the driver skeleton

@dataclass
class Study:
    """One invocation of a study, seen from its driver: its clock, its MLflow experiment and parent run.

    Created when the study's work starts (before Ray, so that its wall time and driver CPU count Ray's
    start); ``open`` touches MLflow only once the input is known good (a SQLite store is created when
    first opened).
    """

    uri: str
    name: str  # the study's name: its MLflow experiment
    started: float = field(default_factory=time.time, init=False)
    driver_cpu0: float = field(default_factory=time.process_time, init=False)
    client: Any = field(default=None, init=False, repr=False)
    experiment_id: str = field(default="", init=False)
    parent_run_id: str = field(default="", init=False)

    def open(self, *, run_name: str, tags: dict[str, str], params: dict[str, Any],
             resume_run_id: str | None = None) -> str:
        """The experiment (created here, in the driver, before any trial: creation races) and the parent
        run: a new one with ``tags`` and ``params``, or ``resume_run_id`` set RUNNING again. Its id."""
        self.client = tracking.client_for(self.uri)
        self.experiment_id = tracking.experiment_id(self.client, self.name,
                                                    artifact_root=tracking.artifact_root(self.uri, self.name))
        if resume_run_id:
            self.parent_run_id = resume_run_id
            self.client.update_run(resume_run_id, status="RUNNING")
        else:
            self.parent_run_id = self.client.create_run(self.experiment_id, run_name=run_name,
                                                        tags=tags).info.run_id
            tracking.log_params(self.client, self.parent_run_id, params)
        return self.parent_run_id

    def fit(self, make_tuner, tracker: tracking.TrialTracker):
        """``make_tuner().fit()``. Whatever happens (an error, Ctrl-C), no child run is left RUNNING, and a
        study that did not come back from ``fit`` has its parent run KILLED."""
        finished = False
        try:
            results = make_tuner().fit()
            finished = True
        finally:
            ended = tracker.close("KILLED")
            if not finished:
                self.client.set_terminated(self.parent_run_id, status="KILLED")
                if ended:
                    print(f"marked {ended} unfinished trial run(s) KILLED", file=sys.stderr)
        return results

    def finish(self, results, metrics: dict[str, float]) -> Spent:
        """Log ``metrics`` and the study's cost (``study/*``) on the parent run and end it: FINISHED, or
        KILLED when Tune came back with trials neither terminated nor errored (an interrupted study)."""
        spent = Spent(wall_s=time.time() - self.started, cost=study_cost(results),
                      driver_cpu_s=time.process_time() - self.driver_cpu0,
                      interrupted=results.num_terminated + results.num_errors < len(results))
        tracking.log_metrics(self.client, self.parent_run_id, {
            **metrics, "study/wall_time_s": spent.wall_s, "study/cpu_s": spent.cost["cost/cpu_s"],
            "study/driver_cpu_s": spent.driver_cpu_s, "study/gpu_s": spent.cost["cost/gpu_s"],
            "study/trial_wall_s": spent.cost["cost/wall_s"]}, step=0)
        self.client.set_terminated(self.parent_run_id, status="KILLED" if spent.interrupted else "FINISHED")
        return spent


@dataclass(frozen=True)
class Spent:
    """What a study cost and whether it ran to its end."""

    wall_s: float
    cost: dict[str, float]  # the trials' cost/cpu_s, cost/wall_s, cost/gpu_s, summed
    driver_cpu_s: float
    interrupted: bool

    def line(self, n: int, what: str) -> str:
        return cost_line(self.cost, wall_s=self.wall_s, driver_cpu_s=self.driver_cpu_s, n=n, what=what)


def study_cost(results) -> dict[str, float]:
    """Total CPU-, wall- and GPU-seconds of a study's trials (their last reports) from a Tune ResultGrid."""
    from studies.worker import COST_KEYS

    total = dict.fromkeys(COST_KEYS, 0.0)
    for r in results:
        for k in COST_KEYS:
            v = (r.metrics or {}).get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                total[k] += float(v)
    return total


def cost_line(cost: dict[str, float], *, wall_s: float, driver_cpu_s: float, n: int, what: str = "trials") -> str:
    return (f"cost: {n} {what}, {cost['cost/cpu_s']:.0f} CPU-s in {what} + {driver_cpu_s:.0f} CPU-s driver "
            f"({(cost['cost/cpu_s'] + driver_cpu_s) / 3600:.2f} CPU-h), {cost['cost/gpu_s']:.0f} GPU-s, "
            f"{wall_s / 60:.1f} min wall")


class ProgressPrinter(tune.Callback):
    """A few lines on stderr instead of Tune's tables: a status line whenever a trial ends, and at most
    every ``every_s`` seconds while trials run: trials done, running, stopped early and failed, the best
    objective so far and its trial, and the CPU-seconds spent."""

    def __init__(self, max_epochs: int, *, metric: str, name_fn=None, every_s: float = 30.0, total: int | None = None,
                 early_stopping: bool = True):
        self.max_epochs, self.metric, self.every_s, self.total = max_epochs, metric, every_s, total
        self.early_stopping = early_stopping
        self.name = name_fn or tracking.run_name
        self.start = self.last = time.time()
        self.best, self.best_name = float("-inf"), ""
        self.cpu: dict[str, float] = {}
        self.stopped = self.failed = 0

    def _line(self, text: str) -> None:
        print(f"[{(time.time() - self.start) / 60:5.1f} min] {text}", file=sys.stderr, flush=True)

    def _status(self, trials) -> str:
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        best = f"best {self.best:.4f} ({self.best_name})" if self.best_name else "best -"
        total = max(self.total or 0, len(trials))  # Tune creates trials lazily: the study knows how many
        return (f"{done}/{total} trials done ({self.stopped} stopped early, {self.failed} failed), "
                f"{running} running | {best} | {sum(self.cpu.values()):.0f} CPU-s")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value) and value > self.best:
            self.best, self.best_name = value, self.name(trial)
        if isinstance(result.get("cost/cpu_s"), (int, float)):
            self.cpu[trial.trial_id] = result["cost/cpu_s"]
        if time.time() - self.last >= self.every_s:
            self.last = time.time()
            self._line(self._status(trials))

    def on_trial_complete(self, iteration, trials, trial, **info):
        failed = tracking.failed_reason(trial)
        epochs = int((trial.last_result or {}).get("epoch", 0) or 0)
        if failed:
            self.failed += 1
            state = f"FAILED: {failed}"
        elif epochs < self.max_epochs and self.early_stopping:
            self.stopped += 1
            state = f"stopped after {epochs}/{self.max_epochs} epochs"
        else:
            state = "done"
        last = trial.last_result or {}
        value = last.get(self.metric, last.get(self.metric.removeprefix("best/")))  # a final report: no best/
        score = f" {value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else ""
        self.last = time.time()
        # a trial's status is still RUNNING inside this callback: count it as done
        self._line(f"{self.name(trial)} {state}{score}  |  " + self._status(
            [t if t is not trial else _Done() for t in trials]))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        self._line(f"{self.name(trial)} FAILED: {tracking.error_reason(trial)}")


class _Done:
    status = "TERMINATED"


class PlacementParams(tune.Callback):
    """Logs where each trial trained as params of its MLflow run (``ray.gpu_ids``, ``ray.device``), from the
    trial's first report (``studies.worker.PLACEMENT``): only the trial knows which GPU Ray gave it.

    The params are queued on ``tracker`` (``tracking.TrialTracker.log_params``: its MLflow thread, after
    the run's creation). A trial retried on another GPU keeps its first values (MLflow params are
    immutable).
    """

    def __init__(self, tracker: tracking.TrialTracker):
        self.tracker = tracker

    def on_trial_result(self, iteration, trials, trial, result, **info):
        import json

        from studies.worker import PLACEMENT

        if isinstance(result.get(PLACEMENT), str):
            self.tracker.log_params(trial, json.loads(result[PLACEMENT]))


class PlacementGroupReaper(tune.Callback):
    """Removes a Ray Train trial's worker placement group once the trial has ended (driver side).

    Works around ray#54305: Train V2 keeps the group reserved when Tune terminates the trial actor, so
    on a small cluster the next Train trials wait forever. The trial's rank-0 worker reports the group's
    id (``studies.worker.TRAIN_PG``); removing a group Train already removed is a no-op here.
    """

    def __init__(self):
        self.groups: dict[str, str] = {}
        self.removed = 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from studies.worker import TRAIN_PG

        if isinstance(result.get(TRAIN_PG), str):
            self.groups[trial.trial_id] = result[TRAIN_PG]

    def _reap(self, trial) -> None:
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

        hex_id = self.groups.pop(trial.trial_id, None)
        if hex_id is None:
            return
        state = placement_group_table().get(hex_id, {}).get("state")
        if state in (None, "REMOVED"):
            return
        remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(hex_id)))
        self.removed += 1

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._reap(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._reap(trial)
