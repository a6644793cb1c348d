"""Missing modalities for FSRF: the MRM views seen in training and the fixed masks of the test protocol.

SPEC section 2 is the contract. Two kinds of missingness act on a batch:
- *inter-modality*: a whole modality is absent (``View.present``);
- *intra-modality*: some valid frames (tokens for text) are dropped (``View.drop``).
A ``View`` only says *which* positions are lost; the model (or collate) turns them into zeros through
``View.zeroed``, so this file never touches features and works the same for cached text states, live
token ids (the caller maps a zeroed token to ``[UNK]``), audio and vision.

Axis legend: B samples in a batch (N for a whole split), T_m positions of modality m (padded),
3 modalities in the fixed order (l, a, v) of ``fsrf.MODALITIES``.

All randomness comes from a ``torch.Generator`` the caller seeds (CPU), and every function is
vectorised over the batch, so a seed reproduces a mask exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fsrf import MODALITIES

# Inter-modality test conditions of Table I, named by their present modalities.
TABLE_CONDITIONS = ("l", "a", "v", "la", "lv", "av", "lav")
MISSING_CONDITIONS = TABLE_CONDITIONS[:-1]  # the six whose mean is `avg_missing`
# round() so that 0.3 is the decimal 0.3 (not 0.30000000000000004) and names read "intra_0.3".
INTRA_POINTS = tuple(round(0.1 * k, 1) for k in range(1, 11))  # Fig. 2's curve
BURST_POINTS = (0.2, 0.4, 0.6, 0.8, 1.0)  # extension, not in the paper
# The rates a ``rates_`` condition may give a modality: 0 (kept complete) or one of the intra points,
# whose masks it reuses (``condition_view``).
RATE_GRID = (0.0, *INTRA_POINTS)

# The 7 non-empty modality sets, in TABLE_CONDITIONS order; presence is sampled as an index into it.
_SUBSETS = torch.tensor([[m in name for m in MODALITIES] for name in TABLE_CONDITIONS])  # (7, 3) bool


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


def _subset_probs(rate: float) -> Tensor:
    """P(present set = S) for the 7 non-empty sets, each modality missing w.p. ``rate``, given >= 1 survives.

    At rate = 1 every product is 0; we use the limit rate -> 1, where single-modality sets dominate
    ((1 - r) r^2 against (1 - r)^2 r for pairs): uniform over the three single-modality sets.
    """
    if rate == 1.0:
        weights = (_SUBSETS.sum(1) == 1).double()
    else:
        present = _SUBSETS.double()  # (7, 3)
        weights = (present * (1.0 - rate) + (1.0 - present) * rate).prod(1)  # (7,)
    return weights / weights.sum()


def sample_presence(
    n: int, *, rate: float, overlap: float | None = None, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Present-modality sets of the two MRM views S_p and S_q, each row keeping at least one modality.

    Each modality is missing independently with probability ``rate``, conditioned on at least one
    surviving; the set is drawn exactly from the 7 non-empty sets (see ``_subset_probs`` for rate = 1).
    ``overlap=None``: the two views are independent, as in the paper. ``overlap=o``: with probability o
    the q view copies p's set, otherwise q is drawn from the same distribution restricted to the sets
    different from p's (renormalised), so o is exactly P(same set). If p's set is the only one with
    positive probability (rate = 0: all present) there is nothing different to draw and q copies it.
    Returns (present_p, present_q), each (n, 3) bool.
    """
    _check_rate("rate", rate)
    if overlap is not None:
        _check_rate("overlap", overlap)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:  # multinomial refuses to draw nothing
        return _SUBSETS[:0], _SUBSETS[:0]
    probs = _subset_probs(rate)  # (7,)
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
    modality_scale: Sequence[float] = (1.0, 1.0, 1.0), generator: torch.Generator
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
    present_p, present_q = sample_presence(batch, rate=rate, overlap=overlap, generator=generator)
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


@dataclass(frozen=True)
class Schedule:
    """The training missing rate as a function of the epoch (a searched hyperparameter, SPEC section 2).

    - ``constant``: p0 throughout (p1 and at unused);
    - ``linear``: p0 at epoch 0 to p1 at the last epoch (num_epochs - 1);
    - ``cosine``: p0 + (p1 - p0) * (1 - cos(pi * t)) / 2, t = epoch / (num_epochs - 1);
    - ``step``: p0 while epoch < at * num_epochs, p1 from then on.
    A one-epoch run has t = 0 and so uses p0 for linear and cosine. ``p1`` defaults to p0.
    Wrong values are refused with the config field's name (``missing.p1 must be in [0, 1], got 1.3``).
    """

    kind: Literal["constant", "linear", "cosine", "step"]
    p0: float
    p1: float | None = None  # None: same as p0
    at: float = 0.5

    def __post_init__(self) -> None:
        kinds = ("constant", "linear", "cosine", "step")
        if self.kind not in kinds:
            raise ValueError(f"missing.kind must be one of {', '.join(kinds)}, got {self.kind!r}")
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
        if self.kind == "constant":
            return self.p0
        if self.kind == "linear":
            return self.p0 + (self.p1 - self.p0) * t
        if self.kind == "cosine":
            return self.p0 + (self.p1 - self.p0) * (1.0 - math.cos(math.pi * t)) / 2.0
        return self.p0 if epoch < self.at * num_epochs else self.p1

    def max_rate(self, num_epochs: int) -> float:
        """The largest rate of a run of ``num_epochs`` epochs (the report marks it on every curve:
        robustness measured beyond the highest training rate is extrapolation)."""
        if num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
        return max(self.rate(epoch, num_epochs) for epoch in range(num_epochs))


def intra_name(p: float) -> str:
    """Condition name of an intra-curve point, e.g. ``intra_0.3``."""
    return f"intra_{p}"


def burst_name(p: float) -> str:
    """Condition name of a burst point, e.g. ``burst_0.4``."""
    return f"burst_{p}"


def modality_name(m: str, p: float) -> str:
    """Condition name of a per-modality point, e.g. ``intra_a_0.3``: only audio loses positions, at ratio p."""
    return f"intra_{m}_{p}"


def _grid_rate(value: float, name: str) -> float:
    """A rate of a ``rates_`` condition, checked to lie on ``RATE_GRID`` and returned as its grid value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0 \
            or abs(10 * value - round(10 * value)) > 1e-9:
        raise ValueError(f"{name} must be one of {', '.join(map(str, RATE_GRID))} (each modality reuses the "
                         f"masks of its intra_<m>_<p> points), got {value!r}")
    return RATE_GRID[round(10 * value)]


def rates_name(rates: Sequence[float]) -> str:
    """Condition name of "each modality its own rate", e.g. ``rates_l0.3_a0.1_v0.5`` for (0.3, 0.1, 0.5)."""
    if len(rates) != 3:
        raise ValueError(f"rates must hold 3 numbers (l, a, v), got {tuple(rates)}")
    return "rates_" + "_".join(f"{m}{_grid_rate(r, f'rate of {m}')}" for m, r in zip(MODALITIES, rates))


_RATES = re.compile(r"rates_l([0-9.]+)_a([0-9.]+)_v([0-9.]+)")


def _parse_rates(name: str) -> tuple[float, float, float] | None:
    """The (l, a, v) rates of a ``rates_`` condition name; None if ``name`` is not one."""
    found = _RATES.fullmatch(name)
    if found is None:
        return None
    try:
        rates = tuple(_grid_rate(float(x), "rate") for x in found.groups())
    except ValueError:
        return None
    return rates if rates_name(rates) == name else None  # one spelling per condition: "0.3", not "0.30"


def _check_modalities(modalities: Sequence[str]) -> None:
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {tuple(modalities)}")


def all_conditions(modalities: Sequence[str] = MODALITIES) -> list[str]:
    """The ordered test conditions that make sense for a dataset carrying ``modalities``.

    Table conditions whose modalities the dataset has (all 7 with (l, a, v); only ``l`` with text
    alone), then the ten intra points, then the burst points; intra and burst act on every modality the
    dataset has. The per-modality extension is listed by ``modality_conditions``.
    """
    _check_modalities(modalities)
    table = [name for name in TABLE_CONDITIONS if set(name) <= set(modalities)]
    return table + [intra_name(p) for p in INTRA_POINTS] + [burst_name(p) for p in BURST_POINTS]


def modality_conditions(modalities: Sequence[str] = MODALITIES,
                        rates: Sequence[Sequence[float]] = ()) -> list[str]:
    """The per-modality test conditions (extension, not in the paper) for data carrying ``modalities``.

    For each modality m the data has, ``intra_<m>_<p>`` for p = 0.1 .. 1.0: m's valid positions are
    dropped at ratio p and the other modalities stay complete (which modality's loss hurts most); then
    one ``rates_l<r>_a<r>_v<r>`` per (l, a, v) triple of ``rates``: every modality dropped at its own
    rate at once. Empty for single-modality data, whose only curve is already ``intra_p``.
    """
    _check_modalities(modalities)
    if len(modalities) < 2:
        return []
    curves = [modality_name(m, p) for m in MODALITIES if m in modalities for p in INTRA_POINTS]
    return curves + [rates_name(r) for r in rates]


def _condition_index(name: str) -> int:
    """A stable number in [0, 1000) for a condition, from its name's structure (not from a list's order).

    Table conditions 0..6, ``intra_p`` 100 + 10p, ``burst_p`` 200 + 10p, ``intra_<m>_p`` 300 + 100k + 10p
    for the k-th modality of (l, a, v): adding or reordering conditions never changes the masks of
    existing ones. ``rates_`` conditions have none: they reuse the masks of their ``intra_<m>_p`` parts.
    """
    if name in TABLE_CONDITIONS:
        return TABLE_CONDITIONS.index(name)
    parts = name.split("_")
    if len(parts) == 3 and parts[0] == "intra" and parts[1] in MODALITIES:
        return 300 + 100 * MODALITIES.index(parts[1]) + round(10 * float(parts[2]))
    kind, p = parts
    return {"intra": 100, "burst": 200}[kind] + round(10 * float(p))


_MAX_SEED = 2**32 // 1000  # torch's CPU generator (mt19937) keeps only the low 32 bits of a seed


def _condition_generator(seed: int, name: str) -> torch.Generator:
    """A generator fixed by (seed, condition name) alone: seeded with seed * 1000 + the condition's index.

    Not hash(): str hashes are salted per process, and the masks must be the same in every process, for
    every model and every call. The seed must fit in 32 bits, as mt19937 silently drops the rest (two
    seeds 2**32 apart give the same stream), so distinct (seed, name) pairs stay distinct.
    """
    _check_seed(seed)
    return torch.Generator().manual_seed(seed * 1000 + _condition_index(name))


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _MAX_SEED:
        raise ValueError(f"seed must be an int in [0, {_MAX_SEED}), got {seed!r}")


def _one_modality_drop(m: int, mask: Tensor, p: float, *, seed: int) -> Tensor:
    """The (N, T_m) drop mask of modality ``m`` in ``intra_<m>_<p>``, shared by every ``rates_`` condition
    that gives m the rate p, so that a rates condition differs from it only in the other modalities."""
    return intra_drop(mask, p, generator=_condition_generator(seed, modality_name(MODALITIES[m], p)))


def condition_view(
    name: str, valid: Sequence[Tensor], *, seed: int, available: Sequence[str] = MODALITIES
) -> View:
    """The fixed view of a whole split (B = N) under one named test condition.

    ``valid`` holds the three (N, T_m) masks in (l, a, v) order (an (N, 0) mask for a modality the
    dataset lacks). Table conditions (``la``, ...) make the named modalities present and the others
    absent, with no drops; ``intra_p`` drops each valid position of every available modality w.p. p;
    ``burst_p`` drops one burst per available modality (``burst_drop``); ``intra_<m>_<p>`` drops valid
    positions of modality m only, w.p. p; ``rates_l<r>_a<r>_v<r>`` drops each available modality at its
    own rate, with the masks of the matching ``intra_<m>_<r>`` (``modality_conditions``). Modalities not
    in ``available`` are always absent. The masks depend on (seed, name) only, so two models evaluated
    with the same seed see identical masks; take a batch's rows with ``slice_view``.
    """
    names = all_conditions(available) + modality_conditions(available)
    rates = _parse_rates(name) if len(available) > 1 else None
    if name not in names and rates is None:
        rates_hint = (" and rates_l<r>_a<r>_v<r> with r in " + ", ".join(map(str, RATE_GRID))
                      if len(available) > 1 else "")
        raise ValueError(f"unknown test condition {name!r} for modalities {tuple(available)}; "
                         f"valid: {', '.join(names)}{rates_hint}")
    if len(valid) != 3:
        raise ValueError(f"valid must hold 3 masks (l, a, v), got {len(valid)}")
    _check_seed(seed)
    n = valid[0].shape[0]
    has = torch.tensor([m in available for m in MODALITIES])  # (3,)
    none = tuple(torch.zeros_like(mask, dtype=torch.bool) for mask in valid)
    parts = name.split("_")
    if name in TABLE_CONDITIONS:
        present = torch.tensor([m in name for m in MODALITIES]) & has
        drops = none
    elif rates is not None:
        present = has
        drops = tuple(_one_modality_drop(m, mask, r, seed=seed) if has[m] and r > 0 else none[m]
                      for m, (mask, r) in enumerate(zip(valid, rates)))
    elif len(parts) == 3:  # intra_<m>_<p>
        k = MODALITIES.index(parts[1])
        present = has
        drops = tuple(_one_modality_drop(m, mask, float(parts[2]), seed=seed) if m == k else none[m]
                      for m, mask in enumerate(valid))
    else:
        kind, p = parts
        dropper = intra_drop if kind == "intra" else burst_drop
        generator = _condition_generator(seed, name)
        present = has
        # A lacking modality is absent anyway; skipping it keeps an available one's mask independent of it.
        drops = tuple(dropper(mask, float(p), generator=generator) if has[m] else none[m]
                      for m, mask in enumerate(valid))
    return View(present=present.expand(n, 3).clone().to(valid[0].device), drop=drops)


def slice_view(view: View, index: slice | Tensor) -> View:
    """The rows ``index`` (a slice or a LongTensor of sample indices) of a view, e.g. one test batch."""
    return View(present=view.present[index], drop=tuple(d[index] for d in view.drop))
