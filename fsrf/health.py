"""Mechanism health: does each FSRF mechanism do what it is for? (SPEC section 7, "Mechanism health")

Pure functions of tensors that return plain floats (or dicts of them) for logging as ``health/<name>``
and ``health/<name>/<m>``; none keeps state and none trains. They answer, per epoch on validation:
has R^n collapsed (``noise_var``, ``noise_rank``), do the homogeneous representations agree within a
sample more than across samples (``ho_agreement``), are R^he and R^ho apart (``he_ho_cos``), does the
Sinkhorn plan pair the two views' rows (``das_paired_mass``), and which loss term drives the shared
layers (``grad_shares``).

Axis legend:
    B  samples in the batch
    M  modalities, in the fixed order (l, a, v) of ``fsrf.MODALITIES``
    D  representation width

``present`` is the (B, M) bool mask of present modalities (None: all present); only present rows count.
Per-modality metrics return ``{modality: value}`` for the modalities with enough present rows (two for
a variance, one for a cosine); ``log_names`` turns such a dict into the logged names.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from fsrf import MODALITIES


def _check_bmd(name: str, x: Tensor) -> tuple[int, int, int]:
    if not isinstance(x, Tensor) or x.ndim != 3 or not 1 <= x.shape[1] <= len(MODALITIES):
        raise ValueError(f"{name}: expected a tensor of shape (B, M, D) with M in 1..3, got {getattr(x, 'shape', type(x))}")
    return tuple(x.shape)


def _present(present: Tensor | None, batch: int, m: int) -> Tensor:
    if present is None:
        return torch.ones(batch, m, dtype=torch.bool)
    if not isinstance(present, Tensor) or present.dtype != torch.bool or tuple(present.shape) != (batch, m):
        raise ValueError(f"present: expected a bool tensor of shape {(batch, m)}, got "
                         f"{getattr(present, 'dtype', type(present))} {tuple(getattr(present, 'shape', ()))}")
    return present.cpu()


def _rows(x: Tensor, present: Tensor | None) -> dict[str, Tensor]:
    """(B, M, D) -> {modality: (P_m, D) float64 present rows}, detached, on the CPU."""
    batch, m, _ = _check_bmd("x", x)
    keep = _present(present, batch, m)
    x = x.detach().to("cpu", torch.float64)
    return {MODALITIES[k]: x[keep[:, k], k] for k in range(m)}


def log_names(name: str, per_modality: Mapping[str, float]) -> dict[str, float]:
    """``{"<name>": mean over modalities, "<name>/<m>": value}``, the names SPEC section 7 logs; {} if empty."""
    if not per_modality:
        return {}
    return {name: sum(per_modality.values()) / len(per_modality), **{f"{name}/{m}": v for m, v in per_modality.items()}}


def noise_var(noise: Tensor, present: Tensor | None = None) -> dict[str, float]:
    """Has R^n collapsed? The mean over dimensions of R^n's unbiased per-dimension variance, per modality.

    ``mean_d var_i(n_imd)`` over the samples in which m is present; eq. (3)'s prior form settles it near
    sigma2 (just below: see ``fsrf.losses.noise_entropy``), the literal form drives it to 0.

    Args:
        noise: (B, M, D) noise representations R^n.
        present: (B, M) bool mask; None means all present.

    Returns:
        ``{modality: variance}`` for the modalities present in at least two samples.
    """
    return {m: float(rows.var(dim=0, unbiased=True).mean()) for m, rows in _rows(noise, present).items()
            if len(rows) >= 2}


def noise_rank(noise: Tensor, present: Tensor | None = None) -> dict[str, float]:
    """In how many dimensions does R^n spread? Its effective rank (Roy and Vetterli 2007), per modality.

        rank = exp( -sum_k p_k log p_k ),   p_k = lambda_k / sum_k lambda_k,

    lambda_k the eigenvalues of the covariance over the present samples (0 log 0 = 0). It is D for an
    isotropic covariance, 1 for data on one line, and between for anything else; a covariance of zero
    (R^n constant, fully collapsed) has no direction and gets 0. Computed from the smaller of the
    D x D covariance and the P x P Gram matrix, which share their nonzero eigenvalues.

    Args:
        noise: (B, M, D) noise representations R^n.
        present: (B, M) bool mask; None means all present.

    Returns:
        ``{modality: effective rank}`` for the modalities present in at least two samples.
    """
    out = {}
    for m, rows in _rows(noise, present).items():
        if len(rows) < 2:
            continue
        centred = rows - rows.mean(0)  # (P, D)
        small = centred @ centred.T if centred.shape[0] < centred.shape[1] else centred.T @ centred
        eig = torch.linalg.eigvalsh(small).clamp(min=0)  # the scale (1 / (P - 1)) cancels in p
        total = float(eig.sum())
        if total <= 0:
            out[m] = 0.0
            continue
        p = eig / total
        out[m] = math.exp(-float(torch.special.xlogy(p, p).sum()))
    return out


def ho_agreement(ho: Tensor, present: Tensor | None = None) -> float:
    """Is R^ho shared by a sample's modalities, and specific to the sample? (eq. 1's intent)

        mean_{i, a != b} cos(ho_ia, ho_ib)  -  mean_{i != j, a != b} cos(ho_ia, ho_jb)

    the mean cosine between two different modalities of the same sample minus the same between two
    different modalities of different samples, each over the pairs whose both rows are present. A
    constant R^ho (agreeing but carrying nothing about the sample) scores 0; a sample-specific shared
    representation scores up to 2.

    Args:
        ho: (B, M, D) homogeneous representations R^ho.
        present: (B, M) bool mask; None means all present.

    Returns:
        The difference, or NaN if either mean has no pair (M = 1, or no sample with two present modalities).
    """
    batch, m, d = _check_bmd("ho", ho)
    keep = _present(present, batch, m).reshape(-1)  # (B M,)
    unit = F.normalize(ho.detach().to("cpu", torch.float64), dim=-1, eps=1e-8).reshape(batch * m, d)  # (B M, D)
    cos = unit @ unit.T  # (B M, B M); row i * M + a
    sample = torch.arange(batch).repeat_interleave(m)  # (B M,)
    modality = torch.arange(m).repeat(batch)  # (B M,)
    both = keep.unsqueeze(1) & keep.unsqueeze(0) & (modality.unsqueeze(1) != modality.unsqueeze(0))
    same = both & (sample.unsqueeze(1) == sample.unsqueeze(0))
    other = both & (sample.unsqueeze(1) != sample.unsqueeze(0))
    if not same.any() or not other.any():
        return math.nan
    return float(cos[same].mean() - cos[other].mean())


def he_ho_cos(he: Tensor, ho: Tensor, present: Tensor | None = None) -> dict[str, float]:
    """Are a modality's specific and shared parts apart? mean_i |cos(he_im, ho_im)|, per modality.

    0 when R^he is orthogonal to R^ho in every sample, 1 when they are parallel (or opposite: eq. 1
    pushes he from ho in cosine distance, so a sign flip would also make the factorization redundant).

    Args:
        he, ho: (B, M, D) heterogeneous and homogeneous representations.
        present: (B, M) bool mask; None means all present.

    Returns:
        ``{modality: mean |cosine|}`` for the modalities present in at least one sample.
    """
    if getattr(he, "shape", None) != getattr(ho, "shape", None):
        raise ValueError(f"he: shape {tuple(getattr(he, 'shape', ()))} does not match ho {tuple(getattr(ho, 'shape', ()))}")
    he_rows, ho_rows = _rows(he, present), _rows(ho, present)
    return {m: float(F.cosine_similarity(he_rows[m], ho_rows[m], dim=-1, eps=1e-8).abs().mean())
            for m in he_rows if len(he_rows[m])}


def das_paired_mass(plan: Tensor) -> float:
    """Does the Sinkhorn plan pair each row of Z_p with its own row of Z_q? B * trace(plan).

    For a plan with marginals 1/B: 1 for the uniform (independent) plan 1/B^2, B for the perfect
    pairing I/B. Pass ``fsrf.losses.sinkhorn_plan(zp, zq, eps)`` (the plan of eq. 7, also the plan of
    S(p, q) in the divergence).

    Args:
        plan: (B, B) transport plan, row i = sample i of view p, column j = sample j of view q.
    """
    if not isinstance(plan, Tensor) or plan.ndim != 2 or plan.shape[0] != plan.shape[1]:
        raise ValueError(f"plan: expected a square (B, B) tensor, got {getattr(plan, 'shape', type(plan))}")
    return float(plan.shape[0] * torch.diagonal(plan.detach()).sum())


def grad_shares(terms: Mapping[str, Tensor], params: Iterable[Tensor]) -> dict[str, float]:
    """Which loss term drives these parameters? Each term's share of the summed gradient norms.

        share_k = ||d term_k / d params|| / sum_j ||d term_j / d params||

    (norms over all the given parameters together), so the shares sum to 1, and a term that does not
    reach the parameters gets 0 (all 0 if none does). Pass the terms as they enter the total, weights
    included (``lambda1 * L_DHF``, ...), and the shared layers' parameters. Uses
    ``torch.autograd.grad(..., retain_graph=True)``: the graph survives for the training step's own
    backward, and no ``.grad`` is touched.

    Args:
        terms: {name: scalar tensor} loss terms sharing one graph.
        params: tensors with requires_grad (e.g. ``model.shared.parameters()``).

    Returns:
        ``{name: share}``, in terms' order.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("params: no tensor that requires grad")
    norms = {}
    for name, term in terms.items():
        if not isinstance(term, Tensor) or term.ndim != 0:
            raise ValueError(f"terms[{name!r}]: expected a scalar tensor, got {getattr(term, 'shape', type(term))}")
        if not term.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        norms[name] = math.sqrt(sum(float(g.detach().double().pow(2).sum()) for g in grads if g is not None))
    total = sum(norms.values())
    return {name: (norm / total if total > 0 else 0.0) for name, norm in norms.items()}


# ---------------------------------------------------------------------------------------------------
# A model's health on a split (what ``fsrf.train.fit`` logs each epoch)
# ---------------------------------------------------------------------------------------------------


def loss_parts(terms: Mapping[str, Tensor], *, lambda1: float, lambda2: float) -> dict[str, Tensor]:
    """The loss terms of one training step (``fsrf.losses.total_loss``'s result) as they enter the total,
    weights included: ``task`` (both views), each ``dhf/<component>`` x lambda1 and ``das/<component>``
    x lambda2, keyed by component name (``contrastive``, ``noise_entropy``, ``sinkhorn``, ``js``, ...)."""
    parts = {"task": terms["task_p"] + terms["task_q"]}
    for key, value in terms.items():
        head, _, component = key.partition("/")
        if not component or not isinstance(value, Tensor) or not value.requires_grad:
            continue  # the sums ("dhf", "das") and diagnostics (median cost, eps)
        if head == "dhf":
            parts[component] = lambda1 * value
        elif head == "das":
            parts[component] = lambda2 * value
    return parts


def shared_parameters(model) -> list[Tensor]:
    """The layers every loss term's gradient passes through: the modality projections to H_m (each
    encoder's last linear layer), where the task, DHF and DAS terms meet."""
    model = getattr(model, "module", model)  # DDP
    return [p for enc in model.encoders.values() for p in enc.out.parameters() if p.requires_grad]


PLAN_TOL = 1e-5  # stop_thr of the health plan: its paired mass (1..B) moves by < 3e-4 against 1e-9, at half the iterations


@torch.no_grad()
def measure(model, data, *, views: tuple, eps_fn, batch_size: int, complete_h: Tensor | None = None,
            view_rows: int = 0) -> dict[str, float]:
    """The representation health of ``model`` on a split (SPEC 7 names, ``health/...``).

    On the complete input (every modality present, nothing dropped): ``noise_var``, ``noise_rank``
    (R_n), ``ho_agreement``, ``he_ho_cos``. On two fixed MRM views of the split (``views`` = (View p,
    View q), drawn once per run so every epoch sees the same ones), batch by batch as training pairs
    them: ``das_paired_mass`` (B x the Sinkhorn plan's mass on paired rows at the run's eps,
    ``eps_fn(median cost)``) and ``das_pair_cost_ratio`` (mean paired cost over mean unpaired cost
    between the two views' Z: below 1 when a sample's two views are closer than two samples are).
    A metric whose part is switched off (no DHF, no R_n) is left out.

    Cost (an epoch's share, issue 16): ``complete_h`` (N, M, D), the complete input's modality encodings
    H that the epoch's validation pass computed anyway (``protocol.evaluate(..., keep=)``), spares the
    complete pass; and under a view, only the rows in which a present modality loses positions are
    encoded again: a present, untouched modality's H_m is its complete H_m (each modality is encoded on
    its own), an absent one the encoder's absent vector. Same values as encoding every view row.
    ``view_rows`` > 0 limits the two views (and their plans, solved to ``PLAN_TOL``) to the split's
    first ``view_rows`` rows, the same every epoch (``eval.health_rows``).
    """
    from fsrf import MODALITIES as ORDER
    from fsrf import losses
    from fsrf.missing import slice_view, zeroed_masks

    model.eval()
    n = len(data)
    valid = data.inputs.valid()
    everything = torch.ones(n, 3, dtype=torch.bool)
    nothing = tuple(torch.zeros_like(v) for v in valid)
    batches = list(torch.arange(n).split(batch_size))
    if complete_h is None:
        complete_h = torch.cat([model.encode(data.batch(idx), everything[idx], tuple(z[idx] for z in nothing))
                                for idx in batches])  # (N, M, D)
    outs = [model.factorize(complete_h[idx], everything[idx]) for idx in batches]
    out: dict[str, float] = {}
    if outs[0].noise is not None:
        noise = torch.cat([o.noise for o in outs])
        out.update(log_names("health/noise_var", noise_var(noise)))
        out.update(log_names("health/noise_rank", noise_rank(noise)))
    if outs[0].ho is not None:
        ho, he = torch.cat([o.ho for o in outs]), torch.cat([o.he for o in outs])
        if ho.shape[1] > 1:
            out["health/ho_agreement"] = ho_agreement(ho)
        out.update(log_names("health/he_ho_cos", he_ho_cos(he, ho)))
    vp, vq = views
    zp_all, zq_all = [], []
    view_batches = batches if view_rows <= 0 else list(torch.arange(min(n, view_rows)).split(batch_size))
    for idx in view_batches:
        x = data.batch(idx)
        v_idx = x.valid()  # (l, a, v) masks of the batch
        for view, acc in ((vp, zp_all), (vq, zq_all)):
            part = slice_view(view, idx)
            zeroed = zeroed_masks(part, v_idx)
            h = []
            for k, m in enumerate(model.modalities):
                i = ORDER.index(m)
                present = part.present[:, i]  # (b,)
                changed = present & zeroed[i].any(1)  # (b,) present rows that lose positions: encoded again
                h_m = model.encode_modality(x, m, changed, zeroed[i])  # (b, D); the absent vector elsewhere
                h.append(torch.where((present & ~changed)[:, None], complete_h[idx, k].to(h_m.dtype), h_m))
            acc.append(model.factorize(torch.stack(h, 1), part.present).z)
    masses, ratios = [], []
    for zp, zq in zip(zp_all, zq_all):
        if len(zp) < 2:
            continue
        zp, zq = zp.double(), zq.double()
        cost = torch.cdist(zp, zq).pow(2)  # (b, b)
        off = ~torch.eye(len(zp), dtype=torch.bool)
        ratios.append(float(cost.diagonal().mean() / cost[off].mean().clamp(min=1e-12)))
        with warnings.catch_warnings():  # a diagnostic: a non-converged plan is still read, not counted
            warnings.simplefilter("ignore", RuntimeWarning)
            plan = losses.sinkhorn_plan(zp, zq, eps_fn(losses.median_pairwise_cost(zp, zq)), stop_thr=PLAN_TOL)
        masses.append(das_paired_mass(plan))
    if masses:
        out["health/das_paired_mass"] = sum(masses) / len(masses)
        out["health/das_pair_cost_ratio"] = sum(ratios) / len(ratios)
    return out
