"""fsrf.health against small cases computed by hand, plus the masks and the plan from fsrf.losses."""

import math

import pytest
import torch

from fsrf.health import das_paired_mass, grad_shares, he_ho_cos, ho_agreement, log_names, noise_rank, noise_var
from fsrf.losses import sinkhorn_plan


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_noise_var_hand_case_and_present_mask():
    # l: rows 0, 1, 2 -> dim 0 values 0, 1, 2 (variance 1), dim 1 constant (0): mean 0.5
    # a: row 3 is absent (a huge value that must not count); rows 0-2 -> dim 0: 0, 0, 3 (variance 3), dim 1 0
    noise = torch.zeros(4, 2, 2, dtype=torch.float64)
    noise[:3, 0, 0] = t([0.0, 1.0, 2.0])
    noise[:, 1, 0] = t([0.0, 0.0, 3.0, 1e6])
    present = torch.tensor([[1, 1], [1, 1], [1, 1], [0, 0]], dtype=torch.bool)
    assert noise_var(noise, present) == {"l": pytest.approx(0.5), "a": pytest.approx(1.5)}
    # a modality present once has no variance and is left out
    once = torch.tensor([[1, 1], [1, 0], [1, 0], [0, 0]], dtype=torch.bool)
    assert set(noise_var(noise, once)) == {"l"}


def test_noise_rank_hand_cases():
    d = 4
    # rows +-e_k: the covariance is a multiple of I exactly, so rank D
    basis = torch.eye(d, dtype=torch.float64)
    iso = torch.cat([basis, -basis]).unsqueeze(1)  # (8, 1, D)
    assert noise_rank(iso)["l"] == pytest.approx(d, rel=1e-12)
    # points on one line (not through the origin): rank 1
    line = (t([1.0, 2.0, 3.0, 4.0]) + torch.linspace(-2, 3, 7, dtype=torch.float64).unsqueeze(1) * t([1.0, -1.0, 0.5, 2.0]))
    assert noise_rank(line.unsqueeze(1))["l"] == pytest.approx(1.0, rel=1e-9)
    # two orthogonal directions with variances 3 : 1 -> p = (3/4, 1/4), rank exp(H(p))
    two = torch.zeros(4, 1, d, dtype=torch.float64)
    two[:, 0, 0] = t([3.0, -3.0, 0.0, 0.0])
    two[:, 0, 1] = t([0.0, 0.0, math.sqrt(3), -math.sqrt(3)])
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert noise_rank(two)["l"] == pytest.approx(expected, rel=1e-12)
    # collapsed: no direction, rank 0; and the P < D path (Gram) agrees with the D x D path
    assert noise_rank(torch.ones(5, 1, d, dtype=torch.float64))["l"] == 0.0
    wide = randn(6, 1, 20, seed=1)
    centred = wide[:, 0] - wide[:, 0].mean(0)
    eig = torch.linalg.eigvalsh(centred.T @ centred).clamp(min=0)
    p = eig / eig.sum()
    assert noise_rank(wide)["l"] == pytest.approx(math.exp(-float(torch.special.xlogy(p, p).sum())), rel=1e-9)


def test_ho_agreement_hand_cases():
    # sample i has all modalities along e_i: within-sample cosine 1, across samples 0 -> 1
    specific = torch.eye(3, dtype=torch.float64).unsqueeze(1).expand(3, 3, 3).clone()
    assert ho_agreement(specific) == pytest.approx(1.0, abs=1e-12)
    # one constant vector everywhere: agrees within and across samples alike -> 0
    assert ho_agreement(torch.ones(4, 3, 5, dtype=torch.float64)) == pytest.approx(0.0, abs=1e-12)
    # absent rows do not count: make sample 0's v point elsewhere and mark it absent
    spoiled = specific.clone()
    spoiled[0, 2] = t([0.0, 0.0, -1.0])
    present = torch.ones(3, 3, dtype=torch.bool)
    present[0, 2] = False
    assert ho_agreement(spoiled, present) == pytest.approx(1.0, abs=1e-12)
    # within: pairs (l,a), (a,l) of sample 0 at cosine 1 and the 6 pairs of samples 1, 2 at 1; so 1.
    # across: cosines with the spoiled row: -1 against sample 2's rows (e_3), 0 against sample 1's.
    assert ho_agreement(spoiled) < 1.0
    assert math.isnan(ho_agreement(randn(3, 1, 4)))  # one modality: no pair


def test_he_ho_cos_hand_case():
    ho = t([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]])  # (B 2, M 2, D 2)
    he = t([[[0.0, 1.0], [-1.0, 0.0]], [[0.0, -2.0], [1.0, 0.0]]])
    # l: |cos| 0 and 1 -> 0.5; a: |cos| 1 and 1/sqrt 2
    assert he_ho_cos(he, ho) == {"l": pytest.approx(0.5), "a": pytest.approx((1 + 1 / math.sqrt(2)) / 2)}
    present = torch.tensor([[1, 1], [0, 1]], dtype=torch.bool)
    assert he_ho_cos(he, ho, present) == {"l": pytest.approx(0.0), "a": pytest.approx((1 + 1 / math.sqrt(2)) / 2)}


def test_das_paired_mass_hand_cases_and_a_sinkhorn_plan():
    b = 8
    assert das_paired_mass(torch.full((b, b), 1 / b**2, dtype=torch.float64)) == pytest.approx(1.0)
    assert das_paired_mass(torch.eye(b, dtype=torch.float64) / b) == pytest.approx(b)
    # paired views: small eps pairs (close to B), huge eps is the uniform plan (close to 1)
    zp = randn(b, 6, seed=2)
    zq = zp + 0.1 * randn(b, 6, seed=3)
    assert das_paired_mass(sinkhorn_plan(zp, zq, 1e-1)) > 0.99 * b
    assert das_paired_mass(sinkhorn_plan(zp, zq, 1e6)) == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="plan"):
        das_paired_mass(torch.ones(3, 4))


def test_grad_shares_hand_case():
    """L1 = 3 w.x and L2 = |w|^2 at w = (1, 0), x = (0, 4): gradients 3x = (0, 12) and 2w = (2, 0);
    norms 12 and 2 -> shares 12/14 and 2/14. A term that does not reach w gets 0."""
    w = t([1.0, 0.0]).requires_grad_()
    other = t([5.0]).requires_grad_()
    x = t([0.0, 4.0])
    terms = {"one": 3 * (w * x).sum(), "two": w.pow(2).sum(), "elsewhere": other.sum() * 2}
    shares = grad_shares(terms, [w])
    assert shares == {"one": pytest.approx(12 / 14), "two": pytest.approx(2 / 14), "elsewhere": 0.0}
    assert w.grad is None  # no .grad touched
    sum(terms.values()).backward()  # the graph is still there for the training step
    assert torch.equal(w.grad, t([2.0, 12.0]))
    assert grad_shares({"const": t(1.0)}, [w]) == {"const": 0.0}


def test_log_names():
    assert log_names("noise_var", {"l": 1.0, "a": 3.0}) == {"noise_var": 2.0, "noise_var/l": 1.0, "noise_var/a": 3.0}
    assert log_names("noise_var", {}) == {}


def _measure_by_full_forward(model, data, *, views, eps_fn, batch_size):
    """health.measure's reference: every batch of the complete input and of each view through the whole
    network (``model(x, present, zeroed)``), as measure computed it before it reused encodings."""
    from fsrf import health as H
    from fsrf.missing import slice_view, zeroed_masks

    n = len(data)
    valid = data.inputs.valid()
    everything = torch.ones(n, 3, dtype=torch.bool)
    nothing = tuple(torch.zeros_like(v) for v in valid)
    batches = list(torch.arange(n).split(batch_size))
    with torch.no_grad():
        complete = [model(data.batch(idx), everything[idx], tuple(z[idx] for z in nothing)) for idx in batches]
        zs = {0: [], 1: []}
        for idx in batches:
            x = data.batch(idx)
            for k, view in enumerate(views):
                part = slice_view(view, idx)
                zs[k].append(model(x, part.present, zeroed_masks(part, x.valid())).z)
    noise = torch.cat([o.noise for o in complete])
    ho, he = torch.cat([o.ho for o in complete]), torch.cat([o.he for o in complete])
    return {"noise_var": H.noise_var(noise), "ho_agreement": H.ho_agreement(ho), "he_ho_cos": H.he_ho_cos(he, ho),
            "z": (torch.cat(zs[0]), torch.cat(zs[1]))}


@pytest.mark.parametrize("reuse", [False, True])
def test_measure_equals_encoding_every_row_of_every_view(reuse):
    """measure reuses the complete input's H (from the epoch's validation pass, ``evaluate(keep=)``) and
    encodes under a view only the rows in which a present modality loses positions: its metrics equal
    those of the whole network run on every row (the reference above), with and without the reuse. A
    reuse that took a dropped row's complete H, or an absent row's, would move das_pair_cost_ratio."""
    from fsrf import health as H
    from fsrf.config import load_config
    from fsrf.missing import mrm_views
    from fsrf.protocol import conditions_for, evaluate
    from fsrf.train import build_model, prepare

    cfg = load_config(None, ["data.size_scale=0.05", "model.width=16", "model.seq_width=8", "model.dropout=0"])
    prep = prepare(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, prep).eval()
    data = prep.splits["valid"]
    views = mrm_views(data.inputs.valid(), rate=0.5, available=prep.modalities,
                      generator=torch.Generator().manual_seed(3))
    changed = [(views[0].drop[i].any(1) & views[0].present[:, i]).sum() for i in range(3)]
    assert all(0 < c < len(data) for c in changed)  # the case has rows of every kind
    kept = {}
    if reuse:
        evaluate(model, data, conditions_for(prep.modalities, burst=False), modalities=prep.modalities, mask_seed=0,
                 batch_size=7, prefix="val", keep=kept)
        assert kept["complete_h"].shape == (len(data), 3, 16)
    eps_fn = lambda median: 0.25 * median  # noqa: E731
    got = H.measure(model, data, views=views, eps_fn=eps_fn, batch_size=5, complete_h=kept.get("complete_h"))
    want = _measure_by_full_forward(model, data, views=views, eps_fn=eps_fn, batch_size=5)
    for m, v in want["noise_var"].items():
        assert got[f"health/noise_var/{m}"] == pytest.approx(v, rel=1e-5)
    assert got["health/ho_agreement"] == pytest.approx(want["ho_agreement"], rel=1e-5, abs=1e-7)
    zp, zq = want["z"]

    def ratio(rows: int) -> float:
        ratios = []
        for a, b in zip(zp[:rows].split(5), zq[:rows].split(5)):
            if len(a) < 2:
                continue
            cost = torch.cdist(a.double(), b.double()).pow(2)
            off = ~torch.eye(len(a), dtype=torch.bool)
            ratios.append(float(cost.diagonal().mean() / cost[off].mean()))
        return sum(ratios) / len(ratios)

    assert got["health/das_pair_cost_ratio"] == pytest.approx(ratio(len(data)), rel=1e-5)
    # eval.health_rows: the views (and their plans) on the split's first 5 rows; the rest on all of it
    few = H.measure(model, data, views=views, eps_fn=eps_fn, batch_size=5, complete_h=kept.get("complete_h"),
                    view_rows=5)
    assert few["health/das_pair_cost_ratio"] == pytest.approx(ratio(5), rel=1e-5)
    assert few["health/das_pair_cost_ratio"] != pytest.approx(ratio(len(data)), rel=1e-3)
    assert few["health/ho_agreement"] == got["health/ho_agreement"]
