"""Tests of fsrf.train and the studies/train.py entry point: the protocol's metric names, learning,
determinism, pinned values, ablations, text-only data, real MOSI transcripts and bad input.

In-process runs use the real ``RunConfig`` shrunk with ``--set``-style overrides; end-to-end runs call
the real command line in a subprocess. Every run uses the default frozen MiniLM encoder, whose states
are cached in ``$FSRF_CACHE`` (see conftest), so only the first session pays for encoding.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import pytest

from fsrf.config import load_config
from fsrf.protocol import (BURST, HEADLINE, INTRA, INTRA_POINTS, OBJECTIVE, SELECTION_RULE, TABLE, Condition,
                           conditions_for, evaluate, per_modality_conditions)
from fsrf.train import build_model, fit, prepare

ROOT = Path(__file__).resolve().parents[1]
MOSI_CSV = ROOT.parent / "shared" / "data" / "mosi" / "label.csv"  # not shipped: see shared/data/README.md

METRICS = ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr")
FRACTIONS = METRICS[:6]  # in [0, 1]; MAE and Corr are not
# The metric names of SPEC section 6 (conditions' names are pinned in test_protocol.py).
TABLE_NAMES = [c.name for c in TABLE]
INTRA_NAMES = [c.name for c in INTRA]
BURST_NAMES = [c.name for c in BURST]
# The per-modality extension, evaluated on test and on the selected epoch's validation: 30 curve points,
# their three averages and the default eval.modality_rates (each modality in turn at 0.9, the others 0.3).
PER_MODALITY = [*(c.name for c in per_modality_conditions()), "intra_l_avg", "intra_a_avg", "intra_v_avg",
                "rates_l0.9_a0.3_v0.3", "rates_l0.3_a0.9_v0.3", "rates_l0.3_a0.3_v0.9"]
EPOCH_CONDITIONS = [*TABLE_NAMES, "avg_missing", *INTRA_NAMES, "intra_avg", "objective"]  # per-epoch validation
FULL_CONDITIONS = [*TABLE_NAMES, "avg_missing", *INTRA_NAMES, "intra_avg", *BURST_NAMES, "burst_avg", "objective",
                   *PER_MODALITY]
TEXT_CONDITIONS = ["l", *INTRA_NAMES, "intra_avg", *BURST_NAMES, "burst_avg", "objective"]

TINY = ["data.size_scale=0.05", "train.epochs=1", "train.max_batches=3", "model.width=16", "model.seq_width=8",
        "train.threads=1"]


def quiet(_: str) -> None:
    pass


def tiny_cfg(*overrides: str):
    return load_config(None, TINY + list(overrides))


def expected_keys(prefix: str, conditions) -> set[str]:
    return {f"{prefix}/{m}/{c}" for m in METRICS for c in conditions}


def check_protocol_metrics(metrics: dict, prefix: str, conditions) -> None:
    assert set(metrics) == expected_keys(prefix, conditions)
    for key, value in metrics.items():
        assert isinstance(value, float) and math.isfinite(value), key
        if key.split("/")[1] in FRACTIONS:
            assert 0.0 <= value <= 1.0, key


# ------------------------------------------------------------------------------------------------
# (a) the real command line, end to end


@pytest.mark.slow
def test_cli_smoke_test_writes_every_protocol_metric(tmp_path, run_cli):
    out = tmp_path / "run"
    proc = run_cli("train.py", "--smoke-test", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    result = json.loads((out / "metrics.json").read_text())
    check_protocol_metrics(result["test"], "test", FULL_CONDITIONS)
    check_protocol_metrics(result["val"], "val", FULL_CONDITIONS)
    for c in TABLE_NAMES:  # the headline names of SPEC section 6, spelled out
        assert f"test/{HEADLINE}/{c}" in result["test"]
    assert f"test/{HEADLINE}/intra_0.3" in result["test"] and f"val/{HEADLINE}/avg_missing" in result["val"]
    assert result["modalities"] == ["l", "a", "v"]
    assert not any(n.startswith("data has only") for n in result["notes"])
    assert result["epochs_run"] == len(result["history"]) == 2 and 0 <= result["best_epoch"] < 2
    assert result["config"]["data.size_scale"] == 0.05 and result["config"]["loss.lambda1"] == 0.2
    assert all(math.isfinite(h["train/total"]) for h in result["history"])
    assert not list(out.glob(".metrics.json.*"))  # the temporary file was renamed, not left behind
    assert f"lav {result['test'][f'test/{HEADLINE}/lav']:.4f}" in proc.stdout


# ------------------------------------------------------------------------------------------------
# (b) a short training learns


@pytest.mark.slow
def test_short_training_beats_chance():
    """Measured (seed 0): test lav Non0 F1 0.78 (seeds 0-2: 0.72-0.81); a constant predictor gets 0.39."""
    cfg = load_config(None, ["data.size_scale=0.2", "train.epochs=8", "train.batch_size=16", "train.lr=3e-3",
                             "model.width=32", "model.seq_width=16", "train.threads=1"])
    result = fit(cfg, log=quiet)
    test = result.test
    assert test[f"test/{HEADLINE}/lav"] > 0.65
    assert test["test/Corr/lav"] > 0.4
    assert test[f"test/{HEADLINE}/lav"] > test[f"test/{HEADLINE}/intra_1.0"] + 0.1  # nothing left, nothing learnt


# ------------------------------------------------------------------------------------------------
# (c) determinism and (d) pinned values


@pytest.fixture(scope="module")
def tiny_run():
    cfg = tiny_cfg()
    return cfg, fit(cfg, log=quiet)


def test_same_seed_same_metrics_other_seed_differs(tiny_run):
    cfg, first = tiny_run
    again = fit(cfg, log=quiet)
    assert again.test == first.test and again.val == first.val
    assert again.history == first.history
    other = fit(tiny_cfg("seed=1"), log=quiet)
    assert other.history[0]["train/total"] != first.history[0]["train/total"]
    assert other.test["test/Corr/lav"] != first.test["test/Corr/lav"]


# Pinned on Nov 22 2026 (synthetic generator of commit 8886614, MiniLM states, torch 2.13, CPU, 1 thread).
# A silent change of data, model, losses, masks or optimisation moves these. When a change is meant to
# move them (say, a recalibrated generator): run `pytest tests/test_train.py -k pinned`, whose failure
# message shows every observed value, check that they are sane, paste them here, and say why in the
# commit message. The lav F1 is that of a nearly constant predictor after 3 steps; MAE and Corr move
# continuously, so they catch what the F1 cannot.
PINNED = {"train/total": 0.19194605574011803, f"test/{HEADLINE}/lav": 0.2347222222222222,
          "test/MAE/lav": 1.3845101957592894, "test/Corr/lav": 0.2986269073791523}


def test_pinned_regression_values(tiny_run):
    _, result = tiny_run
    observed = {"train/total": result.history[0]["train/total"],
                **{k: result.test[k] for k in PINNED if k.startswith("test/")}}
    for key, value in PINNED.items():
        assert observed[key] == pytest.approx(value, rel=1e-4), (key, observed)


def test_the_best_validation_epoch_is_selected_and_tested():
    """Checkpoint selection (module docstring): the first epoch with the best val objective; its weights,
    not the last epoch's, give the test metrics."""
    cfg = load_config(None, ["data.size_scale=0.1", "train.epochs=4", "model.width=16", "model.seq_width=8",
                             "train.threads=1"])
    weights = {}
    result = fit(cfg, log=quiet, report=lambda e, m, state: weights.__setitem__(e, copy.deepcopy(state()["model"])))
    assert sorted(weights) == [0, 1, 2, 3]
    objective = [h[OBJECTIVE] for h in result.history]
    assert result.best_epoch == objective.index(max(objective))
    # measured objective 0.23, 0.45, 0.45, 0.45: the best is not simply the last epoch, so this can fail
    assert result.best_epoch < len(objective) - 1, f"retune this test: objective {objective}"
    assert result.val[OBJECTIVE] == max(objective)
    assert result.to_json(cfg)["selection"] == f"epoch with the best {OBJECTIVE}" and OBJECTIVE in SELECTION_RULE
    model = build_model(cfg, result.prepared)
    model.load_state_dict(weights[result.best_epoch])
    mods = result.prepared.modalities
    protocol = conditions_for(mods) + per_modality_conditions(mods, rates=cfg.eval.modality_rates)
    again = evaluate(model, result.prepared.splits["test"], protocol, modalities=mods,
                     mask_seed=cfg.eval.mask_seed, batch_size=cfg.eval.batch_size, prefix="test")
    assert again == result.test


@pytest.mark.parametrize("dropout", [
    0.0,
    0.1,
])
def test_resume_from_a_checkpoint_continues_the_same_run(dropout):
    cfg = load_config(None, TINY + ["train.epochs=3", f"model.dropout={dropout}"])
    prep = prepare(cfg)
    states = {}
    whole = fit(cfg, prep=prep, log=quiet, report=lambda e, m, state: states.__setitem__(e, copy.deepcopy(state())))
    resumed = fit(cfg, prep=prep, log=quiet, resume=states[0])
    assert [h["train/total"] for h in resumed.history] == [h["train/total"] for h in whole.history]
    assert resumed.test == whole.test


# ------------------------------------------------------------------------------------------------
# (f) ablations


# A switched-off term: dhf and das keys are absent (losses.total_loss); the noise terms stay, as zeros,
# inside L_DHF (losses.dhf_loss), so that runs with and without R_n log the same names.
@pytest.mark.parametrize("switch, absent, zero, present", [
    ("model.dhf=false", ("train/dhf",), (), ("train/das",)),
    ("model.das=false", ("train/das",), (), ("train/dhf/noise_entropy", "train/dhf/contrastive")),
    ("model.noise=false", (), ("train/dhf/noise_consistency", "train/dhf/noise_entropy"),
     ("train/dhf/contrastive", "train/das")),
])
def test_ablations_run_with_the_same_metric_names(tiny_run, switch, absent, zero, present):
    _, full = tiny_run
    result = fit(tiny_cfg(switch), log=quiet)
    assert set(result.test) == set(full.test) == expected_keys("test", FULL_CONDITIONS)
    assert set(result.val) == set(full.val)
    train = result.history[0]
    assert {"train/total", "train/task_p", "train/task_q"} <= set(train)
    if absent:
        assert not any(k.startswith(absent) for k in train), sorted(train)
    assert all(any(k.startswith(p) for k in train) for p in present), sorted(train)
    for key in zero:
        assert train[key] == 0.0 and full.history[0][key] != 0.0
    assert all(any(k.startswith(a) for k in full.history[0]) for a in absent)  # the full model logs them
    assert math.isfinite(train["train/total"])


# ------------------------------------------------------------------------------------------------
# (g) text-only data through the command line


def _write_transcripts(path: Path) -> None:
    """60 plain utterances, half positive, half negative: train 36, dev 12, test 12."""
    good = ["i loved this movie", "what a wonderful film", "the acting was great", "a truly beautiful story",
            "i really enjoyed it", "the cast was excellent", "it was fantastic", "such a fun and charming film",
            "the music was lovely", "a brilliant ending", "i would watch it again", "it made me so happy",
            "great direction and a great script", "the characters were delightful", "an amazing experience"]
    bad = ["i hated this movie", "what a terrible film", "the acting was awful", "a truly boring story",
           "i really disliked it", "the cast was dreadful", "it was horrible", "such a dull and tedious film",
           "the music was annoying", "a pathetic ending", "i want my money back", "it made me so angry",
           "poor direction and a weak script", "the characters were irritating", "a miserable experience"]
    rows = ["id,text,label,mode"]
    for i in range(15):
        mode = "train" if i < 9 else ("dev" if i < 12 else "test")
        for j, (text, sign) in enumerate(((good[i], 1), (bad[i], -1), (good[(i + 5) % 15] + " indeed", 1),
                                          (bad[(i + 5) % 15] + " indeed", -1))):
            rows.append(f"u{i:02d}_{j},{text},{sign * (1.0 + (i % 5) * 0.4):.1f},{mode}")
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_cli_text_only_evaluates_l_intra_and_burst_and_says_so(tmp_path, run_cli):
    csv = tmp_path / "transcripts.csv"
    _write_transcripts(csv)
    out = tmp_path / "run"
    proc = run_cli("train.py", "--set", "data.source=transcripts", "--set", f"data.path={csv}",
                   "--set", "train.epochs=10", "--set", "train.batch_size=8", "--set", "train.lr=3e-3",
                   "--set", "model.width=32",
                   "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "metrics.json").read_text())
    assert result["modalities"] == ["l"]
    check_protocol_metrics(result["test"], "test", TEXT_CONDITIONS)
    check_protocol_metrics(result["val"], "val", TEXT_CONDITIONS)
    assert not any(k.endswith(("/lav", "/a", "/avg_missing")) for k in result["test"])
    only = [n for n in result["notes"] if n.startswith("data has only l:")]
    assert len(only) == 1 and "not evaluated" in only[0]
    assert f"note: {only[0]}" in proc.stdout
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("best epoch"))
    assert f"{HEADLINE}: l " in summary and "lav" not in summary and "avg_missing" not in summary
    # MiniLM separates these sentences (measured: test l Non0 F1 1.0 for seeds 0-2; a constant: 0.33)
    assert result["test"][f"test/{HEADLINE}/l"] > 0.8


# ------------------------------------------------------------------------------------------------
# (h) real MOSI transcripts, language only


@pytest.mark.slow
@pytest.mark.skipif(not MOSI_CSV.is_file(), reason=f"real MOSI transcripts not found at {MOSI_CSV}")
def test_real_mosi_transcripts_with_frozen_minilm():
    """Measured (seed 0): test l Non0 F1 0.799 (seed 1: 0.782) in 7 s of training on 2 CPU cores; encoding
    the 2195 utterances with MiniLM takes ~30 s more once, then the states come from the cache."""
    cfg = load_config(None, ["data.source=transcripts", f"data.path={MOSI_CSV}", "train.epochs=6",
                             "model.width=64", "train.threads=1"])
    start = time.time()
    result = fit(cfg, log=quiet)
    elapsed = time.time() - start
    f1 = result.test[f"test/{HEADLINE}/l"]
    print(f"real MOSI: test l {HEADLINE} {f1:.4f} in {elapsed:.0f} s")
    assert result.prepared.modalities == ("l",)
    assert [len(result.prepared.splits[s]) for s in ("train", "valid", "test")] == [1281, 229, 685]
    assert f1 > 0.75
    assert result.test[f"test/{HEADLINE}/intra_1.0"] < f1  # no words, no sentiment


# ------------------------------------------------------------------------------------------------
# (e) bad input on the command line: one line, exit code 2, nothing written


@pytest.mark.parametrize("args, fragments", [
    (["--set", "loss.lambda3=1"], ["loss.lambda3", "unknown field"]),
    (["--set", "train.epochs=abc"], ["train.epochs", "'abc'"]),
    (["--set", "missing.p0=1.5"], ["missing.p0"]),
    (["--config", "{tmp}/missing.yaml"], ["{tmp}/missing.yaml", "not found"]),
    (["--set", "data.source=transcripts", "--set", "data.path={tmp}/none.csv"], ["{tmp}/none.csv", "no such file"]),
    (["--set", "data.source=transcripts", "--set", "data.path={tmp}/bad.csv"], ["{tmp}/bad.csv", "mode"]),
], ids=["unknown-key", "bad-type", "bad-rate", "missing-config", "missing-data", "bad-data-column"])
def test_cli_bad_input_is_one_error_line_and_exit_2(tmp_path, run_cli, args, fragments):
    (tmp_path / "bad.csv").write_text("id,text,label\na,good,1.0\n")  # no split column
    out = tmp_path / "run"
    proc = run_cli("train.py", "--smoke-test", *[a.format(tmp=tmp_path) for a in args], "--output", str(out))
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment.format(tmp=tmp_path) in errors[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_conditions_from_shared_encoder_passes_equal_one_pass_per_condition():
    """evaluate() encodes a modality only where a condition changes it (Table I: two passes in all;
    intra_a_p: audio only): every score must equal that of a full pass per condition, on the text the
    condition gives (``word_states``: [UNK]-encoded utterances where words are dropped)."""
    import dataclasses

    import numpy as np
    import torch

    from fsrf.missing import View
    from fsrf.protocol import _scores, predict, word_states
    from fsrf.train import SplitTensors

    cfg = load_config(None, TINY)
    prep = prepare(cfg)
    torch.manual_seed(3)
    model = build_model(cfg, prep).eval()
    data = prep.splits["valid"]
    one = [Condition("modality", modality=m, rate=p) for m, p in (("l", 0.5), ("a", 0.3), ("v", 1.0))]
    conditions = [*TABLE, Condition("intra", rate=0.3), Condition("burst", rate=0.6), *one,
                  Condition("rates", rates=(0.9, 0.3, 0.0))]
    shared = _scores(model, data, conditions, modalities=prep.modalities, mask_seed=5, batch_size=7)
    for cond in conditions:
        view = cond.view(data.inputs.valid(), seed=5, available=prep.modalities)
        states, _ = word_states(data, cond, view)
        if states is not None:  # the [UNK] utterances, nothing zeroed in them (every one is present here)
            data_c = SplitTensors(dataclasses.replace(data.inputs, text=torch.from_numpy(np.array(states))), data.labels)
            view = View(view.present, (torch.zeros_like(view.drop[0]), *view.drop[1:]))
        else:
            data_c = data
        torch.testing.assert_close(shared[cond], predict(model, data_c, view, batch_size=7), rtol=1e-5, atol=1e-6)


def test_evaluate_per_modality_names_and_values():
    """The per-modality extension on a tiny untrained model: the metric names of SPEC section 6, the
    averages, and conditions that really differ (a model that ignored the masks would fail here)."""
    import numpy as np
    import torch

    cfg = load_config(None, TINY)
    prep = prepare(cfg)
    torch.manual_seed(3)
    model = build_model(cfg, prep).eval()
    kw = dict(modalities=prep.modalities, mask_seed=cfg.eval.mask_seed, batch_size=64, prefix="test")
    plain = evaluate(model, prep.splits["test"], conditions_for(prep.modalities), **kw)
    extension = per_modality_conditions(prep.modalities, rates=[(0.3, 0.1, 0.5)])
    full = evaluate(model, prep.splits["test"], conditions_for(prep.modalities) + extension, **kw)
    assert {k: full[k] for k in plain} == plain  # the extension changes nothing that was there
    extra = {k.split("/")[2] for k in set(full) - set(plain)}
    assert extra == {*(c.name for c in extension), "intra_l_avg", "intra_a_avg", "intra_v_avg"}
    assert "rates_l0.3_a0.1_v0.5" in extra
    for m in "lav":
        points = [full[f"test/MAE/intra_{m}_{p}"] for p in INTRA_POINTS]
        assert full[f"test/MAE/intra_{m}_avg"] == pytest.approx(np.mean(points))
    assert full["test/MAE/intra_a_1.0"] != full["test/MAE/intra_v_1.0"] != full["test/MAE/lav"]
    objective = f"test/{HEADLINE}/objective"
    assert full[objective] == plain[objective]
    check_protocol_metrics(full, "test", {k.split("/")[2] for k in full})  # finite, fractions in [0, 1]


def test_per_modality_conditions_are_test_only(tiny_run):
    """Per-epoch validation (and so the objective) never sees the per-modality conditions; the test and the
    selected epoch's validation do."""
    cfg, result = tiny_run
    reported = []
    fit(cfg, log=quiet, report=lambda e, m, state: reported.append(m))
    epoch_val = {k for k in reported[0] if k.startswith("val/")}
    assert epoch_val == expected_keys("val", EPOCH_CONDITIONS)
    assert set(result.test) == expected_keys("test", FULL_CONDITIONS)
    assert set(result.val) == expected_keys("val", FULL_CONDITIONS)


def test_modality_scale_trains_and_is_validated():
    from fsrf.errors import InputError

    cfg = tiny_cfg("missing.modality_scale.a=0", "missing.modality_scale.v=0.5")
    assert (cfg.missing.modality_scale.a, cfg.missing.modality_scale.v) == (0.0, 0.5)
    result = fit(cfg, log=quiet)
    assert math.isfinite(result.history[0]["train/total"])
    with pytest.raises(InputError, match="missing.modality_scale.l"):
        tiny_cfg("missing.p0=0.5", "missing.modality_scale.l=3")  # 0.5 * 3 > 1
    with pytest.raises(InputError, match="missing.modality_scale.v"):
        tiny_cfg("missing.modality_scale.v=-1")
    assert tiny_cfg("missing.p0=0.5", "missing.modality_scale.l=2").missing.modality_scale.l == 2.0  # 0.5 * 2 = 1
    with pytest.raises(InputError, match="eval.modality_rates"):
        tiny_cfg("eval.modality_rates=[[0.35, 0.1, 0.5]]")
