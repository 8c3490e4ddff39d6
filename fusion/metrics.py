"""Pure accuracy metrics on video-level scores.

Tie rule, used everywhere: classes are ranked by score, highest first, and equal scores are ranked by class
index, lowest first. So the prediction is ``argmax`` (first index of the maximum) and a video counts as top-k
correct when fewer than k classes rank before its label.
"""
from __future__ import annotations

import numpy as np

TOP5 = 5


def label_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rank of the true label per video under the tie rule (0 = predicted).

    scores (V, C) float, labels (V,) int in [0, C) -> (V,) int64.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    v, c = scores.shape
    own = scores[np.arange(v), labels][:, None]  # (V, 1)
    higher = (scores > own).sum(axis=1)
    # Equal scores at a lower class index rank first (argmax takes the first index).
    tied_before = ((scores == own) & (np.arange(c)[None, :] < labels[:, None])).sum(axis=1)
    return (higher + tied_before).astype(np.int64)


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(V,) bool: the label is among the first k classes; k is capped at the number of classes C."""
    k = min(int(k), np.asarray(scores).shape[1])
    return label_ranks(scores, labels) < k


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Share of videos whose label is among the first min(k, C) classes, in [0, 1]."""
    return float(topk_correct(scores, labels, k).mean())


def predictions(scores: np.ndarray) -> np.ndarray:
    """(V,) int64 predicted class: argmax, the first index wins a tie."""
    return np.argmax(np.asarray(scores), axis=1).astype(np.int64)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def per_class_accuracy(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) float64 recall per class; NaN for a class with no video in ``labels``."""
    cm = confusion_matrix(labels, preds, num_classes)
    totals = cm.sum(axis=1)
    acc = np.full(num_classes, np.nan)
    present = totals > 0
    acc[present] = np.diag(cm)[present] / totals[present]
    return acc


def mean_class_accuracy(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """Mean over the classes present in ``labels`` of their per-class recall, in [0, 1]."""
    acc = per_class_accuracy(labels, preds, num_classes)
    return float(np.mean(acc[~np.isnan(acc)]))


def bootstrap_indices(num_videos: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, V) int32 video indices drawn with replacement from a seeded generator.

    Drawn once and shared by every stream and method, so their intervals are paired.
    """
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_videos, size=(resamples, num_videos), dtype=np.int32)


def bootstrap_interval(correct: np.ndarray, indices: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``correct`` (V,) bool over resampled ``indices``."""
    means = np.asarray(correct, dtype=np.float64)[indices].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)
