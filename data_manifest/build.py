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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from data_manifest.assemble import Found, Wording, assemble, shown
from data_manifest.errors import ManifestError
from data_manifest.grouping import GroupRule, SplitRule
from data_manifest.manifest import Manifest
from data_manifest.splits import (HMDB_SPLIT_GLOB, UCF_CLASS_IND, VIDEO_EXTENSIONS, is_video_name, load_hmdb51,
                                  load_ucf101, ucf_class_of)

DATASETS = ("auto", "ucf101", "hmdb51", "folder")
KNOWN_SPLIT_DIRS = ("ucfTrainTestlist", "testTrainMulti_7030_splits")
SEARCH_DEPTH = 2
_SPLIT_FILE_DESC = {"ucf101": f"UCF101 split files ({UCF_CLASS_IND})",
                    "hmdb51": f"HMDB51 split files ({HMDB_SPLIT_GLOB})"}


@dataclass(frozen=True)
class BuildInfo:
    """Where build found things (for summaries); the Manifest itself does not keep absolute paths."""

    root: Path
    video_root: Path
    splits_dir: Path | None
    split_files: tuple[Path, ...]
    skipped: tuple[str, ...] = ()  # "<Class>/<file>" in class folders left out: not a video by its extension


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
        loose = _video_names(root)
        if loose:
            raise ManifestError(f"{len(loose)} videos lie directly in {root} (e.g. {loose[0]}): put them in class "
                                f"folders ({root}/<Class>/<video>); the class folder's name is the label")
        raise ManifestError(f"no videos found in {root}: expected {root}/<Class>/<video> or "
                            f"{root}/<folder>/<Class>/<video> with one of the extensions "
                            f"{' '.join(VIDEO_EXTENSIONS)}; give the dataset folder that holds the class folders")
    raise ManifestError(f"{root} has {len(candidates)} folders that hold class folders "
                        f"({', '.join(c.name for c in candidates)}); give the one you mean as the dataset folder")


def build(root: str | os.PathLike, dataset: str = "auto", splits_dir: str | os.PathLike | None = None,
          *, allow_missing: bool = False, follow_symlinks: bool = False, group_rule: GroupRule = GroupRule(),
          split_rule: SplitRule | None = SplitRule()) -> tuple[Manifest, BuildInfo]:
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
    # one directory scan per class folder; the split folder is none (ROOT/ucfTrainTestlist beside the classes)
    listing = {d.name: _files(d) for d in _subdirs(video_root) if sdir is None or d.resolve() != sdir.resolve()}
    skipped = tuple(f"{name}/{n}" for name, (_, others) in listing.items() for n in others)
    problems: list[str] = []
    if links := _links_leaving(root, video_root, listing):
        if not follow_symlinks:
            raise ManifestError(f"{len(links)} class folders or videos in {video_root} are symbolic links leaving "
                                f"the dataset folder ({shown(links)}); pass --follow-symlinks (follow_symlinks="
                                "True) to use them, or copy them in")
        problems.append(f"{len(links)} class folders or videos are symbolic links leaving the dataset folder, "
                        f"followed (--follow-symlinks): {shown(links)}")
    empty = sorted(c for c, (videos, _) in listing.items() if not videos)
    if empty and table is None:
        problems.append(f"{len(empty)} folders in {video_root} hold no videos and are not classes: {shown(empty)}")
    prefix = PurePosixPath(video_root.relative_to(root).as_posix())
    listed = table.entries if table is not None else {}
    found = [Found(PurePosixPath(name).stem, (prefix / cls / name).as_posix(), cls,
                   f"{cls}/{name}" if f"{cls}/{name}" in listed else None)
             for cls, (videos, _) in listing.items() for name in videos]
    disk = {f"{cls}/{name}" for cls, (videos, _) in listing.items() for name in videos}
    words = Wording(where=str(video_root), missing_verb=f"are missing under {video_root}",
                    missing_fix="check that ROOT holds the class folders (or one folder that does)",
                    missing_hint=lambda missing: _other_extension_hint(missing, disk), stray_what="folders")
    manifest = assemble(found, table, dataset=dataset, source=str(sdir), words=words, allow_missing=allow_missing,
                        group_rule=group_rule, split_rule=split_rule, problems=problems)
    return manifest, BuildInfo(root, video_root, sdir, table.files if table else (), skipped)


def build_manifest(root: str | os.PathLike, dataset: str = "auto", splits_dir: str | os.PathLike | None = None,
                   *, allow_missing: bool = False, follow_symlinks: bool = False, group_rule: GroupRule = GroupRule(),
                   split_rule: SplitRule | None = SplitRule()) -> Manifest:
    """Scan a dataset folder and its split files into a Manifest; raises ManifestError naming the file and fix.

    dataset: 'auto' (classInd.txt -> ucf101, *_test_split1.txt -> hmdb51, else folder) | 'ucf101' | 'hmdb51' |
    'folder' (<Class>/<video>, no split files). Videos named by split files but absent are an error unless
    allow_missing, which leaves them out; other findings go to manifest.problems. Class folders and videos
    that are symbolic links resolving outside ``root`` are an error unless follow_symlinks, which uses them
    and lists them in manifest.problems (a link within ``root`` is used silently). Groups follow
    ``group_rule`` (data_manifest.grouping); without split files ``split_rule`` makes the splits (None: none).
    """
    return build(root, dataset, splits_dir, allow_missing=allow_missing, follow_symlinks=follow_symlinks,
                 group_rule=group_rule, split_rule=split_rule)[0]


def build_from_folders(found: dict[str, str | None], splits_dir: str | os.PathLike | None = None, *,
                       allow_missing: bool = False, where: str = "the frame folders",
                       group_rule: GroupRule = GroupRule(), split_rule: SplitRule | None = None) -> Manifest:
    """A Manifest for videos known by the folders another tool wrote their frames into, not by video files.

    found: video id (the folder name, the video file's stem) -> the class folder it lies in, or None where the
    layout has none: the class then comes from the split files, or from a UCF101 name v_<Class>_gXX_cYY
    (ucf_class_of: v_HandStandPushups_... is HandstandPushups). With ``splits_dir`` (ucfTrainTestlist/ or
    the HMDB51 split folder) classes, labels and splits are the official ones and a record's path is the
    video as the split files name it ("<Class>/<file>.avi"). Without split files the classes are the sorted
    class names found and a record's path is "<Class>/<video id>"; ``split_rule`` then makes the splits
    (None: none). The rules are data_manifest.assemble's; ``where`` names the frame folders in messages.
    """
    table, sdir, dataset = None, None, "folder"
    by_id: dict[str, str] = {}
    if splits_dir is not None:
        sdir = Path(splits_dir)
        if not sdir.is_dir():
            raise ManifestError(f"splits folder {sdir} does not exist or is not a folder")
        dataset = _split_kind(sdir)
        if dataset is None:
            raise ManifestError(f"splits folder {sdir} holds no {' or '.join(_SPLIT_FILE_DESC.values())}")
        table = load_ucf101(sdir) if dataset == "ucf101" else load_hmdb51(sdir)
        for rel in table.entries:
            vid = PurePosixPath(rel).stem
            if vid in by_id:
                raise ManifestError(f"the split files in {sdir} name two videos with the id {vid!r} ({by_id[vid]} "
                                    f"and {rel}); video ids must be unique")
            by_id[vid] = rel
    videos = []
    for vid, folder in found.items():
        guess = folder if folder is not None else ucf_class_of(vid)
        rel = by_id.get(vid)
        videos.append(Found(vid, rel if rel is not None else f"{guess}/{vid}", guess, rel))
    words = Wording(where=where, missing_verb=f"have no frame folder in {where}",
                    missing_fix="check the frame (and flow) folders given")
    return assemble(videos, table, dataset=dataset, source=str(sdir), words=words, allow_missing=allow_missing,
                    group_rule=group_rule, split_rule=split_rule)
