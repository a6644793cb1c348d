"""The variants a robustness study compares: FSRF, its ablations and its baselines, each defined once.

A variant is a name plus the config changes that make it (SPEC section 3's switches), the words the
tables, figures and report use for it, and its place in them. Every other file asks this one:
``studies/robustness.py`` turns names into runs, ``studies/worker.py`` trains them (``closed_form``
variants are fitted without the training loop), ``studies/tune_lambdas.py`` names a tuned config, and
``analysis/`` orders, labels, colours and describes them. **Adding a variant is one entry in VARIANTS.**

Order matters: it is the report's order (FSRF first, ablations, then the baselines) and the colour
order of the figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Variant:
    """One compared method: what it changes in the config and how the report speaks of it."""

    name: str  # the value of the ``variant`` column and the ``fsrf.variant`` tag
    label: str  # short, for tables and legends ("w/o DHF")
    description: str  # one line for the report ("w/o DHF (no homo/heterogeneous factorisation)")
    overrides: Mapping[str, Any] = field(default_factory=dict)  # dotted config fields set for this variant
    baseline: bool = False  # compared with FSRF but not an ablation of it: left out of Table II
    default: bool = True  # part of a robustness study when ``--variants`` is not given
    closed_form: bool = False  # fitted without the training loop (``fsrf.baselines``), one "epoch"
    oracle: bool = False  # not a model: computed from the generator by the report (``fsrf.ceiling``), never run
    color: str | None = None  # a fixed figure colour; None: taken from the palette by position
    linestyle: str = "-"

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))


VARIANTS: tuple[Variant, ...] = (
    Variant("fsrf", "FSRF", "FSRF (the full model)"),
    Variant("no_dhf", "w/o DHF", "w/o DHF (no homo/heterogeneous factorisation)", {"model.dhf": False}),
    Variant("no_das", "w/o DAS", "w/o DAS (no self-distillation between the two MRM views)", {"model.das": False}),
    Variant("no_noise", "w/o noise", "w/o noise (no noise representation R_n)", {"model.noise": False}),
    # Both fusion baselines train on complete data (no MRM), as MultiBench's complete-data baseline does.
    # For late fusion that is sound under every test condition: each predictor learns from its own
    # modality only, so a missing one just leaves the mean. Early fusion meets, at test, an absent
    # modality's fixed H_m it never saw in training: how a model built for complete data fares.
    Variant("late_fusion", "Late fusion",
            "Late fusion (one predictor per modality, the mean of the present modalities' scores; trained on "
            "complete data only, without MRM: MultiBench's complete-data baseline)",
            {"model.dhf": False, "model.das": False, "model.fusion": "late", "missing.schedule": "constant",
             "missing.p0": 0.0, "missing.p1": 0.0}, baseline=True),
    Variant("early_fusion", "Early fusion",
            "Early fusion (the modality features concatenated and projected, one predictor; trained on "
            "complete data only, without MRM)",
            {"model.dhf": False, "model.das": False, "model.fusion": "early", "missing.schedule": "constant",
             "missing.p0": 0.0, "missing.p1": 0.0}, baseline=True),
    Variant("ridge", "Ridge (frozen states)",
            "Ridge (ridge regression on the frozen encoder's mean-pooled word states: the simplest baseline)",
            {"encoder.finetune": False}, baseline=True, default=False, closed_form=True,
            color="#4d4d4d", linestyle=":"),
    # Synthetic data only: the report computes it from the study's config (one row, no seeds).
    Variant("ceiling", "Ceiling",
            "Ceiling (the label's conditional expectation given what each condition leaves of the generator's "
            "latents, in closed form: the best any model can do in mean squared error; synthetic data only)",
            baseline=True, default=False, oracle=True, color="#000000", linestyle="--"),
)
BY_NAME: Mapping[str, Variant] = MappingProxyType({v.name: v for v in VARIANTS})
NAMES: tuple[str, ...] = tuple(BY_NAME)
DEFAULT: tuple[str, ...] = tuple(v.name for v in VARIANTS if v.default)
BASELINES: tuple[str, ...] = tuple(v.name for v in VARIANTS if v.baseline)
RUNNABLE: tuple[str, ...] = tuple(v.name for v in VARIANTS if not v.oracle)  # what a study can train
REFERENCE = "fsrf"  # what the ablations and baselines are compared against
ROBUSTNESS_BASELINE = "late_fusion"  # b(p) of MultiBench's effective robustness (SPEC section 5)


def get(name: str) -> Variant:
    """The variant called ``name``; a ValueError listing the known names otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(NAMES)}") from None


def parse_list(text: str) -> list[str]:
    """A comma list of variant names (``"fsrf,no_das"``), each checked; ValueError on an unknown or none,
    or on an oracle (the ceiling is computed by the report, not run)."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise ValueError(f"unknown variant '(none)'; choose from {', '.join(RUNNABLE)}")
    for name in names:
        if get(name).oracle:
            raise ValueError(f"variant {name!r} is not trained: the report computes it for synthetic studies; "
                             f"choose from {', '.join(RUNNABLE)}")
    return names


def run_overrides(name: str, *, seed: int, overlap: float | None = None, train_rate: float | None = None,
                  tuned: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dotted config changes of one run of variant ``name``, later ones winning: its own tuned values
    (a fair-ablation study), the variant's overrides, the seed and paired-mask overlap, and a constant
    training rate (the train x test grid: ``missing.schedule=constant``, ``missing.p0``)."""
    grid = {} if train_rate is None else {"missing.schedule": "constant", "missing.p0": train_rate}
    return {**(tuned or {}), **get(name).overrides, "seed": seed, "missing.overlap": overlap, **grid}


def label(name: str) -> str:
    """The short name of a variant for tables and legends; an unknown name is shown as it is."""
    return BY_NAME[name].label if name in BY_NAME else name


def description(name: str) -> str | None:
    return BY_NAME[name].description if name in BY_NAME else None


def is_baseline(name: str) -> bool:
    return name in BY_NAME and BY_NAME[name].baseline


def rank(name: str) -> float:
    """Sort key: the order of VARIANTS; an unknown variant goes just before the first baseline."""
    if name in BY_NAME:
        return float(NAMES.index(name))
    first_baseline = next((i for i, v in enumerate(VARIANTS) if v.baseline), len(VARIANTS))
    return first_baseline - 0.5


def ordered(names: Iterable[str]) -> list[str]:
    """Distinct ``names`` in the report's order (unknown ones by name among themselves)."""
    return sorted(set(names), key=lambda v: (rank(v), v))


def of_config(flat: Mapping[str, Any]) -> str:
    """The name of the variant a (flattened) config is: the trained variant whose overrides it meets and
    that switches off exactly the same parts (``model.dhf``/``das``/``noise``), else a name built from its
    switched-off parts (``no_dhf_das``), ``fsrf`` when none is off; a late fusion that is no variant is
    ``late`` plus its switched-off parts other than DHF, which late fusion never has (``late_no_das``)."""
    flat = {"model.fusion": "early", **flat}  # runs from before model.fusion existed fused early
    off = [part for part in _SWITCHES if flat.get(f"model.{part}") is False]
    fusion = flat["model.fusion"]
    for v in sorted(VARIANTS, key=lambda v: -len(v.overrides)):
        v_off = [part for part in _SWITCHES if v.overrides.get(f"model.{part}") is False]
        if (not v.closed_form and not v.oracle and v_off == off and v.overrides.get("model.fusion", "early") == fusion
                and all(flat.get(k) == x for k, x in v.overrides.items())):
            return v.name
    if fusion == "late":
        rest = [part for part in off if part != "dhf"]
        return "_".join(["late", "no", *rest]) if rest else "late"
    return "no_" + "_".join(off)


_SWITCHES = ("dhf", "das", "noise")  # SPEC section 3's ablation switches
