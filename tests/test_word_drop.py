"""Words are dropped before the encoder (SPEC 7), in the evaluation protocol and in training.

With the frozen encoder a dropped token's id becomes ``[UNK]`` and the damaged utterance is encoded
(cached on disk per id array); the zeroed-state semantics of SPEC 2 stay available as ``zeroed_p``
(evaluation) and ``missing.word_drop: zeroed`` (training). The expected states are built by hand here:
tokenize, substitute [UNK] on the condition's mask, run the tiny BERT of ``tiny_bert_dir``, pool.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY
from fsrf import text as text_mod
from fsrf.config import load_config
from fsrf.missing import mrm_views, zeroed_masks
from fsrf.protocol import BURST, INTRA, ZEROED, Condition, _scores, conditions_for, evaluate, per_modality_conditions
from fsrf.train import build_model, patterns_for, prepare, train_losses

SEED = 1234


def tiny_cfg(tiny_bert_dir, *overrides: str):
    return load_config(None, [*TINY, f"encoder.path={tiny_bert_dir}", "train.threads=1", *overrides])


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    cfg = tiny_cfg(tiny_bert_dir)
    prep = prepare(cfg)
    torch.manual_seed(3)
    return cfg, prep, build_model(cfg, prep).eval()


def by_hand(tiny_bert_dir, texts, drop: torch.Tensor | None, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token states (N, T, d) float32 of ``texts`` with the ``drop`` positions as [UNK], and the mask."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if drop is not None:
        ids = torch.where(drop & mask.bool(), torch.full_like(ids, tok.unk_token_id), ids)
    with torch.no_grad():
        states = AutoModel.from_pretrained(tiny_bert_dir).eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    return (states * mask[..., None]).numpy(), mask.numpy()


def pooled_inputs_of(model, run) -> list[torch.Tensor]:
    """Run ``run()`` and return the pooled text C_L (B, d_l) of every call of the language encoder."""
    seen = []

    def hook(module, args):
        text, valid, zeroed, _ = args
        keep = (valid & ~zeroed)[..., None].to(text.dtype)
        seen.append((text * keep).sum(1) / valid.sum(1, keepdim=True).clamp(min=1))

    handle = model.encoders["l"].register_forward_pre_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return seen


# ---------------------------------------------------------------- evaluation


@pytest.mark.parametrize("condition", [Condition("intra", rate=0.3), Condition("modality", modality="l", rate=0.7),
                                       Condition("burst", rate=0.4), Condition("rates", rates=(0.9, 0.3, 0.3))],
                         ids=str)
def test_protocol_reads_the_encoder_on_the_unk_ids(tiny, tiny_bert_dir, condition):
    cfg, prep, model = tiny
    data = prep.splits["test"]
    valid = data.inputs.valid()
    view = condition.view(valid, seed=SEED, available=prep.modalities)
    drop = view.drop[0]
    assert drop.any() and not drop.all()
    states, mask = by_hand(tiny_bert_dir, prep.raw["test"].text, drop, cfg.data.max_tokens)
    expected = states.sum(1) / mask.sum(1, keepdims=True)  # (N, d): kept and [UNK] states all count
    zeroed_states, _ = by_hand(tiny_bert_dir, prep.raw["test"].text, None, cfg.data.max_tokens)
    zeroed = (zeroed_states * ~drop.numpy()[..., None]).sum(1) / mask.sum(1, keepdims=True)

    seen = pooled_inputs_of(model, lambda: _scores(model, data, [condition], modalities=prep.modalities,
                                                   mask_seed=SEED, batch_size=1000))
    # the condition's language pass on the whole split (one batch) comes first; a second pass, when a
    # condition keeps audio or visual complete, is the complete input's, encoded once and reused
    assert len(seen) == (2 if condition.kind == "modality" else 1)
    got = seen[0].numpy()
    np.testing.assert_allclose(got, expected, atol=3e-3, rtol=3e-3)  # cached as float16
    assert np.abs(got - zeroed).max() > 0.05  # not the zeroed-state input


def test_unk_and_zeroed_curves_differ_on_the_same_masks(tiny, tiny_bert_dir):
    cfg, prep, model = tiny
    data = prep.splits["test"]
    kw = dict(modalities=prep.modalities, mask_seed=SEED, batch_size=1000)
    unk, zero = Condition("intra", rate=0.5), Condition("zeroed", rate=0.5)
    valid = data.inputs.valid()
    a, b = (c.view(valid, seed=SEED, available=prep.modalities) for c in (unk, zero))
    assert all(torch.equal(x, y) for x, y in zip(a.drop, b.drop))  # the same words lost, two ways
    seen = pooled_inputs_of(model, lambda: _scores(model, data, [unk, zero], **kw))
    states, mask = by_hand(tiny_bert_dir, prep.raw["test"].text, None, cfg.data.max_tokens)
    by_zeroing = (states * ~b.drop[0].numpy()[..., None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(seen[1].numpy(), by_zeroing, atol=3e-3, rtol=3e-3)
    assert not torch.allclose(seen[0], seen[1], atol=0.05)
    flat = evaluate(model, data, conditions_for(prep.modalities, burst=False) + list(ZEROED), prefix="test", **kw)
    assert flat["test/MAE/zeroed_0.5"] != flat["test/MAE/intra_0.5"]
    assert flat["test/MAE/zeroed_avg"] == pytest.approx(np.mean([flat[f"test/MAE/{c.name}"] for c in ZEROED]))
    assert flat["test/MAE/objective"] == evaluate(model, data, conditions_for(prep.modalities, burst=False),
                                                  prefix="test", **kw)["test/MAE/objective"]  # not read by it


def test_exactly_the_word_dropping_conditions_are_encoded(tiny, monkeypatch):
    """intra, burst, intra_l and rates with a language rate re-encode text, once each; a rates condition
    reuses its intra_l point's file; Table I, audio/visual points and zeroed_p never do."""
    cfg, prep, model = tiny
    data = prep.splits["valid"]
    labels = []
    real = text_mod.FrozenText.unk_states

    def watch(self, drop, *, label=""):
        labels.append(label)
        return real(self, drop, label=label)

    monkeypatch.setattr(text_mod.FrozenText, "unk_states", watch)
    conditions = (conditions_for(prep.modalities) + list(ZEROED)
                  + per_modality_conditions(prep.modalities, rates=[(0.9, 0.3, 0.3), (0.0, 0.5, 0.5)]))
    _scores(model, data, conditions, modalities=prep.modalities, mask_seed=SEED, batch_size=64)
    expected = ([c.name for c in INTRA] + [c.name for c in BURST] + [f"intra_l_{c.rate}" for c in INTRA]
                + ["rates_l0.9_a0.3_v0.3"])
    assert sorted(labels) == sorted(expected)
    files = {text_mod.FrozenEncoder.key(data.words.encoder, data.words.with_unk(
        c.view(data.inputs.valid(), seed=SEED, available=prep.modalities).drop[0].numpy()))
        for c in (Condition("modality", modality="l", rate=0.9), Condition("rates", rates=(0.9, 0.3, 0.3)))}
    assert len(files) == 1


def test_second_run_reads_the_cache_without_the_encoder(tiny_bert_dir, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_bert_dir, f"encoder.cache_dir={tmp_path}")
    prep = prepare(cfg)
    torch.manual_seed(3)
    model = build_model(cfg, prep).eval()
    kw = dict(modalities=prep.modalities, mask_seed=SEED, batch_size=64, prefix="val")
    first = evaluate(model, prep.splits["valid"], conditions_for(prep.modalities), **kw)
    n_files = len(list(tmp_path.glob("*.npy")))
    # the complete splits, the training patterns, intra and burst of valid; intra_1.0 and burst_1.0 drop
    # every word: one id array, one file
    assert n_files == 3 + 4 + 10 + 5 - 1

    def no_encoder(path):
        raise AssertionError("the encoder was loaded although every state is cached")

    monkeypatch.setattr(text_mod, "load_encoder", no_encoder)
    again = prepare(cfg)
    assert evaluate(model, again.splits["valid"], conditions_for(prep.modalities), **kw) == first
    assert len(list(tmp_path.glob("*.npy"))) == n_files


def test_a_live_encoder_scores_the_same_unk_inputs(tiny, tiny_bert_dir):
    """Fine-tuned (live) and frozen encoders read the same [UNK] utterances: with the same weights every
    word-drop score agrees up to the cache's float16."""
    cfg, prep, model = tiny
    live_cfg = tiny_cfg(tiny_bert_dir, "encoder.finetune=true")
    live_prep = prepare(live_cfg)
    live = build_model(live_cfg, live_prep).eval()
    missing, unexpected = live.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("encoders.l.bert.") for k in missing)
    conditions = [Condition("intra", rate=0.5), Condition("burst", rate=0.6), Condition("modality", modality="l", rate=1.0)]
    kw = dict(modalities=prep.modalities, mask_seed=SEED, batch_size=64)
    frozen = _scores(model, prep.splits["test"], conditions, **kw)
    by_live = _scores(live, live_prep.splits["test"], conditions, **kw)
    for c in conditions:
        torch.testing.assert_close(frozen[c], by_live[c], atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError, match="zeroed_0.5 zeroes cached encoder states"):
        _scores(live, live_prep.splits["test"], [Condition("zeroed", rate=0.5)], **kw)


def test_zeroed_curve_with_a_live_encoder_is_refused(tiny_bert_dir):
    from fsrf.errors import InputError

    for bad in ("eval.zeroed_curve=true", "missing.word_drop=zeroed"):
        with pytest.raises(InputError, match=bad.split("=")[0]):
            tiny_cfg(tiny_bert_dir, "encoder.finetune=true", bad)
    assert tiny_cfg(tiny_bert_dir, "eval.unk_curve=true").eval.zeroed_curve  # the former name


# ---------------------------------------------------------------- training


def test_patterns_are_unk_encodings_drawn_from_the_run_seed(tiny, tiny_bert_dir):
    cfg, prep, _ = tiny
    train = prep.splits["train"]
    pat = train.patterns
    assert pat is not None and len(pat.states) == cfg.missing.unk_patterns == 4 and pat.seed == cfg.seed
    valid = train.inputs.text_valid
    assert not (pat.drop & ~valid).any()
    frac = pat.drop.sum((1, 2)).double() / valid.sum()  # per pattern: a mean of U(0, 1) ratios
    assert len(set(frac.tolist())) == 4 and 0.2 < float(frac.mean()) < 0.8
    states, _ = by_hand(tiny_bert_dir, prep.raw["train"].text, pat.drop[2], cfg.data.max_tokens)
    np.testing.assert_allclose(np.asarray(pat.states[2], np.float32), states, atol=3e-3, rtol=3e-3)
    same = patterns_for(cfg, train)
    assert same is pat  # nothing rebuilt for the same seed
    other = patterns_for(cfg.model_copy(update={"seed": 1}), train)
    assert other.seed == 1 and not torch.equal(other.drop, pat.drop)


def step_inputs(cfg, prep, model, seed: int, **kw):
    """What the network receives in one training step (x, present, zeroed), and the generator after it."""
    train = prep.splits["train"]
    idx = torch.arange(24)
    gen = torch.Generator().manual_seed(seed)
    seen = {}

    def hook(module, args):
        seen["x"], seen["present"], seen["zeroed"] = args

    handle = model.register_forward_pre_hook(hook)
    try:
        train_losses(cfg, model, train.batch(idx), train.labels[idx], rate=0.7, generator=gen, index=idx, **kw)
    finally:
        handle.remove()
    return seen, gen, idx


def test_a_step_that_drops_words_reads_their_patterns(tiny):
    cfg, prep, model = tiny
    train = prep.splits["train"]
    pat = train.patterns
    seen, gen, idx = step_inputs(cfg, prep, model, 5, patterns=pat)

    # the step's draws by hand: mrm_views first, then the pattern of each of the 2B rows
    x = train.batch(idx)
    valid = x.valid()
    ref = torch.Generator().manual_seed(5)
    vp, vq = mrm_views(valid, rate=0.7, generator=ref)
    k = torch.randint(len(pat.states), (48,), generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())  # no other draw
    hit = torch.cat([vp.drop[0].any(1), vq.drop[0].any(1)])
    assert 0 < int(hit.sum()) < 48
    zeroed = [torch.cat(z) for z in zip(zeroed_masks(vp, valid), zeroed_masks(vq, valid))]
    rows = idx.repeat(2)
    for r in range(48):
        if hit[r]:
            want = torch.from_numpy(np.asarray(pat.states[int(k[r])][int(rows[r])], np.float32))
            assert torch.equal(seen["x"].text[r], want), r  # the pattern's [UNK] states ...
            assert not seen["zeroed"][0][r].any(), r  # ... with no kept token zeroed
            assert not torch.equal(seen["x"].text[r], x.text[r % 24])
        else:
            assert torch.equal(seen["x"].text[r], x.text[r % 24]), r
            assert torch.equal(seen["zeroed"][0][r], zeroed[0][r]), r  # absent utterances stay zeroed
    assert torch.equal(seen["present"], torch.cat([vp.present, vq.present]))
    for m in (1, 2):  # audio and visual masks are the plain MRM's
        assert torch.equal(seen["zeroed"][m], zeroed[m])


def test_word_drop_zeroed_is_the_former_step(tiny, tiny_bert_dir):
    cfg, prep, model = tiny
    zero_cfg = tiny_cfg(tiny_bert_dir, "missing.word_drop=zeroed")
    assert patterns_for(zero_cfg, prep.splits["train"]) is None
    seen, gen, idx = step_inputs(zero_cfg, prep, model, 5, patterns=None)
    x = prep.splits["train"].batch(idx)
    valid = x.valid()
    ref = torch.Generator().manual_seed(5)
    vp, vq = mrm_views(valid, rate=0.7, generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())  # the former stream: no pattern draw
    assert torch.equal(seen["x"].text, x.repeat(2).text)
    for m, z in enumerate(zip(zeroed_masks(vp, valid), zeroed_masks(vq, valid))):
        assert torch.equal(seen["zeroed"][m], torch.cat(z))
    # and the unk step's other masks are the same as this one's
    unk_seen, _, _ = step_inputs(cfg, prep, model, 5, patterns=prep.splits["train"].patterns)
    assert torch.equal(unk_seen["present"], seen["present"])
    assert all(torch.equal(unk_seen["zeroed"][m], seen["zeroed"][m]) for m in (1, 2))


def test_no_patterns_where_no_word_is_dropped(tiny_bert_dir):
    for overrides in (["missing.p0=0", "missing.p1=0"], ["missing.modality_scale.l=0"]):
        cfg = tiny_cfg(tiny_bert_dir, *overrides)
        assert prepare(cfg).splits["train"].patterns is None, overrides
