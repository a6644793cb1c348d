"""Train and evaluate one FSRF configuration.

    python studies/train.py                                   # default: synthetic MOSI-sized data, < 3 min
    python studies/train.py --smoke-test                      # seconds: tiny data, 2 epochs
    python studies/train.py --config configs/default.yaml --set loss.lambda1=0.3 --set seed=1 --output runs/x
    python studies/train.py --manifest runs/x/manifest.json --output runs/rerun   # re-run, compare metrics

Writes ``<output>/metrics.json``: validation and test metrics under every condition of the protocol
(Table I conditions with avg_missing, the intra curve with intra_avg, the burst curve) at the epoch with
the best validation objective, the config, the per-epoch history and the wall time; and
``<output>/manifest.json`` (``fsrf.manifest``): code commit, package versions, seeds, data fingerprint,
encoder, config and outcome. ``--manifest`` re-runs the run a manifest describes (one of these files,
or the ``manifest.json`` artifact of a tuning trial or robustness run in MLflow): it refuses to run
when the data or the encoder differ, warns when code or packages differ, trains for the epochs the
original ran (a trial stopped early by ASHA is re-run for as many epochs, under the same schedule) and
compares every metric the manifest holds: exit 0 when all are equal, 1 when any differs. Bad input
exits 2 with one line naming the file or field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if not __package__:  # `python studies/train.py` from a checkout: make `studies` and `fsrf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fsrf.errors import ArgumentParser
from studies._cli import run_main

SMOKE = ["data.size_scale=0.05", "train.epochs=2", "model.width=32", "model.seq_width=16"]


def parse(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--config", help="YAML config (default: built-in defaults)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field by its dotted name, e.g. loss.lambda1=0.3 (repeatable)")
    ap.add_argument("--output", default="runs/train", help="folder for metrics.json (default: runs/train)")
    ap.add_argument("--smoke-test", action="store_true", help="tiny data and 2 epochs: finishes in seconds")
    ap.add_argument("--manifest", help="re-run the run described by this manifest.json and compare its metrics")
    args = ap.parse_args(argv)
    if args.manifest and (args.config or args.overrides or args.smoke_test):
        ap.error("--manifest takes the whole run from the manifest: no --config, --set or --smoke-test with it")
    return args


class _Stop(Exception):
    """Ends a re-run after the epochs its original ran."""


def main(argv=None) -> int:
    args = parse(argv)
    from fsrf.config import load_config
    from fsrf.errors import InputError

    from fsrf import manifest as manifest_mod

    # Every input is checked before the heavy imports and before the first line of output.
    original = None
    if args.manifest:
        original, cfg = manifest_mod.read(args.manifest)
    else:
        cfg = load_config(args.config, (SMOKE if args.smoke_test else []) + args.overrides)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InputError(str(out), "--output", "exists and is not a folder")
    from fsrf.data import load_dataset

    splits = load_dataset(cfg.data)
    from fsrf.protocol import HEADLINE
    from fsrf.train import fit, prepare

    prep = prepare(cfg, splits=splits)
    code = manifest_mod.code_state()
    epochs = cfg.train.epochs
    if original is not None:
        errors, warnings = manifest_mod.drift(original, data_fingerprint=prep.data_fingerprint,
                                              encoder_id=prep.encoder_id, code=code)
        if errors:
            raise InputError(args.manifest, "data" if "data" in errors[0] else "encoder", errors[0])
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        epochs = int((original.get("outcome") or {}).get("epochs_run") or epochs)
    print(f"fsrf: data={cfg.data.source}/{cfg.data.preset} epochs={cfg.train.epochs} seed={cfg.seed} "
          f"dhf={cfg.model.dhf} das={cfg.model.das} noise={cfg.model.noise}", file=sys.stderr)
    if epochs < cfg.train.epochs:
        return rerun_partial(cfg, prep, original, epochs)
    last: dict = {}
    result = fit(cfg, prep=prep, report=lambda epoch, metrics, state: last.update(metrics))
    record = manifest_mod.complete(
        manifest_mod.build(cfg, data_fingerprint=prep.data_fingerprint, encoder_id=prep.encoder_id, code=code),
        epochs_run=len(result.history), best_epoch=result.best_epoch + 1, stop_reason=result.stop_reason,
        metrics={**{k: v for k, v in last.items() if k.startswith("best/")}, **result.val, **result.test})
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".metrics.json.{os.getpid()}"
    tmp.write_text(json.dumps(result.to_json(cfg), indent=1))
    tmp.replace(out / "metrics.json")  # never a half-written metrics.json
    manifest_mod.write(record, out / "manifest.json")
    t = result.test
    keys = ["lav", "avg_missing", "intra_avg", "burst_avg"] if len(result.prepared.modalities) == 3 \
        else ["l", "intra_avg", "burst_avg"]
    print(f"best epoch {result.best_epoch + 1}; test {HEADLINE}: " +
          "  ".join(f"{k} {t[f'test/{HEADLINE}/{k}']:.4f}" for k in keys))
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {out / 'metrics.json'} and manifest.json ({result.wall_time_s:.0f} s)")
    if original is not None:
        return compare(original, record["outcome"]["metrics"])
    return 0


def rerun_partial(cfg, prep, original: dict, epochs: int) -> int:
    """Re-run a trial that was stopped after ``epochs`` epochs: the same schedule (it depends on the
    configured ``train.epochs``), stopped at the same point, compared on its validation metrics."""
    from fsrf.train import fit

    last: dict = {}

    def report(epoch: int, metrics: dict, state) -> None:
        last.clear()
        last.update(metrics)
        if epoch + 1 >= epochs:
            raise _Stop

    print(f"re-running the first {epochs} of {cfg.train.epochs} epochs (the original stopped there)", file=sys.stderr)
    try:
        fit(cfg, prep=prep, report=report, evaluate_test=False)
    except _Stop:
        pass
    return compare(original, last)


def compare(original: dict, now: dict[str, float], *, tol: float = 1e-9) -> int:
    """Every metric of the manifest's outcome against the re-run's: 0 if all equal within ``tol``."""
    want = {k: v for k, v in ((original.get("outcome") or {}).get("metrics") or {}).items()
            if not k.startswith("cost/")}
    shared = sorted(set(want) & set(now))
    if not shared:
        print("nothing to compare: the manifest holds no metrics this re-run computes")
        return 0 if not want else 1
    diffs = {k: abs(float(now[k]) - float(want[k])) for k in shared}
    worst = max(diffs, key=diffs.get)
    bad = [k for k, d in diffs.items() if not d <= tol]
    if bad:
        print(f"NOT reproduced: {len(bad)}/{len(shared)} metrics differ; largest {worst}: "
              f"{want[worst]:.6f} -> {now[worst]:.6f}")
        return 1
    print(f"reproduced: {len(shared)} metrics equal to the manifest's (max |difference| {diffs[worst]:.1e})")
    return 0


if __name__ == "__main__":
    run_main(main)
