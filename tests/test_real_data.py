"""A short FSRF run on the real CMU-MOSI transcripts (issue 7): frozen MiniLM, text only, few epochs.

Asserts what a real-data run must show: the complete-utterance (``l``) test Non0 F1 beats 0.75, the
word-drop curve (``intra_0.1`` .. ``intra_1.0``: each word dropped with probability p, its id replaced by
``[UNK]`` before the frozen encoder, SPEC 7) falls from p = 0.1 to p = 1.0 within noise; so does the
section 2 zeroed-state curve (``zeroed_p``, ``eval.zeroed_curve``), which at p = 1.0 has lost every
token's state, so the model sees the same all-zero input for every sample and outputs one constant
score: the all-dropped prediction. The two curves' means are printed (the zeroed one is the optimistic
one: kept tokens' states still carry the dropped words).

The data are not shipped with the project (``../shared/data``, see its README); without them the test is
skipped with the reason. MiniLM's token states are cached in ``$FSRF_CACHE`` (tests/conftest.py): the
first session pays the encoding of 2195 utterances (~30 s), later sessions with the same cache do not.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import ROOT

MOSI = ROOT.parent / "shared" / "data" / "mosi" / "label.csv"
F1 = "Non0_F1_score"
NOISE = 0.03  # a rise between neighbouring curve points up to this much is noise (685 test utterances)


@pytest.fixture(scope="module")
def mosi_run():
    if not MOSI.is_file():
        pytest.skip(f"real MOSI transcripts not found at {MOSI} (see ../shared/data/README.md); "
                    "the project does not ship them")
    from fsrf.config import load_config
    from fsrf.train import fit

    cfg = load_config(ROOT / "configs" / "mosi_transcripts.yaml",
                      [f"data.path={MOSI}", "train.epochs=6", "model.width=64", "eval.zeroed_curve=true",
                       "train.threads=2"])
    start = time.time()
    try:
        result = fit(cfg, log=lambda s: None)
    finally:
        torch.set_num_threads(1)  # fit set 2 threads; the rest of the session runs with conftest's 1
    return cfg, result, time.time() - start


@pytest.mark.slow
def test_real_mosi_language_beats_075(mosi_run):
    cfg, result, wall = mosi_run
    assert result.prepared.modalities == ("l",)
    assert len(result.prepared.splits["test"]) == 685
    f1 = result.test[f"test/{F1}/l"]
    print(f"\nreal MOSI, frozen MiniLM, {cfg.train.epochs} epochs (best {result.best_epoch + 1}), "
          f"{wall:.1f} s: test l Non0 F1 = {f1:.4f}")
    assert f1 > 0.75, f"test l Non0_F1_score {f1:.4f}"
    assert any("two or more modalities" in n for n in result.notes)  # said, not silently skipped


@pytest.mark.slow
def test_real_mosi_token_drop_curve_falls_to_the_all_dropped_prediction(mosi_run):
    from fsrf.model import Inputs
    from fsrf.protocol import INTRA, TABLE, ZEROED, predict
    from fsrf.train import SplitTensors

    cfg, result, _ = mosi_run
    for name, conditions in (("[UNK] before the encoder", INTRA), ("zeroed states", ZEROED)):
        curve = np.array([result.test[f"test/{F1}/{c.name}"] for c in conditions])
        print(f"word-drop curve ({name}), p = 0.1 .. 1.0:", " ".join(f"{x:.3f}" for x in curve),
              f" mean {curve.mean():.3f}")
        rises = np.diff(curve)
        assert rises.max() <= NOISE, f"{name}: the curve rises by {rises.max():.3f} somewhere: {np.round(curve, 3)}"
        assert curve[0] - curve[-1] > 0.2, f"{name}: p = 0.1 {curve[0]:.3f} vs p = 1.0 {curve[-1]:.3f}"

    # zeroed states at p = 1.0: every utterance has lost every token's state, so every sample gets the
    # same score (``predict`` zeroes the view's dropped positions) ...
    test = result.prepared.splits["test"]
    valid = test.inputs.valid()
    view = INTRA[-1].view(valid, seed=cfg.eval.mask_seed, available=result.prepared.modalities)  # p = 1.0
    assert bool((view.zeroed(0, valid[0]) == valid[0]).all())  # every valid token dropped
    scores = predict(result.model, test, view, batch_size=cfg.eval.batch_size)
    assert float(scores.max() - scores.min()) < 1e-5, "the all-dropped scores are not constant"
    # ... the score of an all-zero text input (the all-dropped prediction).
    x = test.inputs
    zero = SplitTensors(Inputs(torch.zeros_like(x.text), x.text_valid), test.labels)
    complete = TABLE[0].view(valid, seed=cfg.eval.mask_seed, available=result.prepared.modalities)  # l
    constant = predict(result.model, zero, complete, batch_size=cfg.eval.batch_size)
    assert float(constant.max() - constant.min()) < 1e-5
    assert torch.allclose(scores, constant, atol=1e-5)
