"""Coverage checks: streams are fused only when they agree on videos, labels, classes and views."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainer.scores import Scores

from fusion.errors import CoverageError

_EXAMPLES = 5


@dataclass(frozen=True)
class Aligned:
    """Streams restricted to a common, identically ordered set of videos."""

    names: list[str]
    video_ids: list[str]
    labels: np.ndarray  # (V,) int64
    logits: list[np.ndarray]  # per stream (V, F, K, C), rows in ``video_ids`` order
    class_names: list[str]
    frames: int
    crops: int
    dropped: list[str]  # ids left out because a stream lacks them (sorted; empty without --allow-missing)
    missing_from: dict[str, list[str]]  # stream -> ids other streams have and it lacks (sorted)


def _examples(ids: Sequence[str]) -> str:
    ids = list(ids)
    more = f", ... ({len(ids)} in all)" if len(ids) > _EXAMPLES else ""
    return ", ".join(ids[:_EXAMPLES]) + more


def _where(s: Scores) -> str:
    return f" ({s.path})" if s.path else ""


def align(streams: Sequence[tuple[str, Scores]], allow_missing: bool = False, subset: str = "test") -> Aligned:
    """Check that the named streams can be fused and order them alike.

    Fails (CoverageError, naming streams, files and counts) on: an empty or non-finite stream, different
    class lists, different frames x crops, different video ids (unless ``allow_missing``: then only the
    videos every stream has are kept and the rest reported), or different labels for the same video.
    """
    if not streams:
        raise CoverageError("no score files given")
    names = [n for n, _ in streams]
    for name, s in streams:
        if s.num_videos == 0:
            raise CoverageError(f"{subset} scores of {name}{_where(s)} hold no videos; re-run `trainer test`")
        bad = ~np.isfinite(s.logits).reshape(s.num_videos, -1).all(axis=1)
        if bad.any():
            ids = [s.video_ids[i] for i in np.flatnonzero(bad)]
            raise CoverageError(f"{subset} scores of {name}{_where(s)}: NaN or infinite scores for "
                                f"{len(ids)} videos: {_examples(ids)}")

    first_name, first = streams[0]
    for name, s in streams[1:]:
        if s.class_names != first.class_names:
            if len(s.class_names) != len(first.class_names):
                detail = f"{len(first.class_names)} classes in {first_name}, {len(s.class_names)} in {name}"
            else:
                i = next(i for i, (a, b) in enumerate(zip(first.class_names, s.class_names)) if a != b)
                detail = f"class {i} is {first.class_names[i]!r} in {first_name} but {s.class_names[i]!r} in {name}"
            raise CoverageError(f"{subset} score files have different class lists: {detail}"
                                f"{_where(first)}{_where(s)}; the streams must be trained on the same classes")
        fk, sk = first.logits.shape[1:3], s.logits.shape[1:3]
        if fk != sk:
            raise CoverageError(
                f"{subset} score files have different view counts: {first_name} {fk[0]} frames x {fk[1]} crops"
                f"{_where(first)}, {name} {sk[0]} frames x {sk[1]} crops{_where(s)}; re-run `trainer test` "
                "with the same frames and crops for every stream")

    id_sets = [set(s.video_ids) for _, s in streams]
    common = set.intersection(*id_sets)
    union = set.union(*id_sets)
    missing_from = {name: sorted(union - ids) for name, ids in zip(names, id_sets)}
    dropped = sorted(union - common)
    if dropped and not allow_missing:
        counts = ", ".join(f"{n} {s.num_videos}{_where(s)}" for n, s in streams)
        lacks = "; ".join(f"{len(m)} missing from {n} (e.g. {_examples(m)})" for n, m in missing_from.items() if m)
        raise CoverageError(
            f"{subset} score files cover different videos: {counts}; {lacks}; {len(common)} in every stream. "
            f"Re-run `trainer test` so every stream scores every video, or pass --allow-missing to fuse only the "
            f"{len(common)} common videos (the report then lists the {len(dropped)} dropped)")
    if not common:
        raise CoverageError(f"{subset} score files share no video ids: "
                            + ", ".join(f"{n} {s.num_videos}{_where(s)}" for n, s in streams))

    order = [v for v in first.video_ids if v in common]
    rows = []
    for _, s in streams:
        index = {v: i for i, v in enumerate(s.video_ids)}
        rows.append(np.fromiter((index[v] for v in order), dtype=np.int64, count=len(order)))
    labels = first.labels[rows[0]]
    for (name, s), r in zip(streams[1:], rows[1:]):
        differ = np.flatnonzero(s.labels[r] != labels)
        if differ.size:
            ids = [f"{order[i]} ({first.class_names[labels[i]]} vs {s.class_names[s.labels[r][i]]})"
                   for i in differ]
            raise CoverageError(f"{subset} score files disagree on the labels of {len(ids)} videos between "
                                f"{first_name}{_where(first)} and {name}{_where(s)}: {_examples(ids)}; "
                                "the streams must be scored against the same split files")
    identity = np.arange(len(order))
    # Fancy indexing copies the (V, F, K, C) block; skip it when a stream is already in order.
    logits = [s.logits if np.array_equal(r, identity) and len(r) == s.num_videos else s.logits[r]
              for (_, s), r in zip(streams, rows)]
    return Aligned(names=names, video_ids=order, labels=labels.astype(np.int64), logits=logits,
                   class_names=list(first.class_names), frames=int(first.logits.shape[1]),
                   crops=int(first.logits.shape[2]), dropped=dropped,
                   missing_from={n: m for n, m in missing_from.items() if m})
