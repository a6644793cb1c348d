"""The reproducibility manifest: what it records, and ``studies/train.py --manifest`` re-running a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, subprocess_env
from fsrf import manifest
from fsrf.config import load_config
from fsrf.data import fingerprint, load_dataset

TRAIN = ROOT / "studies" / "train.py"
SMOKE = ["data.size_scale=0.05", "train.epochs=2", "model.width=16", "model.seq_width=8"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_code_state_follows_tracked_files_only(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git(repo, "add", "a.py")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "first")
    head = git(repo, "rev-parse", "HEAD")
    assert manifest.code_state(repo) == {"commit": head, "dirty": False}
    (repo / "runs.parquet").write_text("output")  # untracked outputs do not make the code dirty
    assert manifest.code_state(repo) == {"commit": head, "dirty": False}
    (repo / "a.py").write_text("x = 2\n")
    assert manifest.code_state(repo) == {"commit": head, "dirty": True}
    assert manifest.code_state(tmp_path / "nowhere") == {"commit": "unknown", "dirty": None}


def test_build_records_seeds_data_encoder_and_config():
    cfg = load_config(None, ["seed=7", "data.seed=3", "eval.mask_seed=99", "loss.lambda1=0.35"])
    m = manifest.build(cfg, data_fingerprint="abc", encoder_id="enc-1", code={"commit": "c0ffee", "dirty": False},
                       search_seed=5, study={"name": "s"})
    assert m["seeds"] == {"search": 5, "train": 7, "data": 3, "eval_mask": 99}
    assert m["data"]["fingerprint"] == "abc" and m["encoder"]["id"] == "enc-1"
    assert m["config"]["loss.lambda1"] == 0.35 and m["config"]["seed"] == 7
    assert m["packages"]["torch"] == __import__("torch").__version__
    assert m["selection"].startswith("epoch with the best val/Non0_F1_score/objective")
    tags = manifest.tags(m)
    assert tags["fsrf.code_commit"] == "c0ffee" and tags["fsrf.seed"] == "7" and tags["fsrf.data_fingerprint"] == "abc"
    errors, warnings = manifest.drift(m, data_fingerprint="abd", encoder_id="enc-1", code={"commit": "c0ffee"})
    assert len(errors) == 1 and "data fingerprint" in errors[0] and warnings == []
    errors, warnings = manifest.drift(m, data_fingerprint="abc", encoder_id="enc-2", code={"commit": "beef"})
    assert len(errors) == 1 and "encoder" in errors[0] and len(warnings) == 1 and "commit" in warnings[0]


def run_train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN), *args], cwd=cwd, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def original(tmp_path_factory, fsrf_cache):
    cwd = tmp_path_factory.mktemp("manifest")
    proc = run_train(cwd, *[a for kv in SMOKE for a in ("--set", kv)], "--set", "seed=3", "--output", "a")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, json.loads((cwd / "a" / "manifest.json").read_text()), json.loads((cwd / "a" / "metrics.json").read_text())


def test_train_writes_a_manifest_matching_its_run(original):
    _, m, metrics = original
    cfg = load_config(None, SMOKE)
    assert m["data"]["fingerprint"] == fingerprint(load_dataset(cfg.data))
    assert m["seeds"]["train"] == 3 and m["config"]["seed"] == 3
    assert m["config"]["model.width"] == cfg.model.width == 16
    assert m["code"]["commit"] == git(ROOT, "rev-parse", "HEAD")
    out = m["outcome"]
    assert out["epochs_run"] == 2 and out["best_epoch"] == metrics["best_epoch"] + 1
    assert out["metrics"]["test/Non0_F1_score/lav"] == metrics["test"]["test/Non0_F1_score/lav"]
    assert out["metrics"]["val/Non0_F1_score/objective"] == metrics["val"]["val/Non0_F1_score/objective"]


def test_rerun_from_the_manifest_reproduces_every_metric(original, tmp_path):
    cwd, m, metrics = original
    proc = run_train(tmp_path, "--manifest", str(cwd / "a" / "manifest.json"), "--output", "b")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert f"reproduced: {len(m['outcome']['metrics'])} metrics equal" in proc.stdout
    again = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert again["test"] == metrics["test"] and again["val"] == metrics["val"]


def test_a_changed_seed_is_not_reproduced(original, tmp_path):
    cwd, m, _ = original
    changed = {**m, "config": {**m["config"], "seed": 4}}
    (tmp_path / "m.json").write_text(json.dumps(changed))
    proc = run_train(tmp_path, "--manifest", "m.json", "--output", "c")
    assert proc.returncode == 1 and "NOT reproduced" in proc.stdout, proc.stdout + proc.stderr[-2000:]


@pytest.mark.parametrize("edit, field", [
    (lambda m: {**m, "data": {**m["data"], "fingerprint": "0" * 16}}, "data"),
    (lambda m: {**m, "schema": "other"}, "schema"),
    (lambda m: {k: v for k, v in m.items() if k != "config"}, "config"),
    (lambda m: {**m, "config": {**m["config"], "loss.tau": -1}}, "loss.tau"),
])
def test_bad_manifests_are_refused_in_one_line(original, tmp_path, edit, field):
    _, m, _ = original
    (tmp_path / "m.json").write_text(json.dumps(edit(m)))
    proc = run_train(tmp_path, "--manifest", "m.json", "--output", "d")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("error: ") and "m.json" in lines[-1] and field in lines[-1], \
        proc.stderr[-2000:]
    assert not (tmp_path / "d").exists()  # nothing written


def test_manifest_excludes_other_run_options(tmp_path):
    proc = run_train(tmp_path, "--manifest", "m.json", "--set", "seed=1")
    assert proc.returncode == 2 and "--manifest takes the whole run" in proc.stderr
