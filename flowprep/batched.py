"""Batched extraction with the PyTorch flow backend: decode on CPU threads, flow for many pairs per call.

Per device, one process runs three overlapping stages:
  decode threads (``decoders``)  -> a bounded queue of frame pairs, in order per video (RGB frames are
                                    JPEG-encoded into each video's part file here)
  the batcher (this thread)      -> collects up to ``batch_size`` pairs from any videos, one flow call,
                                    quantises on the device, hands the fields to the writer
  the writer thread              -> JPEG-encodes the fields on a small thread pool and appends them to
                                    each video's part file in order, then finishes videos
With several GPUs, one such process per GPU takes every N-th video of the work list. Each video is still
written by exactly one thread of one process into its own part file, so resume and failure handling are the
same as on the CPU path.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from flowprep.decode import Resize, VideoReader, source_record
from flowprep.errors import VideoError
from flowprep.quantize import quantize
from flowprep.store import PartWriter, encode_jpeg, write_failure

_END = object()


@dataclass
class _Video:
    """Book-keeping of one video between its decode thread and the batcher."""

    video_id: str
    path: str
    relpath: str
    writer: PartWriter | None = None
    info: Any = None
    counts: dict = field(default_factory=dict)  # VideoReader.count_record() and the source's size and time
    frames: int = 0
    flows: int = 0
    clipped: int = 0
    values: int = 0
    size: tuple[int, int] | None = None
    error: str = ""
    start: float = field(default_factory=time.perf_counter)
    flow_seconds: float = 0.0


def _decode(video: _Video, resize: Resize, config: dict[str, Any], parts_dir: str, out: queue.Queue) -> None:
    """Decode one video: RGB frames go to its part file, gray pairs to the batcher's queue."""
    import cv2

    prev = None
    try:
        source = source_record(video.path)
        reader = VideoReader(video.path, resize)
        video.info = reader.info
        video.writer = PartWriter(parts_dir, video.video_id, config)
        for rgb in reader:
            video.writer.add_rgb(rgb)
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            video.size = gray.shape
            video.frames += 1
            if prev is not None:
                out.put((video, prev, gray))
            prev = gray
        if video.frames < 2:
            raise VideoError(f"{video.path}: decoded {video.frames} frame(s); at least 2 are needed for one "
                             "flow field (empty, damaged or not a video)")
        video.counts = {**reader.count_record(), **source}
    except VideoError as exc:
        video.error = str(exc)
    except Exception as exc:  # one broken video must not end the run
        video.error = f"{video.path}: {type(exc).__name__}: {exc}"
    out.put((video, _END, None))


def run_device(items: list[tuple[str, str, str]], parts_dir: str, config: dict[str, Any], resize: Resize,
               device: str, batch_size: int = 32, decoders: int = 4,
               on_done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Extract ``items`` = [(video_id, absolute path, relative path)] on one device. Returns per-video results."""
    import torch

    from flowprep import torchflow

    bound = float(config["bound"])
    algo, params = config["algo"], config["params"]
    pairs: queue.Queue = queue.Queue(maxsize=4 * batch_size)
    todo = iter(items)
    lock = threading.Lock()
    results: list[dict[str, Any]] = []

    def feeder() -> None:
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            _decode(_Video(*item), resize, config, parts_dir, pairs)

    threads = [threading.Thread(target=feeder, daemon=True) for _ in range(max(1, min(decoders, len(items))))]
    for t in threads:
        t.start()

    def finish(video: _Video) -> None:
        result = {"video_id": video.video_id, "ok": False, "frames": video.frames, "flows": video.flows,
                  "reason": video.error, "flow_seconds": video.flow_seconds}
        if not video.error and video.writer is not None:
            try:
                video.writer.finish({
                    "path": video.relpath, "fps": video.info.fps, "source_width": video.info.width,
                    "source_height": video.info.height, **video.counts,
                    "width": video.size[1], "height": video.size[0],
                    "clipped_fraction": video.clipped / max(video.values, 1),
                    "seconds": time.perf_counter() - video.start, "flow_seconds": video.flow_seconds,
                    **config["_labels"].get(video.video_id, {})})
                result["ok"] = True
            except Exception as exc:  # a write failure of one video is recorded like a decode failure
                result["reason"] = video.error = f"{video.path}: writing failed: {exc}"
        if not result["ok"]:
            if video.writer is not None:
                video.writer.abort()
            write_failure(parts_dir, video.video_id, video.relpath, result["reason"])
        result["seconds"] = time.perf_counter() - video.start
        results.append(result)
        if on_done:
            on_done(result)

    # The writer stage: flow fields are JPEG-encoded (on a few threads) and appended, and videos finished,
    # in the order the batcher hands them over, while the batcher already computes the next batch on the
    # device. The queue is short so that the device never runs far ahead of the writing.
    written: queue.Queue = queue.Queue(maxsize=2)
    jpeg = config["codec"] == "jpeg"
    quality = int(config.get("jpeg_quality") or 95)
    encoders = ThreadPoolExecutor(max_workers=max(1, min(8, decoders))) if jpeg else None

    def write(group: list, q: np.ndarray, clipped: np.ndarray, share: float) -> None:
        keep = [(video, field_u8, n_clip) for (video, _, _), field_u8, n_clip in zip(group, q, clipped)
                if not video.error]
        data = (list(encoders.map(lambda k: encode_jpeg("flow", k[1], quality), keep)) if jpeg
                else [k[1] for k in keep])
        for (video, field_u8, n_clip), item in zip(keep, data):
            if video.error:  # a write of this video failed earlier in this batch
                continue
            try:
                if jpeg:
                    video.writer.add_encoded("flow", item)
                else:
                    video.writer.add_flow(item)
            except Exception as exc:
                video.error = f"{video.path}: writing failed: {exc}"
                continue
            video.flows += 1
            video.clipped += int(n_clip)
            video.values += field_u8.size
            video.flow_seconds += share

    def writer() -> None:
        while True:
            job = written.get()
            if job is None:
                return
            if job[0] == "fields":
                write(*job[1:])
            else:
                finish(job[1])

    writer_thread = threading.Thread(target=writer, daemon=True)
    writer_thread.start()

    finished_threads = 0
    batch: list[tuple[_Video, np.ndarray, np.ndarray]] = []
    closing: list[_Video] = []  # videos whose end marker arrived while their pairs sit in ``batch``

    def flush() -> None:
        # pairs of one size only per call; sizes differ only with --short-side
        while batch:
            size = batch[0][1].shape
            group = [b for b in batch if b[1].shape == size]
            batch[:] = [b for b in batch if b[1].shape != size]
            t = time.perf_counter()
            prev = np.stack([g[1] for g in group])  # (B, H, W) uint8
            nxt = np.stack([g[2] for g in group])
            with torch.inference_mode():
                flow = torchflow.compute_flow_batch(prev, nxt, algo=algo, device=device, **params)  # (B, H, W, 2)
                clipped = (flow.abs() >= bound).flatten(1).sum(1).cpu().numpy()
                q = quantize(flow, bound).cpu().numpy()
            written.put(("fields", group, q, clipped, (time.perf_counter() - t) / len(group)))
        for video in closing:
            written.put(("finish", video))
        closing.clear()

    try:
        while finished_threads < len(threads) or not pairs.empty():
            try:
                video, prev, nxt = pairs.get(timeout=0.1)
            except queue.Empty:
                finished_threads = sum(not t.is_alive() for t in threads)
                if batch and pairs.empty():
                    flush()
                continue
            if prev is _END:
                if any(b[0] is video for b in batch):
                    closing.append(video)
                else:  # its fields may still wait in the writer's queue: finish it after them
                    written.put(("finish", video))
            else:
                batch.append((video, prev, nxt))
                if len(batch) >= batch_size:
                    flush()
            finished_threads = sum(not t.is_alive() for t in threads)
        flush()
    finally:
        written.put(None)
        writer_thread.join()
        if encoders is not None:
            encoders.shutdown()
    return results


def _device_worker(args) -> list[dict[str, Any]]:
    items, parts_dir, config, resize, device, batch_size, decoders, events = args
    return run_device(items, parts_dir, config, resize, device, batch_size, decoders,
                      on_done=(lambda r: events.put((r["ok"], r["frames"]))) if events is not None else None)


def run_devices(items: list[tuple[str, str, str]], parts_dir: str, config: dict[str, Any], resize: Resize,
                devices: list[str], batch_size: int, decoders: int, progress) -> list[dict[str, Any]]:
    """Spread ``items`` over ``devices`` (every N-th video each), one process per device when N > 1.

    ``progress(ok, frames)`` is called once per finished video.
    """
    if len(devices) == 1:
        return run_device(items, parts_dir, config, resize, devices[0], batch_size, decoders,
                          on_done=lambda r: progress(r["ok"], r["frames"]))
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    with ctx.Manager() as manager:
        events = manager.Queue()
        jobs = [(items[i::len(devices)], parts_dir, config, resize, dev, batch_size, decoders, events)
                for i, dev in enumerate(devices)]
        with ctx.Pool(len(devices)) as pool:
            pending = pool.map_async(_device_worker, jobs)
            while not pending.ready() or not events.empty():
                try:
                    ok, frames = events.get(timeout=0.2)
                except queue.Empty:
                    continue
                progress(ok, frames)
            return [r for part in pending.get() for r in part]
