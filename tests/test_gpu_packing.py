"""Many trials per GPU (issue 15): fractional GPUs per trial, the device each trial chooses, the
concurrency computed from CPUs and GPUs, and the capacity plan of ``--dry-run``.

The packing test runs the real study (``studies/tune_lambdas.py``'s driver, as ``tests/nan_study.py``
does) on a local Ray with 2 *logical* GPUs (``--gpus 2``; this machine has none), 0.25 GPU and 0.25 CPU
per trial: 8 trials must hold their GPU shares at the same time. Each trial first waits at a barrier
until all 8 have arrived (a study that ran fewer at once would time out there and fail), recording the
GPU ids Ray gave it, then trains with the real function trainable. Run as a script, this file is that
study's driver:

    python tests/test_gpu_packing.py <barrier folder> <trials> <tune_lambdas options>

Where CUDA is needed the device choice is exercised with a stand-in for ``torch.cuda``; on this CPU-only
torch every trial falls back to the CPU and says so in one line.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY, TINY_RUN, subprocess_env
from fsrf.config import load_config
from studies import capacity
from studies.capacity import Footprint, expected_epochs, gpu_plan, gpu_slots, trials_at_once

SETS = [a for kv in TINY for a in ("--set", kv)]


# ------------------------------------------------------------------------------ the device choice

class FakeCuda:
    """``torch.cuda`` as a machine with ``count`` CUDA devices would answer (nothing is allocated)."""

    def __init__(self, count: int, current: int = 0):
        self.count, self.current = count, current

    def is_available(self) -> bool:
        return self.count > 0

    def device_count(self) -> int:
        return self.count

    def current_device(self) -> int:
        return self.current


def test_choose_device_takes_the_assigned_gpu_or_says_it_falls_back():
    import torch

    from fsrf.train import choose_device

    lines: list[str] = []
    assert choose_device(True, index=1, cuda=FakeCuda(2), log=lines.append) == torch.device("cuda:1")
    assert choose_device(True, index=0, cuda=FakeCuda(1), log=lines.append) == torch.device("cuda:0")
    # no index: the current device (set per process by Ray Train's backend or torchrun)
    assert choose_device(True, cuda=FakeCuda(4, current=3), log=lines.append) == torch.device("cuda:3")
    assert choose_device(False, index=1, cuda=FakeCuda(2), log=lines.append) == torch.device("cpu")
    assert lines == []  # nothing to say while CUDA has the device (or none was asked for)
    with pytest.raises(RuntimeError, match="CUDA device 2 requested but this process sees 2"):
        choose_device(True, index=2, cuda=FakeCuda(2))  # never another trial's GPU
    assert choose_device(True, index=0, cuda=FakeCuda(0), log=lines.append) == torch.device("cpu")
    assert len(lines) == 1 and "train.use_gpu" in lines[0] and "training on CPU" in lines[0]


def test_a_run_asking_for_a_gpu_here_trains_on_the_cpu_and_says_so_once():
    """The real ``fit`` on this CPU-only torch with ``train.use_gpu``: one line of its log says why it
    trains on the CPU (the epoch lines aside), and it trains."""
    import torch

    from fsrf.train import fit

    assert not torch.cuda.is_available()
    lines: list[str] = []
    result = fit(load_config(None, [*TINY_RUN, "train.use_gpu=true"]), evaluate_test=False, log=lines.append)
    fallback = [ln for ln in lines if "no CUDA device" in ln]
    assert len(fallback) == 1 and fallback[0].endswith("training on CPU"), lines
    assert next(result.model.parameters()).device.type == "cpu" and len(result.history) == 1
    quiet: list[str] = []
    fit(load_config(None, TINY_RUN), evaluate_test=False, log=quiet.append)
    assert not [ln for ln in quiet if "no CUDA device" in ln]  # said only when a GPU was asked for


def test_local_gpu_index_is_the_assigned_ids_place_among_the_visible_devices():
    from studies.worker import local_gpu_index

    assert local_gpu_index(["1"], "1") == 0  # a trial holding a share of GPU 1 sees it as cuda:0
    assert local_gpu_index([3], "2,3") == 1  # a Train worker seeing its worker group's GPUs
    assert local_gpu_index(["2"], None) == 2  # CUDA_VISIBLE_DEVICES unset: every GPU visible
    assert local_gpu_index([], "0") is None
    with pytest.raises(RuntimeError, match="Ray assigned GPU 1"):
        local_gpu_index(["1"], "0")


# ------------------------------------------------------------------------------------- concurrency

def test_trials_at_once_counts_cpus_and_gpus_per_node():
    # 2 CPUs, 2 GPUs, a quarter of each per trial: 8 (CPU-bound and GPU-bound alike)
    assert trials_at_once([(2, 2)], cpus_per_trial=0.25, gpus_per_trial=0.25) == 8
    assert trials_at_once([(1, 2)], cpus_per_trial=0.25, gpus_per_trial=0.25) == 4  # CPUs limit
    assert trials_at_once([(16, 2)], cpus_per_trial=1, gpus_per_trial=0.25) == 8  # GPUs limit
    # a share must fit inside one GPU: 0.3 -> 3 per GPU (not 6.67 over two), 0.4 -> 2 per GPU
    assert trials_at_once([(16, 2)], cpus_per_trial=1, gpus_per_trial=0.3) == 6
    assert trials_at_once([(16, 2)], cpus_per_trial=1, gpus_per_trial=0.4) == 4
    assert trials_at_once([(2, 2)], cpus_per_trial=0.1, gpus_per_trial=0.1) == 20  # 2 / 0.1 is 19.999...
    # whole GPUs come from one node: 2 GPUs per trial fit nowhere on 1-GPU nodes
    assert trials_at_once([(4, 1), (4, 1)], cpus_per_trial=1, gpus_per_trial=2) == 0
    assert trials_at_once([(4, 1), (4, 1)], cpus_per_trial=1, gpus_per_trial=1) == 2
    assert trials_at_once([(2, 0)], cpus_per_trial=0.5) == 4  # no GPUs asked: CPUs only, as before
    # Ray Train: 2 workers x 0.5 GPU per trial, 1 CPU per trial in all
    assert trials_at_once([(8, 2)], cpus_per_trial=1, gpus_per_trial=0.5, workers=2) == 2
    assert trials_at_once([(1, 2)], cpus_per_trial=1, gpus_per_trial=0.5, workers=2) == 1
    assert gpu_slots(3, 0) == math.inf and gpu_slots(3, 1) == 3 and gpu_slots(1, 0.25) == 4


def test_flags_fill_in_what_follows():
    from studies import tune_lambdas

    args = tune_lambdas.parse(["--max-epochs", "2"])
    tune_lambdas.validate(args)
    assert args.grace_period == 2 and args.gpus_per_trial == 0.0  # ASHA's 3 cut to a 2-epoch study
    args = tune_lambdas.parse(["--workers-per-trial", "1", "--gpus-per-worker", "1"])  # the former name
    tune_lambdas.validate(args)
    assert args.gpus_per_trial == 1.0
    args = tune_lambdas.parse(["--gpus", "2", "--gpus-per-trial", "0.25", "--cpus", "2", "--cpus-per-trial", "0.25"])
    tune_lambdas.validate(args)
    assert args.grace_period == 3


# ------------------------------------------------------------------------------- the capacity plan

def test_expected_epochs_under_asha_by_hand():
    # rungs 3 and 9 below 12: 2/3 stop at 3, 2/9 at 9, 1/9 run 12
    assert expected_epochs(12, 3) == pytest.approx(2 / 3 * 3 + 2 / 9 * 9 + 1 / 9 * 12)
    assert expected_epochs(2, 1) == pytest.approx(2 / 3 * 1 + 1 / 3 * 2)
    assert expected_epochs(12, 12) == 12 and expected_epochs(12, None) == 12  # no rung below; FIFO


def test_gpu_plan_by_hand():
    """The plan's arithmetic on a made-up footprint, against the same sums written out."""
    fp = Footprint("mosi", False, batch=32, params=1_000_000, trainable=500_000, saved_bytes=100 * 2**20,
                   launches=1000, flops=0, bf16=False)
    state = (8 * 1_000_000 + 12 * 500_000) / 2**20  # params + best copy; grads + Adam of the trainable
    assert fp.state_mib == pytest.approx(state)
    trial = 600 + state + 1.5 * 100
    assert fp.trial_mib == pytest.approx(trial)
    plan = gpu_plan(fp, 24, train_samples=1284, epochs=expected_epochs(12, 3))
    assert plan.by_memory == math.floor(0.85 * 24 * 1024 / trial) == 27  # 20890 MiB / 763 MiB
    # host 1000 x 10 us = 10 ms, GPU 1000 x 3 us = 3 ms: 3 trials before they slow each other down
    assert plan.useful == 3 and plan.step_ms == pytest.approx(10)
    trial_s = expected_epochs(12, 3) * math.ceil(1284 / 32) * 0.010 * 1.25 + 5
    assert plan.trials_per_hour == pytest.approx(8 * 3 * 3600 / trial_s)
    big = Footprint("mosi", True, 32, 2 * 10**9, 2 * 10**9, 0, 1000, 0, False)  # 37 GiB of state: none on 24 GiB
    assert gpu_plan(big, 24, train_samples=1284, epochs=1).by_memory == 0


def test_measured_activations_grow_with_the_batch_and_hold_the_inputs():
    """The saved-for-backward measurement sees the step's tensors: about twice the bytes at twice the
    batch, at least the two views' text states the text encoder saves, less under bf16 autocast; the
    parameter count is the model's."""
    from fsrf import MODALITIES
    from fsrf.data import FEATURE_DIMS
    from fsrf.model import FSRF

    small = capacity.measure(load_config(None, [*TINY, "train.batch_size=8"]), preset="mosi", live=False)
    big = capacity.measure(load_config(None, [*TINY, "train.batch_size=16"]), preset="mosi", live=False)
    assert 1.6 < big.saved_bytes / small.saved_bytes < 2.4, (small.saved_bytes, big.saved_bytes)
    assert small.saved_bytes >= 2 * 8 * 50 * 384 * 4  # (2B, T_l, d_l) float32 cached MiniLM states
    assert small.launches > 100 and small.flops > 0
    bf16 = capacity.measure(load_config(None, [*TINY, "train.batch_size=8", "train.bf16=true"]), preset="mosi", live=False)
    assert bf16.saved_bytes < small.saved_bytes
    model = FSRF(load_config(None, TINY).model, dims={"l": 384, "a": FEATURE_DIMS["mosi"][0], "v": FEATURE_DIMS["mosi"][1]},
                 modalities=MODALITIES)
    assert small.params == small.trainable == sum(p.numel() for p in model.parameters())


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path, fsrf_cache):
    """``--dry-run``: exit 0, the given cluster's concurrency, both tables with a row per preset and
    encoder (the printed activations are the measurement's), and the folder untouched (no Ray, no
    MLflow store, no study folder)."""
    (tmp_path / "keep.txt").write_text("x")
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "studies" / "tune_lambdas.py"), "--dry-run", *SETS,
                           "--gpus", "2", "--gpus-per-trial", "0.25", "--cpus", "2", "--cpus-per-trial", "0.25"],
                          cwd=tmp_path, env=subprocess_env(FSRF_CACHE=str(fsrf_cache)), capture_output=True, text=True,
                          timeout=300)
    print(f"\ndry run: {time.time() - t0:.1f} s\n{proc.stdout}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert "Started a local Ray" not in proc.stderr
    out = proc.stdout
    assert "-> 8 trials at once, 4 per GPU" in out
    rows = [ln for ln in out.splitlines() if ln.startswith(("| MOSI |", "| MOSEI |"))]
    assert len(rows) == 8  # 2 presets x 2 encoders, in each of the two tables
    frozen = capacity.measure(load_config(None, [*TINY, "train.use_gpu=true"]), preset="mosi", live=False)
    cells = rows[0].split("|")
    assert cells[2].strip() == "frozen (cached states)" and cells[5].strip() == f"{frozen.activation_mib:.0f}"
    assert all(a in out for a in ("assumptions:", "CUDA context", "launch-bound"))


# ---------------------------------------------------------------------- the study on logical GPUs

def barrier_trainable(folder: str, n: int, timeout: float):
    """The function trainable behind a barrier: each trial records the GPU ids Ray gave it and waits
    until ``n`` trials have arrived, then trains as usual. (Made in ``__main__``: Ray ships it by value.)"""

    def trainable(config, settings):
        import os

        import ray
        from ray import tune

        from studies import worker

        trial = tune.get_context().get_trial_id()
        record = {"trial_id": trial, "pid": os.getpid(), "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                  "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "arrived": time.time()}
        Path(folder, f"{trial}.arrived").write_text(json.dumps(record))
        deadline = time.time() + timeout
        while (arrived := len(list(Path(folder).glob("*.arrived")))) < n:
            if time.time() > deadline:
                raise TimeoutError(f"only {arrived} of {n} trials were running at once")
            time.sleep(0.2)
        Path(folder, f"{trial}.left").write_text(json.dumps({"left": time.time()}))
        worker.function_trainable(config, settings)

    return trainable


def run_driver(cwd: Path, barrier: Path, n: int, *args: str, timeout: float = 900):
    from test_study import reap, study_env

    barrier.mkdir()
    try:
        return subprocess.run([sys.executable, __file__, str(barrier), str(n), *SETS, *args], cwd=cwd,
                              env=study_env(cwd), capture_output=True, text=True, timeout=timeout)
    finally:
        reap(cwd, grace=15)


@pytest.mark.slow
def test_eight_trials_share_two_logical_gpus(tmp_path):
    from test_study import Mlflow, tail

    n = 8
    t0 = time.time()
    proc = run_driver(tmp_path, tmp_path / "barrier", n, "--name", "p", "--num-samples", str(n), "--max-epochs", "1",
                      "--cpus", "2", "--gpus", "2", "--cpus-per-trial", "0.25", "--gpus-per-trial", "0.25",
                      "--max-failures", "0")
    wall = time.time() - t0
    assert proc.returncode == 0, tail(proc)
    assert f"{n} at a time on 2 CPUs and 2 GPUs (0.25 per trial)" in proc.stderr
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "barrier").glob("*.arrived"))]
    left = [json.loads(p.read_text())["left"] for p in (tmp_path / "barrier").glob("*.left")]
    assert len(records) == len(left) == n
    # all n held their resources at once: the last arrived before the first left the barrier
    assert max(r["arrived"] for r in records) < min(left)
    ids = [r["gpu_ids"] for r in records]
    assert all(len(i) == 1 and i[0] in ("0", "1") for i in ids), ids
    per_gpu = {g: sum(i == [g] for i in ids) for g in ("0", "1")}
    assert max(per_gpu.values()) <= 4 and sum(per_gpu.values()) == n, per_gpu  # a quarter each, at once
    assert all(r["visible"] == r["gpu_ids"][0] for r in records)  # Ray shows each trial its GPU only
    # MLflow: every trial says which GPU it had and that it trained on the CPU here
    ml = Mlflow(tmp_path, "p")
    assert len(ml.children) == n and all(r.info.status == "FINISHED" for r in ml.children)
    by_trial = {r["trial_id"]: r["gpu_ids"][0] for r in records}
    for run in ml.children:
        params = run.data.params
        assert params["ray.gpu_ids"] == by_trial[run.data.tags["fsrf.trial_id"]], run.info.run_name
        assert params["ray.device"] == "cpu" and params["train.use_gpu"] == "True"
        assert params["study.gpus_per_trial"] == "0.25"
        m = run.data.metrics
        assert m["cost/gpu_s"] == pytest.approx(0.25 * m["cost/wall_s"])  # a quarter of a GPU's time
    assert "no CUDA device exists here" in proc.stderr  # the trials' one line, forwarded by Ray
    arrived = [r["arrived"] for r in records]
    print(f"\npacking: {n} trials at once on 2 logical GPUs (GPU 0: {per_gpu['0']}, GPU 1: {per_gpu['1']}): all "
          f"{n} waited at the barrier together, arriving over {max(arrived) - min(arrived):.1f} s; study {wall:.0f} s")


@pytest.mark.slow
def test_train_workers_share_a_logical_gpu(tmp_path):
    """Ray Train: 2 workers x 0.5 GPU of 1 logical GPU (DDP over gloo without CUDA); the trial's params
    give both workers' GPU ids in rank order."""
    from test_study import Mlflow, reap, study_env, tail

    try:
        proc = subprocess.run([sys.executable, str(ROOT / "studies" / "tune_lambdas.py"), *SETS, "--name", "w",
                               "--num-samples", "1", "--max-epochs", "1", "--cpus", "2", "--gpus", "1",
                               "--workers-per-trial", "2", "--cpus-per-trial", "2", "--gpus-per-trial", "0.5"],
                              cwd=tmp_path, env=study_env(tmp_path), capture_output=True, text=True, timeout=600)
    finally:
        reap(tmp_path, grace=15)
    assert proc.returncode == 0, tail(proc)
    assert "Requesting resources: {'CPU': 0.95, 'GPU': 0.5} * 2" in proc.stderr
    (run,) = Mlflow(tmp_path, "w").children
    assert run.info.status == "FINISHED"
    assert run.data.params["ray.gpu_ids"] == "0,0" and run.data.params["ray.device"] == "cpu,cpu"
    m = run.data.metrics
    assert m["cost/gpu_s"] == pytest.approx(2 * 0.5 * m["cost/wall_s"])


if __name__ == "__main__":
    from studies import tune_lambdas
    from studies._cli import run_main

    folder, trials = sys.argv[1], int(sys.argv[2])
    run_main(lambda: tune_lambdas.main(sys.argv[3:], trainable=barrier_trainable(folder, trials, timeout=300)))
