"""The robustness study: chosen configurations x variants x seeds, evaluated on the test split.

    python studies/robustness.py --from-study fsrf-tune          # best config of a tuning study
    python studies/robustness.py --from-run <mlflow run id>       # ... or of its MLflow parent run
    python studies/robustness.py --config configs/default.yaml --seeds 5 --variants fsrf,no_dhf,no_das
    python studies/robustness.py --overlaps 0,0.5,1              # + the paired-mask overlap study (fsrf)
    python studies/robustness.py --fair --tune-trials 12          # fair ablations: each variant tuned by its own study
    python studies/robustness.py --train-rates 0,0.3,0.5,0.7,0.9   # the train-rate x test-rate grid
    python studies/robustness.py --smoke-test                    # 2 variants x 2 seeds, tiny, ~1 min
    python analysis/report.py --robustness-run <parent run id>   # then the report

Variants are the entries of ``fsrf/variants.py``: ``fsrf`` (the configuration as given), the ablation
switches of SPEC section 3 (``no_dhf``, ``no_das``, ``no_noise``) and the baselines, ``late_fusion``
(no factorization, no alignment and no MRM: trained on complete inputs only) and ``ridge`` (by name
only: ridge regression on the frozen encoder's mean-pooled word states, the simplest baseline for the
language path). Each variant is trained with N seeds (default 10), the runs in parallel on Ray; each
run selects its epoch on validation and is then evaluated once on the **test** split under every
condition of SPEC section 2 (Table I conditions, the intra curve p = 0.1..1.0, the burst curve). Every
run is a nested MLflow child run of one robustness parent run; synthetic ``fsrf`` runs also keep their
test-set representations (R_ho, R_he, R_n and the true latents) for the factorization probe.
``runs.parquet`` in the study folder has one row per run.

Ablation modes. **shared** (the default): every variant runs with the one configuration given (the
config, or a tuning study's best for FSRF), as the field's papers do. **fair** (``--fair``): every
variant first gets its own tuning study (``studies/tune_lambdas.py`` on validation, named
``<name>-tune-<variant>``) with the same budget: ``--tune-trials`` configurations, ``--tune-epochs``
epochs, the same ``--search-seed`` and search space, minus the params the variant itself fixes
(late fusion's ``missing.*``); each variant then runs with its own best configuration. Closed-form
variants (ridge) have nothing to tune. The parent run records the mode (``study.ablation_mode``) and
the report says it.

The train-rate x test-rate grid (``--train-rates``, MuteBench arXiv 2605.15235): every variant and seed
is also trained at each constant training rate r (``missing.schedule=constant``, ``missing.p0=r``;
the rate wins over a variant's own ``missing.*``) and tested on the whole protocol; the report draws,
per variant, the test intra-rate against the training rate, marking cells whose test rate exceeds
the training maximum.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # `python studies/robustness.py` from a checkout: make `studies` and `fsrf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fsrf import variants
from fsrf.errors import ArgumentParser, InputError, plain_name
from studies._cli import run_main

SMOKE = ["data.size_scale=0.05", "model.width=32", "model.seq_width=16", "train.epochs=2"]
SMOKE_VARIANTS = "fsrf,late_fusion"


def parse(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--from-study", metavar="NAME", help="use the best config of tuning study NAME (--tune-storage)")
    src.add_argument("--from-run", metavar="RUN_ID", help="use the best config logged on this MLflow parent run")
    ap.add_argument("--config", help="base run config YAML (alone, or under the tuned values)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--variants", default=",".join(variants.DEFAULT), help=f"comma list from {','.join(variants.RUNNABLE)}")
    ap.add_argument("--seeds", type=int, default=10, help="seeds per variant (default 10)")
    ap.add_argument("--overlaps", default="", help="extra fsrf runs at these missing.overlap values, e.g. 0,0.5,1")
    ap.add_argument("--train-rates", default="", help="train every variant at these constant missing rates too "
                                                       "(the train x test grid), e.g. 0,0.3,0.5,0.7,0.9")
    fair = ap.add_argument_group("fair ablations (--fair)")
    fair.add_argument("--fair", action="store_true", help="tune every variant by its own study (same budget) "
                                                          "and run it with its own best config")
    fair.add_argument("--tune-trials", type=int, default=None, help="configurations per variant's study (default 12)")
    fair.add_argument("--tune-epochs", type=int, default=None, help="max epochs of a tuning trial (default: --epochs)")
    fair.add_argument("--search-seed", type=int, default=None, help="TPE seed, the same for every variant (default 0)")
    fair.add_argument("--space", default=None, help="search space YAML (default configs/search_space.yaml)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
    ap.add_argument("--name", default="fsrf-robustness", help="MLflow experiment and Ray folder name")
    ap.add_argument("--tune-storage", default="runs/tune", help="where --from-study finds tuning studies")
    ap.add_argument("--storage", default="runs/robustness", help="Ray storage folder")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    ap.add_argument("--address", help="attach to a running Ray cluster (default: start a local one)")
    ap.add_argument("--cpus", type=float, default=None, help="CPUs for a local Ray (default: all cores)")
    ap.add_argument("--cpus-per-run", type=float, default=1.0)
    ap.add_argument("--max-failures", type=int, default=2)
    ap.add_argument("--smoke-test", action="store_true", help=f"{SMOKE_VARIANTS.replace(',', ' + ')} x 2 seeds, tiny data")
    args = ap.parse_args(argv)
    if args.smoke_test:
        args.seeds = 2
        if args.variants == ",".join(variants.DEFAULT):
            args.variants = SMOKE_VARIANTS
        args.overrides = SMOKE + args.overrides
    return args


def _rates(text: str, flag: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(flag, None, f"expected numbers in [0, 1], got {text!r}") from None
    if any(not 0 <= v <= 1 for v in values):
        raise InputError(flag, None, f"values must lie in [0, 1], got {text!r}")
    if len(set(values)) != len(values):
        raise InputError(flag, None, f"values repeat, got {text!r}")
    return values


def checked(args) -> tuple[list[str], list[float]]:
    """The variants and overlap values of the command line; a bad one is refused naming its flag (the
    train rates are ``args.rates``), and so is a flag that contradicts another, before anything is
    written or started."""
    try:
        names = variants.parse_list(args.variants)
    except ValueError as err:
        raise InputError("--variants", None, str(err)) from None
    if args.seeds < 1:
        raise InputError("--seeds", None, f"must be >= 1, got {args.seeds}")
    overlaps = _rates(args.overlaps, "--overlaps")
    args.rates = _rates(args.train_rates, "--train-rates")
    plain_name(args.name, "--name", becomes=f"the folder {args.storage}/<name>, the MLflow experiment <name> and, "
                                            "with --fair, the tuning studies <name>-tune-<variant>")
    for flag, value, low in (("--epochs", args.epochs, 1), ("--cpus", args.cpus, 1e-9),
                             ("--cpus-per-run", args.cpus_per_run, 1e-9), ("--max-failures", args.max_failures, 0)):
        if value is not None and value < low:
            raise InputError(flag, None, f"must be {'> 0' if low < 1 else f'>= {low}'}, got {value}")
    if args.cpus is not None and args.address:
        raise InputError("--cpus", None, "sizes a local Ray; with --address the cluster has its own CPUs")
    if args.cpus is not None and args.cpus_per_run > args.cpus:
        raise InputError("--cpus-per-run", None, f"{args.cpus_per_run:g} is more than --cpus {args.cpus:g}: "
                                                 "no run could ever start")
    if overlaps and variants.REFERENCE not in names:
        raise InputError("--overlaps", None, f"the overlap study trains {variants.REFERENCE}: add it to --variants")
    if args.rates and all(variants.get(v).closed_form for v in names):
        raise InputError("--train-rates", None, "every variant given is closed form (no training): nothing to grid")
    fair_only = [flag for flag, value in (("--tune-trials", args.tune_trials), ("--tune-epochs", args.tune_epochs),
                                          ("--search-seed", args.search_seed), ("--space", args.space))
                 if value is not None]
    if fair_only and not args.fair:
        raise InputError(fair_only[0], None, "only applies with --fair (each variant its own tuning study)")
    if args.fair:
        if args.from_study or args.from_run:
            raise InputError("--fair", None, "tunes every variant itself: give no --from-study/--from-run")
        args.tune_trials = 12 if args.tune_trials is None else args.tune_trials
        args.search_seed = 0 if args.search_seed is None else args.search_seed
        if args.tune_trials < 1:
            raise InputError("--tune-trials", None, f"must be >= 1, got {args.tune_trials}")
        if args.tune_epochs is not None and args.tune_epochs < 1:
            raise InputError("--tune-epochs", None, f"must be >= 1, got {args.tune_epochs}")
        if args.space is not None and not Path(args.space).is_file():
            raise InputError(args.space, "--space", "search space file not found")
    return names, overlaps


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


def run_specs(names: list[str], seeds: int, overlaps: list[float], base_seed: int, *,
              train_rates: list[float] = (), tuned: dict[str, dict] | None = None) -> list[dict]:
    """One spec per run: variant, seed, overlap (None: independent views), train_rate (None: the
    config's schedule) and, in fair mode, the variant's own tuned values."""
    tuned = tuned or {}

    def spec(v, i, overlap=None, rate=None):
        return {"variant": v, "seed": base_seed + i, "overlap": overlap, "train_rate": rate, "tuned": tuned.get(v, {})}

    specs = [spec(v, i) for v in names for i in range(seeds)]
    # the paired-mask overlap study is about the full model
    specs += [spec(variants.REFERENCE, i, overlap=o) for o in overlaps for i in range(seeds)]
    specs += [spec(v, i, rate=r) for v in names if not variants.get(v).closed_form for r in train_rates
              for i in range(seeds)]
    return specs


def spec_name(spec: dict) -> str:
    ov = "" if spec["overlap"] is None else f"-overlap{spec['overlap']:g}"
    tr = "" if spec.get("train_rate") is None else f"-train{spec['train_rate']:g}"
    return f"{spec['variant']}{ov}{tr}-seed{spec['seed']:02d}"


def variant_space(space_path: str, variant: variants.Variant, folder: Path) -> str:
    """The search space of a variant's own tuning study: the shared space minus the params the variant
    fixes (its overrides), written to ``folder``; the shared file itself when it fixes none."""
    from fsrf.config import read_yaml_mapping

    raw = read_yaml_mapping(space_path, what="search space file", mapping="a mapping with a 'params' section")
    params = {k: v for k, v in (raw.get("params") or {}).items() if k not in variant.overrides}
    if len(params) == len(raw.get("params") or {}):
        return space_path
    import yaml

    out = folder / f"space-{variant.name}.yaml"
    out.write_text(yaml.safe_dump({**raw, "params": params}, sort_keys=False))
    return str(out)


def fair_tuning(args, names: list[str], uri: str, epochs: int) -> tuple[dict[str, dict], dict[str, str]]:
    """Fair mode: one tuning study per variant with the same budget; returns each variant's best values
    (empty for closed-form variants) and its study's name. Each study is a ``studies/tune_lambdas.py``
    run (own MLflow parent run and Optuna store under ``--tune-storage``), selecting on validation only."""
    import tempfile

    from fsrf.errors import InputError
    from studies import tune_lambdas

    space = args.space or str(tune_lambdas.ROOT / "configs" / "search_space.yaml")
    tuned, studies = {}, {}
    folder = Path(tempfile.mkdtemp(prefix="fsrf-fair-"))
    for name in names:
        variant = variants.get(name)
        if variant.closed_form:
            tuned[name] = {}
            continue
        study = f"{args.name}-tune-{name}"
        argv = ["--name", study, "--num-samples", str(args.tune_trials), "--max-epochs", str(args.tune_epochs or epochs),
                "--grace-period", str(min(3, args.tune_epochs or epochs)), "--search-seed", str(args.search_seed),
                "--space", variant_space(space, variant, folder), "--storage", args.tune_storage,
                "--tracking-uri", uri, "--cpus-per-trial", str(args.cpus_per_run)]
        argv += ["--config", args.config] if args.config else []
        argv += ["--address", args.address] if args.address else ["--cpus", str(args.cpus)] if args.cpus else []
        for override in [*args.overrides, *(f"{k}={v}" for k, v in variant.overrides.items())]:
            argv += ["--set", override]
        print(f"fair ablations: tuning {name} ({args.tune_trials} trials, <= {args.tune_epochs or epochs} epochs, "
              f"search seed {args.search_seed})", file=sys.stderr, flush=True)
        if tune_lambdas.main(argv) != 0:
            raise InputError("--fair", None, f"the tuning study of {name} ({study}) failed: no best config")
        summary = json.loads((Path(args.tune_storage) / study / "summary.json").read_text())
        tuned[name], studies[name] = summary.get("best_config") or {}, study
    return tuned, studies


def main(argv=None) -> int:
    args = parse(argv)
    names, overlaps = checked(args)
    from fsrf.config import apply_overrides, build_config, flatten, load_config, parse_value

    base_cfg = load_config(args.config, args.overrides)
    from studies import runtime, tracking  # imports Ray Tune (seconds): after the flags and config are good

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_reachable(uri)
    tuned, source = tuned_values(args, uri)
    # MLflow params (--from-run) are strings: read back the way --set values are
    base = build_config(apply_overrides(base_cfg.model_dump(), {k: parse_value(v) for k, v in tuned.items()}),
                        where=source)
    epochs = args.epochs or base.train.epochs
    specs = run_specs(names, args.seeds, overlaps, base.seed, train_rates=args.rates)
    for spec in specs:  # refuse a bad variant config before anything starts
        build_config(apply_overrides(base.model_dump(), _config_changes(spec)), where=spec_name(spec))
    runtime.check_data(base)
    mode, tuning_studies = "shared", {}
    if args.fair:
        per_variant, tuning_studies = fair_tuning(args, names, uri, epochs)
        specs = run_specs(names, args.seeds, overlaps, base.seed, train_rates=args.rates, tuned=per_variant)
        mode, source = "fair", f"each variant's own tuning study ({args.name}-tune-<variant>)"

    from ray import tune

    from fsrf.manifest import ROLE_ROBUSTNESS, ROLE_ROBUSTNESS_RUN, ROLE_TAG, code_state
    from fsrf.protocol import BEST_OBJECTIVE, SELECTION_RULE
    from studies import worker  # torch: only once the input is known to be good

    study = runtime.Study(uri, args.name)
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

    tags = {"fsrf.study": args.name, "fsrf.objective": "test protocol (SPEC section 2)",
            "fsrf.data": f"{base.data.source}/{base.data.preset}"}
    study_params = {"study.name": args.name, "study.objective": tags["fsrf.objective"],
                    "study.variants": ",".join(names), "study.seeds": args.seeds, "study.epochs": epochs,
                    "study.overlaps": args.overlaps or "None", "study.source": source,
                    "study.selection": SELECTION_RULE, "study.ablation_mode": mode,
                    "study.train_rates": args.train_rates or "None"}
    if args.fair:
        study_params.update({"study.fair_trials": args.tune_trials, "study.fair_epochs": args.tune_epochs or epochs,
                             "study.fair_search_seed": args.search_seed,
                             "study.fair_studies": ",".join(f"{v}:{s}" for v, s in tuning_studies.items())})
    parent = study.open(run_name=f"robustness-{args.name}",
                        tags={**tags, ROLE_TAG: ROLE_ROBUSTNESS, "fsrf.source": source},
                        params={**study_params, **{f"base.{k}": v for k, v in flatten(base).items()}})
    tracker = tracking.TrialTracker(uri=uri, experiment_id=study.experiment_id, parent_run_id=parent,
                                    base_params={**flatten(base), **study_params},
                                    tags={**tags, ROLE_TAG: ROLE_ROBUSTNESS_RUN}, max_epochs=epochs,
                                    name_fn=lambda trial: spec_name(trial.config["spec"]),
                                    params_fn=lambda trial: _spec_params(trial.config["spec"]),
                                    tags_fn=lambda trial: {"fsrf.variant": trial.config["spec"]["variant"]},
                                    artifacts=("metrics.json", "representations.npz"), early_stopping=False)
    print(f"robustness study {args.name}: {len(specs)} runs ({', '.join(names)} x {args.seeds} seeds"
          f"{' + overlaps ' + args.overlaps if overlaps else ''}{' + train rates ' + args.train_rates if args.rates else ''})"
          f", {epochs} epochs each, {concurrent} at a time; {mode} ablations, config from {source}",
          file=sys.stderr, flush=True)
    results = study.fit(lambda: tune.Tuner(
        trainable, param_space={"spec": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name=args.name, storage_path=str(storage), verbose=0,
                                  callbacks=[tracker, *runtime.loggers(), runtime.ProgressPrinter(
                                      epochs, metric=BEST_OBJECTIVE, total=len(specs), early_stopping=False,
                                      name_fn=lambda trial: spec_name(trial.config["spec"]))],
                                  failure_config=tune.FailureConfig(max_failures=args.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=5))), tracker)

    table = runs_table(results, tracker)
    table.write_parquet(study_dir / "runs.parquet")
    study.client.log_artifact(parent, str(study_dir / "runs.parquet"))
    spent = study.finish(results, {"study/runs": len(table), "study/errored": len(specs) - len(table)})
    print_summary(table, spent.wall_s, len(specs))
    print(spent.line(len(specs), "runs"))
    if spent.interrupted:
        print("the study was interrupted: the parent run is marked KILLED; its finished runs are kept", file=sys.stderr)
    print(f"report: python analysis/report.py --robustness-run {parent}"
          + ("" if args.tracking_uri is None else f" --tracking-uri {tracking.redact(uri)}"))
    return 0


def _config_changes(spec: dict) -> dict:
    return variants.run_overrides(spec["variant"], seed=spec["seed"], overlap=spec["overlap"],
                                  train_rate=spec.get("train_rate"), tuned=spec.get("tuned"))


def _spec_params(spec: dict) -> dict:
    """What a run changes in the base config (``variants.run_overrides``), with its variant and training rate."""
    return {**_config_changes(spec), "variant": spec["variant"], "train_rate": spec.get("train_rate")}


def runs_table(results, tracker):
    """One row per finished run (one that reached its test protocol: an interrupted study's unfinished runs
    have per-epoch metrics only and are left out): run_id, variant, seed, overlap, every test metric and the selected epoch's
    mechanism health (``health/...``; none for a closed-form variant)."""
    import polars as pl

    from studies.worker import FAILED_REASON

    rows = []
    for r in results:
        if r.error or not r.metrics or r.metrics.get(FAILED_REASON):
            continue
        if not any(k.startswith("test/") for k in r.metrics):  # interrupted before its test protocol
            continue
        spec = r.config["spec"]
        row = {"run_id": tracker.runs.get(r.metrics.get("trial_id")), "variant": spec["variant"],
               "seed": spec["seed"], "overlap": spec["overlap"], "train_rate": spec.get("train_rate"),
               "best_epoch": r.metrics.get("best_epoch"),
               "cpu_s": r.metrics.get("cost/cpu_s"), "wall_s": r.metrics.get("cost/wall_s")}
        row.update({k: v for k, v in r.metrics.items() if k.startswith(("test/", "health/"))})
        rows.append(row)
    schema = {"run_id": pl.String, "variant": pl.String, "seed": pl.Int64, "overlap": pl.Float64,
              "train_rate": pl.Float64}
    return pl.DataFrame(rows, schema_overrides=schema, infer_schema_length=None) if rows else pl.DataFrame(schema=schema)


def print_summary(table, wall: float, n_specs: int) -> None:
    import polars as pl

    from fsrf.protocol import HEADLINE

    print(f"\n{len(table)}/{n_specs} runs finished in {wall / 60:.1f} min; test {HEADLINE}, mean +- std over seeds:")
    cols = [c for c in ("lav", "avg_missing", "intra_avg", "l") if f"test/{HEADLINE}/{c}" in table.columns]
    plain = table.filter(pl.col("overlap").is_null() & pl.col("train_rate").is_null())
    for (variant,), g in plain.group_by("variant", maintain_order=True):
        cells = "  ".join(f"{c} {g[f'test/{HEADLINE}/{c}'].mean():.4f}+-{(g[f'test/{HEADLINE}/{c}'].std() or 0):.4f}"
                          for c in cols)
        print(f"  {variant:12s} n={len(g):2d}  {cells}")


if __name__ == "__main__":
    run_main(main)
