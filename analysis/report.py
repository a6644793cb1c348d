"""Build the report of a robustness study: one self-contained HTML page, figures (PNG, SVG) and tables.

    python analysis/report.py --robustness-run <parent_run_id>                 # ./mlflow.db -> reports/robustness-<id[:8]>
    python analysis/report.py --robustness-run <parent_run_id> --tracking-uri sqlite:////abs/mlflow.db \\
        --study-dir runs/tune/fsrf-tune --out reports/mosi                      # with the tuning study's views
    python analysis/report.py --runs-parquet runs/robustness/<name>/runs.parquet --out reports/x   # no MLflow
    python analysis/report.py --robustness-run <id> --no-log                   # do not log the report to MLflow

Reads results only (MLflow through its API, or the study's ``runs.parquet``) and never trains. The out
folder gets ``report.html`` (figures embedded as base64 PNG, so the one file can be mailed), every
figure as PNG and SVG, every table as CSV (full precision), Markdown and LaTeX, and ``versions.json``.
The folder is written under a temporary name and renamed at the end, so a failure never leaves a
half-written report; an existing report of the same name is replaced. Unless ``--no-log``, the folder
is logged as the artifact folder ``report/`` of the robustness parent run.

The page's sections are written by ``analysis/sections.py`` (one function each, called in order by
``write_report``; a new section is an edit of that file alone). Sections whose input is missing (no
``--study-dir``, no ``representations.npz``, no overlap sweep, text-only data, no ``health/*`` metrics)
are replaced by a one-line note. The "Mechanism health" section (``analysis/health.py``) reads each run's
selected-epoch ``health/*`` metrics (SPEC section 7) and says per variant, by rules written on the page,
whether each mechanism (R_n, R_ho, R_he, DAS alignment) is working or degenerate and which loss terms
are inert. Text-only studies (``data.source=transcripts``) get both
word-drop curves when the runs carry ``zeroed_*`` (``eval.zeroed_curve``), the ``ridge`` baseline line, one
note on what needs two or more modalities, and, when the runs' ``data.name`` is mosi or mosei (read from
MLflow, so not with ``--runs-parquet`` alone), the paper's Table I ``{l}`` values as labelled references.
Bad input: ``error: <one line>``, exit code 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python analysis/report.py` from a checkout
    sys.path.insert(0, str(ROOT))

from analysis import load  # noqa: E402
from fsrf.errors import ArgumentParser, InputError, plain_name, run_main  # noqa: E402
from fsrf.protocol import HEADLINE  # noqa: E402

METRICS = ("Non0_F1_score", "Non0_acc_2", "Has0_F1_score", "Has0_acc_2", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr")


def parse(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--robustness-run", help="run id of the robustness study's MLflow parent run")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    ap.add_argument("--runs-parquet", help="the study's runs.parquet instead of (or as well as) MLflow's runs")
    ap.add_argument("--study-dir", help="a tuning study folder (runs/tune/<name>) for the tuning views")
    ap.add_argument("--out", help="output folder (default reports/robustness-<run id> or reports/<parquet folder>)")
    ap.add_argument("--metric", default=HEADLINE, help=f"headline metric of the tables and curves (default {HEADLINE})")
    ap.add_argument("--extra-metrics", default="", help="comma-separated metrics for extra Table I versions, e.g. MAE,Corr")
    ap.add_argument("--embedding", choices=("pca", "tsne"), default="pca", help="2-D embedding of Fig. 3 (default pca)")
    ap.add_argument("--no-log", action="store_true", help="do not log the report as artifacts of the parent run")
    args = ap.parse_args(argv)
    if not args.robustness_run and not args.runs_parquet:
        raise InputError("report", None, "pass --robustness-run <parent run id> or --runs-parquet <path>")
    if args.robustness_run:
        plain_name(args.robustness_run, "--robustness-run", becomes="the default out folder reports/robustness-<id>")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and (not out.is_dir() or (any(out.iterdir())
                                                                  and not (out / "report.html").is_file())):
        raise InputError("--out", None, f"{out} exists and is not a report folder (no report.html): a report "
                                        "replaces its out folder, so give a new or a report's folder")
    extra = [m.strip() for m in args.extra_metrics.split(",") if m.strip()]
    for flag, m in [("--metric", args.metric), *(("--extra-metrics", e) for e in extra)]:
        if m not in METRICS:
            raise InputError(flag, None, f"unknown metric {m!r}; one of {', '.join(METRICS)}")
    args.extra = [m for m in extra if m != args.metric]
    return args


def read_inputs(args):
    """Read every input before any work (and before the heavy imports), so bad input fails in seconds."""
    uri = load.resolve_tracking_uri(args.tracking_uri) if args.robustness_run else None
    if args.runs_parquet:
        runs, source = load.runs_from_parquet(args.runs_parquet), args.runs_parquet
    else:
        runs, source = load.runs_from_mlflow(uri, args.robustness_run), f"run {args.robustness_run}"
    config = reps = None
    if args.robustness_run:
        config = load.study_config(uri, args.robustness_run)
        reps = load.representations_from_mlflow(uri, args.robustness_run)
    study = load.trials_from_study(args.study_dir) if args.study_dir else None
    from analysis import yardsticks
    from analysis.sections import Inputs  # the heavy imports (torch, matplotlib, scipy) only now

    runs, note = yardsticks.add_ceiling(runs, config)  # synthetic studies: the closed-form ceiling's row
    return Inputs(runs=runs, source=source, config=config, representations=reps, study=study, ceiling_note=note)


def default_out(args) -> Path:
    if args.robustness_run:
        return Path("reports") / f"robustness-{args.robustness_run[:8]}"
    return Path("reports") / Path(args.runs_parquet).resolve().parent.name


def main(argv=None) -> int:
    args = parse(argv)
    inputs = read_inputs(args)
    from analysis.sections import write_report

    out = (Path(args.out) if args.out else default_out(args)).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_report(inputs, tmp, metric=args.metric, extra_metrics=args.extra, embedding=args.embedding)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():  # swap, so that the old report stays whole until the new one is complete
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    print(f"report: {out / 'report.html'}")
    if args.robustness_run and not args.no_log:
        client = load.mlflow_client(load.resolve_tracking_uri(args.tracking_uri))
        client.log_artifacts(args.robustness_run, str(out), artifact_path="report")
        print(f"logged to run {args.robustness_run} as artifacts report/")
    return 0


if __name__ == "__main__":
    run_main(main)
