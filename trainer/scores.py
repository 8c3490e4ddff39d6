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
from collections import Counter
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from plumbing.atomic import atomic_open

SCORE_FORMAT = "twostream-scores/1"
REQUIRED_KEYS = ("video_ids", "labels", "logits", "class_names", "meta")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def score_file_name(subset: str) -> str:
    """The name of a run's score file of ``subset`` (test, val): scores_SUBSET.npz."""
    return f"scores_{subset}.npz"


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
    """Write a score file atomically (temp file + rename); checks shapes, dtypes and finiteness first."""
    path = Path(path)
    ids = np.asarray([str(v) for v in video_ids], dtype=str)
    names = np.asarray([str(c) for c in class_names], dtype=str)
    labels, logits = np.asarray(labels), np.asarray(logits)
    if labels.size == 0:  # np.asarray([]) is float64; an empty list holds no fractional label
        labels = labels.astype(np.int64)
    _check(path, ids, labels, logits, names)
    meta = dict(meta, format=SCORE_FORMAT)
    with atomic_open(path, "wb") as f:
        np.savez(f, video_ids=ids, labels=labels.astype(np.int64), logits=logits.astype(np.float32),
                 class_names=names, meta=np.asarray(json.dumps(meta, sort_keys=True)))


def read_scores(path: str | os.PathLike) -> Scores:
    """Read and validate a score file; raises ScoreFileError naming the file and what is wrong.

    Also accepts what other tools write within the format: bytes (UTF-8) ids and class names, integer or
    float64 logits (cast to float32), any integer dtype of labels (cast to int64).
    """
    path = Path(path)
    if path.is_dir():
        raise ScoreFileError(f"{path}: is a directory, not a score file; give the file, e.g. "
                             f"{path / 'scores_test.npz'}")
    if not path.is_file():
        raise ScoreFileError(f"{path}: no such score file; run `trainer test` first or give the right path")
    data = path.read_bytes()
    if not data.startswith(b"PK"):  # every zip (so every .npz) starts with a "PK" record
        what = ("a single .npy array" if data.startswith(b"\x93NUMPY") else "an empty file" if not data
                else "not a zip archive")
        raise ScoreFileError(f"{path}: not an .npz score file ({what}); give the scores_*.npz file that "
                             "`trainer test` writes")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            missing = [k for k in REQUIRED_KEYS if k not in z.files]
            if missing:
                raise ScoreFileError(f"{path}: not a score file, missing {', '.join(missing)}")
            ids, labels, logits, names, meta = (z[k] for k in REQUIRED_KEYS)
    except ScoreFileError:
        raise
    except Exception as exc:  # zip and npy errors (truncated, corrupt, pickled members) all mean a damaged file
        raise ScoreFileError(f"{path}: cannot read score file, damaged or truncated ({exc}); "
                             "re-run `trainer test`") from exc
    ids, names = _strings(path, "video_ids", ids), _strings(path, "class_names", names)
    meta = _meta(path, meta)
    _check(path, ids, labels, logits, names)
    return Scores(video_ids=ids.tolist(), labels=labels.astype(np.int64),
                  logits=logits.astype(np.float32, copy=False), class_names=names.tolist(),
                  meta=meta, path=str(path), sha256=hashlib.sha256(data).hexdigest())


def _strings(path: Path, key: str, arr: np.ndarray) -> np.ndarray:
    """(N,) str array from a stored (N,) str or UTF-8 bytes array; anything else is refused."""
    if arr.ndim != 1:
        raise ScoreFileError(f"{path}: {key} must be a 1-d array of strings, got shape {arr.shape}")
    if arr.dtype.kind == "S":
        try:
            return np.char.decode(arr, "utf-8")
        except UnicodeDecodeError as exc:
            raise ScoreFileError(f"{path}: {key} are bytes but not UTF-8 ({exc}); write them as str") from exc
    if arr.dtype.kind != "U" and arr.size:
        raise ScoreFileError(f"{path}: {key} must be strings, got dtype {arr.dtype}; write them as str")
    return arr.astype(str)


def _meta(path: Path, arr: np.ndarray) -> dict:
    """The meta dict from its stored 0-d JSON string (str or UTF-8 bytes)."""
    if arr.ndim != 0 or arr.dtype.kind not in "US":
        raise ScoreFileError(f"{path}: meta must be one JSON string, got a {arr.dtype} array of shape "
                             f"{arr.shape}; re-run `trainer test`")
    try:
        text = arr.item()
        meta = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        raise ScoreFileError(f"{path}: meta is not valid JSON ({exc}); re-run `trainer test`") from exc
    if not isinstance(meta, dict):
        raise ScoreFileError(f"{path}: meta must be a JSON object ({{\"stream\": ..., \"split\": ...}}), got "
                             f"a JSON {type(meta).__name__}; re-run `trainer test` or write meta as an object")
    return meta


def _first(ids: np.ndarray, bad: np.ndarray) -> list[str]:
    return [str(ids[i]) for i in np.flatnonzero(bad)[:5]]


def _check(path: Path, ids: np.ndarray, labels: np.ndarray, logits: np.ndarray, names: np.ndarray) -> None:
    """Shapes, dtypes, unique ids and class names, label range and finite float32-sized logits.

    ``ids`` (V,) and ``names`` (C,) are str arrays; ``labels`` and ``logits`` are as stored.
    """
    if logits.dtype.kind not in "fiu":  # bool, complex, str: no real score to read
        raise ScoreFileError(f"{path}: logits must be real numbers (float or integer), got dtype "
                             f"{logits.dtype}; write them as float32")
    if logits.ndim != 4:
        raise ScoreFileError(f"{path}: logits must be (videos, frames, crops, classes), got shape {logits.shape}")
    v, f, k, c = logits.shape
    if not (f and k and c):
        raise ScoreFileError(f"{path}: logits of shape {logits.shape} have no views or no classes; "
                             "re-run `trainer test`")
    if ids.shape != (v,) or labels.shape != (v,):
        raise ScoreFileError(f"{path}: {v} rows of logits but video_ids of shape {ids.shape} and labels of "
                             f"shape {labels.shape}; need one id and one label per video")
    if labels.dtype.kind not in "iu":
        raise ScoreFileError(f"{path}: labels must be integer class indices, got dtype {labels.dtype} (float "
                             "labels are refused even when whole numbers, so none is rounded silently); "
                             "write them as int64")
    if names.shape != (c,):
        raise ScoreFileError(f"{path}: {c} classes in logits but class_names of shape {names.shape}")
    for key, values in (("video ids", ids), ("class names", names)):
        dup = [x for x, n in Counter(values.tolist()).items() if n > 1]
        if dup:
            raise ScoreFileError(f"{path}: duplicate {key} {dup[:5]}; each must appear once")
    if v and (labels.min() < 0 or labels.max() >= c):
        raise ScoreFileError(f"{path}: labels must lie in [0, {c}), got {labels.min()}..{labels.max()}")
    # Checked on the stored dtype: a float64 1e39 is finite but becomes inf in float32.
    bad = ~np.isfinite(logits).all(axis=(1, 2, 3))
    if bad.any():
        raise ScoreFileError(f"{path}: NaN or infinite scores for {int(bad.sum())} videos, e.g. {_first(ids, bad)}")
    if logits.dtype.kind == "f" and logits.dtype.itemsize > 4:
        big = (np.abs(logits) > _FLOAT32_MAX).any(axis=(1, 2, 3))
        if big.any():
            raise ScoreFileError(f"{path}: scores too large for float32 (|x| > {_FLOAT32_MAX:.3g}) for "
                                 f"{int(big.sum())} videos, e.g. {_first(ids, big)}; write float32 logits")
