"""Frame and flow trees as other tools write them, for `flowprep import` tests.

Each writer follows its tool's documented rules, written here on their own (not from flowprep.interop.layouts), for a
video of N frames f_0..f_{N-1} and its N-1 flow fields (field i from f_i to f_{i+1}):

- twostreamfusion downloads (Feichtenhofer et al.): jpegs_256/<video>/frame%06d.jpg = f_{k-1} for k = 1..N;
  tvl1_flow/u/<video>/frame%06d.jpg and tvl1_flow/v/<video>/... = field k-1, k = 1..N-1; no class folders.
- TSN's dense_flow: <video>/img_%05d.jpg and flow_x/flow_y_%05d.jpg, k = 1..N-1: the pair k is
  (f_{k-1}, f_k), its image is the second frame f_k and its flow field k-1; f_0 is never written.
- open-mmlab denseflow: img_%05d.jpg = f_k for k = 0..N-1, flow_x/flow_y_%05d.jpg = field k, k = 0..N-2.
- mmaction2 rawframes: img_{:05}.jpg = f_{k-1} for k = 1..N, flow_x/flow_y_{:05}.jpg = field k-1, k = 1..N-1.

Frames and fields are made so that an off-by-one shows: frame i is a gradient whose level is 20 + 25 i, field
i's x plane a pattern around 60 + 20 i and its y plane one around 200 - 20 i. Images are JPEG files at
OpenCV's default quality (95), flow planes single-channel gray, as those tools write them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# 36: not a multiple of 8, as 340 is not, so a side-by-side x | y image shifts the y plane off its JPEG block grid
H, W = 24, 36


def frame(i: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB video frame i."""
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([20 + 25 * i + xx, 40 + 2 * yy, np.full_like(xx, 90 + 7 * i)], -1).clip(0, 255).astype(np.uint8)


def flow(i: int) -> np.ndarray:
    """(H, W, 2) uint8 quantised flow field i (from frame i to i + 1), x then y."""
    yy, xx = np.mgrid[0:H, 0:W]
    x = 60 + 20 * i + 10 * np.sin(xx / 4.0)
    y = 200 - 20 * i + 10 * np.cos(yy / 3.0)
    return np.stack([x, y], -1).clip(0, 255).astype(np.uint8)


def jpeg(image: np.ndarray) -> bytes:
    import cv2

    if image.ndim == 3:
        image = image[..., ::-1]  # OpenCV writes BGR
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image))
    assert ok
    return buf.tobytes()


def decoded(path: Path, gray: bool = False) -> np.ndarray:
    """What a file decodes to: (H, W, 3) RGB, or (H, W) for gray."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    return img if gray else img[..., ::-1]


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_feichtenhofer(root: Path, video: str, n: int) -> None:
    for k in range(1, n + 1):
        _put(root / "jpegs_256" / video / f"frame{k:06d}.jpg", jpeg(frame(k - 1)))
    for k in range(1, n):
        _put(root / "tvl1_flow" / "u" / video / f"frame{k:06d}.jpg", jpeg(flow(k - 1)[..., 0]))
        _put(root / "tvl1_flow" / "v" / video / f"frame{k:06d}.jpg", jpeg(flow(k - 1)[..., 1]))


def _write_named(folder: Path, images: list[tuple[int, int]], flows: list[tuple[int, int]]) -> None:
    """images: (file number, frame index); flows: (file number, field index); img_/flow_x_/flow_y_ names."""
    for k, i in images:
        _put(folder / f"img_{k:05d}.jpg", jpeg(frame(i)))
    for k, i in flows:
        _put(folder / f"flow_x_{k:05d}.jpg", jpeg(flow(i)[..., 0]))
        _put(folder / f"flow_y_{k:05d}.jpg", jpeg(flow(i)[..., 1]))


def write_tsn(folder: Path, n: int) -> None:
    _write_named(folder, [(k, k) for k in range(1, n)], [(k, k - 1) for k in range(1, n)])


def write_denseflow(folder: Path, n: int) -> None:
    _write_named(folder, [(k, k) for k in range(n)], [(k, k) for k in range(n - 1)])


def write_mmaction2(folder: Path, n: int) -> None:
    _write_named(folder, [(k, k - 1) for k in range(1, n + 1)], [(k, k - 1) for k in range(1, n)])


@dataclass
class LayoutTree:
    """A written tree: the import options that read it, and each video's class and frame count."""

    layout: str
    frames: Path
    flow: Path | None
    videos: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (class folder, N)
    class_folders: bool = True

    def args(self) -> list[str]:
        return ["--layout", self.layout, "--frames", str(self.frames)] + \
            (["--flow", str(self.flow)] if self.flow is not None else [])

    def folder(self, vid: str) -> Path:
        """The RGB folder of a video."""
        if self.layout == "feichtenhofer":
            return self.frames / vid
        cls = self.videos[vid][0]
        return self.frames / cls / vid if self.class_folders else self.frames / vid


def write_tree(root: Path, layout: str, videos: dict[str, tuple[str, int]], class_folders: bool = True) -> LayoutTree:
    """The tree ``layout`` writes for ``videos`` (id -> (class, N frames)); feichtenhofer has no class folders."""
    root = Path(root)
    if layout == "feichtenhofer":
        for vid, (_, n) in videos.items():
            write_feichtenhofer(root, vid, n)
        return LayoutTree(layout, root / "jpegs_256", root / "tvl1_flow", dict(videos), False)
    writer = {"tsn": write_tsn, "denseflow": write_denseflow, "mmaction2": write_mmaction2}[layout]
    frames = root / "rawframes"
    for vid, (cls, n) in videos.items():
        writer(frames / cls / vid if class_folders else frames / vid, n)
    return LayoutTree(layout, frames, None, dict(videos), class_folders)
