"""The reproducibility manifest of a run: everything needed to run it again and get the same numbers.

    python studies/train.py --manifest runs/train/manifest.json      # re-run a run from its manifest

A manifest holds the code commit (and whether the tree was dirty), the package versions, every seed
(searcher, training, data, evaluation masks), the data fingerprint, the text encoder's identity, the
checkpoint-selection rule and the whole flattened config; after the run it also holds the selected
epoch, the epochs run, why the run stopped and its metrics. Every trial and robustness run logs it to
MLflow (``manifest.json`` plus ``fsrf.*`` tags); ``studies/train.py`` writes it beside ``metrics.json``.

On CPU a run is deterministic given its config, data and thread count (all three are in the manifest),
so a re-run reproduces the metrics exactly. What a manifest cannot pin: a different torch build or BLAS
(versions are recorded and a re-run warns when they differ), and which configurations a *parallel*
Optuna search proposes (the sampler's seed is recorded, but with several trials in flight the order in
which results arrive changes its proposals: optuna#4412). A trial is reproducible; a parallel search's
sequence of trials is not.
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from fsrf.config import RunConfig, build_config, flatten, unflatten
from fsrf.errors import InputError
from fsrf.protocol import SELECTION_RULE

SCHEMA = "fsrf.manifest/1"
# Run roles (tag ``fsrf.role``): what an MLflow run of this platform is. Written by ``studies/``, read by
# ``analysis/`` to find a study's runs.
ROLE_TAG = "fsrf.role"
ROLE_STUDY = "study"  # a tuning study's parent run
ROLE_TRIAL = "trial"  # one of its trials
ROLE_ROBUSTNESS = "robustness"  # a robustness study's parent run
ROLE_ROBUSTNESS_RUN = "robustness-run"  # one variant x seed of it
PACKAGES = ("torch", "numpy", "transformers", "pot", "scikit-learn", "polars", "ray", "mlflow", "optuna", "pydantic")
ROOT = Path(__file__).resolve().parents[1]


def code_state(root: str | Path = ROOT) -> dict[str, Any]:
    """The git commit of ``root`` and whether tracked files differ from it (``unknown`` outside git).

    Untracked files (run outputs, stores) do not count as dirty: only changes to versioned code do.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def package_versions(names=PACKAGES) -> dict[str, str]:
    """Python's and the named distributions' versions, from their metadata (nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def build(cfg: RunConfig, *, data_fingerprint: str, encoder_id: str, code: dict | None = None,
          search_seed: int | None = None, study: dict | None = None) -> dict[str, Any]:
    """The manifest of one run before it starts (``complete`` adds its outcome)."""
    return {
        "schema": SCHEMA,
        "code": code if code is not None else code_state(),
        "packages": package_versions(),
        "platform": platform.platform(),
        "seeds": {"search": search_seed, "train": cfg.seed, "data": cfg.data.seed, "eval_mask": cfg.eval.mask_seed},
        "data": {"fingerprint": data_fingerprint, "source": cfg.data.source, "preset": cfg.data.preset,
                 "path": cfg.data.path},
        "encoder": {"id": encoder_id, "path": cfg.encoder.path, "finetune": cfg.encoder.finetune},
        "selection": SELECTION_RULE,
        "threads": cfg.train.threads,
        "study": study or {},
        "config": flatten(cfg),
    }


def complete(manifest: dict, *, epochs_run: int, best_epoch: int, stop_reason: str,
             metrics: dict[str, float]) -> dict[str, Any]:
    """The manifest with the run's outcome: epochs are 1-based; ``metrics`` at the selected epoch."""
    return {**manifest, "outcome": {"epochs_run": epochs_run, "best_epoch": best_epoch,
                                    "stop_reason": stop_reason, "metrics": metrics}}


def tags(manifest: dict) -> dict[str, str]:
    """The manifest's identifying fields as MLflow tags (filterable in the UI)."""
    return {"fsrf.code_commit": str(manifest["code"]["commit"]), "fsrf.code_dirty": str(manifest["code"]["dirty"]),
            "fsrf.data_fingerprint": manifest["data"]["fingerprint"], "fsrf.encoder_id": manifest["encoder"]["id"],
            "fsrf.selection": manifest["selection"], "fsrf.seed": str(manifest["seeds"]["train"])}


def write(manifest: dict, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
    tmp.replace(path)


def read(path: str | Path) -> tuple[dict, RunConfig]:
    """A manifest file and the run config it describes; a bad file is refused naming it."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except OSError as err:
        raise InputError(str(path), None, f"cannot read the manifest ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise InputError(str(path), None, f"not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise InputError(str(path), "schema", f"not an FSRF run manifest (expected schema {SCHEMA!r})")
    for key in ("config", "data", "encoder", "code", "packages"):
        if not isinstance(manifest.get(key), dict):
            raise InputError(str(path), key, "missing or not a mapping")
    return manifest, build_config(unflatten(manifest["config"]), where=str(path))


def drift(manifest: dict, *, data_fingerprint: str, encoder_id: str, code: dict | None = None) -> tuple[list[str], list[str]]:
    """What differs between a manifest and the present: (errors that make a re-run meaningless,
    warnings that may change the numbers slightly)."""
    errors, warnings = [], []
    if manifest["data"]["fingerprint"] != data_fingerprint:
        errors.append(f"data fingerprint {data_fingerprint} != {manifest['data']['fingerprint']} in the manifest "
                      "(the data changed)")
    if manifest["encoder"]["id"] != encoder_id:
        errors.append(f"text encoder {encoder_id} != {manifest['encoder']['id']} in the manifest")
    code = code if code is not None else code_state()
    if code["commit"] != manifest["code"]["commit"]:
        warnings.append(f"code commit {code['commit'][:12]} != {str(manifest['code']['commit'])[:12]} in the manifest")
    if manifest["code"].get("dirty"):
        warnings.append("the manifest's run had uncommitted changes to tracked files")
    now = package_versions()
    for name, version in manifest["packages"].items():
        if now.get(name) != version:
            warnings.append(f"{name} {now.get(name)} != {version} in the manifest")
    return errors, warnings
