"""Starting or joining Ray for a study, and what must hold before it starts."""

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


def load_data(cfg):
    """The splits named by ``cfg.data`` (``fsrf.data.load_dataset`` with the config's fields)."""
    from fsrf.data import load_dataset

    d = cfg.data
    return load_dataset(source=d.source, preset=d.preset, seed=d.seed, size_scale=d.size_scale, path=d.path,
                        trust_pickle=d.trust_pickle, text_column=d.text_column, label_column=d.label_column,
                        split_column=d.split_column)


def check_data(cfg) -> None:
    """Read the dataset once in the driver, before Ray, and fill the text cache.

    A missing, unreadable or malformed file, or a pickle without ``data.trust_pickle``, is then refused
    in seconds with one line naming the file and field, instead of failing every trial on the cluster.
    """
    splits = load_data(cfg)
    warm_text_cache(cfg, splits)


def warm_text_cache(cfg, splits) -> None:
    """Encode every utterance once here, with all the driver's cores, before trials start.

    Otherwise trials that start together each find the cache empty and encode the same texts in
    parallel (on MOSEI's 22k utterances that is minutes of duplicated work per trial). A fine-tuned
    encoder runs live and has no cache.
    """
    if cfg.encoder.finetune:
        return
    import sys

    from fsrf import text

    path = text.resolve_path(cfg.encoder.path)
    print("text cache: checking (encoding once if needed) ...", file=sys.stderr, flush=True)
    for split in splits.values():
        text.cached_states(split.text, encoder_path=path, max_tokens=cfg.data.max_tokens,
                           cache_dir=cfg.encoder.cache_dir)
