"""Parsers for the official split files of UCF101 and HMDB51; every error names the file and line.

UCF101 (``ucfTrainTestlist/``): ``classInd.txt`` ("<id> <Class>", ids 1-based), ``trainlist0K.txt``
("<Class>/<file>.avi <id>"), ``testlist0K.txt`` ("<Class>/<file>.avi"). HMDB51
(``testTrainMulti_7030_splits/``): ``<class>_test_splitK.txt`` with "<file>.avi <tag>" (1 train, 2 test,
0 unused). Both come with CRLF line ends, blank lines and trailing spaces, which are all tolerated.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from data_manifest.errors import ManifestError
from data_manifest.manifest import SPLIT_NONE, SPLIT_TEST, SPLIT_TRAIN, SPLIT_UNUSED

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv", ".ts", ".m2ts",
                    ".mts", ".3gp", ".3g2", ".ogv", ".vob", ".asf")
UCF_CLASS_IND = "classInd.txt"
UCF_TRAIN = "trainlist{:02d}.txt"
UCF_TEST = "testlist{:02d}.txt"
HMDB_SPLIT_GLOB = "*_test_split1.txt"

_UCF_LIST = re.compile(r"(train|test)list([0-9]{2})\.txt")
_HMDB_SPLIT = re.compile(r"(?P<cls>.+)_test_split(?P<k>[0-9]+)\.txt")
_HMDB_LINE = re.compile(r"(?P<video>.*\S)\s+(?P<tag>\S+)")
_HMDB_TAGS = {"1": SPLIT_TRAIN, "2": SPLIT_TEST, "0": SPLIT_UNUSED}
_INT = re.compile(r"[0-9]+")
_UCF_NAME = re.compile(r"v_(?P<cls>[A-Za-z0-9]+)_g[0-9]+_c[0-9]+")
# UCF101 file names that spell their class otherwise than its folder and classInd.txt do
UCF_FILE_CLASS_SPELLING = {"HandStandPushups": "HandstandPushups"}


def ucf_class_of(name: str) -> str | None:
    """The class of a UCF101 video from its name ``v_<Class>_gXX_cYY`` (any extension), spelt as its class
    folder and classInd.txt spell it (v_HandStandPushups_... is class HandstandPushups); None for other names."""
    m = _UCF_NAME.fullmatch(name.split(".", 1)[0])
    if m is None:
        return None
    return UCF_FILE_CLASS_SPELLING.get(m.group("cls"), m.group("cls"))


def is_video_name(name: str) -> bool:
    """True for a file name with one of the known video extensions (any case), hidden files excluded."""
    return not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS)


@dataclass(frozen=True)
class SplitTable:
    """What a dataset's split files say: classes in label order and each listed video's membership per split."""

    dataset: str
    classes: tuple[str, ...]
    num_splits: int
    entries: dict[str, tuple[str, ...]]  # "<Class>/<file>" -> membership per split ("train", "test", ...)
    files: tuple[Path, ...]  # the split files read, for messages


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines of a text file; CRLF and a BOM tolerated."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ManifestError(f"cannot read split file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.start}); is this a split file?") from None
    # Split on "\n" only: str.splitlines would also break on characters that may appear inside names.
    out = []
    for no, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if line:
            out.append((no, line))
    return out


def parse_class_ind(path: Path) -> tuple[str, ...]:
    """classInd.txt -> class names in id order (label = id - 1)."""
    by_id: dict[int, tuple[str, int]] = {}
    line_of: dict[str, int] = {}
    for no, line in read_lines(path):
        parts = line.split()
        if len(parts) != 2 or not _INT.fullmatch(parts[0]):
            raise ManifestError(f"{path}:{no}: expected '<id> <ClassName>' (for example '1 ApplyEyeMakeup'), "
                                f"got {line!r}")
        cid, name = int(parts[0]), parts[1]
        if cid < 1:
            raise ManifestError(f"{path}:{no}: class ids start at 1, got {cid}")
        if cid in by_id:
            raise ManifestError(f"{path}:{no}: class id {cid} repeated (first on line {by_id[cid][1]})")
        if name in line_of:
            raise ManifestError(f"{path}:{no}: class {name!r} repeated (first on line {line_of[name]})")
        by_id[cid] = (name, no)
        line_of[name] = no
    if not by_id:
        raise ManifestError(f"{path}: no classes; expected lines '<id> <ClassName>'")
    gaps = [i for i in range(1, len(by_id) + 1) if i not in by_id]
    if gaps:
        raise ManifestError(f"{path}: class ids must run 1..{len(by_id)} without gaps; id {gaps[0]} is missing")
    return tuple(by_id[i][0] for i in range(1, len(by_id) + 1))


def parse_ucf_list(path: Path, kind: str, class_ids: dict[str, int]) -> list[tuple[int, str]]:
    """trainlist0K.txt / testlist0K.txt -> [(line, "<Class>/<file>")]; labels are checked against classInd."""
    expected = "'<Class>/<video>.avi <label>'" if kind == SPLIT_TRAIN else "'<Class>/<video>.avi'"
    out = []
    for no, line in read_lines(path):
        parts = line.split()
        # The official testlists carry no label; some re-packaged copies add one, which is then checked too.
        if len(parts) not in ((2,) if kind == SPLIT_TRAIN else (1, 2)):
            raise ManifestError(f"{path}:{no}: expected {expected}, got {line!r}")
        rel = parts[0]
        pieces = rel.split("/")
        if len(pieces) != 2 or not all(pieces) or not is_video_name(pieces[1]):
            raise ManifestError(f"{path}:{no}: expected {expected} with a video extension, got {line!r}")
        cls = pieces[0]
        if cls not in class_ids:
            raise ManifestError(f"{path}:{no}: class folder {cls!r} is not in {UCF_CLASS_IND}")
        if len(parts) == 2:
            if not _INT.fullmatch(parts[1]):
                raise ManifestError(f"{path}:{no}: expected {expected} with a whole-number label, got {line!r}")
            if int(parts[1]) != class_ids[cls]:
                raise ManifestError(f"{path}:{no}: label {parts[1]} disagrees with {UCF_CLASS_IND}, which numbers "
                                    f"{cls} {class_ids[cls]}; the class is taken from the folder name")
        out.append((no, rel))
    return out


def _split_numbers(names: list[str], pattern: re.Pattern[str]) -> set[int]:
    return {int(m.group(2)) for n in names if (m := pattern.fullmatch(n))}


def load_ucf101(splits_dir: Path) -> SplitTable:
    """Read classInd.txt and every trainlist0K/testlist0K pair in splits_dir."""
    class_ind = splits_dir / UCF_CLASS_IND
    if not class_ind.is_file():
        raise ManifestError(f"{class_ind} not found; the UCF101 split folder (ucfTrainTestlist) must hold it")
    classes = parse_class_ind(class_ind)
    class_ids = {c: i for i, c in enumerate(classes, start=1)}
    present = _split_numbers([p.name for p in splits_dir.iterdir()], _UCF_LIST)
    if not present:
        raise ManifestError(f"{splits_dir} holds {UCF_CLASS_IND} but no {UCF_TRAIN.format(1)} / "
                            f"{UCF_TEST.format(1)}; restore them from the official ucfTrainTestlist archive")
    num_splits = max(present)
    files = [class_ind]
    entries: dict[str, list[str]] = {}
    first: dict[tuple[str, int], str] = {}
    for k in range(1, num_splits + 1):
        for kind, pattern in ((SPLIT_TRAIN, UCF_TRAIN), (SPLIT_TEST, UCF_TEST)):
            path = splits_dir / pattern.format(k)
            if not path.is_file():
                raise ManifestError(f"split file {path} is missing: {splits_dir} has split files up to split "
                                    f"{num_splits}, so trainlist/testlist 01..{num_splits:02d} must all be there; "
                                    f"restore it from the official ucfTrainTestlist archive")
            files.append(path)
            for no, rel in parse_ucf_list(path, kind, class_ids):
                membership = entries.setdefault(rel, [SPLIT_NONE] * num_splits)
                if membership[k - 1] != SPLIT_NONE:
                    raise ManifestError(f"{path}:{no}: {rel} is listed twice in split {k} (first at "
                                        f"{first[rel, k]})")
                membership[k - 1] = kind
                first[rel, k] = f"{path.name}:{no}"
    return SplitTable("ucf101", classes, num_splits, {r: tuple(m) for r, m in entries.items()}, tuple(files))


def load_hmdb51(splits_dir: Path) -> SplitTable:
    """Read every <class>_test_splitK.txt in splits_dir; classes sorted alphabetically give the labels."""
    by_class: dict[str, dict[int, Path]] = {}
    for p in splits_dir.iterdir():
        m = _HMDB_SPLIT.fullmatch(p.name)
        if m and p.is_file():
            by_class.setdefault(m.group("cls"), {})[int(m.group("k"))] = p
    if not by_class:
        raise ManifestError(f"{splits_dir} holds no '<class>_test_split1.txt' files (HMDB51 split files)")
    classes = tuple(sorted(by_class))
    num_splits = max(k for ks in by_class.values() for k in ks)
    files: list[Path] = []
    entries: dict[str, list[str]] = {}
    for cls in classes:
        for k in range(1, num_splits + 1):
            path = splits_dir / f"{cls}_test_split{k}.txt"
            if k not in by_class[cls]:
                raise ManifestError(f"split file {path} is missing: other classes have split files up to split "
                                    f"{num_splits}; restore it from the official testTrainMulti_7030_splits archive")
            files.append(path)
            seen: dict[str, int] = {}
            for no, line in read_lines(path):
                m = _HMDB_LINE.fullmatch(line)
                if not m or m.group("tag") not in _HMDB_TAGS or not is_video_name(m.group("video")):
                    raise ManifestError(f"{path}:{no}: expected '<video>.avi <tag>' with tag 1 (train), 2 (test) "
                                        f"or 0 (unused), got {line!r}")
                video = m.group("video")
                if "/" in video:
                    raise ManifestError(f"{path}:{no}: expected a bare file name without folders, got {video!r}")
                if video in seen:
                    raise ManifestError(f"{path}:{no}: {video} is listed twice (first on line {seen[video]})")
                seen[video] = no
                entries.setdefault(f"{cls}/{video}", [SPLIT_NONE] * num_splits)[k - 1] = _HMDB_TAGS[m.group("tag")]
    return SplitTable("hmdb51", classes, num_splits, {r: tuple(m) for r, m in entries.items()}, tuple(files))


def write_ucf101(out_dir: Path, manifest) -> list[Path]:
    """Write a manifest's splits as UCF101 split files in ``out_dir``: classInd.txt ("<id> <Class>", ids from 1
    in label order), trainlist0K.txt ("<Class>/<file> <id>") and testlist0K.txt ("<Class>/<file>"), CRLF line
    ends as in the official archive. "<Class>/<file>" is the video's class folder and file name, so the files
    read back (--splits) give the same classes and splits. Videos with split '-' or 'unused' are in neither
    list. Refuses names the format cannot hold (whitespace) and a folder that already holds split files."""
    from plumbing.atomic import atomic_write

    if manifest.num_splits == 0:
        raise ManifestError("this manifest has no splits to write")
    bad = [c for c in manifest.classes if any(ch.isspace() for ch in c)]
    bad += [r.path for r in manifest.records if any(ch.isspace() for ch in "/".join(r.path.split("/")[-2:]))]
    if bad:
        raise ManifestError(f"{len(bad)} class or video names hold whitespace, which UCF101 split files cannot "
                            f"hold (e.g. {bad[0]!r}); rename them")
    names = [UCF_CLASS_IND] + [p.format(k) for k in range(1, manifest.num_splits + 1) for p in (UCF_TRAIN, UCF_TEST)]
    taken = [n for n in names if (Path(out_dir) / n).exists()]
    if taken:
        raise ManifestError(f"{out_dir} already holds split files ({', '.join(taken[:3])}); choose an empty folder "
                            "or remove them")
    texts = {UCF_CLASS_IND: [f"{i} {c}" for i, c in enumerate(manifest.classes, start=1)]}
    for k in range(1, manifest.num_splits + 1):
        rel = {r.video_id: "/".join(r.path.split("/")[-2:]) for r in manifest.records}
        texts[UCF_TRAIN.format(k)] = [f"{rel[r.video_id]} {r.label + 1}" for r in manifest.records
                                      if r.split(k) == SPLIT_TRAIN]
        texts[UCF_TEST.format(k)] = [rel[r.video_id] for r in manifest.records if r.split(k) == SPLIT_TEST]
    return [atomic_write(Path(out_dir) / n, "".join(line + "\r\n" for line in lines)) for n, lines in texts.items()]
