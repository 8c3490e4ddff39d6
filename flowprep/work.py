"""The per-video work of extract: a `VideoTask` in, an `EncodedVideo` (or a `Failure`) out (flowprep.outcomes).

The CPU pool runs `extract_video` in worker processes; the device batcher and any other executor use the
same pieces (`DecodedVideo` for decoding, `VideoEncoder` for the stored images and the record), so every
path writes the same record. Nothing here touches the output files: the one process that owns the store
writes what comes back (flowprep.store.parts).
"""
from __future__ import annotations

import time
import zlib
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from flowprep.video.decode import Resize, VideoReader, source_record
from flowprep.errors import VideoError
from flowprep.outcomes import EncodedVideo, Failure, ImportTask, Outcome, VideoTask
from flowprep.store.codec import codec as codec_named

if TYPE_CHECKING:
    from flowprep.settings import RunSettings

MIN_FRAMES = 2  # one flow field needs two frames


class DecodedVideo:
    """A task's frames as (rgb, gray) pairs: (H, W, 3) uint8 RGB resized, and its (H, W) uint8 gray.

    Opening raises VideoError (missing, empty, not a video); so does iteration (frames change size,
    truncated file). After the last frame, `source_fields()` gives what the record says about the source.
    """

    def __init__(self, task: VideoTask, resize: Resize):
        self.task = task
        self.source = source_record(task.path)  # size before opening, so a change during the run shows
        self.reader = VideoReader(task.path, resize)
        self.size: tuple[int, int] | None = None  # (H, W) of the frames

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        import cv2

        for rgb in self.reader:
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            self.size = gray.shape
            yield rgb, gray

    def source_fields(self) -> dict[str, Any]:
        """fps, source size, the frame-count check and the source file's size and time; VideoError when
        fewer than MIN_FRAMES frames decoded."""
        frames = self.reader.count
        if frames < MIN_FRAMES:
            raise VideoError(f"{self.task.path}: decoded {frames} frame(s); at least {MIN_FRAMES} are needed "
                             "for one flow field (empty, damaged or not a video)")
        info = self.reader.info
        return {"fps": info.fps, "source_width": info.width, "source_height": info.height,
                **self.reader.count_record(), **self.source, "width": self.size[1], "height": self.size[0]}


class VideoEncoder:
    """Collects one video's stored images (encoded for the codec) with their checksums and the clipped
    share, and builds its record: the one record builder of every path."""

    def __init__(self, task: VideoTask | ImportTask, codec: str, jpeg_quality: int):
        self.task = task
        self.codec, self.quality = codec_named(codec), int(jpeg_quality)
        self.images: dict[str, list[np.ndarray]] = {"rgb": [], "flow": []}
        self.crcs: dict[str, list[int]] = {"rgb": [], "flow": []}
        self.clipped = 0  # flow values at the bound
        self.values = 0
        self.fields_seen = 0  # flow fields handed over so far (next_field), for the message of a bad one
        self.start = time.perf_counter()
        self.flow_seconds = 0.0

    def encode(self, kind: str, array: np.ndarray) -> tuple[np.ndarray, ...]:
        """What is stored for one frame or field of ``kind`` (flowprep.store.codec.Codec.encode)."""
        return self.codec.encode(kind, array, self.quality)

    def add(self, kind: str, stored: np.ndarray | tuple[np.ndarray, ...]) -> None:
        """Append one frame or field already in its stored form (see encode), so encoding can run elsewhere:
        an import adds the JPEG bytes it read, (x, y) for a field with codec jpeg-xy."""
        for image in stored if isinstance(stored, tuple) else (stored,):
            self.images[kind].append(image)
            self.crcs[kind].append(zlib.crc32(image.tobytes()))

    def add_rgb(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        self.add("rgb", self.encode("rgb", frame))

    def add_flow(self, field: np.ndarray, clipped: int, nonfinite: int = 0) -> None:
        """Append one (H, W, 2) uint8 quantised field, x then y; ``clipped``: its values at the bound,
        ``nonfinite``: its NaN or infinite values before quantising (flowprep.flow.quantize; VideoError if any)."""
        self.next_field(nonfinite)
        self.add("flow", self.encode("flow", field))
        self.count_clipped(clipped, field.size)

    def next_field(self, nonfinite: int) -> None:
        """Count the next flow field, in order; VideoError naming it when it held NaN or infinite values, which
        quantising would store as ordinary motion (NaN as none at all): the video fails instead."""
        k = self.fields_seen
        self.fields_seen += 1
        if nonfinite:
            raise VideoError(f"{self.task.source}: flow field {k} (frames {k} to {k + 1}) holds {int(nonfinite)} NaN "
                             "or infinite value(s): the flow computation broke down; nothing of this video is "
                             "stored (check the --param values, or the RAFT weights file)")

    def count_clipped(self, clipped: int, values: int) -> None:
        self.clipped += int(clipped)
        self.values += int(values)

    def finish(self, source_fields: dict[str, Any]) -> EncodedVideo:
        """The finished video: the record (dataset place, source, counts, checksums, timing) and images."""
        crc = {k: 0 for k in self.crcs}
        for kind in crc:  # the whole video's CRC-32 is the running CRC over its images' stored bytes
            for image in self.images[kind]:
                crc[kind] = zlib.crc32(image.tobytes(), crc[kind])
        t = self.task
        fields, rest = divmod(len(self.images["flow"]), self.codec.flow_images)
        if rest:
            raise ValueError(f"{t.video_id}: {len(self.images['flow'])} flow images, not {self.codec.flow_images} "
                             f"per field as codec {self.codec.name} stores them")
        record = {"path": t.relpath, "class_name": t.class_name, "label": t.label, **source_fields,
                  "clipped_fraction": self.clipped / max(self.values, 1),
                  "seconds": time.perf_counter() - self.start, "flow_seconds": self.flow_seconds,
                  "video_id": t.video_id, "num_frames": len(self.images["rgb"]),
                  "num_flows": fields, "rgb_crc32": crc["rgb"], "flow_crc32": crc["flow"]}
        return EncodedVideo(t.video_id, record, self.images["rgb"], self.images["flow"],
                            np.asarray(self.crcs["rgb"], np.uint32), np.asarray(self.crcs["flow"], np.uint32))


def extract_video(task: VideoTask, settings: RunSettings) -> Outcome:
    """Decode, compute flow (OpenCV, one core), quantise and encode one video. Never raises for bad input:
    a video that cannot be used comes back as a Failure with the reason.

    The algorithm of ``settings`` must have an OpenCV backend.
    """
    import cv2

    from flowprep.flow.compute import OpenCVFlow
    from flowprep.flow.quantize import clipped_count, nonfinite_count, quantize

    cv2.setNumThreads(1)  # one core per job: --jobs sets the parallelism
    try:
        flow_fn = OpenCVFlow(settings.algo, **settings.params)
        encoder = VideoEncoder(task, settings.codec, settings.jpeg_quality)
        video = DecodedVideo(task, settings.resize)
        prev = None
        for rgb, gray in video:
            encoder.add_rgb(rgb)
            if prev is not None:
                t = time.perf_counter()
                flow = flow_fn(prev, gray)
                encoder.flow_seconds += time.perf_counter() - t
                encoder.add_flow(quantize(flow, settings.bound), clipped_count(flow, settings.bound),
                                 nonfinite_count(flow))
            prev = gray
        return encoder.finish(video.source_fields())
    except VideoError as exc:
        return Failure(task.video_id, task.relpath, str(exc))
    except Exception as exc:  # an unexpected failure of one video must not end the dataset run
        return Failure(task.video_id, task.relpath, f"{task.path}: {type(exc).__name__}: {exc}")
