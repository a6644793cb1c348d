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
    assert set(figures) == {"step", "sinkhorn", "text_cache", "protocol"}  # the smoke set
    main = {"step": "ratio", "sinkhorn": "share", "text_cache": "ratio", "protocol": "passes"}
    for name, key in main.items():
        fig = figures[name]
        assert set(fig[key]) == {"median", "iqr", "n"} and fig[key]["n"] >= 2
        assert math.isfinite(fig[key]["median"]) and fig[key]["median"] > 0 and fig[key]["iqr"] >= 0
        assert fig["goal"].split()[0] in ("<=", ">=") and isinstance(fig["goal_met"], bool)
    assert 0 < figures["sinkhorn"]["share"]["median"] < 1  # a share of the step it belongs to
    assert figures["protocol"]["conditions"] == 22
    assert f"| step | {figures['step']['ratio']['median']:.3f} |" in proc.stdout  # the printed table


def test_bf16_autocast_runs_on_cpu_with_the_same_metrics_schema():
    plain = fit(load_config(None, TINY_FIT), evaluate_test=False, log=lambda s: None)
    bf16 = fit(load_config(None, [*TINY_FIT, "train.bf16=true"]), evaluate_test=False, log=lambda s: None)
    assert set(bf16.val) == set(plain.val)
    assert all(math.isfinite(v) for k, v in bf16.history[0].items() if k.startswith("train/"))
    assert bf16.history[0]["train/total"] != plain.history[0]["train/total"]  # autocast really changed the math
