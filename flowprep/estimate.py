"""How long an extraction will take, said before the long part starts: the flow fields the videos' headers
announce, times the time one field takes here with the run's algorithm and size, over the jobs."""
from __future__ import annotations

import os
import time

import numpy as np

from data_manifest.progress import format_seconds
from flowprep.decode import probe
from flowprep.errors import VideoError

PROBED = 200  # videos whose headers are read (evenly spread); the total is extrapolated from them
TIMED_S = 0.3  # seconds spent timing the flow on a test pair (at least one call)
SLOW_S = 600.0  # estimates above this suggest how to go faster


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


def seconds_per_field(settings, size: tuple[int, int]) -> float:
    """Seconds one OpenCV flow field of ``size`` (width, height) takes on one core here, timed on a
    textured test pair moving by about a pixel."""
    import cv2

    from flowprep.flow import OpenCVFlow

    w, h = size
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.uniform(0, 255, (h + 8, w + 8)).astype(np.float32), (0, 0), 2.0)
    scene = cv2.normalize(scene, None, 20, 235, cv2.NORM_MINMAX).astype(np.uint8)
    prev, nxt = np.ascontiguousarray(scene[4:-4, 4:-4]), np.ascontiguousarray(scene[5:-3, 3:-5])
    flow = OpenCVFlow(settings.algo, **settings.params)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as in a job
    try:
        calls, start = 0, time.perf_counter()
        while calls == 0 or time.perf_counter() - start < TIMED_S:
            flow(prev, nxt)
            calls += 1
        return (time.perf_counter() - start) / calls
    finally:
        cv2.setNumThreads(threads)


def estimate_text(paths: list[str], settings, jobs: int) -> str:
    """One line: the videos to do, the fields they announce, and, for the OpenCV backend, the time a field
    takes here and the run's expected duration (with a hint when it is long)."""
    fields = announced_fields(paths)
    what = f"{len(paths)} videos to extract, about {fields} flow fields"
    if settings.backend != "opencv" or not paths:
        return f"{what} ({settings.algo} on {settings.device}: the rate shows once the first videos are done)"
    try:
        info = probe(paths[0])
        size = settings.resize.target(info.width, info.height)
    except VideoError:
        size = settings.resize.target(340, 256)
    per_field = seconds_per_field(settings, size)
    parallel = max(1, min(jobs, os.cpu_count() or 1))
    total = fields * per_field / parallel
    text = (f"{what} at {size[0]}x{size[1]}; {settings.algo} takes {per_field:.3g} s per field per job here, "
            f"so about {format_seconds(total)} with {parallel} job(s)")
    if total > SLOW_S:
        text += ("; for a quick first look try a smaller --size (e.g. 170x128) or --algo dis "
                 "(DIS medium: ~100x faster than TV-L1 per core)")
    return text
