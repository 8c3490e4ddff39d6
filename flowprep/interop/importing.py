"""`flowprep import`: frames and flow another tool wrote (flowprep.interop.layouts) -> the same store extract writes.

The steps are extract's (flowprep.pipeline.build_store: resume plan, per-video work in the CPU pool, parts,
assembly); what differs is the work: `import_video` reads one video's files instead of decoding and
computing. With codec jpeg-xy (the default) every JPEG is stored as read, so the store decodes to exactly the
arrays the tool's own files decode to; codec jpeg decodes each field's x and y and encodes them again as one
x | y image (a second lossy step), codec raw stores the decoded pixels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from flowprep.errors import LayoutError, OptionError, VideoError
from flowprep.interop.finding import file_names, find_videos, listing, loop_text, relative, source_bytes, sub_folders
from flowprep.interop.jpegs import check_jpeg, decoder
from flowprep.interop.layouts import LAYOUTS, layout, look_alike, match_files
from flowprep.plan import Wanted
from flowprep.flow.quantize import DEFAULT_BOUND, ROUNDINGS, at_bound_count
from flowprep.outcomes import Executor, Failure, ImportTask, Outcome
from flowprep.settings import check_store_options, recorded_config
from flowprep.store.codec import CODECS, DEFAULT_JPEG_QUALITY
from flowprep.work import VideoEncoder

DEFAULT_IMPORT_CODEC = "jpeg-xy"  # keeps the tools' JPEG bytes: no second lossy encode


def _encodes_again(codec: str) -> bool:
    """Whether import encodes the tool's flow JPEGs again: a JPEG codec with one image per field (x | y);
    one with an image per component keeps the tool's bytes, and a pixel codec decodes them."""
    return CODECS[codec].jpeg and CODECS[codec].flow_images == 1


@dataclass(frozen=True)
class ImportSettings:
    """Every setting that shapes an imported store; `recorded()` is what the store and its parts hold."""

    layout: str
    bound: float = DEFAULT_BOUND
    codec: str = DEFAULT_IMPORT_CODEC
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    frames: str = ""  # the roots imported from (provenance only)
    flow: str = ""
    rounding: str = "round"  # how the tool quantised the flow (flowprep.flow.quantize.ROUNDINGS)
    rounding_why: str = ""  # where that rule comes from (provenance only)

    def recorded(self) -> dict[str, Any]:
        """The config written into the store: the same keys as an extracted store's, and where the data came
        from: the layout, its index convention and how it maps to the store's, the bound as given."""
        lay = LAYOUTS[self.layout]
        return recorded_config(
            algo="imported", params={}, implementation=f"imported-{lay.name}",
            flow_input=f"not computed here: imported from {lay.tool}'s files", bound=self.bound,
            rounding=self.rounding, codec=self.codec,
            # jpeg-xy stores the tool's JPEGs as read; jpeg encodes each field's x | y image at this quality
            jpeg_quality=int(self.jpeg_quality) if _encodes_again(self.codec) else None,
            size="as imported: each video's width and height are in its record",
            interpolation="none: images as the tool wrote them",
            imported={
                "layout": lay.name, "tool": lay.tool, "frames": self.frames, "flow": self.flow,
                "source_index_convention": lay.index_convention(), "mapping": lay.mapping(),
                "bound": "given with --bound: the files do not record the bound they were quantised with",
                "rounding": f"{self.rounding}: {self.rounding_why}",
                "origin": "imported, not computed by flowprep",
                "stored_as": (f"decoded and encoded again as x | y JPEGs at quality {self.jpeg_quality}"
                              if _encodes_again(self.codec) else "the tool's JPEG bytes, unchanged"
                              if CODECS[self.codec].jpeg else "decoded pixels"),
            })


@dataclass(frozen=True)
class ImportConfig:
    """Everything `flowprep import` needs. `settings()` derives the recorded part; the rest steers the run."""

    layout: str
    frames: Path
    out: Path
    flow: Path | None = None  # default: the flow lies beside the frames (feichtenhofer: required)
    splits_dir: Path | None = None
    bound: float = DEFAULT_BOUND
    codec: str = DEFAULT_IMPORT_CODEC
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    rounding: str | None = None  # None: an export's own rule (OUT/rawframes of `flowprep export`), else the layout's
    jobs: int = 1
    allow_missing: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        for name in ("frames", "out", "flow", "splits_dir"):  # accept str paths from Python callers
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    def validate(self) -> None:
        """Check every option before any file is touched; OptionError names the option and what it allows."""
        lay = layout(self.layout)
        check_store_options(self.codec, self.jpeg_quality, self.bound, self.jobs)
        if self.rounding is not None and self.rounding not in ROUNDINGS:
            raise OptionError(f"--rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        if lay.flow_tree is not None and self.flow is None:
            raise OptionError(f"--layout {lay.name} keeps flow in a tree of its own ({lay.flow_tree[0]}/ and "
                              f"{lay.flow_tree[1]}/ folders, tvl1_flow/ in the download): give it with --flow")
        for name, path in (("--frames", self.frames), ("--flow", self.flow), ("--splits", self.splits_dir)):
            if path is not None and not path.is_dir():
                raise OptionError(f"{name} {path} is not a folder")
        if self.out.is_dir():
            raise OptionError(f"--out {self.out} is a folder; give a file name such as {self.out / 'flows.h5'}")

    def settings(self) -> ImportSettings:
        rounding, why = self.rounding_rule()
        return ImportSettings(self.layout, float(self.bound), self.codec, int(self.jpeg_quality),
                              str(self.frames.absolute()), str((self.flow or self.frames).absolute()), rounding, why)

    def rounding_rule(self) -> tuple[str, str]:
        """(rule, why): --rounding as given; else the rule of the store a `flowprep export` wrote these files
        from (its OUT/export.json beside OUT/rawframes); else the layout's usual writer's."""
        if self.rounding is not None:
            return self.rounding, "given with --rounding"
        from flowprep.interop.exporting import exported_rounding

        if (rule := exported_rounding(self.frames)) is not None:
            return rule, f"the rule of the store `flowprep export` wrote these files from ({self.frames.parent})"
        lay = LAYOUTS[self.layout]
        return lay.rounding, f"the {lay.name} layout's default: {lay.rounding_why}"


def import_frames(cfg: ImportConfig, executor: Executor[ImportTask, ImportSettings, Outcome] | None = None):
    """Run the import described by ``cfg`` into ``cfg.out``; resumable, atomic per video, one bad video never
    stops the run. Returns flowprep.pipeline.ExtractSummary (action "import").

    ``executor(tasks, settings, on_outcome)`` runs the per-video work (default: the CPU pool, ``cfg.jobs``
    processes). Raises OptionError for bad options, LayoutError for folders that do not follow the layout as
    a whole, ManifestError for split files that cannot be used, StoreError for an output that cannot be used.
    """
    from data_manifest.build import build_from_folders
    from data_manifest.grouping import SplitRule

    from flowprep.pipeline import build_store
    from flowprep.store.writer import writer_lock

    cfg.validate()
    settings = cfg.settings()
    lay = LAYOUTS[cfg.layout]
    t0 = time.perf_counter()
    found, notes = find_videos(lay, cfg.frames, cfg.flow)
    if not any(v.holds for v in found.values()):
        loops = [v.problem for v in found.values() if "symbolic link" in v.problem]
        raise LayoutError(f"no video folders in {cfg.frames} hold RGB images named {lay.pattern} ({lay.tool})"
                          + (f"; {notes[0]}" if notes else "") + "".join(f"; {p}" for p in loops[:3])
                          + _names_seen(lay, cfg.frames))
    # without split files the seeded, group-safe split that extract makes (data_manifest.grouping)
    manifest = build_from_folders({vid: v.class_folder for vid, v in found.items()}, cfg.splits_dir,
                                  allow_missing=cfg.allow_missing, where=str(cfg.frames), split_rule=SplitRule())
    if notes:
        from data_manifest import Manifest

        manifest = Manifest(manifest.dataset, manifest.classes, manifest.records, [*manifest.problems, *notes],
                            manifest.num_splits)
    by_id = {r.video_id: r for r in manifest.records}
    if stray := sorted(set(found) - set(by_id)):  # no class folder, no split file, no UCF101 name: no label
        raise LayoutError(f"{len(stray)} folders in {cfg.frames} have no class (no class folder, not in the split "
                          f"files, not a UCF101 name v_<Class>_gXX_cYY): {', '.join(stray[:5])}"
                          + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
                          + "; move them out of --frames, or give the split files that name them (--splits)")
    expected = [r.video_id for r in manifest.records]
    flow_root = cfg.flow or cfg.frames

    def folders(vid: str) -> list[Path]:
        v = found[vid]
        return [v.rgb, v.flow_x, v.flow_y]

    def wanted_of(vid: str) -> Wanted:
        r = by_id[vid]
        return Wanted(r.path, r.class_name, r.label, source_bytes(folders(vid)))

    def task_of(vid: str) -> ImportTask:
        r, v = by_id[vid], found[vid]
        return ImportTask(vid, r.path, r.class_name, r.label, frames=str(v.rgb), flow_x=str(v.flow_x),
                          flow_y=str(v.flow_y), rgb_rel=relative(v.rgb, cfg.frames),
                          flow_rels=(relative(v.flow_x, flow_root), relative(v.flow_y, flow_root)),
                          problem=v.problem)

    if executor is None:
        executor = _pool(cfg.jobs)
    with writer_lock(cfg.out):
        return build_store(cfg.out, settings, manifest, expected, wanted_of, task_of, executor,
                           overwrite=cfg.overwrite, progress=cfg.progress, t0=t0, action="import")


def _names_seen(lay, frames: Path) -> str:
    """'; e.g. X/ holds a.jpg, b.jpg' from the first folder that holds files: what the user has instead."""
    for top in sub_folders(frames)[:3]:
        for d in (top, *sub_folders(top)[:1]):
            if names := file_names(d):
                return f"; {d}" + (look_alike(lay, names) or f" holds {', '.join(names[:3])}: check --layout")
    return ""


def _pool(jobs: int) -> Executor[ImportTask, ImportSettings, Outcome]:
    def run(tasks: list[ImportTask], settings: ImportSettings, on_outcome: Callable[[Outcome], None]) -> None:
        if tasks:
            from flowprep.executors.local import run_pool

            run_pool(tasks, settings, jobs, on_outcome, work=import_video)
    return run


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise VideoError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _names(d: Path) -> list[str]:
    """The file names in a video's folder; VideoError when it cannot be listed or holds a looping link."""
    seen = listing(d)
    if seen.error:
        raise VideoError(f"{d}: cannot be listed ({seen.error})")
    if seen.loops:
        raise VideoError(loop_text(seen.loops[0]))
    return seen.files


def import_video(task: ImportTask, settings: ImportSettings) -> Outcome:
    """Read one video's RGB and flow JPEGs, check them and build its record (flowprep.work.VideoEncoder, the
    one record builder). Never raises for bad input: a video that cannot be used comes back as a Failure
    with the reason (flowprep.interop.layouts.match_files names the numbering problems; here: folders
    missing, files that are not 8-bit JPEGs, are cut short, turned by EXIF, damaged inside (every image is
    decoded once, a decoder warning counts as damage), gray among colour frames, colour as flow, or of
    another size)."""
    import cv2

    cv2.setNumThreads(1)  # one core per job: --jobs sets the parallelism
    lay = LAYOUTS[settings.layout]
    rgb_dir, x_dir, y_dir = Path(task.frames), Path(task.flow_x), Path(task.flow_y)
    dec = decoder()
    codec = CODECS[settings.codec]
    try:
        if task.problem:
            raise VideoError(task.problem)
        if not rgb_dir.is_dir():
            raise VideoError(f"{rgb_dir}: no frames folder for this video ({lay.tool} layout)")
        for what, d in (("flow x", x_dir), ("flow y", y_dir)):
            if not d.is_dir():
                raise VideoError(f"{d}: no {what} folder for this video ({lay.tool} layout)")
        nbytes = source_bytes([rgb_dir, x_dir, y_dir])  # before reading, so a change during the run shows
        names, x_names, y_names = (_names(d) for d in (rgb_dir, x_dir, y_dir))
        files = match_files(lay, names, x_names, y_names, (str(rgb_dir), str(x_dir), str(y_dir)))
        encoder = VideoEncoder(task, settings.codec, settings.jpeg_quality)
        size, first = None, None
        for name in files.rgb:
            data = _read(rgb_dir / name)
            head = check_jpeg(rgb_dir / name, data, "rgb")
            if first is None:
                size, first = (head.height, head.width), head
            elif (head.height, head.width) != size:
                raise VideoError(f"{rgb_dir / name}: {head.width}x{head.height}, while {files.rgb[0]} is "
                                 f"{size[1]}x{size[0]}; the frames of a video must share one size")
            elif head.components != first.components:
                kinds = {1: "gray", 3: "colour"}
                raise VideoError(f"{rgb_dir / name}: a {kinds[head.components]} JPEG, while {files.rgb[0]} is "
                                 f"{kinds[first.components]}; the frames of a video are all colour (or all gray)")
            img = dec.checked(rgb_dir / name, data, cv2.IMREAD_COLOR, size)
            if not codec.jpeg:
                encoder.add_rgb(img[..., ::-1])
            else:
                encoder.add("rgb", np.frombuffer(data, np.uint8))
        for xn, yn in files.flow:
            planes, stored = [], []
            for d, n in ((x_dir, xn), (y_dir, yn)):
                data = _read(d / n)
                check_jpeg(d / n, data, "flow")
                planes.append(dec.checked(d / n, data, cv2.IMREAD_GRAYSCALE, size, f"as the frames ({files.rgb[0]})"))
                stored.append(np.frombuffer(data, np.uint8))
            at_bound = int(at_bound_count(np.stack(planes, axis=-1)))
            if codec.jpeg and codec.flow_images == 2:
                encoder.add("flow", tuple(stored))
                encoder.count_clipped(at_bound, 2 * planes[0].size)
            else:  # jpeg: one x | y image encoded again; raw: the decoded pixels
                encoder.add_flow(np.stack(planes, axis=-1), at_bound)
        fields = _source_fields(task, lay, files, size, nbytes)
        if first.components == 1:
            fields["rgb_gray"] = True  # gray JPEG frames: read back as RGB with three equal channels
        return encoder.finish(fields)
    except VideoError as exc:
        return Failure(task.video_id, task.relpath, str(exc))
    except Exception as exc:  # an unexpected failure of one video must not end the dataset run
        return Failure(task.video_id, task.relpath, f"{task.frames}: {type(exc).__name__}: {exc}")


def _source_fields(task: ImportTask, lay, files, size: tuple[int, int], nbytes: int) -> dict[str, Any]:
    """What the record says about where the video came from and how its files map to the store."""
    fields = {"width": size[1], "height": size[0], "source": "imported", "layout": lay.name,
              "frames_dir": task.rgb_rel, "flow_dirs": list(task.flow_rels), "source_bytes": nbytes,
              "count_check": "layout",  # the layout's count rule, checked (no container count to compare)
              "first_frame": lay.first_frame,  # the video frame store frame 0 shows
              "rgb_files": f"{files.rgb[0]}..{files.rgb[-1]}",
              "flow_files": f"{files.flow[0][0]}..{files.flow[-1][0]}" if files.flow else ""}
    if files.dropped:
        fields["dropped_flows"] = [f"{x}, {y}: from video frame {i} to {i + 1}, which starts at no stored frame"
                                   for i, (x, y) in enumerate(files.dropped)]
    if files.ignored:
        fields["ignored"] = files.ignored
    return fields
