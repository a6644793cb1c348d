"""The robustness study: chosen configurations x variants x seeds, evaluated on the test split.

    python studies/robustness.py --from-study fsrf-tune          # best config of a tuning study
    python studies/robustness.py --from-run <mlflow run id>       # ... or of its MLflow parent run
    python studies/robustness.py --config configs/default.yaml --seeds 5 --variants fsrf,no_dhf,no_das
    python studies/robustness.py --overlaps 0,0.5,1              # + the paired-mask overlap study (fsrf)
    python studies/robustness.py --smoke-test                    # 2 variants x 2 seeds, tiny, ~1 min
    python analysis/report.py --robustness-run <parent run id>   # then the report

Variants: ``fsrf`` (the configuration as given), ``no_dhf``, ``no_das``, ``no_noise`` (the ablation
switches of SPEC section 3) and ``late_fusion``, the complete-modality baseline: no factorization, no
alignment and no MRM (trained on complete inputs only). ``ridge`` (by name only) is ridge regression on
the frozen encoder's mean-pooled word states, the simplest baseline for the language path. Each variant is trained with N seeds (default
10), the runs in parallel on Ray; each run selects its epoch on validation and is then evaluated once
on the **test** split under every condition of SPEC section 2 (Table I conditions, the intra curve
p = 0.1..1.0, the burst curve). Every run is a nested MLflow child run of one robustness parent run;
synthetic ``fsrf`` runs also keep their test-set representations (R_ho, R_he, R_n and the true
latents) for the factorization probe. ``runs.parquet`` in the study folder has one row per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _cli import ROOT, run_main  # noqa: F401  (ROOT on sys.path for `studies`)

VARIANTS = ("fsrf", "no_dhf", "no_das", "no_noise", "late_fusion", "ridge")
DEFAULT_VARIANTS = VARIANTS[:5]  # ridge: add it by name (a text baseline, e.g. on real transcripts)
SMOKE = ["data.size_scale=0.05", "model.width=32", "model.seq_width=16", "train.epochs=2"]


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--from-study", metavar="NAME", help="use the best config of tuning study NAME (--tune-storage)")
    src.add_argument("--from-run", metavar="RUN_ID", help="use the best config logged on this MLflow parent run")
    ap.add_argument("--config", help="base run config YAML (alone, or under the tuned values)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list from {','.join(VARIANTS)}")
    ap.add_argument("--seeds", type=int, default=10, help="seeds per variant (default 10)")
    ap.add_argument("--overlaps", default="", help="extra fsrf runs at these missing.overlap values, e.g. 0,0.5,1")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
    ap.add_argument("--name", default="fsrf-robustness", help="MLflow experiment and Ray folder name")
    ap.add_argument("--tune-storage", default="runs/tune", help="where --from-study finds tuning studies")
    ap.add_argument("--storage", default="runs/robustness", help="Ray storage folder")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    ap.add_argument("--address", help="attach to a running Ray cluster (default: start a local one)")
    ap.add_argument("--cpus", type=float, default=None, help="CPUs for a local Ray (default: all cores)")
    ap.add_argument("--cpus-per-run", type=float, default=1.0)
    ap.add_argument("--max-failures", type=int, default=2)
    ap.add_argument("--smoke-test", action="store_true", help="fsrf + late_fusion x 2 seeds, tiny data")
    args = ap.parse_args(argv)
    if args.smoke_test:
        args.seeds = 2
        if args.variants == ",".join(DEFAULT_VARIANTS):
            args.variants = "fsrf,late_fusion"
        args.overrides = SMOKE + args.overrides
    return args


def variant_overrides(variant: str) -> dict:
    """The config changes that make a variant (SPEC section 3's switches; late fusion without MRM)."""
    return {"fsrf": {}, "no_dhf": {"model.dhf": False}, "no_das": {"model.das": False},
            "no_noise": {"model.noise": False},
            "late_fusion": {"model.dhf": False, "model.das": False, "missing.schedule": "constant",
                            "missing.p0": 0.0, "missing.p1": 0.0},
            "ridge": {"encoder.finetune": False}}[variant]


def tuned_values(args, uri: str) -> tuple[dict, str]:
    """The searched values of the chosen configuration and a description of where they came from."""
    from fsrf.errors import InputError

    if args.from_study:
        path = Path(args.tune_storage) / args.from_study / "summary.json"
        if not path.is_file():
            raise InputError(str(path), "--from-study", "no finished tuning study with this name")
        best = json.loads(path.read_text()).get("best_config") or {}
        if not best:
            raise InputError(str(path), "best_config", "the study has no finished trial")
        return best, f"study {args.from_study} (best configuration)"
    if args.from_run:
        from studies.tracking import client_for

        store = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if store is not None and not store.is_file():  # opening it would create an empty store
            raise InputError("--from-run", None, f"run {args.from_run} not found: no MLflow store at {store}")
        try:
            run = client_for(uri).get_run(args.from_run)
        except Exception as err:  # MlflowException: unknown id
            raise InputError("--from-run", None, f"run {args.from_run} not found ({type(err).__name__})") from None
        best = {k[len("best."):]: v for k, v in run.data.params.items() if k.startswith("best.")}
        if not best:
            raise InputError("--from-run", None, f"run {args.from_run} has no best.* params (not a tuning study?)")
        return best, f"MLflow run {args.from_run} (best configuration)"
    return {}, "config" if args.config else "defaults"


def run_specs(variants: list[str], seeds: int, overlaps: list[float], base_seed: int) -> list[dict]:
    specs = [{"variant": v, "seed": base_seed + i, "overlap": None} for v in variants for i in range(seeds)]
    specs += [{"variant": "fsrf", "seed": base_seed + i, "overlap": o} for o in overlaps for i in range(seeds)]
    return specs


def spec_name(spec: dict) -> str:
    ov = "" if spec["overlap"] is None else f"-overlap{spec['overlap']:g}"
    return f"{spec['variant']}{ov}-seed{spec['seed']:02d}"


def main(argv=None) -> int:
    args = parse(argv)
    from fsrf.config import apply_overrides, build_config, flatten, load_config
    from fsrf.errors import InputError

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise InputError("--variants", None, f"unknown variant {bad[0] if bad else '(none)'!r}; choose from {', '.join(VARIANTS)}")
    if args.seeds < 1:
        raise InputError("--seeds", None, f"must be >= 1, got {args.seeds}")
    try:
        overlaps = [float(x) for x in args.overlaps.split(",") if x.strip()]
    except ValueError:
        raise InputError("--overlaps", None, f"expected numbers in [0, 1], got {args.overlaps!r}") from None
    if any(not 0 <= o <= 1 for o in overlaps):
        raise InputError("--overlaps", None, f"values must lie in [0, 1], got {args.overlaps!r}")
    base_cfg = load_config(args.config, args.overrides)
    from studies import runtime, tracking  # imports Ray Tune (seconds): after the flags and config are good

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_reachable(uri)
    tuned, source = tuned_values(args, uri)
    raw = apply_overrides(base_cfg.model_dump(), {k: _typed(v) for k, v in tuned.items()})
    base = build_config(raw, where=source)
    epochs = args.epochs or base.train.epochs
    specs = run_specs(variants, args.seeds, overlaps, base.seed)
    for spec in specs:  # refuse a bad variant config before anything starts
        build_config(apply_overrides(base.model_dump(), {**variant_overrides(spec["variant"]), "seed": spec["seed"]}),
                     where=spec_name(spec))
    runtime.check_data(base)

    import ray  # noqa: F401
    from ray import tune

    from fsrf.manifest import code_state
    from studies import worker  # torch: only once the input is known to be good

    started, driver_cpu0 = time.time(), time.process_time()
    storage = Path(args.storage).resolve()
    study_dir = storage / args.name
    study_dir.mkdir(parents=True, exist_ok=True)
    total_cpus = runtime.start_ray(args.address, args.cpus)
    concurrent = max(1, int(total_cpus // args.cpus_per_run))
    settings = worker.TrialSettings(base=flatten(base), max_epochs=epochs, threads=max(1, int(args.cpus_per_run)),
                                    storage=str(storage), code=code_state(),
                                    study={"name": args.name, "kind": "robustness", "source": source})
    trainable = tune.with_resources(tune.with_parameters(worker.robustness_trainable, settings=settings),
                                    {"cpu": args.cpus_per_run})

    client = tracking.client_for(uri)  # only now: a SQLite store is created when first opened
    exp_id = tracking.experiment_id(client, args.name, artifact_root=tracking.artifact_root(uri, args.name))
    tags = {"fsrf.study": args.name, "fsrf.objective": "test protocol (SPEC section 2)",
            "fsrf.data": f"{base.data.source}/{base.data.preset}"}
    parent = client.create_run(exp_id, run_name=f"robustness-{args.name}",
                               tags={**tags, "fsrf.role": "robustness", "fsrf.source": source}).info.run_id
    study_params = {"study.name": args.name, "study.objective": tags["fsrf.objective"],
                    "study.variants": ",".join(variants), "study.seeds": args.seeds, "study.epochs": epochs,
                    "study.overlaps": args.overlaps or "None", "study.source": source,
                    "study.selection": "epoch with the best val/Non0_F1_score/objective"}
    tracking.log_params(client, parent, {**study_params, **{f"base.{k}": v for k, v in flatten(base).items()}})
    tracker = tracking.TrialTracker(uri=uri, experiment_id=exp_id, parent_run_id=parent,
                                    base_params={**flatten(base), **study_params},
                                    tags={**tags, "fsrf.role": "robustness-run"}, max_epochs=epochs,
                                    name_fn=lambda trial: spec_name(trial.config["spec"]),
                                    params_fn=lambda trial: _spec_params(trial.config["spec"]),
                                    tags_fn=lambda trial: {"fsrf.variant": trial.config["spec"]["variant"]},
                                    artifacts=("metrics.json", "representations.npz"), early_stopping=False)
    print(f"robustness study {args.name}: {len(specs)} runs ({', '.join(variants)} x {args.seeds} seeds"
          f"{' + overlaps ' + args.overlaps if overlaps else ''}), {epochs} epochs each, {concurrent} at a time; "
          f"config from {source}", file=sys.stderr, flush=True)
    status = "KILLED"
    try:
        results = tune.Tuner(
            trainable, param_space={"spec": tune.grid_search(specs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=args.name, storage_path=str(storage), verbose=0,
                                      callbacks=[tracker, tracking.ProgressPrinter(
                                          epochs, metric="best/val/Non0_F1_score/objective", total=len(specs),
                                          early_stopping=False,
                                          name_fn=lambda trial: spec_name(trial.config["spec"]))],
                                      failure_config=tune.FailureConfig(max_failures=args.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=5)),
        ).fit()
        status = "FINISHED"
    finally:
        tracker.close("KILLED")
        if status != "FINISHED":
            client.set_terminated(parent, status="KILLED")
    table = runs_table(results, tracker)
    table.write_parquet(study_dir / "runs.parquet")
    client.log_artifact(parent, str(study_dir / "runs.parquet"))
    wall = time.time() - started
    cost, driver_cpu = tracking.study_cost(results), time.process_time() - driver_cpu0
    tracking.log_metrics(client, parent, {"study/wall_time_s": wall, "study/runs": len(table),
                                          "study/errored": len(specs) - len(table), "study/cpu_s": cost["cost/cpu_s"],
                                          "study/driver_cpu_s": driver_cpu, "study/gpu_s": cost["cost/gpu_s"],
                                          "study/trial_wall_s": cost["cost/wall_s"]}, step=0)
    interrupted = results.num_terminated + results.num_errors < len(results)
    client.set_terminated(parent, status="KILLED" if interrupted else "FINISHED")
    print_summary(table, wall, len(specs))
    print(tracking.cost_line(cost, wall_s=wall, driver_cpu_s=driver_cpu, n=len(specs), what="runs"))
    if interrupted:
        print("the study was interrupted: the parent run is marked KILLED; its finished runs are kept", file=sys.stderr)
    print(f"report: python analysis/report.py --robustness-run {parent}"
          + ("" if args.tracking_uri is None else f" --tracking-uri {tracking.redact(uri)}"))
    return 0


def _typed(value):
    """MLflow params come back as strings: parse numbers and booleans, keep the rest."""
    if not isinstance(value, str):
        return value
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _spec_params(spec: dict) -> dict:
    """What a run changes in the base config: its variant's switches, its seed and overlap."""
    return {**variant_overrides(spec["variant"]), "variant": spec["variant"], "seed": spec["seed"],
            "missing.overlap": spec["overlap"]}


def runs_table(results, tracker):
    """One row per finished run: run_id, variant, seed, overlap and every test metric."""
    import polars as pl

    from studies.worker import FAILED_REASON

    rows = []
    for r in results:
        if r.error or not r.metrics or r.metrics.get(FAILED_REASON):
            continue
        spec = r.config["spec"]
        row = {"run_id": tracker.runs.get(r.metrics.get("trial_id")), "variant": spec["variant"],
               "seed": spec["seed"], "overlap": spec["overlap"], "best_epoch": r.metrics.get("best_epoch"),
               "cpu_s": r.metrics.get("cost/cpu_s"), "wall_s": r.metrics.get("cost/wall_s")}
        row.update({k: v for k, v in r.metrics.items() if k.startswith("test/")})
        rows.append(row)
    schema = {"run_id": pl.String, "variant": pl.String, "seed": pl.Int64, "overlap": pl.Float64}
    return pl.DataFrame(rows, schema_overrides=schema, infer_schema_length=None) if rows else pl.DataFrame(schema=schema)


def print_summary(table, wall: float, n_specs: int) -> None:
    import polars as pl

    print(f"\n{len(table)}/{n_specs} runs finished in {wall / 60:.1f} min; test Non0_F1_score, mean +- std over seeds:")
    cols = [c for c in ("lav", "avg_missing", "intra_avg", "l") if f"test/Non0_F1_score/{c}" in table.columns]
    plain = table.filter(pl.col("overlap").is_null())
    for (variant,), g in plain.group_by("variant", maintain_order=True):
        cells = "  ".join(f"{c} {g[f'test/Non0_F1_score/{c}'].mean():.4f}+-{(g[f'test/Non0_F1_score/{c}'].std() or 0):.4f}"
                          for c in cols)
        print(f"  {variant:12s} n={len(g):2d}  {cells}")


if __name__ == "__main__":
    run_main(main)
