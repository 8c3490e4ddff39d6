"""How long an extraction will take, said before the long part starts: the flow fields the videos' headers
announce, times the time one field takes here (decoding and resizing a frame, then the flow on a pair: the
first frames of a few of the videos, with the run's algorithm and size), over the jobs."""
from __future__ import annotations

import os
import time

import numpy as np

from plumbing.progress import format_seconds
from flowprep.video.decode import probe
from flowprep.errors import VideoError

PROBED = 200  # videos whose headers are read (evenly spread); the total is extrapolated from them
TIMED_S = 0.3  # CPU seconds spent timing the flow on the first frames (at least one call per pair)
SLOW_S = 600.0  # estimates above this suggest how to go faster
DECODED_FRAMES = 16  # frames decoded per timed video: opening the file is spread over these, as over a short clip


def announced_fields(paths: list[str]) -> int:
    """Flow fields the videos' containers announce (frames - 1 each), from at most PROBED headers."""
    if not paths:
        return 0
    step = max(1, len(paths) // PROBED)
    sample = paths[::step][:PROBED]
    counts = []
    for path in sample:
        try:
            counts.append(max(probe(path).announced_frames - 1, 0))
        except VideoError:
            counts.append(0)  # it will fail fast
    return int(round(np.mean(counts) * len(paths)))


def _first_pairs(paths: list[str], resize, count: int = 3) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """The first two frames, gray and resized, of up to ``count`` of the videos that decode; and the CPU
    seconds one frame's decoding takes here (opening the file, decoding and resizing up to DECODED_FRAMES
    frames of each, over the frames)."""
    import cv2

    from flowprep.video.decode import VideoReader

    pairs = []
    decoded, seconds = 0, 0.0
    for path in paths:
        if len(pairs) == count:
            break
        frames = []
        start, n = time.process_time(), 0
        try:
            for rgb in VideoReader(path, resize):
                n += 1
                if len(frames) < 2:
                    frames.append(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
                if n == DECODED_FRAMES:
                    break
        except VideoError:
            continue
        if len(frames) == 2:
            pairs.append((frames[0], frames[1]))
            seconds += time.process_time() - start
            decoded += n
    return pairs, seconds / max(decoded, 1)


def seconds_per_field(settings, pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """CPU seconds one OpenCV flow field takes on one core here: the mean over ``pairs`` (gray frames of the
    videos to do), each timed once, repeated until TIMED_S have passed. CPU time, not wall time, so other
    work on the machine does not inflate it."""
    import cv2

    from flowprep.flow.compute import OpenCVFlow

    flow = OpenCVFlow(settings.algo, **settings.params)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as in a job
    try:
        calls, start = 0, time.process_time()
        while calls < len(pairs) or time.process_time() - start < TIMED_S:
            flow(*pairs[calls % len(pairs)])
            calls += 1
        return (time.process_time() - start) / calls
    finally:
        cv2.setNumThreads(threads)


def seconds_to_store(settings, pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """CPU seconds one frame and one field take to quantise and encode for the store (codec and quality of
    the run), timed on the first pair: its frame as RGB, its difference as a flow field."""
    from flowprep.flow.quantize import quantize
    from flowprep.work import VideoEncoder

    encoder = VideoEncoder(None, settings.codec, settings.jpeg_quality)
    a, b = (p.astype(np.float32) for p in pairs[0])
    rgb = np.repeat(pairs[0][0][..., None], 3, axis=2)
    field = np.stack([(b - a) / 16, (a - b) / 16], axis=-1)  # (H, W, 2) float32: a field's range and texture
    calls, start = 0, time.process_time()
    while calls < 2 or time.process_time() - start < TIMED_S / 3:
        encoder.encode("rgb", rgb)
        encoder.encode("flow", quantize(field, settings.bound))
        calls += 1
    return (time.process_time() - start) / calls


def _busy_note(cores: int) -> str:
    """'; the machine is busy ...' when the 1-minute load average exceeds the cores: the estimate is CPU time,
    and other work then shares the cores (wall time grows about as load / cores)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return ""
    if load <= cores:
        return ""
    return (f" of CPU time; the machine is busy (load {load:.1f} on {cores} cores), so it may take up to "
            f"{load / cores:.1f}x longer")


def estimate_text(paths: list[str], settings, jobs: int | None) -> str:
    """One line: the videos to do, the fields they announce, and, for the OpenCV backend, the time a field
    takes here and the run's expected duration over ``jobs`` on this machine (with a hint when it is long);
    ``jobs`` None (the work runs elsewhere, on a cluster): the total of core time instead."""
    fields = announced_fields(paths)
    what = f"{len(paths)} videos to extract, about {fields} flow fields"
    if settings.backend != "opencv" or not paths:
        return f"{what} ({settings.algo} on {settings.device}: the rate shows once the first videos are done)"
    pairs, per_frame = _first_pairs(paths, settings.resize)
    if not pairs:
        return f"{what} (none of the first videos decodes: no time estimate)"
    per_frame += seconds_to_store(settings, pairs)
    per_field = seconds_per_field(settings, pairs) + per_frame  # a field per decoded frame, near enough
    h, w = pairs[0][0].shape
    text = (f"{what} at {w}x{h}; decoding, storing and {settings.algo} take {per_field:.3g} s per field per job "
            f"here (decoding and storing {per_frame:.2g} s; timed on the first frames of {len(pairs)} of them), so ")
    if jobs is None:
        total = fields * per_field
        text += f"about {format_seconds(total)} of core time, shared by the cluster's workers"
    else:
        parallel = max(1, min(jobs, os.cpu_count() or 1))
        total = fields * per_field / parallel
        text += f"about {format_seconds(total)} with {parallel} job(s)"
        text += _busy_note(os.cpu_count() or 1)
    if total > SLOW_S:
        text += ("; for a quick first look try a smaller --size (e.g. 170x128) or --algo dis "
                 "(DIS medium: ~100x faster than TV-L1 per core)")
    return text
