"""Evaluation figures: the field's sentiment metrics (MMSA) and MultiBench's robustness summaries.

``sentiment_metrics`` reproduces the names and conventions of thuiar/MMSA's ``metricsTop.py`` for
MOSI/MOSEI regression (SPEC section 5), so numbers are comparable with published tables; the only
differences are that values are not rounded to 4 decimals and that degenerate inputs are defined
(see its docstring). The robustness figures follow pliang279/MultiBench ``eval_scripts/robustness.py``.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

CURVE_POINTS = 11  # p = 0, 0.1, ..., 1.0; f(0) is the complete-modality score
CURVE_STEP = 0.1


def _as_1d(name: str, x) -> np.ndarray:
    """numpy array or torch tensor, shape (N,) or (N, 1) -> float64 (N,)."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"{name}: expected shape (N,) or (N, 1), got {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name}: empty")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains non-finite values")
    return x


def _weighted_f1(truth: np.ndarray, preds: np.ndarray) -> float:
    # zero_division=0 is what sklearn's default does after its warning, i.e. what MMSA's numbers used;
    # it occurs when a class is never predicted or never true.
    return float(f1_score(truth, preds, average="weighted", zero_division=0))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def sentiment_metrics(preds, labels) -> dict[str, float]:
    """Score sentiment-intensity predictions with the field's standard metrics (MMSA's names).

    For predictions s and labels y in [-3, 3]:

    - ``Has0_acc_2``, ``Has0_F1_score``: negative (< 0) against non-negative (>= 0), for both s and y;
      accuracy and weighted F1.
    - ``Non0_acc_2``, ``Non0_F1_score``: samples with y == 0 left out; positive means > 0 for both s
      and y (so a prediction of exactly 0 counts as negative, as in MMSA); accuracy and weighted F1.
      **The headline F1 (SPEC section 5).** NaN if every label is 0.
    - ``Mult_acc_5``, ``Mult_acc_7``: s and y clipped to [-2, 2] / [-3, 3], rounded to the nearest
      integer with numpy's round-half-to-even (MMSA's ``np.round``: 0.5 -> 0, 1.5 -> 2, -2.5 -> -2),
      accuracy of the rounded classes.
    - ``MAE``: mean |s - y|.
    - ``Corr``: Pearson correlation of s and y. Defined as 0.0 (no linear association can be measured)
      when s or y is constant or N < 2, where Pearson's r is 0/0; MMSA would return NaN.

    Weighted F1 counts an ill-defined per-class F1 (class never predicted, or never true) as 0, as
    sklearn does by default. Values are fractions in [0, 1] except MAE and Corr; not rounded.

    Args:
        preds: (N,) or (N, 1) predicted scores, numpy array or torch tensor.
        labels: (N,) or (N, 1) true scores, same length.

    Returns:
        Dict of the eight metrics above, Python floats.
    """
    s, y = _as_1d("preds", preds), _as_1d("labels", labels)
    if s.shape != y.shape:
        raise ValueError(f"labels: length {y.size} does not match preds {s.size}")

    has0_truth, has0_preds = y >= 0, s >= 0
    nonzero = y != 0
    if nonzero.any():
        non0_truth, non0_preds = y[nonzero] > 0, s[nonzero] > 0
        non0_acc = float(accuracy_score(non0_truth, non0_preds))
        non0_f1 = _weighted_f1(non0_truth, non0_preds)
    else:
        non0_acc = non0_f1 = math.nan

    def mult_acc(bound: float) -> float:
        return float(np.mean(np.round(np.clip(s, -bound, bound)) == np.round(np.clip(y, -bound, bound))))

    return {
        "Has0_acc_2": float(accuracy_score(has0_truth, has0_preds)),
        "Has0_F1_score": _weighted_f1(has0_truth, has0_preds),
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        "Mult_acc_5": mult_acc(2.0),
        "Mult_acc_7": mult_acc(3.0),
        "MAE": float(np.mean(np.abs(s - y))),
        "Corr": _pearson(s, y),
    }


def _curve(name: str, curve) -> np.ndarray:
    x = np.asarray(curve, dtype=np.float64)
    if x.shape != (CURVE_POINTS,):
        raise ValueError(
            f"{name}: expected {CURVE_POINTS} values f(p) for p = 0, 0.1, ..., 1.0, got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains non-finite values")
    return x


def relative_robustness(curve) -> float:
    """How much of a score a method keeps as missingness grows: area under its curve (MultiBench).

        RR = sum_{k=0}^{9} 0.1 * (f(p_k) + f(p_{k+1})) / 2,   p_k = k / 10

    the trapezoid area under f over p in [0, 1]; a constant curve at 1.0 scores 1.0.

    Args:
        curve: 11 scores f(p) for p = 0, 0.1, ..., 1.0; f(0) is the complete-modality score.
    """
    f = _curve("curve", curve)
    return float(np.sum(f[:-1] + f[1:]) * CURVE_STEP / 2)


def effective_robustness(curve, baseline) -> float:
    """What a method keeps beyond a baseline shifted to the same clean score (MultiBench).

        ER = sum_{k=0}^{10} ( f(p_k) - (b(p_k) + f(0) - b(0)) )

    a plain sum over the 11 points (not an area), b being the late-fusion baseline's curve. The p = 0
    term is 0 by construction.

    Args:
        curve: 11 scores f(p) of the method, p = 0, 0.1, ..., 1.0.
        baseline: 11 scores b(p) of the baseline at the same p.
    """
    f, b = _curve("curve", curve), _curve("baseline", baseline)
    return float(np.sum(f - (b + f[0] - b[0])))


def minmax_normalise(values: dict[str, float]) -> dict[str, float]:
    """Put one robustness figure of several methods on [0, 1]: ``(v - min) / (max - min)`` (MultiBench).

    The best method gets 1.0, the worst 0.0. When all values are equal (including a single method)
    there is no spread to normalise by; every method gets 0.0 (MultiBench would divide 0 by 0).

    Args:
        values: method name -> raw figure (higher is better).

    Returns:
        method name -> normalised figure, same keys and order.
    """
    if not values:
        raise ValueError("values: empty")
    raw = {name: float(v) for name, v in values.items()}
    if not all(math.isfinite(v) for v in raw.values()):
        raise ValueError("values: contains non-finite values")
    low, high = min(raw.values()), max(raw.values())
    if high == low:
        return {name: 0.0 for name in raw}
    return {name: (v - low) / (high - low) for name, v in raw.items()}
