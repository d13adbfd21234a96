"""Binary classification metrics, written out so their definitions are in one place."""
from __future__ import annotations

import numpy as np


def binary_metrics(truth: np.ndarray, predicted: np.ndarray, weights: np.ndarray | None = None
                   ) -> dict[str, float | int]:
    """precision, recall, f1, fpr and the confusion counts; 0.0 where a ratio has no denominator.
    `weights` (optional) counts each row that many times (rows standing for repeated items)."""
    truth = np.asarray(truth, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    w = np.ones(len(truth), np.int64) if weights is None else np.asarray(weights, np.int64)
    tp = int(w[truth & predicted].sum())
    fp = int(w[~truth & predicted].sum())
    fn = int(w[truth & ~predicted].sum())
    tn = int(w[~truth & ~predicted].sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "fpr": fpr, "tp": tp, "fp": fp, "fn": fn, "tn": tn}
