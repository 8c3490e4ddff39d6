"""The resume plan: from what the dataset wants, what the previous store holds and which parts are finished,
decide which videos to keep, drop, redo and do. Pure: no files are read here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class Wanted:
    """What the dataset says of one expected video now: its place, and its file's size (None: no file)."""

    path: str
    class_name: str
    label: int
    source_bytes: int | None


@dataclass(frozen=True)
class ResumePlan:
    """keep: videos of the previous store carried over; gone: videos of the previous store no longer
    expected (dropped); redo: videos of the previous store whose file or class changed (extracted again);
    use_parts: finished parts that still stand for their video; drop_parts: parts to delete (already in
    the store, damaged, or stale); todo: videos to extract, in the expected order."""

    keep: frozenset[str]
    gone: tuple[str, ...]
    redo: tuple[str, ...]
    use_parts: tuple[str, ...]
    drop_parts: tuple[str, ...]
    todo: tuple[str, ...]

    @property
    def skipped(self) -> int:
        """Expected videos finished by an earlier run (kept from the store, or a finished part)."""
        return len(self.keep) + len(self.use_parts)


def unchanged(record: Mapping[str, Any], wanted: Wanted) -> bool:
    """Whether a finished video still stands for the dataset's video: same path, class and label, and a
    source of the same size (when recorded). Modification times are not compared: copying a dataset changes
    them all, and redoing it would cost hours; a re-encoded file changes its size."""
    if (record.get("path"), record.get("class_name"), record.get("label")) != (wanted.path, wanted.class_name,
                                                                                wanted.label):
        return False
    return wanted.source_bytes == record.get("source_bytes")


def plan_resume(expected: Sequence[str], wanted: Mapping[str, Wanted], stored: Mapping[str, Mapping[str, Any]],
                parts: Mapping[str, Mapping[str, Any] | None]) -> ResumePlan:
    """The plan for ``expected`` (video ids, in order), given what the dataset says now of each expected video
    that the previous store or a part holds (``wanted``), the previous store's records (``stored``, empty
    without one) and the records of finished parts (``parts``; None for a part that cannot be read)."""
    expected_set = set(expected)
    keep = frozenset(v for v, rec in stored.items() if v in expected_set and unchanged(rec, wanted[v]))
    gone = tuple(v for v in stored if v not in expected_set)
    redo = tuple(v for v in stored if v in expected_set and v not in keep)
    use, drop = [], []
    for vid, rec in parts.items():
        fits = vid in expected_set and vid not in keep and rec is not None and unchanged(rec, wanted[vid])
        (use if fits else drop).append(vid)
    done = keep | set(use)
    return ResumePlan(keep, gone, redo, tuple(sorted(use)), tuple(sorted(drop)),
                      tuple(v for v in expected if v not in done))
