"""`flowprep export`: a store -> rawframes in another tool's layout (mmaction2, TSN) with its annotation lists.

    OUT/rawframes/<Class>/<video>/img_00001.jpg, flow_x_00001.jpg, flow_y_00001.jpg, ...  (layout names)
    OUT/<dataset>_train_split_1_rawframes.txt, ..._flow.txt, ..._val_split_1_...   (mmaction2; TSN: its names)
    OUT/export.json                                                                 (what was exported, how)

List lines are ``<Class>/<video> <total_frames> <label>`` relative to OUT/rawframes (mmaction2's
``data_prefix``), with the 0-based label; RGB lists count the img_ files, flow lists the flow_x_ files, as
mmaction2's RawframeDataset with ``start_index`` 1 expects. Both tools call the official test list "val".

What is copied: stored RGB JPEGs, and with codec jpeg-xy the flow's x and y JPEGs, are written byte for
byte. A jpeg store's x | y images are decoded and each half encoded again as a gray JPEG (a second lossy
step), a raw store's pixels encoded once. Each video is written into a temporary folder and renamed, so an
export that is stopped leaves whole video folders; running it again writes the others. Each folder holds
``.flowprep-export.json``, what the store said of its video when it was written (counts, checksums, class):
a re-export rewrites the folders whose video changed since, and removes the folders of videos no longer in
the store (or now in another class), so OUT always shows the store as it is.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowprep.errors import OptionError, StoreError
from flowprep.interop.layouts import LAYOUTS, export_names
from flowprep.outcomes import ExportTask, Failure
from flowprep.store.codec import CODECS, DEFAULT_JPEG_QUALITY, check_jpeg_quality, encode_jpeg
from flowprep.store.format import is_disk_full

EXPORT_LAYOUTS = tuple(name for name, lay in LAYOUTS.items() if lay.lists is not None)
FRAMES_DIR = "rawframes"
MARKER = "export.json"
FORMAT = "flowprep-export/1"
CHUNK = 64  # frames or fields read from the store at a time
STAMP = ".flowprep-export.json"  # in each video folder: what the store said of the video it was written from
_STAMPED = ("class_name", "label", "num_frames", "num_flows", "rgb_crc32", "flow_crc32")


def exported_rounding(frames: Path) -> str | None:
    """The rounding rule ("round", "truncate") of the store that `flowprep export` wrote ``frames`` from,
    when ``frames`` is an export's OUT/rawframes (OUT/export.json says so); else None."""
    from flowprep.flow.quantize import rounding_of

    if Path(frames).name != FRAMES_DIR:
        return None
    try:
        marker = json.loads((Path(frames).parent / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        return None
    if not isinstance(marker.get("store_config"), dict):
        return None
    return rounding_of(marker["store_config"])


@dataclass(frozen=True)
class DiskFull(Failure):
    """A video that could not be written because the disk is full: the export stops (as extract does)."""


@dataclass(frozen=True)
class ExportSettings:
    store: str  # absolute path of the store
    out: str  # absolute path of OUT
    layout: str
    jpeg_quality: int = DEFAULT_JPEG_QUALITY


@dataclass(frozen=True)
class ExportedVideo:
    """One video written (or found written by an earlier run): how many images each list counts."""

    video_id: str
    frames: int  # img_ files
    flows: int  # flow_x_ (and flow_y_) files
    kept: bool = False
    rewritten: bool = False  # an earlier export's folder of it was out of date


@dataclass
class ExportSummary:
    out: Path
    layout: str
    videos: int
    written: int = 0
    kept: int = 0  # written by an earlier run
    failed: list[dict[str, str]] = field(default_factory=list)
    lists: list[str] = field(default_factory=list)
    not_in_store: int = 0  # videos of the manifest the store lacks (failed at extraction): in no list
    removed: int = 0  # folders of videos no longer in the store (or moved to another class), removed
    rewritten: int = 0  # folders whose video changed in the store since an earlier export, written again
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def _check_out(out: Path, marker: dict[str, Any]) -> None:
    """OUT must be new, empty or an earlier export of the same store with the same settings."""
    if not out.is_dir() or not any(not p.name.startswith(".") for p in out.iterdir()):  # the lock is hidden
        return
    try:
        before = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        before = None
    if not isinstance(before, dict) or before.get("format") != FORMAT:
        raise OptionError(f"OUT {out} holds files that `flowprep export` did not write ({out / MARKER} is "
                          f"{'not there' if not (out / MARKER).exists() else 'not an export record'}); give a new "
                          "or empty folder") from None
    keys = ("store", "layout", "jpeg_quality", "store_config")
    if diff := [k for k in keys if before.get(k) != marker.get(k)]:
        raise StoreError(f"{out} holds an export made with another {', '.join(diff)} ({before.get('layout')} of "
                         f"{before.get('store')}); export into another folder, or remove it first")


def export_store(store_path: str | os.PathLike, out: str | os.PathLike, layout_name: str, jobs: int = 1,
                 jpeg_quality: int = DEFAULT_JPEG_QUALITY, progress: bool = True) -> ExportSummary:
    """Write the store's videos in ``layout_name``'s names and numbering into ``out`` with its annotation
    lists (module docstring). OptionError for bad options or an OUT that holds other files, StoreError
    for a store that cannot be read; a video that cannot be written is a failure in the summary."""
    from plumbing.atomic import atomic_write, exclusive_lock_or

    from flowprep.store.format import COMPAT_KEYS
    from flowprep.store.reader import FlowStore

    if layout_name not in EXPORT_LAYOUTS:
        raise OptionError(f"unknown export --layout {layout_name!r}; choose one of {', '.join(EXPORT_LAYOUTS)}")
    check_jpeg_quality(jpeg_quality)
    if jobs < 1:
        raise OptionError(f"--jobs must be at least 1, got {jobs}")
    t0 = time.perf_counter()
    lay = LAYOUTS[layout_name]
    out = Path(out).absolute()
    with FlowStore(store_path) as store:
        config, manifest = store.attrs, store.manifest
        records = {v: store.record(v) for v in store.video_ids}
    marker = {"format": FORMAT, "store": str(Path(store_path).absolute()), "layout": layout_name,
              "jpeg_quality": int(jpeg_quality), "store_config": {k: config.get(k) for k in COMPAT_KEYS}}
    if out.exists() and not out.is_dir():
        raise OptionError(f"OUT {out} is a file; give a folder to export into")
    with exclusive_lock_or(out / ".export.lock", StoreError, "flowprep export", out, "an OUT",
                           rerun="a stopped export resumes"):
        _check_out(out, marker)
        try:
            atomic_write(out / MARKER, json.dumps(marker, indent=1, sort_keys=True) + "\n")
            return _export_locked(out, lay, config, manifest, records, marker, jobs, jpeg_quality, progress, t0)
        except OSError as exc:  # a failed atomic write leaves no temporary file; written folders are whole
            what = "no space left on device" if is_disk_full(exc) else exc.strerror or str(exc)
            raise StoreError(f"{what} writing {exc.filename or out}; free space (or fix the problem) and re-run "
                             "the same command: the video folders written so far are kept") from None


def _export_locked(out: Path, lay, config, manifest, records, marker, jobs: int, jpeg_quality: int, progress: bool,
                   t0: float) -> ExportSummary:
    from plumbing.atomic import atomic_write
    from plumbing.progress import Progress

    from flowprep.executors.local import run_pool

    settings = ExportSettings(marker["store"], str(out), lay.name, int(jpeg_quality))
    summary = ExportSummary(out, lay.name, len(records))
    codec = CODECS[config["codec"]]
    if codec.jpeg and codec.flow_images == 1:
        summary.notes.append(f"the store keeps each field as one x | y JPEG: its halves were decoded and encoded "
                             f"again as gray JPEGs at quality {jpeg_quality} (a second lossy step)")
    elif not codec.jpeg:
        summary.notes.append(f"the store holds pixels: encoded as JPEGs at quality {jpeg_quality}")
    if lay.first_frame:
        summary.notes.append(f"{lay.tool} never writes a video's first frame: store frame 0 of each video is not "
                             "written (its flow field 0 is, as flow_x/y_00001)")
    summary.removed = _remove_stale(out / FRAMES_DIR, {f"{rec['class_name']}/{vid}" for vid, rec in records.items()})
    tasks, done = [], {}
    for vid, rec in records.items():
        rel = f"{rec['class_name']}/{vid}"
        if any(c.isspace() for c in rel):
            summary.failed.append({"video_id": vid, "path": rel, "reason": f"{rel!r} holds white space, which the "
                                   "lists' parsers split on (mmaction2 splits each line at white space)"})
            continue
        tasks.append(ExportTask(vid, rel, rec["class_name"], rec["label"], folder=str(out / FRAMES_DIR / rel)))

    with Progress(len(tasks), unit="video", desc="export", enabled=progress and bool(tasks)) as bar:
        def on_outcome(outcome) -> None:
            if isinstance(outcome, DiskFull):
                raise StoreError(outcome.reason)
            if isinstance(outcome, Failure):
                summary.failed.append({"video_id": outcome.video_id, "path": outcome.path, "reason": outcome.reason})
            else:
                done[outcome.video_id] = outcome
                summary.kept += outcome.kept
                summary.written += not outcome.kept
                summary.rewritten += outcome.rewritten
            bar.update(1, failed=len(summary.failed))

        if tasks:
            run_pool(tasks, settings, jobs, on_outcome, work=export_video)
    summary.failed.sort(key=lambda f: f["video_id"])
    for name, text in _lists(lay, manifest, done).items():
        atomic_write(out / name, text)
        summary.lists.append(name)
    summary.not_in_store = sum(1 for r in manifest.records if r.video_id not in records)
    summary.seconds = time.perf_counter() - t0
    return summary


def _lists(lay, manifest, done: dict[str, ExportedVideo]) -> dict[str, str]:
    """File name -> text of every annotation list: per split, train and val (the official test list), RGB and
    flow; one "all" pair for a store without splits. Videos in manifest order; only the exported ones."""
    parts: list[tuple[str, list]] = []
    if manifest.num_splits == 0:
        parts.append(("all", manifest.records))
    for k in range(1, manifest.num_splits + 1):
        for subset, name in (("train", "train"), ("test", "val")):
            parts.append((f"{name}_split_{k}", [r for r in manifest.records if r.split(k) == subset]))
    texts = {}
    for part, recs in parts:
        rows = [(r, done[r.video_id]) for r in recs if r.video_id in done]
        rgb_name, flow_name = (t.format(dataset=manifest.dataset, part=part) for t in lay.lists)
        texts[rgb_name] = "".join(f"{r.class_name}/{r.video_id} {v.frames} {r.label}\n" for r, v in rows)
        texts[flow_name] = "".join(f"{r.class_name}/{r.video_id} {v.flows} {r.label}\n" for r, v in rows)
    return texts


_READERS: dict[str, Any] = {}  # one FlowStore per worker process: opening one reads every video's record


def _reader(path: str):
    from flowprep.store.reader import FlowStore

    if path not in _READERS:
        _READERS[path] = FlowStore(path)
    return _READERS[path]


def _remove_stale(frames: Path, wanted: set[str]) -> int:
    """Remove from an earlier export's ``frames`` (OUT/rawframes) the video folders not in ``wanted``
    ("<Class>/<video>"), the hidden leftovers of a stopped run, and class folders left empty. Returns how
    many video folders went."""
    removed = 0
    if not frames.is_dir():
        return 0
    for cls in sorted(p for p in frames.iterdir() if p.is_dir() and not p.is_symlink()):
        for d in sorted(cls.iterdir()):
            hidden = d.name.startswith(".") and d.name.endswith((".tmp", ".old"))
            if d.is_dir() and (hidden or (not d.name.startswith(".") and f"{cls.name}/{d.name}" not in wanted)):
                shutil.rmtree(d)
                removed += not hidden
        if not any(cls.iterdir()):
            cls.rmdir()
    return removed


def _stamp(store, video_id: str) -> dict[str, Any]:
    rec = store.record(video_id)
    return {"video_id": video_id, **{k: rec.get(k) for k in _STAMPED}}


def _stamped(folder: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def export_video(task: ExportTask, settings: ExportSettings) -> ExportedVideo | Failure:
    """Write one video's folder (temporary name, then renamed); an ExportedVideo, or a Failure with the
    reason (DiskFull when the disk is full). A folder already there whose stamp matches the store's video
    was written whole by an earlier run: kept; one whose video changed is written again."""
    import cv2

    cv2.setNumThreads(1)
    lay = LAYOUTS[settings.layout]
    final = Path(task.folder)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    old = final.with_name(f".{final.name}.{os.getpid()}.old")
    try:
        store = _reader(settings.store)
        n = store.num_frames(task.video_id)
        rgb, fields = export_names(lay, n)
        stamp = _stamp(store, task.video_id)
        stale = final.is_dir()
        if stale and _stamped(final) == stamp:
            return ExportedVideo(task.video_id, len(rgb), len(fields), kept=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        codec, q = CODECS[store.attrs["codec"]], settings.jpeg_quality
        for lo in range(0, len(rgb), CHUNK):
            chunk = rgb[lo:lo + CHUNK]
            js = [j for j, _ in chunk]
            if not codec.jpeg:
                images = [(encode_jpeg("rgb", f, q),) for f in store.read_rgb(task.video_id, js)]
            else:
                images = store.read_stored(task.video_id, "rgb", js)
            for (_, name), (data,) in zip(chunk, images):
                (tmp / name).write_bytes(data.tobytes())
        for lo in range(0, len(fields), CHUNK):
            chunk = fields[lo:lo + CHUNK]
            js = [j for j, _, _ in chunk]
            if codec.jpeg and codec.flow_images == 2:  # the stored gray JPEGs, byte for byte
                pairs = store.read_stored(task.video_id, "flow", js)
            else:  # (n, 2, H, W): each plane its own gray JPEG
                pairs = [(encode_jpeg("gray", p[0], q), encode_jpeg("gray", p[1], q))
                         for p in store.read_flow_planes(task.video_id, js)]
            for (_, xn, yn), (x, y) in zip(chunk, pairs):
                (tmp / xn).write_bytes(np.asarray(x).tobytes())
                (tmp / yn).write_bytes(np.asarray(y).tobytes())
        (tmp / STAMP).write_text(json.dumps(stamp, sort_keys=True) + "\n")
        if stale:  # the earlier export's folder of this video is out of date: replaced
            os.rename(final, old)
        os.rename(tmp, final)
        return ExportedVideo(task.video_id, len(rgb), len(fields), rewritten=stale)
    except (StoreError, OSError, ValueError, KeyError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and is_disk_full(exc):
            return DiskFull(task.video_id, task.relpath, f"no space left on device writing {final}; free space "
                            "and re-run the same command: the video folders written so far are kept")
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return Failure(task.video_id, task.relpath, f"{final}: {type(exc).__name__}: {what}")
    finally:
        shutil.rmtree(old, ignore_errors=True)


def summary_text(s: ExportSummary) -> str:
    lines = [f"export: {s.out} ({s.layout} layout, frames in {s.out / FRAMES_DIR})",
             f"videos: {s.videos} in the store, written {s.written}, kept from an earlier run {s.kept}, "
             f"failed {len(s.failed)}",
             f"lists: {len(s.lists)} ({', '.join(s.lists[:4])}{' ...' if len(s.lists) > 4 else ''})"]
    if s.rewritten:
        lines.append(f"written again: {s.rewritten} video(s) that changed in the store since the earlier export")
    if s.removed:
        lines.append(f"removed: {s.removed} video folder(s) of videos no longer in the store (or now in another class)")
    if s.not_in_store:
        lines.append(f"not in the lists: {s.not_in_store} video(s) of the dataset that the store lacks")
    lines += [f"note: {n}" for n in s.notes]
    lines += [f"FAILED {f['video_id']}: {f['reason']}" for f in s.failed]
    return "\n".join(lines)
