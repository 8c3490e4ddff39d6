"""Streaming video decoding with OpenCV (FFmpeg back end) and resizing to the flow resolution."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from flowprep.video.containers import container_cut
from flowprep.errors import OptionError, VideoError

DEFAULT_SIZE = (340, 256)  # (width, height), the two-stream convention
MAX_SIDE = 8192  # frame sides accepted for --size / --short-side: 8K UHD video is 7680x4320
# FFmpeg prints a line per damaged packet; a failed video's reason is recorded anyway. quiet_decoders() sets
# these variables where the user has not: set them yourself to see the decoder's messages again (e.g.
# OPENCV_FFMPEG_LOGLEVEL=24), in every process that decodes.
QUIET_DECODER_ENV = {"OPENCV_FFMPEG_LOGLEVEL": "-8", "OPENCV_LOG_LEVEL": "ERROR"}
INTERPOLATION = "INTER_LINEAR"  # cv2 flag used for resizing, recorded in every store
# Truncation checks. First, at opening, the container's own chunk sizes (flowprep.video.containers: AVI, MP4/MOV,
# MKV/WebM): a file shorter than they declare is cut, even inside its last frame or its index. Then, after
# decoding, the frame count: how far the count a container announces can be trusted depends on where it
# comes from (measured on FFmpeg-made files cut at 50-95 %, damaged in the middle, and variable-frame-rate ones):
# - "exact": AVI (dwLength) and MP4/MOV/3GP (sample table) hold the real count. Real UCF101 AVIs announce
#   1-2 frames more than decode, so a shortfall of max(2 frames, 1 %) is accepted; files cut at 95 % or
#   with frames dropped mid-clip decode 4-6 of 75 frames fewer and are refused.
# - "duration": MKV, WebM, FLV, WMV and others announce duration x nominal fps. A variable-frame-rate MKV
#   announces 90 and decodes 70 frames (78 %), as many as a file cut at 80 % (59 of 75), so the frame share
#   cannot tell them apart. The time covered can: the last frame's timestamp plus one frame interval over
#   the announced duration is 1.00 for every complete file (VFR included) and 0.95 or less for files cut at
#   95 %. A file is refused below MIN_DURATION_COVERED = 0.97, between the two with margin on both sides.
#   A container whose duration is set by a longer audio track would be refused too (not seen in practice).
# - "unchecked": MPEG program/transport streams (.mpg .ts ...) have no header count or duration; FFmpeg
#   estimates them from the file's own last timestamps, so a cut file announces exactly what it holds and
#   truncation cannot be seen.
# Gaps between frame timestamps are not used to find frames dropped mid-clip: FFmpeg renumbers the frames
# of a damaged MJPEG AVI (no gap where 5 of 75 frames are gone; the exact count catches it), and complete
# VFR files have gaps of 2.4-3x the nominal interval, close to the 4x of a damaged MKV.
EXACT_COUNT_EXTENSIONS = (".avi", ".mp4", ".m4v", ".mov", ".3gp", ".3g2")
UNCHECKED_EXTENSIONS = (".mpg", ".mpeg", ".m2v", ".vob", ".ts", ".m2ts", ".mts")
EXACT_SLACK_FRAMES = 2
EXACT_SLACK_SHARE = 0.01
MIN_DURATION_COVERED = 0.97


def quiet_decoders() -> dict[str, str]:
    """Keep FFmpeg's and OpenCV's decoder messages off this process's output, unless the user set the
    variables (QUIET_DECODER_ENV): the one switch every process that decodes applies (the command, each
    worker of every executor). Returns the values now in force, for a worker pool's environment.

    OpenCV reads OPENCV_FFMPEG_LOGLEVEL when it opens its first video, so call this before that."""
    for key, value in QUIET_DECODER_ENV.items():
        os.environ.setdefault(key, value)
    if os.environ["OPENCV_LOG_LEVEL"] == QUIET_DECODER_ENV["OPENCV_LOG_LEVEL"] and "cv2" in sys.modules:
        import cv2  # already imported: it read OPENCV_LOG_LEVEL then, so the level is set directly

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return {key: os.environ[key] for key in QUIET_DECODER_ENV}


def count_check_kind(path: str | os.PathLike) -> str:
    """How a video's announced frame count can be checked: "exact", "duration" or "unchecked" (see above)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in EXACT_COUNT_EXTENSIONS:
        return "exact"
    return "unchecked" if ext in UNCHECKED_EXTENSIONS else "duration"


def truncation_problem(kind: str, announced: int, decoded: int, fps: float, last_ms: float | None) -> str | None:
    """Why ``decoded`` frames (the last at ``last_ms``) fall too short of what the container announced, or None.

    kind: from count_check_kind. Counts of 2 or less are not checked (a flow needs 2 frames; that rule is
    the caller's).
    """
    if announced <= 2 or kind == "unchecked":
        return None
    if kind == "exact":
        slack = max(EXACT_SLACK_FRAMES, int(EXACT_SLACK_SHARE * announced))
        if announced - decoded > slack:
            return f"decoded {decoded} of the {announced} frames its container announces"
        return None
    covered = duration_covered(announced, decoded, fps, last_ms)
    if covered < MIN_DURATION_COVERED:
        return (f"decoded {decoded} frames covering {100 * covered:.0f}% of the "
                f"{announced / fps if fps > 0 else 0:.2f} s its container announces")
    return None


def duration_covered(announced: int, decoded: int, fps: float, last_ms: float | None) -> float:
    """Share of the announced duration the decoded frames cover: by timestamps, or by count if that is more."""
    if announced <= 0:
        return 1.0
    by_count = decoded / announced
    if fps <= 0 or last_ms is None or last_ms <= 0:
        return by_count
    return max(by_count, (last_ms * fps / 1000.0 + 1) / announced)


@dataclass(frozen=True)
class Resize:
    """Target geometry: a fixed (width, height) or a short side with the aspect ratio kept."""

    width: int | None = DEFAULT_SIZE[0]
    height: int | None = DEFAULT_SIZE[1]
    short_side: int | None = None

    def __post_init__(self):
        for v in (self.width, self.height, self.short_side):
            if v is not None and not 8 <= v <= MAX_SIDE:
                raise OptionError(f"frame sides must be 8 to {MAX_SIDE} pixels (8K UHD video is 7680x4320), "
                                  f"got {v}")
        if self.short_side is None and (not self.width or not self.height):
            raise OptionError("give either a size WxH or a short side")

    def target(self, src_w: int, src_h: int) -> tuple[int, int]:
        """(width, height) of the output frames for a source of src_w x src_h."""
        if self.short_side is None:
            return int(self.width), int(self.height)
        s = self.short_side
        long_side = lambda a, b: min(MAX_SIDE, max(8, int(round(a * s / b))))  # noqa: E731
        if src_w <= src_h:
            return s, long_side(src_h, src_w)
        return long_side(src_w, src_h), s

    @property
    def smaller_side(self) -> int:
        """The smaller side of every output frame, known before any video is read."""
        return int(self.short_side or min(self.width, self.height))

    def describe(self) -> str:
        return f"short_side={self.short_side}" if self.short_side else f"{self.width}x{self.height}"


def parse_size(text: str) -> Resize:
    """'340x256' -> Resize(340, 256); raises OptionError on anything else."""
    try:
        w, h = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise OptionError(f"size must look like 340x256 (width x height), got {text!r}") from None
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
    cut = container_cut(path)
    if cut:
        raise VideoError(f"{path}: truncated: {cut}; re-download or re-encode it")
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
    the decoded frames fall short of what the container announced (truncated or damaged file; see
    truncation_problem). ``count`` is the frames decoded so far; ``count_record()`` what to store about the
    check. Frame-count policy (a flow needs 2 frames) is the caller's.
    """

    def __init__(self, path: str | os.PathLike, resize: Resize | None = None):
        self.path = os.fspath(path)
        self.resize = resize
        self._cap, self.info = open_video(self.path)
        self.count = 0
        self.last_ms: float | None = None  # largest frame timestamp seen (ms from the stream start)

    def __iter__(self) -> Iterator[np.ndarray]:
        import cv2

        cap, size = self._cap, None
        try:
            while True:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                ms = cap.get(cv2.CAP_PROP_POS_MSEC)
                if self.last_ms is None or ms > self.last_ms:  # B-frame streams can report 0 at the end
                    self.last_ms = ms
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
        problem = truncation_problem(count_check_kind(self.path), self.info.announced_frames, self.count,
                                     self.info.fps, self.last_ms)
        if problem:
            raise VideoError(f"{self.path}: truncated or corrupt: {problem}; re-download or re-encode it")

    def count_record(self) -> dict:
        """What the store records about the frame count (the decoded count is the record's num_frames):
        announced, how it was checked, the shortfall (exact counts) or the duration covered."""
        kind = count_check_kind(self.path)
        announced = self.info.announced_frames
        record = {"announced_frames": announced, "count_check": kind,
                  "short_by": max(announced - self.count, 0) if kind == "exact" else 0}
        if kind == "duration":
            record["duration_covered"] = round(duration_covered(announced, self.count, self.info.fps,
                                                                self.last_ms), 4)
        return record


def source_record(path: str | os.PathLike) -> dict:
    """Size and modification time of a source file, recorded so a resumed run can tell it was replaced;
    empty when there is no such file (opening it then fails with the reason)."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return {"source_bytes": st.st_size, "source_mtime": st.st_mtime}


def probe(path: str | os.PathLike) -> VideoInfo:
    """VideoInfo of ``path`` without decoding frames."""
    cap, info = open_video(path)
    cap.release()
    return info
