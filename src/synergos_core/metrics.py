"""Validation statistics, computed where the labels live (the Worker), and their aggregate.

Every value returned is a plain Python int or float, finite, so it is JSON-safe: an undefined
metric (e.g. ROC-AUC with one class present, a rate with a zero denominator) is 0.0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import (
    auc,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_curve,
    r2_score,
    roc_auc_score,
)

from .errors import ErrorCode, InvalidRequest

COUNT_KEYS: frozenset[str] = frozenset({"TPs", "TNs", "FPs", "FNs"})
RATE_KEYS: tuple[str, ...] = ("TPRs", "TNRs", "PPVs", "NPVs", "FPRs", "FNRs", "FDRs")


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0


def _labels(y_true: np.ndarray) -> np.ndarray:
    labels = np.asarray(y_true)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise InvalidRequest("labels must be a vector of class indices or values", code=ErrorCode.METRICS_INVALID)
    return labels


def classification_statistics(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, Any]:
    """Per-class (one-vs-rest) statistics of `y_score` against integer labels `y_true`.

    `y_score` is (N, 1) or (N,) probability of class 1 for a binary task (expanded to the two
    classes [1 - p, p], predicted class p > 0.5), or (N, k) scores (predicted class = argmax).
    Per class lists: accuracy, roc_auc_score, pr_auc_score, f_score, TPs, TNs, FPs, FNs, TPRs,
    TNRs, PPVs, NPVs, FPRs, FNRs, FDRs; scalars: overall_accuracy, n_samples.
    """
    labels = _labels(y_true)
    scores = np.asarray(y_score, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores.reshape(-1, 1)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0] or scores.shape[1] == 0:
        raise InvalidRequest("scores must be (N, 1) or (N, k) with one row per label", code=ErrorCode.METRICS_INVALID)
    if not np.all(np.isfinite(scores)):
        raise InvalidRequest("scores must be finite numbers", code=ErrorCode.METRICS_INVALID)
    predicted = predicted_classes(scores)
    if scores.shape[1] == 1:
        scores = np.column_stack([1.0 - scores[:, 0], scores[:, 0]])
    n_classes = scores.shape[1]
    if labels.size and (not np.all(np.equal(np.mod(labels, 1), 0)) or labels.min() < 0 or labels.max() >= n_classes):
        raise InvalidRequest(f"labels must be class indices in [0, {n_classes})", code=ErrorCode.METRICS_INVALID)
    labels = labels.astype(np.int64)
    n = int(labels.shape[0])

    stats: dict[str, Any] = {
        key: []
        for key in ("accuracy", "roc_auc_score", "pr_auc_score", "f_score", "TPs", "TNs", "FPs", "FNs", *RATE_KEYS)
    }
    for c in range(n_classes):
        actual, guessed, score = labels == c, predicted == c, scores[:, c]
        tp = int(np.sum(actual & guessed))
        tn = int(np.sum(~actual & ~guessed))
        fp = int(np.sum(~actual & guessed))
        fn = int(np.sum(actual & ~guessed))
        positives = tp + fn
        # Both curves are undefined with a single class present; sklearn would warn and return NaN.
        roc = _finite(roc_auc_score(actual, score)) if 0 < positives < n else 0.0
        if positives:
            precision, recall, _ = precision_recall_curve(actual, score)
            pr = _finite(auc(recall, precision))
        else:
            pr = 0.0
        stats["accuracy"].append(_ratio(tp + tn, n))
        stats["roc_auc_score"].append(roc)
        stats["pr_auc_score"].append(pr)
        stats["f_score"].append(_ratio(2 * tp, 2 * tp + fp + fn))
        for key, value in (("TPs", tp), ("TNs", tn), ("FPs", fp), ("FNs", fn)):
            stats[key].append(value)
        stats["TPRs"].append(_ratio(tp, tp + fn))
        stats["TNRs"].append(_ratio(tn, tn + fp))
        stats["PPVs"].append(_ratio(tp, tp + fp))
        stats["NPVs"].append(_ratio(tn, tn + fn))
        stats["FPRs"].append(_ratio(fp, fp + tn))
        stats["FNRs"].append(_ratio(fn, fn + tp))
        stats["FDRs"].append(_ratio(fp, fp + tp))
    stats["overall_accuracy"] = _ratio(int(np.sum(predicted == labels)), n)
    stats["n_samples"] = n
    return stats


def regression_statistics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """R2, MSE and MAE of `y_pred` against `y_true` ((N,) or (N, 1)), plus n_samples.

    R2 is 0.0 when undefined (fewer than two samples).
    """
    truth = _labels(y_true).astype(np.float64)
    pred = _labels(y_pred).astype(np.float64)
    if truth.shape != pred.shape:
        raise InvalidRequest("predictions and labels differ in length", code=ErrorCode.METRICS_INVALID)
    if not (np.all(np.isfinite(truth)) and np.all(np.isfinite(pred))):
        raise InvalidRequest("predictions and labels must be finite numbers", code=ErrorCode.METRICS_INVALID)
    n = int(truth.shape[0])
    if n == 0:
        return {"R2": 0.0, "MSE": 0.0, "MAE": 0.0, "n_samples": 0}
    return {
        "R2": _finite(r2_score(truth, pred)) if n > 1 else 0.0,
        "MSE": _finite(mean_squared_error(truth, pred)),
        "MAE": _finite(mean_absolute_error(truth, pred)),
        "n_samples": n,
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_RANKING_KEYS = {"roc_auc_score", "pr_auc_score"}


def _has_counts(part: dict[str, Any]) -> bool:
    return isinstance(part.get("TPs"), list) and isinstance(part.get("FNs"), list)


def _weighted_by(values: tuple[Any, ...], weights: list[int]) -> float:
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights, strict=False)) / total if total else 0.0


def aggregate_statistics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine per-party statistics into one, weighting each party by its `n_samples`.

    Scalars are sample-weighted means; lists of equal length are averaged elementwise the same
    way; confusion counts (TPs, TNs, FPs, FNs) and n_samples are summed. A key whose values
    cannot be combined (lists of different lengths, non-numbers) is left out.
    """
    if not parts:
        return {"n_samples": 0}
    weights = [max(int(part.get("n_samples", 0) or 0), 0) for part in parts]
    result: dict[str, Any] = {"n_samples": sum(weights)}
    keys = sorted({key for part in parts for key in part} - {"n_samples"})
    for key in keys:
        having = [(part[key], w) for part, w in zip(parts, weights, strict=False) if key in part]
        values = [v for v, _ in having]
        ws = [w for _, w in having]
        if sum(ws) == 0:
            ws = [1] * len(ws)  # every party is empty: fall back to a plain mean
        if all(_is_number(v) for v in values):
            result[key] = (
                sum(int(v) for v in values)
                if key in COUNT_KEYS
                else _finite(sum(v * w for v, w in zip(values, ws, strict=False)) / sum(ws))
            )
        elif (
            all(isinstance(v, list) and all(_is_number(x) for x in v) for v in values)
            and len({len(v) for v in values}) == 1
        ):
            columns = list(zip(*values, strict=False))
            if key in COUNT_KEYS:
                result[key] = [sum(int(x) for x in column) for column in columns]
            elif key in _RANKING_KEYS and all(_has_counts(p) for p in parts):
                # a ranking score is undefined where a party has no example of the class:
                # weight each party by its positives of that class, not by its size
                result[key] = [
                    _finite(_weighted_by(column, [p["TPs"][i] + p["FNs"][i] for p in parts]))
                    for i, column in enumerate(columns)
                ]
            else:
                result[key] = [
                    _finite(sum(x * w for x, w in zip(column, ws, strict=False)) / sum(ws)) for column in columns
                ]
    return result


# ---- the per-round validation metric, pooled exactly across parties ----


def predicted_classes(y_score: np.ndarray) -> np.ndarray:
    """Class per row: p > 0.5 for one probability column, argmax otherwise."""
    scores = np.asarray(y_score)
    if scores.ndim == 1 or scores.shape[1] == 1:
        return (scores.reshape(-1) > 0.5).astype(np.int64)
    classes: np.ndarray = np.argmax(scores, axis=1).astype(np.int64)
    return classes


def metric_parts(y_true: np.ndarray, y_score: np.ndarray, action: str) -> dict[str, float]:
    """Sums from which the pooled metric is exact: correct predictions (classification) or the
    squared error and the target's sum and sum of squares (regression, for R2). Aggregates only."""
    labels = _labels(y_true)
    if action == "classify":
        correct = int(np.sum(predicted_classes(y_score) == labels.astype(np.int64)))
        return {"n": int(labels.shape[0]), "correct": correct}
    truth = labels.astype(np.float64)
    pred = _labels(y_score).astype(np.float64)
    return {
        "n": int(truth.shape[0]),
        "sse": _finite(np.sum((truth - pred) ** 2)),
        "sum_y": _finite(np.sum(truth)),
        "sum_y2": _finite(np.sum(truth**2)),
    }


ROUND_METRICS = {"classify": "accuracy", "regress": "r2"}


def pooled_metric(parts: list[dict[str, Any]], action: str) -> float | None:
    """Accuracy or R2 of the pooled evaluate data from each party's `metric_parts`; None without data."""
    usable = [p for p in parts if isinstance(p, dict) and _is_number(p.get("n")) and p["n"] > 0]
    n = sum(int(p["n"]) for p in usable)
    if not n:
        return None
    try:
        if action == "classify":
            return _finite(sum(float(p["correct"]) for p in usable) / n)
        sse = sum(float(p["sse"]) for p in usable)
        sum_y = sum(float(p["sum_y"]) for p in usable)
        sst = sum(float(p["sum_y2"]) for p in usable) - sum_y * sum_y / n
    except (KeyError, TypeError, ValueError):
        return None
    return _finite(1.0 - sse / sst) if n > 1 and sst > 0 else 0.0
