"""Ray trainables that run ``fsrf.train.fit`` as a Tune trial.

Two ways, the same metrics and checkpoints:
- ``function_trainable`` (``--workers-per-trial 0``, the default here): the loop runs in the trial's own
  process. Cheapest: no Train controller, ~1-3 s of overhead per trial.
- ``train_trainable`` (``--workers-per-trial N``): the Train V2 pattern, a Tune function trainable that
  fits a ``TorchTrainer`` with N workers (DDP over gloo on CPU, nccl on GPU); ``fit`` wraps the model in
  DDP when a process group exists. Costs 10-16 s per trial here, pays off with GPUs and long trials.

Each epoch reports every train/val metric and, from rank 0 only, a checkpoint (model, optimizer,
RNG state, best epoch so far); a retried or resumed trial continues from its last checkpoint.

GPUs: a trial (or each Train worker) holds ``TrialSettings.gpus_per_worker`` of a GPU, a fraction when
several trials share one (``--gpus-per-trial 0.25``: four per GPU). Ray makes only the assigned GPU
visible to the process (``CUDA_VISIBLE_DEVICES``); the trial trains on it (``fsrf.train.choose_device``
at ``local_gpu_index``, or on the CPU, said in one line, where no CUDA device exists) and its first
report says which (``PLACEMENT``: the params ``ray.gpu_ids`` and ``ray.device``).

A loss that turns NaN or infinite (``fit`` raises ``FloatingPointError``) ends the trial with a last
report holding ``failed_reason`` and NaN for the study's metrics, instead of an exception: Tune would
retry an exception from the last checkpoint, which restores the same weights and RNG state and meets
the same NaN again (and ``--resume`` would re-run it). The driver's MLflow callback ends such a trial's
run FAILED with that reason.

This module imports ``fsrf`` and Ray only: the drivers (``studies/tune_lambdas.py``,
``studies/robustness.py``) import it, never the other way round.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fsrf import variants
from fsrf.config import RunConfig, build_config, unflatten

STATE_FILE = "state.pt"
FAILED_REASON = "failed_reason"  # result key of a trial stopped by a non-finite loss


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a study shares (passed with ``tune.with_parameters``)."""

    base: dict[str, Any]  # flattened base RunConfig
    max_epochs: int
    threads: int = 1  # torch threads per trial process (or per Train worker)
    workers: int = 0  # 0: function trainable; N >= 1: TorchTrainer with N workers
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    gpus_per_worker: float = 0.0  # GPUs one trial process (or Train worker) holds; 0.25: four share a GPU
    storage: str = ""  # absolute Ray storage folder (Train runs are kept under it)
    metrics: tuple[str, ...] = ()  # the study's metrics: a non-finite trial's last report sets them to NaN
    code: dict | None = None  # the driver's git state (workers may have no checkout)
    search_seed: int | None = None
    study: dict | None = None  # study name, objective, ... for every run's manifest


REPEAT_INDEX = "__trial_index__"  # Tune's Repeater: which of a configuration's K seeds a trial is
MANIFEST = "manifest"  # result key of a trial's first report: its manifest as JSON
TRAIN_PG = "train_placement_group"  # result key: the hex id of a Train trial's worker placement group
PLACEMENT = "placement"  # result key of a trial's first report: JSON {param: value} of where it trained
COST_KEYS = ("cost/cpu_s", "cost/wall_s", "cost/gpu_s")


class Meter:
    """CPU-, wall- and GPU-seconds of one trial, carried across restores through its checkpoint.

    CPU time is this process's (all its threads); with N Train workers rank 0 measures its own share,
    so the trial's CPU-seconds are estimated as N times that.
    """

    def __init__(self, *, resume: dict | None, workers: int = 1, gpus: float = 0):
        prior = (resume or {}).get("cost", {})
        self.cpu0, self.wall0 = time.process_time(), time.time()
        self.prior_cpu, self.prior_wall = prior.get("cost/cpu_s", 0.0), prior.get("cost/wall_s", 0.0)
        self.workers, self.gpus = max(1, workers), gpus

    def read(self) -> dict[str, float]:
        wall = self.prior_wall + time.time() - self.wall0
        cpu = self.prior_cpu + (time.process_time() - self.cpu0) * self.workers
        return {"cost/cpu_s": cpu, "cost/wall_s": wall, "cost/gpu_s": wall * self.gpus}


def repeat_index(config: dict[str, Any]) -> int:
    """Which of its configuration's seeds a trial is (0 unless ``--seeds-per-config`` > 1)."""
    return int(config.get(REPEAT_INDEX, 0))


def trial_seed(base_seed: int, config: dict[str, Any]) -> int:
    """A trial's training seed: the sampled (else the base) seed plus its repeat index."""
    return int(config.get("seed", base_seed)) + repeat_index(config)


def trial_config(settings: TrialSettings, sampled: dict[str, Any]) -> RunConfig:
    """The run config of a trial: the base, the sampled values, and the trial's seed (``trial_seed``)."""
    flat = {**settings.base, **{k: v for k, v in sampled.items() if "." in k}}
    flat["seed"] = trial_seed(int(settings.base.get("seed", 0)), sampled)
    flat["train.epochs"] = settings.max_epochs
    flat["train.threads"] = settings.threads
    flat["train.use_gpu"] = settings.use_gpu
    return build_config(unflatten(flat), where="trial config")


def save_state(state: dict, folder: str) -> None:
    torch.save(state, os.path.join(folder, STATE_FILE))


def load_state(checkpoint) -> dict | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        # weights_only: a checkpoint is data, never code
        return torch.load(os.path.join(d, STATE_FILE), weights_only=True)


_PREPARED: dict[str, Any] = {}


def prepared_for(cfg: RunConfig):
    """Data tensors, cached per process: a reused actor or Train worker does not rebuild them."""
    from fsrf.train import prepare

    key = cfg.data.model_dump_json() + cfg.encoder.model_dump_json()
    if key not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[key] = prepare(cfg)
    return _PREPARED[key]


def gpu_share(settings: TrialSettings) -> float:
    """GPUs one trial process (or Train worker) holds, for its ``cost/gpu_s``: ``gpus_per_worker``, else
    one whole GPU when ``use_gpu`` (a driver that sets only ``use_gpu``)."""
    return settings.gpus_per_worker or float(settings.use_gpu)


def local_gpu_index(gpu_ids: list, visible: str | None) -> int | None:
    """The CUDA index, among the devices this process sees, of the first GPU Ray assigned it: the id's
    position in ``CUDA_VISIBLE_DEVICES`` (Ray sets it to the assigned ids; a Train worker may see its
    whole worker group's), or the id itself when that variable is unset (every GPU visible). None when
    Ray assigned no GPU. The same rule as ``ray.train.torch.get_device``, without needing Train."""
    if not gpu_ids:
        return None
    listed = [v.strip() for v in (visible or "").split(",") if v.strip()]
    first = str(gpu_ids[0])
    if visible is None:
        return int(first)
    if first not in listed:
        raise RuntimeError(f"Ray assigned GPU {first} but CUDA_VISIBLE_DEVICES is {visible!r}")
    return listed.index(first)


def placement(cfg: RunConfig) -> tuple[torch.device, dict[str, str]]:
    """Where this trial process trains with ``train.use_gpu`` (``fsrf.train.choose_device`` on the GPU Ray
    assigned it; the CPU fallback is said in one line on stderr, which Ray forwards to the driver) and
    the params that say so: ``ray.gpu_ids`` (the ids Ray assigned, comma-separated; ``none``) and
    ``ray.device``."""
    import ray

    from fsrf.train import choose_device

    ids = [str(i) for i in ray.get_gpu_ids()]
    device = choose_device(cfg.train.use_gpu, index=local_gpu_index(ids, os.environ.get("CUDA_VISIBLE_DEVICES")),
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    return device, {"ray.gpu_ids": ",".join(ids) or "none", "ray.device": str(device)}


def failed_result(settings: TrialSettings, err: BaseException) -> dict[str, Any]:
    """The last report of a trial whose loss became non-finite (see the module docstring)."""
    reason = f"non-finite loss, not retried: {type(err).__name__}: {err}"
    return {**{m: float("nan") for m in settings.metrics}, FAILED_REASON: reason}


def function_trainable(config: dict[str, Any], settings: TrialSettings, *, prepare=prepared_for) -> None:
    """A Tune function trainable: one FSRF run in this process, reporting each epoch to Tune.

    ``prepare`` turns the trial's config into its data tensors (default: ``prepared_for``, cached per
    process); the fault-tolerance tests pass one that gives a single trial NaN labels.
    """
    _quiet()
    from ray import tune

    from fsrf.train import fit

    resume = load_state(tune.get_checkpoint())
    meter = Meter(resume=resume, gpus=gpu_share(settings))
    cfg = trial_config(settings, config)
    device, where = placement(cfg)
    prep = prepare(cfg)
    torch.set_num_threads(settings.threads)
    report = reporter(tune.report, tune.Checkpoint, meter, run_manifest(settings, cfg, prep),
                      extra={PLACEMENT: json.dumps(where)})
    try:
        fit(cfg, prep=prep, report=report, resume=resume, evaluate_test=False, log=lambda s: None, device=device)
    except FloatingPointError as err:  # a trial failing in its first epoch says where it trained too
        tune.report({**failed_result(settings, err), PLACEMENT: json.dumps(where)})


def _quiet() -> None:
    """No "Checkpoint successfully created" line per epoch in the driver's output (Ray forwards the
    trial processes' INFO logs): the study prints its own progress."""
    import logging

    logging.getLogger("ray.train").setLevel(logging.WARNING)


def run_manifest(settings: TrialSettings, cfg: RunConfig, prep) -> dict:
    from fsrf import manifest

    return manifest.build(cfg, data_fingerprint=prep.data_fingerprint, encoder_id=prep.encoder_id,
                          code=settings.code, search_seed=settings.search_seed, study=settings.study)


def reporter(send, checkpoint_cls, meter: Meter, manifest: dict | None, *, checkpoint: bool = True,
             extra: dict | None = None):
    """The ``report`` callback of ``fit``: every epoch's metrics with the trial's cost so far and a
    checkpoint (model, optimizer, RNG, cost); the first report of a process also carries the manifest
    (and ``extra``)."""
    pending = {MANIFEST: json.dumps(manifest, default=str)} if manifest is not None else {}
    pending.update(extra or {})

    def report(epoch: int, metrics: dict, state) -> None:
        cost = meter.read()
        payload = {**metrics, **cost, **pending}
        pending.clear()
        if not checkpoint:
            send(payload)
            return
        with tempfile.TemporaryDirectory() as d:
            save_state({**state(), "cost": cost}, d)
            send(payload, checkpoint=checkpoint_cls.from_directory(d))

    return report


def _placement_group_id() -> dict[str, str]:
    """This Train worker's placement group, for the driver to remove when the trial ends.

    Ray 2.60's Train V2 leaves a worker group's placement group reserved when Tune terminates the trial
    actor (ASHA stopping the trial, or a trial ending) instead of the Train controller exiting on its
    own (ray#54305): later trials then wait for CPUs that never come back. ``PlacementGroupReaper``
    removes it."""
    import ray.util

    pg = ray.util.get_current_placement_group()
    return {TRAIN_PG: pg.id.hex()} if pg is not None else {}


def train_worker(loop_config: dict[str, Any]) -> None:
    """Per-worker function of the TorchTrainer: the same loop, DDP via the process group Ray made."""
    import ray.train

    from fsrf.train import fit

    settings: TrialSettings = loop_config["settings"]
    _quiet()
    cfg = build_config(unflatten(loop_config["run"]), where="trial config")
    resume = load_state(ray.train.get_checkpoint())
    meter = Meter(resume=resume, workers=settings.workers, gpus=settings.workers * gpu_share(settings))
    device, where = placement(cfg)
    where = _gathered(where)  # every rank's GPU ids, in rank order
    prep = prepared_for(cfg)
    torch.set_num_threads(settings.threads)
    rank = ray.train.get_context().get_world_rank()
    report = reporter(ray.train.report, ray.train.Checkpoint, meter,
                      run_manifest(settings, cfg, prep) if rank == 0 else None, checkpoint=rank == 0,
                      extra={**_placement_group_id(), PLACEMENT: json.dumps(where)} if rank == 0 else None)
    fit(cfg, prep=prep, report=report, resume=resume, evaluate_test=False, log=lambda s: None, device=device)


def _gathered(where: dict[str, str]) -> dict[str, str]:
    """This Train worker's placement params joined with every other rank's (``ray.gpu_ids`` one entry per
    worker in rank order, ``0,1``; ``ray.device`` the same), through the process group Ray made."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return where
    everyone: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, where)
    return {k: ",".join(w[k] for w in everyone) for k in where}


def train_trainable(config: dict[str, Any], settings: TrialSettings) -> None:
    """A Tune function trainable that fits a TorchTrainer (Ray Train V2 inside Tune)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    ctx = tune.get_context()
    cfg = trial_config(settings, config)
    per_worker = {"CPU": settings.cpus_per_worker}
    if settings.use_gpu:  # a share of a GPU per worker (0.5: two workers, of this or other trials, per GPU)
        per_worker["GPU"] = gpu_share(settings)
    # NCCL needs CUDA: logical GPUs on a CPU machine (tests, `--gpus N`) run DDP over gloo
    backend = None if torch.cuda.is_available() else "gloo"
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"run": _flatten(cfg), "settings": settings},
        torch_config=TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(num_workers=settings.workers, use_gpu=settings.use_gpu,
                                               resources_per_worker=per_worker),
        # A deterministic name lets the Train run resume after the Tune trial is restored.
        run_config=ray.train.RunConfig(name=f"train-{ctx.get_trial_id()}",
                                       storage_path=str(Path(settings.storage) / "train"),
                                       callbacks=[TuneReportCallback()]),
    )
    try:
        trainer.fit()
    except Exception as err:  # WorkerGroupError/ControllerError: the workers' errors are inside
        nonfinite = _nonfinite(err)
        if nonfinite is None:
            raise
        tune.report(failed_result(settings, nonfinite))


def _nonfinite(err: BaseException) -> BaseException | None:
    """The ``FloatingPointError`` a Train worker raised, if that is what failed the TorchTrainer."""
    seen, todo = set(), [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, FloatingPointError):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "controller_failure", None),
                 *getattr(e, "worker_failures", {}).values()]
    return None


def _flatten(cfg: RunConfig) -> dict[str, Any]:
    from fsrf.config import flatten

    return flatten(cfg)


def robustness_config(settings: TrialSettings, spec: dict[str, Any]) -> RunConfig:
    """The config of one robustness run: the base changed by ``variants.run_overrides`` (tuned values in a
    fair study, the variant's overrides, its seed, its paired-mask overlap (None: independent views) and
    a constant training rate in the train x test grid)."""
    from fsrf.config import apply_overrides

    flat = {**settings.base, **variants.run_overrides(spec["variant"], seed=spec["seed"], overlap=spec["overlap"],
                                                      train_rate=spec.get("train_rate"), tuned=spec.get("tuned")),
            "train.epochs": settings.max_epochs, "train.threads": settings.threads}
    return build_config(apply_overrides({}, flat), where="robustness run")


def selected_health(result) -> dict[str, float]:
    """The mechanism health (``health/...``, SPEC section 7) of the selected epoch, from ``fit``'s history:
    what the test metrics' model looked like on validation. Reported last, at the final step, so that
    MLflow's latest value of each ``health/...`` metric is this one and not the last epoch's."""
    epoch = next((h for h in result.history if h.get("epoch") == result.best_epoch), {})
    return {k: v for k, v in epoch.items() if k.startswith("health/")}


def robustness_trainable(config: dict[str, Any], settings: TrialSettings) -> None:
    """One run of a robustness study: train a variant with a seed, then the test protocol once.

    The last report carries the test metrics, the selected epoch's ``health/...`` metrics and a
    checkpoint holding ``metrics.json`` and, for
    synthetic data with all three modalities, ``representations.npz`` (R_ho, R_he, R_n, Z on the
    complete test split, with the labels and the true latents) for the factorization probe.
    """
    from ray import tune

    from fsrf.protocol import representations
    from fsrf.train import fit

    _quiet()
    spec = config["spec"]
    variant = variants.get(spec["variant"])
    cfg = robustness_config(settings, spec)
    torch.set_num_threads(settings.threads)
    resume = load_state(tune.get_checkpoint())
    meter = Meter(resume=resume, gpus=gpu_share(settings))
    device, where = placement(cfg)
    prep = prepared_for(cfg)
    manifest = run_manifest(settings, cfg, prep)
    if variant.closed_form:  # no training loop: ridge regression on the frozen states, one "epoch"
        from fsrf.baselines import ridge_baseline

        tune.report({**ridge_baseline(prep, mask_seed=cfg.eval.mask_seed), "epoch": 1, "best_epoch": 1,
                     **meter.read(), MANIFEST: json.dumps(manifest, default=str)})
        return
    report = reporter(tune.report, tune.Checkpoint, meter, manifest, extra={PLACEMENT: json.dumps(where)})
    try:
        result = fit(cfg, prep=prep, report=report, resume=resume, log=lambda s: None, device=device)
    except FloatingPointError as err:
        tune.report({**failed_result(settings, err), PLACEMENT: json.dumps(where)})
        return
    final = {**result.val, **result.test, **selected_health(result), "epoch": len(result.history),
             "best_epoch": result.best_epoch + 1, "wall_time_s": result.wall_time_s, **meter.read()}
    with tempfile.TemporaryDirectory() as d:
        Path(d, "metrics.json").write_text(json.dumps(result.to_json(cfg), indent=1))
        split = prep.raw.get("test")
        if split is not None and split.latents and len(prep.modalities) == 3:
            reps = representations(result.model, prep.splits["test"], modalities=prep.modalities,
                                   batch_size=cfg.eval.batch_size)
            import numpy as np

            np.savez(Path(d, "representations.npz"), labels=split.labels, **reps,
                     **{k: v for k, v in split.latents.items()})
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(d))
