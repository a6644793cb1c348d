"""Tests of fsrf.protocol: the test conditions (values, names, fixed masks), their summaries and scoring.

Statistical checks use a fixed seed and a tolerance of 5 binomial standard deviations (as in
test_missing.py), so they are deterministic, yet any wrong probability of the size that matters here moves
them far outside it. The masks are pinned by checksums computed with the pre-``Condition`` code (names
parsed back by regex): every model ever compared was evaluated on them.
"""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from fsrf import MODALITIES
from fsrf.missing import View
from fsrf.protocol import (
    BURST,
    BURST_POINTS,
    INTRA,
    INTRA_POINTS,
    MISSING,
    OBJECTIVE_CONDITION,
    RATE_GRID,
    TABLE,
    Condition,
    all_rates_conditions,
    complete_condition,
    conditions_for,
    modality_curve,
    per_modality_conditions,
    summarise,
)

from conftest import binomial_tol, prefix_valid  # the statistical mask tests' helpers


def split_valid(n: int = 1000) -> tuple[torch.Tensor, ...]:
    return (
        prefix_valid(n, 30, low=0, seed=30),
        prefix_valid(n, 50, low=1, seed=31),
        prefix_valid(n, 40, low=1, seed=32),
    )


def same_view(a: View, b: View) -> bool:
    return torch.equal(a.present, b.present) and all(torch.equal(x, y) for x, y in zip(a.drop, b.drop))


def intra(p: float) -> Condition:
    return Condition("intra", rate=p)


def one(m: str, p: float) -> Condition:
    return Condition("modality", modality=m, rate=p)


def rates(*r: float) -> Condition:
    return Condition("rates", rates=r)


def table(present: str) -> Condition:
    return Condition("table", present=present)


# ---------------------------------------------------------------- the Condition value


def test_names_are_written_exactly_as_before():
    # The names are MLflow metric names and table columns of every study run so far: spelled out here.
    assert [c.name for c in TABLE] == ["l", "a", "v", "la", "lv", "av", "lav"]
    assert [c.name for c in MISSING] == ["l", "a", "v", "la", "lv", "av"]
    assert [c.name for c in INTRA] == ["intra_0.1", "intra_0.2", "intra_0.3", "intra_0.4", "intra_0.5",
                                       "intra_0.6", "intra_0.7", "intra_0.8", "intra_0.9", "intra_1.0"]
    assert [c.name for c in BURST] == ["burst_0.2", "burst_0.4", "burst_0.6", "burst_0.8", "burst_1.0"]
    assert one("a", 0.3).name == "intra_a_0.3" and one("v", 1).name == "intra_v_1.0"
    assert rates(0.9, 0.3, 0.3).name == "rates_l0.9_a0.3_v0.3"
    assert rates(0, 1, 0.2).name == "rates_l0.0_a1.0_v0.2"
    assert str(intra(0.3)) == "intra_0.3"


def test_rates_are_stored_as_their_grid_value():
    assert intra(0.1 + 0.2) == intra(0.3) and intra(0.1 + 0.2).name == "intra_0.3"  # 0.30000000000000004
    assert one("l", 1) == one("l", 1.0)
    assert rates(0.1 * 3, 0, 1).rates == (0.3, 0.0, 1.0)
    assert table("al") == table("la") == Condition("table", present=("l", "a"))  # a set, in (l, a, v) order
    assert len({intra(0.3), intra(0.1 + 0.2), one("a", 0.3), table("la"), table("al")}) == 3  # hashable values


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="intra", rate=0.35), "Condition.rate of kind 'intra' must be one of 0.1, 0.2"),
    (dict(kind="intra", rate=0.0), "must be one of"),  # 0 is not a point of the curve: it is the table's lav
    (dict(kind="intra", rate=1.1), "must be one of"),
    (dict(kind="intra", rate=float("nan")), "must be one of"),
    (dict(kind="intra", rate=True), "must be one of"),
    (dict(kind="intra", rate="0.3"), "must be one of"),
    (dict(kind="burst", rate=0.3), "Condition.rate of kind 'burst' must be one of 0.2, 0.4, 0.6, 0.8, 1.0"),
    (dict(kind="modality", modality="x", rate=0.3), "Condition.modality must be one of"),
    (dict(kind="modality", modality="a", rate=0.35), "must be one of"),
    (dict(kind="modality", rate=0.3), "Condition.modality is needed by kind 'modality'"),
    (dict(kind="intra"), "Condition.rate is needed by kind 'intra'"),
    (dict(kind="intra", rate=0.3, modality="a"), "Condition.modality is not used by kind 'intra'"),
    (dict(kind="table", present="lx"), "Condition.present must be a non-empty set of modalities"),
    (dict(kind="table", present=""), "Condition.present must be"),
    (dict(kind="table", present="ll"), "Condition.present must be"),
    (dict(kind="table", present="la", rate=0.3), "Condition.rate is not used by kind 'table'"),
    (dict(kind="rates", rates=(0.35, 0, 0)), "Condition.rates[l] must be one of 0.0, 0.1"),
    (dict(kind="rates", rates=(0.3, 1.1, 0)), "Condition.rates[a] must be one of"),
    (dict(kind="rates", rates=(0.3, 0.1)), "Condition.rates must hold 3 numbers"),
    (dict(kind="exp", rate=0.3), "Condition.kind must be one of table, intra, burst, modality, rates"),
], ids=lambda v: str(v)[:40] if isinstance(v, dict) else None)
def test_invalid_conditions_are_refused_at_construction(kwargs, message):
    kind = kwargs.pop("kind")
    with pytest.raises(ValueError) as info:
        Condition(kind, **kwargs)
    assert message in str(info.value)


def test_conditions_are_frozen():
    with pytest.raises(AttributeError):
        intra(0.3).rate = 0.4


# ---------------------------------------------------------------- lists of conditions


def test_condition_lists():
    assert INTRA_POINTS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert BURST_POINTS == (0.2, 0.4, 0.6, 0.8, 1.0)
    assert RATE_GRID == (0.0, *INTRA_POINTS)
    assert MISSING == TABLE[:6] and all(c.kind == "table" for c in TABLE)
    assert conditions_for() == [*TABLE, *INTRA, *BURST]
    assert conditions_for(burst=False) == [*TABLE, *INTRA]
    assert conditions_for(("l",)) == [table("l"), *INTRA, *BURST]
    assert conditions_for(("l", "a")) == [table("l"), table("a"), table("la"), *INTRA, *BURST]
    assert complete_condition(("l", "a", "v")) == table("lav") and complete_condition(("l",)) == table("l")
    with pytest.raises(ValueError):
        conditions_for(("x",))


def test_per_modality_condition_lists():
    curves = [one(m, p) for m in "lav" for p in INTRA_POINTS]
    assert per_modality_conditions() == curves and len(curves) == 30
    assert [c.name for c in curves[:2]] == ["intra_l_0.1", "intra_l_0.2"] and curves[-1].name == "intra_v_1.0"
    assert list(modality_curve("a")) == curves[10:20]
    assert per_modality_conditions(rates=[(0.3, 0.1, 0.5), (0, 1, 0.9)]) == curves + [
        rates(0.3, 0.1, 0.5), rates(0.0, 1.0, 0.9)]
    assert per_modality_conditions(("l",), rates=[(0.3, 0.1, 0.5)]) == []  # text only: INTRA is the l curve
    assert per_modality_conditions(("l", "a")) == curves[:20]
    with pytest.raises(ValueError, match="rate"):
        per_modality_conditions(rates=[(0.35, 0, 0)])


def test_all_rates_conditions_cover_the_grid_once():
    every = all_rates_conditions()
    assert len(every) == len(set(every)) == 11 ** 3
    assert rates(0.9, 0.3, 0.3) in every and every[0] == rates(0, 0, 0) and every[-1] == rates(1, 1, 1)


# ---------------------------------------------------------------- the fixed masks


def digest(view: View) -> str:
    h = hashlib.sha256()
    for t in (view.present, *view.drop):
        h.update(t.to(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def pinned_valid() -> tuple[torch.Tensor, ...]:
    return (prefix_valid(200, 30, low=0, seed=30), prefix_valid(200, 50, low=1, seed=31),
            prefix_valid(200, 40, low=1, seed=32))


# Checksums of the views of the code before ``Condition`` (names parsed back into masks and seeds:
# seed * 1000 + 0..6 for the table, 100 + 10p intra, 200 + 10p burst, 300 + 100k + 10p per modality),
# computed at commit 133c928 on `pinned_valid()` with seed 3. Masks are mt19937 draws compared in
# float64: the same bits on every CPU. All 327 views of three seeds and three modality sets were also
# compared whole against that code when Condition replaced it.
PINNED_DIGESTS = {
    table("la"): "7270de2a7b476d95",
    intra(0.3): "56b648c41898d6f7",
    Condition("burst", rate=0.4): "a391d1d0966fa33f",
    one("a", 0.3): "b800a925ccb7f982",
    one("v", 1.0): "fb7a93a55aff2952",
    rates(0.9, 0.3, 0.3): "d16873cedd76d20f",
    rates(0.0, 1.0, 0.2): "fe191e1b4d11213f",
}


@pytest.mark.parametrize("condition", list(PINNED_DIGESTS), ids=str)
def test_masks_equal_those_of_the_name_parsing_code(condition):
    assert digest(condition.view(pinned_valid(), seed=3)) == PINNED_DIGESTS[condition]


def test_text_only_masks_equal_those_of_the_name_parsing_code():
    valid = pinned_valid()
    text = (valid[0], torch.zeros(200, 0, dtype=torch.bool), torch.zeros(200, 0, dtype=torch.bool))
    assert digest(intra(0.5).view(text, seed=3, available=("l",))) == "1baf8f588240c8b6"


def test_condition_masks_pinned():
    # Test masks are shared by every model ever compared: a silent change must fail here.
    v = torch.arange(40)[None, :] < torch.arange(1, 41)[:, None]
    view = intra(0.5).view((v, v, v), seed=7)
    got = (int(view.drop[0].sum()), int((view.drop[1].long() * torch.arange(40)).sum()))
    assert got == (414, 5653)  # of 820 valid positions


MASK_SCRIPT = (
    "import torch; from fsrf.protocol import Condition; "
    "v = torch.arange(40)[None, :] < torch.arange(1, 41)[:, None]; "
    "view = Condition('intra', rate=0.5).view((v, v, v), seed=7); "
    "print(int(view.drop[0].sum()), int((view.drop[1].long() * torch.arange(40)).sum()))"
)


def test_condition_masks_do_not_depend_on_the_process():
    # Python's str hash is salted per process; a mask seeded from it would differ in another process.
    salt = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    done = subprocess.run([sys.executable, "-c", MASK_SCRIPT], env=dict(os.environ, PYTHONHASHSEED=salt),
                          capture_output=True, text=True, check=True, cwd=ROOT)
    v = torch.arange(40)[None, :] < torch.arange(1, 41)[:, None]
    view = intra(0.5).view((v, v, v), seed=7)
    here = f"{int(view.drop[0].sum())} {int((view.drop[1].long() * torch.arange(40)).sum())}"
    assert done.stdout.strip() == here


def per_modality_valid(n: int = 4000) -> tuple[torch.Tensor, ...]:
    return (prefix_valid(n, 30, low=1, seed=40), prefix_valid(n, 50, low=1, seed=41),
            prefix_valid(n, 40, low=1, seed=42))


def test_per_modality_conditions_drop_only_the_named_modality_at_its_rate():
    valid = per_modality_valid()
    for k, m in enumerate(MODALITIES):
        for p in (0.3, 0.7):
            view = one(m, p).view(valid, seed=0)
            assert view.present.all()  # intra only: every modality stays present
            for j in range(3):
                zeroed = view.zeroed(j, valid[j])
                if j == k:
                    n = int(valid[j].sum())
                    assert abs(zeroed.sum().item() / n - p) <= binomial_tol(p, n), (m, p)
                    assert not (zeroed & ~valid[j]).any()  # never padding
                else:
                    assert not zeroed.any(), (m, p, j)  # the other modalities are untouched
        full = one(m, 1.0).view(valid, seed=0)
        assert torch.equal(full.zeroed(k, valid[k]), valid[k])  # p = 1: every valid position of m
        assert all(not full.zeroed(j, valid[j]).any() for j in range(3) if j != k)


def test_rates_conditions_drop_each_modality_at_its_own_rate():
    valid = per_modality_valid()
    r = (0.3, 0.1, 0.5)
    view = rates(*r).view(valid, seed=0)
    assert view.present.all()
    for m, rate in enumerate(r):
        n = int(valid[m].sum())
        frac = view.zeroed(m, valid[m]).sum().item() / n
        assert abs(frac - rate) <= binomial_tol(rate, n), (m, rate, frac)
        # each modality's mask is the one of its own per-modality point: the conditions differ only there
        alone = one(MODALITIES[m], rate).view(valid, seed=0)
        assert torch.equal(view.drop[m], alone.drop[m])
    kept = rates(0.0, 1.0, 0.2).view(valid, seed=0)
    assert not kept.drop[0].any() and torch.equal(kept.drop[1], valid[1])


def test_per_modality_masks_are_fixed_by_seed_and_condition():
    valid = per_modality_valid(500)
    for cond in (one("a", 0.3), rates(0.9, 0.3, 0.3)):
        a = cond.view(valid, seed=3)
        assert same_view(a, cond.view(valid, seed=3))  # identical masks for every model
        assert same_view(a, Condition(**vars(cond)).view(valid, seed=3))  # an equal value, an equal mask
        assert not same_view(a, cond.view(valid, seed=4))
    # distinct from the all-modality curve and from the other modalities' points
    assert not torch.equal(one("a", 0.3).view(valid, seed=3).drop[1], intra(0.3).view(valid, seed=3).drop[1])
    assert not torch.equal(one("a", 0.3).view(valid, seed=3).drop[1], one("a", 0.4).view(valid, seed=3).drop[1])
    draws = {(seed, c): torch.rand(1, generator=c._generator(seed)).item()
             for seed in (0, 1) for c in conditions_for() + per_modality_conditions()}
    assert len(set(draws.values())) == len(draws)


def test_per_modality_conditions_need_the_modality():
    text_only = (split_valid()[0], torch.zeros(1000, 0, dtype=torch.bool), torch.zeros(1000, 0, dtype=torch.bool))
    for cond in (one("l", 0.3), one("a", 0.3), rates(0.3, 0.1, 0.5)):
        with pytest.raises(ValueError, match="does not apply to modalities"):
            cond.view(text_only, seed=0, available=("l",))
    with pytest.raises(ValueError, match="intra_a_0.3"):
        one("v", 0.3).view(split_valid(10), seed=0, available=("l", "a"))


def test_condition_views_are_fixed_by_seed_and_condition():
    valid = split_valid()
    for cond in (intra(0.5), Condition("burst", rate=0.6)):
        a = cond.view(valid, seed=3)
        assert same_view(a, cond.view(valid, seed=3))
        assert not same_view(a, cond.view(valid, seed=4))
    assert not same_view(intra(0.5).view(valid, seed=3), intra(0.6).view(valid, seed=3))


def test_table_conditions_set_presence_exactly():
    valid = split_valid()
    for cond in TABLE:
        view = cond.view(valid, seed=0)
        expect = torch.tensor([m in cond.present for m in MODALITIES]).expand(len(valid[0]), 3)
        assert torch.equal(view.present, expect), cond
        assert not any(d.any() for d in view.drop)
        for m in range(3):
            expect_zero = valid[m] if MODALITIES[m] not in cond.present else torch.zeros_like(valid[m])
            assert torch.equal(view.zeroed(m, valid[m]), expect_zero), (cond, m)


def test_intra_conditions_drop_at_their_ratio():
    valid = split_valid(3000)
    view = intra(1.0).view(valid, seed=0)
    assert view.present.all()
    for m in range(3):
        assert torch.equal(view.zeroed(m, valid[m]), valid[m])
    view = intra(0.3).view(valid, seed=0)
    for m in range(3):
        n = int(valid[m].sum())
        assert abs(view.drop[m].sum().item() / n - 0.3) <= binomial_tol(0.3, n)
    burst = Condition("burst", rate=0.4).view(valid, seed=0)
    for m in range(3):
        assert torch.equal(burst.drop[m].sum(1), torch.tensor([round(0.4 * n) for n in valid[m].sum(1).tolist()]))


def test_condition_view_with_text_only_dataset():
    valid = (split_valid()[0], torch.zeros(1000, 0, dtype=torch.bool), torch.zeros(1000, 0, dtype=torch.bool))
    view = intra(0.5).view(valid, seed=1, available=("l",))
    assert torch.equal(view.present, torch.tensor([[True, False, False]]).expand(1000, 3))
    assert view.drop[0].any() and view.drop[1].shape == (1000, 0)
    with pytest.raises(ValueError, match="intra_0.1") as info:  # the message lists what is valid
        table("la").view(valid, seed=1, available=("l",))
    assert "'la'" in str(info.value) and "burst_1.0" in str(info.value)


def test_condition_seeds_are_distinct_and_bounded():
    draws = {(seed, c): torch.rand(1, generator=c._generator(seed)).item()
             for seed in (0, 1, 2) for c in conditions_for()}
    assert len(set(draws.values())) == len(draws)
    for bad in (-1, 2**32, 1.5):
        with pytest.raises(ValueError, match="seed"):
            table("l").view(split_valid(5), seed=bad)


# ---------------------------------------------------------------- summaries


def fake_metrics(conditions) -> dict[Condition, dict[str, float]]:
    """Distinct known values per condition: MAE = 0.01 * k, F1 = 1 - 0.01 * k for the k-th condition."""
    return {c: {"MAE": 0.01 * k, "F1": 1 - 0.01 * k} for k, c in enumerate(conditions)}


def test_summaries_by_hand():
    conds = conditions_for() + per_modality_conditions(rates=[(0.9, 0.3, 0.3)])
    per_cond = fake_metrics(conds)
    flat = summarise(per_cond, prefix="test", modalities=MODALITIES)
    mae = {c.name: per_cond[c]["MAE"] for c in conds}
    assert flat["test/MAE/la"] == mae["la"] and flat["test/F1/rates_l0.9_a0.3_v0.3"] == 1 - mae["rates_l0.9_a0.3_v0.3"]
    # by hand, by name: the conditions each summary is defined on (SPEC section 2)
    six = ["l", "a", "v", "la", "lv", "av"]
    ten = [f"intra_0.{k}" for k in range(1, 10)] + ["intra_1.0"]
    assert flat["test/MAE/avg_missing"] == pytest.approx(np.mean([mae[n] for n in six]))
    assert flat["test/MAE/intra_avg"] == pytest.approx(np.mean([mae[n] for n in ten]))
    assert flat["test/MAE/burst_avg"] == pytest.approx(np.mean([mae[f"burst_{p}"] for p in BURST_POINTS]))
    for m in "lav":
        assert flat[f"test/MAE/intra_{m}_avg"] == pytest.approx(np.mean([mae[n.replace("_", f"_{m}_")] for n in ten]))
    assert flat[f"test/MAE/{OBJECTIVE_CONDITION}"] == pytest.approx(np.mean([mae[n] for n in six + ["lav"] + ten]))
    assert flat["test/F1/avg_missing"] == pytest.approx(1 - flat["test/MAE/avg_missing"])
    summaries = {"avg_missing", "intra_avg", "burst_avg", "intra_l_avg", "intra_a_avg", "intra_v_avg", "objective"}
    assert set(flat) == {f"test/{k}/{n}" for k in ("MAE", "F1") for n in [c.name for c in conds] + sorted(summaries)}


def test_summaries_of_text_only_data_and_without_extensions():
    per_cond = fake_metrics(conditions_for(("l",), burst=False))
    flat = summarise(per_cond, prefix="val", modalities=("l",))
    mae = {c.name: v["MAE"] for c, v in per_cond.items()}
    assert flat["val/MAE/objective"] == pytest.approx(np.mean(list(mae.values())))  # l and the ten points
    assert not any(k.endswith(("/avg_missing", "/burst_avg", "_avg")) and "intra_avg" not in k for k in flat)
    with pytest.raises(ValueError, match="intra_0.4"):
        summarise({c: v for c, v in per_cond.items() if c != intra(0.4)}, prefix="val", modalities=("l",))


# ---------------------------------------------------------------- the zeroed-state curve (SPEC 7)


def test_zeroed_curve_names_masks_and_summary():
    from fsrf.protocol import ZEROED

    assert [c.name for c in ZEROED] == [f"zeroed_{p}" for p in INTRA_POINTS]
    assert [c.word_drop for c in ZEROED] == ["zeroed"] * 10
    assert {c.word_drop for c in [*TABLE, *INTRA, *BURST, *per_modality_conditions(rates=[(0.9, 0.3, 0.3)])]} == {"unk"}
    valid = pinned_valid()
    for p in (0.3, 1.0):  # the same words lost as intra_p, in every modality
        assert same_view(Condition("zeroed", rate=p).view(valid, seed=3), intra(p).view(valid, seed=3))
    with pytest.raises(ValueError, match="Condition.rate of kind 'zeroed' must be one of 0.1"):
        Condition("zeroed", rate=0.35)
    per_cond = fake_metrics(conditions_for(burst=False) + list(ZEROED))
    flat = summarise(per_cond, prefix="test", modalities=MODALITIES)
    assert flat["test/MAE/zeroed_avg"] == pytest.approx(np.mean([per_cond[c]["MAE"] for c in ZEROED]))
    without = summarise(fake_metrics(conditions_for(burst=False)), prefix="test", modalities=MODALITIES)
    assert "test/MAE/zeroed_avg" not in without
    assert flat["test/MAE/objective"] == without["test/MAE/objective"]  # never part of the objective
