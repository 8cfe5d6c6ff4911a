"""Validation statistics agree with scikit-learn and aggregate by sample count."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from synergos_core.errors import InvalidRequest
from synergos_core.metrics import aggregate_statistics, classification_statistics, regression_statistics


def test_binary_matches_sklearn() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([[0.1], [0.6], [0.8], [0.4], [0.9], [0.2]])
    stats = classification_statistics(y, p)
    pred = (p[:, 0] > 0.5).astype(int)
    assert stats["n_samples"] == 6
    assert stats["overall_accuracy"] == pytest.approx(accuracy_score(y, pred))
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    # Class 1 (index 1) is the positive class; class 0 is its mirror.
    assert (stats["TPs"][1], stats["TNs"][1], stats["FPs"][1], stats["FNs"][1]) == (tp, tn, fp, fn)
    assert (stats["TPs"][0], stats["FNs"][0]) == (tn, fp)
    assert stats["roc_auc_score"][1] == pytest.approx(roc_auc_score(y, p[:, 0]))
    assert stats["roc_auc_score"][0] == pytest.approx(roc_auc_score(1 - y, 1 - p[:, 0]))
    assert stats["f_score"][1] == pytest.approx(f1_score(y, pred))
    assert stats["TPRs"][1] == pytest.approx(tp / (tp + fn))
    assert stats["FDRs"][1] == pytest.approx(fp / (fp + tp))
    # PR-AUC by trapezoid is close to, not identical with, average precision.
    assert stats["pr_auc_score"][1] == pytest.approx(average_precision_score(y, p[:, 0]), abs=0.15)
    json.dumps(stats, allow_nan=False)


def test_multiclass_matches_sklearn_one_vs_rest() -> None:
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    scores = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.2, 0.5, 0.3],
            [0.1, 0.2, 0.7],
            [0.3, 0.4, 0.3],
            [0.3, 0.3, 0.4],
            [0.6, 0.3, 0.1],
            [0.2, 0.1, 0.7],
        ]
    )
    stats = classification_statistics(y, scores)
    pred = scores.argmax(axis=1)
    assert len(stats["accuracy"]) == 3
    assert stats["overall_accuracy"] == pytest.approx(accuracy_score(y, pred))
    np.testing.assert_allclose(stats["f_score"], f1_score(y, pred, average=None))
    for c in range(3):
        assert stats["roc_auc_score"][c] == pytest.approx(roc_auc_score(y == c, scores[:, c]))
        assert stats["accuracy"][c] == pytest.approx(accuracy_score(y == c, pred == c))
    json.dumps(stats, allow_nan=False)


def test_undefined_metrics_are_zero_not_nan() -> None:
    # Only class 1 present and always predicted: class 0 has no positives and no predictions.
    stats = classification_statistics(np.array([1, 1, 1]), np.array([[0.9], [0.8], [0.7]]))
    assert stats["roc_auc_score"] == [0.0, 0.0]
    assert stats["pr_auc_score"][0] == 0.0
    assert stats["PPVs"][0] == 0.0 and stats["TPRs"][0] == 0.0 and stats["f_score"][0] == 0.0
    assert stats["overall_accuracy"] == 1.0
    json.dumps(stats, allow_nan=False)


def test_bad_labels_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        classification_statistics(np.array([0, 3]), np.array([[0.2], [0.9]]))
    with pytest.raises(InvalidRequest):
        classification_statistics(np.array([0, 1]), np.array([[0.2], [np.nan]]))


def test_regression_matches_sklearn() -> None:
    y = np.array([[1.0], [2.0], [3.0], [4.0]])
    pred = np.array([1.1, 1.9, 3.5, 3.0])
    stats = regression_statistics(y, pred)
    assert stats["R2"] == pytest.approx(r2_score(y[:, 0], pred))
    assert stats["MSE"] == pytest.approx(mean_squared_error(y[:, 0], pred))
    assert stats["MAE"] == pytest.approx(mean_absolute_error(y[:, 0], pred))
    assert stats["n_samples"] == 4


def test_aggregation_weights_by_samples_and_sums_counts() -> None:
    small = {"n_samples": 1, "overall_accuracy": 0.0, "f_score": [0.0, 1.0], "TPs": [1, 2], "R2": 1.0}
    large = {"n_samples": 3, "overall_accuracy": 1.0, "f_score": [1.0, 0.0], "TPs": [3, 4], "R2": 0.0}
    agg = aggregate_statistics([small, large])
    assert agg["n_samples"] == 4
    assert agg["overall_accuracy"] == pytest.approx(0.75)
    assert agg["f_score"] == pytest.approx([0.75, 0.25])
    assert agg["TPs"] == [4, 6]
    assert agg["R2"] == pytest.approx(0.25)


def test_aggregate_of_real_parts_equals_pooled_accuracy() -> None:
    a = classification_statistics(np.array([0, 1, 1]), np.array([[0.2], [0.7], [0.3]]))
    b = classification_statistics(np.array([1, 0]), np.array([[0.9], [0.1]]))
    pooled = classification_statistics(np.array([0, 1, 1, 1, 0]), np.array([[0.2], [0.7], [0.3], [0.9], [0.1]]))
    agg = aggregate_statistics([a, b])
    assert agg["overall_accuracy"] == pytest.approx(pooled["overall_accuracy"])
    assert agg["TPs"] == pooled["TPs"]
    assert agg["n_samples"] == 5


def test_aggregate_ranking_scores_ignore_parties_without_the_class():
    import numpy as np

    from synergos_core.metrics import aggregate_statistics, classification_statistics

    # party A never has class 2, party B never has class 1
    a = classification_statistics(
        np.array([0, 1, 0, 1]), np.array([[0.9, 0.1, 0], [0.1, 0.9, 0], [0.8, 0.2, 0], [0.2, 0.8, 0]])
    )
    b = classification_statistics(
        np.array([0, 2, 0, 2]), np.array([[0.9, 0, 0.1], [0.1, 0, 0.9], [0.8, 0, 0.2], [0.2, 0, 0.8]])
    )
    merged = aggregate_statistics([a, b])
    assert merged["roc_auc_score"] == [1.0, 1.0, 1.0]
