"""fsrf.losses against slow references written straight from the equations, plus invariants.

References loop over samples and modality pairs in float64 Python/numpy, so they share no code with
the vectorised losses.
"""

import math
import warnings

import numpy as np
import ot
import pytest
import scipy.stats
import torch

from fsrf.losses import (
    das_loss,
    dhf_loss,
    homo_hetero_contrastive,
    js_divergence,
    median_pairwise_cost,
    noise_consistency,
    noise_entropy,
    polarity_probs,
    sinkhorn_distance,
    sinkhorn_plan,
    total_loss,
)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def cos_dist(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return 1.0 - float(x @ y) / (np.linalg.norm(x) * np.linalg.norm(y))


# ----------------------------------------------------------------------------- references, eqs. 1-3, 8


def ref_contrastive(ho, he, tau):
    ho, he = ho.numpy(), he.numpy()
    batch, m, _ = ho.shape
    per_sample = []
    for i in range(batch):
        total = 0.0
        for a in range(m):
            for b in range(m):
                if a == b:
                    continue
                g_ab = math.exp(-cos_dist(ho[i, a], ho[i, b]) / tau)
                g_aa = math.exp(-cos_dist(ho[i, a], he[i, a]) / tau)
                total += math.log(g_ab / (g_ab + g_aa))
        per_sample.append(-total / (m * (m - 1)) if m > 1 else 0.0)
    return sum(per_sample) / batch


def ref_noise_consistency(noise, margin):
    n = noise.numpy()
    batch, m, _ = n.shape
    first = 0.0
    for i in range(batch):
        for j in range(batch):
            if j != i:
                for k in range(m):
                    first += cos_dist(n[i, k], n[j, k])
    second = 0.0
    for i in range(batch):
        for a in range(m):
            for b in range(m):
                if b != a:
                    second += max(margin - cos_dist(n[i, a], n[i, b]), 0.0)
    return first / (m * batch * (batch - 1)) + (second / (m * (m - 1) * batch) if m > 1 else 0.0)


def ref_noise_entropy(noise, mu, sigma2, jitter=1e-4):
    n = noise.numpy()
    batch, m, d = n.shape
    total = 0.0
    for k in range(m):
        x = n[:, k, :]  # (B, D)
        cov = np.cov(x, rowvar=False, ddof=1) + jitter * np.eye(d)
        entropy = scipy.stats.multivariate_normal(mean=np.zeros(d), cov=cov).entropy()
        mean_pull = np.mean([np.sum((x[i] - mu) ** 2) for i in range(batch)])
        var_pull = np.sum((np.var(x, axis=0, ddof=1) - sigma2) ** 2)
        total += entropy + mean_pull + var_pull
    return total / m


def ref_js(p, q):
    p, q = p.numpy(), q.numpy()
    rows = []
    for pi, qi in zip(p, q):
        js = 0.0
        for pc, qc in zip(pi, qi):
            mc = 0.5 * (pc + qc)
            if pc > 0:
                js += 0.5 * pc * math.log(pc / mc)
            if qc > 0:
                js += 0.5 * qc * math.log(qc / mc)
        rows.append(js)
    return sum(rows) / len(rows)


# ----------------------------------------------------------------------------- eq. (1)


@pytest.mark.parametrize("m", [3, 2])
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_contrastive_matches_reference(m, tau):
    ho, he = randn(5, m, 4, seed=1), randn(5, m, 4, seed=2)
    assert homo_hetero_contrastive(ho, he, tau).item() == pytest.approx(ref_contrastive(ho, he, tau), rel=1e-12)


def test_contrastive_is_zero_with_one_modality():
    ho = randn(4, 1, 8, seed=1).requires_grad_()
    loss = homo_hetero_contrastive(ho, randn(4, 1, 8, seed=2), 0.5)
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph, so a text-only run can call backward
    assert torch.equal(ho.grad, torch.zeros_like(ho))


def test_contrastive_falls_when_homogeneous_align_and_heterogeneous_move_away():
    ho, he = randn(8, 3, 16, seed=1), randn(8, 3, 16, seed=2)
    shared = randn(8, 1, 16, seed=3)
    aligned = shared + 0.1 * ho  # the three modalities of a sample point the same way
    assert homo_hetero_contrastive(aligned, he, 0.5) < homo_hetero_contrastive(ho, he, 0.5)
    # he opposite to ho (distance 2) against he equal to ho (distance 0)
    assert homo_hetero_contrastive(ho, -ho, 0.5) < homo_hetero_contrastive(ho, ho.clone(), 0.5)


def test_contrastive_gradcheck_and_zero_vectors():
    ho = randn(3, 3, 4, seed=1).requires_grad_()
    he = randn(3, 3, 4, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: homo_hetero_contrastive(a, b, 0.3), (ho, he))
    zero_he = torch.zeros(3, 3, 4, dtype=torch.float64, requires_grad=True)
    loss = homo_hetero_contrastive(ho, zero_he, 0.3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(ho.grad).all() and torch.isfinite(zero_he.grad).all()


def test_contrastive_validates():
    with pytest.raises(ValueError, match="tau"):
        homo_hetero_contrastive(randn(2, 3, 4), randn(2, 3, 4), 0.0)
    with pytest.raises(ValueError, match="he"):
        homo_hetero_contrastive(randn(2, 3, 4), randn(2, 2, 4), 0.5)
    with pytest.raises(ValueError, match="ho"):
        homo_hetero_contrastive(randn(2, 4), randn(2, 4), 0.5)


# ----------------------------------------------------------------------------- eq. (2)


@pytest.mark.parametrize("m", [3, 2, 1])
def test_noise_consistency_matches_reference(m):
    noise = randn(6, m, 3, seed=4)  # D = 3 so pair distances spread around the margin
    margin = 1.0
    assert noise_consistency(noise, margin).item() == pytest.approx(ref_noise_consistency(noise, margin), rel=1e-12)


def test_noise_consistency_hand_values():
    # every sample has n_m = e_m: identical across samples (first term 0), orthogonal across modalities
    # (distance 1), so the hinge is max(margin - 1, 0) on each of the 6 ordered pairs.
    noise = torch.eye(3, dtype=torch.float64).expand(4, 3, 3).clone()
    assert noise_consistency(noise, 0.9).item() == 0.0
    assert noise_consistency(noise, 1.5).item() == pytest.approx(0.5, abs=1e-12)
    # first term alone: half the samples flipped, so 2 * (B/2)^2 of the B (B - 1) ordered pairs are at
    # distance 2 -> mean over pairs 2 * 8 / 12 per modality
    flipped = noise.clone()
    flipped[2:] *= -1
    assert noise_consistency(flipped, 0.0).item() == pytest.approx(2 * 8 / 12, abs=1e-12)


def test_noise_consistency_gradcheck_and_validates():
    noise = randn(4, 3, 5, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(lambda n: noise_consistency(n, 0.7), (noise,))
    with pytest.raises(ValueError, match="B >= 2"):
        noise_consistency(randn(1, 3, 4), 0.5)


# ----------------------------------------------------------------------------- eq. (3)


@pytest.mark.parametrize("m", [3, 2])
@pytest.mark.parametrize("batch,d", [(7, 4), (4, 6)])  # full-rank and singular (B <= D) covariance
def test_noise_entropy_matches_scipy_reference(m, batch, d):
    noise = randn(batch, m, d, seed=6)
    got = noise_entropy(noise, 0.2, 0.8).item()
    assert got == pytest.approx(ref_noise_entropy(noise, 0.2, 0.8), rel=1e-9)


def test_noise_entropy_gram_path_at_the_default_sizes():
    """B = 32 < D = 128 takes the B x B Gram form (Sylvester); it must equal the D x D reference, and its
    gradient must be right too."""
    noise = randn(32, 3, 128, seed=11)
    assert noise_entropy(noise, 0.1, 0.9).item() == pytest.approx(ref_noise_entropy(noise, 0.1, 0.9), rel=1e-9)
    leaf = randn(3, 2, 5, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(lambda n: noise_entropy(n, 0.1, 0.5, jitter=1e-2), (leaf,))


def test_noise_entropy_jitter_dtype_gradcheck_validates():
    noise = randn(5, 3, 4, seed=7)
    assert noise_entropy(noise, 0.0, 1.0, jitter=1e-2).item() == pytest.approx(
        ref_noise_entropy(noise, 0.0, 1.0, jitter=1e-2), rel=1e-9
    )
    assert noise_entropy(noise.float(), 0.0, 1.0).dtype == torch.float32
    leaf = noise.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda n: noise_entropy(n, 0.1, 0.5, jitter=1e-2), (leaf,))
    with pytest.raises(ValueError, match="B >= 2"):
        noise_entropy(randn(1, 3, 4), 0.0, 1.0)
    with pytest.raises(ValueError, match="jitter"):
        noise_entropy(noise, 0.0, 1.0, jitter=0.0)


# ----------------------------------------------------------------------------- eq. (4)


def test_dhf_loss_sums_components_and_noise_switch():
    ho, he, noise = randn(5, 3, 4, seed=1), randn(5, 3, 4, seed=2), randn(5, 3, 4, seed=3)
    kw = dict(tau=0.5, margin=0.6, mu=0.0, sigma2=1.0)
    out = dhf_loss(ho, he, noise, **kw)
    assert set(out) == {"contrastive", "noise_consistency", "noise_entropy", "dhf"}
    assert out["contrastive"].item() == pytest.approx(ref_contrastive(ho, he, 0.5), rel=1e-12)
    assert out["noise_consistency"].item() == pytest.approx(ref_noise_consistency(noise, 0.6), rel=1e-12)
    assert out["noise_entropy"].item() == pytest.approx(ref_noise_entropy(noise, 0.0, 1.0), rel=1e-9)
    parts = out["contrastive"] + out["noise_consistency"] + out["noise_entropy"]
    assert out["dhf"].item() == pytest.approx(parts.item(), rel=1e-12)

    off = dhf_loss(ho, he, None, use_noise=False, **kw)
    assert off["noise_consistency"].item() == 0.0 and off["noise_entropy"].item() == 0.0
    assert off["dhf"].item() == pytest.approx(out["contrastive"].item(), rel=1e-12)
    with pytest.raises(ValueError, match="noise"):
        dhf_loss(ho, he, None, **kw)


# ----------------------------------------------------------------------------- eq. (7)


def paired_views(batch=8, d=5, noise=0.3, seed=0):
    zp = randn(batch, d, seed=seed)
    return zp, zp + noise * randn(batch, d, seed=seed + 100)


def test_sinkhorn_value_matches_pot_sinkhorn2():
    zp, zq = paired_views()
    eps = 0.5 * median_pairwise_cost(zp, zq)
    cost = ot.dist(zp, zq)  # POT's own squared-Euclidean cost
    weights = torch.full((8,), 1 / 8, dtype=torch.float64)
    expected = ot.sinkhorn2(weights, weights, cost, eps, method="sinkhorn_log", stopThr=1e-13, numItermax=100000)
    assert sinkhorn_distance(zp, zq, eps).item() == pytest.approx(expected.item(), rel=1e-8)


def test_sinkhorn_plan_marginals_and_limits():
    zp, zq = paired_views()
    eps = 0.5 * median_pairwise_cost(zp, zq)
    plan = sinkhorn_plan(zp, zq, eps)
    assert plan.shape == (8, 8) and plan.dtype == torch.float64 and (plan >= 0).all()
    torch.testing.assert_close(plan.sum(1), torch.full((8,), 1 / 8, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(plan.sum(0), torch.full((8,), 1 / 8, dtype=torch.float64), rtol=0, atol=1e-9)
    # a huge eps gives the independent coupling, so S -> mean of all costs
    cost = ot.dist(zp, zq)
    assert sinkhorn_distance(zp, zq, 1e6).item() == pytest.approx(cost.mean().item(), rel=1e-4)
    # S is 0 between a batch and itself only in the eps -> 0 limit; with small eps it is near 0
    small = sinkhorn_distance(zp, zp.clone(), 0.02 * median_pairwise_cost(zp, zp), num_iter_max=5000)
    assert 0 <= small.item() < 0.05 * cost.mean().item()


def test_sinkhorn_gradient_is_that_of_the_regularised_value():
    """Plan held constant = autodiff of POT's regularised value; not autodiff of <gamma*, C>."""
    zp0, zq0 = randn(6, 3, seed=11), randn(6, 3, seed=12)
    eps = 0.5 * median_pairwise_cost(zp0, zq0)
    weights = torch.full((6,), 1 / 6, dtype=torch.float64)

    def grads(value_fn):
        zp, zq = zp0.clone().requires_grad_(), zq0.clone().requires_grad_()
        value_fn(zp, zq).backward()
        return torch.cat([zp.grad.flatten(), zq.grad.flatten()])

    ours = grads(lambda zp, zq: sinkhorn_distance(zp, zq, eps))
    regularised = grads(
        lambda zp, zq: ot.solve(ot.dist(zp, zq), weights, weights, reg=eps, max_iter=100000, tol=1e-13).value
    )
    linear = grads(
        lambda zp, zq: ot.sinkhorn2(
            weights, weights, ot.dist(zp, zq), eps, method="sinkhorn_log", stopThr=1e-13, numItermax=100000
        )
    )
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(ours, regularised, dim=0).item() == pytest.approx(1.0, abs=1e-10)
    torch.testing.assert_close(ours, regularised, rtol=1e-7, atol=1e-9)
    # the documented difference: the gradient of <gamma*, C> itself is measurably another vector
    assert cosine(ours, linear, dim=0).item() < 0.999


def test_sinkhorn_gradient_reaches_both_views_in_float32_without_warning():
    zp, zq = paired_views(batch=16, d=32, seed=3)
    zp, zq = zp.float().requires_grad_(), zq.float().requires_grad_()
    eps = 0.2 * median_pairwise_cost(zp, zq)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the float64 plan converges where float32 would stall
        value = sinkhorn_distance(zp, zq, eps)
    assert value.dtype == torch.float32
    value.backward()
    for grad in (zp.grad, zq.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_sinkhorn_warns_when_not_converged():
    zp, zq = paired_views(batch=8, seed=4)
    eps = 0.01 * median_pairwise_cost(zp, zq)
    with pytest.warns(RuntimeWarning, match=r"not converged at eps=.* after 5 iterations"):
        value = sinkhorn_distance(zp, zq, eps, num_iter_max=5)
    assert torch.isfinite(value)


def test_sinkhorn_validates():
    zp, zq = paired_views()
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            sinkhorn_distance(zp, zq, bad)
    with pytest.raises(ValueError, match="zq"):
        sinkhorn_distance(zp, zq[:5], 1.0)
    with pytest.raises(ValueError, match="zp"):
        sinkhorn_distance(zp[0], zq[0], 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        sinkhorn_distance(zp, torch.full_like(zq, float("nan")), 1.0)


# ----------------------------------------------------------------------------- eq. (8)


def random_probs(batch, classes, seed):
    return torch.softmax(randn(batch, classes, seed=seed) * 2, dim=-1)


def test_js_matches_reference_including_zeros():
    p, q = random_probs(6, 4, seed=1), random_probs(6, 4, seed=2)
    assert js_divergence(p, q).item() == pytest.approx(ref_js(p, q), rel=1e-12)
    p0 = torch.tensor([[0.0, 0.3, 0.7], [0.5, 0.5, 0.0]], dtype=torch.float64)
    q0 = torch.tensor([[0.2, 0.0, 0.8], [0.5, 0.5, 0.0]], dtype=torch.float64)
    assert js_divergence(p0, q0).item() == pytest.approx(ref_js(p0, q0), rel=1e-12)


def test_js_invariants():
    p, q = random_probs(6, 3, seed=3), random_probs(6, 3, seed=4)
    assert js_divergence(p, q).item() == pytest.approx(js_divergence(q, p).item(), rel=1e-14)
    assert js_divergence(p, p.clone()).item() == pytest.approx(0.0, abs=1e-15)
    assert 0 < js_divergence(p, q).item() <= math.log(2)
    disjoint_p = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    disjoint_q = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    assert js_divergence(disjoint_p, disjoint_q).item() == pytest.approx(math.log(2), rel=1e-14)


def test_js_gradients():
    p = random_probs(3, 4, seed=5).requires_grad_()
    q = random_probs(3, 4, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(js_divergence, (p, q))
    # exact zeros, even shared ones, give finite gradients
    p0 = torch.tensor([[0.0, 0.4, 0.6]], dtype=torch.float64, requires_grad=True)
    q0 = torch.tensor([[0.0, 0.9, 0.1]], dtype=torch.float64, requires_grad=True)
    js_divergence(p0, q0).backward()
    assert torch.isfinite(p0.grad).all() and torch.isfinite(q0.grad).all()
    with pytest.raises(ValueError, match="q"):
        js_divergence(p, q[:, :2])


def test_polarity_probs():
    score = torch.tensor([-2.0, 0.0, 0.5], dtype=torch.float64)
    probs = polarity_probs(score, 0.5)
    assert probs.shape == (3, 2)
    torch.testing.assert_close(probs.sum(1), torch.ones(3, dtype=torch.float64))
    # softmax([-s, s] / T)[1] = sigmoid(2 s / T)
    torch.testing.assert_close(probs[:, 1], torch.sigmoid(2 * score / 0.5))
    assert probs[1].tolist() == [0.5, 0.5]
    torch.testing.assert_close(polarity_probs(score.unsqueeze(1), 0.5), probs)
    with pytest.raises(ValueError, match="temperature"):
        polarity_probs(score, 0.0)


# ----------------------------------------------------------------------------- eq. (9) and the total


def test_das_loss_sums_components():
    zp, zq = paired_views()
    p, q = random_probs(8, 2, seed=7), random_probs(8, 2, seed=8)
    out = das_loss(zp, zq, p, q, eps=2.0)
    assert set(out) == {"sinkhorn", "js", "das"}
    assert out["sinkhorn"].item() == pytest.approx(sinkhorn_distance(zp, zq, 2.0).item(), rel=1e-12)
    assert out["js"].item() == pytest.approx(ref_js(p, q), rel=1e-12)
    assert out["das"].item() == pytest.approx(out["sinkhorn"].item() + out["js"].item(), rel=1e-12)


def t(x):
    return torch.tensor(x, dtype=torch.float64)


DHF_P = {"contrastive": t(0.5), "noise_consistency": t(0.25), "noise_entropy": t(-1.0), "dhf": t(-0.25)}
DHF_Q = {"contrastive": t(1.5), "noise_consistency": t(0.75), "noise_entropy": t(-1.5), "dhf": t(0.75)}
DAS = {"sinkhorn": t(3.0), "js": t(0.5), "das": t(3.5)}


def test_total_loss_hand_computed():
    out = total_loss(t(1.0), t(2.0), dhf_p=DHF_P, dhf_q=DHF_Q, das=DAS)
    # 1 + 2 + 0.2 * mean(-0.25, 0.75) + 0.1 * 3.5 = 3 + 0.05 + 0.35
    assert out["total"].item() == pytest.approx(3.4, abs=1e-12)
    assert set(out) == {
        "total", "task_p", "task_q", "dhf", "dhf/contrastive", "dhf/noise_consistency", "dhf/noise_entropy",
        "das", "das/sinkhorn", "das/js",
    }
    assert out["dhf"].item() == pytest.approx(0.25)
    assert out["dhf/contrastive"].item() == pytest.approx(1.0)
    assert out["dhf/noise_consistency"].item() == pytest.approx(0.5)
    assert out["dhf/noise_entropy"].item() == pytest.approx(-1.25)
    assert out["das/sinkhorn"].item() == 3.0 and out["das/js"].item() == 0.5 and out["das"].item() == 3.5
    assert out["task_p"].item() == 1.0 and out["task_q"].item() == 2.0
    custom = total_loss(t(1.0), t(2.0), dhf_p=DHF_P, dhf_q=DHF_Q, das=DAS, lambda1=1.0, lambda2=2.0)
    assert custom["total"].item() == pytest.approx(3 + 0.25 + 7.0, abs=1e-12)


def test_total_loss_switches():
    no_das = total_loss(t(1.0), t(2.0), dhf_p=DHF_P, dhf_q=DHF_Q)
    assert no_das["total"].item() == pytest.approx(3.05, abs=1e-12)
    assert not any(k.startswith("das") for k in no_das)
    no_dhf = total_loss(t(1.0), t(2.0), das=DAS)
    assert no_dhf["total"].item() == pytest.approx(3.35, abs=1e-12)
    assert not any(k.startswith("dhf") for k in no_dhf)
    assert total_loss(t(1.0), t(2.0))["total"].item() == 3.0
    with pytest.raises(ValueError, match="dhf_p, dhf_q"):
        total_loss(t(1.0), t(2.0), dhf_p=DHF_P)
    with pytest.raises(ValueError, match="lambda1"):
        total_loss(t(1.0), t(2.0), lambda1=-0.1)


def test_total_loss_backpropagates_into_every_term():
    ho, he, noise = (randn(6, 3, 4, seed=s).requires_grad_() for s in (1, 2, 3))
    zp, zq = (x.requires_grad_() for x in paired_views(batch=6, d=4))
    score_p, score_q = randn(6, seed=9).requires_grad_(), randn(6, seed=10).requires_grad_()
    kw = dict(tau=0.5, margin=0.5, mu=0.0, sigma2=1.0)
    out = total_loss(
        score_p.pow(2).mean(), score_q.pow(2).mean(),
        dhf_p=dhf_loss(ho, he, noise, **kw), dhf_q=dhf_loss(ho * 2, he, noise * 2, **kw),
        das=das_loss(zp, zq, polarity_probs(score_p, 1.0), polarity_probs(score_q, 1.0), eps=2.0),
    )
    out["total"].backward()
    for leaf in (ho, he, noise, zp, zq, score_p, score_q):
        assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
