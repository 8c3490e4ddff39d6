"""The folder layouts other tools write frames and flow in: one table, and the pure rules that map their files
to the store's frames and fields (used by `flowprep import` and `flowprep export`).

Every layout keeps one folder per video, one JPEG per RGB frame and two gray JPEGs per flow field (x, y),
numbered from ``start``:

    feichtenhofer  the twostreamfusion downloads (Feichtenhofer et al.): jpegs_256/<video>/frame000001.jpg,
                   tvl1_flow/u/<video>/frame000001.jpg (x) and tvl1_flow/v/<video>/... (y); 1-based; no class
                   folders; flow count = frame count - 1
    tsn            TSN's dense_flow: <video>/img_00001.jpg, flow_x_00001.jpg, flow_y_00001.jpg; 1-based. The
                   image written with pair k is the pair's second frame, so video frame 0 is never written:
                   images = flows = N - 1
    denseflow      open-mmlab denseflow: the same names, 0-based (img_00000.jpg shows video frame 0); flow count
                   N - |step| (a step other than 1 puts _p<step>_ or _m<step>_ in the flow names)
    mmaction2      mmaction2 rawframes (RawframeDataset, start_index 1): img_{:05}.jpg, flow_x_{:05}.jpg,
                   flow_y_{:05}.jpg, 1-based; flow count = frame count - 1

Indices. ``first_frame`` is the video frame the first RGB image shows (1 for dense_flow, else 0); flow file
number ``start + i`` lies between video frames i and i + 1 in every layout. The store's convention is flow k
between its frames k and k + 1, so an import makes store frame j = image ``start + j`` and store flow j =
flow file ``start + first_frame + j``. A layout whose first image is video frame 1 therefore leaves out its
first flow field (from video frame 0, which it never wrote, to frame 1): the store of a dense_flow video of N
frames holds N - 1 frames (video frames 1..N-1) and N - 2 fields, and records that its frame 0 is video
frame 1. The count rule each layout must satisfy follows from the same numbers: flows = first_frame +
frames - 1, the last field ending at the last image.

Names. The number may be zero-padded to any width (``img_3.jpg`` is image 3, as ``img_00003.jpg``: the
number is what matters, and tools that name by ``%d`` exist); two files with one number refuse the video.
The extension may be upper case (``.JPG``). mmaction2 trees may name flow ``x_00001.jpg`` / ``y_00001.jpg``
(the default of its ``tools/misc/flow_extraction.py``, which its flow configs read with
``filename_tmpl='{}_{:05d}.jpg'``) as well as ``flow_x_``.

Rounding. The files do not say how the tool quantised flow to u8; each layout's default is its usual
writer's rule (``rounding``): dense_flow and denseflow round (cvRound), mmaction2's own flow tool truncates
(``astype(np.uint8)``: zero flow is 127), and the twostreamfusion downloads do not say (round assumed).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from flowprep.errors import VideoError

SHOWN = 5  # file names listed in one reason before "and N more"


@dataclass(frozen=True)
class Layout:
    """One tool's frame and flow layout; see the module docstring. Names are ``<prefix><number>.jpg`` with the
    number zero-padded to ``digits`` (more digits once the count needs them)."""

    name: str
    tool: str  # who writes it, for messages and the store's provenance
    rgb: str  # prefix of RGB image names
    flow_x: str
    flow_y: str
    digits: int
    start: int  # number of the first image (and of the first flow field)
    first_frame: int  # the video frame the first RGB image shows
    flow_tree: tuple[str, str] | None  # sub-folders (x, y) of a flow tree of its own; None: flow beside the frames
    class_folders: bool  # whether video folders may sit in class folders (<Class>/<video>/)
    rounding: str  # the rule its usual writer quantised flow with (flowprep.flow.quantize.ROUNDINGS)
    rounding_why: str  # who that writer is, for the store's provenance and the README
    # `flowprep export`: names of the annotation lists (RGB, flow) its tools write, {dataset} and {part}
    # ("train_split_1", "val_split_1": both name the official test list val; "all" without splits); None:
    # not an export target
    lists: tuple[str, str] | None = None
    # other (x, y) flow name prefixes its tools write; the first pair (flow_x, flow_y) is the one exported
    other_flow_names: tuple[tuple[str, str], ...] = ()

    @property
    def flow_names(self) -> tuple[tuple[str, str], ...]:
        return ((self.flow_x, self.flow_y), *self.other_flow_names)

    def name_of(self, prefix: str, number: int) -> str:
        return f"{prefix}{number:0{self.digits}d}.jpg"

    @property
    def pattern(self) -> str:
        """The RGB names, for messages: img_00001.jpg, img_00002.jpg, ..."""
        return f"{self.name_of(self.rgb, self.start)}, {self.name_of(self.rgb, self.start + 1)}, ..."

    def flows_for(self, frames: int) -> int:
        """Flow fields a video with ``frames`` RGB images has in this layout."""
        return self.first_frame + frames - 1

    def count_rule(self) -> str:
        """The layout's count rule in words."""
        return "images = flow fields" if self.first_frame == 1 else "flow fields = images - 1"

    def index_convention(self) -> str:
        """The layout's numbering in words, for the store's provenance."""
        first = self.name_of(self.rgb, self.start)
        x = self.name_of(self.flow_x, self.start)
        return (f"{self.start}-based; {first} shows video frame {self.first_frame}; {x} lies between video frames "
                f"0 and 1; {self.count_rule()}")

    def mapping(self) -> str:
        """How the store's frames and fields map to this layout's files, for the store's provenance."""
        text = (f"store frame j = {self.rgb}{{start + j}} ({self.name_of(self.rgb, self.start)} is frame 0); store "
                f"flow j = {self.flow_x}/{self.flow_y}{{{self.start + self.first_frame} + j}}")
        if self.first_frame:
            dropped = self.name_of(self.flow_x, self.start)
            text += (f"; store frame 0 is video frame {self.first_frame} ({self.tool} never writes video frame 0), "
                     f"so {dropped} and its y (from video frame 0 to 1) are left out: they start at no stored frame")
        return text


_DENSE_FLOW = "cvRound(255 * (v + b) / (2b)) after clipping to [-b, b], as the tool's CAST writes it"
LAYOUTS = {
    "feichtenhofer": Layout("feichtenhofer", "the twostreamfusion downloads (Feichtenhofer et al.)", "frame",
                            "frame", "frame", 6, 1, 0, ("u", "v"), False, "round",
                            "not documented by the downloads (linear over [-b, b]); rounding assumed"),
    "tsn": Layout("tsn", "TSN's dense_flow", "img_", "flow_x_", "flow_y_", 5, 1, 1, None, True, "round", _DENSE_FLOW,
                  ("{dataset}_rgb_{part}.txt", "{dataset}_flow_{part}.txt")),  # TSN's build_file_list.py names
    "denseflow": Layout("denseflow", "open-mmlab denseflow", "img_", "flow_x_", "flow_y_", 5, 0, 0, None, True,
                        "round", _DENSE_FLOW),
    "mmaction2": Layout("mmaction2", "mmaction2 rawframes", "img_", "flow_x_", "flow_y_", 5, 1, 0, None, True,
                        "truncate", "mmaction2's tools/misc/flow_extraction.py, the tool that writes 1-based "
                        "mmaction2 trees, truncates (astype(np.uint8): zero flow -> 127); denseflow, which "
                        "rounds, writes 0-based names (--layout denseflow)",
                        # tools/data/build_file_list.py names the RGB lists so; the flow lists are named alike
                        ("{dataset}_{part}_rawframes.txt", "{dataset}_{part}_flow.txt"), (("x_", "y_"),)),
}


def layout(name: str) -> Layout:
    from flowprep.errors import OptionError

    try:
        return LAYOUTS[name]
    except KeyError:
        raise OptionError(f"unknown --layout {name!r}; choose one of {', '.join(LAYOUTS)}") from None


def _numbered(prefix: str) -> re.Pattern[str]:
    return re.compile(re.escape(prefix) + r"([0-9]+)\.(?i:jpe?g)")


_STEPPED = re.compile(r"(flow_[xy])_([pm])([0-9]+)_[0-9]+\.(jpg|png)")


@dataclass(frozen=True)
class VideoFiles:
    """Which files make up one video in the store's order: rgb[j] is store frame j, flow[j] = (x, y) names of
    store flow j; ``dropped`` are the (x, y) names left out (see the module docstring); ``ignored`` says what
    else was there and not used."""

    rgb: list[str]
    flow: list[tuple[str, str]]
    dropped: list[tuple[str, str]]
    ignored: str = ""


def _shown(names: list[str]) -> str:
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def _numbers(names: list[str], prefix: str, where: str = "") -> dict[int, str]:
    """Number -> file name of the names ``<prefix><number>.jpg``; VideoError (naming both files) when two
    names carry one number (``img_3.jpg`` beside ``img_00003.jpg``)."""
    pattern = _numbered(prefix)
    numbers: dict[int, str] = {}
    for n in names:
        if m := pattern.fullmatch(n):
            k = int(m.group(1))
            if k in numbers:
                raise VideoError(f"{where}: {numbers[k]} and {n} both are number {k}; one file per number: "
                                 "remove or rename one of them")
            numbers[k] = n
    return numbers


def holds_layout_files(lay: Layout, names: list[str]) -> bool:
    """Whether any of ``names`` is one of the layout's RGB or flow file names."""
    patterns = [_numbered(p) for p in {lay.rgb, *(p for pair in lay.flow_names for p in pair)}]
    return any(p.fullmatch(n) for n in names for p in patterns) or any(_STEPPED.fullmatch(n) for n in names)


def found_names(names: list[str]) -> str:
    """'; the folder holds a.png, b.txt' (or 'is empty'): what a message says was there instead."""
    return f"; the folder holds {_shown(names)}" if names else "; the folder is empty"


def look_alike(lay: Layout, names: list[str]) -> str:
    """'; its files are named like the X layout (...)' when another layout's RGB names are there."""
    for other in LAYOUTS.values():
        if other.rgb != lay.rgb and (found := sorted(n for n in names if _numbered(other.rgb).fullmatch(n))):
            return f"; its files are named as in the {other.name} layout ({found[0]}): import it with --layout " \
                   f"{other.name}" + (" or another layout with those names" if other.rgb == "img_" else "")
    return ""


def _sequence(lay: Layout, numbers: dict[int, str], prefix: str, where: str, what: str, names: list[str],
              also: str = "") -> list[int]:
    """The numbers, checked to start at the layout's start and run without gaps; VideoError names the
    problem (a 0- vs 1-based mixup is told from the first file's number; with none, what is there)."""
    if not numbers:
        raise VideoError(f"{where}: no {what} named {lay.name_of(prefix, lay.start)}, "
                         f"{lay.name_of(prefix, lay.start + 1)}, ...{also} ({lay.tool})" + found_names(names))
    first, last = min(numbers), max(numbers)
    if first != lay.start:
        if first == 1 - lay.start:
            based = {0: "0-based", 1: "1-based"}
            others = [o.name for o in LAYOUTS.values() if o.start == first and o.rgb == lay.rgb]
            hint = f"; import it with --layout {' or '.join(others)}" if others else ""
            raise VideoError(f"{where}: the {what} start at {numbers[first]}, {based[first]} numbering, while "
                             f"{lay.tool} numbers from {lay.start} ({lay.name_of(prefix, lay.start)}): a 0- vs "
                             f"1-based mixup{hint}")
        raise VideoError(f"{where}: the {what} start at {numbers[first]}; {lay.tool} starts at "
                         f"{lay.name_of(prefix, lay.start)}, so the first {first - lay.start} are missing")
    absent = last - first + 1 - len(numbers)
    if absent:
        shown, n = [], first
        while len(shown) < min(SHOWN, absent):  # the first few only: one stray high number spans a lot
            if n not in numbers:
                shown.append(lay.name_of(prefix, n))
            n += 1
        more = f" and {absent - len(shown)} more" if absent > len(shown) else ""
        raise VideoError(f"{where}: gaps in the numbering of the {what}: {', '.join(shown)}{more} missing "
                         f"({absent} of {numbers[first]}..{numbers[last]})")
    return list(range(first, last + 1))


def _flow_numbers(lay: Layout, x_names: list[str], y_names: list[str], where: tuple[str, str, str]):
    """(x prefix, y prefix, x numbers, y numbers) of the one flow name form the folders use (mmaction2:
    flow_x_ or x_); VideoError when they use two."""
    forms = [(px, py, _numbers(x_names, px, where[1]), _numbers(y_names, py, where[2])) for px, py in lay.flow_names]
    used = [f for f in forms if f[2] or f[3]]
    if len(used) > 1:
        first = [(xs or ys)[min(xs or ys)] for _, _, xs, ys in used[:2]]
        raise VideoError(f"{where[1]}: flow named both as {first[0]} and as {first[1]}: two tools' flow in one "
                         "folder; keep one of them")
    return used[0] if used else forms[0]


def match_files(lay: Layout, rgb_names: list[str], x_names: list[str], y_names: list[str],
                where: tuple[str, str, str]) -> VideoFiles:
    """The files of one video in the store's order, from the names in its RGB, flow x and flow y folders
    (the same list three times when they share a folder). Checks the layout's numbering and count rule;
    VideoError names the folder and the problem: no images, two files of one number, a 0- vs 1-based
    mixup, gaps, x and y counts that differ, counts that break the rule, flow computed with a step other
    than 1. where: (RGB folder, x folder, y folder) for messages."""
    rgb_numbers = _numbers(rgb_names, lay.rgb, where[0])
    if not rgb_numbers:
        flows = [n for n in x_names if holds_layout_files(lay, [n])] if where[1] == where[0] else []
        never = " (mmaction2's tools/misc/flow_extraction.py writes them only with --save-rgb)" \
            if lay.other_flow_names else ""
        gone = f"; it holds {len(flows)} flow images ({_shown(flows)}) but no frames: the frames are gone, or were " \
            f"never written{never}" if flows else (look_alike(lay, rgb_names) or found_names(rgb_names))
        raise VideoError(f"{where[0]}: no RGB images named {lay.pattern} ({lay.tool})" + gone)
    px, py, x_numbers, y_numbers = _flow_numbers(lay, x_names, y_names, where)
    firsts = {min(n) for n in (rgb_numbers, x_numbers, y_numbers) if n}
    if firsts == {0, 1}:  # every layout numbers its images and its fields from the same start
        named = [(what, d, n[min(n)]) for what, d, n in (("RGB images", where[0], rgb_numbers),
                                                         ("flow x images", where[1], x_numbers),
                                                         ("flow y images", where[2], y_numbers)) if n]
        raise VideoError(f"{where[0]}: a 0- vs 1-based mixup: " + ", ".join(f"the {what} start at {first}"
                                                                            for what, _, first in named)
                         + f"; {lay.tool} numbers both from {lay.start}. Frames and flow were written by tools "
                         "that number differently (as mmaction2's own 1-based RGB frames beside denseflow's "
                         "0-based flow); renumber one of them")
    rgb = _sequence(lay, rgb_numbers, lay.rgb, where[0], "RGB images", rgb_names)
    stepped = sorted({m.group(0).rsplit("_", 1)[0] + "_"  # flow_x_p2_
                      for n in (*x_names, *y_names) if (m := _STEPPED.fullmatch(n))})
    if stepped and not (x_numbers or y_numbers):
        raise VideoError(f"{where[1]}: only flow computed with a step other than 1 ({', '.join(stepped)}...): "
                         "it lies between frames that far apart, and the store holds flow between consecutive "
                         "frames; compute flow with step 1 (denseflow's default)")
    others = "".join(f" or {lay.name_of(p, lay.start)}" for p, _ in lay.other_flow_names) if px == lay.flow_x else ""
    xs = _sequence(lay, x_numbers, px, where[1], "flow x images", x_names, others)
    ys = _sequence(lay, y_numbers, py, where[2], "flow y images", y_names)
    if len(xs) != len(ys):
        longer, shorter = (x_numbers, y_numbers) if len(xs) > len(ys) else (y_numbers, x_numbers)
        extra = [longer[n] for n in sorted(longer) if n not in shorter]
        raise VideoError(f"{where[1]}: {len(xs)} flow x and {len(ys)} flow y images; only one of x and y has "
                         f"{_shown(extra)}")
    want = lay.flows_for(len(rgb))
    if len(xs) != want:
        hints = [f"{o.tool} writes {o.count_rule()} (--layout {o.name})" for o in LAYOUTS.values()
                 if (o.rgb, o.start) == (lay.rgb, lay.start) and o.flows_for(len(rgb)) == len(xs)]
        raise VideoError(f"{where[0]}: {len(rgb)} RGB images and {len(xs)} flow fields, while {lay.tool} writes "
                         f"{lay.count_rule()} ({want} fields for {len(rgb)} images): "
                         + ("; ".join(hints) if hints else
                            "the last images or fields are missing, or extra ones were added"))
    if len(rgb) < 2:
        raise VideoError(f"{where[0]}: {len(rgb)} RGB image; at least 2 frames are needed for one flow field")
    skip = lay.first_frame
    pairs = [(x_numbers[n], y_numbers[n]) for n in xs]
    ignored = f"{len(stepped)} kinds of flow with a step other than 1 ({', '.join(stepped)})" if stepped else ""
    return VideoFiles([rgb_numbers[n] for n in rgb], pairs[skip:], pairs[:skip], ignored)


def export_names(lay: Layout, frames: int) -> tuple[list[tuple[int, str]], list[tuple[int, str, str]]]:
    """What an export writes for a store video of ``frames`` frames, numbering the store's frames as the
    video's: [(store frame, RGB name)], [(store flow, x name, y name)]. A layout whose first image is video
    frame 1 (dense_flow) has no name for store frame 0, which is then not written."""
    rgb = [(j, lay.name_of(lay.rgb, lay.start + j - lay.first_frame)) for j in range(lay.first_frame, frames)]
    flow = [(j, lay.name_of(lay.flow_x, lay.start + j), lay.name_of(lay.flow_y, lay.start + j))
            for j in range(frames - 1)]
    return rgb, flow


