"""Tests of fsrf.data: the synthetic generator's contract (SPEC section 1), the loader and the fingerprint.

The informativeness checks read the generated *features* (not the latents) with plain least squares,
fitted on train and scored on test, so they test what a model can actually learn from the data.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from fsrf.config import DataConfig, build_config
from fsrf.data import LEXICON, NEGATED, PRESETS, SEQ_LEN, SPLITS, fingerprint, load_dataset, synthetic
from fsrf.errors import InputError

ARRAYS = ("labels", "audio", "audio_lengths", "vision", "vision_lengths")


@pytest.fixture(scope="module")
def mosi():
    """The default dataset: synthetic MOSI at full size, seed 0 (a fraction of a second to generate)."""
    return synthetic(preset="mosi", seed=0)


def test_preset_sizes_at_full_scale(mosi):
    assert tuple(len(mosi[s]) for s in SPLITS) == (1284, 229, 686) == PRESETS["mosi"]
    for split in mosi.values():
        assert len(split.text) == len(split.ids) == len(split.labels) == len(split.audio) == len(split.vision)
        assert len(set(split.ids)) == len(split)


@pytest.mark.parametrize("scale", [0.01, 0.05, 0.3])
def test_size_scale(scale):
    data = synthetic(preset="mosi", seed=0, size_scale=scale)
    assert [len(data[s]) for s in SPLITS] == [max(8, round(n * scale)) for n in PRESETS["mosi"]]


@pytest.mark.parametrize("preset, dims", [("mosi", (5, 20)), ("mosei", (74, 35))])
def test_shapes_dtypes_and_lengths(preset, dims, mosi):
    data = mosi if preset == "mosi" else synthetic(preset="mosei", seed=0, size_scale=0.01)
    if preset == "mosei":
        assert [len(data[s]) for s in SPLITS] == [163, 19, 47]
    for split in data.values():
        n = len(split)
        assert split.audio.shape == (n, SEQ_LEN, dims[0]) and split.vision.shape == (n, SEQ_LEN, dims[1])
        assert split.audio.dtype == split.vision.dtype == split.labels.dtype == np.float32
        assert split.audio_lengths.dtype == split.vision_lengths.dtype == np.int64
        for lengths in (split.audio_lengths, split.vision_lengths):
            assert lengths.min() >= 20 and lengths.max() <= SEQ_LEN
        assert split.modalities == ("l", "a", "v")
        assert split.text_ids is None  # the text encoder tokenises the raw text


def test_padding_is_zero_and_valid_frames_are_not(mosi):
    for split in mosi.values():
        for x, lengths in ((split.audio, split.audio_lengths), (split.vision, split.vision_lengths)):
            t = np.arange(x.shape[1])
            pad = t[None, :] >= lengths[:, None]  # (N, T)
            assert pad.any()
            assert not x[pad].any()
            # every valid frame carries noise, so the last non-zero frame gives back the true length
            assert (np.abs(x[~pad]).sum(-1) > 0).all()
            assert np.isfinite(x).all()


def test_labels_range_thirds_and_zeros(mosi):
    labels = np.concatenate([s.labels for s in mosi.values()])
    assert labels.min() >= -3 and labels.max() <= 3
    assert np.allclose(labels * 3, np.round(labels * 3), atol=1e-5)  # averaged annotator scores
    zeros = (labels == 0).mean()
    assert 0.01 < zeros < 0.2  # a few, as in MOSI: Has0 and Non0 metrics differ
    assert 0.35 < (labels > 0).mean() < 0.65  # both polarities well represented
    assert (np.abs(labels) == 3).any()  # the clip is reached


def test_same_seed_same_data_other_seed_differs():
    a, b, c = (synthetic(seed=s, size_scale=0.05) for s in (0, 0, 1))
    for name in SPLITS:
        for field in ARRAYS:
            np.testing.assert_array_equal(getattr(a[name], field), getattr(b[name], field))
        assert a[name].text == b[name].text and a[name].ids == b[name].ids
        for key in a[name].latents:
            np.testing.assert_array_equal(a[name].latents[key], b[name].latents[key])
        assert not np.array_equal(a[name].labels, c[name].labels)
        assert not np.array_equal(a[name].audio, c[name].audio)
        assert a[name].text != c[name].text
    # the splits are different samples, not copies of one draw
    assert not np.array_equal(a["train"].labels[:8], a["test"].labels[:8])


def test_loader_is_the_generator():
    a = load_dataset(DataConfig(preset="mosi", seed=4, size_scale=0.02))
    b = synthetic(preset="mosi", seed=4, size_scale=0.02)
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(load_dataset(DataConfig(preset="mosi", seed=5, size_scale=0.02))) != fingerprint(a)
    with pytest.raises(InputError, match="data.source"):  # the config refuses an unknown source
        build_config({"data": {"source": "imdb"}})
    with pytest.raises(ValueError, match="data.preset"):
        synthetic(preset="iemocap")


def _all(data, get):
    return np.concatenate([get(data[s]) for s in SPLITS])


def test_latents_are_kept_and_mean_what_the_docstring_says(mosi):
    for split in mosi.values():
        assert set(split.latents) >= {"shared", "specific_l", "specific_a", "specific_v", "noise_a", "noise_v"}
        for value in split.latents.values():
            assert value.shape == (len(split),) and value.dtype == np.float32
    labels = _all(mosi, lambda s: s.labels)
    # label = 1.5 (s + 0.2 sum h) + N(0, 0.7^2), clipped: corr(label, s) is about 0.86
    assert np.corrcoef(labels, _all(mosi, lambda s: s.latents["shared"]))[0, 1] > 0.7
    for m in "av":
        alpha = _all(mosi, lambda s: s.latents[f"noise_{m}"])
        # the noise signature is label-independent (2199 samples: one standard error is 0.02)
        assert abs(np.corrcoef(labels, alpha)[0, 1]) < 0.1
        assert alpha.min() >= 0 and 0.8 < alpha.mean() < 1.2  # |N(1, 0.3^2)|
    for m in "lav":  # the specific latents enter the label with a small weight
        r = np.corrcoef(labels, _all(mosi, lambda s: s.latents[f"specific_{m}"]))[0, 1]
        assert 0.03 < r < 0.35


def _ls_readout_corr(x_train, y_train, x_test, y_test, ridge=1.0):
    """Correlation with the test labels of a ridge least-squares read-out fitted on train."""
    a = np.c_[x_train, np.ones(len(x_train))]
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ y_train)
    return np.corrcoef(np.c_[x_test, np.ones(len(x_test))] @ w, y_test)[0, 1]


def _mean_frame(x, lengths):
    return x.sum(1) / lengths[:, None]  # (N, d): the mean over valid frames


def _words(text):
    w = text.split()
    return w + ["not_" + b for a, b in zip(w, w[1:]) if a == "not"]


def _bag_of_words(texts, vocab):
    x = np.zeros((len(texts), len(vocab)))
    for i, text in enumerate(texts):
        for word in _words(text):
            if word in vocab:
                x[i, vocab[word]] += 1
    return x


def test_language_is_the_most_and_vision_the_least_informative():
    """A linear read-out of the features: bag of words (and "not X") for text, mean frame for audio/vision.

    Measured over seeds 0-3 (generator of Nov 2026): l 0.73-0.75, a 0.50-0.55, v 0.44-0.49.
    """
    r = {m: [] for m in "lav"}
    for seed in range(4):
        data = synthetic(preset="mosi", seed=seed)
        tr, te = data["train"], data["test"]
        counts = Counter(w for text in tr.text for w in _words(text))
        vocab = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= 5))}
        r["l"].append(_ls_readout_corr(_bag_of_words(tr.text, vocab), tr.labels,
                                       _bag_of_words(te.text, vocab), te.labels))
        r["a"].append(_ls_readout_corr(_mean_frame(tr.audio, tr.audio_lengths), tr.labels,
                                       _mean_frame(te.audio, te.audio_lengths), te.labels))
        r["v"].append(_ls_readout_corr(_mean_frame(tr.vision, tr.vision_lengths), tr.labels,
                                       _mean_frame(te.vision, te.vision_lengths), te.labels))
    r = {m: np.array(v) for m, v in r.items()}
    assert (r["l"] > r["a"] + 0.1).all()
    assert (r["a"] > r["v"]).all() and r["a"].mean() > r["v"].mean() + 0.03
    assert r["v"].min() > 0.3  # the least informative modality still informs


def test_texts_are_lexicon_sentences(mosi):
    words = {w for bucket in LEXICON.values() for phrase in bucket for w in phrase.split()}
    words |= {w for bucket in NEGATED.values() for w in bucket}
    bucket_of = {w: b for b, phrases in LEXICON.items() for w in phrases if " " not in w}
    texts = [t for s in mosi.values() for t in s.text]
    labels = _all(mosi, lambda s: s.labels)
    assert all(re.fullmatch(r"[a-z]+( [a-z]+)+", t) for t in texts)  # MOSI style: lower case, no punctuation
    assert all(words & set(t.split()) for t in texts)
    assert len(set(texts)) > 0.9 * len(texts)  # utterances vary
    # the words say the label: mean lexicon bucket of un-negated words goes with the label's sign
    def score(text):
        w = text.split()
        return np.mean([bucket_of[x] for i, x in enumerate(w) if x in bucket_of and (i == 0 or w[i - 1] != "not")]
                       or [0.0])
    scores = np.array([score(t) for t in texts])
    assert scores[labels >= 1].mean() > 1.0 and scores[labels <= -1].mean() < -1.0


def test_fingerprint_stable_and_sensitive():
    data = synthetic(seed=0, size_scale=0.02)
    fp = fingerprint(data)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert fingerprint(synthetic(seed=0, size_scale=0.02)) == fp  # a fresh generation, same content
    assert fingerprint(synthetic(seed=1, size_scale=0.02)) != fp

    data["test"].labels[3] += 1 / 3  # one label of one split
    assert fingerprint(data) != fp
    data["test"].labels[3] -= 1 / 3
    assert fingerprint(data) == fp  # content, not identity or history

    data["valid"].text[0] = data["valid"].text[0] + " indeed"
    assert fingerprint(data) != fp
    data = synthetic(seed=0, size_scale=0.02)
    data["train"].vision[0, 0, 0] += 1e-3
    assert fingerprint(data) != fp
