"""A new video as the trainer's readers see a flow store: its frames and flow made exactly as `flowprep
extract` made the training store's, through flowprep's own per-video steps.

- frames: flowprep.work.DecodedVideo (decode, resize with the recorded size and interpolation, gray);
- flow: flowprep's OpenCV flow object, or the batched PyTorch backend on CUDA (TV-L1, Farneback), with the
  recorded algorithm and parameters, then flowprep.flow.quantize with the recorded bound;
- codec: each frame and field goes through the recorded codec as the store would hold it
  (VideoEncoder.encode) and back (flowprep.store.codec.decode_image), so the model sees the same JPEG
  losses as in training and testing.

Flow is computed only for the fields that the views ask for (the test protocol's 25 stacks of 10 cover
nearly every field of a 10 s video; the fast preset's 5 stacks a fifth of them), all of them in one batched
call on CUDA. `VideoSource` offers the reading methods of flowprep.FlowStore that trainer.data uses, so the
trainer's own view code (trainer.data.VideoFrames, trainer.evaluation.video_logits) cuts the views.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from flowprep.flow.params import algorithm, resolve_params
from flowprep.flow.quantize import ROUNDINGS, ZERO_FLOW
from flowprep.store.codec import CODECS
from flowprep.errors import FlowprepError, OptionError

# Frame pairs per flow call on CUDA: a 10 s clip at 25 fps in one call. docs/torchflow.md's traffic model
# of the fused TV-L1 on an H100 at 340x256: ~1,400 fields/s at a batch of 256, ~850 at 64 (launch-bound).
TORCH_BATCH = 256
CODEC_THREADS = 8  # images encoded / decoded at once (cv2 releases the GIL); the frames of one video
_POOL: list = []  # the codec thread pool, made on first use


class FlowComputer:
    """Quantised flow of frame pairs with the recorded settings: (n, H, W) uint8 gray pairs -> (n, H, W, 2)
    uint8, x then y. On CUDA, the batched PyTorch backend runs when it has the algorithm (flowprep's torch
    TV-L1 and Farneback follow OpenCV's; docs/torchflow.md says where they stop agreeing); otherwise the
    recorded backend on the CPU. ``describe`` says which one runs; ``seconds`` adds up its time."""

    def __init__(self, settings, device: str):
        self.settings, self.seconds = settings, 0.0
        self.backend, self.device = settings.backend, "cpu"
        if device == "cuda" and "torch" in algorithm(settings.algo).backends:
            try:
                self.params = resolve_params(settings.algo, settings.params, backend="torch")
                self.backend, self.device = "torch", "cuda"
            except OptionError:  # a value the torch backend lacks (TV-L1's 3x3 median): exact on the CPU instead
                pass
        if self.backend == "opencv":
            from flowprep.flow.compute import OpenCVFlow

            self._opencv = OpenCVFlow(settings.algo, **settings.params)
        elif self.device == "cpu":
            self.params = settings.params
        recorded = "recorded" if self.backend == settings.backend else f"recorded: {settings.backend}"
        self.describe = f"{settings.algo} ({self.backend} on {self.device}; {recorded})"

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        from flowprep.flow.quantize import quantize

        t = time.perf_counter()
        bound = self.settings.bound
        if self.backend == "opencv":
            out = np.stack([quantize(self._opencv(p, n), bound) for p, n in zip(prev, nxt)])
        else:
            import torch

            from flowprep.flow import torchflow

            parts = []
            with torch.inference_mode():
                for i in range(0, len(prev), TORCH_BATCH):
                    flow = torchflow.compute_flow_batch(prev[i:i + TORCH_BATCH], nxt[i:i + TORCH_BATCH],
                                                        algo=self.settings.algo, device=self.device, **self.params)
                    parts.append(quantize(flow, bound).cpu().numpy())  # quantised where it was computed
            out = np.concatenate(parts)
        self.seconds += time.perf_counter() - t
        return out


class VideoSource:
    """One video decoded with the recorded settings, read like a one-video flow store (``video_ids``,
    ``num_frames``, ``num_flows``, ``read_rgb``, ``read_flow``, ``read_flow_planes``, ``read_stored``).

    Decoding happens here, at once (``decode_seconds``); flow when a field is first read (``flow.seconds``).
    VideoError (flowprep) when the file is missing, not a video, truncated or damaged. Holds every frame:
    (H, W, 3) + (H, W) uint8 each (~0.35 MB at 340x256, ~90 MB for 10 s at 25 fps).
    """

    def __init__(self, path: str | Path, video_id: str, settings, flow: FlowComputer | None):
        from flowprep.work import DecodedVideo, VideoEncoder, VideoTask

        self.path, self.video_id, self.settings, self.flow = Path(path), video_id, settings, flow
        task = VideoTask(video_id, str(path), Path(path).name, "", -1)
        self._encoder = VideoEncoder(task, settings.codec, settings.jpeg_quality)  # its encode(): the codec
        t = time.perf_counter()
        frames = list(DecodedVideo(task, settings.resize))  # [(rgb, gray)], the reader's checks at the end
        self.decode_seconds = time.perf_counter() - t
        if not frames:
            raise FlowprepError(f"{path}: decoded 0 frames (empty, damaged or not a video)")
        self.rgb = [f[0] for f in frames]
        self.gray = [f[1] for f in frames]
        self.video_ids = [video_id]
        self._stored: dict[tuple[str, int], tuple[np.ndarray, ...]] = {}  # (kind, index) -> stored images
        self.codec_seconds = 0.0

    # -- what trainer.data reads -------------------------------------------------------------------------
    # Flow computed here is rounded (settings_from_recorded refuses any other rule), so zero flow is 128.
    flow_zero = ZERO_FLOW["round"]
    redo = "check the video file (it decoded, but its frames could not be read back)"

    @property
    def attrs(self) -> dict:
        """The store config keys the trainer's readers look at: codec, bound, rounding."""
        return {"codec": self.settings.codec, "bound": self.settings.bound, "rounding": ROUNDINGS["round"]}

    @property
    def codec(self):
        """The recorded codec (flowprep.store.codec.Codec), as FlowStore.codec."""
        return CODECS[self.settings.codec]

    def __contains__(self, video_id: str) -> bool:
        return video_id == self.video_id

    def num_frames(self, video_id: str) -> int:
        return len(self.rgb)

    def num_flows(self, video_id: str) -> int:
        """Flow fields: frames - 1, or 0 without a flow computer (a spatial-only source)."""
        return len(self.rgb) - 1 if self.flow is not None else 0

    def record(self, video_id: str) -> dict:
        h, w = self.gray[0].shape
        return {"path": str(self.path), "num_frames": self.num_frames(video_id),
                "num_flows": self.num_flows(video_id), "width": w, "height": h}

    def read_rgb(self, video_id: str, indices) -> np.ndarray:
        """Frames at ``indices`` after the codec: (n, H, W, 3) uint8 RGB."""
        return self._decoded("rgb", self._indices(indices, self.num_frames(video_id)), planes=False)

    def read_flow(self, video_id: str, indices) -> np.ndarray:
        """Quantised fields at ``indices`` after the codec: (n, H, W, 2) uint8, x then y."""
        return self._decoded("flow", self._indices(indices, self.num_flows(video_id)), planes=False)

    def read_flow_planes(self, video_id: str, indices) -> np.ndarray:
        """The fields of read_flow as planes: (n, 2, H, W) uint8."""
        return self._decoded("flow", self._indices(indices, self.num_flows(video_id)), planes=True)

    def read_stored(self, video_id: str, kind: str, indices) -> list[tuple[np.ndarray, ...]]:
        """The images as the store would hold them (JPEG bytes; per item one, or x and y with jpeg-xy)."""
        if not self.codec.jpeg:
            raise ValueError(f"{self.path}: codec raw stores pixels, not JPEG bytes; read_rgb / read_flow them")
        count = self.num_frames(video_id) if kind == "rgb" else self.num_flows(video_id)
        return self._stored_of(kind, self._indices(indices, count))

    def computed_flows(self) -> list[int]:
        """Indices of the flow fields computed so far, sorted."""
        return sorted(i for kind, i in self._stored if kind == "flow")

    # -- inside -------------------------------------------------------------------------------------------
    def _indices(self, indices, count: int) -> np.ndarray:
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if idx.size and (idx.min() < 0 or idx.max() >= count):
            raise IndexError(f"index out of range for {self.video_id!r}: valid 0..{count - 1}, "
                             f"got {idx.min()}..{idx.max()}")
        return idx

    def _stored_of(self, kind: str, idx: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        """The stored images of ``idx`` (computing the flow of fields not yet made, in one call)."""
        todo = sorted({int(i) for i in idx if (kind, int(i)) not in self._stored})
        if kind == "flow" and todo:
            fields = self.flow(np.stack([self.gray[i] for i in todo]), np.stack([self.gray[i + 1] for i in todo]))
        t = time.perf_counter()
        arrays = [self.rgb[i] for i in todo] if kind == "rgb" else list(fields) if todo else []
        for i, stored in zip(todo, _map(lambda a: self._encoder.encode(kind, a), arrays)):
            self._stored[kind, i] = stored if isinstance(stored, tuple) else (stored,)
        self.codec_seconds += time.perf_counter() - t
        return [self._stored[kind, int(i)] for i in idx]

    def _decoded(self, kind: str, idx: np.ndarray, planes: bool) -> np.ndarray:
        from flowprep.store.codec import decode_image

        h, w = self.gray[0].shape
        c = 3 if kind == "rgb" else 2
        stored = self._stored_of(kind, idx)
        t = time.perf_counter()
        if not self.codec.jpeg:
            out = np.stack([s[0] for s in stored]) if stored else np.empty((0, h, w, c), np.uint8)
            out = np.ascontiguousarray(out.transpose(0, 3, 1, 2)) if planes else out
        else:
            out = np.empty((len(idx), c, h, w) if planes else (len(idx), h, w, c), np.uint8)
            targets = [out[k] if kind == "rgb" or planes else out[k].transpose(2, 0, 1) for k in range(len(idx))]
            ok = _map(lambda k: decode_image(kind, stored[k], targets[k]), range(len(idx)))
            if not all(ok):
                raise FlowprepError(f"{self.path}: a {kind} image does not decode after encoding with codec "
                                    f"{self.settings.codec}")
        self.codec_seconds += time.perf_counter() - t
        return out


def _map(fn, items) -> list:
    """[fn(x) for x in items], on the codec thread pool when there are several."""
    items = list(items)
    if len(items) < 4:
        return [fn(x) for x in items]
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(max_workers=min(CODEC_THREADS, os.cpu_count() or 1)))
    return list(_POOL[0].map(fn, items))
