"""Tests of studies/space.py: the search-space YAML is validated against the config fields before any
trial starts, every refusal names its field, and a valid space samples inside its ranges."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from conftest import ROOT, subprocess_env
from fsrf.config import RunConfig, flatten
from fsrf.errors import InputError
from studies.space import load_space, parse_space

SHIPPED = ROOT / "configs" / "search_space.yaml"


def u(low, high, dist="uniform"):
    return {"distribution": dist, "low": low, "high": high}


# (id, params, the field the error must name, a fragment of the message)
BAD_PARAMS = [
    ("unknown-param", {"loss.lambda9": u(0, 1)}, "params.loss.lambda9", "not a config field"),
    ("a-section-not-a-field", {"loss": u(0, 1)}, "params.loss", "not a config field"),
    ("low-equals-high", {"loss.margin": u(0.5, 0.5)}, "params.loss.margin", "must be below high"),
    ("low-above-high", {"loss.margin": u(0.9, 0.1)}, "params.loss.margin", "must be below high"),
    ("loguniform-low-zero", {"train.lr": u(0, 1e-3, "loguniform")}, "params.train.lr.low", "low > 0"),
    ("loguniform-low-negative", {"loss.tau": u(-1, 1, "loguniform")}, "params.loss.tau.low", "low > 0"),
    ("p0-above-one", {"missing.p0": u(0.1, 1.5)}, "params.missing.p0", "1.5"),
    ("lambda1-negative", {"loss.lambda1": u(-1, 1)}, "params.loss.lambda1", "-1"),
    ("unknown-distribution", {"loss.lambda1": u(0, 1, "normal")}, "params.loss.lambda1.distribution", "normal"),
    ("no-distribution", {"loss.lambda1": {"low": 0, "high": 1}}, "params.loss.lambda1.distribution", "None"),
    ("low-not-a-number", {"loss.lambda1": u("a", 1)}, "params.loss.lambda1.low", "must be a number"),
    ("high-missing", {"loss.lambda1": {"distribution": "uniform", "low": 0}}, "params.loss.lambda1.high",
     "must be a number"),
    ("stray-key", {"loss.lambda1": {**u(0, 1), "step": 0.1}}, "params.loss.lambda1.step", "unknown key"),
    ("choice-invalid-value", {"missing.schedule": {"distribution": "choice", "values": ["constant", "exponential"]}},
     "params.missing.schedule", "exponential"),
    ("choice-empty", {"missing.schedule": {"distribution": "choice", "values": []}},
     "params.missing.schedule.values", "non-empty list"),
    ("choice-with-range", {"missing.schedule": u(0, 1)}, "params.missing.schedule", "refused by the config"),
    ("randint-not-integer", {"seed": u(0, 2.5, "randint")}, "params.seed", "integer"),
    ("not-a-mapping", {"loss.lambda1": [0, 1]}, "params.loss.lambda1", "expected a mapping"),
    ("empty-params", {}, "params", "empty"),
    ("no-params", None, "params", "empty"),
]


@pytest.mark.parametrize("params, field, fragment", [c[1:] for c in BAD_PARAMS], ids=[c[0] for c in BAD_PARAMS])
def test_bad_parameter_is_refused_naming_its_field(params, field, fragment):
    with pytest.raises(InputError) as err:
        parse_space(params, where="bad.yaml")
    assert err.value.field == field
    assert str(err.value).startswith(f"bad.yaml: {field}: ")
    assert fragment in str(err.value)


def test_a_bad_parameter_is_named_even_after_good_ones():
    params = {"loss.lambda1": u(0.02, 2.0, "loguniform"), "train.lr": u(1e-4, 3e-3, "loguniform"),
              "missing.p1": u(0.0, 1.01)}
    with pytest.raises(InputError, match=r"params\.missing\.p1"):
        parse_space(params)


def test_closed_range_ends_are_allowed_and_checked():
    """Both ends are values the field must accept: its own limits are fine, beyond them is refused."""
    assert parse_space({"missing.p0": u(0.0, 1.0)}).params[0].high == 1.0  # the closed ends are allowed
    with pytest.raises(InputError, match=r"params\.train\.lr"):
        parse_space({"train.lr": u(1e-4, 1e9, "loguniform")})  # beyond what the field accepts


# (id, YAML text, fragment of the message)
BAD_FILES = [
    ("unknown-top-level-key", "params:\n  loss.tau: {distribution: uniform, low: 0.1, high: 1}\nsearch: tpe\n",
     "search: unknown key"),
    ("start-with-base-not-bool", "params:\n  loss.tau: {distribution: uniform, low: 0.1, high: 1}\n"
     "start_with_base: maybe\n", "start_with_base"),
    ("top-level-list", "- loss.tau\n", "top level must be a mapping"),
    ("invalid-yaml", "params: {loss.tau: [\n", "not valid YAML"),
    ("empty-file", "# nothing\n", "params: the search space is empty"),
]


@pytest.mark.parametrize("text, fragment", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_space_file_is_refused(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_space(path)
    assert str(err.value).startswith(str(path))
    assert fragment in str(err.value)


def test_missing_space_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_space(tmp_path / "nope.yaml")


@pytest.mark.parametrize("params, field", [
    ({"loss.lambda1": u(0.5, 1.0)}, "params.loss.lambda1"),  # the base value is 0.2
    ({"missing.schedule": {"distribution": "choice", "values": ["linear", "step"]}}, "params.missing.schedule"),
    ({"train.batch_size": u(8, 32, "randint")}, "params.train.batch_size"),  # randint excludes high (32, the base)
], ids=["range-excludes-base", "choice-excludes-base", "randint-high-is-the-base"])
def test_base_point_outside_the_space_is_refused(params, field):
    with pytest.raises(InputError) as err:
        parse_space(params, start_with_base=True)
    assert err.value.field == field
    parse_space(params, start_with_base=False)  # without the base point the same space is fine


def test_shipped_space_is_valid_and_starts_from_the_base_config():
    space = load_space(SHIPPED)
    names = set(space.names)
    assert {"loss.lambda1", "loss.lambda2", "loss.tau", "loss.sinkhorn_eps", "loss.margin", "loss.noise_mu",
            "loss.noise_sigma2", "missing.schedule", "train.lr"} <= names
    assert space.start_with_base
    base = flatten(RunConfig())
    for p in space.params:  # the first trial (the base config) is a point of the space
        if p.distribution == "choice":
            assert base[p.name] in p.values, p.name
        else:
            assert p.low <= base[p.name] <= p.high, p.name
    assert set(space.describe()) == names and set(space.tune_space()) == names


def test_valid_space_samples_inside_its_ranges(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"params": {
        "train.lr": u(1e-5, 1e-1, "loguniform"),
        "loss.noise_mu": u(-1.0, 1.0),
        "seed": u(3, 6, "randint"),
        "missing.schedule": {"distribution": "choice", "values": ["linear", "cosine"]},
    }, "start_with_base": False}, sort_keys=False))
    space = load_space(path)
    assert space.names == ["train.lr", "loss.noise_mu", "seed", "missing.schedule"]
    assert not space.start_with_base
    assert space.describe()["train.lr"] == "loguniform[1e-05, 0.1]"
    domains = space.tune_space()
    rng = np.random.default_rng(0)
    lr = np.array(domains["train.lr"].sample(size=2000, random_state=rng))
    assert lr.min() >= 1e-5 and lr.max() <= 1e-1
    # log scale: each decade gets about a quarter of the samples (uniform would put 90% in the last one)
    assert 0.2 < np.mean(lr < 1e-4) < 0.3 and 0.2 < np.mean(lr > 1e-2) < 0.3
    mu = np.array(domains["loss.noise_mu"].sample(size=2000, random_state=rng))
    assert mu.min() >= -1 and mu.max() <= 1 and abs(mu.mean()) < 0.1
    seeds = domains["seed"].sample(size=500, random_state=rng)
    assert set(seeds) == {3, 4, 5}  # randint excludes high, like the YAML's comment says
    assert set(domains["missing.schedule"].sample(size=200, random_state=rng)) == {"linear", "cosine"}


def test_cli_refuses_a_bad_space_before_starting_ray(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  loss.lambda9: {distribution: uniform, low: 0, high: 1}\n")
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "studies" / "tune_lambdas.py"), "--space", str(bad)],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    wall = time.time() - t0
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert "params.loss.lambda9" in lines[0] and str(bad) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no mlflow.db, no runs/: nothing started
    assert wall < 30, f"refusal took {wall:.1f} s"
