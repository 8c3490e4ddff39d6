"""Score files: the per-view logits the trainer writes and fusion reads.

One ``.npz`` file (no pickled objects) per stream, split and subset:

- ``video_ids``   (V,) str, unique
- ``labels``      (V,) int64, 0-based
- ``logits``      (V, F, K, C) float32: F frames or flow stacks per video, K crops per frame, C classes
- ``class_names`` (C,) str
- ``meta``        JSON object: stream, split, subset, frames, crops, crop_names, checkpoint, store, config

This module is the only writer of score files; everyone else reads them through :func:`read_scores`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_manifest.atomic import atomic_open

SCORE_FORMAT = "twostream-scores/1"
REQUIRED_KEYS = ("video_ids", "labels", "logits", "class_names", "meta")


class ScoreFileError(Exception):
    """A score file is missing, damaged or inconsistent; the message names the file and the fix."""


@dataclass(frozen=True)
class Scores:
    """Per-view logits of one stream on one subset, as read from a score file."""

    video_ids: list[str]
    labels: np.ndarray  # (V,) int64
    logits: np.ndarray  # (V, F, K, C) float32
    class_names: list[str]
    meta: dict = field(default_factory=dict)
    path: str = ""
    sha256: str = ""

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def views_per_video(self) -> int:
        return int(self.logits.shape[1] * self.logits.shape[2])


def write_scores(path: str | os.PathLike, video_ids, labels, logits, class_names, meta: dict) -> None:
    """Write a score file atomically (temp file + rename); checks shapes and finiteness first."""
    path = Path(path)
    ids = np.asarray([str(v) for v in video_ids])
    labels = np.asarray(labels, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float32)
    names = np.asarray([str(c) for c in class_names])
    _check(path, ids, labels, logits, names)
    meta = dict(meta, format=SCORE_FORMAT)
    with atomic_open(path, "wb") as f:
        np.savez(f, video_ids=ids, labels=labels, logits=logits, class_names=names,
                 meta=np.asarray(json.dumps(meta, sort_keys=True)))


def read_scores(path: str | os.PathLike) -> Scores:
    """Read and validate a score file; raises ScoreFileError naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ScoreFileError(f"{path}: no such score file; run `trainer test` first or give the right path")
    data = path.read_bytes()
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            missing = [k for k in REQUIRED_KEYS if k not in z.files]
            if missing:
                raise ScoreFileError(f"{path}: not a score file, missing {', '.join(missing)}")
            ids, labels, logits, names = (z["video_ids"], z["labels"], z["logits"], z["class_names"])
            meta = json.loads(str(z["meta"]))
    except ScoreFileError:
        raise
    except Exception as exc:  # zip, npy and JSON errors all mean a damaged file
        raise ScoreFileError(f"{path}: cannot read score file ({exc}); re-run `trainer test`") from exc
    _check(path, ids, labels, logits, names)
    return Scores(video_ids=[str(v) for v in ids], labels=labels.astype(np.int64),
                  logits=logits.astype(np.float32, copy=False), class_names=[str(c) for c in names],
                  meta=meta, path=str(path), sha256=hashlib.sha256(data).hexdigest())


def _check(path: Path, ids: np.ndarray, labels: np.ndarray, logits: np.ndarray, names: np.ndarray) -> None:
    if logits.ndim != 4:
        raise ScoreFileError(f"{path}: logits must be (videos, frames, crops, classes), got shape {logits.shape}")
    v, _, _, c = logits.shape
    if ids.shape != (v,) or labels.shape != (v,):
        raise ScoreFileError(f"{path}: {v} rows of logits but {ids.shape[0]} video ids and {labels.shape[0]} labels")
    if names.shape != (c,):
        raise ScoreFileError(f"{path}: {c} classes in logits but {names.shape[0]} class names")
    if len(set(ids.tolist())) != v:
        seen, dup = set(), []
        for i in ids.tolist():
            (dup.append(i) if i in seen else seen.add(i))
        raise ScoreFileError(f"{path}: duplicate video ids {dup[:5]}")
    if v and (labels.min() < 0 or labels.max() >= c):
        raise ScoreFileError(f"{path}: labels must lie in [0, {c}), got {labels.min()}..{labels.max()}")
    bad = ~np.isfinite(logits).reshape(v, -1).all(axis=1)
    if bad.any():
        names_bad = [str(ids[i]) for i in np.flatnonzero(bad)[:5]]
        raise ScoreFileError(f"{path}: NaN or infinite scores for {int(bad.sum())} videos, e.g. {names_bad}")
