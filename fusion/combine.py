"""Stream fusion: combine the video scores of S streams, each (V, C), into one (V, C) array.

All functions take the streams in the report's stream order and return float64.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from fusion import metrics
from fusion.errors import FusionError

CONFIDENCE_EPS = 1e-6  # keeps the per-video weights defined when every stream has margin 0


def _stack(streams: Sequence[np.ndarray]) -> np.ndarray:
    """(S, V, C) float64 from S arrays of shape (V, C)."""
    if not streams:
        raise FusionError("no streams to fuse")
    shapes = {np.shape(s) for s in streams}
    if len(shapes) != 1:
        raise FusionError(f"streams must have equal (videos, classes) shapes, got {sorted(shapes)}")
    return np.stack([np.asarray(s, dtype=np.float64) for s in streams])


def normalise_weights(weights: Sequence[float], num_streams: int) -> np.ndarray:
    """(S,) weights scaled to sum 1; they must be finite, >= 0, not all 0 and one per stream."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (num_streams,):
        raise FusionError(f"need one weight per stream ({num_streams}), got {len(w)}: {list(weights)}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise FusionError(f"weights must be finite, >= 0 and not all 0, got {list(weights)}")
    return w / w.sum()


def average(streams: Sequence[np.ndarray]) -> np.ndarray:
    """Plain mean of the stream scores."""
    return _stack(streams).mean(axis=0)


def maximum(streams: Sequence[np.ndarray]) -> np.ndarray:
    """Per-class maximum over streams."""
    return _stack(streams).max(axis=0)


def weighted(streams: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_s w_s * scores_s / sum_s w_s."""
    stacked = _stack(streams)
    w = normalise_weights(weights, len(stacked))
    return np.tensordot(w, stacked, axes=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """(V,) softmax margin p_(1) - p_(2): the highest minus the second-highest class probability."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] < 2:
        return np.ones(probs.shape[0])
    top2 = np.partition(probs, -2, axis=1)[:, -2:]  # (V, 2): second highest, highest
    return top2[:, 1] - top2[:, 0]


def confidence(streams: Sequence[np.ndarray], probs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-video confidence-weighted fusion.

    w_s(v) = margin_s(v) + eps, fused(v) = sum_s w_s(v) * scores_s(v) / sum_s w_s(v), where margin_s(v) is
    p_(1) - p_(2) of stream s's class probabilities for video v. Returns (fused (V, C), weights (V, S)
    normalised to sum 1 per video).
    """
    stacked = _stack(streams)
    m = np.stack([margin(p) for p in probs], axis=1) + CONFIDENCE_EPS  # (V, S)
    w = m / m.sum(axis=1, keepdims=True)
    return np.einsum("vs,svc->vc", w, stacked), w


def default_grid_steps(num_streams: int) -> int:
    """Grid resolution: weights in steps of 1/20 for two streams, 1/10 for more."""
    return 20 if num_streams <= 2 else 10


def weight_grid(num_streams: int, steps: int | None = None) -> np.ndarray:
    """(G, S) every weight vector with entries k/steps (k = 0..steps) summing to 1, in lexicographic order.

    For two streams and steps = 20: (0, 1), (0.05, 0.95), ..., (1, 0).
    """
    steps = default_grid_steps(num_streams) if steps is None else int(steps)
    if num_streams < 1 or steps < 1:
        raise FusionError(f"weight grid needs >= 1 stream and >= 1 step, got {num_streams} and {steps}")
    rows = [c for c in itertools.product(range(steps + 1), repeat=num_streams) if sum(c) == steps]
    return np.asarray(rows, dtype=np.float64) / steps


def search_weights(streams: Sequence[np.ndarray], labels: np.ndarray,
                   grid: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
    """Pick stream weights on the given (validation) scores by grid search.

    Objective: highest top-1; ties go to higher mean class accuracy, then to the weights closest (L2) to
    equal weights, then to the first grid row. Returns (best weights (S,), one dict per grid row with
    ``weights``, ``top1``, ``mean_class_accuracy``).
    """
    stacked = _stack(streams)
    s, _, c = stacked.shape
    grid = weight_grid(s) if grid is None else np.asarray(grid, dtype=np.float64)
    table, keys = [], []
    for i, w in enumerate(grid):
        fused = np.tensordot(w, stacked, axes=1)
        preds = metrics.predictions(fused)
        top1 = float(np.mean(preds == labels))
        mca = metrics.mean_class_accuracy(labels, preds, c)
        table.append({"weights": [float(x) for x in w], "top1": top1, "mean_class_accuracy": mca})
        # Rounded so that mirror-image weights tie exactly and the first grid row wins.
        keys.append((-top1, -mca, round(float(np.sum((w - 1.0 / s) ** 2)), 9), i))
    best = min(range(len(grid)), key=lambda i: keys[i])
    return grid[best].copy(), table
