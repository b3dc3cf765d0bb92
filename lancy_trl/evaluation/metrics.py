"""Classification metrics in plain Python: accuracy, macro-F1, per-class P/R/F1, MCC, confusion, ECE."""

from __future__ import annotations

import math
from typing import Any


def confusion(targets: list[str], preds: list[str | None], labels: list[str]) -> list[list[int]]:
    """Rows: true label, columns: predicted label (an invalid prediction counts in no column)."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(targets, preds):
        if p in index:
            matrix[index[t]][index[p]] += 1
    return matrix


def matthews(matrix: list[list[int]]) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K)."""
    n = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(matrix)))
    pred_totals = [sum(row[j] for row in matrix) for j in range(len(matrix))]
    true_totals = [sum(row) for row in matrix]
    cov = correct * n - sum(p * t for p, t in zip(pred_totals, true_totals))
    denom = math.sqrt((n * n - sum(p * p for p in pred_totals)) * (n * n - sum(t * t for t in true_totals)))
    return cov / denom if denom else 0.0


def expected_calibration_error(confidences: list[float], correct: list[bool], bins: int = 10) -> float:
    n = len(confidences)
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(confidences) if lo < c <= hi or (b == 0 and c == 0)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            conf = sum(confidences[i] for i in idx) / len(idx)
            ece += len(idx) / n * abs(acc - conf)
    return ece


def classification_report(
    targets: list[str], preds: list[str | None], labels: list[str], confidences: list[float] | None = None
) -> dict[str, Any]:
    matrix = confusion(targets, preds, labels)
    n = len(targets)
    per_class = {}
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        predicted = sum(row[i] for row in matrix)
        support = sum(matrix[i]) + sum(1 for t, p in zip(targets, preds) if t == label and p not in labels)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    correct = [t == p for t, p in zip(targets, preds)]
    report: dict[str, Any] = {
        "n": n,
        "accuracy": sum(correct) / n if n else 0.0,
        "macro_f1": sum(c["f1"] for c in per_class.values()) / len(labels),
        "mcc": matthews(matrix),
        "per_class": per_class,
        "confusion": {"labels": labels, "matrix": matrix},
        "invalid_rate": sum(p is None for p in preds) / n if n else 0.0,
    }
    if confidences is not None:
        report["ece"] = expected_calibration_error(confidences, correct)
    return report
