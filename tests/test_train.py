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

from conftest import ROOT, TINY_RUN
from fsrf.config import load_config
from fsrf.protocol import (BURST, HEADLINE, INTRA, INTRA_POINTS, OBJECTIVE, SELECTION_RULE, TABLE, Condition,
                           conditions_for, evaluate, per_modality_conditions)
from fsrf.train import build_model, fit, prepare

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



def quiet(_: str) -> None:
    pass


def tiny_cfg(*overrides: str):
    return load_config(None, [*TINY_RUN, *overrides])


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


# Pinned on Nov 29 2026 after issue 13 (eq (3) prior form, Sinkhorn divergence at 0.25 x the median
# cost, DHF terms on present modalities, absent modalities as one fixed vector, words dropped as [UNK]
# before the encoder; synthetic generator of commit 8886614, MiniLM states, torch 2.13, CPU, 1 thread).
# train/total moved from 0.19 to 12.3 mostly through eq (3)'s prior form, which is bounded below by
# (D/2) log(2 pi e sigma2) per modality instead of running to minus infinity.
# A silent change of data, model, losses, masks or optimisation moves these. When a change is meant to
# move them (say, a recalibrated generator): run `pytest tests/test_train.py -k pinned`, whose failure
# message prints every observed value as a dict ready to paste here; check that they are sane, paste
# them, and say why in the commit message. The run is a nearly constant predictor after 3 steps (every
# test score positive), so its F1 is that of a constant; MAE and Corr move
# continuously and catch what the F1 cannot. `lav` does not depend on the masks; the missing-modality
# conditions `a` and `la` (whole modalities absent) and `intra_0.5` (the fixed test masks) are pinned too.
PINNED = {
    "train/total": 12.314417839050293,
    f"test/{HEADLINE}/lav": 0.2347222222222222,
    "test/MAE/lav": 1.3812039178960465,
    "test/Corr/lav": 0.3558395059151307,
    "test/MAE/a": 1.3920591633547754,
    "test/Corr/la": 0.34038590290714016,
    "test/MAE/intra_0.5": 1.3880036260713549,
    "test/Corr/intra_0.5": 0.17891002436525752,
}
# Tolerances from the drift measured between CPU kernels (the same run with ATEN_CPU_CAPABILITY=default,
# avx2, avx512; an AVX-512 machine failed the former blanket rel=1e-4 on Corr lav by 1.8e-4 relative):
#   train/total  0.19194871 / 0.19194765 / 0.19194606   largest drift 2.7e-6 abs, 1.4e-5 rel
#   MAE          lav 8.6e-7, la 1.2e-6, intra_0.5 3.1e-7, a 2e-8 abs   largest 8.4e-7 rel
#   Corr         lav 5.0e-5, la 6.0e-5, intra_0.5 1.5e-5, a 5e-7 abs   largest 3.1e-4 rel (la)
#   Non0 F1      identical: a ratio of counts of signs, and no score lies within 0.05 of 0
# Re-measured on the pinned (issue 13) code: train/total 12.3144178 / 12.3144183 / 12.3144178 (3.9e-8 rel),
# MAE <= 1.1e-8 abs, Corr <= 3.7e-7 abs (la): smaller than before, so the tolerances below hold a wider margin.
# Each kind allows ~10x its largest drift: train/total rel 1.5e-4, MAE rel 1e-5, Corr abs 6e-4 (absolute:
# the Pearson r of a nearly constant predictor divides by the predictions' tiny spread, which amplifies
# the relative error, more so the smaller r is), F1 exact (rel 1e-9). Real changes move them much further:
# another mask seed moves MAE intra_0.5 by 4.8e-3 (340x its tolerance) and Corr intra_0.5 by 0.083 (140x),
# see test_pinned_tolerances_still_catch_a_changed_mask_seed; another training seed moves everything.
PINNED_TOLERANCE = {"train": dict(rel=1.5e-4), "MAE": dict(rel=1e-5), "Corr": dict(abs=6e-4),
                    HEADLINE: dict(rel=1e-9)}


def pinned_tolerance(key: str) -> dict[str, float]:
    """``pytest.approx`` keywords for a pinned value: by metric kind (``train/...`` or its metric)."""
    return PINNED_TOLERANCE["train" if key.startswith("train/") else key.split("/")[1]]


def pinned_observed(result) -> dict[str, float]:
    return {"train/total": result.history[0]["train/total"],
            **{k: result.test[k] for k in PINNED if k.startswith("test/")}}


def test_pinned_regression_values(tiny_run):
    _, result = tiny_run
    observed = pinned_observed(result)
    wrong = [f"{key}: pinned {value!r}, observed {observed[key]!r} (tolerance {pinned_tolerance(key)})"
             for key, value in PINNED.items() if observed[key] != pytest.approx(value, **pinned_tolerance(key))]
    paste = "PINNED = {\n" + "".join(f"    {key!r}: {value!r},\n" for key, value in observed.items()) + "}"
    assert not wrong, "\n".join(["pinned values moved:", *wrong, "every observed value, ready to paste:", paste])


def test_pinned_tolerances_still_catch_a_changed_mask_seed(tiny_run):
    """The tolerances are loose enough for other CPUs, yet the pinned missing-modality values catch a
    change of the test masks: the same model under another eval.mask_seed leaves the mask-free conditions
    exactly as they were and moves the masked ones by over 20x their tolerance."""
    cfg, result = tiny_run
    prep = result.prepared
    protocol = conditions_for(prep.modalities) + per_modality_conditions(prep.modalities, rates=cfg.eval.modality_rates)
    other = evaluate(result.model, prep.splits["test"], protocol, modalities=prep.modalities,
                     mask_seed=cfg.eval.mask_seed + 1, batch_size=cfg.eval.batch_size, prefix="test")
    for key in ("test/MAE/lav", "test/Corr/lav", "test/MAE/a", "test/Corr/la"):
        assert other[key] == result.test[key], key  # no masks: whole modalities only
    for key in ("test/MAE/intra_0.5", "test/Corr/intra_0.5"):
        tol = pinned_tolerance(key)
        allowed = tol.get("abs") or tol["rel"] * abs(PINNED[key])
        assert abs(other[key] - result.test[key]) > 20 * allowed, (key, other[key], result.test[key])


def test_the_best_validation_epoch_is_selected_and_tested():
    """Checkpoint selection (module docstring): the first epoch with the best val objective; its weights,
    not the last epoch's, give the test metrics."""
    cfg = load_config(None, ["data.size_scale=0.1", "train.epochs=6", "model.width=16", "model.seq_width=8",
                             "train.threads=1"])
    weights = {}
    result = fit(cfg, log=quiet, report=lambda e, m, state: weights.__setitem__(e, copy.deepcopy(state()["model"])))
    assert sorted(weights) == [0, 1, 2, 3, 4, 5]
    objective = [h[OBJECTIVE] for h in result.history]
    assert result.best_epoch == objective.index(max(objective))
    # measured objective 0.337, 0.526, 0.508, 0.601, 0.615, 0.589: the best is not simply the last epoch
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
    cfg = tiny_cfg("train.epochs=3", f"model.dropout={dropout}")
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

    cfg = tiny_cfg()
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

    cfg = tiny_cfg()
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


# ------------------------------------------------------------------------------------------------
# (i) where the parts meet: summaries, masks and MRM views through a real fit

# The summaries of SPEC section 2 spelled out by name, not taken from fsrf.protocol (whose lists they check).
SIX_MISSING = ["l", "a", "v", "la", "lv", "av"]
TEN_INTRA = ["intra_0.1", "intra_0.2", "intra_0.3", "intra_0.4", "intra_0.5", "intra_0.6", "intra_0.7", "intra_0.8",
             "intra_0.9", "intra_1.0"]
FIVE_BURST = ["burst_0.2", "burst_0.4", "burst_0.6", "burst_0.8", "burst_1.0"]


def summaries_by_hand(flat: dict, prefix: str, *, modalities: str = "lav") -> dict[str, float]:
    """Every summary a fit reports, recomputed from its per-condition values: sum / count, by name."""
    def mean(metric: str, names: list[str]) -> float:
        return sum(flat[f"{prefix}/{metric}/{n}"] for n in names) / len(names)

    out = {}
    for metric in METRICS:
        out[f"{prefix}/{metric}/intra_avg"] = mean(metric, TEN_INTRA)
        if f"{prefix}/{metric}/burst_0.2" in flat:
            out[f"{prefix}/{metric}/burst_avg"] = mean(metric, FIVE_BURST)
        if modalities == "lav":
            out[f"{prefix}/{metric}/avg_missing"] = mean(metric, SIX_MISSING)
            out[f"{prefix}/{metric}/objective"] = mean(metric, [*SIX_MISSING, "lav", *TEN_INTRA])
            for m in "lav" if f"{prefix}/{metric}/intra_l_0.1" in flat else "":
                out[f"{prefix}/{metric}/intra_{m}_avg"] = mean(metric, [n.replace("intra_", f"intra_{m}_")
                                                                          for n in TEN_INTRA])
        else:  # text only: the objective is l and the ten token-drop points
            out[f"{prefix}/{metric}/objective"] = mean(metric, ["l", *TEN_INTRA])
    return out


def assert_summaries_by_hand(flat: dict, prefix: str, *, modalities: str = "lav") -> None:
    expected = summaries_by_hand(flat, prefix, modalities=modalities)
    wrong = {k: (flat.get(k), v) for k, v in expected.items() if flat.get(k) != pytest.approx(v, rel=1e-12, abs=1e-15)}
    assert not wrong, f"summaries (reported, by hand): {wrong}"


def test_summaries_of_a_fit_equal_their_means_by_hand(tiny_run):
    """avg_missing, intra_avg, burst_avg, intra_<m>_avg and the objective of a real fit's val and test
    dicts, and of every epoch's report, against the means of the per-condition values they summarise;
    the history and the best/ metrics carry the same objective."""
    cfg, result = tiny_run
    assert_summaries_by_hand(result.test, "test")
    assert_summaries_by_hand(result.val, "val")
    n = len(summaries_by_hand(result.test, "test"))
    assert n == len(METRICS) * 7  # intra, burst, avg_missing, objective and the three per-modality averages
    reported = []
    fit(cfg, log=quiet, evaluate_test=False, report=lambda e, m, state: reported.append(m))
    assert_summaries_by_hand(reported[0], "val")
    assert reported[0][OBJECTIVE] == result.history[0][OBJECTIVE] == result.val[OBJECTIVE]
    assert reported[0][f"best/{OBJECTIVE}"] == reported[0][OBJECTIVE]
    assert reported[0][f"best/val/{HEADLINE}/avg_missing"] == result.val[f"val/{HEADLINE}/avg_missing"]


def mask_digest(view) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in (view.present, *view.drop):
        h.update(t.to("cpu").to(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def test_every_fit_is_evaluated_on_the_masks_of_eval_mask_seed(monkeypatch):
    """SPEC section 2: each test condition uses a fixed mask seed, so two models are compared on the same
    masks. Every view a fit evaluates on is recorded (``Condition.view``, with a digest of the masks it
    returns): a fit with another training seed sees exactly the same masks, all from eval.mask_seed; only
    another eval.mask_seed changes them (and only where a condition drops frames)."""
    original = Condition.view
    seen: list[tuple[str, int, int, str]] = []

    def recording(self, valid, *, seed, **kw):
        view = original(self, valid, seed=seed, **kw)
        seen.append((self.name, len(valid[0]), seed, mask_digest(view)))
        return view

    monkeypatch.setattr(Condition, "view", recording)
    runs = {}
    for overrides in ((), ("seed=1",), ("eval.mask_seed=99",)):
        seen.clear()
        fit(tiny_cfg(*overrides), log=quiet)
        runs[overrides] = list(seen)
    first = runs[()]
    assert {name for name, *_ in first} >= {*SIX_MISSING, "lav", *TEN_INTRA, *FIVE_BURST, "intra_a_0.3"}
    assert {seed for _, _, seed, _ in first} == {load_config(None, []).eval.mask_seed}
    assert runs[("seed=1",)] == first  # the same conditions, splits, seed and masks, call for call
    other = runs[("eval.mask_seed=99",)]
    assert [(name, n) for name, n, *_ in other] == [(name, n) for name, n, *_ in first]
    assert {seed for _, _, seed, _ in other} == {99}
    moved = {name for (name, _, _, a), (_, _, _, b) in zip(first, other) if a != b}
    # Table conditions drop no frames, and p = 1.0 drops every one: their masks depend on no seed.
    fixed = {*SIX_MISSING, "lav"} | {name for name, *_ in first if name.endswith("_1.0")}
    assert moved == {name for name, *_ in first} - fixed


def steps_per_epoch(cfg, prep) -> int:
    """Training steps of one epoch: batches of train.batch_size (a last one of 1 is skipped), at most
    train.max_batches (the tiny synthetic train split has 64 samples: 2 batches of 32)."""
    n = len(prep.splits["train"])
    steps = len([i for i in range(0, n - 1, cfg.train.batch_size) if min(cfg.train.batch_size, n - i) >= 2])
    return min(steps, cfg.train.max_batches or steps)


def training_views(monkeypatch, *overrides: str) -> list[tuple]:
    """(present (2B, 3), zeroed per modality (2B, T_m)) of every training step of a tiny fit at missing
    rate 0.8: the two MRM views exactly as the network receives them (rows :B view p, B: view q)."""
    import fsrf.train as train_module

    steps = []

    def hook(module, args):
        if module.training:
            _, present, zeroed = args
            steps.append((present.clone(), tuple(z.clone() for z in zeroed)))

    build = train_module.build_model

    def build_and_watch(cfg, prep):
        model = build(cfg, prep)
        model.register_forward_pre_hook(hook)
        return model

    cfg = tiny_cfg("missing.p0=0.8", *overrides)
    with monkeypatch.context() as patch:  # undone on return: the next call watches its own model only
        patch.setattr(train_module, "build_model", build_and_watch)
        result = fit(cfg, evaluate_test=False, log=quiet)
    assert len(steps) == steps_per_epoch(cfg, result.prepared) >= 2
    return steps


def test_training_views_follow_missing_overlap(monkeypatch):
    """missing.overlap = P(both views keep the same modalities): 1 always, 0 never; unset (the paper's
    independent views) sometimes."""
    import torch

    def same_set(steps) -> torch.Tensor:  # (rows,) per sample: the two views keep the same set
        return torch.cat([(p[: len(p) // 2] == p[len(p) // 2:]).all(1) for p, _ in steps])

    assert same_set(training_views(monkeypatch, "missing.overlap=1")).all()
    assert not same_set(training_views(monkeypatch, "missing.overlap=0")).any()
    independent = same_set(training_views(monkeypatch))
    assert 0.05 < independent.float().mean() < 0.95, independent.float().mean()


def test_training_views_follow_missing_modality_scale(monkeypatch):
    """missing.modality_scale multiplies each modality's intra-drop probability (rate 0.8): scale 0
    never drops a frame (token) of a present modality, 0.25 rarely (0.2 of its rows), 1.25 always (1.0)."""
    import torch

    def share_with_drops(steps, m: int) -> float:  # of the rows where modality m is present
        hit = torch.cat([z[m][p[:, m]].any(1) for p, z in steps])
        return float(hit.float().mean())

    plain = training_views(monkeypatch)
    scaled = training_views(monkeypatch, "missing.modality_scale.l=0", "missing.modality_scale.a=0.25",
                            "missing.modality_scale.v=1.25")
    # plain MRM: a present audio or vision loses frames in about 0.8 of its rows (fewer: U(0, 1) ratios)
    assert all(0.6 < share_with_drops(plain, m) < 0.95 for m in (1, 2)), [share_with_drops(plain, m) for m in (1, 2)]
    assert share_with_drops(scaled, 0) == 0.0
    assert share_with_drops(scaled, 1) < 0.4
    assert share_with_drops(scaled, 2) > 0.9


# ------------------------------------------------------------------------------------------------
# (j) the paths no other test runs: fine-tuning, the [UNK] curve, non-converged Sinkhorn steps


def test_finetune_trains_the_unfrozen_encoder_layers_only(tiny_bert_dir):
    """encoder.finetune with the tiny random BERT, freeze_layers=1: the embeddings and layer 0 keep their
    weights and get no gradient; layer 1 gets gradients and moves (at encoder.lr); the protocol runs on
    token ids through the live encoder."""
    import torch

    from fsrf import text

    cfg = tiny_cfg("encoder.finetune=true", f"encoder.path={tiny_bert_dir}", "encoder.freeze_layers=1",
                   "encoder.lr=1e-2")
    result = fit(cfg, log=quiet)
    assert result.prepared.splits["test"].inputs.text.dtype == torch.int64  # ids, not cached states
    before = dict(text.load_encoder(str(tiny_bert_dir)).named_parameters())
    after = dict(result.model.encoders["l"].bert.named_parameters())
    frozen = [k for k in before if k.startswith(("embeddings.", "encoder.layer.0."))]
    trained = [k for k in before if k.startswith("encoder.layer.1.")]
    assert len(frozen) > 10 and len(trained) > 10 and set(frozen) | set(trained) | {
        k for k in before if k.startswith("pooler.")} == set(before)
    for k in frozen:
        assert not after[k].requires_grad and after[k].grad is None, k
        assert torch.equal(after[k], before[k]), k
    for k in trained:  # the gradient of the last step is still there (zero_grad comes before backward)
        assert after[k].requires_grad and after[k].grad is not None and after[k].grad.abs().sum() > 0, k
        assert not torch.equal(after[k], before[k]), k
    assert set(result.test) == expected_keys("test", FULL_CONDITIONS)
    assert_summaries_by_hand(result.test, "test")


def tiny_text(csv: Path, encoder: Path) -> list[str]:
    """A tiny text-only run: the 60 transcripts of ``_write_transcripts``, the tiny random BERT, one epoch."""
    return ["data.source=transcripts", f"data.path={csv}", f"encoder.path={encoder}", "train.epochs=1",
            "model.width=16", "train.threads=1"]


def test_text_only_tiny_fit_with_health_metrics_runs(tmp_path, tiny_bert_dir):
    """A text-only tiny fit, health metrics on (the default): the Sinkhorn plan of health.measure meets a
    zero median cost, whose warning once divided by it (ZeroDivisionError, fixed in 7d2aec6)."""
    csv = tmp_path / "transcripts.csv"
    _write_transcripts(csv)
    result = fit(load_config(None, tiny_text(csv, tiny_bert_dir)), log=quiet)
    assert math.isfinite(result.test[f"test/{HEADLINE}/l"])


def test_text_only_fit_drops_words_as_unk_and_adds_the_zeroed_curve(tmp_path, tiny_bert_dir, monkeypatch):
    """Text-only data with eval.zeroed_curve (SPEC 7): the frozen encoder is asked, at each test point p, for
    the test split's token ids with exactly the positions of intra_p's fixed mask replaced by [UNK] (built
    here by hand); zeroed_p has the same masks and other scores, zeroed_avg is its mean."""
    import numpy as np
    import torch

    from fsrf import text

    csv = tmp_path / "transcripts.csv"
    _write_transcripts(csv)
    cfg = load_config(None, ["data.source=transcripts", f"data.path={csv}", f"encoder.path={tiny_bert_dir}",
                             "eval.zeroed_curve=true", "train.epochs=1", "model.width=16", "train.threads=1",
                             "eval.health_every=0",
                             f"encoder.cache_dir={tmp_path / 'cache'}"])
    asked: dict[str, np.ndarray] = {}
    states = text.FrozenEncoder.states

    def watch(self, ids, mask, *, label="", **kw):
        asked[label] = ids.copy()
        return states(self, ids, mask, label=label, **kw)

    monkeypatch.setattr(text.FrozenEncoder, "states", watch)
    result = fit(cfg, log=quiet)

    tokenizer = text.load_tokenizer(str(tiny_bert_dir))
    unk = tokenizer.convert_tokens_to_ids("[UNK]")
    ids, mask = text.tokenize(result.prepared.raw["test"].text, tokenizer, cfg.data.max_tokens)
    ids, valid = torch.from_numpy(ids), torch.from_numpy(mask).bool()
    lacking = torch.zeros(len(ids), 1, dtype=torch.bool)
    for p in INTRA_POINTS:
        drop = Condition("intra", rate=p).view((valid, lacking, lacking), seed=cfg.eval.mask_seed,
                                               available=("l",)).drop[0]
        assert np.array_equal(asked[f"test intra_{p}"], torch.where(drop & valid, torch.full_like(ids, unk), ids)), p
    assert (asked["test intra_1.0"][mask == 1] == unk).all() and (asked["test intra_1.0"][mask == 0] == 0).all()
    assert not any("zeroed" in label for label in asked)  # the zeroed curve reads the complete states

    test = result.test
    for metric in METRICS:
        assert test[f"test/{metric}/zeroed_avg"] == pytest.approx(
            sum(test[f"test/{metric}/zeroed_{p}"] for p in INTRA_POINTS) / 10, rel=1e-12, abs=1e-15)
    for p in INTRA_POINTS[:-1]:  # different inputs, different scores (at p = 1 both are near constants)
        assert test[f"test/MAE/zeroed_{p}"] != test[f"test/MAE/intra_{p}"], p
    assert_summaries_by_hand(test, "test", modalities="l")


def test_non_converged_sinkhorn_steps_are_counted_and_noted():
    """fit counts the training steps whose Sinkhorn plan hit the iteration cap (train/das/sinkhorn_nonconverged
    per epoch), warns when they are over 10 % of an epoch and notes the total in the result: a tiny
    loss.sinkhorn_eps cannot converge in any step; a large one converges in all."""
    key = "train/das/sinkhorn_nonconverged"
    logs: list[str] = []
    cfg = tiny_cfg("loss.sinkhorn_eps=1e-4")
    stuck = fit(cfg, evaluate_test=False, log=logs.append)
    n = steps_per_epoch(cfg, stuck.prepared)
    assert stuck.history[0][key] == n >= 2
    assert [note for note in stuck.notes if "Sinkhorn" in note] == [
        f"Sinkhorn reached its iteration cap without converging in {n} training steps (loss.sinkhorn_eps=0.0001); "
        "the non-converged plans were used"]
    assert any(line.startswith(f"warning: Sinkhorn did not converge in {n}/{n} steps of epoch 1") for line in logs), logs
    logs.clear()
    fine = fit(tiny_cfg("loss.sinkhorn_eps=4"), evaluate_test=False, log=logs.append)
    assert fine.history[0][key] == 0
    assert not any("Sinkhorn" in n for n in fine.notes) and not any("Sinkhorn" in line for line in logs)
