"""Build a Manifest from a dataset folder: find the split files and the class folders, parse, cross-check.

Where things may be:

- videos: ``ROOT/<Class>/<video>``, or ``ROOT/<one folder>/<Class>/<video>`` (the official
  ``UCF101/UCF-101/<Class>/...``); record paths are relative to ROOT either way, so ``ROOT / record.path``
  opens the video.
- split files: ``splits_dir`` if given; else ``ROOT/ucfTrainTestlist`` or ``ROOT/testTrainMulti_7030_splits``;
  else any folder up to two levels below ROOT; else those two well-known folders beside ROOT.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from data_manifest.errors import ManifestError
from data_manifest.manifest import SPLIT_NONE, SPLIT_TEST, SPLIT_TRAIN, SPLIT_UNUSED, Manifest, VideoRecord
from data_manifest.splits import (HMDB_SPLIT_GLOB, UCF_CLASS_IND, VIDEO_EXTENSIONS, SplitTable, is_video_name,
                                  load_hmdb51, load_ucf101, ucf_class_of)

DATASETS = ("auto", "ucf101", "hmdb51", "folder")
KNOWN_SPLIT_DIRS = ("ucfTrainTestlist", "testTrainMulti_7030_splits")
SEARCH_DEPTH = 2
MAX_LISTED = 10  # names shown in one message before "... and N more"

_GROUP = re.compile(r"_g([0-9]+)_")
_SPLIT_FILE_DESC = {"ucf101": f"UCF101 split files ({UCF_CLASS_IND})",
                    "hmdb51": f"HMDB51 split files ({HMDB_SPLIT_GLOB})"}


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
class BuildInfo:
    """Where build found things (for summaries); the Manifest itself does not keep absolute paths."""

    root: Path
    video_root: Path
    splits_dir: Path | None
    split_files: tuple[Path, ...]
    skipped: tuple[str, ...] = ()  # "<Class>/<file>" in class folders left out: not a video by its extension


def _shown(names: list[str]) -> str:
    extra = len(names) - MAX_LISTED
    return ", ".join(names[:MAX_LISTED]) + (f" ... and {extra} more" if extra > 0 else "")


def _subdirs(d: Path) -> list[Path]:
    try:
        with os.scandir(d) as it:
            return sorted(Path(e.path) for e in it if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return []


def _files(d: Path) -> tuple[list[str], list[str]]:
    """Sorted names of the files in ``d``: (videos by their extension, the other visible files)."""
    try:
        with os.scandir(d) as it:
            names = sorted(e.name for e in it if not e.name.startswith(".") and e.is_file())
    except OSError:
        return [], []
    return [n for n in names if is_video_name(n)], [n for n in names if not is_video_name(n)]


def _video_names(d: Path) -> list[str]:
    return _files(d)[0]


def _links_leaving(root: Path, video_root: Path, listing: dict[str, tuple[list[str], list[str]]]) -> list[str]:
    """"<Class>[/<video>] -> target" of the class folders and videos that are symbolic links resolving
    outside ``root`` (a link inside it is as good as a file there)."""
    top = root.resolve()

    def leaves(path: Path) -> str | None:
        if not path.is_symlink():
            return None
        target = path.resolve()
        return None if target == top or top in target.parents else str(target)

    found = []
    for name, (videos, _) in listing.items():
        if target := leaves(video_root / name):
            found.append(f"{name} -> {target}")
            continue  # the videos inside a linked folder leave with it
        found += [f"{name}/{v} -> {t}" for v in videos if (t := leaves(video_root / name / v))]
    return found


def _other_extension_hint(missing: list[str], disk: set[str]) -> str:
    """'; N of them exist with another extension (...)' when the split files name .avi and disk holds .mp4."""
    stem = lambda rel: PurePosixPath(rel).with_suffix("").as_posix()  # noqa: E731
    by_stem = {stem(r): r for r in disk}
    found = [(m, by_stem[stem(m)]) for m in missing if stem(m) in by_stem]
    if not found:
        return ""
    named, disk_name = found[0]
    return (f"; {len(found)} of them exist with another extension (e.g. {named} is on disk as {disk_name}): "
            "only the extension differs, so the videos were probably converted; rename them back or edit the "
            "split files to match")


def _split_kind(d: Path) -> str | None:
    if (d / UCF_CLASS_IND).is_file():
        return "ucf101"
    if next(d.glob(HMDB_SPLIT_GLOB), None) is not None:
        return "hmdb51"
    return None


def _search_split_dirs(root: Path) -> list[tuple[Path, str]]:
    """Folders holding split files, in the order of the search rule in the module docstring."""
    def kinds(dirs: list[Path]) -> list[tuple[Path, str]]:
        return [(d, k) for d in dirs if d.is_dir() and (k := _split_kind(d))]

    found = kinds([root / n for n in KNOWN_SPLIT_DIRS])
    if found:
        return found
    level, dirs = [root], [root]
    for _ in range(SEARCH_DEPTH):
        level = [s for d in level for s in _subdirs(d)]
        dirs += level
    found = kinds(dirs)
    if found:
        return found
    return kinds([root.parent / n for n in KNOWN_SPLIT_DIRS])


def _locate_splits(root: Path, dataset: str, splits_dir: str | os.PathLike | None) -> tuple[str, Path | None]:
    """Resolve the dataset kind and its split folder (None for a plain folder dataset)."""
    if dataset == "folder":
        return "folder", None
    if splits_dir is not None:
        sdir = Path(splits_dir)
        if not sdir.is_dir():
            raise ManifestError(f"splits folder {sdir} does not exist or is not a folder")
        kind = _split_kind(sdir)
        found = [(sdir, kind)] if kind else []
    else:
        found = _search_split_dirs(root)
    matches = [(d, k) for d, k in found if dataset in ("auto", k)]
    if not matches:
        if splits_dir is not None:
            what = _SPLIT_FILE_DESC.get(dataset, " or ".join(_SPLIT_FILE_DESC.values()))
            raise ManifestError(f"splits folder {splits_dir} holds no {what}")
        if dataset != "auto":
            raise ManifestError(f"no {_SPLIT_FILE_DESC[dataset]} found in {root} (looked in "
                                f"{' and '.join(KNOWN_SPLIT_DIRS)}, up to {SEARCH_DEPTH} levels down and beside "
                                f"it); pass the split folder with --splits (splits_dir=...)")
        return "folder", None
    if len({k for _, k in matches}) > 1:
        listed = "; ".join(f"{k}: {d}" for d, k in matches)
        raise ManifestError(f"found split files of more than one dataset under {root} ({listed}); "
                            f"choose with --dataset and --splits")
    if len(matches) > 1:
        raise ManifestError(f"found {matches[0][1]} split files in {len(matches)} folders "
                            f"({', '.join(str(d) for d, _ in matches)}); pass the one to use with --splits")
    return matches[0][1], matches[0][0]


def _find_video_root(root: Path) -> Path:
    """ROOT if it holds class folders with videos, else its only subfolder that does."""
    def holds_class_folders(d: Path) -> bool:
        return any(_video_names(s) for s in _subdirs(d))

    if holds_class_folders(root):
        return root
    candidates = [s for s in _subdirs(root) if holds_class_folders(s)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ManifestError(f"no videos found in {root}: expected {root}/<Class>/<video> or "
                            f"{root}/<folder>/<Class>/<video> with one of the extensions "
                            f"{' '.join(VIDEO_EXTENSIONS)}; point ROOT at the folder that holds the class folders")
    raise ManifestError(f"{root} has {len(candidates)} folders that hold class folders "
                        f"({', '.join(c.name for c in candidates)}); pass the one you mean as ROOT")


def _ucf_group(stem: str) -> int | None:
    """Group number from a UCF-style name 'v_Class_g08_c01' (the last '_gNN_'), None if there is none."""
    found = _GROUP.findall(stem)
    return int(found[-1]) if found else None


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


def _cross_check(table: SplitTable, on_disk: dict[str, list[str]], video_root: Path, splits_dir: Path,
                 allow_missing: bool, problems: list[str]) -> dict[str, tuple[str, ...]]:
    """Listed videos that exist, plus unlisted ones of known classes (membership '-'); fills problems."""
    disk = {f"{c}/{n}" for c, names in on_disk.items() for n in names}
    missing = sorted(r for r in table.entries if r not in disk)
    if missing:
        msg = (f"{len(missing)} of {len(table.entries)} videos named in the split files in {splits_dir} are "
               f"missing under {video_root}: {_shown(missing)}{_other_extension_hint(missing, disk)}")
        if not allow_missing:
            raise ManifestError(f"{msg}; check that ROOT holds the class folders (or one folder that does), "
                                f"or allow missing videos (--allow-missing) to leave them out")
        problems.append(f"{msg}; left out of the manifest")
    known = set(table.classes)
    stray = sorted(c for c, names in on_disk.items() if names and c not in known)
    if stray:
        problems.append(f"{len(stray)} folders in {video_root} are not classes of the split files and were left "
                        f"out: {_shown(stray)}")
    unlisted = sorted(r for r in disk if r not in table.entries and r.split("/", 1)[0] in known)
    if unlisted:
        problems.append(f"{len(unlisted)} videos on disk are in no split file (kept, with split '-'): "
                        f"{_shown(unlisted)}")
    entries = {r: m for r, m in table.entries.items() if r in disk}
    entries.update((r, (SPLIT_NONE,) * table.num_splits) for r in unlisted)
    return entries


def build(root: str | os.PathLike, dataset: str = "auto", splits_dir: str | os.PathLike | None = None,
          *, allow_missing: bool = False, follow_symlinks: bool = False) -> tuple[Manifest, BuildInfo]:
    """build_manifest, also returning where the videos and split files were found."""
    if dataset not in DATASETS:
        raise ManifestError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"dataset root {root} does not exist or is not a folder")
    dataset, sdir = _locate_splits(root, dataset, splits_dir)
    table = None
    if dataset == "ucf101":
        table = load_ucf101(sdir)
    elif dataset == "hmdb51":
        table = load_hmdb51(sdir)
    video_root = _find_video_root(root)
    listing = {d.name: _files(d) for d in _subdirs(video_root)}  # one directory scan per class folder
    on_disk = {name: videos for name, (videos, _) in listing.items()}
    skipped = tuple(f"{name}/{n}" for name, (_, others) in listing.items() for n in others)
    problems: list[str] = []
    if links := _links_leaving(root, video_root, listing):
        if not follow_symlinks:
            raise ManifestError(f"{len(links)} class folders or videos in {video_root} are symbolic links leaving "
                                f"the dataset folder ({_shown(links)}); pass --follow-symlinks (follow_symlinks="
                                "True) to use them, or copy them in")
        problems.append(f"{len(links)} class folders or videos are symbolic links leaving the dataset folder, "
                        f"followed (--follow-symlinks): {_shown(links)}")
    if table is None:
        classes = tuple(c for c in sorted(on_disk) if on_disk[c])
        empty = sorted(c for c in on_disk if not on_disk[c])
        if empty:
            problems.append(f"{len(empty)} folders in {video_root} hold no videos and are not classes: "
                            f"{_shown(empty)}")
        entries = {f"{c}/{n}": () for c in classes for n in on_disk[c]}
        num_splits = 0
    else:
        classes, num_splits = table.classes, table.num_splits
        entries = _cross_check(table, on_disk, video_root, sdir, allow_missing, problems)
    prefix = PurePosixPath(video_root.relative_to(root).as_posix())
    label_of = {c: i for i, c in enumerate(classes)}
    records = []
    for rel, membership in entries.items():
        cls, name = rel.split("/", 1)
        stem = PurePosixPath(name).stem
        records.append(VideoRecord(video_id=stem, path=(prefix / rel).as_posix(), class_name=cls,
                                   label=label_of[cls], group=_ucf_group(stem) if dataset == "ucf101" else None,
                                   splits=membership))
    counts = {k: Counter(r.splits[k - 1] for r in records) for k in range(1, num_splits + 1)}
    problems += official_count_problems(dataset, len(classes), counts)
    manifest = Manifest(dataset, classes, records, problems, num_splits)
    return manifest, BuildInfo(root, video_root, sdir, table.files if table else (), skipped)


def build_manifest(root: str | os.PathLike, dataset: str = "auto", splits_dir: str | os.PathLike | None = None,
                   *, allow_missing: bool = False, follow_symlinks: bool = False) -> Manifest:
    """Scan a dataset folder and its split files into a Manifest; raises ManifestError naming the file and fix.

    dataset: 'auto' (classInd.txt -> ucf101, *_test_split1.txt -> hmdb51, else folder) | 'ucf101' | 'hmdb51' |
    'folder' (<Class>/<video>, no splits). Videos named by split files but absent are an error unless
    allow_missing, which leaves them out; other findings go to manifest.problems. Class folders and videos
    that are symbolic links resolving outside ``root`` are an error unless follow_symlinks, which uses them
    and lists them in manifest.problems (a link within ``root`` is used silently).
    """
    return build(root, dataset, splits_dir, allow_missing=allow_missing, follow_symlinks=follow_symlinks)[0]


def build_from_folders(found: dict[str, str | None], splits_dir: str | os.PathLike | None = None, *,
                       allow_missing: bool = False, where: str = "the frame folders") -> Manifest:
    """A Manifest for videos known by the folders another tool wrote their frames into, not by video files.

    found: video id (the folder name, the video file's stem) -> the class folder it lies in, or None where the
    layout has none: the class then comes from the split files, or from a UCF101 name v_<Class>_gXX_cYY
    (ucf_class_of: v_HandStandPushups_... is HandstandPushups). With ``splits_dir`` (ucfTrainTestlist/ or
    the HMDB51 split folder) classes, labels and splits are the official ones and a record's path is the
    video as the split files name it ("<Class>/<file>.avi"); a listed video without a folder is an error
    unless allow_missing; folders the split files do not list are kept with split '-' when their class is
    known. Without split files the classes are the sorted class names found (as for a folder dataset) and a
    record's path is "<Class>/<video id>". ``where`` names the frame folders in messages.
    """
    problems: list[str] = []
    stray = []
    if splits_dir is None:
        classes_of = {}
        for vid, folder in found.items():
            cls = folder if folder is not None else ucf_class_of(vid)
            if cls is None:
                stray.append(vid)
            else:
                classes_of[vid] = cls
        classes = tuple(sorted(set(classes_of.values())))
        label_of = {c: i for i, c in enumerate(classes)}
        records = [VideoRecord(vid, f"{c}/{vid}", c, label_of[c], None, ()) for vid, c in classes_of.items()]
        dataset, num_splits = "folder", 0
    else:
        sdir = Path(splits_dir)
        if not sdir.is_dir():
            raise ManifestError(f"splits folder {sdir} does not exist or is not a folder")
        dataset = _split_kind(sdir)
        if dataset is None:
            raise ManifestError(f"splits folder {sdir} holds no {' or '.join(_SPLIT_FILE_DESC.values())}")
        table = load_ucf101(sdir) if dataset == "ucf101" else load_hmdb51(sdir)
        classes, num_splits = table.classes, table.num_splits
        label_of = {c: i for i, c in enumerate(classes)}
        by_id: dict[str, str] = {}
        for rel in table.entries:
            vid = PurePosixPath(rel).stem
            if vid in by_id:
                raise ManifestError(f"the split files in {sdir} name two videos with the id {vid!r} ({by_id[vid]} "
                                    f"and {rel}); video ids must be unique")
            by_id[vid] = rel
        missing = sorted(rel for vid, rel in by_id.items() if vid not in found)
        if missing:
            msg = (f"{len(missing)} of {len(by_id)} videos named in the split files in {sdir} have no frame "
                   f"folder in {where}: {_shown(missing)}")
            if not allow_missing:
                raise ManifestError(f"{msg}; check the frame (and flow) folders given, or allow missing videos "
                                    "(--allow-missing) to leave them out")
            problems.append(f"{msg}; left out of the manifest")
        records, moved, unlisted = [], [], []
        for vid, folder in found.items():
            rel = by_id.get(vid)
            if rel is not None:
                cls = rel.split("/", 1)[0]
                if folder is not None and folder != cls:
                    moved.append(f"{folder}/{vid} (split files: {cls})")
                records.append(VideoRecord(vid, rel, cls, label_of[cls],
                                           _ucf_group(vid) if dataset == "ucf101" else None, table.entries[rel]))
                continue
            cls = folder if folder is not None else ucf_class_of(vid)
            if cls not in label_of:
                stray.append(vid)
                continue
            unlisted.append(vid)
            records.append(VideoRecord(vid, f"{cls}/{vid}", cls, label_of[cls],
                                       _ucf_group(vid) if dataset == "ucf101" else None, (SPLIT_NONE,) * num_splits))
        if moved:
            problems.append(f"{len(moved)} videos lie in another class folder than the split files name; their "
                            f"class is taken from the split files: {_shown(sorted(moved))}")
        if unlisted:
            problems.append(f"{len(unlisted)} videos in {where} are in no split file (kept, with split '-'): "
                            f"{_shown(sorted(unlisted))}")
    if stray:
        problems.append(f"{len(stray)} folders in {where} have no known class and were left out: "
                        f"{_shown(sorted(stray))}")
    if not records:
        raise ManifestError(f"no videos with a class found in {where}"
                            + (f" ({len(stray)} folders without one: {_shown(sorted(stray))})" if stray else ""))
    counts = {k: Counter(r.splits[k - 1] for r in records) for k in range(1, num_splits + 1)}
    problems += official_count_problems(dataset, len(classes), counts)
    return Manifest(dataset, classes, records, problems, num_splits)
