"""The benchmark harness (schema, not timings: timings belong to the benchmark) and the GPU switches on CPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import ROOT, TINY, subprocess_env
from fsrf.config import load_config
from fsrf.train import fit

TINY_FIT = [*TINY, "train.epochs=1", "train.max_batches=3"]  # the machine's own thread count: not TINY_RUN


def test_benchmark_smoke_writes_every_figure_with_its_goal(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "studies" / "benchmark.py"), "--smoke-test", "--output", str(out)],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"cpus", "platform", "torch", "threads"} <= set(data["machine"])
    figures = data["figures"]
    assert set(figures) == {"step", "sinkhorn", "health", "text_cache", "protocol"}  # the smoke set
    main = {"step": "ratio", "sinkhorn": "share", "health": "ratio", "text_cache": "ratio", "protocol": "passes"}
    for name, key in main.items():
        fig = figures[name]
        assert set(fig[key]) == {"median", "iqr", "n"} and fig[key]["n"] >= 2
        assert math.isfinite(fig[key]["median"]) and fig[key]["median"] > 0 and fig[key]["iqr"] >= 0
        if name == "text_cache":  # retired goal: kept as information
            assert fig["goal"] == "information" and fig["goal_met"] is None
        else:
            assert fig["goal"].split()[0] in ("<=", ">=") and isinstance(fig["goal_met"], bool)
    assert 0 < figures["sinkhorn"]["share"]["median"] < 1  # a share of the step it belongs to
    assert figures["sinkhorn"]["feature"] == "divergence"  # the default feature term (SPEC 7)
    # Table I, intra, burst and the per-modality points: the test protocol of fit()
    from fsrf.protocol import conditions_for, per_modality_conditions

    assert figures["protocol"]["conditions"] == len(conditions_for()) == 22  # Table I, intra, burst
    assert figures["protocol"]["test_protocol_conditions"] == 22 + len(per_modality_conditions(
        ("l", "a", "v"), rates=load_config(None, []).eval.modality_rates))  # fit's test protocol
    assert figures["protocol"]["first_run_s"] > 0 and figures["step"]["warm_steps"] == 4
    assert "no GPU figures" in data["gpu"]["skipped"] and data["machine"]["device"] == "cpu"
    assert f"| step | {figures['step']['ratio']['median']:.3f} |" in proc.stdout  # the printed table


def test_bf16_autocast_runs_on_cpu_with_the_same_metrics_schema():
    plain = fit(load_config(None, TINY_FIT), evaluate_test=False, log=lambda s: None)
    bf16 = fit(load_config(None, [*TINY_FIT, "train.bf16=true"]), evaluate_test=False, log=lambda s: None)
    assert set(bf16.val) == set(plain.val)
    assert all(math.isfinite(v) for k, v in bf16.history[0].items() if k.startswith("train/"))
    assert bf16.history[0]["train/total"] != plain.history[0]["train/total"]  # autocast really changed the math


def _epochs(rows):
    """An epochs.parquet table from (trial, epoch, timestamp, best objective so far) rows."""
    import polars as pl

    return pl.DataFrame([{"trial_id": t, "epoch": e, "timestamp": ts, "time_total_s": float(e), BEST: b}
                         for t, e, ts, b in rows])


BEST = "best/val/Non0_F1_score/objective"


def test_search_ratio_counts_epochs_in_report_order_until_the_target():
    """By hand: random search, 2 configurations x 3 epochs, best 0.80 (target 0.784); ASHA's epochs in
    report order: a0 0.70, b0 0.60, a1 0.75, b1 0.65 (stopped), a2 0.79 >= 0.784 at its 5th epoch."""
    from studies.benchmark import search_progress, search_ratio

    random = _epochs([("r1", 1, 10, 0.5), ("r1", 2, 12, 0.6), ("r1", 3, 14, 0.8),
                      ("r2", 1, 11, 0.4), ("r2", 2, 13, 0.79), ("r2", 3, 15, 0.79)])
    asha = _epochs([("a", 3, 30, 0.79), ("a", 1, 10, 0.70), ("b", 1, 11, 0.60), ("a", 2, 20, 0.75),
                    ("b", 2, 21, 0.65)])  # stored out of order: the timestamps decide
    spent, best = search_progress(asha, objective=BEST)
    assert spent == [1, 2, 3, 4, 5] and best == [0.70, 0.70, 0.75, 0.75, 0.79]
    fig = search_ratio(asha, random, objective=BEST)
    assert fig["target"] == 0.98 * 0.8 and fig["epochs_to_target"] == 5
    assert fig["ratio"] == 5 / 6 and fig["random_epochs"] == 6 and fig["asha_epochs"] == 5
    assert fig["random_epochs_to_target"] == 4  # r2 reaches 0.79 at its second epoch, the 4th reported (t=13)
    import polars as pl

    never = search_ratio(asha.filter(pl.col("timestamp") < 30), random, objective=BEST)
    assert never["ratio"] is None and never["epochs_to_target"] is None


def test_gpu_check_without_cuda_is_one_error_line(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "studies" / "benchmark.py"), "--gpu-check", "--output", str(out)],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --gpu-check: this machine has no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine"]
    assert not out.exists()
