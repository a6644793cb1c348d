"""Tests of fsrf.model: shapes under every test condition and ablation, gradients, and what must not matter
(an absent modality's features, dropped frames, padding), in cached-state and live-encoder modes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fsrf import MODALITIES
from fsrf.config import load_config
from fsrf.protocol import MISSING, Condition, conditions_for
from fsrf.model import FSRF, Inputs

B, D = 6, 16
T = {"l": 7, "a": 9, "v": 11}
DIMS = {"l": 12, "a": 5, "v": 20}  # MOSI's audio/vision widths; a small text state width
SMALL = ["model.width=16", "model.seq_width=8", "model.seq_heads=2", "model.dropout=0"]
ABLATIONS = {"full": [], "no-dhf": ["model.dhf=false"], "no-das": ["model.das=false"],
             "no-noise": ["model.noise=false"]}


def model_cfg(*overrides: str):
    """The real config, shrunk."""
    return load_config(None, SMALL + list(overrides)).model


def make_model(*overrides: str, modalities=MODALITIES, seed: int = 0, bert=None, unk_id: int = 100) -> FSRF:
    torch.manual_seed(seed)
    dims = {m: DIMS[m] for m in modalities}
    if bert is not None:  # live mode: C_L has the encoder's width
        dims["l"] = bert.config.hidden_size
    return FSRF(model_cfg(*overrides), dims=dims, modalities=modalities, bert=bert, unk_id=unk_id).eval()


def prefix_mask(lengths) -> torch.Tensor:
    lengths = torch.as_tensor(lengths)
    return torch.arange(int(lengths.max()) + 2)[None, :] < lengths[:, None]  # (B, T), with padding


def make_inputs(modalities=MODALITIES, seed: int = 0, text_ids: bool = False, vocab: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    lengths = {"l": [1, 3, 5, 7, 7, 2], "a": [9, 4, 1, 6, 9, 3], "v": [2, 11, 7, 5, 1, 11]}
    valid = {m: prefix_mask(lengths[m]) for m in MODALITIES}
    if text_ids:
        text = torch.randint(1000, vocab, valid["l"].shape, generator=g)  # real word pieces, not specials
        text = text.masked_fill(~valid["l"], 0)  # [PAD]
    else:
        text = torch.randn(*valid["l"].shape, DIMS["l"], generator=g) * valid["l"][..., None]
    x = Inputs(text, valid["l"])
    for m, name in (("a", "audio"), ("v", "vision")):
        if m in modalities:
            setattr(x, name, torch.randn(*valid[m].shape, DIMS[m], generator=g) * valid[m][..., None])
            setattr(x, name + "_valid", valid[m])
    return x


def table(present: str) -> Condition:
    return Condition("table", present=present)


def intra(p: float) -> Condition:
    return Condition("intra", rate=p)


def burst(p: float) -> Condition:
    return Condition("burst", rate=p)


def run(model: FSRF, x: Inputs, condition: Condition, seed: int = 0):
    valid = x.valid()
    view = condition.view(valid, seed=seed, available=model.modalities)
    zeroed = tuple(view.zeroed(i, valid[i]) for i in range(3))
    return model(x, view.present, zeroed), view


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("modalities", [("l", "a", "v"), ("l",)], ids=["lav", "text-only"])
def test_shapes_under_every_condition(ablation, modalities):
    model = make_model(*ABLATIONS[ablation], modalities=modalities)
    x = make_inputs(modalities)
    conditions = conditions_for(modalities)
    assert len(conditions) == (7 if len(modalities) == 3 else 1) + 10 + 5
    M = len(modalities)
    for cond in conditions:
        out, _ = run(model, x, cond)
        assert out.score.shape == (B,) and out.z.shape == (B, D) and out.h.shape == (B, M, D), cond
        assert torch.isfinite(out.score).all() and torch.isfinite(out.z).all(), cond
        if ablation == "no-dhf":
            assert out.ho is None and out.he is None and out.noise is None
        else:
            assert out.ho.shape == out.he.shape == (B, M, D)
            if ablation == "no-noise":
                assert out.noise is None
            else:
                assert out.noise.shape == (B, M, D)
                # Z = sum R_ho + sum R_he - sum R_n (SPEC section 3)
                torch.testing.assert_close(out.z, out.ho.sum(1) + out.he.sum(1) - out.noise.sum(1))


def test_das_ablation_leaves_the_network_unchanged():
    full, no_das = make_model(), make_model("model.das=false")
    assert {k: v.shape for k, v in full.state_dict().items()} == {k: v.shape for k, v in no_das.state_dict().items()}
    x = make_inputs()
    for cond in (table("lav"), table("la"), intra(0.3)):
        assert torch.equal(run(full, x, cond)[0].score, run(no_das, x, cond)[0].score)


def test_ablations_change_the_structure():
    names = {k: set(make_model(*o).state_dict()) for k, o in ABLATIONS.items()}
    assert any(n.startswith("noise.") for n in names["full"])
    assert not any(n.startswith("noise.") for n in names["no-noise"])
    assert not any(n.startswith(("shared.", "specific.", "noise.")) for n in names["no-dhf"])
    assert any(n.startswith("fuse.") for n in names["no-dhf"])


@pytest.mark.parametrize("ablation", ["full", "no-dhf", "no-noise"])
def test_gradients_finite_and_reach_every_parameter(ablation):
    model = make_model(*ABLATIONS[ablation]).train()
    out, _ = run(model, make_inputs(), table("lav"))
    loss = (out.score - 1.0).pow(2).mean() + (0 if out.ho is None else out.ho.pow(2).mean())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    for m in MODALITIES:  # every encoder, explicitly
        assert any(p.grad.abs().sum() > 0 for p in model.encoders[m].parameters())


def _perturb(x: Inputs, name: str, where: torch.Tensor, scale: float = 100.0, seed: int = 1) -> Inputs:
    """A copy of ``x`` with large random changes to modality ``name`` at the (B, T) positions ``where``."""
    g = torch.Generator().manual_seed(seed)
    feats = getattr(x, name)
    return replace(x, **{name: feats + scale * torch.randn(feats.shape, generator=g) * where[..., None]})


FIELD = {"l": "text", "a": "audio", "v": "vision"}


@pytest.mark.parametrize("ablation", ["full", "no-dhf"])
@pytest.mark.parametrize("condition", MISSING, ids=str)
def test_absent_modality_does_not_influence_the_output(condition, ablation):
    model = make_model(*ABLATIONS[ablation])
    x = make_inputs()
    base, _ = run(model, x, condition)
    for m in MODALITIES:
        valid = x.valid()[MODALITIES.index(m)]
        changed, _ = run(model, _perturb(x, FIELD[m], valid), condition)
        if m in condition.present:  # the check can fail: a present modality's features do matter
            assert not torch.allclose(changed.score, base.score, atol=1e-3), (condition, m)
        else:
            assert torch.equal(changed.score, base.score), (condition, m)


@pytest.mark.parametrize("condition", [intra(0.5), burst(0.4), intra(1.0)], ids=str)
def test_dropped_positions_do_not_influence_the_output(condition):
    model = make_model()
    x = make_inputs()
    base, view = run(model, x, condition)
    for i, m in enumerate(MODALITIES):
        assert view.drop[i].any()
        changed, _ = run(model, _perturb(x, FIELD[m], view.drop[i]), condition)
        assert torch.equal(changed.score, base.score), m
        kept = x.valid()[i] & ~view.drop[i]
        if kept.any():
            moved, _ = run(model, _perturb(x, FIELD[m], kept), condition)
            assert not torch.allclose(moved.score, base.score, atol=1e-3), m


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_padding_does_not_influence_the_output(train):
    model = make_model()
    model.train(train)
    x = make_inputs()
    for cond in (table("lav"), intra(0.3)):
        torch.manual_seed(0)  # dropout is 0 in SMALL; keep any other randomness equal too
        base, _ = run(model, x, cond)
        for i, m in enumerate(MODALITIES):
            pad = ~x.valid()[i]
            assert pad.any()
            torch.manual_seed(0)
            changed, _ = run(model, _perturb(x, FIELD[m], pad), cond)
            torch.testing.assert_close(changed.score, base.score, rtol=0, atol=1e-5)


def test_empty_sequence_gives_a_finite_output():
    model = make_model().train()
    x = make_inputs()
    x.audio_valid = x.audio_valid.clone()
    x.audio_valid[2] = False  # a sample with no audio frame at all
    x.audio[2] = 0
    for cond in (table("lav"), intra(1.0), table("a")):
        out, _ = run(model, x, cond)
        assert torch.isfinite(out.score).all(), cond
    model.eval()
    out, _ = run(model, x, table("lav"))
    assert torch.isfinite(out.score).all()


# ------------------------------------------------------------------------------------------------
# Live encoder: a tiny random BERT in memory


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=1200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    return BertModel(config).eval()


UNK = 100  # BERT's [UNK] id


@pytest.mark.parametrize("condition", [intra(0.5), burst(0.6)], ids=str)
def test_live_encoder_replaces_dropped_tokens_with_unk(tiny_bert, condition):
    model = make_model(bert=tiny_bert, unk_id=UNK)
    x = make_inputs(text_ids=True, vocab=1200)
    out, view = run(model, x, condition)
    dropped = view.drop[0]
    assert dropped.any() and (x.text_valid & ~dropped).any()
    # the same ids with the dropped words written as [UNK] by hand, and nothing dropped in text
    by_hand = replace(x, text=x.text.masked_fill(dropped, UNK))
    valid = x.valid()
    zeroed = (torch.zeros_like(dropped),) + tuple(view.zeroed(i, valid[i]) for i in (1, 2))
    ref = model(by_hand, view.present, zeroed)
    torch.testing.assert_close(out.score, ref.score, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.h[:, 0], ref.h[:, 0], rtol=0, atol=1e-6)
    # and not some other token: [PAD] (0) in their place gives another C_L
    other = replace(x, text=x.text.masked_fill(dropped, 0))
    assert not torch.allclose(model(other, view.present, zeroed).h[:, 0], out.h[:, 0], atol=1e-4)


def test_live_encoder_absent_text_is_zero_and_ignores_ids(tiny_bert):
    model = make_model(bert=tiny_bert, unk_id=UNK)
    x = make_inputs(text_ids=True, vocab=1200)
    out, view = run(model, x, table("av"))
    assert not view.present[:, 0].any()
    # C_L = 0, so H_l is the output layer's bias
    torch.testing.assert_close(out.h[:, 0], model.encoders["l"].out.bias.expand(B, D))
    y = replace(x, text=torch.randint(1000, 1200, x.text.shape))
    assert torch.equal(run(model, y, table("av"))[0].score, out.score)


def test_live_encoder_gets_gradients(tiny_bert):
    import copy

    bert = copy.deepcopy(tiny_bert).train()
    model = make_model(bert=bert, unk_id=UNK).train()
    out, _ = run(model, make_inputs(text_ids=True, vocab=1200), intra(0.3))
    out.score.pow(2).mean().backward()
    grads = [p.grad for n, p in bert.named_parameters() if "pooler" not in n]  # the pooler is unused
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert bert.encoder.layer[-1].output.dense.weight.grad.abs().sum() > 0
