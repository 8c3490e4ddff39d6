"""The device executor: batched flow with the PyTorch backend, many frame pairs per call, on CPU or CUDA.

Per device, one process runs three overlapping stages:
  decode threads (``decoders``)  each decodes one video at a time (flowprep.work.DecodedVideo), encodes its
                                 RGB frames and queues its gray frame pairs, in order
  the batcher (the caller)       collects up to ``batch_size`` pairs from any videos, one flow call,
                                 quantises on the device, hands the fields to the writer
  the writer thread              encodes the fields on a small thread pool, appends them to their videos in
                                 order, and finishes each video (flowprep.work.VideoEncoder) after its last
                                 field, handing the outcome to ``on_outcome``
With several GPUs, one such process per GPU takes every N-th video, and sends its outcomes back to the
calling process, which writes them: the per-video contract and the single writer are the CPU path's.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from flowprep.errors import VideoError
from flowprep.store.codec import CODECS
from flowprep.outcomes import Failure, Outcome, VideoTask
from flowprep.work import DecodedVideo, VideoEncoder

if TYPE_CHECKING:
    from flowprep.settings import RunSettings

_END = object()  # a decode thread's marker after a video's last pair


class _Stopped(Exception):
    """The run is stopping (an error elsewhere): a stage gives up instead of waiting on a queue."""


@dataclass
class _Video:
    """One video between its decode thread, the batcher and the writer."""

    task: VideoTask
    encoder: VideoEncoder
    source: dict[str, Any] = field(default_factory=dict)  # DecodedVideo.source_fields(), after the last frame
    error: str = ""


class DeviceRun:
    """Extract ``tasks`` on one torch ``device`` (see the module docstring); `run()` returns when every
    task's outcome went to ``on_outcome`` (called from the writer thread, one at a time). An exception from
    ``on_outcome`` (a full disk) stops the run and is raised by `run()`."""

    def __init__(self, tasks: list[VideoTask], settings: RunSettings, device: str, batch_size: int, decoders: int,
                 on_outcome: Callable[[Outcome], None]):
        self.tasks, self.settings, self.device = list(tasks), settings, device
        self.batch_size, self.on_outcome = batch_size, on_outcome
        self.n_decoders = max(1, min(decoders, len(self.tasks)))
        self.pairs: queue.Queue = queue.Queue(maxsize=4 * batch_size)
        self.written: queue.Queue = queue.Queue(maxsize=2)  # short: the device never runs far ahead of writing
        self._next = iter(self.tasks)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._fatal: BaseException | None = None
        jpeg = CODECS[settings.codec].jpeg
        self._encoders = ThreadPoolExecutor(max_workers=max(1, min(8, decoders))) if jpeg else None

    # -- the stages ------------------------------------------------------------------------------------
    def run(self) -> None:
        if not self.tasks:
            return
        decoders = [threading.Thread(target=self._decode_loop, daemon=True) for _ in range(self.n_decoders)]
        writer = threading.Thread(target=self._write_loop, daemon=True)
        for t in (*decoders, writer):
            t.start()
        try:
            self._batch_loop(decoders)
            self._put(self.written, None)  # the writer drains its queue and ends
        except _Stopped:
            pass  # the writer failed: self._fatal says why
        except BaseException:  # Ctrl-C, a device error: every stage stops
            self._stop.set()
            raise
        finally:
            if self._fatal is not None:
                self._stop.set()
            writer.join()
            self._stop.set()  # decode threads waiting on a full queue give up
            if self._encoders is not None:
                self._encoders.shutdown()
        if self._fatal is not None:
            raise self._fatal

    def _put(self, q: queue.Queue, item) -> None:
        while True:
            if self._stop.is_set() or self._fatal is not None:
                raise _Stopped
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _decode_loop(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    task = next(self._next, None)
                if task is None:
                    return
                self._decode(task)
        except _Stopped:
            return

    def _decode(self, task: VideoTask) -> None:
        """Decode one video: RGB frames to its encoder, gray pairs to the batcher, then the end marker."""
        video = _Video(task, VideoEncoder(task, self.settings.codec, self.settings.jpeg_quality))
        prev = None
        try:
            decoded = DecodedVideo(task, self.settings.resize)
            for rgb, gray in decoded:
                video.encoder.add_rgb(rgb)
                if prev is not None:
                    self._put(self.pairs, (video, prev, gray))
                prev = gray
            video.source = decoded.source_fields()
        except VideoError as exc:
            video.error = str(exc)
        except _Stopped:
            raise
        except Exception as exc:  # one broken video must not end the run
            video.error = f"{task.path}: {type(exc).__name__}: {exc}"
        self._put(self.pairs, (video, _END, None))

    def _batch_loop(self, decoders: list[threading.Thread]) -> None:
        batch: list[tuple[_Video, np.ndarray, np.ndarray]] = []
        closing: list[_Video] = []  # videos whose end marker arrived while their pairs sit in ``batch``
        while any(t.is_alive() for t in decoders) or not self.pairs.empty():
            if self._fatal is not None:
                raise _Stopped
            try:
                video, prev, nxt = self.pairs.get(timeout=0.1)
            except queue.Empty:
                if batch:  # the decoders are slower than the device: do not wait for a full batch
                    self._flush(batch, closing)
                continue
            if prev is not _END:
                batch.append((video, prev, nxt))
                if len(batch) >= self.batch_size:
                    self._flush(batch, closing)
            elif any(b[0] is video for b in batch):
                closing.append(video)
            else:  # its fields may still wait in the writer's queue: the writer finishes it after them
                self._put(self.written, ("finish", video))
        self._flush(batch, closing)

    def _flush(self, batch: list, closing: list) -> None:
        """One flow call per frame size in ``batch`` (sizes differ only with --short-side), then the videos
        that ended. Empties both lists."""
        import torch

        from flowprep.flow import torchflow
        from flowprep.flow.quantize import clipped_count, nonfinite_count, quantize

        s = self.settings
        while batch:
            size = batch[0][1].shape
            group = [b for b in batch if b[1].shape == size]
            batch[:] = [b for b in batch if b[1].shape != size]
            t = time.perf_counter()
            prev = np.stack([g[1] for g in group])  # (B, H, W) uint8
            nxt = np.stack([g[2] for g in group])
            with torch.inference_mode():
                flow = torchflow.compute_flow_batch(prev, nxt, algo=s.algo, device=self.device, **s.params)
                clipped, nonfinite = clipped_count(flow, s.bound), nonfinite_count(flow)  # (B,) int64 each
                q = quantize(flow, s.bound).cpu().numpy()  # (B, H, W, 2) uint8
            share = (time.perf_counter() - t) / len(group)
            self._put(self.written, ("fields", [g[0] for g in group], q, clipped, nonfinite, share))
        for video in closing:
            self._put(self.written, ("finish", video))
        closing.clear()

    def _write_loop(self) -> None:
        try:
            while True:
                try:
                    job = self.written.get(timeout=0.1)
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
                if job is None:
                    return
                if job[0] == "fields":
                    self._write_fields(*job[1:])
                else:
                    self._finish(job[1])
        except BaseException as exc:  # the run stops; run() raises it
            self._fatal = exc

    def _write_fields(self, videos: list[_Video], q: np.ndarray, clipped: np.ndarray, nonfinite: np.ndarray,
                      share: float) -> None:
        keep = []
        for v, f, c, n in zip(videos, q, clipped, nonfinite):  # in each video's order of fields
            if v.error:
                continue
            try:
                v.encoder.next_field(int(n))
            except VideoError as exc:  # the video fails; its other fields are dropped as they come
                v.error = str(exc)
                continue
            keep.append((v, f, int(c)))
        keep = [k for k in keep if not k[0].error]
        encode = lambda k: k[0].encoder.encode("flow", k[1])  # noqa: E731
        stored = list(self._encoders.map(encode, keep)) if self._encoders else [encode(k) for k in keep]
        for (video, field_u8, n_clipped), data in zip(keep, stored):
            video.encoder.add("flow", data)
            video.encoder.count_clipped(n_clipped, field_u8.size)
            video.encoder.flow_seconds += share

    def _finish(self, video: _Video) -> None:
        if video.error:
            self.on_outcome(Failure(video.task.video_id, video.task.relpath, video.error))
        else:
            self.on_outcome(video.encoder.finish(video.source))


def _device_main(index: int, tasks: list[VideoTask], settings: RunSettings, device: str, batch_size: int,
                 decoders: int, results) -> None:
    """Device number ``index``'s process: run its tasks, send each outcome, then ("end", index, error text
    or "")."""
    from flowprep.executors.processes import start_worker

    start_worker(os.getppid())
    try:
        DeviceRun(tasks, settings, device, batch_size, decoders, lambda o: results.put(("outcome", o))).run()
    except BaseException as exc:
        results.put(("end", index, f"{type(exc).__name__}: {exc}"))
        raise
    results.put(("end", index, ""))


def run_devices(tasks: list[VideoTask], settings: RunSettings, devices: list[str], batch_size: int, decoders: int,
                on_outcome: Callable[[Outcome], None]) -> None:
    """Spread ``tasks`` over ``devices`` (every N-th video each; one process per device when N > 1).
    Videos a device process did not finish (it crashed) come back as Failures naming the reason."""
    if len(devices) == 1:
        DeviceRun(tasks, settings, devices[0], batch_size, decoders, on_outcome).run()
        return
    import multiprocessing as mp

    from flowprep.executors.processes import exit_text

    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    results = ctx.Queue(maxsize=8 * len(devices))
    n = len(devices)
    procs = [ctx.Process(target=_device_main, daemon=True,
                         args=(i, tasks[i::n], settings, dev, batch_size, decoders, results))
             for i, dev in enumerate(devices)]
    remaining = {t.video_id: (i % n, t) for i, t in enumerate(tasks)}
    ended: dict[int, str] = {}  # device index -> why it stopped ("" when it finished)
    try:
        for p in procs:
            p.start()
        while len(ended) < n:
            try:
                message = results.get(timeout=0.5)
            except queue.Empty:
                for i, p in enumerate(procs):  # a process killed outright sends no end message
                    if i not in ended and not p.is_alive() and results.empty():
                        ended[i] = f"its process ended ({exit_text(p.exitcode)})"
                continue
            if message[0] == "outcome":
                remaining.pop(message[1].video_id, None)
                on_outcome(message[1])
            else:
                ended[message[1]] = message[2]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
    for vid, (i, task) in sorted(remaining.items()):
        on_outcome(Failure(vid, task.relpath, f"{task.path}: not extracted: the run on {devices[i]} stopped "
                                              f"({ended.get(i) or 'no reason given'}); re-run to retry"))
