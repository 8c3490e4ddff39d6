"""Streaming video decoding with OpenCV (FFmpeg back end) and resizing to the flow resolution."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from flowprep.errors import FlowprepError, VideoError

DEFAULT_SIZE = (340, 256)  # (width, height), the two-stream convention
INTERPOLATION = "INTER_LINEAR"  # cv2 flag used for resizing, recorded in every store
# A container that announces N frames and decodes fewer than this share of them is called truncated.
# AVI and MP4/MOV store exact frame counts in their headers; others (MKV, WebM, FLV, MPEG) let FFmpeg
# estimate the count from duration x frame rate, which variable-frame-rate files overshoot, so only a
# gross shortfall is called truncation there.
TRUNCATION_SHARE = {".avi": 0.9, ".mp4": 0.9, ".m4v": 0.9, ".mov": 0.9}
TRUNCATION_SHARE_ESTIMATED = 0.5


@dataclass(frozen=True)
class Resize:
    """Target geometry: a fixed (width, height) or a short side with the aspect ratio kept."""

    width: int | None = DEFAULT_SIZE[0]
    height: int | None = DEFAULT_SIZE[1]
    short_side: int | None = None

    def __post_init__(self):
        if self.short_side is None and (not self.width or not self.height):
            raise FlowprepError("give either a size WxH or a short side")
        for v in (self.width, self.height, self.short_side):
            if v is not None and v < 8:
                raise FlowprepError(f"frame sides must be at least 8 pixels, got {v}")

    def target(self, src_w: int, src_h: int) -> tuple[int, int]:
        """(width, height) of the output frames for a source of src_w x src_h."""
        if self.short_side is None:
            return int(self.width), int(self.height)
        s = self.short_side
        if src_w <= src_h:
            return s, max(8, int(round(src_h * s / src_w)))
        return max(8, int(round(src_w * s / src_h))), s

    def describe(self) -> str:
        return f"short_side={self.short_side}" if self.short_side else f"{self.width}x{self.height}"


def parse_size(text: str) -> Resize:
    """'340x256' -> Resize(340, 256); raises FlowprepError on anything else."""
    try:
        w, h = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise FlowprepError(f"size must look like 340x256 (width x height), got {text!r}") from None
    return Resize(w, h)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video before decoding."""

    fps: float
    width: int
    height: int
    announced_frames: int


def open_video(path: str | os.PathLike):
    """A cv2.VideoCapture on ``path`` and its VideoInfo; VideoError when it cannot be opened."""
    import cv2

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes); re-download or remove it")
    if not os.access(path, os.R_OK):
        raise VideoError(f"{path}: not readable (permission denied); fix its permissions")
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"{path}: FFmpeg cannot open it (not a video, or a damaged container); "
                         "check the file with ffprobe or re-download it")
    info = VideoInfo(fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
                     width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                     height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                     announced_frames=max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0))
    return cap, info


class VideoReader:
    """Streams one video: ``info`` from the container, then (H, W, 3) uint8 RGB frames, resized when asked.

    Never holds more than one decoded frame. Opening raises VideoError (missing, empty, unreadable, not a
    video). Iteration raises VideoError when frames change size mid-stream, or, after the last frame, when
    fewer frames decoded than the container announced (truncated file). ``count`` is the frames decoded so
    far. Frame-count policy (a flow needs 2 frames) is the caller's.
    """

    def __init__(self, path: str | os.PathLike, resize: Resize | None = None):
        self.path = os.fspath(path)
        self.resize = resize
        self._cap, self.info = open_video(self.path)
        self.count = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        import cv2

        cap, size = self._cap, None
        try:
            while True:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                if size is None:
                    h, w = bgr.shape[:2]
                    size = self.resize.target(w, h) if self.resize else (w, h)
                elif self.resize is None and (bgr.shape[1], bgr.shape[0]) != size:
                    raise VideoError(f"{self.path}: frame {self.count} is {bgr.shape[1]}x{bgr.shape[0]}, "
                                     f"earlier frames {size[0]}x{size[1]}; pass --size to resize all frames")
                if (bgr.shape[1], bgr.shape[0]) != size:
                    bgr = cv2.resize(bgr, size, interpolation=getattr(cv2, INTERPOLATION))
                self.count += 1
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()
        announced = self.info.announced_frames
        share = TRUNCATION_SHARE.get(os.path.splitext(self.path)[1].lower(), TRUNCATION_SHARE_ESTIMATED)
        if announced > 2 and self.count < share * announced:
            raise VideoError(f"{self.path}: truncated or corrupt: decoded {self.count} of the {announced} frames "
                             "its container announces; re-download or re-encode it")


def iter_frames(path: str | os.PathLike, resize: Resize | None = None) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of ``path``, one at a time (see VideoReader)."""
    yield from VideoReader(path, resize)


def probe(path: str | os.PathLike) -> VideoInfo:
    """VideoInfo of ``path`` without decoding frames."""
    cap, info = open_video(path)
    cap.release()
    return info
