"""`fusion predict --show DIR`: one PNG per video: a few of its frames above their colour-coded flow (the
colours and key of `flowprep show`) and the fused top-5 as bars."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHOWN_FRAMES = 4
BAR_ROWS = 24  # pixels per class bar


def _fields_to_show(source, count: int) -> np.ndarray:
    """Indices of up to ``count`` flow fields spread over the video, taken among those the views already
    computed (so the picture costs no extra flow), or over the whole video if none was."""
    computed = source.computed_flows()
    pool = computed or list(range(source.num_flows(source.video_id)))
    if not pool:
        return np.zeros(0, np.int64)
    picks = np.unique(np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int))
    return np.asarray([pool[i] for i in picks], np.int64)


def _bars(top: list[dict], width: int) -> np.ndarray:
    """(rows, width, 3) uint8: one bar per class, its length the fused probability."""
    import cv2

    img = np.full((BAR_ROWS * len(top) + 28, width, 3), 32, np.uint8)
    cv2.putText(img, "fused top-5 (bar: probability)", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    label_w = min(width // 2, 12 + 8 * max(len(t["class"]) for t in top))
    for k, t in enumerate(top):
        y = 28 + k * BAR_ROWS
        cv2.putText(img, t["class"][:40], (6, y + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1)
        length = int(round((width - label_w - 70) * max(0.0, min(1.0, t["probability"]))))
        colour = (80, 200, 120) if k == 0 else (90, 140, 220)
        cv2.rectangle(img, (label_w, y + 4), (label_w + max(length, 1), y + BAR_ROWS - 4), colour, -1)
        cv2.putText(img, f"{t['probability']:.2f}", (label_w + length + 6, y + 16), cv2.FONT_HERSHEY_SIMPLEX,
                    0.42, (255, 255, 255), 1)
    return img


def picture(result, source) -> np.ndarray:
    """(H, W, 3) uint8 RGB: frames over their flow with the colour key (flowprep.inspection.flow_picture, the
    picture of `flowprep show`), then the top-5 bars."""
    from flowprep.flow.quantize import dequantize
    from flowprep.inspection import flow_picture

    vid = source.video_id
    idx = _fields_to_show(source, SHOWN_FRAMES)
    if idx.size:
        rgb = source.read_rgb(vid, idx)
        flow = dequantize(source.read_flow(vid, idx), source.settings.bound)
    else:  # one frame: no flow to show
        idx = np.zeros(1, np.int64)
        rgb = source.read_rgb(vid, idx)
        flow = np.zeros((*rgb.shape[:3], 2), np.float32)
    grid = flow_picture(rgb, flow, idx, f"{Path(result.path).name}: {result.prediction}",
                        "top: frames; bottom: flow to the next frame, as the model saw it (key on the right)")
    return np.concatenate([grid, _bars(result.top, grid.shape[1])], axis=0)


def write_picture(result, source, out_dir: Path, taken: set[Path]) -> Path:
    """Write ``out_dir/<video stem>.png`` (``-2``, ``-3``... when this run already wrote that name: two
    videos of one name in different folders); ``taken``: the files this run wrote, updated."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(result.path).stem
    out, n = out_dir / f"{stem}.png", 1
    while out in taken:
        n += 1
        out = out_dir / f"{stem}-{n}.png"
    taken.add(out)
    if not cv2.imwrite(str(out), np.ascontiguousarray(picture(result, source)[..., ::-1])):
        raise OSError(f"cannot write {out}; check that {out_dir} is writable")
    return out
