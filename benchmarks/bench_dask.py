"""The Dask engine's overhead: `extract --jobs 2` against `extract --scheduler local:2` on the same videos.

    python benchmarks/bench_dask.py [--videos 16] [--frames 30] [--size 340x256] [--algo farneback]
                                    [--rounds 2] [--transfer-videos 6] [--transfer-frames 150]

Prints:
  1. videos/s of each run (the best of ``--rounds``, alternating so that load from other users of the machine
     falls on both), the LocalCluster's start-up time, the rate without it, and the ratio; the two stores are
     compared array by array. Farneback is the default because it is fast (about 15 ms a field at 340x256):
     the engine's fixed costs show more against it than against TV-L1, which takes seconds a video.
  2. the transfer figures behind the default of returning results to the client: bytes per video returned
     (one ``--transfer-frames`` video at ``--size``, JPEG codec), time per MB to fetch results from the
     workers of the LocalCluster, and what writing a part costs the client, against what the client would
     still pay if the workers wrote the parts to a shared file system (reading each part's record back).
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_extract import make_scene_video  # noqa: E402


def make_videos(root: Path, count: int, frames: int, w: int, h: int) -> Path:
    for i in range(count):
        make_scene_video(root / f"Class{i % 4}" / f"v_{i:03d}.avi", frames, w, h, seed=i)
    return root


def timed_extract(videos: Path, out: Path, size: str, algo: str, scheduler: str | None) -> float:
    from flowprep.video.decode import parse_size
    from flowprep.pipeline import ExtractConfig, extract

    cfg = ExtractConfig(videos=videos, out=out, algo=algo, jobs=2, resize=parse_size(size), overwrite=True,
                        progress=False, scheduler=scheduler)
    t = time.perf_counter()
    summary = extract(cfg)
    seconds = time.perf_counter() - t
    if not summary.ok:
        raise RuntimeError(f"extraction failed: {summary.failed}")
    return seconds


def cluster_start_seconds() -> float:
    from flowprep.executors.scheduler import Scheduler, connect

    t = time.perf_counter()
    with connect(Scheduler(None, 2)):
        started = time.perf_counter() - t
    return started


def work_seconds(store_path: Path) -> float:
    """The per-video work time the records hold (decode to encode, in the workers), summed over videos."""
    from flowprep import FlowStore

    with FlowStore(store_path) as store:
        return sum(store.record(v)["seconds"] for v in store.video_ids)


def same_stores(a: Path, b: Path) -> bool:
    from flowprep import FlowStore

    with FlowStore(a) as x, FlowStore(b) as y:
        if x.video_ids != y.video_ids:
            return False
        for vid in x.video_ids:
            n = x.num_frames(vid)
            if not (np.array_equal(x.read_rgb(vid, range(n)), y.read_rgb(vid, range(n)))
                    and np.array_equal(x.read_flow(vid, range(n - 1)), y.read_flow(vid, range(n - 1)))):
                return False
    return True


def transfer(tmp: Path, count: int, frames: int, size: str, algo: str) -> dict[str, float]:
    """Per-video bytes and the client's costs per video: fetching results from the workers, writing a part,
    reading a part's record back."""
    from distributed import wait

    from flowprep.executors.scheduler import Scheduler, connect
    from flowprep.video.decode import parse_size
    from flowprep.store.parts import Parts
    from flowprep.settings import ExtractConfig
    from flowprep.store.format import incompatibilities
    from flowprep.outcomes import VideoTask
    from flowprep.work import extract_video

    w, h = (int(v) for v in size.split("x"))
    videos = make_videos(tmp / "long", count, frames, w, h)
    cfg = ExtractConfig(videos=videos, out=tmp / "t.h5", algo=algo, resize=parse_size(size))
    settings = cfg.settings()
    tasks = [VideoTask(p.stem, str(p), p.relative_to(videos).as_posix(), p.parent.name, 0)
             for p in sorted(videos.rglob("*.avi"))]
    with connect(Scheduler(None, 2)) as client:
        futures = client.map(extract_video, tasks, settings=settings, pure=False)
        wait(futures)  # computed and held by the workers: what follows is the transfer alone
        t = time.perf_counter()
        results = client.gather(futures)
        fetch = time.perf_counter() - t
    payload = sum(r.nbytes for r in results)
    pickled = sum(len(pickle.dumps(r, protocol=5)) for r in results)
    parts = Parts(tmp / "t.h5", settings.recorded())
    parts.open(sorted({t.class_name for t in tasks}), incompatibilities)
    t = time.perf_counter()
    for r in results:
        parts.write(r)
    write = time.perf_counter() - t
    t = time.perf_counter()
    for r in results:
        parts.record(r.video_id)
    check = time.perf_counter() - t
    mb = payload / 1e6
    n = len(results)
    return {"videos": n, "mb_per_video": mb / n, "pickled_mb_per_video": pickled / 1e6 / n,
            "fetch_ms_per_mb": 1000 * fetch / mb, "fetch_ms_per_video": 1000 * fetch / len(results),
            "write_ms_per_video": 1000 * write / len(results), "check_ms_per_video": 1000 * check / len(results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", default="340x256")
    ap.add_argument("--algo", default="farneback")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--transfer-videos", type=int, default=6)
    ap.add_argument("--transfer-frames", type=int, default=150)
    args = ap.parse_args()
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        videos = make_videos(tmp / "videos", args.videos, args.frames, w, h)
        print(f"{args.videos} videos of {args.frames} frames at {args.size}, {args.algo}, jpeg codec; "
              f"{os.cpu_count()} cores seen (shared with other users: the figures vary)")
        best = {"--jobs 2": float("inf"), "--scheduler local:2": float("inf")}
        for _ in range(args.rounds):
            best["--jobs 2"] = min(best["--jobs 2"], timed_extract(videos, tmp / "local.h5", args.size, args.algo,
                                                                   None))
            best["--scheduler local:2"] = min(best["--scheduler local:2"], timed_extract(
                videos, tmp / "dask.h5", args.size, args.algo, "local:2"))
        start = min(cluster_start_seconds() for _ in range(args.rounds))
        local, dask = best["--jobs 2"], best["--scheduler local:2"]
        print(f"  --jobs 2             {args.videos / local:6.2f} videos/s  ({local:.2f} s)")
        print(f"  --scheduler local:2  {args.videos / dask:6.2f} videos/s  ({dask:.2f} s, of which LocalCluster "
              f"start-up and close {start:.2f} s)")
        print(f"  without the start-up {args.videos / max(dask - start, 1e-9):6.2f} videos/s")
        print(f"  ratio dask / local   {local / dask:.2f} (with start-up), {local / max(dask - start, 1e-9):.2f} "
              "(without)")
        wl, wd = work_seconds(tmp / "local.h5"), work_seconds(tmp / "dask.h5")
        print(f"  per-video work in the workers, summed: {wl:.2f} s (--jobs 2), {wd:.2f} s (local:2): the rest of "
              "the gap is the engine's")
        print(f"  stores equal array by array: {'yes' if same_stores(tmp / 'local.h5', tmp / 'dask.h5') else 'NO'}")
        t = transfer(tmp, args.transfer_videos, args.transfer_frames, args.size, args.algo)
        print(f"transfer, {t['videos']} videos of {args.transfer_frames} frames at {args.size}:")
        print(f"  returned per video        {t['mb_per_video']:.2f} MB of images ({t['pickled_mb_per_video']:.2f} MB "
              "pickled)")
        print(f"  fetch from the workers    {t['fetch_ms_per_mb']:.1f} ms per MB, {t['fetch_ms_per_video']:.1f} ms "
              "per video")
        print(f"  client writes the part    {t['write_ms_per_video']:.1f} ms per video (fsync included)")
        print(f"  client reads a part back  {t['check_ms_per_video']:.1f} ms per video (all a client would do if "
              "the workers wrote the parts)")


if __name__ == "__main__":
    main()
