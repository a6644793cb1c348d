"""How many FSRF trials share a GPU, and what a GPU cluster gets through per hour: the plan that
``python studies/tune_lambdas.py --dry-run`` prints before anything starts.

    python studies/tune_lambdas.py --dry-run                                   # 8 GPUs, the default study
    python studies/tune_lambdas.py --dry-run --gpus 16 --gpus-per-trial 0.25 --cpus 128 --max-epochs 20
    python studies/tune_lambdas.py --dry-run --config configs/paper_mosei.yaml --set train.bf16=true

A trial's GPU memory is measured, not guessed: the real model of the study's config, built on the CPU
with a preset's shapes (MOSI or MOSEI feature widths, the longest sequences, the config's batch size),
runs one training step (both MRM views, every loss, backward) while ``saved_tensors_hooks`` adds up
the tensors autograd keeps for backward (the activation memory of a batch) and a dispatch mode counts
the kernels the step launches and its FLOPs. Parameter and optimizer memory follows from the parameter
count. Everything else is an assumption, named in ``ASSUMPTIONS`` and printed under the table.

Nothing here imports Ray, starts a process or writes a file; torch is imported only to measure (the
study's flags are checked with ``trials_at_once`` and ``gpu_slots`` before that).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

GPU_GIB = (24, 40, 80, 141)  # A10G/L4, A100 40GB, A100/H100 80GB, H200
# Peak dense matmul throughput (TFLOP/s: fp32 without TF32, which PyTorch's default leaves off for
# matmuls, and bf16) of one GPU of each memory size in the table (vendor data sheets): A10G, A100 40GB,
# H100 SXM 80GB, H200.
GPU_TFLOPS = {24: (31.2, 70.0), 40: (19.5, 312.0), 80: (67.0, 989.0), 141: (67.0, 989.0)}
GPU_NAME = {24: "A10G", 40: "A100-40GB", 80: "H100-80GB", 141: "H200"}
CLUSTER_GPUS = 8  # the table's cluster
CUDA_CONTEXT_MIB = 600  # per trial process: CUDA context, cuBLAS/cuDNN workspaces, allocator slack
SAFETY = 0.85  # plan on 85 % of a GPU's memory (fragmentation, the caching allocator's reserve)
# The step's peak memory besides parameters and gradients, over the tensors saved for backward: measured
# 1.19 / 1.23 (frozen encoder, fp32 / bf16) and 1.00 / 1.01 (live) on the CPU with a tracker of live
# tensor storages (MOSI shapes, batch 32); 1.5 leaves room for the CUDA allocator's rounding.
ACTIVATION_PEAK = 1.5
HOST_US_PER_LAUNCH = 10.0  # host time per kernel launch in eager PyTorch (dispatch + cudaLaunchKernel)
GPU_US_PER_LAUNCH = 3.0  # GPU time of a kernel that has almost nothing to do
MATMUL_EFFICIENCY = 0.4  # of the peak, on these small matrices
VALIDATION_SHARE = 0.25  # per-epoch validation and health passes, as a share of the epoch's training
TRIAL_START_S = 5.0  # per trial: model build, data to the process, placement (actors are reused)
ASSUMPTIONS = (
    (f"GPU memory per trial = {CUDA_CONTEXT_MIB} MiB (CUDA context, workspaces) + parameters, gradients, "
     f"Adam's two moments and the best epoch's copy (fp32) + {ACTIVATION_PEAK:g} x the tensors saved for "
     "backward (measured; a step's peak besides parameters and gradients was 1.0-1.25x them on the CPU); "
     f"a GPU is filled to {SAFETY:.0%}; the training data stay in host memory (batches are copied per step)"),
    (f"step time: a trial's step is launch-bound: {HOST_US_PER_LAUNCH:g} us of host time per kernel launch "
     "(kernels counted on the CPU: aten ops that are not views; clipping and Adam use foreach kernels on "
     f"CUDA and are not counted); the GPU is busy {GPU_US_PER_LAUNCH:g} us per launch plus the step's "
     f"FLOPs at {MATMUL_EFFICIENCY:.0%} of the peak ("
     + ", ".join(f"{GPU_NAME[g]} {GPU_TFLOPS[g][0]:g}/{GPU_TFLOPS[g][1]:g}" for g in GPU_GIB)
     + " TFLOP/s fp32/bf16)"),
    ("k trials on one GPU each take max(host time, k x GPU time) per step (time-slicing, no MPS); "
     "'useful' is the largest k before they slow each other down, capped by memory"),
    (f"a trial = its expected epochs (ASHA: a trial reaches rung i with probability 3^-i) x steps per epoch "
     f"x step time x {1 + VALIDATION_SHARE:g} (validation, health) + {TRIAL_START_S:g} s; one CPU core "
     "and ~1 GiB of host memory per trial on the GPU's node"),
)


# ------------------------------------------------------------------------------------- concurrency

def _whole(x: float) -> float:
    """``x`` rounded down, allowing for float error (2 / 0.1 is 19.999...); infinity stays."""
    return x if math.isinf(x) else math.floor(x + 1e-6)


def gpu_slots(gpus: float, per_trial: float) -> float:
    """Trials (or Train workers) holding ``per_trial`` GPUs each that fit on a node with ``gpus`` GPUs.
    A share below one must fit inside one GPU (Ray packs 0.3 three to a GPU, not 3.33); whole GPUs of
    one trial come from one node. Infinite when a trial holds none."""
    if per_trial <= 0:
        return math.inf
    if per_trial <= 1:
        return _whole(gpus) * _whole(1 / per_trial)
    return _whole(gpus / per_trial)


def trials_at_once(nodes: list[tuple[float, float]], *, cpus_per_trial: float, gpus_per_trial: float = 0.0,
                   workers: int = 0) -> float:
    """How many trials a cluster of ``nodes`` (CPUs, GPUs) runs at once.

    Function trainable (``workers`` 0): a trial is one bundle of ``cpus_per_trial`` CPUs and
    ``gpus_per_trial`` GPUs on one node. Ray Train (``workers`` N): the trial holds a sliver of CPU and
    N workers of ``gpus_per_trial`` GPUs each (``cpus_per_trial`` is the trial's total), placed on any
    nodes. 0: not even one trial fits; infinite: nothing limits them (a plan with unbounded CPUs and
    no GPUs per trial).
    """
    if workers == 0:
        return sum(min(_whole(cpu / cpus_per_trial), gpu_slots(gpu, gpus_per_trial)) for cpu, gpu in nodes)
    by_cpu = _whole(sum(cpu for cpu, _ in nodes) / cpus_per_trial)
    by_gpu = _whole(sum(gpu_slots(gpu, gpus_per_trial) for _, gpu in nodes) / workers)
    return min(by_cpu, by_gpu)


# ----------------------------------------------------------------------------------- measurement

@dataclass(frozen=True)
class Footprint:
    """What one training step of a config needs, measured on the CPU with a preset's shapes."""

    preset: str
    live: bool  # the text encoder runs (fine-tuned) inside the model
    batch: int
    params: int  # every parameter (a frozen encoder's too: it sits on the GPU)
    trainable: int
    saved_bytes: int  # tensors autograd saves for backward in one step (both views)
    launches: int  # kernel-launching aten ops of forward + backward
    flops: int  # of forward + backward
    bf16: bool

    @property
    def state_mib(self) -> float:
        """Parameters and the best epoch's copy (fp32, all), gradients and Adam's two moments (trainable)."""
        return (8 * self.params + 12 * self.trainable) / 2**20

    @property
    def activation_mib(self) -> float:
        return self.saved_bytes / 2**20

    @property
    def trial_mib(self) -> float:
        return CUDA_CONTEXT_MIB + self.state_mib + ACTIVATION_PEAK * self.activation_mib


def _launch_counter():
    """A dispatch mode that counts the aten ops that launch a kernel (views, ``detach`` and allocations
    launch none); ``.n`` after use."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    no_kernel = {aten.detach.default, aten.lift_fresh.default, aten.empty.memory_format, aten.empty_strided.default}

    class Launches(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view and func not in no_kernel:
                self.n += 1
            return func(*args, **(kwargs or {}))

    return Launches()


def measure(cfg, *, preset: str, live: bool) -> Footprint:
    """One training step of ``cfg``'s model with ``preset``'s feature widths, the longest sequences
    (``data.max_tokens`` tokens, 50 frames), ``train.batch_size`` samples and every modality present in
    both MRM views (the largest step), the text encoder live (fine-tuned) or its states cached."""
    import torch
    from torch.autograd.graph import saved_tensors_hooks
    from torch.utils.flop_counter import FlopCounterMode

    from fsrf import MODALITIES, text
    from fsrf.data import FEATURE_DIMS, SEQ_LEN
    from fsrf.model import Inputs
    from fsrf.train import build_model, train_losses

    cfg = cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"finetune": live}),
                                 "data": cfg.data.model_copy(update={"preset": preset})})
    path = text.resolve_path(cfg.encoder.path)
    from transformers import AutoConfig

    d_l = AutoConfig.from_pretrained(path).hidden_size
    d_a, d_v = FEATURE_DIMS[preset]
    shapes = SimpleNamespace(encoder_path=path, dims={"l": d_l, "a": d_a, "v": d_v}, modalities=MODALITIES)
    torch.manual_seed(0)
    model = build_model(cfg, shapes)
    model.train()
    B, T = cfg.train.batch_size, cfg.data.max_tokens
    full = lambda t: torch.ones(B, t, dtype=torch.bool)  # noqa: E731  (B x t, all valid)
    text_in = torch.randint(1000, 20000, (B, T)) if live else torch.randn(B, T, d_l)
    x = Inputs(text_in, full(T), torch.randn(B, SEQ_LEN, d_a), full(SEQ_LEN), torch.randn(B, SEQ_LEN, d_v), full(SEQ_LEN))
    y = torch.randn(B)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:  # a parameter is counted in the state, not twice
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    launches, flops = _launch_counter(), FlopCounterMode(display=False)
    with flops, launches, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Sinkhorn on random inputs may not converge: no matter
        with saved_tensors_hooks(keep, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.bf16):
            terms = train_losses(cfg, model, x, y, rate=0.0, generator=torch.Generator().manual_seed(0))
        terms["total"].backward()
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Footprint(preset, live, B, params, trainable, sum(saved.values()), launches.n,
                     int(flops.get_total_flops()), cfg.train.bf16)


# ------------------------------------------------------------------------------------- the plan

def expected_epochs(max_epochs: int, grace: int | None, reduction: int = 3) -> float:
    """Mean epochs a trial runs: ``max_epochs`` under FIFO (``grace`` None); under ASHA (rungs at grace,
    grace x 3, ... below max_epochs) a trial reaches rung i with probability 3^-i."""
    if grace is None:
        return float(max_epochs)
    rungs, r = [], grace
    while r < max_epochs:
        rungs.append(r)
        r *= reduction
    out = sum((reduction ** -i - reduction ** -(i + 1)) * rung for i, rung in enumerate(rungs))
    return out + reduction ** -len(rungs) * max_epochs


@dataclass(frozen=True)
class GpuPlan:
    gib: int
    by_memory: int  # trials whose memory fits on one GPU
    useful: int  # trials per GPU before they slow each other down (at most by_memory)
    step_ms: float  # a trial's step with `useful` trials on the GPU
    trials_per_hour: float  # on CLUSTER_GPUS GPUs


def gpu_plan(fp: Footprint, gib: int, *, train_samples: int, epochs: float) -> GpuPlan:
    """Trials per GPU of ``gib`` GiB and the cluster's trials per hour, under ``ASSUMPTIONS``."""
    by_memory = max(0, math.floor(SAFETY * gib * 1024 / fp.trial_mib))
    host = fp.launches * HOST_US_PER_LAUNCH * 1e-6
    peak = GPU_TFLOPS[gib][1 if fp.bf16 else 0] * 1e12 * MATMUL_EFFICIENCY
    device = fp.launches * GPU_US_PER_LAUNCH * 1e-6 + fp.flops / peak
    useful = min(by_memory, max(1, math.floor(host / device)))
    step = max(host, max(useful, 1) * device)
    steps = math.ceil(train_samples / fp.batch)
    trial_s = epochs * steps * step * (1 + VALIDATION_SHARE) + TRIAL_START_S
    return GpuPlan(gib, by_memory, useful, step * 1e3, CLUSTER_GPUS * useful * 3600 / trial_s)


def footprints(cfg) -> list[Footprint]:
    """The table's rows: MOSI and MOSEI shapes, the text encoder frozen (cached states) and live."""
    return [measure(cfg, preset=p, live=live) for p in ("mosi", "mosei") for live in (False, True)]


def tables(cfg, rows: list[Footprint], *, epochs: float) -> str:
    """The capacity tables (Markdown) of ``rows`` measured with ``cfg``, trials of ``epochs`` epochs:
    memory (what one trial needs, how many fit on a GPU) and time (a step, trials per hour)."""
    from fsrf.data import PRESETS

    def row(fp: Footprint) -> str:
        return f"| {fp.preset.upper()} | {'live (fine-tuned)' if fp.live else 'frozen (cached states)'} |"

    sizes = " | ".join(f"{g} GiB" for g in GPU_GIB)
    memory = [f"| preset | text encoder | params (M) | params + grads + Adam + best copy, MiB | saved for backward, "
              f"MiB / batch | GPU memory per trial, GiB | trials per GPU: {sizes} |",
              "|" + " --- |" * (6 + len(GPU_GIB))]
    time_ = [f"| preset | text encoder | kernels / step | GFLOP / step | host ms / step | useful trials per GPU: {sizes} "
             f"| trials / hour, {CLUSTER_GPUS} GPUs of {sizes} |", "|" + " --- |" * (5 + 2 * len(GPU_GIB))]
    for fp in rows:
        train = max(8, round(PRESETS[fp.preset][0] * cfg.data.size_scale))
        plans = [gpu_plan(fp, g, train_samples=train, epochs=epochs) for g in GPU_GIB]
        memory.append(f"{row(fp)} {fp.params / 1e6:.2f} | {fp.state_mib:.0f} | {fp.activation_mib:.0f} | "
                      f"{fp.trial_mib / 1024:.2f} | " + " | ".join(f"{p.by_memory}" for p in plans) + " |")
        time_.append(f"{row(fp)} {fp.launches} | {fp.flops / 1e9:.1f} | {fp.launches * HOST_US_PER_LAUNCH / 1e3:.1f} | "
                     + " | ".join(f"{p.useful}" for p in plans) + " | "
                     + " | ".join(f"{p.trials_per_hour:.0f}" for p in plans) + " |")
    return "\n".join(memory + [""] + time_)  # a header "...: 24 GiB | 40 GiB | ..." is one column per size


def plan(cfg, *, max_epochs: int, grace: int | None, gpus: float, gpus_per_trial: float, cpus: float | None,
         cpus_per_trial: float, workers: int) -> str:
    """The text ``--dry-run`` prints: the study's settings, the given cluster's concurrency, the capacity
    table and its assumptions."""
    from fsrf import text

    t0 = time.time()
    epochs = expected_epochs(max_epochs, grace)
    rows = footprints(cfg)
    nodes = [(cpus if cpus is not None else math.inf, gpus)]
    at_once = trials_at_once(nodes, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, workers=workers)
    per_gpu = gpu_slots(1, gpus_per_trial * max(1, workers))
    own = next(r for r in rows if r.preset == cfg.data.preset and r.live == cfg.encoder.finetune)
    fits = [g for g in GPU_GIB if gpu_plan(own, g, train_samples=1, epochs=1).by_memory >= per_gpu]
    text.resolve_path(cfg.encoder.path)  # a missing encoder is refused here as in the study
    encoder = cfg.encoder.path or "all-MiniLM-L6-v2 (default)"
    sched = f"ASHA grace {grace}" if grace is not None else "FIFO"
    out = [
        "dry run: nothing was started or written",
        f"study: batch {cfg.train.batch_size}, width {cfg.model.width}, {'bf16 autocast' if cfg.train.bf16 else 'fp32'}, "
        f"encoder {encoder}, <= {max_epochs} epochs ({sched}: {epochs:.1f} expected per trial)",
        f"cluster: {gpus:g} GPUs" + (f", {cpus:g} CPUs" if cpus is not None else " (CPUs not limiting)")
        + f"; per trial {cpus_per_trial:g} CPU, {gpus_per_trial:g} GPU"
        + (f" per worker x {workers} Ray Train workers" if workers else "")
        + f" -> {'no limit to the' if math.isinf(at_once) else f'{at_once:g}'} trials at once"
        + (f", {per_gpu:g} per GPU" if gpus_per_trial > 0 and math.isfinite(per_gpu) else ""),
    ]
    if gpus_per_trial > 0:
        useful = sorted({gpu_plan(own, g, train_samples=1, epochs=1).useful for g in GPU_GIB})
        useful_text = f"{useful[0]}" if len(useful) == 1 else f"{useful[0]}-{useful[-1]}"
        out.append(f"this study's trials ({cfg.data.preset.upper()}, {'live' if cfg.encoder.finetune else 'frozen'} "
                   f"encoder, {own.trial_mib / 1024:.2f} GiB each): {per_gpu:g} per GPU fit on "
                   + (f"{', '.join(f'{g}' for g in fits)} GiB GPUs" if fits else "none of the GPUs below")
                   + f"; useful per GPU: {useful_text}")
    out += ["", tables(cfg, rows, epochs=epochs), "",
            ("trials per GPU: how many fit in its memory; useful: how many run before they slow each other down "
             f"(at most those); trials / hour: a cluster of {CLUSTER_GPUS} such GPUs, each running the useful number."),
            "assumptions:", *(f"- {a}" for a in ASSUMPTIONS),
            f"(measured on this machine's CPU in {time.time() - t0:.1f} s)"]
    return "\n".join(out)
