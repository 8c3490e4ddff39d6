"""The split-table rules, in one place: from the videos found (as files or as frame folders) and what the split
files say (or a generated split) to a Manifest.

Both ways of finding videos call `assemble`: `build.build` (video files in class folders) and
`build.build_from_folders` (frame folders another tool wrote). The rules:

- labels: the split files' class order (classInd.txt, or HMDB51's sorted class names); without split files the
  sorted names of the classes found;
- a video the split files list but nobody found: an error, or with ``allow_missing`` left out with a problem;
- a video the split files list in another class than its folder: the split files' class, with a problem;
- a video found but unlisted: kept with split '-' when its class is one of the split files' classes, else
  left out with a problem ("stray");
- groups: `data_manifest.grouping` (the ``_gNN_`` name token, or a user's regular expression);
- without split files, a generated split (`data_manifest.grouping.generate_splits`) when one is asked for;
- the official UCF101 / HMDB51 sizes: a problem when a recognised dataset's counts differ.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from data_manifest.errors import ManifestError
from data_manifest.grouping import NO_GROUPS, GroupRule, SplitRule, assign_groups, generate_splits
from data_manifest.manifest import SPLIT_NONE, SPLIT_TEST, SPLIT_TRAIN, SPLIT_UNUSED, Manifest, VideoRecord
from data_manifest.splits import SplitTable

MAX_LISTED = 10  # names shown in one message before "... and N more"


@dataclass(frozen=True)
class OfficialSplits:
    """Published split sizes, used to flag an incomplete copy of a dataset."""

    name: str
    num_classes: int
    sizes: dict[int, dict[str, int]]  # split -> subset -> number of videos


OFFICIAL = {
    "ucf101": OfficialSplits("UCF101", 101, {1: {SPLIT_TRAIN: 9537, SPLIT_TEST: 3783},
                                             2: {SPLIT_TRAIN: 9586, SPLIT_TEST: 3734},
                                             3: {SPLIT_TRAIN: 9624, SPLIT_TEST: 3696}}),
    "hmdb51": OfficialSplits("HMDB51", 51, {k: {SPLIT_TRAIN: 3570, SPLIT_TEST: 1530, SPLIT_UNUSED: 1666}
                                            for k in (1, 2, 3)}),
}


@dataclass(frozen=True)
class Found:
    """One video found on disk. ``listed_as``: the split files' name for it ("<Class>/<file>") when they list
    it, else None; ``class_guess``: the class its folder (or its UCF101 name) gives, None if none;
    ``path``: its record path (relative to the dataset root, POSIX)."""

    video_id: str
    path: str
    class_guess: str | None
    listed_as: str | None = None


@dataclass(frozen=True)
class Wording:
    """How the caller names things in messages: where the videos were looked for, and the fix for a listed
    video nobody found (plus an optional extra hint computed from the missing names)."""

    where: str
    missing_verb: str  # "are missing under X" / "have no frame folder in X"
    missing_fix: str
    missing_hint: Callable[[list[str]], str] = lambda missing: ""
    stray_what: str = "videos"


def shown(names: Sequence[str]) -> str:
    """The first MAX_LISTED names, comma-separated, then '... and N more'."""
    extra = len(names) - MAX_LISTED
    return ", ".join(names[:MAX_LISTED]) + (f" ... and {extra} more" if extra > 0 else "")


def official_count_problems(dataset: str, num_classes: int, counts: dict[int, Counter]) -> list[str]:
    """Compare per-split subset counts with the published sizes, when the dataset is recognised."""
    official = OFFICIAL.get(dataset)
    if official is None or num_classes != official.num_classes:
        return []
    problems = []
    for k, expected in official.sizes.items():
        if k not in counts:
            problems.append(f"split {k} is missing; the official {official.name} has {len(official.sizes)} splits")
            continue
        for subset, n in expected.items():
            got = counts[k][subset]
            if got != n:
                problems.append(f"split {k}: {got} {subset} videos, the official {official.name} split {k} "
                                f"has {n}")
    return problems


def _with_table(found: Sequence[Found], table: SplitTable, source: str, words: Wording, allow_missing: bool,
                problems: list[str]) -> list[tuple[Found, str, tuple[str, ...]]]:
    """(video, class, membership) of the videos kept under the split files' rules; fills problems."""
    listed = {f.listed_as for f in found if f.listed_as is not None}
    missing = sorted(r for r in table.entries if r not in listed)
    if missing:
        msg = (f"{len(missing)} of {len(table.entries)} videos named in the split files in {source} "
               f"{words.missing_verb}: {shown(missing)}{words.missing_hint(missing)}")
        if not allow_missing:
            raise ManifestError(f"{msg}; {words.missing_fix}, or allow missing videos (--allow-missing) to leave "
                                "them out")
        problems.append(f"{msg}; left out of the manifest")
    known = set(table.classes)
    kept, moved, unlisted, stray = [], [], [], []
    for f in found:
        if f.listed_as is not None:
            cls = f.listed_as.split("/", 1)[0]
            if f.class_guess is not None and f.class_guess != cls:
                moved.append(f"{f.class_guess}/{f.video_id} (split files: {cls})")
            kept.append((f, cls, table.entries[f.listed_as]))
        elif f.class_guess in known:
            unlisted.append(f"{f.class_guess}/{PurePosixPath(f.path).name}")
            kept.append((f, f.class_guess, (SPLIT_NONE,) * table.num_splits))
        else:
            stray.append(f)
    if moved:
        problems.append(f"{len(moved)} videos lie in another class folder than the split files name; their "
                        f"class is taken from the split files: {shown(sorted(moved))}")
    if stray:
        problems.append(_stray_problem(stray, words, "are not classes of the split files"))
    if unlisted:
        problems.append(f"{len(unlisted)} videos in {words.where} are in no split file (kept, with split '-'): "
                        f"{shown(sorted(unlisted))}")
    return kept


def _stray_problem(stray: Sequence[Found], words: Wording, why: str) -> str:
    if words.stray_what == "folders":  # class folders: name each folder once
        names = sorted({f.class_guess or f.video_id for f in stray})
        return f"{len(names)} folders in {words.where} {why} and were left out: {shown(names)}"
    names = sorted(f.video_id for f in stray)
    return f"{len(names)} folders in {words.where} have no known class and were left out: {shown(names)}"


def assemble(found: Sequence[Found], table: SplitTable | None, *, dataset: str, source: str = "",
             words: Wording, allow_missing: bool = False, group_rule: GroupRule = GroupRule(),
             split_rule: SplitRule | None = None, problems: Sequence[str] = ()) -> Manifest:
    """The manifest of the videos ``found`` under the split table (see the module docstring for the rules).

    ``table``: the parsed split files (``source`` names their folder in messages), or None: classes from the
    videos, and with ``split_rule`` a generated split (else none). ``problems``: the caller's own findings,
    listed first. Raises ManifestError naming the files and the fix.
    """
    problems = list(problems)
    if table is not None:
        kept = _with_table(found, table, source, words, allow_missing, problems)
        classes, num_splits = table.classes, table.num_splits
    else:
        kept = [(f, f.class_guess, ()) for f in found if f.class_guess is not None]
        stray = [f for f in found if f.class_guess is None]
        if stray:
            problems.append(_stray_problem(stray, words, "have no class"))
        if not kept:
            raise ManifestError(f"no videos with a class found in {words.where}"
                                + (f" ({len(stray)} folders without one: {shown(sorted(f.video_id for f in stray))})"
                                   if stray else ""))
        classes, num_splits = tuple(sorted({c for _, c, _ in kept})), 0
    grouping = assign_groups([f.video_id for f, _, _ in kept], group_rule)
    if grouping.note and grouping.description != NO_GROUPS and table is None:
        problems.append(grouping.note)  # some names carry the token, others not: likely a naming slip
    label_of = {c: i for i, c in enumerate(classes)}
    records = [VideoRecord(f.video_id, f.path, cls, label_of[cls], grouping.groups[f.video_id], membership)
               for f, cls, membership in kept]
    split_method = ""
    if table is None and split_rule is not None:
        records, split_method, split_notes = generate_splits(records, split_rule, grouping)
        problems += split_notes
        num_splits = split_rule.num_splits
    counts = {k: Counter(r.splits[k - 1] for r in records) for k in range(1, num_splits + 1)}
    problems += official_count_problems(dataset, len(classes), counts)
    return Manifest(dataset, classes, records, problems, num_splits, split_method=split_method,
                    group_rule=grouping.description)
