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
from dataclasses import dataclass

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


def _present_mask(present: Tensor | None, batch: int, m: int, like: Tensor) -> Tensor:
    """The (B, M) boolean mask of present modalities; None means every modality of every sample is present."""
    if present is None:
        return torch.ones(batch, m, dtype=torch.bool, device=like.device)
    if not isinstance(present, Tensor) or present.dtype != torch.bool or tuple(present.shape) != (batch, m):
        raise ValueError(
            f"present: expected a bool tensor of shape {(batch, m)}, got "
            f"{getattr(present, 'dtype', type(present))} {tuple(getattr(present, 'shape', ()))}"
        )
    return present.to(like.device)


def _zero_absent(x: Tensor, keep: Tensor) -> Tensor:
    """(B, M, D) with the absent rows replaced by zeros.

    A select, not a product: whatever an absent row holds (even NaN) reaches neither the value nor the
    gradient, and the gradient with respect to an absent row is exactly 0.
    """
    return torch.where(keep.unsqueeze(-1), x, 0.0)


def _mean_over(values: Tensor, counts: Tensor) -> Tensor:
    """Mean of ``values[k] / counts[k]`` over the k with ``counts[k] > 0``; exactly 0 when there is none.

    The one normalisation rule of the present-only DHF terms (SPEC section 7): each mean of section 4
    becomes a mean over what is present, and a unit (sample or modality) with nothing present is left
    out of the outer mean instead of counting as a zero. ``values[k]`` must be 0 where ``counts[k] = 0``.
    """
    adds = counts > 0
    per_unit = values / counts.clamp(min=1).to(values.dtype)
    return per_unit.sum() / adds.sum().clamp(min=1).to(values.dtype)


# ---------------------------------------------------------------------------------------------------
# DHF: de-redundant homo-heterogeneous factorization (eqs. 1-4)
# ---------------------------------------------------------------------------------------------------


def homo_hetero_contrastive(ho: Tensor, he: Tensor, tau: float, *, present: Tensor | None = None) -> Tensor:
    """Pull the homogeneous representations of a sample together, push each from its heterogeneous one.

    Paper eq. (1) (an NT-Xent-style loss), reduced as in SPEC section 4 and, for missing modalities,
    section 7::

        L = mean_{i : K_i >= 2}  -(1 / (K_i (K_i - 1))) * sum_{a != b, both present in i} log( G(ho_ia, ho_ib) / (G(ho_ia, ho_ib) + G(ho_ia, he_ia)) )
        G(x, y) = exp(-dist(x, y) / tau),   dist = 1 - cos

    over the ordered pairs (a, b) of the K_i modalities present in sample i. A sample with fewer than
    two present modalities adds nothing (it is not a zero in the mean); with none adding, L = 0. With
    everything present K_i = M and this is section 4's definition (factor 1/6 at M = 3). With M = 1
    there is no pair and the loss is exactly 0.

    Args:
        ho: (B, M, D) modality-homogeneous representations R^ho, modalities in order (l, a, v).
        he: (B, M, D) modality-heterogeneous representations R^he, same order.
        tau: temperature > 0.
        present: (B, M) bool, True where the modality is present; None means all present. Absent rows
            of ho and he reach neither the value nor the gradient.

    Returns:
        Scalar tensor.
    """
    tau = _check_positive("tau", tau)
    batch, m, _ = _check_bmd("ho", ho)
    if he.shape != ho.shape:
        raise ValueError(f"he: shape {tuple(he.shape)} does not match ho {tuple(ho.shape)}")
    keep = _present_mask(present, batch, m, ho)  # (B, M)
    ho_u, he_u = _unit(_zero_absent(ho, keep)), _unit(_zero_absent(he, keep))  # (B, M, D)
    dist_ho = 1 - ho_u @ ho_u.transpose(1, 2)  # (B, M, M): dist(ho_a, ho_b)
    dist_he = 1 - (ho_u * he_u).sum(-1)  # (B, M): dist(ho_a, he_a)
    # -log(G_ab / (G_ab + G_aa')) = log(1 + exp((d_ab - d_aa') / tau)); softplus avoids exp overflow
    # at small tau.
    per_pair = F.softplus((dist_ho - dist_he.unsqueeze(-1)) / tau)  # (B, M, M), row a, column b
    pairs = keep.unsqueeze(2) & keep.unsqueeze(1) & _off_diagonal(m, ho)  # (B, M, M)
    pair_sum = torch.where(pairs, per_pair, 0.0).sum((1, 2))  # (B,)
    return _mean_over(pair_sum, pairs.sum((1, 2)))


def noise_consistency(noise: Tensor, margin: float, *, present: Tensor | None = None) -> Tensor:
    """Keep each modality's noise alike across samples and apart from the other modalities' noise.

    Paper eq. (2), reduced as in SPEC section 4 and, for missing modalities, section 7::

        L = mean_{m : P_m >= 2}  1/(P_m (P_m - 1)) * sum_{i != j, m present in both} dist(n_im, n_jm)
          + mean_{i : K_i >= 2}  1/(K_i (K_i - 1)) * sum_{a != b, both present in i} max(margin - dist(n_ia, n_ib), 0)

    with P_m the number of samples in which modality m is present and K_i the number of modalities
    present in sample i. Each term is a mean of means, as in section 4: the consistency term a mean
    over modalities of the mean over that modality's (present) sample pairs, the margin term a mean over
    samples of the mean over that sample's (present) modality pairs; a modality or sample with no pair
    is left out of the outer mean (0 when nothing is left). With everything present P_m = B, K_i = M and
    the factors are section 4's 1/(3B(B-1)) and 1/(6B). With M = 1 the margin term is exactly 0.

    Args:
        noise: (B, M, D) noise representations R^n, modalities in order (l, a, v); B >= 2.
        margin: the distance margin epsilon of eq. (2); a cosine distance lies in [0, 2].
        present: (B, M) bool, True where the modality is present; None means all present.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: B < 2 (the cross-sample term needs a pair of samples).
    """
    margin = float(margin)
    batch, m, _ = _check_bmd("noise", noise)
    if batch < 2:
        raise ValueError(f"noise: needs B >= 2 samples for the cross-sample term, got B = {batch}")
    keep = _present_mask(present, batch, m, noise)  # (B, M)
    n_u = _unit(_zero_absent(noise, keep))  # (B, M, D)

    by_modality = n_u.transpose(0, 1)  # (M, B, D)
    dist_samples = 1 - by_modality @ by_modality.transpose(1, 2)  # (M, B, B): dist(n_im, n_jm)
    keep_m = keep.T  # (M, B)
    sample_pairs = keep_m.unsqueeze(2) & keep_m.unsqueeze(1) & _off_diagonal(batch, noise)  # (M, B, B)
    cross_sample = _mean_over(torch.where(sample_pairs, dist_samples, 0.0).sum((1, 2)), sample_pairs.sum((1, 2)))

    dist_modalities = 1 - n_u @ n_u.transpose(1, 2)  # (B, M, M): dist(n_ia, n_ib)
    modality_pairs = keep.unsqueeze(2) & keep.unsqueeze(1) & _off_diagonal(m, noise)  # (B, M, M)
    hinge = torch.where(modality_pairs, torch.relu(margin - dist_modalities), 0.0)  # (B, M, M)
    cross_modality = _mean_over(hinge.sum((1, 2)), modality_pairs.sum((1, 2)))
    return cross_sample + cross_modality


NOISE_ENTROPY_FORMS = ("prior", "literal")


def _logdet_ridged_covariance(centred: Tensor, dof: Tensor, ridge: float) -> Tensor:
    """(M, B, D) centred rows (absent rows zero), (M,) degrees of freedom -> (M,) logdet(X^T X / dof + ridge I_D).

    When B < D the log-determinant comes from the B x B Gram matrix instead (Sylvester's determinant
    identity, exact): logdet(X^T X / dof + ridge I_D) = D log(ridge) + logdet(I_B + X X^T / (dof ridge)),
    a 32 x 32 Cholesky instead of a 128 x 128 one at the default batch and width. Zero (absent) rows add
    an identity block to the Gram matrix, so they change neither form.
    """
    _, batch, d = centred.shape
    if batch < d:
        gram = centred @ centred.transpose(1, 2) / (dof.view(-1, 1, 1) * ridge)  # (M, B, B)
        eye = torch.eye(batch, dtype=centred.dtype, device=centred.device)
        chol = torch.linalg.cholesky(gram + eye)  # (M, B, B)
        return d * math.log(ridge) + 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    cov = centred.transpose(1, 2) @ centred / dof.view(-1, 1, 1)  # (M, D, D)
    eye = torch.eye(d, dtype=centred.dtype, device=centred.device)
    chol = torch.linalg.cholesky(cov + ridge * eye)  # (M, D, D)
    return 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


def noise_entropy(
    noise: Tensor,
    mu: float,
    sigma2: float,
    jitter: float = 1e-4,
    *,
    form: str = "prior",
    present: Tensor | None = None,
) -> Tensor:
    """Make each modality's noise compact (low Gaussian entropy) while held near a prior mean and variance.

    Paper eq. (3). ``form="prior"`` (the default, SPEC section 7)::

        L = (1/M) * sum_m [ H_m + ||mean_i n_im - mu||^2 + ||var_m - sigma2||^2 ]
        H_m = 0.5 * logdet(2 pi e (C_m + sigma2 I))

    H_m is the entropy of R^n blurred by the prior's isotropic Gaussian N(0, sigma2 I). It is bounded
    below by (D/2) log(2 pi e sigma2) (C_m is positive semi-definite), and its gradient with respect to
    C_m is 0.5 (C_m + sigma2 I)^-1, of spectral norm at most 1/(2 sigma2): the entropy can pull the noise
    together only as hard as the variance term pushes it back, so R^n does not collapse. Its minimiser
    (see ``tests/test_losses.py``) is rank one: H_m is concave in C_m's eigenvalues, so it puts the whole
    spread on one line, with per-dimension variance v solving (sigma2 - v)(D v + sigma2) = 1/4, i.e.
    v = sigma2 - 1/(4 (D + 1) sigma2) + O(1/D^2) for sigma2 well above 1/2. Below sigma2 = 1/2 a
    collapsed R^n is still a local minimum (at C = 0 the entropy's pull 1/(2 sigma2) beats the variance
    term's push 2 sigma2), so a small initial R^n collapses anyway (measured at D = 128: sigma2 = 0.4
    from variance 0.0025 ends at 1e-9, sigma2 = 0.6 at 0.59); at D = 128 the collapsed state is the
    global minimum below sigma2 = 0.137.

    ``form="literal"`` is SPEC section 4's definition::

        L = (1/M) * sum_m [ H_m + mean_i ||n_im - mu||^2 + ||var_m - sigma2||^2 ]
        H_m = 0.5 * logdet(2 pi e (C_m + jitter I))

    which rewards shrinking without bound: as R^n collapses, H_m -> (D/2) log(2 pi e jitter), far below
    anything the two pulls can charge, so R^n collapses to a constant (SPEC section 7, measured).

    In both forms C_m is the unbiased (divide by P_m - 1) D x D covariance of n_im over the P_m samples
    in which modality m is present, var_m its diagonal, mean_i the mean over those samples, and mu,
    sigma2 scalars broadcast over the D dimensions. A modality present in fewer than two samples is
    skipped, and (1/M) becomes the mean over the modalities not skipped (0 if all are): a skipped
    modality is left out rather than counted as 0, because each modality's term carries a large constant
    ((D/2) log(2 pi e sigma2), about 182 at D = 128, sigma2 = 1) and dropping a third of it would move
    the logged value without any change in R^n. With everything present this is (1/M) sum_m exactly.

    The covariance and its log-determinant are computed in float64 and cast back (with ``literal``,
    C_m + jitter I has a condition number of order 1/jitter, where a float32 Cholesky loses digits).

    Args:
        noise: (B, M, D) noise representations R^n, modalities in order (l, a, v); B >= 2.
        mu: prior mean of every coordinate.
        sigma2: prior variance of every coordinate (> 0 for ``prior``, where it is also the ridge).
        jitter: > 0, the ridge of ``literal`` (unused by ``prior``, where sigma2 plays its part).
        form: ``"prior"`` or ``"literal"``.
        present: (B, M) bool, True where the modality is present; None means all present.

    Returns:
        Scalar tensor in noise's dtype.

    Raises:
        ValueError: unknown form, B < 2, jitter <= 0, or sigma2 <= 0 with ``prior``.
    """
    if form not in NOISE_ENTROPY_FORMS:
        raise ValueError(f"form: expected one of {NOISE_ENTROPY_FORMS}, got {form!r}")
    jitter = _check_positive("jitter", jitter)
    ridge = _check_positive("sigma2", sigma2) if form == "prior" else jitter
    batch, m, d = _check_bmd("noise", noise)
    if batch < 2:
        raise ValueError(f"noise: needs B >= 2 samples for an unbiased covariance, got B = {batch}")
    keep = _present_mask(present, batch, m, noise).T.unsqueeze(-1)  # (M, B, 1)
    count = keep.sum(1).squeeze(-1).to(torch.float64)  # (M,): P_m
    x = torch.where(keep, noise.to(torch.float64).transpose(0, 1), 0.0)  # (M, B, D)
    mean = x.sum(1, keepdim=True) / count.clamp(min=1).view(-1, 1, 1)  # (M, 1, D)
    centred = torch.where(keep, x - mean, 0.0)  # (M, B, D)
    dof = (count - 1).clamp(min=1)  # (M,)
    entropy = 0.5 * (d * math.log(2 * math.pi * math.e) + _logdet_ridged_covariance(centred, dof, ridge))  # (M,)

    var = centred.pow(2).sum(1) / dof.unsqueeze(-1)  # (M, D), = diagonal of C_m
    if form == "prior":
        mean_pull = (mean.squeeze(1) - mu).pow(2).sum(-1)  # (M,): ||mean_i n_im - mu||^2
    else:
        mean_pull = torch.where(keep, (x - mu).pow(2), 0.0).sum((1, 2)) / count.clamp(min=1)  # (M,)
    var_pull = (var - sigma2).pow(2).sum(-1)  # (M,)
    counted = count >= 2  # (M,)
    terms = torch.where(counted, entropy + mean_pull + var_pull, 0.0)  # (M,)
    return (terms.sum() / counted.sum().clamp(min=1)).to(noise.dtype)


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
    noise_entropy_form: str = "prior",
    present: Tensor | None = None,
) -> dict[str, Tensor]:
    """The factorization loss of one view: L_DHF = (1) + (2) + (3) (paper eq. 4).

    Args:
        ho, he: (B, M, D) homogeneous and heterogeneous representations, order (l, a, v).
        noise: (B, M, D) noise representations; may be None when ``use_noise=False``.
        tau, margin, mu, sigma2: the hyperparameters of eqs. (1), (2), (3).
        use_noise: False is the ``noise=False`` ablation: the model has no R^n, and eqs. (2), (3)
            are left out. Their keys stay in the result as zeros so that every run logs the same names.
        noise_entropy_form: ``form`` of eq. (3) (``loss.noise_entropy_form``): "prior" or "literal".
        present: (B, M) bool mask of the present modalities of this view, passed to all three terms;
            None means all present.

    Returns:
        ``{"contrastive": (1), "noise_consistency": (2), "noise_entropy": (3), "dhf": their sum}``,
        scalar tensors.
    """
    contrastive = homo_hetero_contrastive(ho, he, tau, present=present)
    if use_noise:
        if noise is None:
            raise ValueError("noise: required when use_noise=True")
        consistency = noise_consistency(noise, margin, present=present)
        entropy = noise_entropy(noise, mu, sigma2, form=noise_entropy_form, present=present)
    else:
        if noise_entropy_form not in NOISE_ENTROPY_FORMS:  # refused the same way with or without R^n
            raise ValueError(f"noise_entropy_form: expected one of {NOISE_ENTROPY_FORMS}, got {noise_entropy_form!r}")
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


def _check_views(zp: Tensor, zq: Tensor) -> None:
    if not isinstance(zp, Tensor) or zp.ndim != 2:
        raise ValueError(f"zp: expected a tensor of shape (B, D), got {getattr(zp, 'shape', type(zp))}")
    if not isinstance(zq, Tensor) or zq.shape != zp.shape:
        raise ValueError(f"zq: shape {tuple(getattr(zq, 'shape', ()))} does not match zp {tuple(zp.shape)}")


@dataclass(frozen=True)
class EntropicOT:
    """One solved entropic OT problem between the uniform empirical measures of the rows of x and y.

    ``transport + entropic`` is the regularised OT value S(x, y) of ``sinkhorn_divergence``; ``transport``
    alone is the Sinkhorn distance of ``sinkhorn_distance``. Convergence is part of the result, not a
    side effect: the callers that turn it into a loss warn when ``converged`` is False.
    """

    plan: Tensor  # (B, B) float64 gamma*, no gradient
    transport: Tensor  # <gamma*, C>: differentiable in x and y through C, the plan held constant
    entropic: Tensor  # eps * KL(gamma* || a b^T): a constant of the inputs (no gradient)
    marginal_error: float  # ||gamma*^T 1 - b||_2 after the last iteration
    iterations: int
    converged: bool  # marginal_error < stop_thr

    @property
    def value(self) -> Tensor:
        """S = <gamma*, C> + eps KL(gamma* || a b^T), the minimum of the entropic problem."""
        return self.transport + self.entropic


def entropic_ot(
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    num_iter_max: int = 1000,
    stop_thr: float = 1e-9,
) -> EntropicOT:
    """Solve eq. (5)-(6)'s entropic OT between the rows of x and y, uniform weights a = b = 1/B:

        gamma* = argmin_{gamma in Pi(a, b)}  <gamma, C> + eps * KL(gamma || a b^T),   C_ij = ||x_i - y_j||^2

    (KL to a b^T and the paper's -H(gamma) differ by a constant, so the plan is the same). The plan
    comes from POT's log-domain Sinkhorn (``ot.sinkhorn(..., method='sinkhorn_log')``) in float64 on
    detached inputs: in float32 the marginal error stalls near 1e-8 and the iterations silently run to
    the cap (notes/pot-sinkhorn.md). POT's own warning is off; ``converged`` says whether the
    column-marginal error fell below stop_thr (POT stops on the column marginal; the rows are exact
    after its last update). This function does not warn: ``sinkhorn_plan``, ``sinkhorn_distance`` and
    ``sinkhorn_divergence`` do, once per call.

    The entropic term is the generalised KL, sum_ij gamma_ij log(gamma_ij / (a_i b_j)) - gamma_ij + a_i b_j,
    with 0 log 0 = 0; on the marginals (converged) it is the plain KL. ``x`` may be ``y`` (the
    self-transport terms of the divergence); the cost then reaches the input through both of its
    arguments.

    Args:
        x, y: (B, D) rows of the two measures (same shape).
        eps, num_iter_max, stop_thr: as in ``sinkhorn_distance``.

    Returns:
        ``EntropicOT``; ``transport`` and ``entropic`` in x's dtype.
    """
    eps = _check_positive("eps", eps)
    stop_thr = _check_positive("stop_thr", stop_thr)
    if int(num_iter_max) < 1:
        raise ValueError(f"num_iter_max: must be >= 1, got {num_iter_max!r}")
    _check_views(x, y)
    with torch.no_grad():
        cost64 = _squared_euclidean(x.detach().to(torch.float64), y.detach().to(torch.float64))  # (B, B)
        if not torch.isfinite(cost64).all():
            raise ValueError("zp, zq: contain non-finite values")
        batch = x.shape[0]
        weights = torch.full((batch,), 1.0 / batch, dtype=torch.float64, device=x.device)  # (B,)
        if x is y or torch.equal(x, y):  # a self term (or equal views): the symmetric update converges fast
            plan, niter = _symmetric_sinkhorn(cost64, weights, eps, num_iter_max=int(num_iter_max), stop_thr=stop_thr)
        else:
            plan, log = ot.sinkhorn(
                weights, weights, cost64, reg=eps, method="sinkhorn_log",
                numItermax=int(num_iter_max), stopThr=stop_thr, log=True, warn=False,
            )  # (B, B)
            niter = int(log["niter"]) + 1
        marginal_error = float(torch.linalg.vector_norm(plan.sum(0) - weights))
        independent = weights.unsqueeze(1) * weights.unsqueeze(0)  # (B, B): a b^T
        kl = (torch.special.xlogy(plan, plan) - torch.special.xlogy(plan, independent) - plan + independent).sum()
    cost = _squared_euclidean(x, y)  # (B, B), carries the autograd graph
    return EntropicOT(
        plan=plan,
        transport=(plan.to(cost.dtype) * cost).sum(),
        entropic=(eps * kl).to(cost.dtype),
        marginal_error=marginal_error,
        iterations=niter,
        converged=marginal_error < stop_thr,  # False for NaN too
    )


def _symmetric_sinkhorn(cost: Tensor, weights: Tensor, eps: float, *, num_iter_max: int,
                        stop_thr: float) -> tuple[Tensor, int]:
    """The plan of S(x, x) (symmetric cost, a = b): log-domain Sinkhorn with averaged symmetric updates

        f <- (f + T(f)) / 2,   T(f)_i = -eps * log sum_j b_j exp((f_j - C_ij) / eps),
        gamma_ij = a_i b_j exp((f_i + f_j - C_ij) / eps)

    (Feydy et al. 2019, Sec. 3.1; geomloss' ``sinkhorn_loop`` for the self terms). The alternating
    updates POT uses oscillate on a symmetric problem with a near-zero diagonal and can spend their whole
    iteration budget there; the averaged update reaches the same fixed point (the unique symmetric dual
    potential) in a handful of iterations. Stops when the marginal error ||gamma^T 1 - b||_2 < stop_thr.
    Float64, no gradient. Returns (plan (B, B), iterations)."""
    log_w = weights.log()  # (B,)
    neg_k = -cost / eps  # (B, B)

    def update(f: Tensor) -> Tensor:  # T(f) (B,)
        return -eps * torch.logsumexp(log_w[None, :] + f[None, :] / eps + neg_k, dim=1)

    # The plan of f has column sums b_j exp((f_j - T(f)_j) / eps) (C symmetric), so the T(f) that the next
    # update needs also gives f's marginal error: one logsumexp per iteration, the (B, B) plan built once.
    f = 0.5 * update(torch.zeros_like(weights))  # (B,), iterate 1
    it = 1
    while True:
        t = update(f)  # (B,)
        if it >= num_iter_max or float(torch.linalg.vector_norm(weights * torch.exp((f - t) / eps) - weights)) < stop_thr:
            break
        f, it = 0.5 * (f + t), it + 1
    plan = torch.exp(log_w[:, None] + log_w[None, :] + (f[:, None] + f[None, :]) / eps + neg_k)  # (B, B)
    return plan, it


def _warn_not_converged(caller: str, eps: float, median: float, failed: list[tuple[str, EntropicOT]],
                        stop_thr: float) -> None:
    """One RuntimeWarning per call, whose message starts with "sinkhorn": the training loop counts them
    (one per non-converged step) instead of logging each."""
    where = "; ".join(
        f"{name + ' ' if name else ''}after {r.iterations} iterations: marginal error {r.marginal_error:.2e}"
        for name, r in failed
    )
    warnings.warn(
        f"{caller}: not converged at eps={eps:g} (eps / median cost = {eps / median if median > 0 else float('inf'):.3g}) {where} >= "
        f"stop_thr={stop_thr:g}; raise eps or num_iter_max",
        RuntimeWarning,
        stacklevel=3,
    )


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

    SPEC section 7 makes ``sinkhorn_divergence`` the default feature term (``das_loss(feature=...)``):
    this value is biased, it is not 0 between a batch and itself and at large eps mostly rewards
    shrinking the spread of Z.

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
    C_ij = ||zp_i - zq_j||^2, by POT's log-domain Sinkhorn (``entropic_ot``) in float64 on detached
    inputs. Warns (RuntimeWarning naming eps, eps / median cost and the iteration count) when the
    column-marginal error ||gamma^T 1 - b||_2 is still >= stop_thr after ``num_iter_max`` iterations.
    It is also the plan of S(p, q) in ``sinkhorn_divergence`` (the same problem), and what
    ``fsrf.health.das_paired_mass`` reads.

    Args:
        zp, zq: (B, D) joint representations of the two views (same shape).
        eps, num_iter_max, stop_thr: as in ``sinkhorn_distance``.

    Returns:
        (B, B) float64 plan, no gradient; rows and columns sum to 1/B (up to stop_thr).
    """
    solved = entropic_ot(zp, zq, eps, num_iter_max=num_iter_max, stop_thr=stop_thr)
    if not solved.converged:
        _warn_not_converged("sinkhorn", float(eps), median_pairwise_cost(zp, zq), [("", solved)], float(stop_thr))
    return solved.plan


def sinkhorn_divergence(
    zp: Tensor,
    zq: Tensor,
    eps: float,
    *,
    num_iter_max: int = 1000,
    stop_thr: float = 1e-9,
) -> Tensor:
    """Align the two views' joint representations as distributions, without the entropic bias: eq. (7)
    as SPEC section 7 defines it (``loss.das_feature: divergence``, the default).

    The debiased Sinkhorn divergence (Feydy et al. 2019) between the uniform empirical measures of the
    rows of zp and zq::

        SD(p, q) = S(p, q) - S(p, p) / 2 - S(q, q) / 2
        S(x, y)  = min_{gamma in Pi(a, b)} <gamma, C(x, y)> + eps * KL(gamma || a b^T)
                 = <gamma*, C> + eps * KL(gamma* || a b^T),        C_ij = ||x_i - y_j||^2

    S is the regularised OT value (transport cost plus entropic term), each of the three solved by
    ``entropic_ot`` (POT, log-domain, float64). With the regularised value, SD >= 0, SD(p, q) = SD(q, p)
    and SD(p, p) = 0 (Feydy et al., Theorem 1), up to the solver's tolerance: the result is not clipped,
    so it can be negative by about stop_thr times the cost scale. S(p, q) alone (``sinkhorn_distance``)
    is not 0 for equal batches, and its gradient at large eps mostly shrinks the spread of Z; the two
    self terms take that part away. (POT's ``ot.bregman.empirical_sinkhorn_divergence`` differs: it
    uses the transport cost <gamma*, C> without the entropic term, for which these properties do not
    hold, and clips at 0, which kills the gradient where it clips.)

    Gradient (envelope theorem): each S is the minimum over gamma of a function of C, so dS/dC = gamma*
    and, with the plans held constant, autograd through C(x, y) is the exact gradient of SD. For
    S(p, p) both arguments of C are zp, and the gradient flows through both. The entropic terms are
    constants of the inputs here; they matter for the value only.

    Computed in float64 (the three values are of the cost's size and their difference can be much
    smaller) and cast to zp's dtype. If any of the three solves has not converged after
    ``num_iter_max`` iterations, one RuntimeWarning (per call) names the terms, as ``sinkhorn_plan``
    does for the distance, so a count of warnings is a count of non-converged calls.

    Args:
        zp, zq: (B, D) joint representations of the two views (same shape).
        eps: entropic regularisation > 0, in the units of C (squared distances), the same for all three.
        num_iter_max, stop_thr: as in ``sinkhorn_distance``, for each of the three solves.

    Returns:
        Scalar tensor in zp's dtype, differentiable in zp and zq.

    Raises:
        ValueError: eps <= 0, shapes not (B, D) and equal, or non-finite inputs.

    Reference: J. Feydy, T. Sejourne, F.-X. Vialard, S. Amari, A. Trouve, G. Peyre, "Interpolating between
    Optimal Transport and MMD using Sinkhorn Divergences", AISTATS 2019.
    """
    _check_views(zp, zq)
    p64, q64 = zp.to(torch.float64), zq.to(torch.float64)  # the casts keep the autograd graph
    kw = dict(num_iter_max=num_iter_max, stop_thr=stop_thr)
    terms = {"S(p,q)": entropic_ot(p64, q64, eps, **kw), "S(p,p)": entropic_ot(p64, p64, eps, **kw),
             "S(q,q)": entropic_ot(q64, q64, eps, **kw)}
    failed = [(name, solved) for name, solved in terms.items() if not solved.converged]
    if failed:
        _warn_not_converged("sinkhorn_divergence", float(eps), median_pairwise_cost(zp, zq), failed, float(stop_thr))
    value = terms["S(p,q)"].value - 0.5 * terms["S(p,p)"].value - 0.5 * terms["S(q,q)"].value
    return value.to(zp.dtype)


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


DAS_FEATURES = ("divergence", "distance")


def das_loss(
    zp: Tensor,
    zq: Tensor,
    prob_p: Tensor,
    prob_q: Tensor,
    *,
    eps: float,
    num_iter_max: int = 1000,
    stop_thr: float = 1e-9,
    feature: str = "divergence",
) -> dict[str, Tensor]:
    """The self-distillation loss between the two views: L_DAS = (7) + (8) (paper eq. 9).

    Args:
        zp, zq: (B, D) joint representations of the two views.
        prob_p, prob_q: (B, C) output distributions of the two views (``polarity_probs`` for regression).
        eps, num_iter_max, stop_thr: as in ``sinkhorn_distance``.
        feature: the feature-level term (7) (``loss.das_feature``): ``"divergence"``
            (``sinkhorn_divergence``, SPEC section 7, the default) or ``"distance"``
            (``sinkhorn_distance``, section 4).

    Returns:
        ``{"sinkhorn": (7), "js": (8), "das": their sum}``, scalar tensors. The key is "sinkhorn" for
        either feature so that runs log the same names; the run's ``loss.das_feature`` says which.
    """
    if feature not in DAS_FEATURES:
        raise ValueError(f"feature: expected one of {DAS_FEATURES}, got {feature!r}")
    term = sinkhorn_divergence if feature == "divergence" else sinkhorn_distance
    sinkhorn = term(zp, zq, eps, num_iter_max=num_iter_max, stop_thr=stop_thr)
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
