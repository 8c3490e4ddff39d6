"""Small real video files for tests: textured frames moving by a known shift, and damaged files."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w) float32 smooth random texture in 0..255 with edges: something flow can lock on to."""
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2.0)
    base = (base - base.min()) / (np.ptp(base) + 1e-6) * 200 + 20
    return base.astype(np.float32)


def shifted_frames(n: int, w: int = 96, h: int = 72, dx: float = 1.0, dy: float = 0.0, seed: int = 0):
    """n (h, w, 3) uint8 RGB frames of a texture translating by (dx, dy) px per frame (sub-pixel allowed)."""
    import cv2

    big = texture(h + 80, w + 80, seed)
    frames = []
    for k in range(n):
        # inverse map: frame_k(x) = big(x + 40 - k*dx), so content moves by +dx per frame
        m = np.float32([[1, 0, 40 - k * dx], [0, 1, 40 - k * dy]])
        img = cv2.warpAffine(big, m, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)
        frames.append(np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
    return frames


def write_video(path: str | Path, frames, fps: float = 25.0, fourcc: str = "MJPG") -> Path:
    """Write RGB frames with OpenCV; returns the path."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} to {path}")
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    return path


def moving_video(path: str | Path, n: int = 8, w: int = 64, h: int = 48, dx: float = 1.0, dy: float = 0.0,
                 seed: int = 0, fourcc: str = "MJPG") -> Path:
    return write_video(path, shifted_frames(n, w, h, dx, dy, seed), fourcc=fourcc)


def truncate(path: str | Path, share: float = 0.5) -> Path:
    """Cut a file to ``share`` of its bytes (a download that stopped)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])
    return path


def damage(path: str | Path, at: float = 0.5, size: int = 3000, seed: int = 1) -> Path:
    """Overwrite ``size`` bytes at ``at`` of the file with seeded random bytes (a bad sector, a broken copy)."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    data[start:start + size] = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def announce_frames(path: str | Path, count: int) -> Path:
    """Make an AVI's video stream header (strh dwLength, what FFmpeg reports as the frame count) say ``count``."""
    import struct

    path = Path(path)
    data = bytearray(path.read_bytes())
    strh = data.find(b"strh")
    if strh < 0:
        raise ValueError(f"{path}: no AVI stream header")
    # strh payload: fccType, fccHandler, dwFlags, wPriority+wLanguage, dwInitialFrames, dwScale, dwRate,
    # dwStart (4 bytes each), then dwLength
    struct.pack_into("<I", data, strh + 8 + 32, count)
    path.write_bytes(bytes(data))
    return path
