"""Finding the video folders of a layout's tree for `flowprep import`: every folder that holds any of the
layout's files becomes a video, imported or failed with its reason, so no video and no class drops out
without a word (labels are positions in the class list: a vanished class would shift the ones after it).

- A folder of ``--frames`` holding layout files is a video; with class folders allowed, a folder holding
  sub-folders is a class folder and each sub-folder a video (an empty one, or one of other files, fails
  with what it holds). A class folder none of whose videos holds a layout file is refused as a whole.
- A flow folder (``--flow``, or the feichtenhofer ``u/`` and ``v/`` trees) without its frames folder is a
  video that fails ("no frames folder").
- A symbolic link that loops (to itself, or to a folder above it) is a video that fails, named; it never
  hides the rest of its folder.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from flowprep.interop.layouts import Layout, found_names, holds_layout_files

SHOWN = 5


@dataclass(frozen=True)
class FoundVideo:
    """One video folder: its class folder (None at the top level), its RGB and flow x / y folders, and why
    it cannot be imported when the folders alone say so (a symbolic-link loop, flow without frames)."""

    class_folder: str | None
    rgb: Path
    flow_x: Path
    flow_y: Path
    problem: str = ""
    holds: bool = True  # whether its folder holds any of the layout's files


@dataclass(frozen=True)
class Listing:
    """A folder's visible sub-folders, file names and symbolic links that loop, each sorted."""

    dirs: list[Path]
    files: list[str]
    loops: list[Path]
    error: str = ""  # why the folder could not be listed


def _above_or_same(target: Path, d: Path) -> bool:
    d = d.resolve()
    return target == d or target in d.parents


def listing(d: Path) -> Listing:
    """What folder ``d`` holds (all empty when it cannot be listed). A link to ``d`` itself or to a folder
    above it, or one whose resolution loops, is a loop, not a sub-folder."""
    dirs, files, loops = [], [], []
    try:
        it = os.scandir(d)
    except OSError as exc:
        return Listing([], [], [], exc.strerror or str(exc))
    with it:
        for e in it:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    if e.is_symlink() and _above_or_same(Path(os.path.realpath(e.path)), Path(d)):
                        loops.append(Path(e.path))
                    else:
                        dirs.append(Path(e.path))
                elif e.is_file():
                    files.append(e.name)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    loops.append(Path(e.path))
    return Listing(sorted(dirs), sorted(files), sorted(loops))


def sub_folders(d: Path) -> list[Path]:
    """Sorted visible sub-folders of ``d`` ([] when it cannot be listed)."""
    return listing(d).dirs


def file_names(d: Path) -> list[str]:
    """Sorted names of the visible files in folder ``d`` ([] when it cannot be listed)."""
    return listing(d).files


def loop_text(link: Path) -> str:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    return (f"{link}: a symbolic link that loops (it points to {target!r}, which leads back to itself or to a "
            "folder above it); remove it or point it at the video's folder")


def _holds(lay: Layout, d: Path) -> bool:
    return holds_layout_files(lay, listing(d).files)


def _shown(names: list[str]) -> str:
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def find_videos(lay: Layout, frames: Path, flow: Path | None) -> tuple[dict[str, FoundVideo], list[str]]:
    """The video folders of the tree (module docstring) by id (the folder name), with where each one's flow
    is: beside its frames, in the same relative folder under ``flow``, or for a flow tree of its own in
    ``flow/<u>/<video>`` and ``flow/<v>/<video>``; and notes for the manifest. LayoutError for a video id
    found twice, a flow tree without its sub-folders, or a class folder without a video."""
    from flowprep.errors import LayoutError

    notes: list[str] = []
    found: dict[str, FoundVideo] = {}
    where: dict[str, Path] = {}
    flow_root = flow if flow is not None else frames
    if lay.flow_tree is not None:
        absent = [flow_root / sub for sub in lay.flow_tree if not (flow_root / sub).is_dir()]
        if absent:
            raise LayoutError(f"the {lay.name} layout keeps flow in {lay.flow_tree[0]}/ and {lay.flow_tree[1]}/ "
                              f"folders, and {flow_root} has no {', '.join(p.name + '/' for p in absent)}: give the "
                              f"flow tree's folder (tvl1_flow/ of the download) with --flow")

    def add(d: Path, cls: str | None, problem: str = "", holds: bool = True) -> None:
        vid = d.name
        if vid in found:
            raise LayoutError(f"video {vid!r} is in both {where[vid]} and {d}; video ids (folder names) must be "
                              "unique: remove or rename one")
        rel = Path(cls, vid) if cls is not None else Path(vid)
        if lay.flow_tree is not None:
            fx, fy = (flow_root / sub / rel for sub in lay.flow_tree)
        else:
            fx = fy = flow_root / rel
        found[vid], where[vid] = FoundVideo(cls, frames / rel, fx, fy, problem, holds), d

    top = listing(frames)
    for link in top.loops:
        add(link, None, loop_text(link), False)
    classes, bare = [], []
    for t in top.dirs:
        inside = listing(t)
        if holds_layout_files(lay, inside.files):
            add(t, None)
        elif lay.class_folders and (inside.dirs or inside.loops):
            classes.append((t, inside))
        elif not lay.class_folders and any(_holds(lay, d) for d in inside.dirs[:3]):
            add(t, None, f"{t}: its sub-folders hold the frames, and the {lay.name} layout has no class folders: "
                         "give the folder that holds the video folders as --frames")
        else:
            bare.append(t)
    for t, inside in classes:
        holds = {d: _holds(lay, d) for d in inside.dirs}  # one listing per video folder
        if not any(holds.values()):
            raise LayoutError(f"{t}: a class folder none of whose {len(inside.dirs) + len(inside.loops)} video "
                              f"folders holds a frame or flow image of the {lay.name} layout; the class would "
                              "vanish and the labels of the classes after it shift: restore its videos, or move "
                              "the folder out of --frames")
        for d in inside.dirs:
            add(d, t.name, holds=holds[d])
        for link in inside.loops:
            add(link, t.name, loop_text(link), False)
    for t in bare:
        if classes:
            raise LayoutError(f"{t}: a class folder without video folders ({found_names(file_names(t))[2:]}); the "
                              "class would vanish and the labels of the classes after it shift: restore its "
                              "videos, or move the folder out of --frames")
        add(t, None, holds=False)  # an empty video folder, or one of other files: fails, saying what it holds
    if flow is not None or lay.flow_tree is not None:
        _flow_without_frames(lay, flow_root, frames, found, add)
    return found, notes


def _flow_without_frames(lay: Layout, flow_root: Path, frames: Path, found: dict[str, FoundVideo], add) -> None:
    """Add a failing video for every flow folder of the flow tree whose video has no frames folder."""
    roots = [flow_root / sub for sub in lay.flow_tree] if lay.flow_tree is not None else [flow_root]
    seen: dict[str, tuple[Path, str | None]] = {}
    for root in roots:
        for t in listing(root).dirs:
            if holds_layout_files(lay, listing(t).files):
                seen.setdefault(t.name, (t, None))
            elif lay.class_folders:
                for d in listing(t).dirs:
                    if _holds(lay, d):
                        seen.setdefault(d.name, (d, t.name))
    for vid, (d, cls) in sorted(seen.items()):
        if vid not in found:
            frames_dir = frames / cls / vid if cls is not None else frames / vid
            add(d, cls, f"{d}: flow images but no frames folder {frames_dir}: the video's frames are gone (or "
                        "were never there); restore them or remove its flow")


def source_bytes(folders: list[Path]) -> int:
    """Total size of the files in a video's folders (each counted once): what tells a resumed import that a
    video's files changed."""
    total = 0
    for d in dict.fromkeys(folders):
        try:
            with os.scandir(d) as it:
                total += sum(e.stat().st_size for e in it if e.is_file())
        except OSError:
            pass
    return total


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as POSIX text (the path itself when it lies elsewhere)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
