"""Starting or joining Ray for a study."""

from __future__ import annotations

import os

from studies._paths import ROOT


def start_ray(address: str | None, cpus: float | None) -> float:
    """Join the cluster at ``address`` or start a local Ray with explicit CPUs; returns the cluster's CPUs.

    Ray workers run in Ray's session folder: the repository goes on their PYTHONPATH (a checkout that
    was not pip-installed still works) and Hugging Face stays offline.
    """
    import ray

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # narrow the window a killed driver loses
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if os.environ.get("FSRF_CACHE"):
        env["FSRF_CACHE"] = os.environ["FSRF_CACHE"]
    if address:
        ray.init(address=address, runtime_env={"env_vars": env})
    else:
        env["PYTHONPATH"] = str(ROOT)
        ray.init(num_cpus=cpus or os.cpu_count(), include_dashboard=False, runtime_env={"env_vars": env})
    return float(ray.cluster_resources().get("CPU", 1))
