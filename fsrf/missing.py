"""Missing modalities for FSRF: the MRM views seen in training, and the masks they are made of.

SPEC section 2 is the contract. Two kinds of missingness act on a batch:
- *inter-modality*: a whole modality is absent (``View.present``);
- *intra-modality*: some valid frames (tokens for text) are dropped (``View.drop``).
A ``View`` only says *which* positions are lost; the model (or collate) turns them into zeros through
``View.zeroed``, so this file never touches features and works the same for cached text states, live
token ids (the caller maps a zeroed token to ``[UNK]``), audio and vision. The fixed views of the test
protocol are built from the same pieces in ``fsrf.protocol`` (``Condition.view``).

Axis legend: B samples in a batch (N for a whole split), T_m positions of modality m (padded),
3 modalities in the fixed order (l, a, v) of ``fsrf.MODALITIES``.

All randomness comes from a ``torch.Generator`` the caller seeds (CPU), and every function is
vectorised over the batch, so a seed reproduces a mask exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fsrf import MODALITIES

# The 7 non-empty modality sets, in Table I's order (l, a, v, la, lv, av, lav); presence is sampled as
# an index into it.
_SUBSETS = torch.tensor([[m in name for m in MODALITIES]
                         for name in ("l", "a", "v", "la", "lv", "av", "lav")])  # (7, 3) bool


@dataclass(frozen=True)
class View:
    """One view of a batch: which modalities are present and which valid positions are dropped.

    ``present`` carries inter-modality missingness, ``drop`` intra-modality missingness; a modality
    that is absent may still have ``drop`` all False, and ``zeroed`` combines the two.
    """

    present: Tensor  # (B, 3) bool, True where the modality is present
    drop: tuple[Tensor, Tensor, Tensor]  # per modality (B, T_m) bool, True on dropped valid positions

    def __post_init__(self) -> None:
        if self.present.dtype != torch.bool or self.present.ndim != 2 or self.present.shape[1] != 3:
            raise ValueError(f"View.present must be a (B, 3) bool tensor, got {self.present.dtype} "
                             f"{tuple(self.present.shape)}")
        if len(self.drop) != 3:
            raise ValueError(f"View.drop must hold 3 masks (l, a, v), got {len(self.drop)}")
        for m, d in zip(MODALITIES, self.drop):
            if d.dtype != torch.bool or d.ndim != 2 or d.shape[0] != self.present.shape[0]:
                raise ValueError(f"View.drop[{m}] must be a (B, T) bool tensor with "
                                 f"B={self.present.shape[0]}, got {d.dtype} {tuple(d.shape)}")

    def zeroed(self, m: int, valid: Tensor) -> Tensor:
        """Positions of modality ``m`` whose features become zero: valid & (dropped | modality absent).

        ``valid`` is that modality's (B, T_m) mask; padding is never reported, it is zero already.
        """
        return valid & (self.drop[m] | ~self.present[:, m : m + 1])  # (B, T_m)


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _per_sample(p: float | Tensor, batch: int, name: str) -> Tensor:
    """A ratio given as a float or a (B,) tensor, as a (B, 1) float64 tensor checked to lie in [0, 1]."""
    if isinstance(p, Tensor):
        if p.shape != (batch,):
            raise ValueError(f"{name} as a tensor must have shape ({batch},), got {tuple(p.shape)}")
        p = p.detach().to("cpu", torch.float64)
        if not bool(((p >= 0) & (p <= 1)).all()):
            raise ValueError(f"{name} must be in [0, 1], got values from {p.min().item()} to {p.max().item()}")
        return p[:, None]
    _check_rate(name, p)
    return torch.full((batch, 1), float(p), dtype=torch.float64)


def intra_drop(valid: Tensor, p: float | Tensor, *, generator: torch.Generator) -> Tensor:
    """Intra-modality missingness at ratio p: each valid position is dropped independently w.p. p.

    ``valid`` (B, T) bool marks real positions; ``p`` is one ratio or a (B,) tensor of per-sample ratios
    in [0, 1]. Returns the (B, T) bool drop mask: never True on padding, all valid positions at p = 1
    (uniforms lie in [0, 1)), none at p = 0.
    """
    ratio = _per_sample(p, valid.shape[0], "p")  # (B, 1)
    u = torch.rand(valid.shape, generator=generator, dtype=torch.float64)  # (B, T), on the generator's CPU
    return valid & (u < ratio).to(valid.device)


def burst_drop(valid: Tensor, p: float | Tensor, *, generator: torch.Generator) -> Tensor:
    """Burst missingness (extension): one contiguous block of round(p * length) valid positions.

    Valid positions must be a prefix of each row (length_i = valid[i].sum()); the block starts uniformly
    at random among the length_i - k_i + 1 places where it fits, so p = 1 drops the whole row and p = 0
    nothing. ``round`` is Python's (half to even), computed in float64 so that it agrees with
    ``round(p * length)``. ``p`` may be a (B,) tensor of per-sample ratios. Returns (B, T) bool.
    """
    batch, steps = valid.shape
    ratio = _per_sample(p, batch, "p")[:, 0]  # (B,)
    pos = torch.arange(steps)  # (T,)
    valid_cpu = valid.to("cpu")
    lengths = valid_cpu.sum(1)  # (B,)
    if not torch.equal(valid_cpu, pos[None, :] < lengths[:, None]):
        raise ValueError("burst_drop needs valid positions to be a prefix of each row (right padding)")
    k = torch.round(ratio * lengths).long()  # (B,) block lengths
    room = lengths - k + 1  # (B,) number of possible starts, >= 1
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    # min() guards against u * room rounding up to room in floating point.
    start = torch.minimum((u * room).long(), room - 1)  # (B,)
    block = (pos[None, :] >= start[:, None]) & (pos[None, :] < (start + k)[:, None])  # (B, T)
    return (valid_cpu & block).to(valid.device)


def _subset_probs(rate: float, available: Sequence[str] = MODALITIES) -> Tensor:
    """P(present set = S) for the 7 non-empty sets, each modality missing w.p. ``rate``, given >= 1 survives.

    Only sets made of ``available`` modalities (those the dataset has) get mass: a modality the data
    lacks is never "present", so its survival cannot satisfy "at least one survives" (a text-only view
    always keeps its text). With all three available this is the plain product over (l, a, v).
    At rate = 1 every product is 0; we use the limit rate -> 1, where single-modality sets dominate
    ((1 - r) r^2 against (1 - r)^2 r for pairs): uniform over the available single-modality sets.
    """
    has = torch.tensor([m in available for m in MODALITIES])  # (3,)
    allowed = ~(_SUBSETS & ~has).any(1)  # (7,) sets inside the available modalities
    if rate == 1.0:
        weights = ((_SUBSETS.sum(1) == 1) & allowed).double()
    else:
        present = _SUBSETS.double()  # (7, 3)
        factors = present * (1.0 - rate) + (1.0 - present) * rate  # (7, 3)
        # an unavailable modality contributes no factor (it is absent with certainty)
        weights = torch.where(has, factors, torch.ones_like(factors)).prod(1) * allowed  # (7,)
    return weights / weights.sum()


def sample_presence(
    n: int, *, rate: float, overlap: float | None = None, generator: torch.Generator,
    available: Sequence[str] = MODALITIES,
) -> tuple[Tensor, Tensor]:
    """Present-modality sets of the two MRM views S_p and S_q, each row keeping at least one modality.

    Each modality is missing independently with probability ``rate``, conditioned on at least one
    surviving; the set is drawn exactly from the 7 non-empty sets (see ``_subset_probs`` for rate = 1).
    ``overlap=None``: the two views are independent, as in the paper. ``overlap=o``: with probability o
    the q view copies p's set, otherwise q is drawn from the same distribution restricted to the sets
    different from p's (renormalised), so o is exactly P(same set). If p's set is the only one with
    positive probability (rate = 0: all present) there is nothing different to draw and q copies it.
    ``available``: the modalities the dataset has; sets are drawn among them only (``_subset_probs``).
    Returns (present_p, present_q), each (n, 3) bool.
    """
    _check_rate("rate", rate)
    if overlap is not None:
        _check_rate("overlap", overlap)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:  # multinomial refuses to draw nothing
        return _SUBSETS[:0], _SUBSETS[:0]
    probs = _subset_probs(rate, available)  # (7,)
    idx_p = torch.multinomial(probs, n, replacement=True, generator=generator)  # (n,)
    if overlap is None:
        idx_q = torch.multinomial(probs, n, replacement=True, generator=generator)
    else:
        other = probs.expand(n, -1).clone()  # (n, 7)
        other[torch.arange(n), idx_p] = 0.0
        stuck = other.sum(1) == 0  # (n,) p's set was certain
        other[stuck, idx_p[stuck]] = 1.0
        idx_other = torch.multinomial(other, 1, generator=generator)[:, 0]
        same = torch.rand(n, generator=generator, dtype=torch.float64) < overlap  # (n,)
        idx_q = torch.where(same, idx_p, idx_other)
    return _SUBSETS[idx_p], _SUBSETS[idx_q]


def mrm_views(
    valid: Sequence[Tensor], *, rate: float, overlap: float | None = None,
    modality_scale: Sequence[float] = (1.0, 1.0, 1.0), generator: torch.Generator,
    available: Sequence[str] = MODALITIES,
) -> tuple[View, View]:
    """The Modality Random Missing (MRM) strategy: two randomly incomplete views of one training batch.

    ``valid`` holds the three (B, T_m) masks in (l, a, v) order. Inter-modality missingness comes from
    ``sample_presence(rate=rate, overlap=overlap)``. Intra-modality missingness, drawn independently per
    view: each present modality of each sample is, with probability ``rate``, given a drop ratio
    u ~ U(0, 1) (otherwise 0) and its valid positions are dropped by ``intra_drop`` at that ratio.

    Why U(0, 1): the paper does not give MRM's intra ratio; a uniform ratio makes training see every
    severity of the test curve p = 0.1 .. 1.0 (Fig. 2) rather than a single one, and ``rate`` alone
    sets how often intra missingness happens, so a schedule on ``rate`` moves both kinds together.
    "At least one modality survives" is about presence: a surviving modality may still lose most (with
    a short sequence, rarely all) of its frames, as it does at the test points p near 1.
    Absent modalities get no drops (they are zeroed whole through ``View.zeroed``).

    ``modality_scale`` (l, a, v) multiplies ``rate`` in the intra draw of each modality: modality m is
    given a drop ratio with probability rate * scale_m (scale 0: its positions are never dropped, though
    it may still be absent as a whole); presence is not scaled. All 1 is the plain MRM, draw for draw.
    ``available``: the modalities the dataset has (``sample_presence``); all three draw exactly as before.
    """
    if len(valid) != 3:
        raise ValueError(f"valid must hold 3 masks (l, a, v), got {len(valid)}")
    if len(modality_scale) != 3:
        raise ValueError(f"modality_scale must hold 3 numbers (l, a, v), got {len(modality_scale)}")
    _check_rate("rate", rate)
    intra_rate = [rate * float(s) for s in modality_scale]  # rate * 1.0 is rate exactly
    for m, r in zip(MODALITIES, intra_rate):
        _check_rate(f"rate * modality_scale[{m}]", r)
    batch = valid[0].shape[0]
    present_p, present_q = sample_presence(batch, rate=rate, overlap=overlap, generator=generator,
                                           available=available)
    views = []
    for present in (present_p, present_q):
        drops = []
        for m, mask in enumerate(valid):
            hit = torch.rand(batch, generator=generator, dtype=torch.float64) < intra_rate[m]  # (B,)
            u = torch.rand(batch, generator=generator, dtype=torch.float64)  # (B,)
            ratio = torch.where(hit & present[:, m], u, torch.zeros_like(u))  # (B,)
            drops.append(intra_drop(mask, ratio, generator=generator))  # (B, T_m)
        views.append(View(present=present.to(valid[0].device), drop=tuple(drops)))
    return views[0], views[1]


SCHEDULES = ("constant", "linear", "cosine", "step")


@dataclass(frozen=True)
class Schedule:
    """The training missing rate as a function of the epoch (a searched hyperparameter, SPEC section 2).

    ``schedule`` is the config's ``missing.schedule`` (the fields are named as in ``MissingConfig``):
    - ``constant``: p0 throughout (p1 and at unused);
    - ``linear``: p0 at epoch 0 to p1 at the last epoch (num_epochs - 1);
    - ``cosine``: p0 + (p1 - p0) * (1 - cos(pi * t)) / 2, t = epoch / (num_epochs - 1);
    - ``step``: p0 while epoch < at * num_epochs, p1 from then on.
    A one-epoch run has t = 0 and so uses p0 for linear and cosine. ``p1`` defaults to p0.
    Wrong values are refused with the config field's name (``missing.p1 must be in [0, 1], got 1.3``).
    """

    schedule: Literal["constant", "linear", "cosine", "step"]
    p0: float
    p1: float | None = None  # None: same as p0
    at: float = 0.5

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"missing.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.p1 is None:
            object.__setattr__(self, "p1", self.p0)  # frozen: the one sanctioned way to fill a default
        for name in ("p0", "p1", "at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"missing.{name} must be a number in [0, 1], got {value!r}")
            _check_rate(f"missing.{name}", value)

    def rate(self, epoch: int, num_epochs: int) -> float:
        """The missing rate for 0-based ``epoch`` of a run of ``num_epochs`` epochs."""
        if num_epochs < 1 or not 0 <= epoch < num_epochs:
            raise ValueError(f"epoch must be in [0, num_epochs), got epoch={epoch}, num_epochs={num_epochs}")
        t = epoch / (num_epochs - 1) if num_epochs > 1 else 0.0
        if self.schedule == "constant":
            return self.p0
        if self.schedule == "linear":
            return self.p0 + (self.p1 - self.p0) * t
        if self.schedule == "cosine":
            return self.p0 + (self.p1 - self.p0) * (1.0 - math.cos(math.pi * t)) / 2.0
        return self.p0 if epoch < self.at * num_epochs else self.p1

    def max_rate(self, num_epochs: int | None = None) -> float:
        """The largest rate of the schedule: the one rule for it (config checks, the report's marks).

        With ``num_epochs``, the largest rate of a run of that many epochs (the report marks it on every
        curve: robustness measured beyond the highest training rate is extrapolation). Without, the
        bound that holds for every run length: p0 for ``constant``, max(p0, p1) otherwise (what a
        config must stay valid for before its run length is known).
        """
        if num_epochs is None:
            return self.p0 if self.schedule == "constant" else max(self.p0, self.p1)
        if num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
        return max(self.rate(epoch, num_epochs) for epoch in range(num_epochs))


def zeroed_masks(view: View, valid: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``View.zeroed`` of each modality: the three (B, T_m) masks of positions the model sees as zeros."""
    return tuple(view.zeroed(m, valid[m]) for m in range(len(MODALITIES)))


def slice_view(view: View, index: slice | Tensor) -> View:
    """The rows ``index`` (a slice or a LongTensor of sample indices) of a view, e.g. one test batch."""
    return View(present=view.present[index], drop=tuple(d[index] for d in view.drop))
