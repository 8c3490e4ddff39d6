"""Figures behind `flowprep import`'s default codec (jpeg-xy) and its speed. Prints tables; not a test.

    python benchmarks/bench_interop.py [--scenes 8] [--videos 24] [--frames 60] [--quality 95] [--speed-only]

1. Flow files as the other tools write them: OpenCV TV-L1 (CPU, OpenCV's defaults) on rendered 340x256
   scene pairs (flowprep.flow.scenes: translations, rotation and zoom, occlusion, flat texture, JPEG-damaged
   input), quantised with bound 20 as dense_flow's CAST rounds it, x and y each encoded as a gray JPEG at
   OpenCV's default quality 95 (what dense_flow and denseflow call imencode with).
2. For each way of storing them: bytes per field, and the error against the tool's own files as they
   decode: jpeg-xy keeps the files' bytes (no error by construction, checked); jpeg decodes x and y and
   encodes the x | y image again (a second lossy step: mean absolute u8 difference, share of values
   changed, largest difference, in u8 and in pixels of flow at bound 20). For scale, the first encode's
   error (the tool's JPEG against its quantised flow).
3. An export of a jpeg store (its x | y images' halves encoded again as gray JPEGs): the same error measures.
4. Decode time per field: two (H, W) gray JPEGs against one (H, 2W).
5. `flowprep import` of a generated mmaction2 tree (--videos x --frames at 340x256) with 1 and 2 jobs, per
   codec: videos/s and fields/s, end to end (scan, read, check, write parts, assemble).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BOUND = 20.0
H, W = 256, 340


def tool_quantise(flow: np.ndarray) -> np.ndarray:
    """dense_flow / denseflow: clip to [-b, b], cvRound(255 (v + b) / (2b)) (lrint: halves to even)."""
    v = np.clip(flow.astype(np.float64), -BOUND, BOUND)
    return np.rint(255.0 * (v + BOUND) / (2 * BOUND)).astype(np.uint8)


def enc(img: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    assert ok
    return buf.tobytes()


def dec(data: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)


def scene_fields(count: int) -> list[tuple[str, np.ndarray]]:
    """(scene name, (H, W, 2) float32 TV-L1 flow) for the first ``count`` benchmark scenes."""
    import cv2

    from flowprep.flow.scenes import QUICK, SCENES, render

    names = list(QUICK) + [n for n in SCENES if n not in QUICK]
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    out = []
    for name in names[:count]:
        frames = render(SCENES[name], H, W)
        out.append((name, tvl1.calc(frames.prev, frames.nxt, None)))
    return out


def error_row(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float, int]:
    d = np.abs(np.concatenate([r.astype(np.int16).ravel() for r in ref]) -
               np.concatenate([g.astype(np.int16).ravel() for g in got]))
    return float(d.mean()), float((d > 0).mean()), int(d.max())


def codec_figures(fields: list[tuple[str, np.ndarray]], quality: int) -> None:
    import cv2

    per_scene = []
    all_ref, all_jpeg, all_q, all_first, all_export, all_store = [], [], [], [], [], []
    xy_bytes = jpeg_bytes = export_bytes = 0
    t_two = t_one = 0.0
    for name, flow in fields:
        q = tool_quantise(flow)  # (H, W, 2)
        files = [enc(q[..., 0], 95), enc(q[..., 1], 95)]  # what the tool wrote
        ref = [dec(f) for f in files]  # what its files decode to
        wide = enc(np.concatenate(ref, axis=1), quality)  # codec jpeg: x | y encoded again
        back = dec(wide)
        halves = [back[:, :W], back[:, W:]]
        export = [dec(enc(h, quality)) for h in halves]  # a jpeg store exported: each half encoded again
        xy_bytes += sum(len(f) for f in files)
        jpeg_bytes += len(wide)
        export_bytes += sum(len(enc(h, quality)) for h in halves)
        all_ref += ref
        all_jpeg += halves
        all_q += [q[..., 0], q[..., 1]]
        all_first += ref
        all_store += halves
        all_export += export
        per_scene.append((name, sum(len(f) for f in files), len(wide), *error_row(ref, halves)))
        reps = 20
        t = time.perf_counter()
        for _ in range(reps):
            for f in files:
                cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_GRAYSCALE)
        t_two += (time.perf_counter() - t) / reps
        t = time.perf_counter()
        for _ in range(reps):
            cv2.imdecode(np.frombuffer(wide, np.uint8), cv2.IMREAD_GRAYSCALE)
        t_one += (time.perf_counter() - t) / reps
    n = len(fields)
    px = 2 * BOUND / 255
    print(f"\n1-2. flow files at {W}x{H} (TV-L1, bound {BOUND:g}, tool JPEGs at q95), stored two ways; "
          f"re-encode at q{quality}")
    print(f"{'scene':16s} {'jpeg-xy B/field':>16s} {'jpeg B/field':>13s} {'mean |d| u8':>12s} {'changed':>8s} "
          f"{'max':>4s}")
    for name, bxy, bj, mean, share, top in per_scene:
        print(f"{name:16s} {bxy:16d} {bj:13d} {mean:12.3f} {100 * share:7.1f}% {top:4d}")
    mean, share, top = error_row(all_ref, all_jpeg)
    print(f"{'all':16s} {xy_bytes / n:16.0f} {jpeg_bytes / n:13.0f} {mean:12.3f} {100 * share:7.1f}% {top:4d}")
    print(f"jpeg-xy: the files' bytes, error 0 by construction; jpeg adds mean |d| {mean:.3f} u8 = {mean * px:.4f} px "
          f"(max {top} u8 = {top * px:.2f} px), {100 * share:.1f}% of values changed, size "
          f"{100 * (jpeg_bytes / xy_bytes - 1):+.1f}%")
    fm, fs, ft = error_row(all_q, all_first)
    print(f"for scale, the tool's own encode (q95) against its quantised flow: mean |d| {fm:.3f} u8, "
          f"{100 * fs:.1f}% changed, max {ft}")
    em, es, et = error_row(all_store, all_export)
    print(f"\n3. export of a jpeg store: x | y halves encoded again as gray JPEGs at q{quality}: mean |d| {em:.3f} u8, "
          f"{100 * es:.1f}% changed, max {et}; {export_bytes / n:.0f} B/field written")
    tm, ts, tt = error_row(all_ref, all_export)
    print(f"   tool files -> jpeg store -> export, against the tool files: mean |d| {tm:.3f} u8, {100 * ts:.1f}% "
          f"changed, max {tt}")
    print(f"\n4. decode per field: two {W}x{H} gray JPEGs {1e3 * t_two / n:.3f} ms, one {2 * W}x{H} "
          f"{1e3 * t_one / n:.3f} ms")


def make_tree(root: Path, fields: list[tuple[str, np.ndarray]], videos: int, frames: int) -> int:
    """An mmaction2 tree: ``videos`` folders of ``frames`` RGB frames (a panning texture) and frames - 1 fields
    (the scene fields in turn, quantised and encoded as the tools do). Returns the number of fields."""
    import cv2

    rng = np.random.default_rng(0)
    big = cv2.GaussianBlur(rng.uniform(0, 255, (H + 120, W + 120, 3)).astype(np.float32), (0, 0), 3)
    big = cv2.normalize(big, None, 20, 235, cv2.NORM_MINMAX).astype(np.uint8)
    rgb = [enc(big[k:k + H, 2 * k:2 * k + W], 95) for k in range(min(frames, 60))]
    planes = [(enc(tool_quantise(f)[..., 0], 95), enc(tool_quantise(f)[..., 1], 95)) for _, f in fields]
    for v in range(videos):
        d = root / "Class" / f"video_{v:03d}"
        d.mkdir(parents=True)
        for k in range(frames):
            (d / f"img_{k + 1:05d}.jpg").write_bytes(rgb[k % len(rgb)])
        for k in range(frames - 1):
            x, y = planes[(k + v) % len(planes)]
            (d / f"flow_x_{k + 1:05d}.jpg").write_bytes(x)
            (d / f"flow_y_{k + 1:05d}.jpg").write_bytes(y)
    return videos * (frames - 1)


def import_speed(fields, videos: int, frames: int) -> None:
    from flowprep.interop.importing import ImportConfig, import_frames

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_fields = make_tree(tmp / "tree", fields, videos, frames)
        print(f"\n5. flowprep import of an mmaction2 tree: {videos} videos x {frames} frames at {W}x{H} "
              f"({n_fields} fields), end to end")
        print(f"{'codec':8s} {'jobs':>4s} {'seconds':>8s} {'videos/s':>9s} {'fields/s':>9s} {'store MB':>9s}")
        import_frames(ImportConfig("mmaction2", tmp / "tree", tmp / "warm.h5", jobs=2, progress=False))  # imports,
        (tmp / "warm.h5").unlink()  # the page cache and the pool's first start out of the timings
        for codec in ("jpeg-xy", "jpeg"):
            for jobs in (1, 2):
                out = tmp / f"{codec}-{jobs}.h5"
                t = time.perf_counter()
                summary = import_frames(ImportConfig("mmaction2", tmp / "tree", out, codec=codec, jobs=jobs,
                                                     progress=False))
                s = time.perf_counter() - t
                assert summary.ok, summary.failed
                print(f"{codec:8s} {jobs:4d} {s:8.2f} {videos / s:9.2f} {n_fields / s:9.1f} "
                      f"{out.stat().st_size / 1e6:9.2f}")
                out.unlink()
                shutil.rmtree(tmp / f"{codec}-{jobs}.h5.parts", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=8, help="scene pairs to compute TV-L1 flow on")
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--quality", type=int, default=95, help="quality of the second encode (codec jpeg, export)")
    ap.add_argument("--speed-only", action="store_true", help="only table 5 (import speed)")
    args = ap.parse_args()
    import cv2

    cv2.setNumThreads(1)
    t = time.perf_counter()
    fields = scene_fields(args.scenes)
    print(f"TV-L1 on {len(fields)} scene pairs at {W}x{H}: {time.perf_counter() - t:.1f} s")
    if not args.speed_only:
        codec_figures(fields, args.quality)
    import_speed(fields, args.videos, args.frames)


if __name__ == "__main__":
    main()
