"""fsrf.metrics against hand-computed cases (MMSA's conventions) and MultiBench's robustness definitions."""

import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from fsrf.metrics import effective_robustness, minmax_normalise, relative_robustness, sentiment_metrics

# Index:            0     1     2    3     4    5
LABELS = np.array([-2.0, -0.5, 0.0, 0.0, 1.0, 3.0])
PREDS = np.array([-1.2, 0.3, 0.0, -0.4, 1.4, 2.2])


def test_sentiment_metrics_hand_case():
    m = sentiment_metrics(PREDS, LABELS)
    assert set(m) == {
        "Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr",
    }
    # Has0: truth >= 0 is [F F T T T T], preds >= 0 is [F T T F T T]: 4 of 6 right.
    # class F: P = 1/2, R = 1/2, F1 = 1/2 (support 2); class T: P = 3/4, R = 3/4, F1 = 3/4 (support 4)
    assert m["Has0_acc_2"] == pytest.approx(4 / 6)
    assert m["Has0_F1_score"] == pytest.approx((0.5 * 2 + 0.75 * 4) / 6)
    # Non0: indices 2, 3 dropped; truth > 0 is [F F T T], preds > 0 is [F T T T]: 3 of 4 right.
    # class F: P = 1, R = 1/2, F1 = 2/3; class T: P = 2/3, R = 1, F1 = 4/5; both support 2
    assert m["Non0_acc_2"] == pytest.approx(3 / 4)
    assert m["Non0_F1_score"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    # Mult_acc_7: rounded preds [-1 0 0 -0 1 2], labels [-2 -0 0 0 1 3] (-0.5 rounds half-to-even to -0)
    assert m["Mult_acc_7"] == pytest.approx(4 / 6)
    # Mult_acc_5: clipping to [-2, 2] makes index 5 agree (2 == 2)
    assert m["Mult_acc_5"] == pytest.approx(5 / 6)
    assert m["MAE"] == pytest.approx((0.8 + 0.8 + 0.0 + 0.4 + 0.4 + 0.8) / 6)
    assert m["Corr"] == pytest.approx(scipy.stats.pearsonr(PREDS, LABELS).statistic, rel=1e-12)
    assert all(isinstance(v, float) for v in m.values())


def test_f1_is_weighted_by_support_on_imbalanced_classes():
    """The hand case above has two samples per Non0 class, where weighted and macro F1 agree. Here the
    classes are 2 against 5 (Non0) and 2 against 6 (Has0), and precision differs from recall, so weighted
    F1, macro F1 and accuracy all differ."""
    labels = np.array([-1.0, -2.0, 1.0, 2.0, 3.0, 0.5, 1.5, 0.0])
    preds = np.array([-1.0, -1.0, -1.0, 2.0, 1.0, 1.0, 1.0, 5.0])
    m = sentiment_metrics(preds, labels)
    # Non0 (index 7 left out): truth > 0 is [F F T T T T T], preds > 0 is [F F F T T T T]: 6 of 7 right.
    # class F (support 2): P = 2/3, R = 1, F1 = 4/5; class T (support 5): P = 1, R = 4/5, F1 = 8/9
    assert m["Non0_acc_2"] == pytest.approx(6 / 7)
    assert m["Non0_F1_score"] == pytest.approx((2 * 4 / 5 + 5 * 8 / 9) / 7)  # 0.8635; macro would be 0.8444
    # Has0: truth >= 0 is [F F T T T T T T], preds >= 0 is [F F F T T T T T]: 7 of 8 right.
    # class F (support 2): P = 2/3, R = 1, F1 = 4/5; class T (support 6): P = 1, R = 5/6, F1 = 10/11
    assert m["Has0_acc_2"] == pytest.approx(7 / 8)
    assert m["Has0_F1_score"] == pytest.approx((2 * 4 / 5 + 6 * 10 / 11) / 8)  # 0.8818; macro would be 0.8545


def test_zero_predictions_follow_mmsa_thresholds():
    # Has0 counts a prediction of 0 as non-negative; Non0 counts it as negative (pred > 0 is positive).
    m = sentiment_metrics(np.array([0.0, 0.0, -1.0]), np.array([1.0, 1.0, -1.0]))
    assert m["Has0_acc_2"] == 1.0
    assert m["Non0_acc_2"] == pytest.approx(1 / 3)


def test_rounding_is_half_to_even_and_clipping():
    # labels at x.5: numpy rounds 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2
    labels = np.array([0.5, 1.5, 2.5, -2.5, 3.0, -3.0])
    preds = np.array([0.0, 2.0, 2.0, -2.0, 9.0, -2.6])
    m = sentiment_metrics(preds, labels)
    assert m["Mult_acc_7"] == 1.0  # 9 clips to 3; -2.6 rounds to -3
    labels5 = np.array([3.0, -3.0, 1.0])
    preds5 = np.array([2.0, -2.4, 1.0])
    assert sentiment_metrics(preds5, labels5)["Mult_acc_5"] == 1.0  # both clip to +-2
    assert sentiment_metrics(preds5, labels5)["Mult_acc_7"] == pytest.approx(1 / 3)


def test_perfect_and_constant_predictions():
    labels = np.array([-2.0, -1.0, 0.0, 1.0, 2.6])
    perfect = sentiment_metrics(labels.copy(), labels)
    for key in ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7"):
        assert perfect[key] == 1.0
    assert perfect["MAE"] == 0.0 and perfect["Corr"] == pytest.approx(1.0)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither a NaN correlation nor sklearn's zero-division warning
        constant = sentiment_metrics(np.full(5, 0.7), labels)
    assert constant["Corr"] == 0.0
    assert constant["Has0_acc_2"] == pytest.approx(3 / 5)
    # only class "non-negative" predicted: its F1 = 2 * (3/5 * 1) / (3/5 + 1) = 3/4 (support 3), the other 0
    assert constant["Has0_F1_score"] == pytest.approx(0.75 * 3 / 5)
    assert constant["MAE"] == pytest.approx(np.mean(np.abs(0.7 - labels)))
    assert sentiment_metrics(labels, np.full(5, 1.0))["Corr"] == 0.0  # constant labels too


def test_all_zero_labels_give_nan_non0():
    m = sentiment_metrics(np.array([0.5, -0.5]), np.zeros(2))
    assert math.isnan(m["Non0_acc_2"]) and math.isnan(m["Non0_F1_score"])
    assert m["Has0_acc_2"] == 0.5


def test_inputs_tensors_columns_and_validation():
    from_torch = sentiment_metrics(torch.tensor(PREDS).unsqueeze(1), torch.tensor(LABELS, dtype=torch.float32))
    from_numpy = sentiment_metrics(PREDS, LABELS)
    assert from_torch == pytest.approx(from_numpy, rel=1e-6)
    with pytest.raises(ValueError, match="labels"):
        sentiment_metrics(PREDS, LABELS[:4])
    with pytest.raises(ValueError, match="preds"):
        sentiment_metrics(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="preds"):
        sentiment_metrics(np.ones((2, 3)), np.ones((2, 3)))


# ----------------------------------------------------------------------------- robustness


P = np.linspace(0, 1, 11)


def test_relative_robustness_trapezoid():
    assert relative_robustness(1 - P / 2) == pytest.approx(0.75)  # exact for a straight line
    assert relative_robustness([0.8] * 11) == pytest.approx(0.8)
    assert relative_robustness([1.0] + [0.0] * 10) == pytest.approx(0.05)  # one half-interval
    curve = np.array([0.9, 0.85, 0.8, 0.8, 0.7, 0.65, 0.6, 0.6, 0.55, 0.5, 0.5])
    by_hand = sum((curve[k] + curve[k + 1]) * 0.1 / 2 for k in range(10))
    assert relative_robustness(curve) == pytest.approx(by_hand, rel=1e-14)


def test_effective_robustness():
    baseline = 0.8 - 0.5 * P  # 0.8 down to 0.3
    # shifted baseline is 0.9 - 0.5 p, so f - shifted = 0.05 k for k = 0..10: total 0.05 * 55
    assert effective_robustness([0.9] * 11, baseline) == pytest.approx(2.75)
    assert effective_robustness(baseline, baseline) == pytest.approx(0.0, abs=1e-15)
    assert effective_robustness(baseline + 0.1, baseline) == pytest.approx(0.0, abs=1e-14)  # same shape
    assert effective_robustness(baseline - 0.1 * P, baseline) == pytest.approx(-0.1 * 5.5)


def test_curve_lengths_are_checked():
    with pytest.raises(ValueError, match="curve"):
        relative_robustness([1.0] * 10)
    with pytest.raises(ValueError, match="baseline"):
        effective_robustness([1.0] * 11, [1.0] * 12)
    with pytest.raises(ValueError, match="curve"):
        effective_robustness([1.0] * 10 + [float("nan")], [1.0] * 11)


def test_minmax_normalise():
    assert minmax_normalise({"fsrf": 2.0, "lf": 1.0, "ef": 3.0}) == pytest.approx({"fsrf": 0.5, "lf": 0.0, "ef": 1.0})
    assert minmax_normalise({"a": 0.7, "b": 0.7}) == {"a": 0.0, "b": 0.0}
    assert minmax_normalise({"only": 0.3}) == {"only": 0.0}
    with pytest.raises(ValueError, match="values"):
        minmax_normalise({})
