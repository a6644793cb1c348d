"""Search FSRF's loss weights, temperatures, Sinkhorn eps, noise priors and missing-rate schedule.

    python studies/tune_lambdas.py                        # default study: synthetic MOSI, local Ray, ~12 min
    python studies/tune_lambdas.py --smoke-test           # 2 tiny trials, about a minute with Ray start-up
    python studies/tune_lambdas.py --num-samples 64 --max-epochs 20 --address 10.0.0.5:6379 \\
        --tracking-uri http://10.0.0.5:5000               # on a cluster, with a shared tracking server
    python studies/tune_lambdas.py --resume               # continue an interrupted study
    python studies/tune_lambdas.py --seeds-per-config 3   # each configuration over 3 training seeds, select on the mean
    python studies/tune_lambdas.py --address auto --gpus-per-trial 0.25   # four trials share each GPU of a cluster
    python studies/tune_lambdas.py --dry-run --gpus 8 --gpus-per-trial 0.25   # the capacity plan; starts nothing
    mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db  # then open #/experiments/<id>/runs

Ray Tune runs the trials (OptunaSearch, seeded TPE; ASHA stops weak trials early on the per-epoch
validation objective; ``--sampler random --scheduler fifo`` is the plain random search that
``studies/benchmark.py --only search`` measures the default against). The objective is validation-only: the mean ``Non0_F1_score`` over ``lav``, the
six missing conditions and the ten intra-curve points at each trial's best epoch. Test metrics are
never computed here; they belong to the robustness study. ``--multi-objective`` searches complete-
modality F1 (``lav``) against ``avg_missing`` F1 and prints the Pareto front.

GPUs: ``--gpus-per-trial G`` gives every trial (with ``--workers-per-trial N``, every Ray Train worker)
G GPUs, a fraction when trials share one (0.25: four per GPU); the study runs as many trials at once
as the cluster's nodes hold by CPUs *and* GPUs, each trains on the GPU Ray assigned it (params
``ray.gpu_ids``, ``ray.device``) and ``train.use_gpu`` follows. ``--gpus N`` gives a local Ray N logical
GPUs (how the packing is tested on a CPU machine; no CUDA there: the trials say so and train on the
CPU). ``--dry-run`` prints the capacity plan (``studies/capacity.py``: measured memory per trial, trials
per GPU, trials per hour on 8 GPUs) and exits without starting or writing anything.

Seeds are an axis: ``--search-seed`` seeds the sampler, the config's ``seed`` the training, and
``--seeds-per-config K`` trains every proposed configuration with K training seeds (``seed``,
``seed+1``, ...; Tune's ``Repeater``): Optuna is told the mean over the K seeds and the study selects
the configuration with the best mean. ASHA would stop the K repeats of a configuration one by one, so
with K > 1 every trial runs its full ``--max-epochs``.

The Optuna study lives in ``<storage>/<name>/optuna.db`` (or ``--optuna-storage``, e.g. PostgreSQL on a
cluster): ``--resume`` continues its history and ``optuna-dashboard sqlite:///<that file>`` opens it.
Every trial is a nested MLflow child run of one parent run per invocation, with the study's params and
tags, a manifest (``fsrf.manifest``) and its cost in CPU-seconds; the study also writes
``trials.parquet`` (trials x params x best-epoch metrics), ``configs.parquet`` (per configuration: mean,
std and n over seeds) and ``epochs.parquet`` (per-epoch metrics) into its folder ``<storage>/<name>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if not __package__:  # `python studies/tune_lambdas.py` from a checkout: make `studies` and `fsrf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studies._cli import ROOT, run_main

SMOKE = ["data.size_scale=0.05", "model.width=32", "model.seq_width=16"]
GRACE = 3  # ASHA's default grace period (epochs), cut to --max-epochs when that is shorter
STATE_FILE = "fsrf_study.json"  # in the study folder: the MLflow parent run that --resume continues


def parse(argv=None) -> argparse.Namespace:
    from fsrf.errors import ArgumentParser

    ap = ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="base run config YAML (default: built-in defaults)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a base config field, e.g. data.preset=mosei (repeatable)")
    ap.add_argument("--space", default=str(ROOT / "configs" / "search_space.yaml"), help="search space YAML")
    ap.add_argument("--name", default="fsrf-tune", help="study name: MLflow experiment and Ray folder")
    ap.add_argument("--num-samples", type=int, default=24,
                    help="configurations to try (default 24); trials = this x --seeds-per-config")
    ap.add_argument("--max-epochs", type=int, default=12, help="epochs of a trial that ASHA never stops (default 12)")
    ap.add_argument("--grace-period", type=int, default=None,
                    help=f"ASHA: epochs before a trial can be stopped (default {GRACE}, at most --max-epochs)")
    ap.add_argument("--search-seed", type=int, default=0, help="seed of the sampler (not of training)")
    ap.add_argument("--sampler", choices=("tpe", "random"), default="tpe",
                    help="Optuna sampler: tpe (default) or random (the baseline a search is measured against)")
    ap.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                    help="asha (default: stops weak trials early) or fifo (every trial runs --max-epochs)")
    ap.add_argument("--seeds-per-config", type=int, default=1,
                    help="training seeds per configuration; the study selects on their mean (default 1)")
    ap.add_argument("--optuna-storage", help="Optuna storage URL (default sqlite:///<storage>/<name>/optuna.db)")
    ap.add_argument("--time-budget", type=float, default=None, help="stop the study after this many minutes")
    ap.add_argument("--multi-objective", action="store_true", help="search lav F1 against avg_missing F1")
    ap.add_argument("--workers-per-trial", type=int, default=0,
                    help="0: plain function trainable (default, cheapest); N: Ray Train TorchTrainer with N workers")
    ap.add_argument("--cpus", type=float, default=None, help="CPUs for a local Ray (default: all cores)")
    ap.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs held by one trial (default 1)")
    ap.add_argument("--gpus", type=float, default=None,
                    help="logical GPUs of a local Ray (default: those Ray finds); with --dry-run: the cluster's (default 8)")
    ap.add_argument("--gpus-per-trial", type=float, default=None,
                    help="GPUs held by one trial, or by each Train worker: a share of one GPU (0.25: four trials per "
                         "GPU) or whole GPUs (default 0: CPU only); train.use_gpu follows")
    ap.add_argument("--gpus-per-worker", type=float, default=None, help=argparse.SUPPRESS)  # former name of --gpus-per-trial
    ap.add_argument("--dry-run", action="store_true",
                    help="print the capacity plan (memory per trial, trials per GPU, trials per hour) and exit")
    ap.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial from its checkpoint")
    ap.add_argument("--address", help="attach to a running Ray cluster (default: start a local one)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    ap.add_argument("--storage", default="runs/tune", help="Ray storage folder (default runs/tune)")
    ap.add_argument("--resume", action="store_true", help="continue the study named --name from --storage")
    ap.add_argument("--smoke-test", action="store_true", help="2 tiny trials x 2 epochs")
    args = ap.parse_args(argv)
    if args.smoke_test:
        args.num_samples, args.max_epochs, args.grace_period = 2, 2, 1
        args.overrides = SMOKE + args.overrides
    return args


def multi_objective() -> list[str]:
    """What ``--multi-objective`` maximises: the selected epoch's complete-modality (``lav``) and
    ``avg_missing`` F1 (the single objective is ``fsrf.protocol.BEST_OBJECTIVE``)."""
    # imported here, as BEST_OBJECTIVE is in the functions that use it: fsrf.protocol imports torch and
    # scikit-learn (seconds), and a bad flag is refused before that
    from fsrf.protocol import HEADLINE

    return [f"best/val/{HEADLINE}/lav", f"best/val/{HEADLINE}/avg_missing"]


def validate(args) -> None:
    """Refuse a bad flag, and flags that contradict each other, naming the flag, before anything is read,
    written or started; fill in what follows from the others (the grace period, the GPUs per trial).
    Looks at the command line only (the cluster files' commands are checked with it)."""
    from fsrf.errors import InputError, plain_name

    def bad(flag: str, message: str):
        raise InputError(flag, None, message)

    for flag, value, low in (("--num-samples", args.num_samples, 1), ("--max-epochs", args.max_epochs, 1),
                             ("--seeds-per-config", args.seeds_per_config, 1), ("--workers-per-trial", args.workers_per_trial, 0),
                             ("--max-failures", args.max_failures, 0), ("--search-seed", args.search_seed, 0)):
        if value < low:
            bad(flag, f"must be >= {low}, got {value}")
    for flag, value in (("--cpus-per-trial", args.cpus_per_trial), ("--cpus", args.cpus), ("--time-budget", args.time_budget)):
        if value is not None and not value > 0:  # `not >`: NaN too
            bad(flag, f"must be > 0, got {value:g}")
    for flag, value in (("--gpus", args.gpus), ("--gpus-per-trial", args.gpus_per_trial),
                        ("--gpus-per-worker", args.gpus_per_worker)):
        if value is not None and not value >= 0:
            bad(flag, f"must be >= 0, got {value:g}")
    plain_name(args.name, "--name", becomes=f"the folder {args.storage}/<name> and the MLflow experiment <name>")
    # the grace period: ASHA's, cut to a short study's length unless given; given, it must fit the study
    fifo = "--multi-objective" if args.multi_objective else "--seeds-per-config" if args.seeds_per_config > 1 else None
    if args.grace_period is None:
        args.grace_period = min(GRACE, args.max_epochs)
    elif not args.smoke_test:
        if args.grace_period < 1:
            bad("--grace-period", f"must be >= 1, got {args.grace_period}")
        if args.grace_period > args.max_epochs:
            bad("--grace-period", f"{args.grace_period} is longer than --max-epochs {args.max_epochs}: ASHA could "
                                  f"never stop a trial (give at most {args.max_epochs})")
        if fifo:
            bad("--grace-period", f"applies to ASHA, and {fifo} runs every trial to --max-epochs (FIFO)")
    if args.seeds_per_config > 1 and args.multi_objective:
        bad("--seeds-per-config", "selects a configuration on its mean objective over seeds; --multi-objective "
                                  "has two objectives and a Pareto front of trials: give one of them")
    # GPUs: --gpus-per-worker is the former name of --gpus-per-trial
    if args.gpus_per_worker is not None:
        if args.gpus_per_trial is not None and args.gpus_per_trial != args.gpus_per_worker:
            bad("--gpus-per-worker", "is the former name of --gpus-per-trial: give one")
        args.gpus_per_trial = args.gpus_per_worker
    args.gpus_per_trial = args.gpus_per_trial or 0.0
    gpt = args.gpus_per_trial
    if gpt > 1 and gpt != int(gpt):
        bad("--gpus-per-trial", f"{gpt:g} is neither a share of one GPU (<= 1) nor whole GPUs: Ray gives a trial "
                                "one or the other")
    if args.address:
        for flag, value, what in (("--cpus", args.cpus, "CPUs"), ("--gpus", args.gpus, "GPUs")):
            if value is not None:
                bad(flag, f"sizes a local Ray; with --address the cluster has its own {what}")
    if args.cpus is not None and args.cpus_per_trial > args.cpus + 1e-9:
        bad("--cpus-per-trial", f"{args.cpus_per_trial:g} is more than --cpus {args.cpus:g}: no trial could ever start")
    local_cores = os.cpu_count() or 1  # what a local Ray gets without --cpus (a dry run's cluster: no limit)
    if args.cpus is None and not args.address and not args.dry_run and args.cpus_per_trial > local_cores + 1e-9:
        bad("--cpus-per-trial", f"{args.cpus_per_trial:g} is more than this machine's {local_cores} cores (the local "
                                "Ray's): no trial could ever start")
    if args.gpus is not None and gpt > 0:
        from studies.capacity import gpu_slots

        need = max(1, args.workers_per_trial)
        if gpu_slots(args.gpus, gpt) < need:
            held = f"{need} workers x {gpt:g}" if args.workers_per_trial else f"{gpt:g}"
            bad("--gpus-per-trial", f"a trial needs {held} GPU, more than --gpus {args.gpus:g} holds: no trial could "
                                    "ever start")
    if args.gpus and not gpt and not args.dry_run:
        bad("--gpus", f"gives the local Ray {args.gpus:g} GPUs but no trial holds one: add --gpus-per-trial")


def main(argv=None, *, trainable=None) -> int:
    """The study. ``trainable`` replaces the worker's trial function (``studies.worker``); the
    fault-tolerance tests pass one that makes one trial's loss NaN (``tests/nan_study.py``)."""
    args = parse(argv)
    validate(args)
    from fsrf import variants
    from fsrf.config import flatten, load_config
    from fsrf.errors import InputError
    from studies import space as space_mod

    base = load_config(args.config, args.overrides)
    if args.multi_objective and base.data.source == "transcripts":
        raise InputError("--multi-objective", None, "needs audio and vision (lav against avg_missing); "
                         "transcripts data has only the language modality")
    gpt = args.gpus_per_trial
    if base.train.use_gpu and not gpt:
        raise InputError("train.use_gpu", None, "is set but no trial holds a GPU: give --gpus-per-trial "
                                                "(a share of a GPU per trial, e.g. 0.25)")
    # train.use_gpu follows --gpus-per-trial: in every trial, its params and its manifest
    base = load_config(args.config, [*args.overrides, f"train.use_gpu={'true' if gpt else 'false'}"])
    space = space_mod.load_space(args.space, base)
    if args.dry_run:
        from studies import capacity

        print(capacity.plan(base, max_epochs=args.max_epochs, gpus=capacity.CLUSTER_GPUS if args.gpus is None else args.gpus,
                            grace=None if _fifo(args) else args.grace_period,
                            gpus_per_trial=gpt, cpus=args.cpus, cpus_per_trial=args.cpus_per_trial,
                            workers=args.workers_per_trial))
        return 0
    if gpt and not args.address and args.gpus is None:
        import torch

        if not torch.cuda.device_count():  # Ray would find none either, and every trial would wait forever
            raise InputError("--gpus-per-trial", None, "this machine has no GPU for the local Ray: give --gpus N "
                                                       "(logical GPUs) or the --address of a cluster with GPUs")
    if args.gpus_per_worker is not None:
        print("note: --gpus-per-worker is the former name of --gpus-per-trial", file=sys.stderr)
    from studies import runtime, tracking  # imports Ray Tune (seconds): after the config and space are good

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_reachable(uri)
    storage = Path(args.storage).resolve()
    study_dir = storage / args.name
    optuna_url, optuna_store = _check_before_ray(args, base, study_dir)

    import ray

    from fsrf.manifest import ROLE_STUDY, ROLE_TAG
    from fsrf.protocol import BEST_OBJECTIVE

    study = runtime.Study(uri, args.name)
    total_cpus = runtime.start_ray(args.address, args.cpus, args.gpus)
    concurrent = _concurrency(args, runtime.node_resources())
    repeats = args.seeds_per_config
    objective_name = ",".join(multi_objective()) if args.multi_objective else BEST_OBJECTIVE
    study_info = {"name": args.name, "objective": objective_name, "seeds_per_config": repeats,
                  "scheduler": "FIFO" if _fifo(args) else "ASHA"}
    trial_fn = _trainable(args, base, storage, study_info, trainable)
    study_tags = {"fsrf.study": args.name, "fsrf.objective": objective_name,
                  "fsrf.data": f"{base.data.source}/{base.data.preset}", "fsrf.variant": variants.of_config(flatten(base))}
    study_params = _study_params(args, space, objective=objective_name, scheduler=study_info["scheduler"],
                                 optuna_url=optuna_url)
    state_file = study_dir / STATE_FILE
    study_dir.mkdir(parents=True, exist_ok=True)  # not made yet with a shared --optuna-storage
    parent = study.open(run_name=f"study-{args.name}", tags={**study_tags, ROLE_TAG: ROLE_STUDY},
                        params={**study_params, **{f"space.{k}": v for k, v in space.describe().items()},
                                **{f"base.{k}": v for k, v in flatten(base).items()}},
                        resume_run_id=json.loads(state_file.read_text())["parent_run_id"] if args.resume else None)
    if not args.resume:
        study.client.log_dict(parent, {"params": space.describe(), "start_with_base": space.start_with_base},
                              "search_space.json")
    tracker = tracking.TrialTracker(uri=uri, experiment_id=study.experiment_id, parent_run_id=parent,
                                    base_params={**flatten(base), **study_params}, tags=study_tags,
                                    max_epochs=args.max_epochs, params_fn=_trial_params(base.seed),
                                    time_budget_s=args.time_budget * 60 if args.time_budget else None)
    placement = runtime.PlacementParams(tracker)  # queues on the tracker's MLflow thread
    total_gpus = float(ray.cluster_resources().get("GPU", 0))
    gpus = f" and {total_gpus:g} GPUs ({gpt:g} per {'worker' if args.workers_per_trial else 'trial'})" if gpt else ""
    print(f"study {args.name}: {args.num_samples} configurations x {repeats} seed(s) x <= {args.max_epochs} epochs, "
          f"{concurrent} at a time "
          f"on {total_cpus:g} CPUs{gpus} ({'Ray Train, %d worker(s)' % args.workers_per_trial if args.workers_per_trial else 'function trainable'})",
          file=sys.stderr, flush=True)
    if not args.resume:  # --resume finds the parent run here
        state_file.write_text(json.dumps({"parent_run_id": parent, "experiment_id": study.experiment_id,
                                          "uri": tracking.redact(uri)}))
    results = study.fit(lambda: _tuner(args, trial_fn, space=space, base=base, optuna_store=optuna_store,
                                       scheduler=study_info["scheduler"], concurrent=concurrent,
                                       callbacks=[tracker, placement], study_dir=study_dir), tracker)

    summary = summarise(results, space, study_dir, multi=args.multi_objective, base_seed=base.seed)
    tracking.log_params(study.client, parent, {f"best.{k}": v for k, v in summary["best_config"].items()})
    for f in ("trials.parquet", "configs.parquet", "epochs.parquet", "summary.json"):
        study.client.log_artifact(parent, str(study_dir / f))
    spent = study.finish(results, {**summary["best_metrics"], "study/trials": summary["trials"],
                                   "study/errored": summary["errored"]})
    _print_summary(summary, spent.wall_s, uri, study.experiment_id, study_dir)
    print(spent.line(summary["trials"], "trials"))
    print(f"Optuna study: {tracking.redact(optuna_url)} (study {args.name!r}; optuna-dashboard opens it)")
    if spent.interrupted:
        print("the study was interrupted: continue it with --resume", file=sys.stderr)
    all_failed = summary["trials"] and summary["errored"] == summary["trials"]
    if all_failed:
        print("error: every trial failed (see the FAILED runs' fsrf.stop_reason in MLflow)", file=sys.stderr)
    ray.shutdown()
    return 1 if all_failed else 0


def _fifo(args) -> bool:
    """Every trial runs --max-epochs (no ASHA): asked for, or needed by the multi-objective search and by
    repeated seeds (ASHA would stop a configuration's repeats one by one)."""
    return args.multi_objective or args.seeds_per_config > 1 or args.scheduler == "fifo"


def _concurrency(args, nodes: list[tuple[float, float]]) -> int:
    """Trials at once on the cluster's ``nodes`` (CPUs, GPUs) by CPUs and GPUs
    (``studies.capacity.trials_at_once``); none fitting is refused, naming the flag that asks too much
    (Ray would otherwise wait forever)."""
    import ray

    from fsrf.errors import InputError
    from studies.capacity import trials_at_once

    kw = dict(cpus_per_trial=args.cpus_per_trial, workers=args.workers_per_trial)
    n = trials_at_once(nodes, gpus_per_trial=args.gpus_per_trial, **kw)
    if n >= 1:
        return int(n)
    ray.shutdown()  # a cluster is only disconnected from
    have = ", ".join(f"{c:g} CPUs/{g:g} GPUs" for c, g in nodes)
    if trials_at_once(nodes, gpus_per_trial=0.0, **kw) < 1:
        raise InputError("--cpus-per-trial", None, f"{args.cpus_per_trial:g} CPUs per trial fit on no node ({have})")
    raise InputError("--gpus-per-trial", None, f"{args.gpus_per_trial:g} GPUs per "
                     f"{'worker' if args.workers_per_trial else 'trial'} fit on no node ({have})")


def _check_before_ray(args, base, study_dir: Path) -> tuple[str, object]:
    """Refuse, once the config and space are good, what else can be wrong, in an order that leaves no
    file behind a refused study: the study folder against ``--resume``/``--name``, a shared Optuna
    store, the data; then the study's own Optuna SQLite file is created. Returns the Optuna storage's URL
    (without a password) and the opened storage."""
    from fsrf.errors import InputError
    from studies import runtime, tracking

    state_file = study_dir / STATE_FILE
    if args.resume and not state_file.is_file():
        raise InputError(str(study_dir), "--resume", "no study to resume here (run without --resume first)")
    if not args.resume and state_file.is_file():
        raise InputError(str(study_dir), "--name", "a study of this name exists: pass --resume, or a new --name")
    # a password in the URL moves to the environment (PGPASSWORD), out of Tune's pickled searcher state
    url = tracking.credentials_to_env(args.optuna_storage) if args.optuna_storage \
        else f"sqlite:///{study_dir / 'optuna.db'}"
    if args.optuna_storage:  # a shared store: checked first, like the tracking server
        store = optuna_storage(url, name=args.name, resume=args.resume)
    runtime.check_data(base)
    if not args.optuna_storage:  # the study's own SQLite file: created only once the input is known good
        study_dir.mkdir(parents=True, exist_ok=True)
        store = optuna_storage(url, name=args.name, resume=args.resume)
    return url, store


def _study_params(args, space, *, objective: str, scheduler: str, optuna_url: str) -> dict:
    """The study's settings as MLflow params (on the parent run and repeated on every trial's run)."""
    from fsrf.protocol import SELECTION_RULE

    from studies.tracking import redact

    return {"study.name": args.name, "study.objective": objective,
            "study.num_samples": args.num_samples, "study.max_epochs": args.max_epochs,
            "study.search_seed": args.search_seed, "study.sampler": args.sampler,
            "study.seeds_per_config": args.seeds_per_config,
            "study.scheduler": scheduler, "study.workers_per_trial": args.workers_per_trial,
            "study.cpus_per_trial": args.cpus_per_trial, "study.gpus_per_trial": args.gpus_per_trial,
            "study.multi_objective": args.multi_objective, "study.searched": ",".join(space.names),
            "study.optuna_storage": redact(optuna_url), "study.selection": SELECTION_RULE}


def _trainable(args, base, storage: Path, study_info: dict, trial_fn=None):
    """The trial function with its settings and the resources one trial holds."""
    from ray import tune

    from fsrf.config import flatten
    from fsrf.manifest import code_state
    from fsrf.protocol import BEST_OBJECTIVE
    from studies import worker  # torch: only once the input is known to be good

    if args.workers_per_trial:
        # The trial process only drives the TorchTrainer: a sliver of CPU; the workers hold the rest.
        # Train V2 workers reserve their own resources (ScalingConfig), outside the trial's: reserving
        # worker bundles here too would hold them twice and the worker group would never start.
        per_worker = max(0.1, args.cpus_per_trial - 0.1) / args.workers_per_trial
        resources = {"cpu": 0.1}
    else:
        per_worker = args.cpus_per_trial
        resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    settings = worker.TrialSettings(base=flatten(base), max_epochs=args.max_epochs,
                                    threads=max(1, int(per_worker)), workers=args.workers_per_trial,
                                    cpus_per_worker=per_worker, use_gpu=args.gpus_per_trial > 0,
                                    gpus_per_worker=args.gpus_per_trial,
                                    storage=str(storage), metrics=tuple(multi_objective()) if args.multi_objective else (BEST_OBJECTIVE,),
                                    code=code_state(), search_seed=args.search_seed, study=study_info)
    trial_fn = trial_fn or (worker.train_trainable if args.workers_per_trial else worker.function_trainable)
    return tune.with_resources(tune.with_parameters(trial_fn, settings=settings), resources)


def _trial_params(base_seed: int):
    """A trial's own MLflow params: its sampled values, its training seed and which seed of its
    configuration it is."""
    from studies import worker

    def params(trial) -> dict:
        sampled = {k: v for k, v in trial.config.items() if "." in k}
        return {**sampled, "seed": worker.trial_seed(base_seed, trial.config),
                "study.seed_index": worker.repeat_index(trial.config)}

    return params


def _tuner(args, trainable, *, space, base, optuna_store, scheduler: str, concurrent: int, callbacks: list,
           study_dir: Path):
    """A new Tuner (OptunaSearch, ASHA or FIFO), or the interrupted one restored for ``--resume``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter, Repeater
    from ray.tune.search.optuna import OptunaSearch

    from fsrf.config import flatten
    from fsrf.protocol import BEST_OBJECTIVE
    from studies import runtime

    if args.resume:
        return tune.Tuner.restore(str(study_dir), trainable=trainable, resume_errored=True)
    repeats = args.seeds_per_config
    metric, mode = (multi_objective(), ["max", "max"]) if args.multi_objective else (BEST_OBJECTIVE, "max")
    base_point = [{k: flatten(base)[k] for k in space.names}] if space.start_with_base else None
    # Single objective: metric/mode go to TuneConfig, which hands them to the searcher and to ASHA.
    optuna_kw = dict(metric=metric, mode=mode) if args.multi_objective else {}
    if args.sampler == "random":
        import optuna as optuna_lib

        optuna_kw["sampler"] = optuna_lib.samplers.RandomSampler(seed=args.search_seed)  # seeded here, not below
    optuna = OptunaSearch(seed=None if "sampler" in optuna_kw else args.search_seed, points_to_evaluate=base_point, study_name=args.name,
                          storage=optuna_store, **optuna_kw)
    searcher = ConcurrencyLimiter(Repeater(optuna, repeat=repeats, set_index=True) if repeats > 1 else optuna,
                                  max_concurrent=concurrent)
    sched = FIFOScheduler() if scheduler == "FIFO" else ASHAScheduler(
        time_attr="epoch", max_t=args.max_epochs, grace_period=args.grace_period, reduction_factor=3)
    run_config = tune.RunConfig(
        name=args.name, storage_path=str(study_dir.parent), verbose=0,
        callbacks=[*callbacks, *runtime.loggers(), runtime.ProgressPrinter(args.max_epochs, metric=BEST_OBJECTIVE,
                                                       total=args.num_samples * repeats)]
        + ([runtime.PlacementGroupReaper()] if args.workers_per_trial else []),
        failure_config=tune.FailureConfig(max_failures=args.max_failures),
        # Keep several: Tune deletes old checkpoints before its (lagging) experiment state is synced, and
        # a driver killed in between resumes a trial from a deleted one (then the trial fails).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=5))
    return tune.Tuner(trainable, param_space=space.tune_space(),
                      tune_config=tune.TuneConfig(search_alg=searcher, scheduler=sched,
                                                  reuse_actors=not args.workers_per_trial,
                                                  num_samples=args.num_samples * repeats,
                                                  time_budget_s=args.time_budget * 60 if args.time_budget else None,
                                                  max_concurrent_trials=concurrent,
                                                  metric=None if args.multi_objective else metric,
                                                  mode=None if args.multi_objective else mode),
                      run_config=run_config)


def optuna_storage(url: str, *, name: str, resume: bool):
    """The searcher's persistent Optuna storage (SQLite or PostgreSQL URL); a bad URL fails in one line,
    and so does a new study whose name the storage already holds (it would inherit that history)."""
    import optuna

    from fsrf.errors import InputError
    from studies.tracking import redact

    try:
        storage = optuna.storages.RDBStorage(url)
        names = optuna.study.get_all_study_names(storage)
    except Exception as err:  # sqlalchemy's errors vary by dialect; the message says what is wrong
        raise InputError("--optuna-storage", None, f"cannot open {redact(url)}: {str(err).splitlines()[0]}") from None
    if name in names and not resume:
        raise InputError("--optuna-storage", None, f"{redact(url)} already holds an Optuna study {name!r}: "
                         "pass --resume, or a new --name")
    return storage


def summarise(results, space, study_dir: Path, *, multi: bool, base_seed: int = 0) -> dict:
    """Write the trial, configuration and per-epoch tables; pick the best configuration by its mean
    objective over seeds (or the Pareto front of trials)."""
    import polars as pl

    from fsrf.protocol import BEST_OBJECTIVE
    from studies.worker import FAILED_REASON, trial_seed

    multi_metrics = multi_objective()

    rows, epochs = [], []
    for r in results:
        trial_id = r.metrics.get("trial_id") if r.metrics else None
        last = r.metrics or {}
        failed = last.get(FAILED_REASON)  # stopped by a non-finite loss: an error without an exception
        hist = r.metrics_dataframe
        if hist is not None and len(hist):
            h = pl.from_pandas(hist)
            if FAILED_REASON in h.columns:  # the failure report is not an epoch (and may be the only row)
                h = h.filter(pl.col(FAILED_REASON).is_null())
            if len(h) and "epoch" in h.columns:
                # a trial resumed mid-way reports its re-run epochs again: keep the last report of each epoch
                h = h.with_columns(pl.col("epoch").cast(pl.Int64)).unique(subset=["epoch"], keep="last",
                                                                          maintain_order=True)
                keep = [c for c in h.columns
                        if c.startswith(("val/Non0_F1_score/", "train/", "best/"))
                        or c in ("epoch", "trial_id", "timestamp", "time_total_s")]
                epochs.append(h.select(keep))
                trial_id = trial_id or h["trial_id"][0]
                if failed:
                    last = h.row(-1, named=True)
        if failed:
            last = {"epoch": last.get("epoch", 0), "best_epoch": last.get("best_epoch", 0)}
        error = failed or (str(r.error).splitlines()[-1][:500] if r.error else None)
        row = {"trial_id": trial_id, "status": "ERROR" if error else "TERMINATED", "error": error,
               "seed": trial_seed(base_seed, r.config),
               "epochs": int(last.get("epoch", 0) or 0), "best_epoch": int(last.get("best_epoch", 0) or 0),
               "cpu_s": last.get("cost/cpu_s"), "wall_s": last.get("cost/wall_s")}
        row.update({k: r.config.get(k) for k in space.names})
        row.update({k: last.get(k) for k in (BEST_OBJECTIVE, *multi_metrics)})
        rows.append(row)
    # one configuration = one set of searched values (its seeds differ): numbered in order of appearance
    ids: dict[tuple, int] = {}
    for row in rows:
        row["config_id"] = ids.setdefault(tuple(repr(row[k]) for k in space.names), len(ids) + 1)
    trials = pl.DataFrame(rows, infer_schema_length=None, schema_overrides={"config_id": pl.Int64})
    trials.write_parquet(study_dir / "trials.parquet")
    all_epochs = pl.concat(epochs, how="diagonal_relaxed") if epochs else pl.DataFrame()
    all_epochs.write_parquet(study_dir / "epochs.parquet")
    done = trials.filter(pl.col(BEST_OBJECTIVE).is_not_null())
    configs = config_table(done, space.names)
    configs.write_parquet(study_dir / "configs.parquet")
    summary = {"trials": len(trials), "errored": int((trials["status"] == "ERROR").sum()), "best_config": {},
               "best_metrics": {}, "pareto": [], "configs": len(configs)}
    if len(configs):
        best = configs.row(0, named=True)  # sorted: best mean objective first
        summary["best_trial"] = done.filter(pl.col("config_id") == best["config_id"]).sort(
            BEST_OBJECTIVE, descending=True)["trial_id"][0]
        summary["best_config"] = {k: best[k] for k in space.names}
        summary["best_metrics"] = {k: best[k] for k in (BEST_OBJECTIVE, *multi_metrics) if best[k] is not None}
        summary["best_seeds"] = {"n": best["n_seeds"], "std": best["objective_std"]}
        if multi:
            summary["pareto"] = pareto_front(done, multi_metrics).to_dicts()
    (study_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def config_table(trials, names: list[str]):
    """Per configuration: the mean of each metric over its seeds (named as the metric), the objective's
    std over seeds and the number of seeds, best mean objective first."""
    import polars as pl

    from fsrf.protocol import BEST_OBJECTIVE

    if not len(trials):
        return pl.DataFrame({"config_id": [], "n_seeds": [], BEST_OBJECTIVE: [], "objective_std": []},
                            schema={"config_id": pl.Int64, "n_seeds": pl.UInt32, BEST_OBJECTIVE: pl.Float64,
                                    "objective_std": pl.Float64})
    metrics = [m for m in (BEST_OBJECTIVE, *multi_objective()) if m in trials.columns]
    return (trials.group_by("config_id", maintain_order=True)
            .agg(pl.len().alias("n_seeds"), *[pl.first(n) for n in names], *[pl.col(m).mean() for m in metrics],
                 pl.col(BEST_OBJECTIVE).std().alias("objective_std"))
            .sort(BEST_OBJECTIVE, descending=True))


def pareto_front(df, cols: list[str]):
    """Rows not dominated by any other row (all ``cols`` maximised)."""
    import polars as pl

    vals = df.select(cols).to_numpy()
    keep = [not any((o >= v).all() and (o > v).any() for o in vals) for v in vals]
    return df.filter(pl.Series(keep)).sort(cols[0], descending=True)


def _print_summary(summary: dict, wall: float, uri: str, exp_id: str, study_dir: Path) -> None:
    from fsrf.protocol import BEST_OBJECTIVE

    lav, avg_missing = multi_objective()
    print(f"\n{summary['trials']} trials ({summary['errored']} errored) in {wall / 60:.1f} min")
    if summary["best_config"]:
        seeds = summary.get("best_seeds", {"n": 1, "std": None})
        spread = f" +- {seeds['std']:.4f} (std over {seeds['n']} seeds, mean shown)" if seeds["n"] > 1 else ""
        print(f"best configuration (trial {summary['best_trial']}): {BEST_OBJECTIVE} = "
              f"{summary['best_metrics'].get(BEST_OBJECTIVE, float('nan')):.4f}{spread}")
        for k, v in summary["best_config"].items():
            print(f"  {k} = {v}")
    if summary["pareto"]:
        print("Pareto front (lav F1 vs avg_missing F1):")
        for row in summary["pareto"]:
            print(f"  {row['trial_id']}: lav {row[lav]:.4f}  avg_missing {row[avg_missing]:.4f}")
    from studies.tracking import redact

    ui = redact(uri) if uri.startswith("http") else f"mlflow ui --backend-store-uri {redact(uri)}"
    print(f"tables: {study_dir}/trials.parquet, epochs.parquet\nMLflow: {ui}  ->  #/experiments/{exp_id}/runs")


if __name__ == "__main__":
    run_main(main)
