"""fsrf.losses against slow references written straight from the equations, plus invariants.

References loop over samples and modality pairs in float64 Python/numpy, so they share no code with
the vectorised losses. Each takes an optional ``present`` (B, M) mask and is written from SPEC section 7
("DHF terms see present modalities only"); with ``present=None`` it is section 4's definition.
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
    entropic_ot,
    homo_hetero_contrastive,
    js_divergence,
    median_pairwise_cost,
    noise_consistency,
    noise_entropy,
    polarity_probs,
    sinkhorn_distance,
    sinkhorn_divergence,
    sinkhorn_plan,
    total_loss,
)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def cos_dist(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return 1.0 - float(x @ y) / (np.linalg.norm(x) * np.linalg.norm(y))


# ----------------------------------------------------------------------------- references, eqs. 1-3, 8


def is_present(present, i, k):
    return present is None or bool(present[i, k])


def ref_contrastive(ho, he, tau, present=None):
    ho, he = ho.numpy(), he.numpy()
    batch, m, _ = ho.shape
    per_sample = []
    for i in range(batch):
        total, pairs = 0.0, 0
        for a in range(m):
            for b in range(m):
                if a == b or not (is_present(present, i, a) and is_present(present, i, b)):
                    continue
                g_ab = math.exp(-cos_dist(ho[i, a], ho[i, b]) / tau)
                g_aa = math.exp(-cos_dist(ho[i, a], he[i, a]) / tau)
                total += math.log(g_ab / (g_ab + g_aa))
                pairs += 1
        if pairs:  # a sample with fewer than two present modalities adds nothing
            per_sample.append(-total / pairs)
    return sum(per_sample) / len(per_sample) if per_sample else 0.0


def ref_noise_consistency(noise, margin, present=None):
    n = noise.numpy()
    batch, m, _ = n.shape
    per_modality = []
    for k in range(m):
        dists = [cos_dist(n[i, k], n[j, k]) for i in range(batch) for j in range(batch)
                 if j != i and is_present(present, i, k) and is_present(present, j, k)]
        if dists:
            per_modality.append(sum(dists) / len(dists))
    per_sample = []
    for i in range(batch):
        hinges = [max(margin - cos_dist(n[i, a], n[i, b]), 0.0) for a in range(m) for b in range(m)
                  if b != a and is_present(present, i, a) and is_present(present, i, b)]
        if hinges:
            per_sample.append(sum(hinges) / len(hinges))
    first = sum(per_modality) / len(per_modality) if per_modality else 0.0
    return first + (sum(per_sample) / len(per_sample) if per_sample else 0.0)


def ref_noise_entropy(noise, mu, sigma2, jitter=1e-4, form="prior", present=None):
    n = noise.numpy()
    batch, m, d = n.shape
    terms = []
    for k in range(m):
        rows = [i for i in range(batch) if is_present(present, i, k)]
        if len(rows) < 2:  # skipped, and left out of the mean over modalities
            continue
        x = n[rows, k, :]  # (P_m, D)
        ridge = sigma2 if form == "prior" else jitter
        cov = np.cov(x, rowvar=False, ddof=1) + ridge * np.eye(d)
        entropy = scipy.stats.multivariate_normal(mean=np.zeros(d), cov=cov).entropy()
        if form == "prior":
            mean_pull = np.sum((x.mean(axis=0) - mu) ** 2)
        else:
            mean_pull = np.mean([np.sum((row - mu) ** 2) for row in x])
        var_pull = np.sum((np.var(x, axis=0, ddof=1) - sigma2) ** 2)
        terms.append(entropy + mean_pull + var_pull)
    return sum(terms) / len(terms) if terms else 0.0


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


@pytest.mark.parametrize("form", ["prior", "literal"])
@pytest.mark.parametrize("m", [3, 2])
@pytest.mark.parametrize("batch,d", [(7, 4), (4, 6)])  # full-rank and singular (B <= D) covariance
def test_noise_entropy_matches_scipy_reference(form, m, batch, d):
    noise = randn(batch, m, d, seed=6)
    got = noise_entropy(noise, 0.2, 0.8, form=form).item()
    assert got == pytest.approx(ref_noise_entropy(noise, 0.2, 0.8, form=form), rel=1e-9)


def test_noise_entropy_default_form_is_prior():
    noise = randn(5, 3, 4, seed=8)
    assert noise_entropy(noise, 0.1, 0.7).item() == noise_entropy(noise, 0.1, 0.7, form="prior").item()
    assert noise_entropy(noise, 0.1, 0.7).item() != noise_entropy(noise, 0.1, 0.7, form="literal").item()


@pytest.mark.parametrize("form", ["prior", "literal"])
def test_noise_entropy_gram_path_at_the_default_sizes(form):
    """B = 32 < D = 128 takes the B x B Gram form (Sylvester); it must equal the D x D reference, and its
    gradient must be right too."""
    noise = randn(32, 3, 128, seed=11)
    got = noise_entropy(noise, 0.1, 0.9, form=form).item()
    assert got == pytest.approx(ref_noise_entropy(noise, 0.1, 0.9, form=form), rel=1e-9)
    leaf = randn(3, 2, 5, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(lambda n: noise_entropy(n, 0.1, 0.5, jitter=1e-2, form=form), (leaf,))


def test_noise_entropy_jitter_dtype_gradcheck_validates():
    noise = randn(5, 3, 4, seed=7)
    assert noise_entropy(noise, 0.0, 1.0, jitter=1e-2, form="literal").item() == pytest.approx(
        ref_noise_entropy(noise, 0.0, 1.0, jitter=1e-2, form="literal"), rel=1e-9
    )
    # the prior form's ridge is sigma2: jitter does not enter it
    assert noise_entropy(noise, 0.0, 1.0, jitter=1e-2).item() == noise_entropy(noise, 0.0, 1.0, jitter=0.5).item()
    assert noise_entropy(noise.float(), 0.0, 1.0).dtype == torch.float32
    leaf = noise.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda n: noise_entropy(n, 0.1, 0.5, jitter=1e-2, form="literal"), (leaf,))
    assert torch.autograd.gradcheck(lambda n: noise_entropy(n, 0.1, 0.5), (leaf,))
    with pytest.raises(ValueError, match="B >= 2"):
        noise_entropy(randn(1, 3, 4), 0.0, 1.0)
    with pytest.raises(ValueError, match="jitter"):
        noise_entropy(noise, 0.0, 1.0, jitter=0.0)
    with pytest.raises(ValueError, match="form"):
        noise_entropy(noise, 0.0, 1.0, form="Prior")
    with pytest.raises(ValueError, match="sigma2"):
        noise_entropy(noise, 0.0, 0.0)


@pytest.mark.parametrize("scale", [1.0, 1e-2, 1e-5, 0.0])
def test_noise_entropy_prior_is_bounded_below(scale):
    """Each modality's term is >= (D/2) log(2 pi e sigma2) (C_m >= 0, both pulls >= 0), however small the
    spread: the literal form, by contrast, goes below that bound as the noise collapses. A batch
    collapsed onto mu sits exactly at the bound plus the variance pull D sigma2^2."""
    d, sigma2, mu = 6, 0.7, 0.3
    noise = mu + scale * randn(10, 3, d, seed=21)
    bound = 0.5 * d * math.log(2 * math.pi * math.e * sigma2)
    assert noise_entropy(noise, mu, sigma2).item() >= bound
    if scale == 0.0:
        assert noise_entropy(noise, mu, sigma2).item() == pytest.approx(bound + d * sigma2**2, rel=1e-12)
    if scale <= 1e-2:
        assert noise_entropy(noise, mu, sigma2, form="literal").item() < bound


def settle(form, *, sigma2, batch=64, d=8, steps=400, seed=0):
    """Minimise eq. (3) over a free R_n tensor (one modality) with Adam; return the final noise."""
    noise = (0.5 * randn(batch, 1, d, seed=seed)).requires_grad_()
    opt = torch.optim.Adam([noise], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        noise_entropy(noise, 0.0, sigma2, form=form).backward()
        opt.step()
    return noise.detach()[:, 0]  # (B, D)


def test_noise_entropy_prior_does_not_collapse_literal_does():
    """The prior form's minimiser, derived from the formula (one modality, mu = 0, D dimensions).

    The mean pull ||mean - mu||^2 is 0 at mean = mu and independent of the spread, so minimise over the
    covariance C (C = the unbiased covariance; B > 1 samples can realise any C of rank < B):

        f(C) = 0.5 logdet(2 pi e (C + s I)) + sum_d (C_dd - s)^2,   s = sigma2.

    For a fixed diagonal, the trace of C is fixed and 0.5 sum_k log(lambda_k + s) is concave (Schur-
    concave) in the eigenvalues, so it is smallest when all the trace sits in one eigenvalue: C is rank
    one, C = w w^T, and a rank-one C with equal diagonal entries v exists (w = sqrt(v) (+-1, ..., +-1)).
    The variance pull, convex in the C_dd at a fixed sum, wants them equal. So C = D v u u^T and

        f(v) = 0.5 log(2 pi e (D v + s)) + 0.5 (D - 1) log(2 pi e s) + D (v - s)^2,
        f'(v) = D / (2 (D v + s)) + 2 D (v - s) = 0   <=>   (s - v)(D v + s) = 1/4
        v* = ((D - 1) s + sqrt((D + 1)^2 s^2 - D)) / (2 D),   effective rank 1.

    At D = 8, s = 1: v* = (7 + sqrt(73)) / 16 = 0.97150 (an isotropic C would settle at
    sqrt(s^2 - 1/4) = 0.866, which this tells apart). For large D, v* = s - 1/(4 (D + 1) s) + O(1/D^2).
    The literal form instead runs the variance to 0: its H_m falls like (D/2) log(v) down to the jitter.
    """
    d, sigma2 = 8, 1.0
    v_star = ((d - 1) * sigma2 + math.sqrt((d + 1) ** 2 * sigma2**2 - d)) / (2 * d)
    assert v_star == pytest.approx(0.97150, abs=1e-5)
    prior = settle("prior", sigma2=sigma2, d=d)
    var = prior.var(dim=0, unbiased=True)  # (D,)
    torch.testing.assert_close(var, torch.full_like(var, v_star), rtol=1e-4, atol=0)
    eig = torch.linalg.eigvalsh(torch.cov(prior.T)).clamp(min=0)
    assert eig[-1] / eig.sum() > 1 - 1e-4  # one line
    literal = settle("literal", sigma2=sigma2, d=d)
    assert literal.var(dim=0, unbiased=True).max().item() < 1e-4


# ----------------------------------------------------------------------------- eqs. (1)-(3) on present modalities


# sample 0: all present; 1: (l, a); 2: (a) only, so no modality pair; 3: (l, v); 4: none; 5: (a, v)
PRESENT = torch.tensor(
    [[1, 1, 1], [1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0], [0, 1, 1]], dtype=torch.bool
)

TERMS = {  # name -> (function of (ho, he, noise, present), reference)
    "contrastive": (lambda ho, he, n, pr: homo_hetero_contrastive(ho, he, 0.4, present=pr),
                    lambda ho, he, n, pr: ref_contrastive(ho, he, 0.4, present=pr)),
    "consistency": (lambda ho, he, n, pr: noise_consistency(n, 0.9, present=pr),
                    lambda ho, he, n, pr: ref_noise_consistency(n, 0.9, present=pr)),
    "entropy_prior": (lambda ho, he, n, pr: noise_entropy(n, 0.1, 0.8, present=pr),
                      lambda ho, he, n, pr: ref_noise_entropy(n, 0.1, 0.8, present=pr)),
    "entropy_literal": (lambda ho, he, n, pr: noise_entropy(n, 0.1, 0.8, form="literal", present=pr),
                        lambda ho, he, n, pr: ref_noise_entropy(n, 0.1, 0.8, form="literal", present=pr)),
}


@pytest.mark.parametrize("name", list(TERMS))
def test_present_terms_match_reference(name):
    fn, ref = TERMS[name]
    ho, he, noise = randn(6, 3, 4, seed=31), randn(6, 3, 4, seed=32), randn(6, 3, 4, seed=33)
    assert fn(ho, he, noise, PRESENT).item() == pytest.approx(ref(ho, he, noise, PRESENT), rel=1e-10)
    # everything present is section 4's definition, bitwise the same as present=None
    everything = torch.ones(6, 3, dtype=torch.bool)
    assert fn(ho, he, noise, everything).item() == fn(ho, he, noise, None).item()
    assert fn(ho, he, noise, None).item() == pytest.approx(ref(ho, he, noise, None), rel=1e-10)


@pytest.mark.parametrize("name", list(TERMS))
def test_present_terms_ignore_absent_rows_and_send_them_no_gradient(name):
    fn, _ = TERMS[name]
    ho, he, noise = (randn(6, 3, 4, seed=s).requires_grad_() for s in (41, 42, 43))
    value = fn(ho, he, noise, PRESENT)
    value.backward()
    absent = ~PRESENT
    used = [leaf for leaf in (ho, he, noise) if leaf.grad is not None]  # eq. (1) reads ho, he; (2), (3) noise
    assert used
    for leaf in used:
        assert torch.equal(leaf.grad[absent], torch.zeros_like(leaf.grad[absent]))
        assert torch.isfinite(leaf.grad).all() and leaf.grad[PRESENT].abs().sum() > 0
    # other values, even NaN and inf, in the absent rows change nothing
    junk = [x.detach().clone() for x in (ho, he, noise)]
    for x, seed in zip(junk, (51, 52, 53)):
        x[absent] = 100 * randn(int(absent.sum()), 4, seed=seed)
        x[4] = float("nan")
        x[2, 0] = float("inf")
    assert fn(*junk, PRESENT).item() == value.item()


def test_contrastive_present_hand_case():
    """Sample 0 has (l, a), sample 1 only l (adds nothing). tau = 1, D = 2:
    ho_l = ho_a = e1 (dist 0); he_l = -e1 (dist(ho_l, he_l) = 2), he_a = e2 (dist(ho_a, he_a) = 1).
    -log(G_ab / (G_ab + G_aa')) = log(1 + exp(d_ab - d_aa')): pair (l, a) log(1 + e^-2), pair (a, l)
    log(1 + e^-1); the sample's mean over its two ordered pairs is the loss (one sample adds)."""
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    ho = t([[e1, e1, [3.0, -7.0]], [e2, [5.0, 5.0], [1.0, 2.0]]])
    he = t([[[-1.0, 0.0], e2, [0.2, 0.1]], [e1, [4.0, 4.0], [9.0, 9.0]]])
    present = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    expected = 0.5 * (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)))
    assert homo_hetero_contrastive(ho, he, 1.0, present=present).item() == pytest.approx(expected, rel=1e-14)
    # nothing adds: exactly 0, not NaN
    none = torch.tensor([[1, 0, 0], [0, 0, 1]], dtype=torch.bool)
    assert homo_hetero_contrastive(ho, he, 1.0, present=none).item() == 0.0


def test_noise_consistency_present_hand_case():
    """B = 3, D = 2, margin 0.5. Present: sample 0 (l, a), sample 1 (l), sample 2 (a, v).
    Consistency: l over the pair (0, 1): n_0l = e1, n_1l = -e1, dist 2; a over (0, 2): both e2, dist 0;
    v present once, no pair, left out. Mean over l and a: (2 + 0) / 2 = 1.
    Margin: sample 0, dist(e1, e2) = 1 -> hinge 0; sample 1 has one modality, left out; sample 2,
    dist(e2, (1, 1)/sqrt 2) = 1 - 1/sqrt 2 -> hinge 0.5 - (1 - 1/sqrt 2). Mean over samples 0 and 2."""
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    noise = t([[e1, e2, [7.0, 1.0]], [[-1.0, 0.0], [3.0, 3.0], [-2.0, 5.0]], [[0.5, 0.5], e2, [1.0, 1.0]]])
    present = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=torch.bool)
    expected = 1.0 + 0.5 * (0.0 + 0.5 - (1 - 1 / math.sqrt(2)))
    assert noise_consistency(noise, 0.5, present=present).item() == pytest.approx(expected, rel=1e-14)


def test_noise_entropy_present_equals_the_term_of_each_modality_alone():
    """Eq. (3) on present rows = the mean, over modalities present at least twice, of eq. (3) computed
    on that modality's present rows alone (a one-modality batch). Modality v here is present once and
    is left out of the mean, not counted as 0."""
    noise = randn(6, 3, 5, seed=61)
    present = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 1, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.bool)
    for form in ("prior", "literal"):
        alone = [noise_entropy(noise[present[:, k], k : k + 1], 0.2, 0.6, form=form).item() for k in (0, 1)]
        got = noise_entropy(noise, 0.2, 0.6, form=form, present=present).item()
        assert got == pytest.approx(sum(alone) / 2, rel=1e-12)


def test_dhf_loss_passes_present_and_form():
    ho, he, noise = randn(6, 3, 4, seed=1), randn(6, 3, 4, seed=2), randn(6, 3, 4, seed=3)
    kw = dict(tau=0.4, margin=0.9, mu=0.1, sigma2=0.8)
    out = dhf_loss(ho, he, noise, present=PRESENT, noise_entropy_form="literal", **kw)
    assert out["contrastive"].item() == pytest.approx(ref_contrastive(ho, he, 0.4, present=PRESENT), rel=1e-10)
    assert out["noise_consistency"].item() == pytest.approx(ref_noise_consistency(noise, 0.9, present=PRESENT), rel=1e-10)
    assert out["noise_entropy"].item() == pytest.approx(
        ref_noise_entropy(noise, 0.1, 0.8, form="literal", present=PRESENT), rel=1e-10
    )
    with pytest.raises(ValueError, match="form"):
        dhf_loss(ho, he, noise, noise_entropy_form="exact", **kw)
    with pytest.raises(ValueError, match="noise_entropy_form"):
        dhf_loss(ho, he, None, use_noise=False, noise_entropy_form="exact", **kw)
    with pytest.raises(ValueError, match="present"):
        dhf_loss(ho, he, noise, present=PRESENT[:, :2], **kw)
    with pytest.raises(ValueError, match="present"):
        dhf_loss(ho, he, noise, present=PRESENT.float(), **kw)


# ----------------------------------------------------------------------------- eq. (4)


def test_dhf_loss_sums_components_and_noise_switch():
    ho, he, noise = randn(5, 3, 4, seed=1), randn(5, 3, 4, seed=2), randn(5, 3, 4, seed=3)
    kw = dict(tau=0.5, margin=0.6, mu=0.0, sigma2=1.0)
    out = dhf_loss(ho, he, noise, **kw)
    assert set(out) == {"contrastive", "noise_consistency", "noise_entropy", "dhf"}
    assert out["contrastive"].item() == pytest.approx(ref_contrastive(ho, he, 0.5), rel=1e-12)
    assert out["noise_consistency"].item() == pytest.approx(ref_noise_consistency(noise, 0.6), rel=1e-12)
    assert out["noise_entropy"].item() == pytest.approx(ref_noise_entropy(noise, 0.0, 1.0), rel=1e-9)  # prior
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


# ----------------------------------------------------------------------------- eq. (7), the divergence (SPEC 7)

TIGHT = dict(num_iter_max=100000, stop_thr=1e-12)  # float64 reaches this; the references see converged plans


def uniform(batch):
    return torch.full((batch,), 1 / batch, dtype=torch.float64)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 2.0])  # at 0.1 the self terms need > 1e5 iterations for 1e-12
def test_sinkhorn_divergence_invariants(ratio):
    zp, zq = paired_views(batch=10, d=6, noise=0.5, seed=5)
    eps = ratio * median_pairwise_cost(zp, zq)
    value = sinkhorn_divergence(zp, zq, eps, **TIGHT).item()
    scale = ot.dist(zp, zq).mean().item()
    assert value > 0  # these views differ
    assert sinkhorn_divergence(zq, zp, eps, **TIGHT).item() == pytest.approx(value, rel=1e-9, abs=1e-10 * scale)
    assert sinkhorn_divergence(zp, zp.clone(), eps).item() == 0.0  # three identical problems
    # >= 0 (Feydy et al., Thm 1) for views that are not paired too, over several seeds
    for seed in range(5):
        x, y = randn(7, 3, seed=70 + seed), randn(7, 3, seed=80 + seed) + 0.3
        assert sinkhorn_divergence(x, y, eps, **TIGHT).item() >= -1e-10 * scale


def test_sinkhorn_divergence_is_the_three_regularised_values():
    """Each term against POT: the transport cost <gamma*, C> against ``empirical_sinkhorn2`` (same eps,
    log-domain); the entropic term against eps * KL(gamma* || a b^T) computed by hand from POT's own
    plan; their sum against ``ot.solve(...).value``; and SD = S(p,q) - S(p,p)/2 - S(q,q)/2."""
    zp, zq = paired_views(batch=8, d=5, noise=0.4, seed=9)
    eps = 0.3 * median_pairwise_cost(zp, zq)
    w = uniform(8)
    values = {}
    for name, x, y in (("pq", zp, zq), ("pp", zp, zp), ("qq", zq, zq)):
        ours = entropic_ot(x, y, eps, **TIGHT)
        assert ours.converged and ours.plan.shape == (8, 8)
        transport = ot.bregman.empirical_sinkhorn2(x, y, eps, method="sinkhorn_log", stopThr=1e-13, numIterMax=100000)
        assert ours.transport.item() == pytest.approx(transport.item(), rel=1e-9)
        plan = ot.sinkhorn(w, w, ot.dist(x, y), eps, method="sinkhorn_log", stopThr=1e-13, numItermax=100000)
        kl = sum(plan[i, j].item() * math.log(plan[i, j].item() * 64) for i in range(8) for j in range(8)
                 if plan[i, j] > 0)  # sum gamma log(gamma / (a_i b_j)), a_i b_j = 1/64
        assert ours.entropic.item() == pytest.approx(eps * kl, rel=1e-8)
        solved = ot.solve(ot.dist(x, y), w, w, reg=eps, max_iter=100000, tol=1e-13)
        assert ours.value.item() == pytest.approx(solved.value.item(), rel=1e-9)
        values[name] = ours.value.item()
    expected = values["pq"] - 0.5 * values["pp"] - 0.5 * values["qq"]
    assert sinkhorn_divergence(zp, zq, eps, **TIGHT).item() == pytest.approx(expected, rel=1e-9)


def test_sinkhorn_divergence_against_pots_empirical_divergence():
    """POT's ``empirical_sinkhorn_divergence`` (0.9.7) combines transport costs only and clips at 0:
    max(0, T(p,q) - T(p,p)/2 - T(q,q)/2). Ours adds the entropic terms, so
    ours - eps (KL_pq - KL_pp/2 - KL_qq/2) = POT's wherever POT's is not clipped. (The transport-only
    combination is not a divergence: it need not be 0 for equal inputs' neighbours nor >= 0, hence
    POT's clip, which zeroes the gradient.)"""
    zp, zq = paired_views(batch=8, d=5, noise=0.4, seed=10)
    eps = 0.3 * median_pairwise_cost(zp, zq)
    pot = ot.bregman.empirical_sinkhorn_divergence(zp, zq, eps, method="sinkhorn_log", stopThr=1e-13,
                                                   numIterMax=100000).item()
    assert pot > 0  # not clipped here, so comparable
    parts = {n: entropic_ot(x, y, eps, **TIGHT) for n, x, y in (("pq", zp, zq), ("pp", zp, zp), ("qq", zq, zq))}
    entropic = parts["pq"].entropic - 0.5 * parts["pp"].entropic - 0.5 * parts["qq"].entropic
    ours = sinkhorn_divergence(zp, zq, eps, **TIGHT)
    assert (ours - entropic).item() == pytest.approx(pot, rel=1e-8)
    assert entropic.item() != pytest.approx(0.0, abs=1e-3 * pot)  # the difference is real


def test_sinkhorn_divergence_gradient_is_exact_envelope_gradient():
    """Plans held constant, autograd through C: the exact gradient of SD, including S(p, p) and S(q, q)
    whose cost moves through both arguments. gradcheck's finite differences re-solve all three plans at
    each perturbed input, i.e. they differentiate the true value function."""
    zp, zq = randn(5, 3, seed=13).requires_grad_(), randn(5, 3, seed=14).requires_grad_()
    eps = 0.5 * median_pairwise_cost(zp, zq)
    assert torch.autograd.gradcheck(lambda x, y: sinkhorn_divergence(x, y, eps, **TIGHT), (zp, zq), atol=1e-6)
    # a self term on its own
    assert torch.autograd.gradcheck(lambda x: entropic_ot(x, x, eps, **TIGHT).value, (zp,), atol=1e-6)
    # and the same vector as POT's regularised value differentiated by autodiff through its iterations
    w = uniform(5)
    sinkhorn_divergence(zp, zq, eps, **TIGHT).backward()

    def pot_value(x, y):
        return ot.solve(ot.dist(x, y), w, w, reg=eps, max_iter=100000, tol=1e-13).value

    x, y = zp.detach().clone().requires_grad_(), zq.detach().clone().requires_grad_()
    (pot_value(x, y) - 0.5 * pot_value(x, x) - 0.5 * pot_value(y, y)).backward()
    torch.testing.assert_close(zp.grad, x.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(zq.grad, y.grad, rtol=1e-6, atol=1e-9)


def test_sinkhorn_divergence_float32_gradient_to_both_views():
    zp, zq = paired_views(batch=16, d=32, seed=3)
    zp, zq = zp.float().requires_grad_(), zq.float().requires_grad_()
    eps = 0.5 * median_pairwise_cost(zp, zq)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = sinkhorn_divergence(zp, zq, eps)
    assert value.dtype == torch.float32
    value.backward()
    for grad in (zp.grad, zq.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_sinkhorn_divergence_warns_once_per_call_when_not_converged():
    """Three solves, one warning naming the ones that failed: the training loop counts warnings whose
    message contains "sinkhorn" as non-converged steps, as it does for the distance."""
    zp, zq = paired_views(batch=8, seed=4)
    eps = 0.01 * median_pairwise_cost(zp, zq)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = sinkhorn_divergence(zp, zq, eps, num_iter_max=5)
    assert len(caught) == 1 and issubclass(caught[0].category, RuntimeWarning)
    message = str(caught[0].message)
    assert message.startswith("sinkhorn_divergence: not converged at eps=") and "after 5 iterations" in message
    assert "S(p,q)" in message  # (the self terms converge within 5 iterations at so small an eps)
    assert torch.isfinite(value)
    assert not entropic_ot(zp, zq, eps, num_iter_max=5).converged  # the result says so too


def test_sinkhorn_divergence_validates():
    zp, zq = paired_views()
    with pytest.raises(ValueError, match="eps"):
        sinkhorn_divergence(zp, zq, 0.0)
    with pytest.raises(ValueError, match="zq"):
        sinkhorn_divergence(zp, zq[:5], 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        sinkhorn_divergence(zp, torch.full_like(zq, float("inf")), 1.0)


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
    assert out["sinkhorn"].item() == sinkhorn_divergence(zp, zq, 2.0).item()  # the default feature
    distance = das_loss(zp, zq, p, q, eps=2.0, feature="distance")
    assert set(distance) == set(out)
    assert distance["sinkhorn"].item() == sinkhorn_distance(zp, zq, 2.0).item()
    assert distance["js"].item() == out["js"].item()
    with pytest.raises(ValueError, match="feature"):
        das_loss(zp, zq, p, q, eps=2.0, feature="cost")
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
