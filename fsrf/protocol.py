"""The evaluation protocol (SPEC section 2): the test conditions, how a model is scored under them, and
the one number a study selects and tunes on.

A test condition is a ``Condition`` value: what is lost (its ``kind`` and the fields that kind needs),
the name written for MLflow and the tables (``la``, ``intra_0.3``, ``burst_0.4``, ``intra_a_0.3``,
``rates_l0.9_a0.3_v0.3``), and its fixed mask (``Condition.view``). A name is only ever written: code
that needs to know what a condition means keeps the value, never parses the name back.

- Table I: ``TABLE``, the seven present-modality sets; ``MISSING``, the six whose mean is ``avg_missing``.
- Fig. 2: ``INTRA``, every modality loses frames at p = 0.1 .. 1.0; ``intra_avg`` is their mean.
- Extensions, not in the paper: ``BURST`` (one contiguous block per modality), the per-modality curves
  (``modality_curve``, one modality at a time), ``rates`` conditions (each modality its own rate,
  from ``eval.modality_rates``) and ``ZEROED`` (``eval.zeroed_curve``: the intra curve with words lost
  the section 2 way, below).

How a word is lost (SPEC 7). Every condition that drops words (``intra_p``, ``intra_l_p``, ``rates_*``
with a language rate > 0, and ``burst_p``, whose block of words is dropped the same way: one rule for
every dropped word) drops them *before* the encoder: their token ids become ``[UNK]`` and the damaged
utterance is encoded, every state (kept words and [UNK]) counting in the mean, as a fine-tuned (live)
encoder does by itself. With the frozen encoder the damaged utterances are encoded once per (encoder,
data, mask seed, condition) and cached on disk (``fsrf.text.FrozenText``); the split carries them as
``SplitTensors.words``. ``zeroed_p`` keeps section 2's semantics for comparison: the same masks as
``intra_p``, but the complete utterance is encoded and the dropped tokens' states are zeroed, so the kept
states still carry the dropped words (frozen encoder only). Audio and visual frames are zeroed in both.

A leakage floor (extension, ``eval.shuffled_floor``): a ``Shuffled`` control scores a Table I condition
with one present modality's features permuted across the split's samples, each sample keeping its own
valid mask and length (``la_shuffled_a``); what survives is what the model gets from that modality
without its content. On a sound model and data where the modality carries nothing about the label
beyond its content, the score falls to what the other present modalities give (chance for a
one-modality condition); a score that stays up means the length or padding leaks (``shuffled_floor``).

Scoring: ``evaluate`` gives every metric under a list of conditions as flat
``<prefix>/<metric>/<condition name>`` numbers, with the summaries of ``summarise``; ``representations``
scores one condition; ``predict`` scores a bare ``View`` (which says which positions are lost, not how:
cached text states are zeroed there).

Axis legend: N samples of a split, T_m positions of modality m (padded), M modalities of the model,
D its width; 3 modalities in the fixed order (l, a, v) of ``fsrf.MODALITIES``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from fsrf import MODALITIES
from fsrf.metrics import sentiment_metrics
from fsrf.missing import View, burst_drop, intra_drop, slice_view, zeroed_masks

if TYPE_CHECKING:  # fsrf.train imports this module; the types are only annotations here
    from fsrf.model import FSRF
    from fsrf.train import SplitTensors

HEADLINE = "Non0_F1_score"  # SPEC section 5: the headline metric
OBJECTIVE_CONDITION = "objective"  # the summary condition the study optimises (see ``summarise``)
OBJECTIVE = f"val/{HEADLINE}/{OBJECTIVE_CONDITION}"  # per epoch, validation only
BEST_OBJECTIVE = f"best/{OBJECTIVE}"  # the tuning study's objective: the objective at the selected epoch
SELECTION_RULE = f"epoch with the best {OBJECTIVE} (one rule for every seed and metric)"

# round() so that 0.3 is the decimal 0.3 (not 0.30000000000000004) and names read "intra_0.3".
INTRA_POINTS = tuple(round(0.1 * k, 1) for k in range(1, 11))  # Fig. 2's curve
BURST_POINTS = (0.2, 0.4, 0.6, 0.8, 1.0)  # extension, not in the paper
# The rates a ``rates`` condition may give a modality: 0 (kept complete) or one of the intra points,
# whose per-modality masks it reuses.
RATE_GRID = (0.0, *INTRA_POINTS)

Kind = Literal["table", "intra", "burst", "modality", "rates", "zeroed"]
KINDS: tuple[Kind, ...] = ("table", "intra", "burst", "modality", "rates", "zeroed")
# The fields each kind is made of; every other field stays None.
_FIELDS = {"table": ("present",), "intra": ("rate",), "burst": ("rate",), "modality": ("modality", "rate"),
           "rates": ("rates",), "zeroed": ("rate",)}
# Table I's present sets in their order; the order fixes the table conditions' mask seeds (0..6).
_TABLE_SETS = (("l",), ("a",), ("v",), ("l", "a"), ("l", "v"), ("a", "v"), ("l", "a", "v"))
_MAX_SEED = 2**32 // 1000  # torch's CPU generator (mt19937) keeps only the low 32 bits of a seed


def _on_grid(value: object, grid: tuple[float, ...], what: str, why: str = "") -> float:
    """``value`` as the grid point it equals (0.30000000000000004 -> 0.3); refuses anything else."""
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        for point in grid:
            if abs(value - point) <= 1e-9:  # NaN compares False: refused
                return point
    raise ValueError(f"{what} must be one of {', '.join(map(str, grid))}{why}, got {value!r}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _MAX_SEED:
        raise ValueError(f"seed must be an int in [0, {_MAX_SEED}), got {seed!r}")


@dataclass(frozen=True)
class Condition:
    """One test condition of the protocol: what a whole split loses, its written name, and its fixed mask.

    - ``Condition("table", present=("l", "a"))`` (or ``present="la"``): the named modalities present,
      the others absent whole, no frame dropped (Table I; the name is the set, ``la``);
    - ``Condition("intra", rate=p)``: every available modality drops each valid frame w.p. p (``intra_p``);
    - ``Condition("burst", rate=p)``: every available modality loses one block of round(p * length)
      frames (``burst_p``);
    - ``Condition("modality", modality="a", rate=p)``: only that modality drops frames, w.p. p, the
      others stay complete (``intra_a_p``);
    - ``Condition("rates", rates=(r_l, r_a, r_v))``: each modality drops frames at its own rate, with the
      masks of its own ``modality`` condition (``rates_l0.9_a0.3_v0.3``);
    - ``Condition("zeroed", rate=p)``: the masks of ``intra_p``, words lost the section 2 way (their
      cached states zeroed) instead of as ``[UNK]`` before the encoder (``zeroed_p``; ``word_drop``).
    Rates must lie on their grid (``INTRA_POINTS``, ``BURST_POINTS``, ``RATE_GRID`` for ``rates``) and
    are stored as the grid value; anything else is refused here, with the field's name.
    """

    kind: Kind
    rate: float | None = None  # intra, burst, modality: the drop ratio p
    modality: str | None = None  # modality: the one that loses frames, one of (l, a, v)
    present: tuple[str, ...] | None = None  # table: the present modalities, in (l, a, v) order
    rates: tuple[float, float, float] | None = None  # rates: the (l, a, v) drop ratios

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Condition.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for field in ("rate", "modality", "present", "rates"):
            needed = field in _FIELDS[self.kind]
            if needed != (getattr(self, field) is not None):
                raise ValueError(f"Condition.{field} is {'needed' if needed else 'not used'} by kind {self.kind!r}")
        # frozen: object.__setattr__ is the one sanctioned way to store the normalised value
        if self.kind == "table":
            present = tuple(self.present) if isinstance(self.present, (str, tuple, list)) else ()
            if not present or any(m not in MODALITIES for m in present) or len(set(present)) != len(present):
                raise ValueError(f"Condition.present must be a non-empty set of modalities from {MODALITIES}, "
                                 f"got {self.present!r}")
            object.__setattr__(self, "present", tuple(m for m in MODALITIES if m in present))
        elif self.kind == "rates":
            if not isinstance(self.rates, (tuple, list)) or len(self.rates) != 3:
                raise ValueError(f"Condition.rates must hold 3 numbers (l, a, v), got {self.rates!r}")
            object.__setattr__(self, "rates", tuple(
                _on_grid(r, RATE_GRID, f"Condition.rates[{m}]", " (each modality reuses the masks of its "
                                                                 "intra_<m>_<p> points)")
                for m, r in zip(MODALITIES, self.rates)))
        else:
            grid = BURST_POINTS if self.kind == "burst" else INTRA_POINTS  # intra, modality, zeroed
            object.__setattr__(self, "rate", _on_grid(self.rate, grid, f"Condition.rate of kind {self.kind!r}"))
            if self.kind == "modality" and self.modality not in MODALITIES:
                raise ValueError(f"Condition.modality must be one of {MODALITIES}, got {self.modality!r}")

    @property
    def name(self) -> str:
        """The name written for MLflow, metrics.json and the report (never parsed back)."""
        if self.kind == "table":
            return "".join(self.present)
        if self.kind == "modality":
            return f"intra_{self.modality}_{self.rate}"
        if self.kind == "rates":
            return "rates_" + "_".join(f"{m}{r}" for m, r in zip(MODALITIES, self.rates))
        return f"{self.kind}_{self.rate}"  # intra_0.3, burst_0.4, zeroed_0.3

    @property
    def word_drop(self) -> Literal["unk", "zeroed"]:
        """How the condition takes a dropped word away: ``"unk"`` (its id becomes [UNK] before the encoder,
        SPEC 7) for every kind but ``zeroed`` (its cached state becomes zero, SPEC 2)."""
        return "zeroed" if self.kind == "zeroed" else "unk"

    def __str__(self) -> str:
        return self.name

    def applies_to(self, available: Sequence[str]) -> bool:
        """Whether the condition makes sense for data carrying ``available`` modalities.

        Table conditions need their modalities; per-modality and ``rates`` conditions need two or more
        modalities (with one, the ``intra`` curve is already that modality's curve) and, for a
        per-modality one, its modality.
        """
        if self.kind == "table":
            return set(self.present) <= set(available)
        if self.kind == "modality":
            return len(available) > 1 and self.modality in available
        if self.kind == "rates":
            return len(available) > 1
        return True

    def _mask_index(self) -> int:
        """A stable number in [0, 1000) for the condition, from its fields (not from a list's order).

        Table conditions 0..6, intra 100 + 10p, burst 200 + 10p, per-modality 300 + 100k + 10p for the
        k-th modality of (l, a, v): adding or reordering conditions never changes the masks of existing
        ones. ``rates`` conditions have none: they reuse the masks of their per-modality parts; ``zeroed``
        ones share intra's (the two ways to lose a word are compared on the same words).
        """
        if self.kind == "table":
            return _TABLE_SETS.index(self.present)
        if self.kind == "rates":
            raise ValueError("a rates condition has no mask seed of its own: it reuses its per-modality masks")
        if self.kind == "modality":
            return 300 + 100 * MODALITIES.index(self.modality) + round(10 * self.rate)
        return {"intra": 100, "zeroed": 100, "burst": 200}[self.kind] + round(10 * self.rate)

    def _generator(self, seed: int) -> torch.Generator:
        """A generator fixed by (seed, condition) alone: seeded with seed * 1000 + ``_mask_index``.

        Not hash(): str hashes are salted per process, and the masks must be the same in every process,
        for every model and every call. The seed must fit in 32 bits, as mt19937 silently drops the rest
        (two seeds 2**32 apart give the same stream), so distinct (seed, condition) pairs stay distinct.
        """
        _check_seed(seed)
        return torch.Generator().manual_seed(seed * 1000 + self._mask_index())

    def view(self, valid: Sequence[Tensor], *, seed: int, available: Sequence[str] = MODALITIES) -> View:
        """The fixed view of a whole split (B = N) under this condition.

        ``valid`` holds the three (N, T_m) masks in (l, a, v) order (an (N, 0) mask for a modality the
        dataset lacks). Modalities not in ``available`` are always absent. The masks depend on (seed,
        condition) only, so two models evaluated with the same seed see identical masks; take a batch's
        rows with ``fsrf.missing.slice_view``.
        """
        if not self.applies_to(available):
            valid_names = [c.name for c in conditions_for(available) + per_modality_conditions(available)]
            rates_hint = (" and rates_l<r>_a<r>_v<r> with r in " + ", ".join(map(str, RATE_GRID))
                          if len(available) > 1 else "")
            raise ValueError(f"test condition {self.name!r} does not apply to modalities {tuple(available)}; "
                             f"valid: {', '.join(valid_names)}{rates_hint}")
        if len(valid) != 3:
            raise ValueError(f"valid must hold 3 masks (l, a, v), got {len(valid)}")
        _check_seed(seed)
        n = valid[0].shape[0]
        has = torch.tensor([m in available for m in MODALITIES])  # (3,)
        none = tuple(torch.zeros_like(mask, dtype=torch.bool) for mask in valid)
        if self.kind == "table":
            present = torch.tensor([m in self.present for m in MODALITIES]) & has
            drops = none
        elif self.kind == "rates":
            present = has
            drops = tuple(_one_modality_drop(m, mask, r, seed=seed) if has[m] and r > 0 else none[m]
                          for m, (mask, r) in enumerate(zip(valid, self.rates)))
        elif self.kind == "modality":
            k = MODALITIES.index(self.modality)
            present = has
            drops = tuple(_one_modality_drop(m, mask, self.rate, seed=seed) if m == k else none[m]
                          for m, mask in enumerate(valid))
        else:
            dropper = burst_drop if self.kind == "burst" else intra_drop  # intra, zeroed
            generator = self._generator(seed)
            present = has
            # A lacking modality is absent anyway; skipping it keeps an available one's mask independent of it.
            drops = tuple(dropper(mask, self.rate, generator=generator) if has[m] else none[m]
                          for m, mask in enumerate(valid))
        return View(present=present.expand(n, 3).clone().to(valid[0].device), drop=drops)


def _one_modality_drop(m: int, mask: Tensor, p: float, *, seed: int) -> Tensor:
    """The (N, T_m) drop mask of modality ``m`` in its per-modality condition at ratio p, shared by every
    ``rates`` condition that gives m the rate p, so that a rates condition differs from it only in the
    other modalities."""
    return intra_drop(mask, p, generator=Condition("modality", modality=MODALITIES[m], rate=p)._generator(seed))


TABLE = tuple(Condition("table", present=s) for s in _TABLE_SETS)  # Table I: l, a, v, la, lv, av, lav
MISSING = TABLE[:-1]  # the six whose mean is `avg_missing`
INTRA = tuple(Condition("intra", rate=p) for p in INTRA_POINTS)  # Fig. 2's curve, mean `intra_avg`
BURST = tuple(Condition("burst", rate=p) for p in BURST_POINTS)
# ``eval.zeroed_curve``: intra's masks, words lost as zeroed cached states (SPEC 2), mean ``zeroed_avg``
ZEROED = tuple(Condition("zeroed", rate=p) for p in INTRA_POINTS)


def modality_curve(m: str) -> tuple[Condition, ...]:
    """The ten per-modality conditions of modality ``m`` (p = 0.1 .. 1.0), mean ``intra_<m>_avg``."""
    return tuple(Condition("modality", modality=m, rate=p) for p in INTRA_POINTS)


def complete_condition(modalities: Sequence[str]) -> Condition:
    """The complete-input condition reported beside the objective: every modality the data has present
    (``lav``; ``la`` for text with audio; ``l`` for text alone)."""
    return Condition("table", present=tuple(modalities))


def _check_modalities(modalities: Sequence[str]) -> None:
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {tuple(modalities)}")


def conditions_for(modalities: Sequence[str] = MODALITIES, *, burst: bool = True) -> list[Condition]:
    """The ordered test conditions that make sense for a dataset carrying ``modalities``.

    Table conditions whose modalities the dataset has (all 7 with (l, a, v); only ``l`` with text
    alone), then the ten intra points, then (``burst=True``) the burst points; intra and burst act on
    every modality the dataset has. The per-modality extension is ``per_modality_conditions``.
    """
    _check_modalities(modalities)
    table = [c for c in TABLE if c.applies_to(modalities)]
    return table + list(INTRA) + (list(BURST) if burst else [])


def per_modality_conditions(modalities: Sequence[str] = MODALITIES, *,
                            rates: Iterable[Sequence[float]] = ()) -> list[Condition]:
    """The per-modality test conditions (extension, not in the paper) for data carrying ``modalities``.

    For each modality m the data has, its curve (``modality_curve``): m's valid positions are dropped at
    p = 0.1 .. 1.0 and the other modalities stay complete (which modality's loss hurts most); then one
    ``rates`` condition per (l, a, v) triple of ``rates`` (``eval.modality_rates``): every modality
    dropped at its own rate at once. Empty for single-modality data, whose only curve is ``INTRA``.
    """
    _check_modalities(modalities)
    if len(modalities) < 2:
        return []
    curves = [c for m in MODALITIES if m in modalities for c in modality_curve(m)]
    return curves + [Condition("rates", rates=tuple(r)) for r in rates]


@functools.cache
def all_rates_conditions() -> tuple[Condition, ...]:
    """Every ``rates`` condition there is (each modality one rate of ``RATE_GRID``: 11^3), in grid order.

    ``eval.modality_rates`` picks a few of them to evaluate; a reader of results looks up which ones a
    run has by their names, rather than parsing column names back into rates.
    """
    return tuple(Condition("rates", rates=(l, a, v)) for l in RATE_GRID for a in RATE_GRID for v in RATE_GRID)


def summarise(per_cond: dict[Condition, dict[str, float]], *, prefix: str,
              modalities: Sequence[str]) -> dict[str, float]:
    """Flatten per-condition metrics to ``<prefix>/<metric>/<name>`` and add the summaries of SPEC section 2.

    ``intra_avg``: mean over the ten ``INTRA`` points (all must be given); ``burst_avg``: over the burst
    conditions given; ``intra_<m>_avg``: over modality m's curve, ``zeroed_avg`` over ``ZEROED``, when all
    ten are given; with all three
    modalities ``avg_missing`` over ``MISSING`` (the paper's six; data with two modalities has none: a
    mean over its two would read as Table I's and is not one); ``objective`` (what selection and tuning
    read): over the Table I conditions the data has and ``INTRA`` (``TABLE``; ``l``, ``a``, ``la`` for
    text with audio; ``l`` for text alone).
    """
    missing = [c.name for c in INTRA if c not in per_cond]
    if missing:
        raise ValueError(f"summarise needs every intra point; missing {', '.join(missing)}")
    flat = {f"{prefix}/{k}/{c.name}": v for c, ms in per_cond.items() for k, v in ms.items()}
    groups: dict[str, list[Condition]] = {"intra_avg": list(INTRA)}
    burst = [c for c in per_cond if c.kind == "burst"]
    if burst:
        groups["burst_avg"] = burst
    for m in MODALITIES:  # the per-modality curves, when evaluated (not part of the objective)
        curve = list(modality_curve(m))
        if all(c in per_cond for c in curve):
            groups[f"intra_{m}_avg"] = curve
    if all(c in per_cond for c in ZEROED):  # eval.zeroed_curve (not part of the objective)
        groups["zeroed_avg"] = list(ZEROED)
    if len(modalities) == 3:
        groups["avg_missing"] = list(MISSING)
    groups[OBJECTIVE_CONDITION] = [c for c in TABLE if c.applies_to(modalities)] + list(INTRA)
    for metric in next(iter(per_cond.values())):
        for name, conds in groups.items():
            flat[f"{prefix}/{metric}/{name}"] = float(np.mean([per_cond[c][metric] for c in conds]))
    return flat


@dataclass(frozen=True)
class Shuffled:
    """A leakage control: Table I ``condition`` scored with ``modality``'s features permuted across samples.

    Sample i reads the features of sample perm[i] of that modality under its own valid mask: its length
    and padding stay, and its valid positions are filled with perm[i]'s valid frames (tokens) in order,
    repeated from the start where sample i is the longer (``shuffle_modality``), so only the content
    moves. Repeating, rather than reading perm[i]'s padding there, matters: zeros in place of content
    would scale a mean by len(perm[i]) / len(i), and so let sample i's own length back into the score. The permutation depends on (seed, modality) alone
    (``shuffle_permutation``): every condition and every model sees the same one. The name,
    ``<condition>_shuffled_<modality>`` (``la_shuffled_a``), is one segment, so that a
    ``test/<metric>/<name>`` metric is never read as the unshuffled condition's; it is only written.
    """

    condition: Condition
    modality: str

    def __post_init__(self) -> None:
        if self.condition.kind != "table":
            raise ValueError(f"Shuffled.condition must be a Table I condition, got {self.condition.name!r}")
        if self.modality not in self.condition.present:
            raise ValueError(f"Shuffled.modality must be present in {self.condition.name!r}, got {self.modality!r}")

    @property
    def name(self) -> str:
        return f"{self.condition.name}_shuffled_{self.modality}"

    def __str__(self) -> str:
        return self.name


def shuffled_controls(modalities: Sequence[str]) -> list[Shuffled]:
    """The leakage controls of data carrying ``modalities``: for each missing-modality Table I condition
    it has (``MISSING``; with text alone, ``l``) and each modality present in it, in Table I order."""
    _check_modalities(modalities)
    return [Shuffled(c, m) for c in MISSING if c.applies_to(modalities) for m in c.present]


_SHUFFLE_INDEX = 900  # mask seeds use seed * 1000 + [0, 600); the permutations take 900 + k for modality k


def shuffle_permutation(n: int, modality: str, *, seed: int) -> Tensor:
    """The fixed permutation (n,) int64 of a ``Shuffled`` control of ``modality``: seeded by seed * 1000 +
    900 + its index in (l, a, v), so it depends on (seed, modality, n) only, like a condition's mask."""
    _check_seed(seed)
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    gen = torch.Generator().manual_seed(seed * 1000 + _SHUFFLE_INDEX + MODALITIES.index(modality))
    return torch.randperm(n, generator=gen)


def shuffle_modality(data: SplitTensors, modality: str, *, seed: int) -> SplitTensors:
    """A copy of ``data`` whose ``modality`` features (cached text states or token ids, audio or vision
    frames) are permuted across samples by ``shuffle_permutation``; every valid mask, the labels and the
    other modalities stay. Valid position t of sample i reads valid frame t mod len(perm[i]) of sample
    perm[i] (valid positions are a prefix of each row); padding keeps sample i's own values. The copy
    has no word-drop encoder (``words``): Table I conditions drop none."""
    field = {"l": "text", "a": "audio", "v": "vision"}[modality]
    feats, valid = getattr(data.inputs, field), getattr(data.inputs, f"{field}_valid")
    if feats is None:
        raise ValueError(f"the split has no {field} to shuffle")
    perm = shuffle_permutation(len(data), modality, seed=seed)  # (N,)
    donor_len = valid[perm].sum(1).clamp(min=1)  # (N,)
    t = torch.arange(valid.shape[1])[None, :] % donor_len[:, None]  # (N, T) donor frame per position
    moved = feats[perm[:, None], t]  # (N, T, d), or (N, T) token ids
    keep = valid if moved.ndim == 2 else valid[..., None]
    inputs = dataclasses.replace(data.inputs, **{field: torch.where(keep, moved, feats)})
    return dataclasses.replace(data, inputs=inputs, words=None, patterns=None)


CHANCE_PERMUTATIONS = 20  # label permutations behind a control's chance level


def permutation_chance(preds: np.ndarray, labels: np.ndarray, *, seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """The chance level of predictions ``preds``: every metric's mean and std over ``CHANCE_PERMUTATIONS``
    fixed permutations of ``labels`` (seeded by ``seed``), i.e. what predictions with the same
    distribution but independent of the labels score. For the F1 and accuracy metrics this is about 50
    on balanced labels, above a constant prediction's score (a constant's weighted F1 is about 33)."""
    gen = np.random.default_rng([seed, 977])
    runs = [sentiment_metrics(preds, labels[gen.permutation(len(labels))]) for _ in range(CHANCE_PERMUTATIONS)]
    mean = {k: float(np.nanmean([r[k] for r in runs])) for k in runs[0]}
    sd = {k: float(np.nanstd([r[k] for r in runs], ddof=1)) for k in runs[0]}
    return mean, sd


def shuffled_floor(model: FSRF, data: SplitTensors, controls: Sequence[Shuffled], *, modalities: tuple[str, ...],
                   seed: int, batch_size: int, prefix: str) -> dict[str, float]:
    """Every metric under each leakage control (``Shuffled``), flat ``<prefix>/<metric>/<control name>``,
    with the control's chance level (``permutation_chance``) as ``<control name>_chance`` and its
    spread as ``<control name>_chance_sd``.

    Compare ``test/Non0_F1_score/la_shuffled_a`` with ``test/Non0_F1_score/la`` (what the audio content
    adds) and with ``l`` (what the model would get without audio); a one-modality control
    (``a_shuffled_a``) above its chance by more than the chance's spread is a leak. One data copy per
    shuffled modality, scored by ``_scores`` under the controls' Table I conditions (``seed`` is the
    eval mask seed).
    """
    out: dict[str, float] = {}
    for m in MODALITIES:
        mine = [c for c in controls if c.modality == m]
        if not mine:
            continue
        shuffled = shuffle_modality(data, m, seed=seed)
        preds = _scores(model, shuffled, [c.condition for c in mine], modalities=modalities, mask_seed=seed,
                        batch_size=batch_size)
        for c in mine:
            p, y = preds[c.condition].numpy(), data.labels.numpy()
            chance, spread = permutation_chance(p, y, seed=seed)
            for k, v in sentiment_metrics(p, y).items():
                out[f"{prefix}/{k}/{c.name}"] = v
                out[f"{prefix}/{k}/{c.name}_chance"] = chance[k]
                out[f"{prefix}/{k}/{c.name}_chance_sd"] = spread[k]
    return out


# ---------------------------------------------------------------- scoring a model


@torch.no_grad()
def predict(model: FSRF, data: SplitTensors, view: View, *, batch_size: int) -> Tensor:
    """Scores (N,) of a whole split under one fixed ``View``, its lost positions zeroed (cached text states
    too: a bare view does not say how a word is lost; ``evaluate`` scores the protocol's conditions)."""
    model.eval()
    valid = data.inputs.valid()
    zeroed = zeroed_masks(view, valid)
    preds = []
    for i in range(0, len(data), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(data)))
        preds.append(model(data.batch(idx), view.present[idx], tuple(z[idx] for z in zeroed)).score)
    return torch.cat(preds)


@torch.no_grad()
def representations(model: FSRF, data: SplitTensors, *, modalities: tuple[str, ...], batch_size: int,
                    condition: Condition | None = None) -> dict[str, np.ndarray]:
    """R_ho, R_he, R_n (N, M, D), Z (N, D) and the score (N,) of a split under one condition (analysis).

    ``condition`` defaults to the complete input (``complete_condition``); masks use seed 0. Words are
    lost as the condition says (``word_states``).
    """
    model.eval()
    valid = data.inputs.valid()
    condition = condition or complete_condition(modalities)
    view = condition.view(valid, seed=0, available=modalities)
    zeroed = list(zeroed_masks(view, valid))
    states, zeroed[0] = word_states(data, condition, view)
    parts: dict[str, list] = {}
    for i in range(0, len(data), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(data)))
        out = model(_batch(data, idx, states), view.present[idx], tuple(z[idx] for z in zeroed))
        for name in ("ho", "he", "noise", "z", "score"):
            value = getattr(out, name)
            if value is not None:
                parts.setdefault(name, []).append(value.float().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def word_states(data: SplitTensors, condition: Condition, view: View) -> tuple[np.ndarray | None, Tensor]:
    """What the language encoder reads under ``condition`` (whose fixed view is ``view``): (states, zeroed).

    ``states`` (N, T_l, d_l) float16 replaces the split's cached text states, None keeps them; ``zeroed``
    (N, T_l) bool marks the positions the encoder sees as zeros. With the frozen encoder, a condition
    that drops words (``word_drop == "unk"``) reads the utterances encoded with the dropped ids as
    ``[UNK]`` (``SplitTensors.words``, cached on disk), nothing zeroed but an absent utterance; a
    ``zeroed`` condition reads the complete utterances' states with the dropped ones zeroed. A live
    encoder reads token ids and turns the zeroed positions into ``[UNK]`` itself (``TextEncoder``); it
    has no zeroed-state semantics, so ``zeroed_p`` is refused for it.
    """
    valid = data.inputs.text_valid
    zeroed = view.zeroed(0, valid)  # (N, T_l)
    dropped = bool(view.drop[0].any())
    if not data.inputs.text.is_floating_point():  # live encoder: token ids
        if condition.word_drop == "zeroed" and dropped:
            raise ValueError(f"condition {condition.name} zeroes cached encoder states: it needs the frozen "
                             "encoder (encoder.finetune = false)")
        return None, zeroed
    if condition.word_drop == "zeroed" or not dropped:
        return None, zeroed
    if data.words is None:
        raise ValueError(f"condition {condition.name} drops words before the encoder: the split needs its token "
                         "ids and frozen encoder (SplitTensors.words, which fsrf.train.prepare gives)")
    states = data.words.unk_states(view.drop[0].cpu().numpy(), label=condition.name)
    return states, valid & ~view.present[:, :1]  # an absent utterance stays all zeros


def _batch(data: SplitTensors, idx: Tensor, states: np.ndarray | None):
    """The inputs of rows ``idx``, the text states taken from ``states`` when given (``word_states``)."""
    x = data.batch(idx)
    if states is not None:
        x.text = torch.from_numpy(np.asarray(states[idx.numpy()], dtype=np.float32))  # (b, T_l, d_l)
    return x


@torch.no_grad()
def _scores(model: FSRF, data: SplitTensors, conditions: Sequence[Condition], *, modalities: tuple[str, ...],
            mask_seed: int, batch_size: int, keep: dict | None = None) -> dict[Condition, Tensor]:
    """Scores (N,) under each condition, every modality encoded only where the condition changes it.

    Each modality is encoded on its own (``FSRF.encode_modality``), so under a condition that keeps
    modality m complete H_m equals H_m of the complete input, and under one that removes m whole, H_m of
    the absent input; both are computed once for the split. Only a modality that loses some positions
    is encoded under the condition itself. The seven Table I conditions thus cost two encoder passes in
    all, and a per-modality point ``intra_a_p`` one audio pass; the (cheap) factorization and head run
    per condition. Batches are the same for every condition, so a score equals that of ``predict`` on
    the same inputs; the language modality reads what ``word_states`` gives (with the frozen encoder, a
    word-dropping condition's [UNK]-encoded utterances: one encoder pass per condition, on its first
    evaluation only, then read from the disk cache).
    """
    model.eval()
    valid = data.inputs.valid()
    n = len(data)
    batches = [torch.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    whole: dict[bool, Tensor] = {}  # present -> H (N, M, D) with every modality complete / absent

    def reused(present: bool) -> Tensor:
        if present not in whole:
            flags = torch.full((n, len(MODALITIES)), present)
            zeroed = tuple(torch.zeros_like(v) if present else v for v in valid)  # absent: every valid position
            whole[present] = torch.cat([model.encode(data.batch(idx), flags[idx], tuple(z[idx] for z in zeroed))
                                        for idx in batches])
        return whole[present]

    out = {}
    for cond in conditions:
        view = cond.view(valid, seed=mask_seed, available=modalities)
        how = []  # per model modality: True (complete), False (absent) or None (encode under the view)
        for m in model.modalities:
            i = MODALITIES.index(m)
            present = view.present[:, i]
            how.append(False if not present.any() else True if present.all() and not view.drop[i].any() else None)
        states, text_zeroed = None, None
        if "l" in model.modalities and how[model.modalities.index("l")] is None:
            states, text_zeroed = word_states(data, cond, view)
        scores = []
        for idx in batches:
            x = _batch(data, idx, states) if None in how else None
            part = slice_view(view, idx)
            h = []
            for k, m in enumerate(model.modalities):
                i = MODALITIES.index(m)
                zeroed = text_zeroed[idx] if m == "l" and text_zeroed is not None else part.zeroed(i, valid[i][idx])
                h.append(reused(how[k])[idx, k] if how[k] is not None else
                         model.encode_modality(x, m, part.present[:, i], zeroed))
            scores.append(model.factorize(torch.stack(h, 1), part.present).score)  # (b, M, D) -> (b,)
        out[cond] = torch.cat(scores)
    if keep is not None and True in whole:
        keep["complete_h"] = whole[True]  # (N, M, D): the complete input's H, for the health metrics
    return out


def evaluate(model: FSRF, data: SplitTensors, conditions: Sequence[Condition], *, modalities: tuple[str, ...],
             mask_seed: int, batch_size: int, prefix: str, keep: dict | None = None) -> dict[str, float]:
    """Every metric under each of ``conditions``, flat ``<prefix>/<metric>/<name>``, with ``summarise``'s
    summaries. Per-epoch validation passes ``conditions_for(modalities, burst=False)`` (what the
    objective reads); the test protocol adds the burst curve and ``per_modality_conditions`` (and
    ``ZEROED`` with ``eval.zeroed_curve``). ``keep``, a dict, receives ``complete_h`` (N, M, D), the
    complete input's modality encodings, when a condition needed them (``health.measure`` reuses them)."""
    preds = _scores(model, data, conditions, modalities=modalities, mask_seed=mask_seed, batch_size=batch_size,
                    keep=keep)
    per_cond = {c: sentiment_metrics(preds[c].numpy(), data.labels.numpy()) for c in conditions}
    return summarise(per_cond, prefix=prefix, modalities=modalities)
