"""The one rule that ranks classes, shared by `trainer test` and `fusion report` so that both print the
same accuracy for the same score file.

Video scores are the float64 mean of the view scores. Classes are ranked by score, highest first, and equal
scores by class index, lowest first: the prediction is ``argmax`` (the first index of the maximum), and a
video counts as top-k correct when fewer than k classes rank before its label.
"""
from __future__ import annotations

import numpy as np

TOP5 = 5


def view_mean(view_scores: np.ndarray) -> np.ndarray:
    """Video scores: (V, ..., C) scores of each view -> (V, C) float64 mean over every axis between."""
    view_scores = np.asarray(view_scores)
    return view_scores.reshape(view_scores.shape[0], -1, view_scores.shape[-1]).mean(axis=1, dtype=np.float64)


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


def ranked(scores: np.ndarray) -> np.ndarray:
    """Class indices of one video's scores (C,), best first under the tie rule: (C,) int64."""
    return np.argsort(-np.asarray(scores), kind="stable").astype(np.int64)


def predictions(scores: np.ndarray) -> np.ndarray:
    """(V,) int64 predicted class: argmax, the first index wins a tie."""
    return np.argmax(np.asarray(scores), axis=1).astype(np.int64)
