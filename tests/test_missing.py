"""Tests of fsrf.missing: statistics of the random masks against exact probabilities, and invariants.

Statistical checks use a fixed seed and a tolerance of 5 binomial standard deviations, so they are
deterministic, yet any wrong probability of the size that matters here moves them far outside it.
"""

import itertools
import math
import re

import pytest
import torch

from fsrf import MODALITIES
from fsrf.missing import (
    SCHEDULES,
    Schedule,
    View,
    burst_drop,
    intra_drop,
    mrm_views,
    sample_presence,
    slice_view,
    zeroed_masks,
)

from conftest import Z, binomial_tol, gen, prefix_valid  # noqa: E402  (the statistical mask tests' helpers)


def exact_subset_probs(rate: float) -> dict[str, float]:
    """Reference straight from the definition: enumerate the 8 sets, drop the empty one, renormalise."""
    weights = {}
    for keep in itertools.product([True, False], repeat=3):
        name = "".join(m for m, k in zip(MODALITIES, keep) if k)
        if name:
            weights[name] = math.prod((1 - rate) if k else rate for k in keep)
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


def set_codes(present: torch.Tensor) -> torch.Tensor:
    """(n,) integer code of each row's present set: bit m set when modality m is present."""
    return (present.long() * torch.tensor([1, 2, 4])).sum(1)


def code(name: str) -> int:
    return sum(1 << i for i, m in enumerate(MODALITIES) if m in name)


# ---------------------------------------------------------------- intra_drop


def test_intra_drop_fraction_matches_p():
    valid = prefix_valid(4000, 50, low=0, seed=1)
    n = int(valid.sum())
    for p in (0.1, 0.3, 0.75):
        drop = intra_drop(valid, p, generator=gen(2))
        frac = drop.sum().item() / n
        assert abs(frac - p) <= binomial_tol(p, n), (p, frac)


def test_intra_drop_extremes_and_padding():
    valid = prefix_valid(500, 30, low=0, seed=3)
    assert (~valid).any() and (valid.sum(1) == 0).any()  # the fixture really has padding and empty rows
    assert torch.equal(intra_drop(valid, 1.0, generator=gen(0)), valid)
    assert not intra_drop(valid, 0.0, generator=gen(0)).any()
    drop = intra_drop(valid, 0.9, generator=gen(0))
    assert not (drop & ~valid).any()


def test_intra_drop_per_sample_ratios():
    batch, steps = 4000, 40
    valid = prefix_valid(batch, steps, low=5, seed=4)
    ratios = torch.tensor([0.0, 0.2, 0.8, 1.0]).repeat(batch // 4)  # (B,)
    drop = intra_drop(valid, ratios, generator=gen(5))
    for r in (0.2, 0.8):
        rows = ratios == r
        n = int(valid[rows].sum())
        frac = drop[rows].sum().item() / n
        assert abs(frac - r) <= binomial_tol(r, n), (r, frac)
    assert not drop[ratios == 0.0].any()
    assert torch.equal(drop[ratios == 1.0], valid[ratios == 1.0])


def test_intra_drop_reproducible_and_seed_dependent():
    valid = prefix_valid(64, 20, low=1, seed=6)
    a = intra_drop(valid, 0.5, generator=gen(7))
    assert torch.equal(a, intra_drop(valid, 0.5, generator=gen(7)))
    assert not torch.equal(a, intra_drop(valid, 0.5, generator=gen(8)))


@pytest.mark.parametrize("p", [-0.1, 1.2, float("nan"), torch.tensor([0.5, 1.5])])
def test_intra_drop_refuses_bad_ratio(p):
    with pytest.raises(ValueError):
        intra_drop(torch.ones(2, 3, dtype=torch.bool), p, generator=gen(0))


# ---------------------------------------------------------------- burst_drop


def test_burst_is_one_block_of_rounded_length_inside_valid_prefix():
    valid = prefix_valid(1500, 40, low=0, seed=9)
    lengths = valid.sum(1).tolist()
    for p in (0.2, 0.5, 0.7, 1.0):
        drop = burst_drop(valid, p, generator=gen(10))
        assert not (drop & ~valid).any()
        for row, length in zip(drop, lengths):
            where = torch.nonzero(row)[:, 0]
            assert len(where) == round(p * length)  # Python's round, as documented
            if len(where):
                assert torch.equal(where, torch.arange(where[0], where[0] + len(where)))  # contiguous
        if p == 1.0:
            assert torch.equal(drop, valid)
    assert not burst_drop(valid, 0.0, generator=gen(10)).any()


def test_burst_start_is_uniform_over_all_places():
    batch, length, p = 4000, 20, 0.25  # block of 5, starts 0..15
    valid = torch.ones(batch, length, dtype=torch.bool)
    drop = burst_drop(valid, p, generator=gen(11))
    starts = drop.int().argmax(1)
    counts = torch.bincount(starts, minlength=length)
    assert counts[16:].sum() == 0
    expect = batch / 16
    tol = Z * math.sqrt(expect * (1 - 1 / 16))
    assert ((counts[:16] - expect).abs() <= tol).all(), counts


def test_burst_refuses_non_prefix_valid():
    valid = torch.tensor([[False, True, True]])
    with pytest.raises(ValueError, match="prefix"):
        burst_drop(valid, 0.5, generator=gen(0))


# ---------------------------------------------------------------- sample_presence


def test_presence_keeps_a_modality_and_matches_exact_set_probabilities():
    n = 200_000
    for rate in (0.3, 0.5, 0.8):
        present_p, present_q = sample_presence(n, rate=rate, generator=gen(12))
        assert present_p.any(1).all() and present_q.any(1).all()
        exact = exact_subset_probs(rate)
        counts = torch.bincount(set_codes(present_p), minlength=8)
        assert counts[0] == 0
        for name, prob in exact.items():
            freq = counts[code(name)].item() / n
            assert abs(freq - prob) <= binomial_tol(prob, n), (rate, name, freq, prob)


def test_presence_marginal_missing_rate_at_half():
    # rate 0.5: the 8 sets are equally likely; among the 7 non-empty ones, 3 lack a given modality.
    assert sum(p for s, p in exact_subset_probs(0.5).items() if "a" not in s) == pytest.approx(3 / 7)
    n = 100_000
    present_p, _ = sample_presence(n, rate=0.5, generator=gen(13))
    missing = (~present_p).double().mean(0)  # (3,)
    assert ((missing - 3 / 7).abs() <= binomial_tol(3 / 7, n)).all(), missing


def test_presence_rate_edges():
    p, q = sample_presence(1000, rate=0.0, generator=gen(14))
    assert p.all() and q.all()
    p, q = sample_presence(30_000, rate=1.0, generator=gen(14))
    assert (p.sum(1) == 1).all() and (q.sum(1) == 1).all()  # limit rate -> 1: single modalities
    share = p.double().mean(0)
    assert ((share - 1 / 3).abs() <= binomial_tol(1 / 3, 30_000)).all()
    # rate 0 with overlap 0: no other set exists, q copies p (documented).
    p, q = sample_presence(100, rate=0.0, overlap=0.0, generator=gen(14))
    assert torch.equal(p, q)


def test_presence_overlap_sets_probability_of_same_set():
    n = 100_000
    for o in (0.25, 0.6):
        p, q = sample_presence(n, rate=0.5, overlap=o, generator=gen(15))
        same = (p == q).all(1).double().mean().item()
        assert abs(same - o) <= binomial_tol(o, n), (o, same)
        assert q.any(1).all()
    p, q = sample_presence(20_000, rate=0.5, overlap=0.0, generator=gen(16))
    assert not (p == q).all(1).any()
    p, q = sample_presence(20_000, rate=0.5, overlap=1.0, generator=gen(16))
    assert torch.equal(p, q)


def test_presence_overlap_other_set_follows_renormalised_distribution():
    n, rate = 200_000, 0.4
    p, q = sample_presence(n, rate=rate, overlap=0.0, generator=gen(17))
    exact = exact_subset_probs(rate)
    rows = p.all(1)  # p's set is lav
    counts = torch.bincount(set_codes(q[rows]), minlength=8)
    n_rows = int(rows.sum())
    rest = 1 - exact["lav"]
    assert counts[code("lav")] == 0
    for name in ("l", "a", "v", "la", "lv", "av"):  # every set but lav
        prob = exact[name] / rest
        freq = counts[code(name)].item() / n_rows
        assert abs(freq - prob) <= binomial_tol(prob, n_rows), (name, freq, prob)


def test_presence_without_overlap_views_are_independent():
    n, rate = 200_000, 0.5
    p, q = sample_presence(n, rate=rate, generator=gen(18))
    same_exact = sum(v * v for v in exact_subset_probs(rate).values())  # 7 * (1/7)^2 = 1/7
    same = (p == q).all(1).double().mean().item()
    assert abs(same - same_exact) <= binomial_tol(same_exact, n)
    # joint of (p has l, q has l) factorises
    both = (p[:, 0] & q[:, 0]).double().mean().item()
    expect = p[:, 0].double().mean().item() * q[:, 0].double().mean().item()
    assert abs(both - expect) <= binomial_tol(expect, n)


@pytest.mark.parametrize("kwargs", [dict(rate=1.5), dict(rate=-0.1), dict(rate=0.5, overlap=2.0)])
def test_presence_refuses_bad_rates(kwargs):
    with pytest.raises(ValueError):
        sample_presence(10, generator=gen(0), **kwargs)


# ---------------------------------------------------------------- mrm_views


def mrm_valid(batch: int) -> tuple[torch.Tensor, ...]:
    return (
        prefix_valid(batch, 30, low=10, seed=20),
        prefix_valid(batch, 50, low=10, seed=21),
        prefix_valid(batch, 40, low=10, seed=22),
    )


def test_mrm_views_invariants():
    valid = mrm_valid(2000)
    vp, vq = mrm_views(valid, rate=0.7, generator=gen(23))
    assert not torch.equal(vp.present, vq.present)  # two different views
    for view in (vp, vq):
        assert view.present.any(1).all()
        for m in range(3):
            absent = ~view.present[:, m]
            assert absent.any()
            zero = view.zeroed(m, valid[m])
            assert torch.equal(zero[absent], valid[m][absent])  # an absent modality is zeroed whole
            assert not view.drop[m][absent].any()  # intra drops only on present modalities
            assert not (view.drop[m] & ~valid[m]).any() and not (zero & ~valid[m]).any()


def test_mrm_intra_ratio_is_rate_times_uniform():
    rate, batch = 0.6, 4000
    valid = mrm_valid(batch)
    view, _ = mrm_views(valid, rate=rate, generator=gen(24))
    ratios, hits, expect_hit = [], [], []
    for m in range(3):
        rows = view.present[:, m]
        lengths = valid[m][rows].sum(1).double()
        dropped = view.drop[m][rows].sum(1).double()
        ratios.append(dropped / lengths)
        hits.append((dropped > 0).double())
        # P(some drop) = rate * E_u[1 - (1 - u)^L] = rate * L / (L + 1)
        expect_hit.append(rate * lengths / (lengths + 1))
    ratios, hits, expect_hit = torch.cat(ratios), torch.cat(hits), torch.cat(expect_hit)
    n = len(ratios)
    # E[ratio] = rate * E[u] = rate / 2, var <= E[ratio^2] = rate / 3
    assert abs(ratios.mean().item() - rate / 2) <= Z * math.sqrt(rate / 3 / n)
    p_hit = expect_hit.mean().item()
    assert abs(hits.mean().item() - p_hit) <= binomial_tol(p_hit, n)


def test_mrm_views_reproducible_and_overlap_passed_through():
    valid = mrm_valid(500)
    a = mrm_views(valid, rate=0.5, overlap=1.0, generator=gen(25))
    b = mrm_views(valid, rate=0.5, overlap=1.0, generator=gen(25))
    assert torch.equal(a[0].present, a[1].present)  # overlap 1: same sets
    for va, vb in zip(a, b):
        assert torch.equal(va.present, vb.present)
        assert all(torch.equal(x, y) for x, y in zip(va.drop, vb.drop))
    assert not all(torch.equal(x, y) for x, y in zip(a[0].drop, a[1].drop))  # intra drawn per view


def test_mrm_rate_zero_is_complete():
    valid = mrm_valid(200)
    for view in mrm_views(valid, rate=0.0, generator=gen(26)):
        assert view.present.all()
        assert not any(d.any() for d in view.drop)


def test_mrm_modality_scale_zero_never_drops_that_modality():
    valid = mrm_valid(3000)
    for scale in ((1.0, 0.0, 1.0), (0.0, 1.0, 0.0)):
        for view in mrm_views(valid, rate=0.8, modality_scale=scale, generator=gen(27)):
            for m in range(3):
                present = view.present[:, m]
                if scale[m] == 0.0:
                    assert not view.drop[m].any(), (scale, m)
                    # ... yet the modality still goes missing as a whole: presence is not scaled
                    assert (~present).any()
                    assert torch.equal(view.zeroed(m, valid[m])[present], torch.zeros_like(valid[m][present]))
                else:
                    assert view.drop[m][present].any(), (scale, m)


def test_mrm_modality_scale_scales_the_intra_hit_rate_and_one_is_the_plain_mrm():
    rate, batch = 0.8, 20_000
    valid = mrm_valid(batch)
    plain = mrm_views(valid, rate=rate, generator=gen(28))
    ones = mrm_views(valid, rate=rate, modality_scale=(1.0, 1.0, 1.0), generator=gen(28))
    for a, b in zip(plain, ones):  # the default draws exactly the same masks
        assert torch.equal(a.present, b.present) and all(torch.equal(x, y) for x, y in zip(a.drop, b.drop))
    view, _ = mrm_views(valid, rate=rate, modality_scale=(1.0, 0.5, 0.25), generator=gen(28))
    for m, scale in enumerate((1.0, 0.5, 0.25)):
        rows = view.present[:, m]
        lengths = valid[m][rows].sum(1).double()
        hit = (view.drop[m][rows].sum(1) > 0).double()
        expect = (rate * scale * lengths / (lengths + 1)).mean().item()  # P(some drop), as above
        assert abs(hit.mean().item() - expect) <= binomial_tol(expect, len(hit)), (m, hit.mean(), expect)


@pytest.mark.parametrize("scale, field", [((1.0, -0.5, 1.0), "modality_scale[a]"),
                                          ((1.0, 1.0, 2.5), "modality_scale[v]")])
def test_mrm_refuses_scaled_rates_outside_zero_one(scale, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        mrm_views(mrm_valid(10), rate=0.5, modality_scale=scale, generator=gen(0))


# ---------------------------------------------------------------- schedules


def test_schedules_at_hand_computed_points():
    assert Schedule("constant", 0.3).rate(7, 10) == 0.3
    lin = Schedule("linear", 0.2, 0.8)
    assert lin.rate(0, 11) == pytest.approx(0.2)
    assert lin.rate(5, 11) == pytest.approx(0.5)
    assert lin.rate(10, 11) == pytest.approx(0.8)
    assert lin.rate(0, 1) == 0.2  # one-epoch run
    cos = Schedule("cosine", 0.2, 0.8)
    assert cos.rate(5, 11) == pytest.approx(0.5)  # midpoint (p0 + p1) / 2
    assert cos.rate(0, 11) == pytest.approx(0.2) and cos.rate(10, 11) == pytest.approx(0.8)
    assert cos.rate(2, 9) == pytest.approx(0.2 + 0.6 * (1 - math.cos(math.pi / 4)) / 2)  # t = 1/4
    step = Schedule("step", 0.1, 0.9, at=0.5)
    assert [step.rate(e, 10) for e in (0, 4, 5, 9)] == [0.1, 0.1, 0.9, 0.9]
    step = Schedule("step", 0.1, 0.9, at=0.35)  # boundary 3.5
    assert (step.rate(3, 10), step.rate(4, 10)) == (0.1, 0.9)
    assert Schedule("step", 0.1, 0.9, at=0.0).rate(0, 10) == 0.9
    assert Schedule("linear", 0.4).p1 == 0.4  # p1 defaults to p0


def test_schedule_max_rate_by_hand():
    assert Schedule("constant", 0.3).max_rate(10) == 0.3
    assert Schedule("linear", 0.2, 0.8).max_rate(11) == pytest.approx(0.8)  # reached at the last epoch
    assert Schedule("linear", 0.8, 0.2).max_rate(11) == 0.8  # a falling schedule peaks at the start
    assert Schedule("linear", 0.2, 0.8).max_rate(1) == 0.2  # one epoch: t = 0 only
    assert Schedule("cosine", 0.1, 0.7).max_rate(5) == pytest.approx(0.7)
    assert Schedule("step", 0.1, 0.9, at=0.5).max_rate(10) == 0.9
    assert Schedule("step", 0.1, 0.9, at=1.0).max_rate(10) == 0.1  # the switch never comes
    with pytest.raises(ValueError, match="num_epochs"):
        Schedule("constant", 0.3).max_rate(0)


def test_schedule_max_rate_without_run_length_bounds_every_run_length():
    """``max_rate()`` is the bound a config is checked against before its run length is known: it must
    be at least every run's largest rate, and reached by some run length."""
    assert Schedule("constant", 0.3, 0.9).max_rate() == 0.3  # p1 unused by constant
    assert Schedule("linear", 0.2, 0.8).max_rate() == 0.8
    assert Schedule("linear", 0.8, 0.2).max_rate() == 0.8
    assert Schedule("cosine", 0.1, 0.7).max_rate() == 0.7
    assert Schedule("step", 0.1, 0.9, at=0.5).max_rate() == 0.9
    for schedule in SCHEDULES:
        s = Schedule(schedule, 0.25, 0.75, at=0.6)
        runs = [s.max_rate(n) for n in range(1, 30)]
        assert max(runs) <= s.max_rate() and max(runs) == pytest.approx(s.max_rate()), schedule


def test_config_and_report_use_the_schedule_rule():
    """The config's modality_scale check and the report's max training rate ask ``Schedule.max_rate``."""
    from fsrf.config import load_config
    from fsrf.errors import InputError

    base = ["missing.schedule=step", "missing.p0=0.2", "missing.p1=0.5", "missing.at=1.0"]
    assert load_config(None, base + ["missing.modality_scale.a=2"]).missing.modality_scale.a == 2.0  # 0.5 * 2
    with pytest.raises(InputError, match="missing.modality_scale.a"):
        load_config(None, base + ["missing.modality_scale.a=2.1"])  # max_rate() 0.5 * 2.1 > 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(schedule="linear", p0=0.2, p1=1.3), "missing.p1 must be in [0, 1], got 1.3"),
        (dict(schedule="constant", p0=-0.1), "missing.p0 must be in [0, 1], got -0.1"),
        (dict(schedule="step", p0=0.1, p1=0.5, at=1.5), "missing.at must be in [0, 1], got 1.5"),
        (dict(schedule="exp", p0=0.1), "missing.schedule must be one of constant, linear, cosine, step, got 'exp'"),
    ],
)
def test_schedule_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError) as info:
        Schedule(**kwargs)
    assert message in str(info.value)


def test_schedule_refuses_epoch_out_of_range():
    with pytest.raises(ValueError):
        Schedule("linear", 0.1, 0.5).rate(10, 10)


# ---------------------------------------------------------------- views


def test_slice_view():
    valid = (prefix_valid(50, 30, low=0, seed=30), prefix_valid(50, 50, low=1, seed=31),
             prefix_valid(50, 40, low=1, seed=32))
    present = torch.rand(50, 3, generator=gen(33)) < 0.5
    view = View(present=present, drop=tuple(intra_drop(v, 0.5, generator=gen(34 + m)) for m, v in enumerate(valid)))
    for index in (slice(10, 20), torch.tensor([3, 1, 4, 1, 5])):
        part = slice_view(view, index)
        assert torch.equal(part.present, view.present[index])
        assert all(torch.equal(d, full[index]) for d, full in zip(part.drop, view.drop))
        assert torch.equal(part.zeroed(1, valid[1][index]), view.zeroed(1, valid[1])[index])


def test_zeroed_masks_are_each_modality_zeroed():
    valid = (prefix_valid(20, 6, low=0, seed=35), prefix_valid(20, 8, low=1, seed=36),
             prefix_valid(20, 5, low=1, seed=37))
    view = View(present=torch.rand(20, 3, generator=gen(38)) < 0.5,
                drop=tuple(intra_drop(v, 0.4, generator=gen(39 + m)) for m, v in enumerate(valid)))
    masks = zeroed_masks(view, valid)
    assert len(masks) == 3
    assert all(torch.equal(z, view.zeroed(m, valid[m])) for m, z in enumerate(masks))


def test_view_refuses_wrong_shapes():
    with pytest.raises(ValueError):
        View(present=torch.ones(4, 2, dtype=torch.bool), drop=(torch.zeros(4, 3, dtype=torch.bool),) * 3)
    with pytest.raises(ValueError):
        View(present=torch.ones(4, 3, dtype=torch.bool), drop=(torch.zeros(5, 3, dtype=torch.bool),) * 3)


# ------------------------------------------------------------------------------------------------
# MRM on data with fewer than three modalities: sets are drawn among the modalities the data has


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 1.0])
def test_presence_is_drawn_among_the_available_modalities(rate):
    from fsrf.missing import _subset_probs

    three = _subset_probs(rate)
    present = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]]).double()
    if rate < 1:  # the plain product over (l, a, v), exactly as before
        plain = (present * (1 - rate) + (1 - present) * rate).prod(1)
        assert torch.equal(three, plain / plain.sum())
    # text only: the one set {l}, whatever the rate (a view never loses its only modality)
    assert _subset_probs(rate, ("l",)).tolist() == [1.0, 0, 0, 0, 0, 0, 0]
    # l and a: P(l) = P(a) = (1 - r) r, P(la) = (1 - r)^2, renormalised; the limit r -> 1 splits l / a
    two = _subset_probs(rate, ("l", "a"))
    if rate == 1.0:
        expected = [0.5, 0.5, 0, 0, 0, 0, 0]
    else:
        w = [(1 - rate) * rate, (1 - rate) * rate, (1 - rate) ** 2]
        expected = [w[0] / sum(w), w[1] / sum(w), 0, w[2] / sum(w), 0, 0, 0]
    assert two.tolist() == pytest.approx(expected, abs=1e-15)


def test_text_only_views_always_keep_the_text():
    valid = (torch.ones(200, 5, dtype=torch.bool), torch.zeros(200, 1, dtype=torch.bool),
             torch.zeros(200, 1, dtype=torch.bool))
    vp, vq = mrm_views(valid, rate=0.9, generator=torch.Generator().manual_seed(0), available=("l",))
    assert vp.present[:, 0].all() and vq.present[:, 0].all()
    assert not vp.present[:, 1:].any() and not vq.present[:, 1:].any()
