"""Tiny fake UCF101 and HMDB51 trees with the real naming, split files and quirks; videos are empty files.

UCF101: ``ROOT/UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` + ``ROOT/ucfTrainTestlist/`` (CRLF, blank lines),
the folder HandstandPushups holding files named v_HandStandPushups_... HMDB51: ``ROOT/hmdb51_org/<class>/``
+ ``ROOT/testTrainMulti_7030_splits/<class>_test_splitK.txt`` with trailing spaces and names with ! ( ) &.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

UCF_CLASSES = ("ApplyEyeMakeup", "HandstandPushups", "YoYo")
UCF_FILE_CLASS = {"HandstandPushups": "HandStandPushups"}  # the official naming quirk

HMDB_VIDEOS = {
    "brush_hair": ("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi",
                   "brushing_hair_2_brush_hair_h_nm_np1_le_goo_1.avi"),
    "cartwheel": ("(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi",
                  "Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi",
                  "Cartwheel_(Gymnastics)_cartwheel_f_cm_np1_ri_med_1.avi"),
    "chew": ("Jim_Carrey_&_Ellen_chew_h_nm_np1_fr_goo_1.avi", "Chewing_Gum!_chew_h_nm_np1_fr_med_0.avi",
             "Who's_chewing_chew_u_nm_np1_fr_goo_2.avi"),
}
HMDB_TAGS = ("1", "2", "0")  # train, test, unused


@dataclass
class FakeTree:
    """Where a fake dataset was written, and what build_manifest should find in it."""

    root: Path  # pass this to build_manifest
    video_dir: Path
    splits_dir: Path
    classes: tuple[str, ...]
    # "<Class>/<file>" (relative to video_dir) -> membership per split
    expected: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def path(self, rel: str) -> str:
        """The record path build_manifest gives a video: relative to root, POSIX."""
        return (self.video_dir / rel).relative_to(self.root).as_posix()


def _write_lines(path: Path, lines: list[str], eol: str = "\r\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + eol for line in lines).encode("utf-8"))


def ucf_name(cls: str, group: int, clip: int) -> str:
    """Official UCF101 file name of a clip; the class part follows the file naming quirk."""
    return f"v_{UCF_FILE_CLASS.get(cls, cls)}_g{group:02d}_c{clip:02d}.avi"


def make_fake_ucf101(root: Path, classes: tuple[str, ...] = UCF_CLASSES, groups: int = 6, clips: int = 2,
                     splits: int = 3, nested: bool = True, missing: tuple[str, ...] = (),
                     unlisted: tuple[str, ...] = ()) -> FakeTree:
    """A UCF101-like tree; split k tests the k-th third of the groups, like the official lists.

    missing: "<Class>/<file>" listed but not created; unlisted: created but not listed.
    """
    root = Path(root)
    video_dir = root / "UCF-101" if nested else root
    splits_dir = root / "ucfTrainTestlist"
    tree = FakeTree(root, video_dir, splits_dir, tuple(classes))
    _write_lines(splits_dir / "classInd.txt", [f"{i} {c}" for i, c in enumerate(classes, start=1)])
    train: dict[int, list[str]] = {k: [] for k in range(1, splits + 1)}
    test: dict[int, list[str]] = {k: [] for k in range(1, splits + 1)}
    for label, cls in enumerate(classes, start=1):
        (video_dir / cls).mkdir(parents=True, exist_ok=True)
        for g in range(1, groups + 1):
            test_split = (g - 1) * 3 // groups + 1
            for c in range(1, clips + 1):
                rel = f"{cls}/{ucf_name(cls, g, c)}"
                if rel not in missing:
                    (video_dir / rel).write_bytes(b"")
                    tree.expected[rel] = tuple("test" if k == test_split else "train"
                                               for k in range(1, splits + 1))
                for k in range(1, splits + 1):
                    if k == test_split:
                        test[k].append(rel)
                    else:
                        train[k].append(f"{rel} {label}")
    for rel in unlisted:
        (video_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (video_dir / rel).write_bytes(b"")
        tree.expected[rel] = ("-",) * splits
    for k in range(1, splits + 1):
        # a blank line in the middle and at the end, as hand-edited copies have
        _write_lines(splits_dir / f"trainlist{k:02d}.txt", train[k][:1] + [""] + train[k][1:] + [""])
        _write_lines(splits_dir / f"testlist{k:02d}.txt", test[k] + [""])
    return tree


def make_fake_hmdb51(root: Path, videos: dict[str, tuple[str, ...]] | None = None, splits: int = 3,
                     nested: bool = True) -> FakeTree:
    """An HMDB51-like tree; video i of a class has tag HMDB_TAGS[(i + k) % 3] in split k."""
    videos = HMDB_VIDEOS if videos is None else videos
    root = Path(root)
    video_dir = root / "hmdb51_org" if nested else root
    splits_dir = root / "testTrainMulti_7030_splits"
    tree = FakeTree(root, video_dir, splits_dir, tuple(sorted(videos)))
    names = {"1": "train", "2": "test", "0": "unused"}
    for cls, files in videos.items():
        (video_dir / cls).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(files):
            (video_dir / cls / name).write_bytes(b"")
            tree.expected[f"{cls}/{name}"] = tuple(names[HMDB_TAGS[(i + k) % 3]] for k in range(1, splits + 1))
        for k in range(1, splits + 1):
            # trailing space after the tag, as in the official files
            _write_lines(splits_dir / f"{cls}_test_split{k}.txt",
                         [f"{name} {HMDB_TAGS[(i + k) % 3]} " for i, name in enumerate(files)], eol="\n")
    return tree


def replace_line(path: Path, line_no: int, text: str) -> None:
    """Replace 1-based line line_no of a split file, keeping its line ends."""
    raw = path.read_bytes().decode("utf-8")
    eol = "\r\n" if "\r\n" in raw else "\n"
    lines = raw.split(eol)
    lines[line_no - 1] = text
    path.write_bytes(eol.join(lines).encode("utf-8"))
