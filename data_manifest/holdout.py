"""Deterministic validation hold-out, taken from the train list of one split only.

Rule (documented in docs/data_manifest.md):

- With groups (UCF101 ``_gXX_``): the distinct group numbers among the train videos of split k are ranked by
  ``sha256(f"{seed}/{k}/g{group}")`` and the first ``n = clamp(round_half_up(val_fraction * G), 1, G - 1)``
  are held out, for every class alike (group 8 of one class is held out iff group 8 of every class is).
- Where only some videos have a group, each of the others is a group of its own (rank key ``v<video_id>``), so
  the hold-out never splits a group.
- Without groups (HMDB51, plain folders), or when the train list holds a single group: per class, the train
  video ids are ranked by ``sha256(f"{seed}/{k}/{video_id}")`` and the first
  ``clamp(round_half_up(val_fraction * n_class), 1, n_class - 1)`` are held out (none if the class has one).

A hash ranking rather than a seeded RNG keeps the choice identical across Python and numpy versions.
The test list is never read.
"""
from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from data_manifest.errors import ManifestError

if TYPE_CHECKING:
    from data_manifest.manifest import VideoRecord

DEFAULT_VAL_FRACTION = 0.1
DEFAULT_VAL_SEED = 0
# Below this many hold-out videos nothing is chosen by the hold-out (the best epoch, fusion weights): one video
# moves top-1 by more than 5 points, and the binomial standard error of a top-1 near 50% is above 11 points
# (0.5 / sqrt(20)), more than the differences between late epochs or between weightings that it would decide.
MIN_HOLDOUT_VIDEOS = 20


def too_small_to_choose(videos: int, classes: int | None = None) -> str:
    """'' when a hold-out of ``videos`` videos can choose; else why not (for the console and reports)."""
    if videos >= MIN_HOLDOUT_VIDEOS:
        return ""
    per = f" ({videos / classes:.1f} per class of {classes})" if classes else ""
    step = f"one video moves its top-1 by {100 / videos:.0f} points" if videos else "it is empty"
    return (f"the hold-out of {videos} videos{per} is too small to choose by: {step}; at least "
            f"{MIN_HOLDOUT_VIDEOS} are needed")


def _rank_key(seed: int, split: int, key: str) -> str:
    return hashlib.sha256(f"{seed}/{split}/{key}".encode("utf-8")).hexdigest()


def _held_count(fraction: float, n: int) -> int:
    """How many of n items to hold out: round half up, at least 1, and always leave at least 1."""
    if n < 2:
        return 0
    return min(n - 1, max(1, math.floor(fraction * n + 0.5)))


def check_val_args(val_fraction: float, seed: int) -> tuple[float, int]:
    """Validate the hold-out parameters (they may come from a command line)."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 < float(val_fraction) < 1.0:
        raise ManifestError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ManifestError(f"seed must be an integer, got {seed!r}")
    return float(val_fraction), seed


def holdout_ids(train: Sequence[VideoRecord], split: int, val_fraction: float = DEFAULT_VAL_FRACTION,
                seed: int = DEFAULT_VAL_SEED) -> set[str]:
    """Video ids of the validation part of one split's train list (see the module docstring for the rule)."""
    val_fraction, seed = check_val_args(val_fraction, seed)
    if any(r.group is not None for r in train):
        # a video without a group is a group of its own: whole groups go to one side, never part of one
        key = {r.video_id: f"g{r.group}" if r.group is not None else f"v{r.video_id}" for r in train}
        groups = sorted(set(key.values()))
        if len(groups) >= 2:
            ranked = sorted(groups, key=lambda g: _rank_key(seed, split, g))
            chosen = set(ranked[:_held_count(val_fraction, len(groups))])
            return {vid for vid, g in key.items() if g in chosen}
    by_class: dict[int, list[str]] = defaultdict(list)
    for r in train:
        by_class[r.label].append(r.video_id)
    held: set[str] = set()
    for ids in by_class.values():
        ranked = sorted(ids, key=lambda v: _rank_key(seed, split, v))
        held.update(ranked[:_held_count(val_fraction, len(ids))])
    return held
