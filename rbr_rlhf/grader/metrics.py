"""Grader accuracy against human labels: ROC AUC, F1 and accuracy per proposition."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

MIN_POSITIVES = 5


def best_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The threshold that maximises F1 on a tuning set (0.5 when it has no positives)."""
    if labels.sum() == 0:
        return 0.5
    candidates = np.unique(np.concatenate([probs, [0.5]]))
    scores = [f1_score(labels, probs >= t, zero_division=0) for t in candidates]
    return float(candidates[int(np.argmax(scores))])


def evaluate(probs: np.ndarray, labels: np.ndarray, propositions: Sequence[str],
             tune_probs: np.ndarray | None = None, tune_labels: np.ndarray | None = None,
             min_positives: int = MIN_POSITIVES) -> dict:
    """Per-proposition metrics; ``mean_auc`` averages propositions with >= ``min_positives`` positives
    in the evaluated labels (AUC is undefined without both classes and noisy with a handful)."""
    result = {}
    for j, p in enumerate(propositions):
        y, s = labels[:, j].astype(bool), probs[:, j]
        t = best_threshold(tune_probs[:, j], tune_labels[:, j].astype(bool)) if tune_probs is not None else 0.5
        both = 0 < y.sum() < len(y)
        result[p] = {"auc": float(roc_auc_score(y, s)) if both else None,
                     "f1": float(f1_score(y, s >= t, zero_division=0)),
                     "accuracy": float(np.mean((s >= t) == y)),
                     "positives": int(y.sum()), "threshold": t}
    counted = [m["auc"] for m in result.values() if m["positives"] >= min_positives and m["auc"] is not None]
    return {"mean_auc": float(np.mean(counted)) if counted else None, "propositions_in_mean": len(counted),
            "min_positives": min_positives, "propositions": result}
