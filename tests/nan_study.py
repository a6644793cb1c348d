"""The tuning study with one trial whose loss turns NaN: the driver the fault-tolerance tests run.

    python tests/nan_study.py 2 --name s --num-samples 4 ...     # trial 2 NaN; the rest: tune_lambdas.py's options

The production command line has no switch for this. This script runs the real driver
(``studies.tune_lambdas.main``) with a trainable that is the real function trainable, except that
trial N trains on NaN labels: its task loss, and the total with it, turn NaN in the first batch, and the
trial goes down the real failure path (``fit`` raises ``FloatingPointError``, the trainable's last
report carries the reason, the MLflow run ends FAILED, the study goes on). The config stays valid: a
NaN loss weight would be refused by the config itself.
"""

from __future__ import annotations

import dataclasses
import os
import sys

NAN_TRIAL = int(sys.argv[1])


def trial_index(ctx) -> int:
    """Tune's 1-based trial counter (the MLflow tag ``fsrf.trial_index``): the number after the trial id
    in the trial folder's name (``<trainable>_<id>_<index>_<params>``)."""
    name, tid = os.path.basename(ctx.get_trial_dir() or ""), ctx.get_trial_id() or ""
    tail = name.split(f"{tid}_", 1)[-1].split("_", 1)[0] if tid and f"{tid}_" in name else ""
    return int(tail) if tail.isdigit() else 0


def nan_labels(prep):
    """``prep`` with NaN training labels (a copy: the worker's cache keeps the good tensors)."""
    import torch

    from fsrf.train import SplitTensors

    train = prep.splits["train"]
    bad = SplitTensors(train.inputs, torch.full_like(train.labels, float("nan")))
    return dataclasses.replace(prep, splits={**prep.splits, "train": bad})


def trainable(config, settings):
    """``worker.function_trainable``; trial NAN_TRIAL's data come with NaN labels. (Defined in
    ``__main__``: Ray ships it to the trial processes by value.)"""
    from ray import tune

    from studies import worker

    if trial_index(tune.get_context()) == NAN_TRIAL:
        worker.function_trainable(config, settings, prepare=lambda cfg: nan_labels(worker.prepared_for(cfg)))
    else:
        worker.function_trainable(config, settings)


if __name__ == "__main__":
    from studies import tune_lambdas
    from studies._cli import run_main

    run_main(lambda: tune_lambdas.main(sys.argv[2:], trainable=trainable))
