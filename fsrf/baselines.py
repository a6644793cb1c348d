"""The simplest honest baseline: ridge regression on the frozen encoder's mean-pooled word states.

It reads the language modality only, the same cached states FSRF reads, under the same fixed masks and
the same word drops (``fsrf.protocol.word_states``: dropped ids read as [UNK] by the frozen encoder, or
zeroed states for ``zeroed_p``; the mean is over the utterance's valid tokens), so its curve is
directly comparable to a model's ``l`` and word-drop points. Conditions without language see a zero
vector and predict the intercept.
"""

from __future__ import annotations

import numpy as np
import torch

from fsrf.metrics import sentiment_metrics
from fsrf.protocol import conditions_for, summarise, word_states

ALPHAS = tuple(np.logspace(-2, 4, 13))


def pooled(states: torch.Tensor, valid: torch.Tensor, zeroed: torch.Tensor) -> np.ndarray:
    """(N, T, d) states -> (N, d) mean over valid tokens, dropped tokens counted as zeros."""
    keep = (valid & ~zeroed)[..., None].float()
    return ((states.float() * keep).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)).numpy()


def ridge_baseline(prep, *, mask_seed: int, alphas=ALPHAS) -> dict[str, float]:
    """Fit RidgeCV (alpha by efficient leave-one-out on train) on complete utterances; return flat
    ``val/...`` and ``test/...`` metrics under every condition the data has."""
    from sklearn.linear_model import RidgeCV

    train = prep.splits["train"]
    if not train.inputs.text.is_floating_point():
        raise ValueError("the ridge baseline reads cached (frozen) encoder states: set encoder.finetune=false")
    t_valid = train.inputs.text_valid
    x = pooled(train.inputs.text, t_valid, torch.zeros_like(t_valid))
    model = RidgeCV(alphas=alphas).fit(x, train.labels.numpy())
    out = {"ridge/alpha": float(model.alpha_)}
    for split in ("valid", "test"):
        data = prep.splits[split]
        valid = data.inputs.valid()
        per_cond = {}
        for cond in conditions_for(prep.modalities):
            view = cond.view(valid, seed=mask_seed, available=prep.modalities)
            states, zeroed = word_states(data, cond, view)
            text = data.inputs.text if states is None else torch.from_numpy(np.asarray(states))
            feats = pooled(text, valid[0], zeroed)
            per_cond[cond] = sentiment_metrics(model.predict(feats), data.labels.numpy())
        out.update(summarise(per_cond, prefix="val" if split == "valid" else "test", modalities=prep.modalities))
    return out
