"""The shuffled floor (issue 14 item 2): a leakage control that permutes one modality's features across
test samples and keeps every mask, so a score that survives comes from something other than content."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fsrf import MODALITIES
from fsrf.model import Inputs, Output
from fsrf.protocol import (HEADLINE, TABLE, Shuffled, _scores, shuffle_modality, shuffle_permutation,
                           shuffled_controls, shuffled_floor)
from fsrf.train import SplitTensors

N, T_L, T_A, D_L, D_A = 2000, 6, 12, 3, 2
SEED = 1234


def leaky_data(n: int = N, seed: int = 0) -> SplitTensors:
    """(l, a) data whose audio length follows the label (the leak) and whose audio content is the label."""
    rng = np.random.default_rng(seed)
    labels = rng.uniform(-3, 3, size=n).astype(np.float32)
    lengths = np.clip(np.round((labels + 3) / 6 * (T_A - 1)) + 1, 1, T_A).astype(np.int64)  # (N,) in [1, T_A]
    audio_valid = torch.arange(T_A)[None, :] < torch.from_numpy(lengths)[:, None]  # (N, T_A)
    audio = torch.from_numpy(rng.normal(size=(n, T_A, D_A)).astype(np.float32)) * 0.1
    audio[..., 0] += torch.from_numpy(labels)[:, None]  # every frame carries the label in feature 0
    audio[~audio_valid] = 0.0  # padding
    text_lengths = torch.from_numpy(rng.integers(1, T_L + 1, size=n))
    text_valid = torch.arange(T_L)[None, :] < text_lengths[:, None]
    text = torch.from_numpy(rng.normal(size=(n, T_L, D_L)).astype(np.float32)) * text_valid[..., None]
    x = Inputs(text.half(), text_valid, audio, audio_valid)
    return SplitTensors(x, torch.from_numpy(labels))


class Reader(nn.Module):
    """A stand-in for FSRF with its scoring interface (``encode_modality``, ``factorize``) whose score is the
    audio's valid length (``reads="length"``) or the mean of its feature 0 (``reads="content"``), as a
    leaky or a sound model would have learnt; an absent audio gives 0 either way."""

    def __init__(self, reads: str):
        super().__init__()
        self.reads, self.modalities, self.index = reads, ("l", "a"), [0, 1]

    def encode(self, x: Inputs, present, zeroed):
        return torch.stack([self.encode_modality(x, m, present[:, MODALITIES.index(m)],
                                                 zeroed[MODALITIES.index(m)]) for m in self.modalities], 1)

    def encode_modality(self, x: Inputs, m: str, present, zeroed) -> torch.Tensor:
        if m == "l":
            return torch.zeros(len(present), 1)
        keep = x.audio_valid & ~zeroed  # (B, T_A)
        n = keep.sum(1).clamp(min=1)
        value = (keep.sum(1) - 1) / (T_A - 1) * 6 - 3 if self.reads == "length" else \
            (x.audio[..., 0] * keep).sum(1) / n
        return (value * present)[:, None]  # (B, 1)

    def factorize(self, h: torch.Tensor, present) -> Output:
        return Output(score=h[:, 1, 0], z=h[:, 1], h=h, ho=None, he=None, noise=None)


def test_names_controls_and_refusals():
    assert [c.name for c in shuffled_controls(("l",))] == ["l_shuffled_l"]
    lav = [c.name for c in shuffled_controls(("l", "a", "v"))]
    assert lav == ["l_shuffled_l", "a_shuffled_a", "v_shuffled_v", "la_shuffled_l", "la_shuffled_a",
                   "lv_shuffled_l", "lv_shuffled_v", "av_shuffled_a", "av_shuffled_v"]  # no lav: not missing
    with pytest.raises(ValueError, match="must be present in 'la'"):
        Shuffled(TABLE[3], "v")


def test_permutation_is_fixed_by_seed_and_keeps_masks():
    data = leaky_data(200)
    a = shuffle_modality(data, "a", seed=SEED)
    perm = shuffle_permutation(200, "a", seed=SEED)
    assert torch.equal(perm, shuffle_permutation(200, "a", seed=SEED))  # the same in every call
    assert not torch.equal(perm, shuffle_permutation(200, "a", seed=SEED + 1))
    assert not torch.equal(perm, shuffle_permutation(200, "l", seed=SEED))  # one per modality
    assert sorted(perm.tolist()) == list(range(200)) and (perm != torch.arange(200)).float().mean() > 0.9
    assert torch.equal(a.inputs.audio_valid, data.inputs.audio_valid)  # every mask and the rest kept ...
    valid = data.inputs.audio_valid
    for i in range(200):  # ... the content moved: sample i's valid frames are perm[i]'s, repeated in order
        n, k = int(valid[i].sum()), int(valid[perm[i]].sum())
        donor = data.inputs.audio[perm[i], :k]
        assert torch.equal(a.inputs.audio[i, :n], donor.repeat(n // k + 1, 1)[:n])
        assert torch.equal(a.inputs.audio[i, n:], data.inputs.audio[i, n:])  # its own padding
    assert torch.equal(a.inputs.text, data.inputs.text) and torch.equal(a.labels, data.labels)
    assert torch.equal(shuffle_modality(data, "a", seed=SEED).inputs.audio, a.inputs.audio)
    text = shuffle_modality(data, "l", seed=SEED)
    same = data.inputs.text_valid.sum(1) == data.inputs.text_valid[shuffle_permutation(200, "l", seed=SEED)].sum(1)
    assert torch.equal(text.inputs.text[same], data.inputs.text[shuffle_permutation(200, "l", seed=SEED)][same])
    assert torch.equal(text.inputs.text_valid, data.inputs.text_valid) and text.inputs.audio is data.inputs.audio


def floor_and_plain(reads: str) -> tuple[dict[str, float], dict[str, float]]:
    data, model = leaky_data(), Reader(reads)
    controls = shuffled_controls(("l", "a"))
    floor = shuffled_floor(model, data, controls, modalities=("l", "a"), seed=SEED, batch_size=256,
                           prefix="test")
    assert set(floor) == {f"test/{k}/{c.name}{tail}" for c in controls for tail in ("", "_chance", "_chance_sd")
                          for k in ("MAE", "Corr", HEADLINE, "Has0_acc_2", "Has0_F1_score", "Non0_acc_2",
                                    "Mult_acc_5", "Mult_acc_7")}
    from fsrf.metrics import sentiment_metrics

    plain = {}
    for cond, pred in _scores(model, data, [c.condition for c in controls], modalities=("l", "a"),
                              mask_seed=SEED, batch_size=256).items():
        plain.update({f"test/{k}/{cond.name}": v for k, v in sentiment_metrics(pred.numpy(),
                                                                               data.labels.numpy()).items()})
    return floor, plain


def test_floor_stays_up_for_a_model_that_reads_the_length():
    floor, plain = floor_and_plain("length")
    assert plain[f"test/{HEADLINE}/a"] > 0.95  # the leak scores far above chance ...
    for cond in ("a", "la"):  # ... and survives the shuffle exactly: lengths are kept
        for k in (HEADLINE, "MAE", "Corr"):
            assert floor[f"test/{k}/{cond}_shuffled_a"] == plain[f"test/{k}/{cond}"]
    # far above its chance (the same predictions on permuted labels): what the report flags as a leak
    chance, sd = floor[f"test/{HEADLINE}/a_shuffled_a_chance"], floor[f"test/{HEADLINE}/a_shuffled_a_chance_sd"]
    assert 0.45 < chance < 0.55 and 0 < sd < 0.03
    assert floor[f"test/{HEADLINE}/a_shuffled_a"] - chance > 20 * sd


def test_floor_falls_to_chance_for_a_model_that_reads_the_content():
    floor, plain = floor_and_plain("content")
    assert plain["test/Corr/a"] > 0.99 and plain[f"test/{HEADLINE}/a"] > 0.95
    for cond in ("a", "la"):
        # N = 2000 independent pairs: |Corr| of unrelated scores exceeds 0.1 with probability < 1e-5
        assert abs(floor[f"test/Corr/{cond}_shuffled_a"]) < 0.1
        assert 0.4 < floor[f"test/{HEADLINE}/{cond}_shuffled_a"] < 0.6  # balanced signs: chance is 0.5
        chance = floor[f"test/{HEADLINE}/{cond}_shuffled_a_chance"]
        sd = floor[f"test/{HEADLINE}/{cond}_shuffled_a_chance_sd"]
        assert abs(floor[f"test/{HEADLINE}/{cond}_shuffled_a"] - chance) < 4 * sd  # within what chance does
    # shuffling the language the model ignores changes nothing
    assert floor[f"test/{HEADLINE}/la_shuffled_l"] == plain[f"test/{HEADLINE}/la"]
