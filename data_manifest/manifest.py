"""The manifest: one record per video (id, path, class, label, group, split membership) and its text format.

This module is the only writer of manifest files. The text format (``*.manifest.tsv``), UTF-8, ``\\n`` line ends:

    # format: twostream-manifest/1
    # dataset: ucf101
    # splits: 3
    # classes: 101
    # class: ApplyEyeMakeup          <- one line per class; its position (0-based) is the label
    # problem: ...                   <- zero or more warnings found when the manifest was built
    # split-method: generated: ...   <- optional: how a split was made for a dataset without split files
    # group-rule: ...                <- optional: how videos were grouped (data_manifest.grouping)
    video_id<TAB>path<TAB>class<TAB>label<TAB>group<TAB>split1<TAB>split2<TAB>split3
    v_YoYo_g08_c01<TAB>UCF-101/YoYo/v_YoYo_g08_c01.avi<TAB>YoYo<TAB>100<TAB>8<TAB>train<TAB>train<TAB>test

``group`` is ``-`` when unknown; split cells are ``train``, ``test``, ``unused`` or ``-`` (not listed).
Rows are sorted by path. Names may hold any character except tab and line breaks.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from plumbing.atomic import atomic_write
from data_manifest.errors import ManifestError, UnknownVideoError
from data_manifest.holdout import DEFAULT_VAL_FRACTION, DEFAULT_VAL_SEED, check_val_args, holdout_ids

SPLIT_TRAIN = "train"
SPLIT_TEST = "test"
SPLIT_UNUSED = "unused"
SPLIT_NONE = "-"
SPLIT_VALUES = (SPLIT_TRAIN, SPLIT_TEST, SPLIT_UNUSED, SPLIT_NONE)
SUBSET_VAL = "val"
SUBSET_TRAIN_MINUS_VAL = "train-minus-val"  # the train list without the validation hold-out
SUBSET_ALL = "all"
SUBSETS = (SPLIT_TRAIN, SPLIT_TEST, SPLIT_UNUSED, SUBSET_VAL, SUBSET_TRAIN_MINUS_VAL, SUBSET_ALL)
# Names refused with an explanation rather than read one way or the other: "train-val" was this package's
# old name for train minus val, while the common "trainval" (e.g. PASCAL VOC's split) means train plus val.
_TRAINVAL = "the common name 'trainval' means train plus val, here the whole train list (subset='train')"
RENAMED_SUBSETS = {
    "train-val": (f"subset 'train-val' was renamed '{SUBSET_TRAIN_MINUS_VAL}': it is the train list minus the "
                  f"validation hold-out, while {_TRAINVAL}; the old name is refused rather than silently read "
                  f"either way. Use '{SUBSET_TRAIN_MINUS_VAL}' to fit while 'val' selects the model, or "
                  f"'train' for the final fit on all of it"),
    "trainval": (f"unknown subset 'trainval': {_TRAINVAL}; '{SUBSET_TRAIN_MINUS_VAL}' is the train list "
                 f"without the validation hold-out"),
}

FORMAT = "twostream-manifest/1"
FIXED_COLUMNS = ("video_id", "path", "class", "label", "group")
_HEADER_KEYS = ("format", "dataset", "splits", "classes", "class", "problem", "split-method", "group-rule")
_OPTIONAL_KEYS = ("split-method", "group-rule")
_FORBIDDEN = ("\t", "\n", "\r")
_INT = re.compile(r"[0-9]+")
_HEADER_LINE = re.compile(r"# ([a-z][a-z-]*): (.*)")


def _check_name(what: str, value: object, where: str) -> None:
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: {what} must be a non-empty string, got {value!r}")
    if any(c in value for c in _FORBIDDEN):
        raise ManifestError(f"{where}: {what} {value!r} holds a tab or line break, which the manifest text "
                            f"format cannot store; rename the file or folder")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class VideoRecord:
    """One video: id (file stem), POSIX path relative to the dataset root, class, 0-based label, group, splits."""

    video_id: str
    path: str
    class_name: str
    label: int
    group: int | None
    splits: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", tuple(self.splits))
        where = f"video {self.path!r}"
        _check_name("path", self.path, "video")
        _check_name("video_id", self.video_id, where)
        _check_name("class_name", self.class_name, where)
        pure = PurePosixPath(self.path)
        if pure.is_absolute() or ".." in pure.parts or str(pure) != self.path:
            raise ManifestError(f"{where}: path must be a normalised relative POSIX path "
                                f"(no leading '/', no '..', no '//' or './')")
        if pure.stem != self.video_id:
            raise ManifestError(f"{where}: video_id {self.video_id!r} must be the file stem {pure.stem!r}")
        if not _is_int(self.label) or self.label < 0:
            raise ManifestError(f"{where}: label must be an int >= 0, got {self.label!r}")
        if self.group is not None and (not _is_int(self.group) or self.group < 0):
            raise ManifestError(f"{where}: group must be None or an int >= 0, got {self.group!r}")
        for s in self.splits:
            if s not in SPLIT_VALUES:
                raise ManifestError(f"{where}: split membership must be one of {SPLIT_VALUES}, got {s!r}")

    def split(self, k: int) -> str:
        """Membership in split k (1-based): 'train', 'test', 'unused' or '-'."""
        return self.splits[k - 1]


class Manifest:
    """An immutable, validated list of VideoRecords (sorted by path) with the class list and build warnings."""

    __slots__ = ("_dataset", "_classes", "_records", "_problems", "_num_splits", "_index", "_split_method",
                 "_group_rule")

    def __init__(self, dataset: str, classes: Sequence[str], records: Iterable[VideoRecord],
                 problems: Iterable[str] = (), num_splits: int | None = None, *, split_method: str = "",
                 group_rule: str = "") -> None:
        _check_name("dataset", dataset, "manifest")
        classes = tuple(classes)
        seen_classes: dict[str, int] = {}
        for i, c in enumerate(classes):
            _check_name("class name", c, f"manifest class {i}")
            if c in seen_classes:
                raise ManifestError(f"manifest: class {c!r} appears twice (labels {seen_classes[c]} and {i})")
            seen_classes[c] = i
        records = tuple(sorted(records, key=lambda r: r.path))
        if num_splits is None:
            num_splits = len(records[0].splits) if records else 0
        if not _is_int(num_splits) or num_splits < 0:
            raise ManifestError(f"manifest: num_splits must be an int >= 0, got {num_splits!r}")
        index: dict[str, int] = {}
        for i, r in enumerate(records):
            if not isinstance(r, VideoRecord):
                raise ManifestError(f"manifest: records must be VideoRecord, got {type(r).__name__}")
            if r.video_id in index:
                other = records[index[r.video_id]].path
                raise ManifestError(f"duplicate video id {r.video_id!r}: {other} and {r.path}; video ids (file "
                                    f"stems) must be unique in a dataset, rename or remove one of them")
            index[r.video_id] = i
            if r.label >= len(classes) or classes[r.label] != r.class_name:
                raise ManifestError(f"video {r.path!r}: label {r.label} and class {r.class_name!r} disagree with "
                                    f"the class list ({len(classes)} classes)")
            if len(r.splits) != num_splits:
                raise ManifestError(f"video {r.path!r}: has {len(r.splits)} split entries, the manifest "
                                    f"has {num_splits} splits")
        self._dataset = dataset
        self._classes = classes
        self._records = records
        # Problems are single header lines in the text format: fold any line breaks away.
        self._problems = tuple(str(p).replace("\r", "\\r").replace("\n", "\\n") for p in problems)
        self._num_splits = num_splits
        self._index = index
        for what, value in (("split_method", split_method), ("group_rule", group_rule)):
            if not isinstance(value, str) or any(c in value for c in _FORBIDDEN):
                raise ManifestError(f"manifest: {what} must be one line of text, got {value!r}")
        self._split_method = split_method
        self._group_rule = group_rule

    # -- read-only views ------------------------------------------------------------------------------------

    @property
    def dataset(self) -> str:
        return self._dataset

    @property
    def classes(self) -> list[str]:
        """Class names; the index is the 0-based label."""
        return list(self._classes)

    @property
    def records(self) -> list[VideoRecord]:
        """All records, sorted by path."""
        return list(self._records)

    @property
    def problems(self) -> list[str]:
        """Warnings found when the manifest was built (unlisted videos, count mismatches...)."""
        return list(self._problems)

    @property
    def num_splits(self) -> int:
        return self._num_splits

    @property
    def split_method(self) -> str:
        """How the splits were made when the tool generated them (method, splits, test fraction, seed,
        groups: data_manifest.grouping); '' when they come from split files."""
        return self._split_method

    @property
    def group_rule(self) -> str:
        """How the videos were grouped (the _gNN_ token, a regex, or none); '' when not recorded."""
        return self._group_rule

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[VideoRecord]:
        return iter(self._records)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return (self._dataset, self._classes, self._records, self._problems, self._num_splits,
                self._split_method, self._group_rule) == \
            (other._dataset, other._classes, other._records, other._problems, other._num_splits,
             other._split_method, other._group_rule)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Manifest(dataset={self._dataset!r}, classes={len(self._classes)}, videos={len(self._records)}, "
                f"splits={self._num_splits}, problems={len(self._problems)})")

    # -- queries ----------------------------------------------------------------------------------------------

    def by_id(self, video_id: str) -> VideoRecord:
        """The record of one video; UnknownVideoError (a KeyError) if the manifest does not hold it."""
        i = self._index.get(video_id)
        if i is None:
            raise UnknownVideoError(f"video id {video_id!r} is not in this {self._dataset} manifest "
                                    f"({len(self._records)} videos)")
        return self._records[i]

    def ids(self, split: int = 1, subset: str = SPLIT_TRAIN, *, val_fraction: float = DEFAULT_VAL_FRACTION,
            seed: int = DEFAULT_VAL_SEED) -> list[str]:
        """Video ids of one subset of split k, in path order.

        subset: 'train' | 'test' | 'unused' as listed; 'val' (held out of the train list by group, see
        data_manifest.holdout) | 'train-minus-val' (the train list without val) | 'all' (every video, split
        ignored). The old name 'train-val' is refused, naming the new one.
        """
        if subset in RENAMED_SUBSETS:
            raise ManifestError(RENAMED_SUBSETS[subset])
        if subset not in SUBSETS:
            raise ManifestError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
        if subset == SUBSET_ALL:
            return [r.video_id for r in self._records]
        if self._num_splits == 0:
            raise ManifestError(f"this {self._dataset} manifest has no splits: it was made without split files "
                                "and without a generated split; only subset='all' is available. Rebuild it with "
                                "`data-manifest build` or `flowprep extract`, which make a seeded, group-safe "
                                "split when there are no split files, or give UCF101-format split files "
                                "(classInd.txt, trainlist01.txt, testlist01.txt) with --splits")
        if not _is_int(split) or not 1 <= split <= self._num_splits:
            raise ManifestError(f"split must be between 1 and {self._num_splits}, got {split!r}")
        if subset in (SPLIT_TRAIN, SPLIT_TEST, SPLIT_UNUSED):
            return [r.video_id for r in self._records if r.splits[split - 1] == subset]
        check_val_args(val_fraction, seed)
        train = [r for r in self._records if r.splits[split - 1] == SPLIT_TRAIN]
        held = holdout_ids(train, split, val_fraction, seed)
        want_val = subset == SUBSET_VAL
        return [r.video_id for r in train if (r.video_id in held) == want_val]

    def subset(self, video_ids: Iterable[str]) -> Manifest:
        """A manifest restricted to the given ids (same dataset, classes and problems), e.g. for one shard."""
        wanted = set(video_ids)
        unknown = sorted(v for v in wanted if v not in self._index)
        if unknown:
            shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            raise UnknownVideoError(f"{len(unknown)} video ids are not in this {self._dataset} manifest: {shown}")
        return Manifest(self._dataset, self._classes, (r for r in self._records if r.video_id in wanted),
                        self._problems, self._num_splits, split_method=self._split_method,
                        group_rule=self._group_rule)

    # -- text format ------------------------------------------------------------------------------------------

    def columns(self) -> tuple[str, ...]:
        """The column names of the table part of the text format."""
        return FIXED_COLUMNS + tuple(f"split{k}" for k in range(1, self._num_splits + 1))

    def to_text(self) -> str:
        """The manifest as text (see the module docstring); from_text(to_text()) gives an equal manifest."""
        lines = [f"# format: {FORMAT}", f"# dataset: {self._dataset}", f"# splits: {self._num_splits}",
                 f"# classes: {len(self._classes)}"]
        lines += [f"# class: {c}" for c in self._classes]
        lines += [f"# problem: {p}" for p in self._problems]
        lines += [f"# {key}: {value}" for key, value in (("split-method", self._split_method),
                                                          ("group-rule", self._group_rule)) if value]
        lines.append("\t".join(self.columns()))
        for r in self._records:
            group = SPLIT_NONE if r.group is None else str(r.group)
            lines.append("\t".join((r.video_id, r.path, r.class_name, str(r.label), group) + r.splits))
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> Manifest:
        """Parse manifest text; ManifestError names source:line and what was expected."""
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if not lines or lines[0].rstrip("\r") != f"# format: {FORMAT}":
            got = repr(lines[0][:60]) if lines else "an empty file"
            raise ManifestError(f"{source}:1: not a manifest: expected first line '# format: {FORMAT}', got {got}")
        header: dict[str, tuple[int, str]] = {}
        classes: list[str] = []
        problems: list[str] = []
        columns: tuple[str, ...] | None = None
        records: list[VideoRecord] = []
        first_line: dict[str, int] = {}
        for no, raw in enumerate(lines[1:], start=2):
            line = raw[:-1] if raw.endswith("\r") else raw  # tolerate a manifest saved with CRLF
            if line == "":
                continue
            if columns is None and line.startswith("#"):
                m = _HEADER_LINE.fullmatch(line)
                if not m:
                    raise ManifestError(f"{source}:{no}: expected a header line '# key: value', got {line[:60]!r}")
                key, value = m.groups()
                if key not in _HEADER_KEYS or key == "format":
                    raise ManifestError(f"{source}:{no}: unknown header key {key!r}; known keys: "
                                        f"{', '.join(k for k in _HEADER_KEYS if k != 'format')}")
                if key == "class":
                    classes.append(value)
                elif key == "problem":
                    problems.append(value)
                elif key in header:
                    raise ManifestError(f"{source}:{no}: header key {key!r} repeated (first on line "
                                        f"{header[key][0]})")
                else:
                    header[key] = (no, value)
                continue
            if columns is None:
                columns = cls._parse_header(header, classes, line, no, source)
                num_splits = len(columns) - len(FIXED_COLUMNS)
                continue
            records.append(cls._parse_row(line, no, source, columns, classes, first_line))
        if columns is None:
            raise ManifestError(f"{source}: the column header line ('video_id<TAB>path<TAB>...') is missing")
        try:
            return cls(header["dataset"][1], classes, records, problems, num_splits,
                       **{key.replace("-", "_"): header[key][1] for key in _OPTIONAL_KEYS if key in header})
        except ManifestError as e:
            raise ManifestError(f"{source}: {e}") from None

    @staticmethod
    def _parse_header(header: dict[str, tuple[int, str]], classes: list[str], line: str, no: int,
                      source: str) -> tuple[str, ...]:
        for key in ("dataset", "splits", "classes"):
            if key not in header:
                raise ManifestError(f"{source}:{no}: header line '# {key}: ...' is missing before the column header")
        splits_no, splits = header["splits"]
        if not _INT.fullmatch(splits):
            raise ManifestError(f"{source}:{splits_no}: '# splits:' must be a whole number, got {splits!r}")
        count_no, count = header["classes"]
        if not _INT.fullmatch(count) or int(count) != len(classes):
            raise ManifestError(f"{source}:{count_no}: '# classes: {count}' but the file has {len(classes)} "
                                f"'# class:' lines")
        if len(set(classes)) != len(classes):
            dup = next(c for c in classes if classes.count(c) > 1)
            raise ManifestError(f"{source}: class {dup!r} appears twice in the '# class:' lines")
        columns = FIXED_COLUMNS + tuple(f"split{k}" for k in range(1, int(splits) + 1))
        if tuple(line.split("\t")) != columns:
            raise ManifestError(f"{source}:{no}: expected the column header {chr(9).join(columns)!r} "
                                f"(tab-separated), got {line[:80]!r}")
        return columns

    @staticmethod
    def _parse_row(line: str, no: int, source: str, columns: tuple[str, ...], classes: list[str],
                   first_line: dict[str, int]) -> VideoRecord:
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise ManifestError(f"{source}:{no}: expected {len(columns)} tab-separated fields "
                                f"({', '.join(columns)}), got {len(fields)}")
        video_id, path, class_name, label, group = fields[:5]
        if not _INT.fullmatch(label):
            raise ManifestError(f"{source}:{no}: label must be a whole number, got {label!r}")
        if group != SPLIT_NONE and not _INT.fullmatch(group):
            raise ManifestError(f"{source}:{no}: group must be a whole number or '-', got {group!r}")
        if int(label) >= len(classes) or classes[int(label)] != class_name:
            raise ManifestError(f"{source}:{no}: label {label} and class {class_name!r} disagree with the "
                                f"'# class:' lines ({len(classes)} classes)")
        if video_id in first_line:
            raise ManifestError(f"{source}:{no}: duplicate video id {video_id!r} (first on line "
                                f"{first_line[video_id]})")
        first_line[video_id] = no
        try:
            return VideoRecord(video_id, path, class_name, int(label),
                               None if group == SPLIT_NONE else int(group), tuple(fields[5:]))
        except ManifestError as e:
            raise ManifestError(f"{source}:{no}: {e}") from None

    def write(self, path: str | os.PathLike) -> Path:
        """Write the text atomically (temp file in the same folder, then rename); returns the path."""
        return atomic_write(path, self.to_text())

    @classmethod
    def read(cls, path: str | os.PathLike) -> Manifest:
        """Read a manifest file written by write(); ManifestError names the file and line on any defect."""
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"manifest file {path} not found; make one with 'data-manifest build ROOT --out "
                                f"{path}'")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ManifestError(f"{path}: not UTF-8 text (byte {e.start}); is this a manifest?") from None
        return cls.from_text(text, source=str(path))
