"""Tests of fsrf.config: the paper's defaults, YAML + dotted overrides, flat names, and refusals by field."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from fsrf.config import RunConfig, apply_overrides, build_config, flatten, load_config, parse_value, unflatten
from fsrf.errors import InputError

# SPEC section 6: the flat names that MLflow params and Tune search spaces use.
SPEC_NAMES = ("loss.lambda1", "loss.tau", "loss.sinkhorn_eps", "loss.margin", "loss.noise_mu",
              "loss.noise_sigma2", "missing.schedule", "train.lr", "seed")


def test_defaults_are_the_papers():
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.loss.lambda1 == 0.2 and cfg.loss.lambda2 == 0.1  # SPEC section 4
    assert cfg.model.width == 128  # SPEC section 3
    assert (cfg.model.dhf, cfg.model.das, cfg.model.noise) == (True, True, True)  # the full model
    assert cfg.data.source == "synthetic" and cfg.data.preset == "mosi"  # runs with no download
    assert cfg.encoder.path is None and not cfg.encoder.finetune  # frozen MiniLM from the package


def test_empty_yaml_is_the_default_run(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert load_config(path) == RunConfig()


def test_yaml_then_overrides_with_parsed_scalars(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"seed": 3, "loss": {"lambda1": 0.3, "tau": 0.2},
                                    "train": {"epochs": 4}, "model": {"width": 64}}))
    cfg = load_config(path, ["loss.lambda1=0.25", "train.lr=1e-4", "model.dhf=false", "train.max_batches=3",
                             "missing.schedule=cosine", "missing.overlap=null", "seed=7", "data.path=a=b.csv"])
    assert cfg.loss.lambda1 == 0.25  # the command line wins over the file
    assert cfg.loss.tau == 0.2 and cfg.train.epochs == 4 and cfg.model.width == 64  # the file's values stay
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)  # "1e-4" is a YAML string: pydantic parses it
    assert cfg.model.dhf is False  # a bool, not the string "false"
    assert cfg.train.max_batches == 3 and isinstance(cfg.train.max_batches, int)
    assert cfg.missing.schedule == "cosine" and cfg.missing.overlap is None
    assert cfg.seed == 7
    assert cfg.data.path == "a=b.csv"  # split at the first "=" only
    assert cfg.loss.lambda2 == 0.1  # untouched fields keep their defaults


def test_overrides_as_mapping_and_input_not_mutated():
    raw = {"loss": {"lambda1": 0.3}}
    out = apply_overrides(raw, {"loss.lambda2": 0.5, "train.epochs": 2})
    assert raw == {"loss": {"lambda1": 0.3}}
    assert out == {"loss": {"lambda1": 0.3, "lambda2": 0.5}, "train": {"epochs": 2}}


def test_flatten_names_and_round_trip():
    cfg = load_config(None, ["loss.lambda1=0.7", "missing.schedule=step", "missing.overlap=0.25", "seed=5",
                             "model.noise=false", "encoder.path=/models/bert"])
    flat = flatten(cfg)
    for name in SPEC_NAMES:
        assert name in flat
    assert all(not isinstance(v, dict) for v in flat.values())
    assert flat["loss.lambda1"] == 0.7 and flat["missing.schedule"] == "step" and flat["seed"] == 5
    assert unflatten(flat) == cfg.model_dump()
    assert build_config(unflatten(flat)) == cfg
    assert flatten(unflatten(flat)) == flat
    # every field of every section (and of a section's own sub-section, such as missing.modality_scale)
    # has its flat name: nothing is dropped on the way to MLflow
    def leaves(model) -> int:
        values = (getattr(model, f) for f in type(model).model_fields)
        return sum(leaves(v) if isinstance(v, BaseModel) else 1 for v in values)

    assert len(flat) == leaves(cfg)
    assert flat["missing.modality_scale.a"] == 1.0


def test_one_parser_reads_set_values_and_mlflow_params():
    """``--set`` text and MLflow's string params (``str(value)``; ``--from-run`` reads a tuning study's
    ``best.*`` back) go through the same ``parse_value``: a config written as strings reads back equal."""
    cfg = load_config(None, ["train.lr=1e-05", "missing.schedule=cosine", "model.dhf=false", "loss.tau=0.25",
                             "eval.modality_rates=[[0.9, 0.3, 0.3]]", "seed=7"])
    as_params = {k: str(v) for k, v in flatten(cfg).items() if v is not None}  # what MLflow keeps
    assert build_config(unflatten({k: parse_value(v) for k, v in as_params.items()})) == cfg
    assert parse_value("0.3") == 0.3 and parse_value("true") is True and parse_value("null") is None
    assert parse_value("cosine") == "cosine" and parse_value("[1, 2") == "[1, 2"  # not YAML: the text itself
    assert parse_value(0.3) == 0.3 and parse_value(False) is False  # already a value: as it is


def test_config_is_frozen():
    cfg = RunConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.loss.lambda1 = 0.5  # type: ignore[misc]
    assert cfg.loss.lambda1 == 0.2


BAD_OVERRIDES = [
    # (overrides, fragments the one-line message must contain)
    (["loss.lambda3=1"], ["loss.lambda3", "unknown field"]),
    (["optimiser.lr=0.1"], ["optimiser", "unknown field"]),
    (["train.epochs=abc"], ["train.epochs", "integer", "'abc'"]),
    (["train.epochs=2.5"], ["train.epochs", "2.5"]),
    (["model.dhf=maybe"], ["model.dhf", "boolean"]),
    (["loss.lambda1=-0.1"], ["loss.lambda1", "-0.1"]),
    (["loss.lambda2=101"], ["loss.lambda2", "101"]),
    (["missing.p0=1.5"], ["missing.p0", "1.5"]),
    (["missing.overlap=2"], ["missing.overlap"]),
    (["missing.schedule=exponential"], ["missing.schedule", "exponential"]),
    (["data.size_scale=0"], ["data.size_scale"]),
    (["data.source=transcripts"], ["data.path", "transcripts"]),
    (["data.source=mmsa"], ["data.path", "mmsa"]),
    (["model.seq_width=30"], ["model.seq_width", "model.seq_heads"]),
    (["model.seq_heads=3"], ["model.seq_width", "model.seq_heads"]),
    (["train.batch_size=1"], ["train.batch_size"]),
    (["seed=abc"], ["seed"]),
    (["seed.x=1"], ["seed"]),  # a scalar used as a section
    (["loss.lambda1"], ["--set", "loss.lambda1", "key=value"]),
]


@pytest.mark.parametrize("overrides, fragments", BAD_OVERRIDES, ids=[o[0] for o, _ in BAD_OVERRIDES])
def test_bad_override_is_one_line_naming_the_field(overrides, fragments):
    with pytest.raises(InputError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


BAD_FILES = [
    # (file content or None for a missing file, fragments)
    (None, ["not found"]),
    ("loss: [unclosed\n", ["not valid YAML"]),
    ("- loss\n- train\n", ["mapping"]),
    ("loss:\n  lambda1: 0.2\n  lambda9: 1\n", ["loss.lambda9", "unknown field"]),
    ("loss:\n  lambda1: high\n", ["loss.lambda1", "'high'"]),
    ("missing:\n  p1: 1.01\n", ["missing.p1"]),
    ("data:\n  source: transcripts\n", ["data.path"]),
]


@pytest.mark.parametrize("content, fragments", BAD_FILES,
                         ids=["missing-file", "invalid-yaml", "list", "unknown-key", "wrong-type", "rate", "no-path"])
def test_bad_file_is_one_line_naming_the_file_and_field(tmp_path, content, fragments):
    path = tmp_path / "run.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_bad_value_in_file_is_reported_even_when_an_override_is_valid(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  batch_size: 1\n")
    with pytest.raises(InputError, match="train.batch_size"):
        load_config(path, ["loss.lambda1=0.3"])
    assert load_config(path, ["train.batch_size=2"]).train.batch_size == 2  # an override can repair it
