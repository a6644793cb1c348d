"""Benchmarks of the hot paths and of the whole platform, as ratios against their natural reference.

    python studies/benchmark.py                      # the quick figures -> runs/benchmark/benchmark.json + a table
    python studies/benchmark.py --only step,sinkhorn --repeats 7
    python studies/benchmark.py --only search        # search efficiency (~20 min on 2 cores; --address for a cluster)
    python studies/benchmark.py --only pipeline      # the README pipeline, stage by stage (~40 min on 2 cores)
    python studies/benchmark.py --gpu-check          # on a CUDA machine: the GPU table in minutes
    python studies/benchmark.py --smoke-test         # tiny sizes: checks the harness, not the machine

Each figure is the median of ``--repeats`` measurements after a warm-up, with the interquartile range
as its spread. Figures and their goals (issues 5 and 16):
  step        FSRF training step / the same encoders with dhf=False, das=False (B=32, cached text, after
              a warm-up epoch of training: the Sinkhorn solve is slow on trained, paired views)   <= 1.15
  sinkhorn    the configured DAS feature term (forward + backward) as a share of the FSRF step     <= 5%
  health      an epoch with the mechanism-health metrics / the same epoch without them             <= 1.03
  protocol    the SPEC 2 protocol (Table I, intra and burst curves; words dropped before the encoder,
              [UNK] states cached per condition) in plain test passes, second run, cache warm (the first
              run and fit's whole test protocol, with the per-modality points, are reported)         <= 18
  text_cache  a step with the live frozen encoder / a step reading the per-token cache       (information)
  scaling     epoch time mosei / mosi divided by the ratio of sample counts                          <= 1.2
  memory      peak resident memory of a default-size study (driver, Ray, 2 trial workers)        <= 3 GB
  tune        a study through Ray Tune (function trainable, default concurrency) / the same trials as
              plain processes at the same concurrency (wall)                                          <= 1.10
  ray_train   the same with Ray Train workers: the ratio, the start-up per trial and the trial length
              from which that start-up is under 10% of a trial                               (information)
  search      epochs ASHA + TPE spend until its best reaches 98% of the best objective of a random search
              that runs every one of the same number of configurations to the full budget, / the random
              search's epochs; per search seed (``--search-seeds``)                                   <= 0.35
  pipeline    the README study, the robustness study of its best config (5 variants x 10 seeds) and the
              report: wall time of each stage and its share                                  (information)

``--device cuda`` (bfloat16 autocast) times step, sinkhorn, health and protocol on a GPU and reports
absolute times beside the ratios; on a machine without CUDA the JSON says that the GPU figures were
skipped. ``search``, ``tune`` and ``ray_train`` take ``--address`` to run on a Ray cluster unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # `python studies/benchmark.py` from a checkout: make `studies` and `fsrf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fsrf.errors import ArgumentParser  # noqa: E402
from studies._cli import run_main  # noqa: E402

import numpy as np
import torch

FIGURES = ("step", "sinkhorn", "health", "protocol", "text_cache", "scaling", "memory", "tune", "ray_train",
           "search", "pipeline")
LONG = ("search", "pipeline")  # run only when asked for (--only): tens of minutes each
GPU_FIGURES = ("step", "sinkhorn", "health", "protocol")  # what --device cuda / --gpu-check measure
SMOKE = ("step", "sinkhorn", "health", "protocol", "text_cache")
GOALS = {"step": ("<=", 1.15), "sinkhorn": ("<=", 0.05), "health": ("<=", 1.03), "protocol": ("<=", 18.0),
         "text_cache": None, "scaling": ("<=", 1.2), "memory": ("<=", 3.0), "tune": ("<=", 1.10), "ray_train": None,
         "search": ("<=", 0.35), "pipeline": None}
KEY = {"step": "ratio", "sinkhorn": "share", "health": "ratio", "protocol": "passes", "text_cache": "ratio",
       "scaling": "ratio", "memory": "gb", "tune": "ratio", "ray_train": "ratio", "search": "ratio",
       "pipeline": "total_s"}
SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent


class Device:
    """Where the in-process figures run; CUDA times need a synchronize before the clock is read."""

    def __init__(self, name: str):
        self.name = name
        self.torch = torch.device(name)

    def sync(self) -> None:
        if self.name == "cuda":
            torch.cuda.synchronize()

    def overrides(self) -> list[str]:
        return ["train.use_gpu=true", "train.bf16=true"] if self.name == "cuda" else []


DEVICE = Device("cpu")


def stats(samples: list[float]) -> dict:
    q = np.percentile(samples, [25, 50, 75])
    return {"median": float(q[1]), "iqr": float(q[2] - q[0]), "n": len(samples)}


def interleaved(fns: dict, *, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Times of each of ``fns`` taken in turn (a, b, c, a, b, c, ...), so that a drift of the machine's
    speed (frequency, another process) reaches every one alike instead of whichever ran last."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            DEVICE.sync()
            t = time.perf_counter()
            fn()
            DEVICE.sync()
            out[name].append(time.perf_counter() - t)
    return out


def timed(fn, *, repeats: int, warmup: int = 2) -> list[float]:
    """Times of ``fn`` alone (``interleaved`` with one function)."""
    return interleaved({"fn": fn}, repeats=repeats, warmup=warmup)["fn"]


def _setup(overrides: list[str]):
    from fsrf.config import load_config
    from fsrf.train import build_model, prepare

    cfg = load_config(None, overrides + DEVICE.overrides())
    prep = prepare(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, prep).to(DEVICE.torch)
    return cfg, prep, model


def _stepper(cfg, prep, model, batch_size: int = 32):
    """One training step of ``fsrf.train.fit`` (MRM views at rate 0.5, Adam), on random batches."""
    from fsrf.train import patterns_for, train_losses

    opt = torch.optim.Adam(model.parameters(), 1e-3)
    train = prep.splits["train"]
    gen = torch.Generator().manual_seed(0)
    patterns = patterns_for(cfg, train)

    def step():
        idx = torch.randperm(len(train), generator=gen)[:batch_size]
        with torch.autocast(DEVICE.torch.type, dtype=torch.bfloat16, enabled=cfg.train.bf16):
            terms = train_losses(cfg, model, train.batch(idx).to(DEVICE.torch), train.labels[idx].to(DEVICE.torch),
                                 rate=0.5, generator=gen, patterns=patterns, index=idx)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
    return step


WARM_STEPS = 60  # about one epoch of the synthetic MOSI preset: Z_p and Z_q become paired views


def _warm(step, steps: int) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # non-converged Sinkhorn steps: counted by training
        for _ in range(steps):
            step()


def bench_step(base: list[str], repeats: int, warm: int = WARM_STEPS) -> dict:
    """FSRF step / encoders-only step, both after ``warm`` steps of training, and the DHF-only step
    (das=False) that says how much of the difference is DHF and how much DAS."""
    import warnings

    steps = {}
    for name, extra in (("fsrf", []), ("dhf_only", ["model.das=false"]), ("plain", ["model.dhf=false", "model.das=false"])):
        steps[name] = _stepper(*_setup(base + extra))
        _warm(steps[name], warm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = interleaved(steps, repeats=repeats * 10)
    ratios = [a / b for a, b in zip(out["fsrf"], out["plain"])]  # neighbours in time
    return {"ratio": stats(ratios), "fsrf_step_s": stats(out["fsrf"]), "dhf_only_step_s": stats(out["dhf_only"]),
            "plain_step_s": stats(out["plain"]), "warm_steps": warm}


def bench_sinkhorn(base: list[str], repeats: int, warm: int = WARM_STEPS) -> dict:
    """The configured feature term of eq (7) (``loss.das_feature``, eps relative to each batch's median
    cost as in training), forward + backward, on paired views of 8 batches of a warmed-up model, as a
    share of the FSRF step; also the cross term's Sinkhorn iterations."""
    import warnings

    from fsrf import losses
    from fsrf.missing import mrm_views, zeroed_masks
    from fsrf.train import sinkhorn_eps

    cfg, prep, model = _setup(base)
    step = _stepper(cfg, prep, model)
    _warm(step, warm)
    train = prep.splits["train"]
    gen = torch.Generator().manual_seed(1)
    pairs = []
    for k in range(8):
        x = train.batch(torch.arange(32 * k, 32 * k + 32) % len(train)).to(DEVICE.torch)
        valid = x.valid()
        vp, vq = mrm_views(valid, rate=0.5, available=prep.modalities, generator=gen)
        with torch.no_grad():
            zp = model(x, vp.present, zeroed_masks(vp, valid)).z.float()
            zq = model(x, vq.present, zeroed_masks(vq, valid)).z.float()
        pairs.append((zp, zq, sinkhorn_eps(cfg.loss, losses.median_pairwise_cost(zp, zq))))
    feature = losses.sinkhorn_divergence if cfg.loss.das_feature == "divergence" else losses.sinkhorn_distance
    turn = iter(range(10**9))
    iterations = []

    def sink():
        zp, zq, eps = pairs[next(turn) % len(pairs)]
        a, b = zp.clone().requires_grad_(), zq.clone().requires_grad_()
        feature(a, b, eps).backward()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        times = interleaved({"sink": sink, "step": step}, repeats=repeats * 8)
        t_sink, t_step = times["sink"], times["step"]
        for zp, zq, eps in pairs:
            iterations.append(losses.entropic_ot(zp.double(), zq.double(), eps).iterations)
    return {"share": stats([s / t for s, t in zip(t_sink, t_step)]), "sinkhorn_s": stats(t_sink),
            "step_s": stats(t_step), "feature": cfg.loss.das_feature, "eps_relative": cfg.loss.sinkhorn_eps,
            "cross_iterations": stats(iterations)}


def bench_health(base: list[str], repeats: int) -> dict:
    """Epoch time with the mechanism-health metrics (``eval.health_every``, default) / without them
    (``eval.health_every=0``): the same training trajectory (health only reads), epoch by epoch after the
    first, which pays the one-off costs."""
    from fsrf.config import load_config
    from fsrf.train import fit, prepare

    epochs = 3
    cfg_on = load_config(None, base + DEVICE.overrides() + [f"train.epochs={epochs}"])
    cfg_off = load_config(None, base + DEVICE.overrides() + [f"train.epochs={epochs}", "eval.health_every=0"])
    prep = prepare(cfg_on)
    times = {"on": [], "off": []}
    for _ in range(max(1, (repeats + 1) // 2)):
        for key, cfg in (("off", cfg_off), ("on", cfg_on)):
            seen = []
            fit(cfg, prep=prep, evaluate_test=False, log=lambda s: None,
                report=lambda epoch, metrics, state: seen.append(metrics["epoch_time_s"]))
            times[key].extend(seen[1:])
    ratios = [a / b for a, b in zip(times["on"], times["off"])]  # the same epoch of the same trajectory
    return {"ratio": stats(ratios), "epoch_on_s": stats(times["on"]), "epoch_off_s": stats(times["off"]),
            "health_every": cfg_on.eval.health_every}


def bench_protocol(base: list[str], repeats: int) -> dict:
    """The evaluation protocol of SPEC section 2 (Table I, the intra and burst curves: 22 conditions),
    words dropped before the encoder, in plain test passes: first run in a fresh text cache (every
    condition's [UNK] states encoded), then warm (cached per condition), the figure. Also the whole test
    protocol of ``fit`` (with the per-modality points), warm, as information."""
    from fsrf.protocol import TABLE, conditions_for, evaluate, per_modality_conditions, predict

    cache = Path(tempfile.mkdtemp(prefix="fsrf-bench-cache-"))
    try:
        cfg, prep, model = _setup(base + [f"encoder.cache_dir={cache}"])
        model.eval()
        test = prep.splits["test"]
        spec2 = conditions_for(prep.modalities)
        whole = spec2 + per_modality_conditions(prep.modalities, rates=cfg.eval.modality_rates)
        view = TABLE[-1].view(test.inputs.valid(), seed=0, available=prep.modalities)  # lav

        def protocol(conditions):
            return lambda: evaluate(model, test, conditions, modalities=prep.modalities, mask_seed=0,
                                    batch_size=cfg.eval.batch_size, prefix="test")
        cold = timed(protocol(spec2), repeats=1, warmup=0)  # fills the per-condition [UNK] cache
        one = timed(lambda: predict(model, test, view, batch_size=cfg.eval.batch_size), repeats=repeats * 2)
        warm = timed(protocol(spec2), repeats=repeats, warmup=0)
        full = timed(protocol(whole), repeats=max(1, repeats // 2), warmup=1)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    plain = statistics.median(one)
    return {"passes": stats([f / plain for f in warm]), "first_run_passes": cold[0] / plain,
            "conditions": len(spec2), "one_pass_s": stats(one), "protocol_s": stats(warm), "first_run_s": cold[0],
            "test_protocol_conditions": len(whole), "test_protocol_passes": stats([f / plain for f in full])}


def bench_text_cache(base: list[str], repeats: int) -> dict:
    """Information only (retired goal >= 20x: with MiniLM the ratio is bound by the encoder's size)."""
    cached = _setup(base)
    live = _setup(base + ["encoder.finetune=true", "encoder.freeze_layers=6"])
    t_live = timed(_stepper(*live), repeats=repeats, warmup=1)
    t_cached = timed(_stepper(*cached), repeats=repeats * 5)
    return {"ratio": stats([t_live[i] / statistics.median(t_cached) for i in range(len(t_live))]),
            "live_step_s": stats(t_live), "cached_step_s": stats(t_cached),
            "note": "information: the >= 20x goal is retired (MiniLM is small; a larger encoder costs more live)"}


def bench_scaling(base: list[str], repeats: int) -> dict:
    from fsrf.data import PRESETS

    out = {}
    for preset in ("mosi", "mosei"):
        # a tenth of each preset: the per-step cost is what scales; it spares encoding 22k utterances
        cfg, prep, model = _setup(base + [f"data.preset={preset}", "data.size_scale=0.1"])
        step = _stepper(cfg, prep, model)
        n_batches = PRESETS[preset][0] // 32
        per_step = timed(step, repeats=repeats * 5)
        out[preset] = {"step_s": stats(per_step), "epoch_s": statistics.median(per_step) * n_batches,
                       "train_samples": PRESETS[preset][0]}
    scale = out["mosei"]["train_samples"] / out["mosi"]["train_samples"]
    ratio = (out["mosei"]["epoch_s"] / out["mosi"]["epoch_s"]) / scale
    out["ratio"] = {"median": ratio, "iqr": 0.0, "n": 1}
    out["note"] = (f"epoch = median step x batches at the full sizes ({PRESETS['mosi'][0]} vs "
                   f"{PRESETS['mosei'][0]} training samples); steps measured on a tenth of each; mosei also "
                   "has wider features (74/35 vs 5/20)")
    return out


def bench_memory(base: list[str], repeats: int) -> dict:
    """Peak resident memory of a default-size study (2 trials x 2 epochs, 2 at a time, local Ray),
    summed over the driver and every process it starts (Ray's GCS, raylet, workers)."""
    import psutil

    sets = [a for o in base for a in ("--set", o)]
    peaks = []
    for r in range(max(1, repeats // 3)):
        work = Path(tempfile.mkdtemp(prefix="fsrf-bench-mem-"))
        try:
            proc = psutil.Popen([sys.executable, str(SCRIPTS / "tune_lambdas.py"), "--num-samples", "2", "--max-epochs",
                                 "2", "--name", "mem", "--storage", str(work / "ray"),
                                 "--tracking-uri", f"sqlite:///{work}/mlflow.db", *sets],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            peak = 0
            while proc.poll() is None:
                try:
                    rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                except psutil.Error:
                    continue
                peak = max(peak, rss)
                time.sleep(0.2)
            peaks.append(peak / 2**30)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {"gb": stats(peaks), "note": "RSS summed over the process tree (shared pages counted per process)"}


def _run(cmd: list[str], *, timeout: float, what: str) -> subprocess.CompletedProcess:
    """A study subprocess; its failure ends the figure with the last lines of its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc


def _tune_vs_plain(base: list[str], repeats: int, *, workers: int, trials: int, epochs: int, address: str | None,
                   concurrency: int = 2) -> dict:
    """``trials`` runs of the base configuration (seeds 0..trials-1, ``epochs`` each, nothing stopped)
    as one tune_lambdas study (``--num-samples 1 --seeds-per-config trials``: FIFO, default concurrency
    on 2 CPUs) against the same runs as ``concurrency`` plain ``studies/train.py`` processes in parallel,
    each running its share one after the other. Wall time of the whole of each, start-up included."""
    sets = [a for o in base for a in ("--set", o)]
    with_ray, plain = [], []
    for r in range(max(1, repeats // 3)):
        work = Path(tempfile.mkdtemp(prefix="fsrf-bench-tune-"))
        try:
            t = time.perf_counter()
            _run([sys.executable, str(SCRIPTS / "tune_lambdas.py"), "--num-samples", "1", "--seeds-per-config",
                  str(trials), "--max-epochs", str(epochs), "--workers-per-trial", str(workers), "--name", "bench",
                  "--storage", str(work / "ray"), "--tracking-uri", f"sqlite:///{work}/mlflow.db",
                  *(["--address", address] if address else ["--cpus", str(concurrency)]), *sets],
                 timeout=3600, what="the Ray Tune study")
            with_ray.append(time.perf_counter() - t)
            lanes = [[k for k in range(trials) if k % concurrency == lane] for lane in range(concurrency)]
            t = time.perf_counter()
            procs = [subprocess.Popen(" && ".join(
                f"{sys.executable} {SCRIPTS / 'train.py'} {' '.join(sets)} --set train.epochs={epochs} --set seed={k} "
                f"--set train.threads=1 --output {work}/plain-{k}" for k in lane),
                shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for lane in lanes if lane]
            if any(p.wait() for p in procs):
                raise RuntimeError("a plain training process failed")
            plain.append(time.perf_counter() - t)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    ratios = [a / b for a, b in zip(with_ray, plain)]
    overhead = [(a - b) * concurrency / trials for a, b in zip(with_ray, plain)]  # per trial, in seconds
    return {"ratio": stats(ratios), "ray_s": stats(with_ray), "plain_s": stats(plain),
            "overhead_per_trial_s": stats(overhead), "trials": trials, "epochs": epochs, "workers_per_trial": workers,
            "note": "plain processes also evaluate test once; Ray includes its start-up, MLflow and checkpoints"}


def bench_tune(base: list[str], repeats: int, *, address: str | None = None, trials: int = 4, epochs: int = 12) -> dict:
    return _tune_vs_plain(base, repeats, workers=0, trials=trials, epochs=epochs, address=address)


def bench_ray_train(base: list[str], repeats: int, *, address: str | None = None) -> dict:
    """4 trials x 3 epochs through Ray Train (one worker each) against plain processes; from the start-up
    per trial o, the trial length L from which it is under 10% of a trial: o / (o + L) < 0.1, L > 9 o."""
    out = _tune_vs_plain(base, repeats, workers=1, trials=4, epochs=3, address=address)
    o = out["overhead_per_trial_s"]["median"]
    out["pays_off_from_trial_s"] = 9 * max(o, 0.0)
    return out


def search_progress(epochs, *, objective: str) -> tuple[list[int], list[float]]:
    """(cumulative epochs spent, best objective so far) after each reported epoch of a study, in the
    order the epochs were reported (``timestamp``, then ``time_total_s``)."""
    import polars as pl

    rows = epochs.filter(pl.col(objective).is_not_null()).sort(["timestamp", "time_total_s"])
    best = np.maximum.accumulate(rows[objective].to_numpy())
    return list(range(1, len(rows) + 1)), [float(b) for b in best]


def search_ratio(asha_epochs, random_epochs, *, objective: str, share: float = 0.98) -> dict:
    """The search-efficiency figure of one search seed from two studies' ``epochs.parquet`` tables: epochs
    ASHA + TPE spent until its best reached ``share`` x the random search's best, over the random
    search's epochs (every configuration to the full budget). Not reached: ratio None."""
    spent, best = search_progress(asha_epochs, objective=objective)
    r_spent, r_best = search_progress(random_epochs, objective=objective)
    target = share * r_best[-1]
    reached = next((n for n, b in zip(spent, best) if b >= target), None)
    return {"ratio": None if reached is None else reached / r_spent[-1], "epochs_to_target": reached,
            "random_epochs": r_spent[-1], "asha_epochs": spent[-1], "random_best": r_best[-1], "asha_best": best[-1],
            "target": target, "random_epochs_to_target": next(n for n, b in zip(r_spent, r_best) if b >= target)}


def bench_search(base: list[str], repeats: int, *, address: str | None = None, configs: int = 12, epochs: int = 12,
                 seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """Per search seed: tune_lambdas with TPE + ASHA (the default) and with random sampling + FIFO (every
    configuration to ``epochs``), the same number of configurations, validation objective only."""
    import polars as pl

    from fsrf.protocol import BEST_OBJECTIVE

    sets = [a for o in base if not o.startswith("train.threads") for a in ("--set", o)]
    per_seed = {}
    for seed in seeds:
        work = Path(tempfile.mkdtemp(prefix="fsrf-bench-search-"))
        try:
            tables = {}
            for kind, flags in (("asha", ["--sampler", "tpe", "--scheduler", "asha"]),
                                ("random", ["--sampler", "random", "--scheduler", "fifo"])):
                print(f"  search seed {seed}: {kind} ({configs} configurations x <= {epochs} epochs)", file=sys.stderr,
                      flush=True)
                t = time.perf_counter()
                _run([sys.executable, str(SCRIPTS / "tune_lambdas.py"), "--num-samples", str(configs), "--max-epochs",
                      str(epochs), "--search-seed", str(seed), *flags, "--name", f"search-{kind}",
                      "--storage", str(work / "ray"), "--tracking-uri", f"sqlite:///{work}/mlflow.db",
                      *(["--address", address] if address else []), *sets], timeout=4 * 3600, what=f"the {kind} search")
                tables[kind] = pl.read_parquet(work / "ray" / f"search-{kind}" / "epochs.parquet")
                tables[kind + "_wall_s"] = time.perf_counter() - t
            fig = search_ratio(tables["asha"], tables["random"], objective=BEST_OBJECTIVE)
            fig.update(asha_wall_s=tables["asha_wall_s"], random_wall_s=tables["random_wall_s"])
            per_seed[str(seed)] = fig
            print(f"  search seed {seed}: {json.dumps(fig)}", file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    ratios = [f["ratio"] for f in per_seed.values()]
    reached = [r for r in ratios if r is not None]
    # a seed whose ASHA never reached the target counts as its whole spend (a lower bound of its ratio)
    bounded = [r if r is not None else f["asha_epochs"] / f["random_epochs"] for r, f in zip(ratios, per_seed.values())]
    return {"ratio": stats(bounded), "seeds": per_seed, "reached": f"{len(reached)}/{len(ratios)}",
            "configs": configs, "epochs": epochs, "share": 0.98}


def bench_pipeline(base: list[str], repeats: int, *, address: str | None = None, smoke: bool = False) -> dict:
    """The README's pipeline on its defaults: the tuning study (``tune_lambdas.py``), the robustness
    study of its best configuration (``robustness.py --from-study``, 5 variants x 10 seeds) and the report
    (``analysis/report.py``), each timed (wall), in a scratch folder. ``smoke``: both studies with their
    ``--smoke-test`` (the wiring, in a minute or two)."""
    import re

    work = Path(tempfile.mkdtemp(prefix="fsrf-bench-pipeline-"))
    uri = f"sqlite:///{work}/mlflow.db"
    where = (["--address", address] if address else []) + (["--smoke-test"] if smoke else [])
    stages = {}
    try:
        t = time.perf_counter()
        _run([sys.executable, str(SCRIPTS / "tune_lambdas.py"), "--storage", str(work / "tune"), "--tracking-uri", uri,
              *where], timeout=6 * 3600, what="the tuning study")
        stages["tune"] = time.perf_counter() - t
        print(f"  pipeline: tune {stages['tune']:.0f} s", file=sys.stderr, flush=True)
        t = time.perf_counter()
        proc = _run([sys.executable, str(SCRIPTS / "robustness.py"), "--from-study", "fsrf-tune", "--tune-storage",
                     str(work / "tune"), "--storage", str(work / "robustness"), "--tracking-uri", uri, *where],
                    timeout=12 * 3600, what="the robustness study")
        stages["robustness"] = time.perf_counter() - t
        print(f"  pipeline: robustness {stages['robustness']:.0f} s", file=sys.stderr, flush=True)
        parent = re.search(r"--robustness-run (\S+)", proc.stdout)
        if parent is None:
            raise RuntimeError("the robustness study did not print its parent run")
        t = time.perf_counter()
        _run([sys.executable, str(ROOT / "analysis" / "report.py"), "--robustness-run", parent.group(1),
              "--tracking-uri", uri, "--out", str(work / "report"), "--no-log"], timeout=3600, what="the report")
        stages["report"] = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(stages.values())
    return {"total_s": {"median": total, "iqr": 0.0, "n": 1},
            "stages": {k: {"wall_s": v, "share": v / total} for k, v in stages.items()}}


def _table(results: dict) -> str:
    rows = []
    for name, fig in results["figures"].items():
        s = fig[KEY[name]]
        goal = GOALS[name]
        if goal is None:
            fig["goal"], fig["goal_met"] = "information", None
            rows.append(f"| {name} | {s['median']:.3f} | {s['iqr']:.3f} | information | |")
            continue
        op, value = goal
        met = s["median"] <= value if op == "<=" else s["median"] >= value
        fig["goal"], fig["goal_met"] = f"{op} {value}", bool(met)
        rows.append(f"| {name} | {s['median']:.3f} | {s['iqr']:.3f} | {op} {value} | {'yes' if met else 'no'} |")
    text = "| figure | median | IQR | goal | met |\n| --- | --- | --- | --- | --- |\n" + "\n".join(rows)
    if DEVICE.name == "cuda":  # absolute times: on a GPU they say more than the ratios
        absolute = [(f"{n}: {k}", v) for n, fig in results["figures"].items() for k, v in fig.items()
                    if k.endswith("_s") and isinstance(v, dict)]
        text += "\n\n| GPU time | median (s) | IQR (s) |\n| --- | --- | --- |\n" + "\n".join(
            f"| {k} | {v['median']:.4f} | {v['iqr']:.4f} |" for k, v in absolute)
    if "pipeline" in results["figures"]:
        text += "\n\n| pipeline stage | wall (min) | share |\n| --- | --- | --- |\n" + "\n".join(
            f"| {k} | {v['wall_s'] / 60:.1f} | {100 * v['share']:.0f} % |"
            for k, v in results["figures"]["pipeline"]["stages"].items())
    return text


def main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None,
                    help=f"comma list from {','.join(FIGURES)} (default: all but the long {','.join(LONG)})")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--output", default=None, help="JSON to write (default runs/benchmark/benchmark.json, "
                                                   "with --gpu-check runs/benchmark/gpu.json)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where step, sinkhorn, health and protocol run (cuda: bfloat16 autocast)")
    ap.add_argument("--gpu-check", action="store_true",
                    help="on a CUDA machine: step, sinkhorn, health and protocol on the GPU, absolute times")
    ap.add_argument("--address", help="Ray cluster for tune, ray_train, search and pipeline (default: a local Ray)")
    ap.add_argument("--search-configs", type=int, default=12, help="configurations per search (default 12)")
    ap.add_argument("--search-epochs", type=int, default=12, help="full budget of a search trial (default 12)")
    ap.add_argument("--search-seeds", default="0,1,2", help="search seeds (default 0,1,2)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field for every figure, e.g. data.size_scale=0.25")
    ap.add_argument("--smoke-test", action="store_true", help="tiny sizes, 2 repeats, the in-process figures only")
    args = ap.parse_args(argv)
    from fsrf.config import load_config
    from fsrf.errors import InputError

    if args.gpu_check:
        args.device = "cuda"
    only = [f.strip() for f in args.only.split(",") if f.strip()] if args.only is not None else \
        [f for f in FIGURES if f not in LONG]
    bad = [f for f in only if f not in FIGURES]
    if bad:
        raise InputError("--only", None, f"unknown figure {bad[0]!r}; choose from {', '.join(FIGURES)}")
    if not only:
        raise InputError("--only", None, f"no figure given; choose from {', '.join(FIGURES)}")
    if args.repeats < 1:
        raise InputError("--repeats", None, f"must be >= 1, got {args.repeats}")
    for flag, value in (("--search-configs", args.search_configs), ("--search-epochs", args.search_epochs)):
        if value < 1:
            raise InputError(flag, None, f"must be >= 1, got {value}")
    try:
        seeds = tuple(int(x) for x in args.search_seeds.split(",") if x.strip())
    except ValueError:
        raise InputError("--search-seeds", None, f"expected comma-separated integers, got {args.search_seeds!r}") from None
    if not seeds:
        raise InputError("--search-seeds", None, "no seed given")
    try:
        load_config(None, args.overrides)
    except InputError:
        raise
    except ValueError as err:
        raise InputError("--set", None, str(err).splitlines()[0]) from None
    output = Path(args.output or ("runs/benchmark/gpu.json" if args.gpu_check else "runs/benchmark/benchmark.json"))
    if output.is_dir():
        raise InputError("--output", None, f"{output} is a folder: give the JSON file to write")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            flag = "--gpu-check" if args.gpu_check else "--device"
            raise InputError(flag, None, "this machine has no CUDA device (torch.cuda.is_available() is False); "
                                         "run it on a GPU machine")
        global DEVICE
        DEVICE = Device("cuda")
        if args.gpu_check or args.only is None:
            only = [f for f in GPU_FIGURES if f in only or args.gpu_check]
    base = ["train.threads=2", *args.overrides]
    if args.smoke_test:
        base += ["data.size_scale=0.05", "model.width=16", "model.seq_width=8"]
        args.repeats = 2
        only = [f for f in only if f in SMOKE or (args.only is not None and f == "pipeline")]
    torch.set_num_threads(2)
    kw = {"tune": dict(address=args.address), "ray_train": dict(address=args.address),
          "pipeline": dict(address=args.address, smoke=args.smoke_test),
          "search": dict(address=args.address, configs=args.search_configs, epochs=args.search_epochs, seeds=seeds)}
    if args.smoke_test:
        kw["step"] = kw["sinkhorn"] = {"warm": 4}
    fns = {"step": bench_step, "sinkhorn": bench_sinkhorn, "health": bench_health, "text_cache": bench_text_cache,
           "protocol": bench_protocol, "scaling": bench_scaling, "memory": bench_memory, "tune": bench_tune,
           "ray_train": bench_ray_train, "search": bench_search, "pipeline": bench_pipeline}
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "device": DEVICE.name,
                           "gpu": torch.cuda.get_device_name(0) if DEVICE.name == "cuda" else None},
               "repeats": args.repeats, "figures": {}}
    if DEVICE.name == "cpu":
        results["gpu"] = {"skipped": "no GPU figures on --device cpu: run `python studies/benchmark.py --gpu-check` "
                                     "on a CUDA machine for step, sinkhorn, health and protocol on the GPU (bf16)"}
        print("note: GPU figures skipped (--device cpu); --gpu-check measures them on a CUDA machine", file=sys.stderr)
    for name in only:
        t = time.time()
        print(f"benchmark {name} ...", file=sys.stderr, flush=True)
        results["figures"][name] = fns[name](base, args.repeats, **kw.get(name, {}))
        results["figures"][name]["seconds"] = round(time.time() - t, 1)
        print(f"  {name}: {json.dumps(results['figures'][name])[:400]}", file=sys.stderr, flush=True)
    table = _table(results)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    print(table)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    run_main(main)
