"""Groups of videos that share footage, and the split made for a dataset that has no split files.

Why groups matter: clips cut from one recording share the actor, the background and the camera. A model that
trained on some of them recognises the others by the scene alone, so with the same footage on both sides of a
split the test accuracy is inflated. UCF101's official splits therefore keep each of its 25 groups (the
``_gNN_`` in ``v_ApplyEyeMakeup_g08_c01``) wholly in train or wholly in test.

Group rule, in this order:

1. ``GroupRule(regex=...)``: a regular expression searched in each video id (the file name without its
   extension); the group is its first capture group, or the whole match without one. Every name must match.
2. The UCF101 token ``_gNN_`` (the last one in the name; also ``_gNN`` ending the name), used when the names
   carry it.
3. Otherwise each video is its own group, and the manifest says so.

Generated split (`generate_splits`, defaults NUM_SPLITS / TEST_FRACTION / SEED): for each split k, the groups are
ranked by ``sha256(f"{seed}/{k}/{group}")`` (groups that were test in an earlier split last, so the test sets
are disjoint while groups last) and taken into test one by one when that brings every class's test share
closer to ``test_fraction`` (the sum over the group's classes of ``((test_c - fraction * n_c) / n_c) ** 2``
falls strictly: a tie keeps the smaller test side) and leaves each class at least one train video. A class
whose videos sit in one group gets no test videos; the manifest says so. A hash ranking keeps the split the same on every Python and numpy version.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from data_manifest.errors import ManifestError

if TYPE_CHECKING:
    from data_manifest.manifest import VideoRecord

# Three splits and 30% test, as UCF101 (3 splits, 27-28% test) and HMDB51 (3 splits, 70/30) do: results are
# comparable in kind with the published ones, and the mean over 3 splits evens out one unlucky split.
NUM_SPLITS = 3
TEST_FRACTION = 0.3
SEED = 0
UCF_GROUP = re.compile(r"_g([0-9]+)(?=_|$)")  # v_Jump_g08_c01, and at the end of a name: jump_g08
TOKEN_RULE = "the UCF101 name token _gNN_"
NO_GROUPS = "none: each video is its own group"


@dataclass(frozen=True)
class GroupRule:
    """How videos are grouped: ``regex`` over the video id, or None for the ``_gNN_`` token when present."""

    regex: str | None = None

    def compiled(self) -> re.Pattern[str] | None:
        if self.regex is None:
            return None
        try:
            return re.compile(self.regex)
        except re.error as e:
            raise ManifestError(f"--group-regex {self.regex!r} is not a regular expression ({e}); give one "
                                r"whose first group is the recording, e.g. '^(.*)_clip[0-9]+$'") from None


@dataclass(frozen=True)
class Grouping:
    """Group number per video id (None: its own group), the rule in words, and a note for the manifest."""

    groups: dict[str, int | None]
    description: str
    note: str = ""


def _token(video_id: str) -> int | None:
    found = UCF_GROUP.findall(video_id)
    return int(found[-1]) if found else None


def assign_groups(video_ids: Sequence[str], rule: GroupRule = GroupRule()) -> Grouping:
    """Groups of the given videos by ``rule`` (see the module docstring). Regex groups are numbered 1..G in
    the sorted order of the matched text."""
    pattern = rule.compiled()
    if pattern is not None:
        keys: dict[str, str] = {}
        unmatched = []
        for vid in video_ids:
            m = pattern.search(vid)
            if m is None:
                unmatched.append(vid)
            else:
                keys[vid] = m.group(1) if pattern.groups else m.group(0)
        if unmatched:
            raise ManifestError(f"{len(unmatched)} of {len(video_ids)} video names do not match --group-regex "
                                f"{rule.regex!r} (e.g. {', '.join(sorted(unmatched)[:3])}); change the rule so "
                                "that every name matches")
        number = {k: i for i, k in enumerate(sorted(set(keys.values())), start=1)}
        groups = {vid: number[k] for vid, k in keys.items()}
        return Grouping(groups, f"regex {rule.regex!r} over the video name ({len(number)} groups)")
    groups = {vid: _token(vid) for vid in video_ids}
    with_token = sum(g is not None for g in groups.values())
    if with_token == len(groups) and groups:
        return Grouping(groups, f"{TOKEN_RULE} ({len(set(groups.values()))} groups)")
    if with_token:
        return Grouping(groups, f"{TOKEN_RULE} where present, else each video on its own",
                        f"{with_token} of {len(groups)} video names carry a _gNN_ group token and the others do "
                        "not: each of those is its own group; give --group-regex to group them")
    return Grouping(groups, NO_GROUPS,
                    "no groups: the names carry no _gNN_ token and no --group-regex was given, so each video is its "
                    "own group; clips cut from one recording may then sit in both train and test, which inflates "
                    "test accuracy (give --group-regex)")


@dataclass(frozen=True)
class SplitRule:
    """How a split is generated for a dataset without split files."""

    num_splits: int = NUM_SPLITS
    test_fraction: float = TEST_FRACTION
    seed: int = SEED

    def __post_init__(self) -> None:
        if isinstance(self.num_splits, bool) or not isinstance(self.num_splits, int) or self.num_splits < 1:
            raise ManifestError(f"the number of splits must be a whole number >= 1, got {self.num_splits!r}")
        if isinstance(self.test_fraction, bool) or not isinstance(self.test_fraction, (int, float)) \
                or not 0.0 < float(self.test_fraction) < 1.0:
            raise ManifestError(f"the test fraction must be strictly between 0 and 1, got {self.test_fraction!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ManifestError(f"the split seed must be a whole number, got {self.seed!r}")

    def describe(self, grouping: str) -> str:
        return (f"generated: stratified by class, each group on one side; {self.num_splits} splits; test fraction "
                f"{self.test_fraction:g}; seed {self.seed}; groups: {grouping}")


def _rank(seed: int, split: int, key: str) -> str:
    return hashlib.sha256(f"{seed}/{split}/{key}".encode("utf-8")).hexdigest()


def _test_groups(members: dict[str, Counter], totals: Counter, fraction: float, ranked: list[str]) -> set[str]:
    """The groups of one split's test side (greedy, see the module docstring)."""
    test: Counter = Counter()
    chosen = set()
    for g in ranked:
        counts = members[g]
        if any(totals[c] - test[c] - n < 1 for c, n in counts.items()):
            continue  # would leave a class without train videos
        before = sum(((test[c] - fraction * totals[c]) / totals[c]) ** 2 for c in counts)
        after = sum(((test[c] + n - fraction * totals[c]) / totals[c]) ** 2 for c, n in counts.items())
        if after < before:
            chosen.add(g)
            test.update(counts)
    return chosen


def generate_splits(records: Sequence[VideoRecord], rule: SplitRule,
                    grouping: Grouping) -> tuple[list[VideoRecord], str, list[str]]:
    """Records with ``rule.num_splits`` generated splits (train/test), the method in words, and notes (classes
    left without test videos)."""
    key = {r.video_id: (f"g{r.group}" if r.group is not None else f"v{r.video_id}") for r in records}
    members: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        members[key[r.video_id]][r.class_name] += 1
    totals = Counter(r.class_name for r in records)
    used: set[str] = set()
    membership: dict[str, list[str]] = {r.video_id: [] for r in records}
    notes = []
    for k in range(1, rule.num_splits + 1):
        ranked = sorted(members, key=lambda g: (g in used, _rank(rule.seed, k, g)))
        test = _test_groups(members, totals, float(rule.test_fraction), ranked)
        used |= test
        for r in records:
            membership[r.video_id].append("test" if key[r.video_id] in test else "train")
        tested = {c for g in test for c in members[g]}
        lacking = sorted(c for c in totals if c not in tested)
        if lacking:
            notes.append(f"generated split {k}: {len(lacking)} classes have no test videos (all their videos are "
                         f"in one group, or too few): {', '.join(lacking[:10])}{' ...' if len(lacking) > 10 else ''}")
    out = [replace(r, splits=tuple(membership[r.video_id])) for r in records]
    return out, rule.describe(grouping.description), notes
