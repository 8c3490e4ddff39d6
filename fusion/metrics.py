"""Pure accuracy metrics on video-level scores. Classes are ranked by plumbing.ranking's one tie rule (the
rule `trainer test` uses too): highest score first, equal scores by class index, lowest first."""
from __future__ import annotations

import numpy as np

from plumbing.ranking import TOP5, label_ranks, predictions, topk_accuracy, topk_correct

__all__ = ["TOP5", "label_ranks", "predictions", "topk_accuracy", "topk_correct", "confusion_matrix",
           "per_class_accuracy", "mean_class_accuracy", "bootstrap_indices", "bootstrap_interval"]


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
