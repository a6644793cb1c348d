"""Tests of fsrf.model: shapes under every test condition and ablation, gradients, and what must not matter
(an absent modality's features, dropped frames, padding), in cached-state and live-encoder modes."""

from __future__ import annotations

import copy
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


def test_grouped_heads_are_the_per_modality_mlps():
    """GroupedMLP (one batched matmul per layer) is M separate ``mlp``s: drawn with the same seed, the same
    parameters in the same order, and on (B, M, d) the same values and gradients as modality k through
    MLP k alone; a head mixing modalities, or weights used untransposed, would fail."""
    from fsrf.model import GroupedMLP, mlp

    torch.manual_seed(3)
    separate = [mlp(10, 7, 4) for _ in range(3)]
    torch.manual_seed(3)
    grouped = GroupedMLP(3, 10, 7, 4)
    x = torch.randn(5, 3, 10, requires_grad=True)
    want = torch.stack([separate[k](x[:, k]) for k in range(3)], 1)  # (5, 3, 4)
    got = grouped(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    g_want, = torch.autograd.grad(want.square().sum(), x)
    g_got, = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(g_got, g_want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grouped.w1[1], separate[1][0].weight.T)
    torch.testing.assert_close(grouped.b2[2], separate[2][2].bias)


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
    bert = copy.deepcopy(tiny_bert).train()
    model = make_model(bert=bert, unk_id=UNK).train()
    out, _ = run(model, make_inputs(text_ids=True, vocab=1200), intra(0.3))
    out.score.pow(2).mean().backward()
    grads = [p.grad for n, p in bert.named_parameters() if "pooler" not in n]  # the pooler is unused
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert bert.encoder.layer[-1].output.dense.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# An absent modality carries no information (SPEC section 7)


def _redraw(x: Inputs, m: str, lengths, *, seed: int = 5, text_ids: bool = False) -> Inputs:
    """A copy of ``x`` whose modality ``m`` has other stored values, other valid lengths and another
    padded width (its valid mask is rebuilt from ``lengths``)."""
    g = torch.Generator().manual_seed(seed)
    valid = prefix_mask(lengths)  # (B, max(lengths) + 2)
    if text_ids:
        feats = torch.randint(1000, 1200, valid.shape, generator=g).masked_fill(~valid, 0)
    else:
        feats = 50 * torch.randn(*valid.shape, DIMS[m], generator=g) * valid[..., None]
    return replace(x, **{FIELD[m]: feats, FIELD[m] + "_valid": valid})


def _forward(model: FSRF, x: Inputs, present: torch.Tensor):
    """The model on ``x`` with modalities ``present`` (B, 3), nothing dropped (``View.zeroed``'s masks)."""
    from fsrf.missing import View

    valid = x.valid()
    view = View(present, tuple(torch.zeros_like(v) for v in valid))
    return model(x, present, tuple(view.zeroed(i, valid[i]) for i in range(3)))


# Rows where the modality is absent: all of them (a Table I condition) and some (an MRM view).
ABSENT_ROWS = {"all": [True] * B, "some": [True, False, True, True, False, True]}
OTHER_LENGTHS = {"l": [7, 1, 3, 9, 2, 4], "a": [1, 12, 3, 2, 8, 5], "v": [13, 2, 4, 1, 6, 3]}


@pytest.mark.parametrize("rows", ABSENT_ROWS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("m", MODALITIES)
def test_absent_modality_is_one_fixed_vector_whatever_its_values_and_length(m, train, rows):
    """H_m of an absent row is the same vector for every sample and every input of m (values, valid
    length, padded width), and so is the score; the present rows' H_m does change (the check can fail)."""
    k = MODALITIES.index(m)
    model = make_model(*ABLATIONS["no-dhf"]).train(train)  # dropout 0 (SMALL): train mode is deterministic
    x = make_inputs()
    absent = torch.tensor(ABSENT_ROWS[rows])
    present = torch.ones(B, 3, dtype=torch.bool)
    present[:, k] = ~absent
    y = _redraw(x, m, OTHER_LENGTHS[m])
    base, changed = _forward(model, x, present), _forward(model, y, present)
    h = base.h[absent, k]  # (n_absent, D)
    assert torch.equal(h, h[:1].expand_as(h)), "absent rows differ from one another"
    assert torch.equal(changed.h[absent, k], h), "an absent modality's values or length reach H_m"
    assert torch.equal(changed.score[absent], base.score[absent])
    if (~absent).any():
        assert not torch.allclose(changed.h[~absent, k], base.h[~absent, k], atol=1e-3)
    # and the vector is that of the all-absent batch (which the evaluation protocol encodes once)
    none = present.clone()
    none[:, k] = False
    assert torch.equal(_forward(model, y, none).h[:, k], h[:1].expand(B, -1))


@pytest.mark.parametrize("overrides", [[], ["model.dhf=false"], ["model.dhf=false", "model.das=false", "model.fusion=late"]],
                         ids=["full", "early", "late"])
def test_every_parameter_is_in_the_graph_when_a_modality_is_absent_from_the_whole_batch(overrides):
    """DistributedDataParallel (without find_unused_parameters) needs a gradient, possibly zero, for
    every parameter at every step: an encoder or head whose modality no row has must stay in the graph."""
    for cond in MISSING:
        model = make_model(*overrides).train()
        out, _ = run(model, make_inputs(), cond)
        out.score.pow(2).mean().backward()
        missing = [name for name, p in model.named_parameters() if p.grad is None]
        assert not missing, (cond, missing)


def test_live_encoder_absent_text_ignores_its_length(tiny_bert):
    model = make_model(bert=tiny_bert, unk_id=UNK)
    x = make_inputs(text_ids=True, vocab=1200)
    present = torch.tensor([[False, True, True]] * B)
    base = _forward(model, x, present)
    changed = _forward(model, _redraw(x, "l", OTHER_LENGTHS["l"], text_ids=True), present)
    assert torch.equal(changed.h[:, 0], base.h[:, 0]) and torch.equal(changed.score, base.score)
    torch.testing.assert_close(base.h[:, 0], model.encoders["l"].out.bias.expand(B, D))


@pytest.mark.parametrize("fusion", ["early", "late"])
@pytest.mark.parametrize("m", MODALITIES)
def test_evaluate_scores_a_condition_without_m_the_same_whatever_m_holds(m, fusion):
    """Through the evaluation protocol's scoring (``_scores``, which ``evaluate`` summarises): every
    Table I condition without m scores identically when m's stored values and lengths change; one with
    m does not."""
    from fsrf.protocol import TABLE, _scores
    from fsrf.train import SplitTensors

    model = make_model("model.dhf=false", "model.das=false", f"model.fusion={fusion}")
    x = make_inputs()
    labels = torch.linspace(-2.5, 2.5, B)
    data, other = SplitTensors(x, labels), SplitTensors(_redraw(x, m, OTHER_LENGTHS[m]), labels)
    # Table I's conditions: the intra points would need the frozen encoder to re-encode dropped words
    # (SplitTensors.words), which these hand-made inputs do not carry; absence is what this test is about.
    conditions = list(TABLE)
    kw = dict(modalities=MODALITIES, mask_seed=0, batch_size=4)  # two batches, the second partial
    base, changed = _scores(model, data, conditions, **kw), _scores(model, other, conditions, **kw)
    without = [c for c in TABLE if m not in c.present]
    for cond in TABLE:
        if cond in without:
            assert torch.equal(changed[cond], base[cond]), cond
        else:
            assert not torch.allclose(changed[cond], base[cond], atol=1e-3), cond


# ------------------------------------------------------------------------------------------------
# Late fusion (SPEC section 7): one predictor per modality, the mean of the present ones' scores


PRESENT = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)


def test_late_fusion_is_the_mean_of_the_present_modalities_head_scores():
    model = make_model("model.dhf=false", "model.das=false", "model.fusion=late")
    assert not hasattr(model, "head") and not hasattr(model, "fuse") and set(model.heads) == set(MODALITIES)
    x = make_inputs()
    out = _forward(model, x, PRESENT)
    by_hand = []
    for i in range(B):
        own = [model.heads[m](out.h[i, k]).item() for k, m in enumerate(MODALITIES) if PRESENT[i, k]]
        by_hand.append(sum(own) / len(own))
    torch.testing.assert_close(out.score, torch.tensor(by_hand), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.scores, torch.stack([model.heads[m](out.h[:, k]).squeeze(-1)
                                                        for k, m in enumerate(MODALITIES)], 1), rtol=0, atol=0)
    # an absent modality's head is ignored: moving it moves only the rows where its modality is present
    for k, m in enumerate(MODALITIES):
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.heads[m][-1].bias += 10.0
        moved = _forward(other, x, PRESENT)
        assert torch.equal(moved.score[~PRESENT[:, k]], out.score[~PRESENT[:, k]]), m
        shift = 10.0 / PRESENT[PRESENT[:, k]].sum(1)  # 10 / (number of present modalities)
        torch.testing.assert_close(moved.score[PRESENT[:, k]] - out.score[PRESENT[:, k]], shift, rtol=0, atol=1e-5)


def test_late_fusion_one_modality_condition_is_that_modality_head_alone():
    """Under Table I's ``a``, late fusion's score is the audio predictor's score on complete audio."""
    from fsrf.protocol import _scores
    from fsrf.train import SplitTensors

    model = make_model("model.dhf=false", "model.das=false", "model.fusion=late")
    x = make_inputs()
    scores = _scores(model, SplitTensors(x, torch.zeros(B)), list(MISSING), modalities=MODALITIES, mask_seed=0,
                     batch_size=4)
    complete = _forward(model, x, torch.ones(B, 3, dtype=torch.bool)).scores  # (B, 3)
    for k, m in enumerate(MODALITIES):
        torch.testing.assert_close(scores[table(m)], complete[:, k], rtol=0, atol=1e-6)
    torch.testing.assert_close(scores[table("av")], complete[:, 1:].mean(1), rtol=0, atol=1e-6)


def test_config_refuses_late_fusion_with_dhf():
    from fsrf.errors import InputError

    with pytest.raises(InputError, match="model.fusion = 'late' needs model.dhf = false"):
        load_config(None, ["model.fusion=late"])
    with pytest.raises(InputError, match="model.fusion = 'late' needs model.das = false"):
        load_config(None, ["model.fusion=late", "model.dhf=false"])
    assert load_config(None, ["model.fusion=late", "model.dhf=false", "model.das=false"]).model.fusion == "late"


def test_late_fusion_task_loss_is_each_predictor_own_mse():
    """Late fusion trains each predictor on its own MSE (``train.late_fusion_task_loss``), by hand; and
    ``train_losses`` uses it for both views (at rate 0 both views are complete)."""
    from fsrf.train import late_fusion_task_loss, train_losses

    scores = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0], [1.0, 0.0, -2.0]])
    y = torch.tensor([1.0, 0.0, 1.0, -1.0])
    present = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=torch.bool)  # v nowhere
    l_mse = (0 + 0 + 4) / 3  # rows 0, 1, 3
    a_mse = (1 + 1 + 1) / 3  # rows 0, 2, 3
    assert late_fusion_task_loss(scores, y, present=present).item() == pytest.approx((l_mse + a_mse) / 2)
    cfg = load_config(None, SMALL + ["model.dhf=false", "model.das=false", "model.fusion=late"])
    model = make_model("model.dhf=false", "model.das=false", "model.fusion=late")
    x, y = make_inputs(), torch.linspace(-2, 2, B)
    terms = train_losses(cfg, model, x, y, rate=0.0, generator=torch.Generator().manual_seed(0))
    own = _forward(model, x, torch.ones(B, 3, dtype=torch.bool)).scores
    by_hand = ((own - y[:, None]) ** 2).mean(0).mean()  # the mean over l, a, v of each one's MSE
    torch.testing.assert_close(terms["task_p"], by_hand, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["task_q"], by_hand, rtol=1e-6, atol=1e-6)
    terms["total"].backward()
    for m in MODALITIES:  # each predictor and each encoder learns
        assert model.heads[m][0].weight.grad.abs().sum() > 0 and model.encoders[m].out.weight.grad.abs().sum() > 0


# As tests/conftest.py's TINY_RUN: the real config shrunk, one epoch of three batches on one thread.
TINY_RUN = ("data.size_scale=0.05", "model.width=16", "model.seq_width=8", "train.epochs=1", "train.max_batches=3",
            "train.threads=1")


@pytest.fixture(scope="module")
def tiny_prep():
    from fsrf.train import prepare

    return prepare(load_config(None, list(TINY_RUN)))


def fit_variant(name: str, prep):
    """One tiny run of the variant ``name``: its overrides on the shrunk real config, as a study applies them."""
    from fsrf import variants
    from fsrf.config import apply_overrides, build_config
    from fsrf.train import fit

    cfg = build_config(apply_overrides(load_config(None, list(TINY_RUN)).model_dump(),
                                       dict(variants.get(name).overrides)))
    return cfg, fit(cfg, prep=prep, log=lambda _: None)


@pytest.fixture(scope="module")
def tiny_fsrf(tiny_prep):
    return fit_variant("fsrf", tiny_prep)[1]


@pytest.mark.parametrize("name", ["late_fusion", "early_fusion"])
def test_fusion_baselines_fit_and_log_fsrf_metric_names(tiny_prep, tiny_fsrf, name):
    from fsrf import variants

    full = tiny_fsrf
    cfg, result = fit_variant(name, tiny_prep)
    assert cfg.model.fusion == name.split("_")[0] and not cfg.model.dhf and not cfg.model.das
    assert variants.is_baseline(name) and name in variants.DEFAULT
    assert set(result.val) == set(full.val) and set(result.test) == set(full.test)
    train = {k for k in result.history[0] if k.startswith("train/")}
    assert train == {"train/total", "train/task_p", "train/task_q", "train/missing_rate"}
    assert train < {k for k in full.history[0] if k.startswith("train/")}
    assert result.history[0]["train/missing_rate"] == 0.0
    assert all(torch.isfinite(torch.tensor(v)) for v in result.test.values())
    # the two baselines are different models: late fusion's one-modality scores are its own heads'
    assert isinstance(result.model.heads if name == "late_fusion" else result.model.fuse, torch.nn.Module)
