"""The search space: a YAML file of dotted config fields and their distributions, validated at load.

    params:
      loss.lambda1: {distribution: loguniform, low: 0.02, high: 2.0}
      missing.schedule: {distribution: choice, values: [constant, linear, cosine, step]}
    start_with_base: true

Every name must be a field of ``fsrf.config.RunConfig``, and both ends of every range (every choice)
must be values that field accepts: a bad range is refused before any trial starts, naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsrf.config import RunConfig, build_config, flatten, read_yaml_mapping
from fsrf.errors import InputError

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")


@dataclass(frozen=True)
class Param:
    name: str  # dotted config field, e.g. "loss.lambda1"
    distribution: str
    low: float | None = None
    high: float | None = None
    values: tuple | None = None

    def tune_domain(self):
        """The Ray Tune domain (``tune.loguniform`` ...) that OptunaSearch turns into its distribution."""
        from ray import tune

        if self.distribution == "choice":
            return tune.choice(list(self.values))
        return {"uniform": tune.uniform, "loguniform": tune.loguniform,
                "randint": tune.randint}[self.distribution](self.low, self.high)

    def describe(self) -> str:
        if self.distribution == "choice":
            return f"choice{list(self.values)}"
        return f"{self.distribution}[{self.low}, {self.high}]"


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    start_with_base: bool = True

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def tune_space(self) -> dict[str, Any]:
        return {p.name: p.tune_domain() for p in self.params}

    def describe(self) -> dict[str, str]:
        return {p.name: p.describe() for p in self.params}


def load_space(path: str | Path, base: RunConfig | None = None) -> SearchSpace:
    """Read and validate a search-space YAML against the config fields (and the ``base`` config)."""
    where = str(Path(path))
    raw = read_yaml_mapping(path, what="search space file", mapping="a mapping with a 'params' section")
    unknown = set(raw) - {"params", "start_with_base"}
    if unknown:
        raise InputError(where, sorted(unknown)[0], "unknown key (expected params, start_with_base)")
    return parse_space(raw.get("params"), start_with_base=raw.get("start_with_base", True), where=where,
                       base=base)


def parse_space(params: Any, *, start_with_base: Any = True, where: str = "search space",
                base: RunConfig | None = None) -> SearchSpace:
    if not isinstance(params, dict) or not params:
        raise InputError(where, "params", "the search space is empty: give at least one parameter")
    if not isinstance(start_with_base, bool):
        raise InputError(where, "start_with_base", f"must be true or false, got {start_with_base!r}")
    base = base or RunConfig()
    fields = flatten(base)
    out = []
    for name, spec in params.items():
        field = f"params.{name}"
        if name not in fields:
            raise InputError(where, field, "not a config field (see fsrf/config.py for the dotted names)")
        if not isinstance(spec, dict):
            raise InputError(where, field, "expected a mapping like {distribution: uniform, low: 0, high: 1}")
        dist = spec.get("distribution")
        if dist not in DISTRIBUTIONS:
            raise InputError(where, f"{field}.distribution", f"must be one of {', '.join(DISTRIBUTIONS)}, got {dist!r}")
        allowed = {"distribution", "values"} if dist == "choice" else {"distribution", "low", "high"}
        extra = set(spec) - allowed
        if extra:
            raise InputError(where, f"{field}.{sorted(extra)[0]}", f"unknown key for a {dist} distribution")
        if dist == "choice":
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                raise InputError(where, f"{field}.values", "must be a non-empty list")
            param = Param(name, dist, values=tuple(values))
            ends = values
        else:
            low, high = spec.get("low"), spec.get("high")
            for key, v in (("low", low), ("high", high)):
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise InputError(where, f"{field}.{key}", f"must be a number, got {v!r}")
            if not low < high:
                raise InputError(where, field, f"low ({low}) must be below high ({high})")
            if dist == "loguniform" and low <= 0:
                raise InputError(where, f"{field}.low", f"loguniform needs low > 0, got {low}")
            if dist == "randint" and not (float(low).is_integer() and float(high).is_integer()):
                raise InputError(where, field, "randint needs integer low and high")
            param = Param(name, dist, float(low) if dist != "randint" else int(low),
                          float(high) if dist != "randint" else int(high))
            ends = [low, high - 1 if dist == "randint" else high]
        for value in ends:  # both ends must be values the field itself accepts
            try:
                build_config(_with(base, {name: value}), where=where)
            except InputError as err:
                raise InputError(where, field, f"range end {value!r} is refused by the config: "
                                 f"{str(err).split(': ', 1)[1]}") from None
        if start_with_base:  # the first trial is the base config: it must be a point of the space
            value = fields[name]
            inside = value in param.values if dist == "choice" else (
                isinstance(value, (int, float)) and param.low <= value
                and (value < param.high if dist == "randint" else value <= param.high))  # randint excludes high
            if not inside:
                raise InputError(where, field, f"the base config's value {value!r} lies outside {param.describe()}: "
                                 "widen the range, change the base config, or set start_with_base: false")
        out.append(param)
    return SearchSpace(tuple(out), start_with_base)


def _with(base: RunConfig, flat: dict[str, Any]) -> dict:
    from fsrf.config import apply_overrides

    return apply_overrides(base.model_dump(), flat)
