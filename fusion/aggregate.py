"""Views to video: turn per-view logits (V, F, K, C) into one score row per video (V, C)."""
from __future__ import annotations

import numpy as np

from fusion.errors import FusionError
from plumbing.ranking import view_mean

DEFAULT_AGGREGATION = "mean-logits"
AGGREGATIONS = {
    "mean-logits": "mean of the raw logits over all frames x crops (TSN)",
    "mean-softmax": "mean of the per-view softmax probabilities over all frames x crops",
    "max": "per-class maximum of the raw logits over all frames x crops",
}
_CHUNK = 256  # videos per softmax chunk: bounds the float64 copy of a (chunk, F, K, C) block


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (float64)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def aggregate(logits: np.ndarray, method: str = DEFAULT_AGGREGATION) -> np.ndarray:
    """Video scores from view logits: (V, F, K, C) float -> (V, C) float64; ``method`` in AGGREGATIONS."""
    logits = np.asarray(logits)
    if logits.ndim != 4:
        raise FusionError(f"view logits must be (videos, frames, crops, classes), got shape {logits.shape}")
    if method not in AGGREGATIONS:
        raise FusionError(f"unknown aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")
    v, _, _, c = logits.shape
    if method == "mean-logits":
        return view_mean(logits)
    if method == "max":
        return logits.max(axis=(1, 2)).astype(np.float64)
    out = np.empty((v, c), dtype=np.float64)
    for start in range(0, v, _CHUNK):
        out[start:start + _CHUNK] = softmax(logits[start:start + _CHUNK], axis=-1).mean(axis=(1, 2))
    return out


def video_probabilities(video_scores: np.ndarray, method: str = DEFAULT_AGGREGATION) -> np.ndarray:
    """Class probabilities per video (V, C) float64 from the output of :func:`aggregate`.

    ``mean-softmax`` scores already are probabilities; logit-based scores go through a softmax.
    """
    if method == "mean-softmax":
        return np.asarray(video_scores, dtype=np.float64)
    return softmax(video_scores, axis=1)
