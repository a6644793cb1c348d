"""The FSRF training objective (paper eqs. 1-9 and the total), as pure functions of tensors.

Each function takes tensors and returns a scalar tensor (or a dict of them); none keeps state.
The reductions are the exact ones fixed by SPEC section 4, which wins over the paper where they differ.

Axis legend:
    B  samples in the batch
    M  modalities, in the fixed order (l, a, v); SPEC fixes M = 3, a text-only dataset has M = 1
    D  representation width
    C  classes of a probability vector (2 for the polarity distribution)

Cosine distance throughout is ``dist(x, y) = 1 - cos(x, y)``; see ``_unit``.
"""

from __future__ import annotations

import math
import warnings

import ot
import torch
import torch.nn.functional as F
from torch import Tensor

# Norms below this are treated as zero when normalising. A zero vector then has cosine 0 with every
# vector, i.e. cosine distance 1 (even from itself), instead of NaN.
_NORM_EPS = 1e-8


def _unit(x: Tensor) -> Tensor:
    """``x / max(||x||, 1e-8)`` along the last axis, so cosines of zero vectors are 0, not NaN."""
    return F.normalize(x, p=2.0, dim=-1, eps=_NORM_EPS)


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    return value


def _check_bmd(name: str, x: Tensor) -> tuple[int, int, int]:
    if not isinstance(x, Tensor) or x.ndim != 3:
        raise ValueError(f"{name}: expected a tensor of shape (B, M, D), got {getattr(x, 'shape', type(x))}")
    modalities = x.shape[1]
    if not 1 <= modalities <= 3:
        raise ValueError(f"{name}: expected 1 to 3 modalities (l, a, v) on axis 1, got {modalities}")
    return tuple(x.shape)


def _off_diagonal(m: int, like: Tensor) -> Tensor:
    """Boolean (m, m) mask of the ordered pairs a != b."""
    return ~torch.eye(m, dtype=torch.bool, device=like.device)


# ---------------------------------------------------------------------------------------------------
# DHF: de-redundant homo-heterogeneous factorization (eqs. 1-4)
# ---------------------------------------------------------------------------------------------------


def homo_hetero_contrastive(ho: Tensor, he: Tensor, tau: float) -> Tensor:
    """Pull the homogeneous representations of a sample together, push each from its heterogeneous one.

    Paper eq. (1) (an NT-Xent-style loss), reduced as in SPEC section 4::

        L = mean_i  -(1 / (M (M - 1))) * sum_{a != b} log( G(ho_ia, ho_ib) / (G(ho_ia, ho_ib) + G(ho_ia, he_ia)) )
        G(x, y) = exp(-dist(x, y) / tau),   dist = 1 - cos

    over ordered modality pairs (a, b); with M = 3 the factor is SPEC's 1/6. With M = 1 there is no
    pair and the loss is exactly 0.

    Args:
        ho: (B, M, D) modality-homogeneous representations R^ho, modalities in order (l, a, v).
        he: (B, M, D) modality-heterogeneous representations R^he, same order.
        tau: temperature > 0.

    Returns:
        Scalar tensor.
    """
    tau = _check_positive("tau", tau)
    batch, m, _ = _check_bmd("ho", ho)
    if he.shape != ho.shape:
        raise ValueError(f"he: shape {tuple(he.shape)} does not match ho {tuple(ho.shape)}")
    ho_u, he_u = _unit(ho), _unit(he)  # (B, M, D)
    dist_ho = 1 - ho_u @ ho_u.transpose(1, 2)  # (B, M, M): dist(ho_a, ho_b)
    dist_he = 1 - (ho_u * he_u).sum(-1)  # (B, M): dist(ho_a, he_a)
    # -log(G_ab / (G_ab + G_aa')) = log(1 + exp((d_ab - d_aa') / tau)); softplus avoids exp overflow
    # at small tau.
    per_pair = F.softplus((dist_ho - dist_he.unsqueeze(-1)) / tau)  # (B, M, M), row a, column b
    pair_sum = per_pair[:, _off_diagonal(m, ho)].sum()  # empty, hence exactly 0, when M = 1
    return pair_sum / (batch * max(m * (m - 1), 1))


def noise_consistency(noise: Tensor, margin: float) -> Tensor:
    """Keep each modality's noise alike across samples and apart from the other modalities' noise.

    Paper eq. (2), reduced as in SPEC section 4::

        L = 1/(M B (B-1)) * sum_i sum_{j != i} sum_m dist(n_im, n_jm)
          + 1/(M (M-1) B) * sum_i sum_a sum_{b != a} max(margin - dist(n_ia, n_ib), 0)

    With M = 3 the factors are SPEC's 1/(3B(B-1)) and 1/(6B). With M = 1 the second (pair) term is
    exactly 0.

    Args:
        noise: (B, M, D) noise representations R^n, modalities in order (l, a, v); B >= 2.
        margin: the distance margin epsilon of eq. (2); a cosine distance lies in [0, 2].

    Returns:
        Scalar tensor.

    Raises:
        ValueError: B < 2 (the cross-sample term divides by B (B - 1)).
    """
    margin = float(margin)
    batch, m, _ = _check_bmd("noise", noise)
    if batch < 2:
        raise ValueError(f"noise: needs B >= 2 samples for the cross-sample term, got B = {batch}")
    n_u = _unit(noise)  # (B, M, D)

    by_modality = n_u.transpose(0, 1)  # (M, B, D)
    dist_samples = 1 - by_modality @ by_modality.transpose(1, 2)  # (M, B, B): dist(n_im, n_jm)
    cross_sample = dist_samples[:, _off_diagonal(batch, noise)].sum() / (m * batch * (batch - 1))

    dist_modalities = 1 - n_u @ n_u.transpose(1, 2)  # (B, M, M): dist(n_ia, n_ib)
    hinge = torch.relu(margin - dist_modalities)[:, _off_diagonal(m, noise)]  # (B, M (M - 1))
    cross_modality = hinge.sum() / (max(m * (m - 1), 1) * batch)
    return cross_sample + cross_modality


def noise_entropy(noise: Tensor, mu: float, sigma2: float, jitter: float = 1e-4) -> Tensor:
    """Make each modality's noise compact (low Gaussian entropy) while held near a prior mean and variance.

    Paper eq. (3), as fixed by SPEC section 4::

        L = (1/M) * sum_m [ H_m + mean_i ||n_im - mu||^2 + ||var_m - sigma2||^2 ]
        H_m = 0.5 * logdet(2 pi e (C_m + jitter I))      (Gaussian entropy, = 0.5 (D log(2 pi e) + logdet(.)))

    with C_m the unbiased (divide by B - 1) D x D covariance of n_im over the batch, var_m its diagonal
    (the unbiased per-dimension variance) and mu, sigma2 scalars broadcast over the D dimensions.
    With B <= D, C_m is singular and the jitter sets H_m's floor; H_m can be (very) negative.

    The covariance and its log-determinant are computed in float64 and cast back: C_m + jitter I has a
    condition number of order 1/jitter or worse, where a float32 Cholesky and its gradient lose digits.
    When B < D the log-determinant comes from the B x B Gram matrix instead (Sylvester's determinant
    identity, exact): with X the centred (B, D) noise and C = X^T X / (B - 1),

        logdet(C + jitter I_D) = D log(jitter) + logdet(I_B + X X^T / ((B - 1) jitter)),

    a 32 x 32 Cholesky instead of a 128 x 128 one at the default batch and width.

    Args:
        noise: (B, M, D) noise representations R^n, modalities in order (l, a, v); B >= 2.
        mu: prior mean of every coordinate.
        sigma2: prior variance of every coordinate.
        jitter: > 0, added to the covariance's diagonal so the log-determinant exists.

    Returns:
        Scalar tensor in noise's dtype.

    Raises:
        ValueError: B < 2 (no unbiased covariance) or jitter <= 0.
    """
    jitter = _check_positive("jitter", jitter)
    batch, m, d = _check_bmd("noise", noise)
    if batch < 2:
        raise ValueError(f"noise: needs B >= 2 samples for an unbiased covariance, got B = {batch}")
    x = noise.to(torch.float64).transpose(0, 1)  # (M, B, D)
    centred = x - x.mean(dim=1, keepdim=True)  # (M, B, D)
    if batch < d:  # Sylvester: the B x B Gram matrix has the same nonzero spectrum as the covariance
        gram = centred @ centred.transpose(1, 2) / ((batch - 1) * jitter)  # (M, B, B)
        eye = torch.eye(batch, dtype=torch.float64, device=noise.device)
        chol = torch.linalg.cholesky(gram + eye)  # (M, B, B)
        logdet = d * math.log(jitter) + 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (M,)
    else:
        cov = centred.transpose(1, 2) @ centred / (batch - 1)  # (M, D, D)
        eye = torch.eye(d, dtype=torch.float64, device=noise.device)
        chol = torch.linalg.cholesky(cov + jitter * eye)  # (M, D, D)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (M,)
    entropy = 0.5 * (d * math.log(2 * math.pi * math.e) + logdet)  # (M,)

    var = centred.pow(2).sum(dim=1) / (batch - 1)  # (M, D), = diagonal of cov
    mean_pull = (x - mu).pow(2).sum(-1).mean(dim=1)  # (M,): mean_i ||n_im - mu||^2
    var_pull = (var - sigma2).pow(2).sum(-1)  # (M,)
    return (entropy + mean_pull + var_pull).mean().to(noise.dtype)


def dhf_loss(
    ho: Tensor,
    he: Tensor,
    noise: Tensor | None,
    *,
    tau: float,
    margin: float,
    mu: float,
    sigma2: float,
    use_noise: bool = True,
) -> dict[str, Tensor]:
    """The factorization loss of one view: L_DHF = (1) + (2) + (3) (paper eq. 4).

    Args:
        ho, he: (B, M, D) homogeneous and heterogeneous representations, order (l, a, v).
        noise: (B, M, D) noise representations; may be None when ``use_noise=False``.
        tau, margin, mu, sigma2: the hyperparameters of eqs. (1), (2), (3).
        use_noise: False is the ``noise=False`` ablation: the model has no R^n, and eqs. (2), (3)
            are left out. Their keys stay in the result as zeros so that every run logs the same names.

    Returns:
        ``{"contrastive": (1), "noise_consistency": (2), "noise_entropy": (3), "dhf": their sum}``,
        scalar tensors.
    """
    contrastive = homo_hetero_contrastive(ho, he, tau)
    if use_noise:
        if noise is None:
            raise ValueError("noise: required when use_noise=True")
        consistency = noise_consistency(noise, margin)
        entropy = noise_entropy(noise, mu, sigma2)
    else:
        consistency = entropy = contrastive.new_zeros(())
    return {
        "contrastive": contrastive,
        "noise_consistency": consistency,
        "noise_entropy": entropy,
        "dhf": contrastive + consistency + entropy,
    }


# ---------------------------------------------------------------------------------------------------
# DAS: distribution alignment-based self-distillation (eqs. 5-9)
# ---------------------------------------------------------------------------------------------------


def _squared_euclidean(x: Tensor, y: Tensor) -> Tensor:
    """(B, D), (B', D) -> (B, B') costs ||x_i - y_j||^2.

    Differences rather than ``|x|^2 + |y|^2 - 2 x.y``: FSRF's two views put matching rows close together,
    and the expanded form cancels catastrophically exactly there. B B' D floats is small at batch sizes.
    """
    return (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).sum(-1)


def median_pairwise_cost(zp: Tensor, zq: Tensor) -> float:
    """Median of the squared-Euclidean costs ||zp_i - zq_j||^2 over all B x B pairs, as a float.

    The scale of the cost matrix of eq. (7); lets a caller give Sinkhorn's eps relative to it
    (``eps = ratio * median_pairwise_cost(zp, zq)``). Not differentiable (computed on detached float64).

    Args:
        zp, zq: (B, D) joint representations of the two views.
    """
    with torch.no_grad():
        cost = _squared_euclidean(zp.detach().to(torch.float64), zq.detach().to(torch.float64))
        return float(torch.quantile(cost.flatten(), 0.5))


def sinkhorn_distance(
    zp: Tensor,
    zq: Tensor,
    eps: float,
    *,
    num_iter_max: int = 1000,
    stop_thr: float = 1e-9,
) -> Tensor:
    """Align the joint representations of the two views as distributions: the Sinkhorn distance of eq. (7).

    Between the uniform empirical measures a = b = 1/B of the rows of zp and zq, with cost
    C_ij = ||zp_i - zq_j||^2 (eq. 5's c(x, y)), the entropic plan is

        gamma* = argmin_{gamma in Pi(a, b)}  <gamma, C> + eps * KL(gamma || a b^T)      (eqs. 5, 6)

    (KL to a b^T and the paper's -H(gamma) differ by a constant, so the plan is the same), and the
    returned value is Cuturi's Sinkhorn distance, POT's ``sinkhorn2`` value (SPEC section 4):

        S = <gamma*, C> = sum_ij gamma*_ij C_ij.

    The plan (``sinkhorn_plan``) is computed by POT (``ot.sinkhorn``, ``method='sinkhorn_log'``,
    log-domain stabilised) in float64 on detached inputs: in float32 the marginal error stalls near
    1e-8 and the iterations silently run to the cap (notes/pot-sinkhorn.md). If the column-marginal
    error ||gamma^T 1 - b||_2 is still >= stop_thr after ``num_iter_max`` iterations, a RuntimeWarning
    names eps and the iteration count, and the non-converged plan is used anyway. Small eps relative to
    the cost scale (see ``median_pairwise_cost``) converges slowly on paired views, which are
    near-assignment problems.

    Gradient: the plan is held constant, so d S / d C = gamma*, and S reaches zp and zq through C. This
    is *exactly the gradient of the regularised objective* <gamma*, C> + eps KL(gamma* || a b^T)
    (envelope theorem: at the optimum the plan's own variation contributes nothing), i.e. of
    ``ot.solve(C, a, b, reg=eps).value``; it is not the gradient of the value returned, <gamma*, C>,
    whose derivative has an extra <d gamma*/d C, C> term. Chosen for cost: autodiff through the
    iterations takes 30-90 ms per call at B = 32, against about 1 ms here (when eps converges quickly).

    Args:
        zp: (B, D) joint representations Z_p of the first view.
        zq: (B, D) joint representations Z_q of the second view (same samples, same shape).
        eps: entropic regularisation > 0, in the units of C (squared distances).
        num_iter_max: Sinkhorn iteration cap.
        stop_thr: stop when the column-marginal error falls below this (reachable in float64).

    Returns:
        Scalar tensor in zp's dtype, differentiable in zp and zq.

    Raises:
        ValueError: eps <= 0, shapes not (B, D) and equal, or non-finite inputs.

    Reference: M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
    """
    plan = sinkhorn_plan(zp, zq, eps, num_iter_max=num_iter_max, stop_thr=stop_thr)  # (B, B), float64
    cost = _squared_euclidean(zp, zq)  # (B, B), carries the autograd graph
    return (plan.to(cost.dtype) * cost).sum()


def sinkhorn_plan(
    zp: Tensor,
    zq: Tensor,
    eps: float,
    *,
    num_iter_max: int = 1000,
    stop_thr: float = 1e-9,
) -> Tensor:
    """The entropic transport plan gamma* behind ``sinkhorn_distance`` (eq. 5), for the loss and for analysis.

    Solves min_{gamma in Pi(a, b)} <gamma, C> + eps KL(gamma || a b^T) with a = b = 1/B and
    C_ij = ||zp_i - zq_j||^2, by POT's log-domain Sinkhorn (``ot.sinkhorn(..., method='sinkhorn_log')``)
    in float64 on detached inputs. Warns (RuntimeWarning naming eps, eps / median cost and the
    iteration count) when the column-marginal error ||gamma^T 1 - b||_2 is still >= stop_thr after
    ``num_iter_max`` iterations; POT's own warning is switched off in favour of this one.

    Args:
        zp, zq: (B, D) joint representations of the two views (same shape).
        eps, num_iter_max, stop_thr: as in ``sinkhorn_distance``.

    Returns:
        (B, B) float64 plan, no gradient; rows and columns sum to 1/B (up to stop_thr).
    """
    eps = _check_positive("eps", eps)
    stop_thr = _check_positive("stop_thr", stop_thr)
    if int(num_iter_max) < 1:
        raise ValueError(f"num_iter_max: must be >= 1, got {num_iter_max!r}")
    if not isinstance(zp, Tensor) or zp.ndim != 2:
        raise ValueError(f"zp: expected a tensor of shape (B, D), got {getattr(zp, 'shape', type(zp))}")
    if not isinstance(zq, Tensor) or zq.shape != zp.shape:
        raise ValueError(f"zq: shape {tuple(getattr(zq, 'shape', ()))} does not match zp {tuple(zp.shape)}")

    with torch.no_grad():
        cost64 = _squared_euclidean(zp.detach().to(torch.float64), zq.detach().to(torch.float64))  # (B, B)
        if not torch.isfinite(cost64).all():
            raise ValueError("zp, zq: contain non-finite values")
        batch = zp.shape[0]
        weights = torch.full((batch,), 1.0 / batch, dtype=torch.float64, device=zp.device)  # (B,)
        plan, log = ot.sinkhorn(
            weights, weights, cost64, reg=eps, method="sinkhorn_log",
            numItermax=int(num_iter_max), stopThr=stop_thr, log=True, warn=False,
        )  # (B, B)
        # POT stops on the column marginal; the rows are exact after its last update.
        marginal_error = float(torch.linalg.vector_norm(plan.sum(0) - weights))
        if not marginal_error < stop_thr:  # also catches NaN
            median = float(torch.quantile(cost64.flatten(), 0.5))
            warnings.warn(
                f"sinkhorn: not converged at eps={eps:g} (eps / median cost = {eps / median:.3g}) "
                f"after {int(log['niter']) + 1} iterations: marginal error {marginal_error:.2e} >= "
                f"stop_thr={stop_thr:g}; raise eps or num_iter_max",
                RuntimeWarning,
                stacklevel=3,
            )
    return plan


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Align the two views' output distributions symmetrically: Jensen-Shannon divergence, eq. (8).

        JS(p, q) = 0.5 * KL(p || m) + 0.5 * KL(q || m),   m = (p + q) / 2,   KL(p || m) = sum_c p_c log(p_c / m_c)

    natural log, so 0 <= JS <= ln 2; averaged over the batch. Safe at zeros: terms with p_c = 0 are
    0 (0 log 0 = 0) with gradient 0, so exact zeros give neither NaN values nor NaN gradients.

    Args:
        p: (B, C) probabilities of view p (rows sum to 1).
        q: (B, C) probabilities of view q.

    Returns:
        Scalar tensor.
    """
    if not isinstance(p, Tensor) or p.ndim != 2:
        raise ValueError(f"p: expected a tensor of shape (B, C), got {getattr(p, 'shape', type(p))}")
    if not isinstance(q, Tensor) or q.shape != p.shape:
        raise ValueError(f"q: shape {tuple(getattr(q, 'shape', ()))} does not match p {tuple(p.shape)}")
    m = 0.5 * (p + q)  # (B, C)

    def kl_to_m(x: Tensor) -> Tensor:  # (B, C) -> (B,)
        present = x > 0  # where x > 0, m >= x / 2 > 0 too
        # Log of a placeholder 1 where x = 0, so that neither the value nor the gradient sees log 0.
        log_ratio = torch.log(torch.where(present, x, 1.0)) - torch.log(torch.where(present, m, 1.0))
        return torch.where(present, x * log_ratio, 0.0).sum(-1)

    return (0.5 * kl_to_m(p) + 0.5 * kl_to_m(q)).mean()


def polarity_probs(score: Tensor, temperature: float) -> Tensor:
    """Turn a regression score into a negative/positive distribution for eq. (8) (SPEC section 3).

        probs = softmax([-s, s] / T)

    Args:
        score: (B,) or (B, 1) sentiment scores s.
        temperature: T > 0; smaller is sharper.

    Returns:
        (B, 2) probabilities, column 0 negative, column 1 positive.
    """
    temperature = _check_positive("temperature", temperature)
    if score.ndim == 2 and score.shape[1] == 1:
        score = score.squeeze(1)
    if score.ndim != 1:
        raise ValueError(f"score: expected shape (B,) or (B, 1), got {tuple(score.shape)}")
    return torch.softmax(torch.stack([-score, score], dim=-1) / temperature, dim=-1)  # (B, 2)


def das_loss(
    zp: Tensor,
    zq: Tensor,
    prob_p: Tensor,
    prob_q: Tensor,
    *,
    eps: float,
    num_iter_max: int = 1000,
    stop_thr: float = 1e-9,
) -> dict[str, Tensor]:
    """The self-distillation loss between the two views: L_DAS = (7) + (8) (paper eq. 9).

    Args:
        zp, zq: (B, D) joint representations of the two views.
        prob_p, prob_q: (B, C) output distributions of the two views (``polarity_probs`` for regression).
        eps, num_iter_max, stop_thr: as in ``sinkhorn_distance``.

    Returns:
        ``{"sinkhorn": (7), "js": (8), "das": their sum}``, scalar tensors.
    """
    sinkhorn = sinkhorn_distance(zp, zq, eps, num_iter_max=num_iter_max, stop_thr=stop_thr)
    js = js_divergence(prob_p, prob_q)
    return {"sinkhorn": sinkhorn, "js": js, "das": sinkhorn + js}


# ---------------------------------------------------------------------------------------------------
# Total (SPEC section 4, "Totals")
# ---------------------------------------------------------------------------------------------------


def total_loss(
    task_p: Tensor,
    task_q: Tensor,
    *,
    dhf_p: dict[str, Tensor] | None = None,
    dhf_q: dict[str, Tensor] | None = None,
    das: dict[str, Tensor] | None = None,
    lambda1: float = 0.2,
    lambda2: float = 0.1,
) -> dict[str, Tensor]:
    """Combine the task losses of both views with the DHF and DAS terms into the training objective.

        L = task_p + task_q + lambda1 * (dhf_p["dhf"] + dhf_q["dhf"]) / 2 + lambda2 * das["das"]

    L_DHF is averaged over the two views (SPEC section 4). A term passed as None is switched off (the
    ``dhf=False`` / ``das=False`` ablations) and its keys are absent from the result, so nothing logs a
    term that was not computed.

    Args:
        task_p, task_q: scalar task losses (MSE or cross-entropy) of the two views.
        dhf_p, dhf_q: ``dhf_loss`` results of the two views; both or neither.
        das: ``das_loss`` result.
        lambda1, lambda2: weights >= 0 of L_DHF and L_DAS (paper: 0.2 and 0.1).

    Returns:
        ``{"total", "task_p", "task_q"}`` plus, when on, ``"dhf"`` and ``"dhf/<component>"`` (each the
        mean over the two views) and ``"das"`` and ``"das/<component>"``; scalar tensors.
    """
    for name, value in (("lambda1", lambda1), ("lambda2", lambda2)):
        if not (math.isfinite(float(value)) and float(value) >= 0):
            raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    if (dhf_p is None) != (dhf_q is None):
        raise ValueError("dhf_p, dhf_q: give both views' DHF losses or neither")

    out = {"task_p": task_p, "task_q": task_q}
    total = task_p + task_q
    if dhf_p is not None:
        for key in dhf_p:
            out["dhf" if key == "dhf" else f"dhf/{key}"] = 0.5 * (dhf_p[key] + dhf_q[key])
        total = total + lambda1 * out["dhf"]
    if das is not None:
        for key in das:
            out["das" if key == "das" else f"das/{key}"] = das[key]
        total = total + lambda2 * das["das"]
    return {"total": total, **out}
