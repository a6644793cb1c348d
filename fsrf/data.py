"""Datasets for FSRF: one in-memory ``Split`` type and one loader interface over three sources.

Sources (SPEC section 1): ``synthetic`` (the default, generated here), ``mmsa`` (the field's pickles,
read by ``fsrf.readers``) and ``transcripts`` (a CSV of real utterances, also in ``fsrf.readers``; with
``data.audio_path`` also one real audio vector per utterance, so (l, a)).

Axis legend: N samples, T_m frames (tokens for text) of modality m, d_m feature width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # an annotation only: fsrf.config needs nothing from here
    from fsrf.config import DataConfig

SPLITS = ("train", "valid", "test")


@dataclass
class Split:
    """One split of a dataset, as numpy arrays; audio/vision are None where a source has none."""

    name: str
    text: list[str]  # raw utterances, N
    labels: np.ndarray  # (N,) float32 in [-3, 3]
    ids: list[str]  # N sample ids
    audio: np.ndarray | None = None  # (N, T_a, d_a) float32, zero-padded
    audio_lengths: np.ndarray | None = None  # (N,) int64, true unpadded lengths
    vision: np.ndarray | None = None  # (N, T_v, d_v) float32, zero-padded
    vision_lengths: np.ndarray | None = None  # (N,) int64
    text_ids: np.ndarray | None = None  # (N, T_l) int64 pre-tokenised ids (MMSA's text_bert), optional
    text_mask: np.ndarray | None = None  # (N, T_l) int64 attention mask for text_ids
    latents: dict[str, np.ndarray] = field(default_factory=dict)  # ground truth, (N,) each (synthetic only)
    # what an oracle knows beyond the latents (synthetic only; ``fsrf.ceiling``): clause_reading (N, 3)
    # and clause_span (N, 3, 2) of the text, carry_<m> (N, T) and phase_<m> (N,) of audio and vision
    oracle: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this split carries, in (l, a, v) order."""
        return ("l",) + (("a",) if self.audio is not None else ()) + (("v",) if self.vision is not None else ())


# ----------------------------------------------------------------------------------------------
# Synthetic MOSI-shaped data
# ----------------------------------------------------------------------------------------------

PRESETS = {"mosi": (1284, 229, 686), "mosei": (16326, 1871, 4659)}
FEATURE_DIMS = {"mosi": (5, 20), "mosei": (74, 35)}  # (audio, vision) widths of MMSA's extractions
SEQ_LEN = 50  # MMSA's aligned_50 length


@dataclass(frozen=True)
class SyntheticModel:
    """Parameters of the synthetic generative model (documented in ``synthetic``).

    The defaults were calibrated so that a Bayes-optimal linear reader of the latents reaches
    Non0 F1 l 0.84, a 0.73, v 0.69, av 0.76, lav 0.87 (measured on 200k samples); the FSRF
    figures measured with default training are in the README.
    """

    sigma_l: float = 0.3  # noise on the shared latent as language sees it (most informative)
    sigma_a: float = 1.25 # ... as audio sees it
    sigma_v: float = 1.5  # ... as vision sees it (least informative)
    specific_weight: float = 0.2  # weight of each modality-specific latent in the label
    label_scale: float = 1.5
    label_noise: float = 0.7  # annotator disagreement: caps every method's score
    frame_signal: float = 2.0 # amplitude of the latent signal in a carrying frame
    frame_carry: float = 0.35 # probability that a frame carries the latent signal
    frame_noise: float = 1.0  # iid Gaussian noise per frame and feature
    signature_amplitude: float = 1.0  # mean amplitude of the modality's noise signature
    min_len: int = 20  # true lengths are uniform in [min_len, SEQ_LEN]


# Sentiment lexicon by intensity bucket (-3 .. 3); lower-case and unpunctuated like MOSI transcripts.
LEXICON = {
    -3: ["terrible", "awful", "horrible", "dreadful", "atrocious", "unbearable"],
    -2: ["bad", "boring", "disappointing", "weak", "annoying", "poor"],
    -1: ["mediocre", "bland", "forgettable", "dull", "uneven", "flat"],
    0: ["okay", "average", "ordinary", "so so", "standard", "predictable"],
    1: ["decent", "nice", "pleasant", "solid", "fine", "watchable"],
    2: ["good", "enjoyable", "fun", "charming", "engaging", "funny"],
    3: ["amazing", "brilliant", "wonderful", "fantastic", "excellent", "beautiful"],
}
# Mild sentiment said by negating the other side, as people do ("not bad" is mildly positive).
NEGATED = {1: ["bad", "terrible", "boring", "awful"], -1: ["good", "great", "funny", "amazing"], 0: ["great", "bad"]}
TOPICS = ["the movie", "the plot", "the acting", "the ending", "the characters", "the soundtrack",
          "the dialogue", "the pacing", "the story", "the cast", "the script", "the visuals"]
FILLERS = ["um", "you know", "i mean", "like", "so", "basically", "well", "uh", "honestly", "i guess"]
TEMPLATES = ["{topic} was {adv}{word}", "i thought {topic} was {adv}{word}", "{topic} felt {adv}{word}",
             "{topic} is {adv}{word}", "i found {topic} {adv}{word}", "overall it was {adv}{word}"]
INTENSIFIERS = ["really ", "very ", "so ", "just ", "pretty "]


def _sentence(value: float, rng: np.random.Generator) -> str:
    """An utterance expressing sentiment ``value`` (about -3..3) in 1-3 clauses with filler."""
    return _sentence_parts(value, rng)[0]


def _sentence_parts(value: float, rng: np.random.Generator) -> tuple[str, list[float], list[tuple[int, int]]]:
    """``_sentence`` with what each clause says: (text, readings, spans).

    A clause's reading is the number its intensity bucket is rounded from, ``1.3 * value + N(0, 0.5^2)``;
    its span is the character range of its sentiment words (intensifier or negation included) in the text.
    The random draws are those of ``_sentence`` (same order), so the text is the same.
    """
    clauses, readings, spans = [], [], []
    for _ in range(rng.integers(1, 4)):
        reading = value * 1.3 + rng.normal(0, 0.5)
        bucket = int(np.clip(np.rint(reading), -3, 3))
        adv = rng.choice(INTENSIFIERS) if abs(bucket) == 3 and rng.random() < 0.5 else ""
        if bucket in NEGATED and rng.random() < 0.35:
            word = "not " + rng.choice(NEGATED[bucket])
            adv = ""
        else:
            word = rng.choice(LEXICON[bucket])
        template = rng.choice(TEMPLATES)
        topic = rng.choice(TOPICS)
        clause = template.format(topic=topic, adv=adv, word=word)
        start = len(template.split("{adv}")[0].format(topic=topic))  # every template ends in {adv}{word}
        if rng.random() < 0.5:
            filler = rng.choice(FILLERS)
            clause = f"{filler} {clause}"
            start += len(filler) + 1
        clauses.append(clause)
        readings.append(float(reading))
        spans.append((start, start + len(adv) + len(word)))
    sep = " and " if rng.random() < 0.5 else " "
    offset, placed = 0, []
    for clause, (a, b) in zip(clauses, spans):
        placed.append((offset + a, offset + b))
        offset += len(clause) + len(sep)
    return sep.join(clauses), readings, placed


def synthetic(*, preset: str = "mosi", seed: int = 0, size_scale: float = 1.0,
              params: SyntheticModel = SyntheticModel()) -> dict[str, Split]:
    """A MOSI-shaped dataset from a documented generative model, fixed by ``seed``.

    Generative model, per sample i (all draws independent unless said otherwise):
      s_i ~ N(0, 1)                      shared sentiment latent (what every modality talks about)
      h_im ~ N(0, 1), m in (l, a, v)     modality-specific latents (speaker's wording, prosody, face)
      label_i = round_1/3(clip(label_scale * (s_i + w * sum_m h_im) + N(0, label_noise^2), -3, 3))
    Modality m sees the shared latent through its own noise: u_im = s_i + sigma_m * N(0, 1), with
    sigma_l < sigma_a < sigma_v (language most informative, visual least).
      language: an English utterance built from a sentiment lexicon (intensity buckets, negation such
        as "not bad", intensifiers, filler words) expressing u_il + w * h_il; the text encoder reads it.
      audio/vision: T_i ~ U[min_len, 50] frames of width d_m (5/20 for `mosi`, 74/35 for `mosei`);
        frame t = carry_t * frame_signal * P_m [u_im, h_im]  +  alpha_im * nu_m(t)  +  N(0, frame_noise^2),
        carry_t ~ Bernoulli(frame_carry), P_m a fixed random (d_m x 2) projection with unit columns,
        nu_m(t) the modality's noise signature: a fixed direction times a slow sinusoid with a random
        phase, alpha_im ~ |N(signature_amplitude, 0.3^2)| (label-independent: what R_n should capture).
    Labels are rounded to thirds as averaged annotator scores are, so a few are exactly 0.
    ``latents`` keeps s, h_m, u_m and alpha_m for probing what each representation learned; ``oracle``
    keeps what the closed-form ceiling (``fsrf.ceiling``) conditions on: each clause's unrounded reading
    1.3 * (u_il + w * h_il) + N(0, 0.5^2) and its sentiment words' character span, and per frame whether
    it carries the latent, with the signature's phase.
    """
    if preset not in PRESETS:
        raise ValueError(f"data.preset must be one of {sorted(PRESETS)}, got {preset!r}")
    p = params
    proj, signature = fixed_parts(preset, seed)
    sigma = {"l": p.sigma_l, "a": p.sigma_a, "v": p.sigma_v}
    t = np.arange(SEQ_LEN)

    out = {}
    for k, (name, n) in enumerate(zip(SPLITS, PRESETS[preset])):
        n = max(8, int(round(n * size_scale)))
        rng = np.random.default_rng([seed, k])
        s = rng.normal(size=n)
        h = {m: rng.normal(size=n) for m in ("l", "a", "v")}
        u = {m: s + sigma[m] * rng.normal(size=n) for m in ("l", "a", "v")}
        y = p.label_scale * (s + p.specific_weight * (h["l"] + h["a"] + h["v"]))
        y = np.clip(y + p.label_noise * rng.normal(size=n), -3, 3)
        labels = (np.round(y * 3) / 3).astype(np.float32)
        readings = np.full((n, 3), np.nan, np.float32)
        spans = np.full((n, 3, 2), -1, np.int32)
        text = []
        for i in range(n):
            sentence, r, sp = _sentence_parts(u["l"][i] + p.specific_weight * h["l"][i], rng)
            text.append(sentence)
            readings[i, :len(r)], spans[i, :len(sp)] = r, sp
        split = Split(name=name, text=text, labels=labels, ids=[f"syn-{name}-{i:05d}" for i in range(n)],
                      latents={"shared": s.astype(np.float32)},
                      oracle={"clause_reading": readings, "clause_span": spans})
        for m in ("a", "v"):
            d = proj[m].shape[0]
            lengths = rng.integers(p.min_len, SEQ_LEN + 1, size=n)
            carry = rng.random((n, SEQ_LEN)) < p.frame_carry  # (N, T)
            latent = np.stack([u[m], h[m]], 1) @ proj[m].T  # (N, d)
            alpha = np.abs(p.signature_amplitude + 0.3 * rng.normal(size=n))
            phase = rng.uniform(0, 2 * np.pi, size=n)
            wave = np.sin(0.3 * t[None, :] + phase[:, None])  # (N, T)
            x = (p.frame_signal * carry[..., None] * latent[:, None, :]
                 + (alpha[:, None] * wave)[..., None] * signature[m]
                 + p.frame_noise * rng.normal(size=(n, SEQ_LEN, d)))  # (N, T, d)
            x[t[None, :] >= lengths[:, None]] = 0.0  # zero padding
            if m == "a":
                split.audio, split.audio_lengths = x.astype(np.float32), lengths.astype(np.int64)
            else:
                split.vision, split.vision_lengths = x.astype(np.float32), lengths.astype(np.int64)
            split.latents[f"specific_{m}"] = h[m].astype(np.float32)
            split.latents[f"noise_{m}"] = alpha.astype(np.float32)
            split.oracle[f"carry_{m}"] = carry
            split.oracle[f"phase_{m}"] = phase
        split.latents["specific_l"] = h["l"].astype(np.float32)
        for m in ("l", "a", "v"):
            split.latents[f"view_{m}"] = u[m].astype(np.float32)  # the shared latent as modality m sees it
        out[name] = split
    return out


def fixed_parts(preset: str, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The generator's fixed parts for (preset, seed): per audio/vision modality, the (d_m, 2) projection
    P_m with unit columns and the (d_m,) unit noise signature nu_m (``synthetic``)."""
    fixed = np.random.default_rng([seed, 99])
    proj, signature = {}, {}
    for m, d in zip(("a", "v"), FEATURE_DIMS[preset]):
        P = fixed.normal(size=(d, 2))
        proj[m] = P / np.linalg.norm(P, axis=0, keepdims=True)
        nu = fixed.normal(size=d)
        signature[m] = nu / np.linalg.norm(nu)
    return proj, signature


def load_dataset(data: DataConfig) -> dict[str, Split]:
    """The one loader interface: ``{"train", "valid", "test"} -> Split`` for the source ``data`` names
    (``cfg.data``, already validated)."""
    if data.source == "synthetic":
        return synthetic(preset=data.preset, seed=data.seed, size_scale=data.size_scale)
    from fsrf import readers  # file formats live there; synthetic runs need none of it

    if data.source == "mmsa":
        return readers.read_mmsa(data.path, trust_pickle=data.trust_pickle)
    if data.source == "transcripts":
        return readers.read_transcripts(data.path, text_column=data.text_column, label_column=data.label_column,
                                        split_column=data.split_column, audio_path=data.audio_path,
                                        audio_dim=data.audio_dim)
    raise ValueError(f"data.source must be synthetic, mmsa or transcripts, got {data.source!r}")


def fingerprint(splits: dict[str, Split]) -> str:
    """A short content hash of a dataset (texts, labels, features): keys caches and run manifests."""
    import hashlib

    h = hashlib.sha256()
    for name in SPLITS:
        sp = splits[name]
        h.update(name.encode())
        h.update("\x1f".join(sp.text).encode())
        h.update(np.ascontiguousarray(sp.labels).tobytes())
        for arr in (sp.audio, sp.vision, sp.text_ids):
            if arr is not None:
                h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]
