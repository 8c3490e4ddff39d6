"""Reading a store for people: summary (`info`), integrity check (`verify`), picture (`show`)."""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from flowprep.video.decode import EXACT_SLACK_FRAMES, EXACT_SLACK_SHARE, count_check_kind
from flowprep.errors import OptionError, StoreError
from flowprep.store.reader import FlowStore

SHOWN_SHORT = 10  # short videos named in `info` text before "... and N more"


def _short(store: FlowStore) -> list[dict[str, Any]]:
    """Videos of exact-count containers that decoded fewer frames than announced (within the accepted slack)."""
    short = []
    for vid in store.video_ids:
        rec = store.record(vid)
        kind = rec.get("count_check") or count_check_kind(rec.get("path", ""))  # stores from before the field
        announced, decoded = int(rec.get("announced_frames", 0)), int(rec["num_frames"])
        if kind == "exact" and announced > decoded:
            short.append({"video_id": vid, "decoded": decoded, "announced": announced, "short_by": announced - decoded})
    return short


def short_videos(path: str | Path) -> list[dict[str, Any]]:
    """[{"video_id", "decoded", "announced", "short_by"}] of the store's videos that decoded short."""
    with FlowStore(path) as store:
        return _short(store)


def store_info(path: str | Path) -> dict[str, Any]:
    """Counts, sizes and settings of a store, as a JSON-ready dict."""
    with FlowStore(path) as store:
        frames = sum(store.num_frames(v) for v in store.video_ids)
        flows = sum(store.num_flows(v) for v in store.video_ids)
        clipped = [store.record(v).get("clipped_fraction", 0.0) for v in store.video_ids]
        nbytes = sum(Path(f).stat().st_size for f in store.files)
        return {
            "path": str(path), "files": [str(f) for f in store.files],
            "expected": len(store.expected_ids), "videos": len(store.video_ids),
            "failed": len(store.failures), "failures": store.failures,
            "missing": sorted(set(store.expected_ids) - set(store.video_ids) -
                              {f["video_id"] for f in store.failures}),
            "frames": frames, "flows": flows, "bytes": nbytes,
            "bytes_per_video": nbytes / max(len(store.video_ids), 1),
            "mean_clipped_fraction": float(np.mean(clipped)) if clipped else 0.0,
            "dataset": store.manifest.dataset, "classes": len(store.manifest.classes),
            "split_method": store.manifest.split_method, "group_rule": store.manifest.group_rule,
            "short": _short(store), "missing_shards": store.missing_shards,
            "config": store.attrs,
        }


def info_text(info: dict[str, Any]) -> str:
    c = info["config"]
    gap = info["missing_shards"]
    lines = ([f"INCOMPLETE shard {', '.join(gap)} not merged (`flowprep merge --partial`): the videos of "
              f"{'that shard' if len(gap) == 1 else 'those shards'} are not in this store"] if gap else [])
    lines += [f"store      {info['path']} ({len(info['files'])} file(s), {info['bytes'] / 1e6:.1f} MB)",
             f"dataset    {info['dataset']}, {info['classes']} classes",
             *([f"split      {info['split_method']}"] if info.get("split_method") else []),
             f"videos     {info['videos']} of {info['expected']} expected"
             + (" by the merged shards" if gap else "") + f", {info['failed']} failed",
             f"frames     {info['frames']} RGB, {info['flows']} flow fields",
             *_flow_lines(c),
             f"storage    codec {c['codec']}" + (f" q{c['jpeg_quality']}" if c.get("jpeg_quality") else "")
             + f", size {c['size']} ({c['interpolation']})",
             f"clipped    {100 * info['mean_clipped_fraction']:.3f}% of flow values at the bound (mean over videos)",
             f"indexing   {c['index_convention']}"]
    if info["short"]:
        named = ", ".join(f"{v['video_id']} ({v['decoded']} of {v['announced']})" for v in info["short"][:SHOWN_SHORT])
        more = len(info["short"]) - SHOWN_SHORT
        lines.append(f"short      {len(info['short'])} video(s) decoded fewer frames than their container announces "
                     f"(accepted: at most {EXACT_SLACK_FRAMES} frames or {100 * EXACT_SLACK_SHARE:g}% short): {named}"
                     + (f" ... and {more} more" if more > 0 else ""))
    for f in info["failures"]:
        lines.append(f"FAILED     {f['video_id']}: {f['reason']}")
    for vid in info["missing"]:
        lines.append(f"MISSING    {vid}")
    for shard in info["missing_shards"]:
        lines.append(f"MISSING    shard {shard} (merged with --partial: its videos are not in this store)")
    return "\n".join(lines)


def _flow_lines(c: dict[str, Any]) -> list[str]:
    """What made the flow: the algorithm and its parameters, or for an imported store where it came from."""
    imported = c.get("imported")
    if not isinstance(imported, dict):
        return [f"flow       {c['algo']} ({c['implementation']}), bound {c['bound']}, {c['rounding']}",
                "params     " + ", ".join(f"{k}={v}" for k, v in c["params"].items())]
    from flowprep.flow.quantize import rounding_of

    return [f"flow       imported from {imported.get('tool')} (layout {imported.get('layout')}), not computed; bound "
            f"{c['bound']} as given with --bound (the files do not record it)",
            f"rounding   {rounding_of(c)}: {c['rounding']}, read back as {c.get('dequantize')}"
            + (f" ({imported['rounding']})" if imported.get("rounding") else ""),
            f"source     frames {imported.get('frames')}, flow {imported.get('flow')}; "
            f"{imported.get('source_index_convention')}",
            f"mapping    {imported.get('mapping')}",
            f"stored as  {imported.get('stored_as')}"]


VERIFY_CHUNK = 64  # images decoded at a time by verify: memory stays bounded for long videos


def verify(path: str | Path, progress: bool = False) -> list[str]:
    """Re-read every record: checksums, counts, offsets, decodability. Returns the problems found (empty =
    good); a store whose metadata cannot be read raises StoreError."""
    from plumbing.progress import Progress

    problems: list[str] = []
    with FlowStore(path, check_crc=False) as store:  # the checksums are compared here, to name every problem
        missing = set(store.expected_ids) - set(store.video_ids) - {f["video_id"] for f in store.failures}
        problems += [f"{vid}: expected but neither stored nor recorded as failed" for vid in sorted(missing)]
        made = "import" if store.attrs.get("algo") == "imported" else "extraction"
        problems += [f"{f['video_id']}: failed at {made}: {f['reason']}" for f in store.failures]
        with Progress(len(store.video_ids), unit="video", desc="verify", enabled=progress) as bar:
            for vid in store.video_ids:
                problems += _video_problems(store, vid)
                bar.update()
    return problems


def _video_problems(store: FlowStore, vid: str) -> list[str]:
    """What is wrong with one stored video: checksums (whole and per image), shapes, images that do not
    decode; a damaged dataset is one problem naming the field."""
    rec = store.record(vid)
    problems = []
    try:
        for kind, count in (("rgb", store.num_frames(vid)), ("flow", store.num_flows(vid))):
            if zlib.crc32(store.raw_bytes(vid, kind).tobytes()) != rec[f"{kind}_crc32"]:
                problems.append(f"{vid}: {kind} checksum mismatch (stored data damaged); {store.redo}")
            damaged = store.damaged_images(vid, kind)
            problems += [f"{vid}: {kind} image {i} does not match its checksum; {store.redo}" for i in damaged]
            read = store.read_rgb if kind == "rgb" else store.read_flow
            for lo in range(0, count, VERIFY_CHUNK):
                idx = [i for i in range(lo, min(count, lo + VERIFY_CHUNK)) if i not in damaged]
                read(vid, idx)  # every image must decode to the recorded size (StoreError otherwise)
    except (StoreError, OSError, KeyError, ValueError, AttributeError, RuntimeError, TypeError) as exc:
        # a damaged dataset, or h5py reporting a damaged object as any of these
        problems.append(f"{vid}: unreadable ({type(exc).__name__}: {exc}); {store.redo}")
    return problems


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(H, W, 2) float flow -> (H, W, 3) uint8 RGB: hue = direction, brightness = speed."""
    import cv2

    mag, ang = cv2.cartToPolar(flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32))
    top = max_magnitude or max(float(np.percentile(mag, 99)), 1e-6)
    hsv = np.zeros((*flow.shape[:2], 3), np.uint8)
    hsv[..., 0] = (ang * (90 / np.pi)).astype(np.uint8)  # OpenCV hue is 0..180
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / top * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


KEY_WIDTH = 190  # pixels of the colour key beside the picture


def colour_key(top: float, height: int) -> np.ndarray:
    """The key of flow_to_color at full speed ``top`` (px/frame): a colour wheel (a point of the wheel shows
    the colour of the flow pointing from the centre to it, the rim being ``top``) with its axes named, and
    a speed scale. (max(height, 330), KEY_WIDTH, 3) uint8 RGB, for a picture ``height`` pixels high."""
    import cv2

    key = np.full((max(height, 330), KEY_WIDTH, 3), 32, np.uint8)
    font, white = cv2.FONT_HERSHEY_SIMPLEX, (255, 255, 255)
    r, cx, cy = 60, KEY_WIDTH // 2, 124
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    wheel = flow_to_color(np.stack([xx, yy], -1) * (top / r), top)
    inside = np.hypot(xx, yy) <= r
    patch = key[cy - r:cy + r + 1, cx - r:cx + r + 1]
    patch[inside] = wheel[inside]
    cv2.putText(key, "flow colour key", (8, 18), font, 0.45, white, 1)
    cv2.putText(key, "hue = direction", (8, 36), font, 0.4, white, 1)
    cv2.putText(key, "-y (up)", (cx - 24, cy - r - 6), font, 0.35, white, 1)
    cv2.putText(key, "+y (down)", (cx - 30, cy + r + 14), font, 0.35, white, 1)
    cv2.putText(key, "-x", (cx - r - 22, cy + 4), font, 0.35, white, 1)
    cv2.putText(key, "+x", (cx + r + 5, cy + 4), font, 0.35, white, 1)
    # the speed scale: brightness of flow to the right, from 0 to top
    y0 = cy + r + 44
    cv2.putText(key, "brightness = speed", (8, y0 - 8), font, 0.4, white, 1)
    ramp = np.linspace(0, top, KEY_WIDTH - 30, dtype=np.float32)
    bar = flow_to_color(np.stack([ramp, np.zeros_like(ramp)], -1)[None], top)
    key[y0:y0 + 16, 15:KEY_WIDTH - 15] = np.repeat(bar, 16, axis=0)
    cv2.putText(key, "0", (12, y0 + 32), font, 0.35, white, 1)
    label = f"{top:.2f} px/frame"
    cv2.putText(key, label, (KEY_WIDTH - 12 - 7 * len(label), y0 + 32), font, 0.35, white, 1)
    cv2.putText(key, "(99th percentile of the", (8, y0 + 52), font, 0.35, white, 1)
    cv2.putText(key, "speeds shown; faster is", (8, y0 + 66), font, 0.35, white, 1)
    cv2.putText(key, "as bright)", (8, y0 + 80), font, 0.35, white, 1)
    return key


def flow_picture(rgb: np.ndarray, flow: np.ndarray, idx: np.ndarray, title: str, subtitle: str) -> np.ndarray:
    """Frames above their colour-coded flow, a title and the colour key: (H', W', 3) uint8 RGB.

    rgb (n, H, W, 3) uint8 frames, flow (n, H, W, 2) float flow in pixels from each frame to the next, idx (n,)
    their frame numbers. Shared by `flowprep show` and `fusion predict --show`.
    """
    import cv2

    top = max(float(np.percentile(np.hypot(flow[..., 0], flow[..., 1]), 99)), 1e-6)
    colour = [flow_to_color(f, top) for f in flow]
    rgb = np.array(rgb)  # labels are drawn on a copy
    zoom = max(1, -(-192 // rgb.shape[1]))  # small frames are enlarged (nearest) so a person can see them
    if zoom > 1:
        rgb = np.stack([cv2.resize(f, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST) for f in rgb])
        colour = [cv2.resize(c, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST) for c in colour]
    for i, (frame, col) in enumerate(zip(rgb, colour)):
        cv2.putText(frame, f"frame {idx[i]}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1)
        cv2.putText(col, f"flow {idx[i]}->{idx[i] + 1}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    grid = np.concatenate([np.concatenate(list(rgb), axis=1), np.concatenate(colour, axis=1)], axis=0)
    head = np.full((36, grid.shape[1], 3), 32, np.uint8)
    cv2.putText(head, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    cv2.putText(head, subtitle, (4, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    grid = np.concatenate([head, grid], axis=0)
    key = colour_key(top, grid.shape[0])
    pad = np.full((key.shape[0] - grid.shape[0], grid.shape[1], 3), 32, np.uint8)
    return np.concatenate([np.concatenate([grid, pad], axis=0), key], axis=1)


def show(path: str | Path, video_id: str, out: str | Path, count: int = 4) -> Path:
    """Write a picture: ``count`` RGB frames spread over the video (top) above the colour-coded flow (bottom).

    OptionError for a count below 1 or a file name OpenCV has no image writer for.
    """
    import cv2

    if count < 1:
        raise OptionError(f"--frames must be at least 1, got {count}")
    out = Path(out)
    if not cv2.haveImageWriter(str(out)):
        raise OptionError(f"--out {out}: OpenCV cannot write {out.suffix or 'files without an extension'!r} "
                          "images; name the file .png or .jpg")
    with FlowStore(path) as store:
        if video_id not in store:
            near = [v for v in store.video_ids if video_id.lower() in v.lower()][:5]
            raise StoreError(f"video {video_id!r} is not in {path}" + (f"; did you mean {near}?" if near else ""))
        m = store.num_flows(video_id)
        idx = np.unique(np.linspace(0, m - 1, min(count, m)).round().astype(int))
        rgb = store.read_rgb(video_id, idx)
        flow = store.dequantize(store.read_flow(video_id, idx))  # the store's bound and rounding rule
    grid = flow_picture(rgb, flow, idx, video_id, "top: RGB frames; bottom: flow to the next frame (key on the right)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        written = cv2.imwrite(str(out), np.ascontiguousarray(grid[..., ::-1]))
    except (OSError, cv2.error) as exc:
        raise StoreError(f"cannot write {out}: {exc}; choose a folder you can write to") from exc
    if not written:
        raise StoreError(f"cannot write {out}; check that its folder is writable")
    return out
