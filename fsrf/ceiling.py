"""The ceiling of a synthetic study: the best prediction each test condition's remaining information allows.

The synthetic generator (``fsrf.data.synthetic``) is linear-Gaussian in its latents: with
theta = (s, h_l, h_a, h_v, e_l, e_a, e_v) ~ N(0, I_7), u_m = s + sigma_m * e_m the shared latent as
modality m sees it, and the pre-noise label y* = c . theta with c = label_scale * (1, w, w, w, 0, 0, 0),
the label is round_1/3(clip(y* + N(0, label_noise^2), -3, 3)). What a condition leaves of each modality
is read as linear-Gaussian observations of theta, given an **oracle** that knows the generator's hidden
bookkeeping:

- **language**: each clause of the utterance says its intensity bucket, rounded from the reading
  z_c = 1.3 * (u_l + w * h_l) + N(0, 0.5^2). The oracle observes z_c itself (the rounding and the
  [-3, 3] clip of the bucket thrown away: more than the words say) for every clause whose sentiment
  words (intensifier or negation included) keep at least one token under the condition's mask and
  the encoder's truncation. A ``zeroed_p`` condition zeroes dropped words' states after encoding the
  complete utterance, so the kept states still carry every word: there every clause counts while any
  token is kept.
- **audio, vision**: each frame that carries the latent (known to the oracle, as is the noise
  signature's amplitude and phase, which it subtracts) is frame_signal * P_m (u_m, h_m) +
  N(0, frame_noise^2 I): the kept carrying frames of the condition's mask are exact Gaussian
  observations of theta.
- a shuffled modality (``Shuffled``) carries another sample's content: no observation.

Given these, theta's posterior is Gaussian (precision I + sum A^T A / r), so y* + noise is
N(m, v) with v = c' Sigma_post c + label_noise^2, and the conditional expectation of the rounded,
clipped label is a finite sum over the 19 label values of normal CDF differences: **closed form**.
That conditional expectation is the ceiling's prediction, scored with the usual metrics on the same
test split and masks as every trained run. It is the mean-squared-error optimum given the oracle's
information; as the oracle knows more than any model can read (unrounded readings, which frames carry),
it is an upper bound on what the words and frames allow, exact in its assumptions but loosest where the
rounding matters (few clauses). For the sign metrics (Non0/Has0 F1, acc-2) its sign is the Bayes
decision, since y* + noise given the observations is symmetric about m. MAE's optimum is the conditional
median, close to but not the mean here (the rounding and clipping are not symmetric about m): a trained
model can beat the ceiling on MAE by a hair without contradiction, not on the sign metrics beyond noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtr

from fsrf import MODALITIES
from fsrf.data import SEQ_LEN, Split, SyntheticModel, fixed_parts, synthetic
from fsrf.metrics import sentiment_metrics
from fsrf.protocol import (ZEROED, Condition, Shuffled, conditions_for, per_modality_conditions,
                           permutation_chance, shuffled_controls, summarise)

VARIANT = "ceiling"  # the ``variant`` value of the ceiling's row (``fsrf.variants``)
CHANCE = "chance"  # the ceiling row's pseudo-condition: its predictions' score on permuted labels
CLAUSE_GAIN = 1.3  # a clause's reading: CLAUSE_GAIN * (u_l + w h_l) + N(0, CLAUSE_NOISE^2) (fsrf.data)
CLAUSE_NOISE = 0.5
_DIM = 7  # theta = (s, h_l, h_a, h_v, e_l, e_a, e_v)
_H = {"l": 1, "a": 2, "v": 3}
_E = {"l": 4, "a": 5, "v": 6}
_LABELS = np.arange(-9, 10) / 3  # the 19 values a rounded label takes


@dataclass
class Evidence:
    """The accumulated Gaussian evidence on theta of N samples: precision (N, 7, 7) and b (N, 7), such
    that the posterior is N(precision^-1 b, precision^-1)."""

    precision: np.ndarray
    b: np.ndarray

    @classmethod
    def prior(cls, n: int) -> "Evidence":
        return cls(np.broadcast_to(np.eye(_DIM), (n, _DIM, _DIM)).copy(), np.zeros((n, _DIM)))

    def add(self, a: np.ndarray, count: np.ndarray, total: np.ndarray, noise_var: float) -> None:
        """``count`` (N,) observations o = a . theta + N(0, noise_var) each, with a (7,) or (k, 7) rows,
        summed to ``total`` (N,) or (N, k): adds count * a' a / r to the precision and a' total / r to b."""
        a = np.atleast_2d(a)  # (k, 7)
        self.precision += count[:, None, None] * (a.T @ a)[None] / noise_var
        self.b += total.reshape(len(total), -1) @ a / noise_var


def loadings(params: SyntheticModel) -> dict[str, np.ndarray]:
    """The (7,) loading of the pre-noise label (``label``), of language's reading direction u_l + w h_l
    (``l``) and of u_m and h_m for audio and vision (``u_a``, ``h_a``, ...)."""
    p = params
    sigma = {"l": p.sigma_l, "a": p.sigma_a, "v": p.sigma_v}
    out = {"label": p.label_scale * np.array([1, p.specific_weight, p.specific_weight, p.specific_weight, 0, 0, 0.0])}
    for m in MODALITIES:
        u = np.zeros(_DIM)
        u[0], u[_E[m]] = 1.0, sigma[m]
        h = np.zeros(_DIM)
        h[_H[m]] = 1.0
        out[f"u_{m}"], out[f"h_{m}"] = u, h
    out["l"] = out["u_l"] + p.specific_weight * out["h_l"]
    return out


def label_expectation(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E and Var of round_1/3(clip(Z, -3, 3)) for Z ~ N(mean, var), elementwise (N,): the label's
    conditional moments. The label is k/3 when Z lies in [(k - 1/2)/3, (k + 1/2)/3), the ends open."""
    sd = np.sqrt(var)[:, None]
    edges = (np.arange(-9, 9) + 0.5) / 3  # 18 inner edges between the 19 values
    cdf = ndtr((edges[None, :] - mean[:, None]) / sd)  # (N, 18)
    cdf = np.concatenate([np.zeros((len(mean), 1)), cdf, np.ones((len(mean), 1))], 1)
    prob = np.diff(cdf, axis=1)  # (N, 19)
    e = prob @ _LABELS
    return e, prob @ _LABELS**2 - e**2


def posterior_gaussian(ev: Evidence, params: SyntheticModel) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (N,) of y* + label noise given the evidence (Gaussian: before rounding, clipping)."""
    c = loadings(params)["label"]
    cov = np.linalg.inv(ev.precision)  # (N, 7, 7)
    mean = np.einsum("i,ni->n", c, np.linalg.solve(ev.precision, ev.b[..., None])[..., 0])
    return mean, np.einsum("i,nij,j->n", c, cov, c) + params.label_noise**2


def posterior_label(ev: Evidence, params: SyntheticModel) -> tuple[np.ndarray, np.ndarray]:
    """The label's conditional mean and variance (N,) given the evidence."""
    return label_expectation(*posterior_gaussian(ev, params))


def clause_tokens(split: Split, offsets: np.ndarray) -> np.ndarray:
    """(N, 3, T_l) bool: which tokens carry each clause's sentiment words (character spans overlapping
    the clause's span; special and padding tokens have empty offsets and carry none)."""
    spans = split.oracle["clause_span"]  # (N, 3, 2)
    start, end = offsets[:, None, :, 0], offsets[:, None, :, 1]  # (N, 1, T)
    nonempty = end > start
    return nonempty & (start < spans[..., 1:2]) & (end > spans[..., 0:1]) & (spans[..., 0:1] >= 0)


def evidence(split: Split, present: np.ndarray, kept: Sequence[np.ndarray], *, clause_tok: np.ndarray,
             params: SyntheticModel, proj: dict, signature: dict, whole_text: bool = False) -> Evidence:
    """The oracle's evidence under one condition: ``present`` (N, 3) the present modalities, ``kept``
    the (N, T_m) positions each modality keeps (valid and not dropped). ``whole_text``: every clause
    counts while any token is kept (``zeroed_p``)."""
    n = len(split)
    load = loadings(params)
    ev = Evidence.prior(n)
    # language: one reading per clause whose sentiment tokens are (partly) kept
    text_kept = kept[0] & present[:, :1]  # (N, T_l)
    if whole_text:
        seen = np.isfinite(split.oracle["clause_reading"]) & text_kept.any(1)[:, None]  # (N, 3)
    else:
        seen = (clause_tok & text_kept[:, None, :]).any(2) & np.isfinite(split.oracle["clause_reading"])
    readings = np.where(seen, split.oracle["clause_reading"], 0.0).sum(1)
    ev.add(CLAUSE_GAIN * load["l"], seen.sum(1).astype(float), readings, CLAUSE_NOISE**2)
    # audio, vision: the kept carrying frames, signature subtracted
    t = np.arange(SEQ_LEN)
    for k, m in ((1, "a"), (2, "v")):
        feats = split.audio if m == "a" else split.vision  # (N, T, d)
        use = kept[k] & present[:, k : k + 1] & split.oracle[f"carry_{m}"][:, : kept[k].shape[1]]  # (N, T)
        alpha = split.latents[f"noise_{m}"].astype(np.float64)
        wave = np.sin(0.3 * t[None, : use.shape[1]] + split.oracle[f"phase_{m}"][:, None])  # (N, T)
        clean = feats[:, : use.shape[1]].astype(np.float64) - (alpha[:, None] * wave)[..., None] * signature[m]
        total = (clean * use[..., None]).sum(1)  # (N, d)
        a = params.frame_signal * (proj[m][:, :1] * load[f"u_{m}"] + proj[m][:, 1:] * load[f"h_{m}"])  # (d, 7)
        ev.add(a, use.sum(1).astype(float), total, params.frame_noise**2)
    return ev


def _kept(view, valid: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return [(v & ~d).numpy() for v, d in zip(valid, view.drop)]


def predictions(split: Split, conditions: Sequence[Condition | Shuffled], *, valid: Sequence[torch.Tensor],
                offsets: np.ndarray, mask_seed: int, preset: str, seed: int,
                params: SyntheticModel = SyntheticModel(), variance: bool = False) -> dict[str, np.ndarray]:
    """The ceiling's predictions (N,) of a synthetic split under each condition (by name): the label's
    conditional expectation given what the condition's fixed masks (``Condition.view``, ``mask_seed``)
    leave to the oracle (``variance``: (mean, variance) pairs). ``valid`` are the split's (l, a, v) valid
    masks as the model sees them and ``offsets`` (N, T_l, 2) the character offsets of its text tokens."""
    proj, signature = fixed_parts(preset, seed)
    clause_tok = clause_tokens(split, offsets)
    out = {}
    for cond in conditions:
        base, gone = (cond.condition, cond.modality) if isinstance(cond, Shuffled) else (cond, None)
        view = base.view(list(valid), seed=mask_seed)
        present = view.present.numpy().copy()
        if gone is not None:
            present[:, MODALITIES.index(gone)] = False  # a shuffled modality tells nothing about this sample
        ev = evidence(split, present, _kept(view, valid), clause_tok=clause_tok, params=params, proj=proj,
                      signature=signature, whole_text=base.kind == "zeroed")
        moments = posterior_label(ev, params)
        out[cond.name] = moments if variance else moments[0]
    return out


def model_masks(split: Split, tokenizer, *, max_tokens: int) -> tuple[list[torch.Tensor], np.ndarray]:
    """The (l, a, v) valid masks a model of this split sees (the text tokenised as ``fsrf.text.tokenize``
    does) and the (N, T_l, 2) character offsets of the text tokens."""
    enc = tokenizer(list(split.text), padding="max_length", truncation=True, max_length=max_tokens,
                    return_offsets_mapping=True, return_tensors="np")
    t = torch.arange(SEQ_LEN)[None, :]
    valid = [torch.from_numpy(enc["attention_mask"].astype(bool)),
             t < torch.from_numpy(split.audio_lengths)[:, None], t < torch.from_numpy(split.vision_lengths)[:, None]]
    return valid, enc["offset_mapping"]


def ceiling(cfg, *, split: str = "test") -> dict[str, float]:
    """The ceiling's metrics on a synthetic run config's split, flat ``<split>/<metric>/<condition>`` with
    the protocol's summaries (``intra_avg``, ``avg_missing``, ...), under the conditions a run with this
    config is tested on (and the shuffled controls, whose ceiling is that of the other present modalities).
    Needs the text encoder's tokenizer (offline) for the word masks; a ValueError for real data."""
    from fsrf import text as text_mod

    d = cfg.data
    if d.source != "synthetic":
        raise ValueError(f"the ceiling needs the synthetic generator's latents; data.source is {d.source!r}")
    sp = synthetic(preset=d.preset, seed=d.seed, size_scale=d.size_scale)[split]
    valid, offsets = model_masks(sp, text_mod.load_tokenizer(text_mod.resolve_path(cfg.encoder.path)),
                                 max_tokens=d.max_tokens)
    conditions = (conditions_for(MODALITIES) + per_modality_conditions(MODALITIES, rates=cfg.eval.modality_rates)
                  + (list(ZEROED) if cfg.eval.zeroed_curve else []))
    controls = shuffled_controls(MODALITIES)
    preds = predictions(sp, [*conditions, *controls], valid=valid, offsets=offsets,
                        mask_seed=cfg.eval.mask_seed, preset=d.preset, seed=d.seed)
    per_cond = {c: sentiment_metrics(preds[c.name], sp.labels) for c in conditions}
    flat = summarise(per_cond, prefix=split, modalities=MODALITIES)
    # chance: what the ceiling's complete-input predictions score against permuted labels (no information)
    chance = permutation_chance(preds["lav"], sp.labels, seed=cfg.eval.mask_seed)[0]
    flat.update({f"{split}/{k}/{CHANCE}": v for k, v in chance.items()})
    for c in controls:
        flat.update({f"{split}/{k}/{c.name}": v for k, v in sentiment_metrics(preds[c.name], sp.labels).items()})
    return flat
